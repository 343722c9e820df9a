import numpy as np

from .datagram import Buffer

def seal_tcp(
    packet: Buffer,
    l4: int,
    hlen: int,
    mss: int,
    v4: bool,
    cipher: int,
    key: bytes,
    hp_key: bytes,
    first: int,
    out: Buffer,
) -> tuple[int, int]: ...
def open_run(
    buf: Buffer,
    nbytes: int,
    size: int,
    cipher: int,
    key: bytes,
    hp_key: bytes,
    plain: Buffer,
    counters: Buffer,
) -> int: ...
def coalesce_tcp(
    rows: Buffer | np.ndarray, plen: int, start: int, end: int, last_plen: int
) -> bytes | None: ...

class DatagramKeys:
    def __init__(
        self, cipher: int, key: bytes, hp_key: bytes, sealing: bool
    ) -> None: ...
    def seal(self, counter: int, packet: Buffer) -> bytes: ...
    def open(self, datagram: Buffer) -> tuple[int, bytes] | None: ...
    def drain(
        self,
        fd: int,
        rx: bytearray,
        tun_fd: int,
        top: int,
        source_filter: bytes,
        plain: bytearray,
        counters: Buffer | np.ndarray,
        runs: bytearray,
        max_reads: int,
        lone_ends: bool,
    ) -> tuple[int, int, int, int, int, int, int, int]: ...
