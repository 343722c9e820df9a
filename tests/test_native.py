"""The native seal and open (tunnel/_fastpath.c) make exactly what Python makes.

The reference is the protocol's own code: offload.split_tcp_rows cuts the
superpacket (itself held to the kernel's segmentation by tests/test_offload.py)
and datagram.seal / datagram.open_ seal and open each segment. Every datagram
the extension writes must equal the reference byte for byte, for both ciphers,
IPv4 and IPv6, any TCP header length, segment size and flags; and it must
refuse, not overrun, any buffer too small for the run it is given.
"""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel import datagram, native, offload, runs
from tunnel.constants import (
    CIPHER_AES_256_GCM,
    CIPHER_CHACHA20_POLY1305,
    HEADER_LEN,
    HELLO_FLAG,
    PAD_TO,
    TAG_LEN,
)
from tunnel.output import Output
from tunnel.schedule import make_aead, make_hp

fastpath = pytest.importorskip("tunnel._fastpath", reason="the extension is not built")

CIPHERS = [CIPHER_AES_256_GCM, CIPHER_CHACHA20_POLY1305]
OVERHEAD = HEADER_LEN + TAG_LEN
V4_ADDRS = bytes([100, 64, 0, 1, 100, 64, 0, 2])
V6_ADDRS = bytes.fromhex("fd00" + "00" * 13 + "01" + "fd00" + "00" * 13 + "02")
# TCP flags as Linux TSO sees them: ACK always, any of PSH, FIN, CWR, ECE, URG.
FLAG_BITS = [0x01, 0x08, 0x20, 0x40, 0x80]


def superpacket(
    v4: bool,
    segments: int,
    last: int,
    mss: int,
    options: int = 12,
    flags: int = 0x18,
    seq: int = 1,
    ident: int = 7,
) -> tuple[bytes, memoryview]:
    """(virtio-net header, packet): one TSO write of `segments` segments."""
    payload = os.urandom((segments - 1) * mss + last)
    tcp = struct.pack(
        "!HHIIBBHHH", 40000, 5201, seq, 1, (5 + options // 4) << 4, flags, 512, 0, 0
    ) + bytes([1] * options)  # NOPs stand in for options
    if v4:
        total = 20 + len(tcp) + len(payload)
        ip = struct.pack(
            "!BBHHHBBH8s", 0x45, 0, total & 0xFFFF, ident, 0x4000, 64, 6, 0, V4_ADDRS
        )
        kind, l4 = offload.GSO_TCPV4, 20
    else:
        ip = struct.pack("!IHBB32s", 6 << 28, len(tcp) + len(payload), 6, 64, V6_ADDRS)
        kind, l4 = offload.GSO_TCPV6, 40
    hdr = offload.VnetHdr(offload.F_NEEDS_CSUM, kind, l4 + len(tcp), mss, l4, 16)
    return hdr.pack(), memoryview(ip + tcp + payload)


def keys(cipher: int) -> tuple[bytes, bytes]:
    return os.urandom(32), os.urandom(16)


def reference_seal(
    vnet: bytes, packet: memoryview, cipher: int, key: bytes, hp: bytes, first: int
) -> bytes:
    """Datagrams laid end to end, as the Python path makes them."""
    split = offload.split_tcp_rows(vnet, packet, PAD_TO)
    assert split is not None
    rows, lengths = split
    aead, mask = make_aead(cipher, key), make_hp(hp)
    sealed = []
    for i, length in enumerate(lengths):
        plaintext = rows[i, : length + (-length % PAD_TO)].tobytes()
        sealed.append(datagram.seal(aead, mask, first + i, plaintext))
    return b"".join(sealed)


def native_seal(
    vnet: bytes, packet: memoryview, cipher: int, key: bytes, hp: bytes, first: int
) -> bytes:
    shape = offload.tcp_shape(vnet, packet)
    assert shape is not None
    l4, hlen, mss, v4 = shape
    out = bytearray(70_000 + 200 * 1024)
    n, nbytes = fastpath.seal_tcp(
        packet, l4, hlen, mss, v4, cipher, key, hp, first, out
    )
    assert n == -(-(len(packet) - hlen) // mss)
    return bytes(out[:nbytes])


@settings(max_examples=150, deadline=None)
@given(
    v4=st.booleans(),
    cipher=st.sampled_from(CIPHERS),
    mss=st.integers(88, 1400),
    segments=st.integers(2, 46),
    last_fraction=st.floats(0.0, 1.0),
    options=st.sampled_from([0, 4, 12, 20, 40]),
    flags=st.sets(st.sampled_from(FLAG_BITS)),
    seq=st.integers(0, 2**32 - 1),
    ident=st.integers(0, 2**16 - 1),
    first=st.integers(0, 2**40),
)
def test_seal_tcp_makes_the_datagrams_python_makes(
    v4: bool,
    cipher: int,
    mss: int,
    segments: int,
    last_fraction: float,
    options: int,
    flags: set[int],
    seq: int,
    ident: int,
    first: int,
) -> None:
    last = max(1, round(mss * last_fraction))
    segments = min(segments, 60_000 // mss)  # an IP packet stays under 64 KB
    if segments < 2:
        segments, last = 2, min(last, 100)
    vnet, packet = superpacket(
        v4, segments, last, mss, options, 0x10 | sum(flags), seq, ident
    )
    key, hp = keys(cipher)
    want = reference_seal(vnet, packet, cipher, key, hp, first)
    assert native_seal(vnet, packet, cipher, key, hp, first) == want


def test_seal_tcp_counts_past_the_32_bit_sequence_and_16_bit_id() -> None:
    vnet, packet = superpacket(True, 45, 1368, 1368, seq=2**32 - 3000, ident=0xFFFE)
    key, hp = keys(CIPHER_AES_256_GCM)
    want = reference_seal(vnet, packet, CIPHER_AES_256_GCM, key, hp, 5)
    assert native_seal(vnet, packet, CIPHER_AES_256_GCM, key, hp, 5) == want


def sealed_run(
    rows: int, size: int, cipher: int, key: bytes, hp: bytes, first: int, last: int = 0
) -> tuple[bytes, list[bytes]]:
    """A GRO buffer of `rows` datagrams of `size` bytes (the last `last` bytes
    long if given) and their plaintexts."""
    aead, mask = make_aead(cipher, key), make_hp(hp)
    plains, dgrams = [], []
    for i in range(rows):
        length = (last if i == rows - 1 and last else size) - OVERHEAD
        plains.append(os.urandom(length))
        dgrams.append(datagram.seal(aead, mask, first + i, plains[-1]))
    return b"".join(dgrams), plains


def native_open(
    buf: bytes, size: int, cipher: int, key: bytes, hp: bytes, nbytes: int | None = None
) -> tuple[list[bytes], list[int]]:
    """(plaintexts, counters) of the rows that opened."""
    nbytes = len(buf) if nbytes is None else nbytes
    plen = size - OVERHEAD
    rows = -(-nbytes // size)
    plain = bytearray(rows * plen)
    counters = np.zeros(rows, dtype=np.uint64)
    opened = fastpath.open_run(buf, nbytes, size, cipher, key, hp, plain, counters)
    texts = []
    for i in range(opened):
        length = min(size, nbytes - i * size) - OVERHEAD
        texts.append(bytes(plain[i * plen : i * plen + length]))
    return texts, counters[:opened].tolist()


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("last", [0, 41, 600])
def test_open_run_opens_what_python_sealed(cipher: int, last: int) -> None:
    key, hp = keys(cipher)
    buf, plains = sealed_run(45, 1448, cipher, key, hp, first=1000, last=last)
    texts, counters = native_open(buf, 1448, cipher, key, hp)
    assert texts == plains
    assert counters == list(range(1000, 1045))


@pytest.mark.parametrize("bad", [0, 7, 44])
def test_open_run_stops_at_a_row_that_does_not_open(bad: int) -> None:
    key, hp = keys(CIPHER_AES_256_GCM)
    buf, plains = sealed_run(45, 1448, CIPHER_AES_256_GCM, key, hp, first=3)
    forged = bytearray(buf)
    forged[bad * 1448 + 700] ^= 1
    texts, counters = native_open(bytes(forged), 1448, CIPHER_AES_256_GCM, key, hp)
    assert texts == plains[:bad] and counters == list(range(3, 3 + bad))


def test_open_run_stops_at_a_hello_and_at_another_key() -> None:
    key, hp = keys(CIPHER_AES_256_GCM)
    aead, mask = make_aead(CIPHER_AES_256_GCM, key), make_hp(hp)
    body = [os.urandom(1424) for _ in range(4)]
    hello = datagram.seal(aead, mask, HELLO_FLAG | 12345, body[2])
    buf = b"".join(
        [datagram.seal(aead, mask, i, body[i]) for i in range(2)]
        + [hello, datagram.seal(aead, mask, 3, body[3])]
    )
    texts, _ = native_open(buf, 1448, CIPHER_AES_256_GCM, key, hp)
    assert texts == body[:2]
    other, _ = keys(CIPHER_AES_256_GCM)
    assert native_open(buf, 1448, CIPHER_AES_256_GCM, other, hp)[0] == []


def test_open_run_reads_only_nbytes() -> None:
    key, hp = keys(CIPHER_AES_256_GCM)
    buf, plains = sealed_run(10, 1448, CIPHER_AES_256_GCM, key, hp, first=0)
    stale = buf + os.urandom(5000)  # a reused receive buffer holds old bytes after
    texts, _ = native_open(stale, 1448, CIPHER_AES_256_GCM, key, hp, nbytes=len(buf))
    assert texts == plains


def test_buffers_too_small_are_refused_not_overrun() -> None:
    key, hp = keys(CIPHER_AES_256_GCM)
    vnet, packet = superpacket(True, 45, 1368, 1368)
    shape = offload.tcp_shape(vnet, packet)
    assert shape is not None
    l4, hlen, mss, v4 = shape
    need = len(reference_seal(vnet, packet, CIPHER_AES_256_GCM, key, hp, 0))
    with pytest.raises(ValueError, match="needs"):
        fastpath.seal_tcp(packet, l4, hlen, mss, v4, 1, key, hp, 0, bytearray(need - 1))
    with pytest.raises(ValueError):
        fastpath.seal_tcp(
            packet, l4, len(packet), mss, v4, 1, key, hp, 0, bytearray(need)
        )
    with pytest.raises(ValueError):
        fastpath.seal_tcp(packet, l4, hlen, 0, v4, 1, key, hp, 0, bytearray(need))
    with pytest.raises(ValueError, match="key"):
        fastpath.seal_tcp(
            packet, l4, hlen, mss, v4, 1, key[:16], hp, 0, bytearray(need)
        )
    with pytest.raises(ValueError, match="cipher"):
        fastpath.seal_tcp(packet, l4, hlen, mss, v4, 9, key, hp, 0, bytearray(need))
    with pytest.raises(ValueError, match="segments"):
        fastpath.seal_tcp(
            packet, l4, hlen, mss, v4, 1, key, hp, 2**63 - 2, bytearray(need)
        )
    with pytest.raises(TypeError):
        fastpath.seal_tcp(packet, l4, hlen, mss, v4, 1, key, hp, 0, bytes(need))

    buf, _ = sealed_run(4, 1448, CIPHER_AES_256_GCM, key, hp, first=0)
    counters = np.zeros(4, dtype=np.uint64)
    with pytest.raises(ValueError):
        fastpath.open_run(
            buf, len(buf), 1448, 1, key, hp, bytearray(3 * 1424), counters
        )
    with pytest.raises(ValueError):
        fastpath.open_run(
            buf, len(buf), 1448, 1, key, hp, bytearray(4 * 1424), counters[:3]
        )
    with pytest.raises(ValueError):
        fastpath.open_run(
            buf, len(buf) + 1, 1448, 1, key, hp, bytearray(8000), counters
        )
    with pytest.raises(ValueError):
        fastpath.open_run(buf, len(buf), 39, 1, key, hp, bytearray(8000), counters)


def test_the_agent_uses_it_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(native.ENV, raising=False)
    assert native._load() == (fastpath, "native code")
    monkeypatch.setenv(native.ENV, "0")
    assert native._load() == (None, "Python (HOPR_TUNNEL_NATIVE=0)")


def python_superpacket(grid: np.ndarray, last_plen: int) -> bytes | None:
    """What runs._deliver_flow writes for the whole run, or None if not one
    superpacket: the reference for coalesce_tcp."""
    rows, plen = grid.shape
    l4 = 20 if grid[0, 0] >> 4 == 4 else 40
    at = 2 if l4 == 20 else 4
    lengths = runs._column16(grid, at) + (0 if l4 == 20 else 40)
    if lengths.min() < l4 or lengths.max() > plen or lengths[-1] > last_plen:
        return None
    out = Output()
    if not runs._superpacket(grid, lengths, l4, out):
        return None
    ((_, buffers),) = out.tun_gso
    return b"".join(buffers)


# (what, row, byte offset from the TCP header or None for IP, xor) - one change
# to one row of a run that was one flow in order.
MUTATIONS = {
    "none": None,
    "seq": ("tcp", 7, 0x01),
    "port": ("tcp", 1, 0x01),
    "cwr": ("tcp", 13, 0x80),
    "psh": ("tcp", 13, 0x08),
    "fin": ("tcp", 13, 0x01),
    "syn": ("tcp", 13, 0x02),
    "tcp-checksum": ("tcp", 16, 0xFF),
    "window": ("tcp", 15, 0x01),
    "ttl-or-hop-limit": ("ip", None, 0x01),
    "version": ("ip", 0, 0x20),
}


@settings(max_examples=200, deadline=None)
@given(
    v4=st.booleans(),
    mss=st.integers(20, 1400),
    segments=st.integers(2, 45),
    last_fraction=st.floats(0.0, 1.0),
    options=st.sampled_from([0, 12, 40]),
    psh=st.booleans(),
    seq=st.integers(0, 2**32 - 1),
    mutation=st.sampled_from(sorted(MUTATIONS)),
    row_fraction=st.floats(0.0, 1.0),
    whole=st.booleans(),
)
def test_coalesce_tcp_writes_what_python_writes(
    v4: bool,
    mss: int,
    segments: int,
    last_fraction: float,
    options: int,
    psh: bool,
    seq: int,
    mutation: str,
    row_fraction: float,
    whole: bool,
) -> None:
    segments = max(2, min(segments, 60_000 // mss))
    last = max(1, round(mss * last_fraction))
    flags = 0x10 | (0x08 if psh else 0)
    vnet, packet = superpacket(v4, segments, last, mss, options, flags, seq)
    split = offload.split_tcp_rows(vnet, packet, PAD_TO)
    assert split is not None
    grid = np.ascontiguousarray(split[0])
    rows, plen = grid.shape
    change = MUTATIONS[mutation]
    if change is not None:
        where, offset, xor = change
        row = min(rows - 1, int(row_fraction * rows))
        l4 = 20 if v4 else 40
        if where == "tcp":
            grid[row, l4 + offset] ^= xor
        else:
            grid[row, (8 if v4 else 7) if offset is None else offset] ^= xor
    # The last row's plaintext may end before its row does (a shorter datagram).
    last_plen = int(split[1][-1]) if whole else plen
    want = python_superpacket(grid, last_plen)
    got = fastpath.coalesce_tcp(grid, plen, 0, rows, last_plen)
    assert got == want
    if mutation == "none":
        assert got is not None


def test_coalesce_tcp_takes_a_stretch_of_rows() -> None:
    vnet, packet = superpacket(True, 10, 1368, 1368)
    split = offload.split_tcp_rows(vnet, packet, PAD_TO)
    assert split is not None
    grid = np.ascontiguousarray(split[0])
    rows, plen = grid.shape
    want = python_superpacket(grid[3:7], plen)
    assert want is not None
    assert fastpath.coalesce_tcp(grid, plen, 3, 7, plen) == want
    assert fastpath.coalesce_tcp(grid, plen, 3, 4, plen) is None  # one row: no
    for start, end in ((0, rows + 1), (5, 5), (-1, 3)):
        with pytest.raises(ValueError):
            fastpath.coalesce_tcp(grid, plen, start, end, plen)
    with pytest.raises(ValueError):
        fastpath.coalesce_tcp(grid, plen, 0, rows, plen + 1)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=0, max_size=6000), plen=st.integers(1, 1500))
def test_random_rows_coalesce_as_python_says_and_never_overrun(
    data: bytes, plen: int
) -> None:
    rows = len(data) // plen
    if rows < 2:
        return
    grid = np.frombuffer(data[: rows * plen], np.uint8).reshape(rows, plen)
    for last_plen in (plen, plen // 2):
        got = fastpath.coalesce_tcp(grid, plen, 0, rows, last_plen)
        assert got is None or got == python_superpacket(grid, last_plen)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=0, max_size=6000), size=st.integers(40, 1500))
def test_random_datagrams_open_as_nothing(data: bytes, size: int) -> None:
    key, hp = keys(CIPHER_AES_256_GCM)
    rows = -(-len(data) // size)
    plain = bytearray(rows * (size - OVERHEAD))
    counters = np.zeros(max(rows, 1), dtype=np.uint64)
    assert fastpath.open_run(data, len(data), size, 1, key, hp, plain, counters) == 0


# -- DatagramKeys: one datagram at a time, the lone packet's short way -----------------


@settings(max_examples=200, deadline=None)
@given(
    cipher=st.sampled_from(CIPHERS),
    packet=st.binary(min_size=0, max_size=1500),
    counter=st.integers(0, 2**63 - 1),
)
def test_datagram_keys_seal_and_open_as_python_does(
    cipher: int, packet: bytes, counter: int
) -> None:
    key, hp = keys(cipher)
    aead, mask = make_aead(cipher, key), make_hp(hp)
    sealing = fastpath.DatagramKeys(cipher, key, hp, True)
    opening = fastpath.DatagramKeys(cipher, key, hp, False)
    dgram = sealing.seal(counter, packet)
    assert dgram == datagram.seal(aead, mask, counter, datagram.pad(packet))
    assert opening.open(dgram) == (counter, datagram.pad(packet))
    assert opening.open(memoryview(bytearray(dgram))) == (counter, datagram.pad(packet))


def test_datagram_keys_open_nothing_but_data_under_their_key() -> None:
    key, hp = keys(CIPHER_AES_256_GCM)
    aead, mask = make_aead(CIPHER_AES_256_GCM, key), make_hp(hp)
    opening = fastpath.DatagramKeys(CIPHER_AES_256_GCM, key, hp, False)
    good = datagram.seal(aead, mask, 77, bytes(64))
    assert opening.open(good) == (77, bytes(64))
    assert opening.open(datagram.seal(aead, mask, HELLO_FLAG | 5, bytes(64))) is None
    for at in (0, 7, 8, 40, len(good) - 1):  # header, sample, body, tag
        forged = bytearray(good)
        forged[at] ^= 0x10
        assert opening.open(bytes(forged)) is None
    assert opening.open(good[: HEADER_LEN + TAG_LEN - 1]) is None
    assert opening.open(b"") is None
    other, _ = keys(CIPHER_AES_256_GCM)
    assert fastpath.DatagramKeys(1, other, hp, False).open(good) is None
    keepalive = fastpath.DatagramKeys(1, key, hp, True).seal(9, b"")
    assert len(keepalive) == HEADER_LEN + TAG_LEN
    assert opening.open(keepalive) == (9, b"")


def test_datagram_keys_refuse_bad_arguments() -> None:
    key, hp = keys(CIPHER_AES_256_GCM)
    sealing = fastpath.DatagramKeys(CIPHER_AES_256_GCM, key, hp, True)
    opening = fastpath.DatagramKeys(CIPHER_AES_256_GCM, key, hp, False)
    with pytest.raises(ValueError, match="do not open"):
        sealing.open(sealing.seal(1, b"x"))
    with pytest.raises(ValueError, match="do not seal"):
        opening.seal(1, b"x")
    with pytest.raises(ValueError, match="range"):
        sealing.seal(2**63, b"x")
    with pytest.raises(ValueError, match="range"):
        sealing.seal(1, bytes(65536))
    with pytest.raises(ValueError, match="key"):
        fastpath.DatagramKeys(CIPHER_AES_256_GCM, key[:16], hp, True)
    with pytest.raises(ValueError, match="hp_key"):
        fastpath.DatagramKeys(CIPHER_AES_256_GCM, key, hp + b"x", True)
    with pytest.raises(ValueError, match="cipher"):
        fastpath.DatagramKeys(9, key, hp, True)
    with pytest.raises(TypeError):
        sealing.__init__(CIPHER_AES_256_GCM, key, hp, True)  # made once
    with pytest.raises(ValueError, match="set up"):
        fastpath.DatagramKeys.__new__(fastpath.DatagramKeys).seal(1, b"x")


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=0, max_size=3000))
def test_random_bytes_never_open_as_a_datagram(data: bytes) -> None:
    key, hp = keys(CIPHER_AES_256_GCM)
    assert fastpath.DatagramKeys(1, key, hp, False).open(data) is None
