"""DatagramKeys.drain (tunnel/_fastpath.c) on real sockets: what it takes, what
it leaves for the Python way, and that what it writes is what Python writes.

Each test runs in a fresh anonymous namespace (tests/private_netns.py) with a
UDP pair on its loopback: the sender seals with the protocol's own Python code
and sends runs with UDP_SEGMENT; the receiver has UDP_GRO on, as a hop socket
has. In place of the TUN device the drain writes to a socket pair, so every byte it
would hand the kernel is read back and compared with the reference: the
superpacket runs.py's coalescing makes (held to Linux GRO elsewhere), or the
lone packet behind a zero virtio-net header.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator

import numpy as np
import pytest

from tests.private_netns import private_netns  # noqa: F401  (fixture)
from tests.test_native import OVERHEAD, superpacket
from tunnel import datagram, offload, udpoffload
from tunnel.allowedips import AllowedIPs
from tunnel.constants import CIPHER_AES_256_GCM, PAD_TO
from tunnel.schedule import make_aead, make_hp

fastpath = pytest.importorskip("tunnel._fastpath", reason="the extension is not built")

EMPTY, RAW, OPENED, RECV_ERROR, TUN_ERROR, BUDGET, LONE = range(7)
ZERO_VNET = bytes(offload.VNET_HDR_LEN)
SIZE = 1448  # a full datagram of a 1420-byte tunnel


class Lab:
    """Keys, a sender, a GRO receiver, a pipe for the TUN and drain's buffers."""

    def __init__(self) -> None:
        self.key, self.hp = os.urandom(32), os.urandom(16)
        self.aead, self.mask = make_aead(CIPHER_AES_256_GCM, self.key), make_hp(self.hp)
        self.keys = fastpath.DatagramKeys(CIPHER_AES_256_GCM, self.key, self.hp, False)
        self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.bind(("127.0.0.1", 0))
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tx.connect(self.rx.getsockname())
        self.rx.connect(self.tx.getsockname())
        self.rx.setblocking(False)
        assert udpoffload.enable_udp_gro(self.rx)
        # A TUN device keeps each write one packet; so does a seqpacket pair.
        self.tun, self.tun_peer = socket.socketpair(
            socket.AF_UNIX, socket.SOCK_SEQPACKET
        )
        self.tun.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
        self.tun_peer.setblocking(False)
        self.tun_w = self.tun.fileno()
        routes: AllowedIPs[str] = AllowedIPs()
        routes.insert("100.64.0.0/24", "peer")
        routes.insert("fd00::/64", "peer")
        routes.insert("100.64.0.128/25", "other")
        self.sources = routes.source_filter("peer")
        self.buf, self.plain = bytearray(65_535), bytearray(65_535)
        self.counters = np.zeros(1024, dtype=np.uint64)
        self.runs = bytearray(16 * 64)

    def close(self) -> None:
        self.rx.close()
        self.tx.close()
        self.tun.close()
        self.tun_peer.close()

    def seal(self, counter: int, packet: bytes) -> bytes:
        padded = packet + bytes(-len(packet) % PAD_TO)
        return datagram.seal(self.aead, self.mask, counter, padded)

    def send_run(self, dgrams: list[bytes]) -> None:
        """One UDP_SEGMENT send: one GRO read for the receiver."""
        cmsg = [udpoffload.segment_cmsg(len(dgrams[0]))] if len(dgrams) > 1 else []
        self.tx.sendmsg([b"".join(dgrams)], cmsg)

    def drain(
        self, top: int = -1, max_reads: int = 64, lone_ends: bool = False
    ) -> tuple[int, ...]:
        return tuple(
            self.keys.drain(
                self.rx.fileno(),
                self.buf,
                self.tun_w,
                top,
                self.sources,
                self.plain,
                self.counters,
                self.runs,
                max_reads,
                lone_ends,
            )  # fmt: skip
        )

    def written(self) -> list[bytes]:
        """What the drain wrote to the 'TUN', one entry per write."""
        out = []
        while True:
            try:
                out.append(self.tun_peer.recv(1 << 17))
            except BlockingIOError:
                return out

    def taken(self, reads: int) -> list[tuple[int, int]]:
        return [struct.unpack_from("<QQ", self.runs, 16 * i) for i in range(reads)]


@pytest.fixture
def lab(private_netns: None) -> Iterator[Lab]:  # noqa: F811
    made = Lab()
    try:
        yield made
    finally:
        made.close()


def segments(
    v4: bool, count: int, mss: int = 1368, last: int = 1368, seq: int = 1
) -> list[bytes]:
    """The wire packets of one TCP superpacket, as the sender's TSO cuts them."""
    vnet, packet = superpacket(v4, count, last, mss, options=12, seq=seq)
    return [bytes(p) for p in offload.split(vnet, packet, 1)]


def reference(packets: list[bytes]) -> bytes:
    """The superpacket runs.py writes for rows that are one flow in order."""
    plen = max(len(p) for p in packets)
    plen += -plen % PAD_TO
    grid = np.zeros((len(packets), plen), dtype=np.uint8)
    for i, p in enumerate(packets):
        grid[i, : len(p)] = np.frombuffer(p, np.uint8)
    made = fastpath.coalesce_tcp(grid, plen, 0, len(packets), plen)
    assert made is not None
    return made


def ipv4_udp(payload: bytes, src: str = "100.64.0.2") -> bytes:
    total = 28 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton("100.64.0.1"))  # fmt: skip
    return ip + struct.pack("!HHHH", 5000, 6000, 8 + len(payload), 0) + payload


@pytest.mark.parametrize("v4", [True, False])
def test_a_bulk_run_is_written_as_the_superpacket_python_makes(
    lab: Lab, v4: bool
) -> None:
    packets = segments(v4, 45, last=700)
    lab.send_run([lab.seal(100 + i, p) for i, p in enumerate(packets)])
    status, reads, rows, nbytes, *_ = lab.drain(top=99)
    assert (status, reads, rows) == (EMPTY, 1, 45)
    assert nbytes == sum(len(lab.seal(0, p)) for p in packets)
    assert lab.taken(1) == [(100, 45)]
    assert lab.written() == [reference(packets)]


def test_runs_in_a_row_are_taken_until_the_socket_is_empty(lab: Lab) -> None:
    first = segments(True, 20)
    second = segments(True, 20, seq=1 + 20 * 1368)
    lab.send_run([lab.seal(1 + i, p) for i, p in enumerate(first)])
    lab.send_run([lab.seal(30 + i, p) for i, p in enumerate(second)])  # a gap: loss
    status, reads, rows, *_ = lab.drain(top=0)
    assert (status, reads, rows) == (EMPTY, 2, 40)
    assert lab.taken(2) == [(1, 20), (30, 20)]
    assert lab.written() == [reference(first), reference(second)]


def test_max_reads_is_a_budget(lab: Lab) -> None:
    for k in range(3):
        lab.send_run([lab.seal(10 * k + i, p) for i, p in enumerate(segments(True, 4))])
    status, reads, rows, *_ = lab.drain(max_reads=2)
    assert (status, reads, rows) == (BUDGET, 2, 8)
    assert len(lab.written()) == 2
    assert lab.drain()[:3] == (EMPTY, 1, 4)


def test_a_lone_packet_is_written_behind_a_zero_header(lab: Lab) -> None:
    ping = segments(True, 2, mss=56, last=56)[0]
    lab.send_run([lab.seal(7, ping)])
    status, reads, rows, *_ = lab.drain(top=6, lone_ends=True)
    assert (status, reads, rows) == (LONE, 1, 1)
    assert lab.taken(1) == [(7, 1)]
    assert lab.written() == [ZERO_VNET + ping]


def test_a_replayed_or_late_run_is_opened_and_left_for_python(lab: Lab) -> None:
    packets = segments(True, 10)
    lab.send_run([lab.seal(50 + i, p) for i, p in enumerate(packets)])
    status, reads, _, _, opened, left, size, _ = lab.drain(top=50)
    assert (status, reads, opened) == (OPENED, 0, 10)
    assert (left, size) == (10 * SIZE, SIZE)
    assert lab.counters[:10].tolist() == list(range(50, 60))
    for i, p in enumerate(packets):  # opened in place, for runs.opened_gro_run
        assert bytes(lab.plain[i * (SIZE - OVERHEAD) :][: len(p)]) == p
    assert lab.written() == []


def test_counters_out_of_order_are_left_for_python(lab: Lab) -> None:
    packets = segments(True, 3)
    lab.send_run([lab.seal(c, p) for c, p in zip([5, 7, 6], packets, strict=True)])
    assert lab.drain()[:5] == (OPENED, 0, 0, 0, 3)
    assert lab.written() == []


def test_a_source_of_another_peer_is_left_for_python(lab: Lab) -> None:
    # 100.64.0.200 is inside this peer's /24 but "other" has the /25 holding it.
    ping = ipv4_udp(b"x" * 64, src="100.64.0.200")
    lab.send_run([lab.seal(1, ping)])
    assert lab.drain(lone_ends=True)[:3] == (RAW, 0, 0)
    lab.send_run([lab.seal(2, ipv4_udp(b"x" * 64, src="100.64.0.127"))])
    assert lab.drain(lone_ends=True)[:3] == (LONE, 1, 1)
    assert len(lab.written()) == 1


def test_a_udp_run_is_written_packet_by_packet_never_merged(lab: Lab) -> None:
    packets = [ipv4_udp(bytes([i]) * 1380) for i in range(8)]
    lab.send_run([lab.seal(1 + i, p) for i, p in enumerate(packets)])
    assert lab.drain()[:3] == (EMPTY, 1, 8)
    assert lab.written() == [ZERO_VNET + p for p in packets]


def test_a_run_of_pure_acks_is_written_packet_by_packet(lab: Lab) -> None:
    ack = segments(True, 2, mss=1, last=1)[0]
    acks = [ack[:52] for _ in range(30)]  # the header alone: no payload
    for i, a in enumerate(acks):
        acks[i] = a[:2] + (52).to_bytes(2, "big") + a[4:]
    lab.send_run([lab.seal(1 + i, a) for i, a in enumerate(acks)])
    assert lab.drain()[:3] == (EMPTY, 1, 30)
    assert lab.written() == [ZERO_VNET + a for a in acks]


def with_ports(packets: list[bytes], sport: int) -> list[bytes]:
    """The same segments as another flow (IPv4, no IP options)."""
    return [p[:20] + sport.to_bytes(2, "big") + p[22:] for p in packets]


def test_stretches_of_flows_are_one_superpacket_each(lab: Lab) -> None:
    one, two = segments(True, 10), with_ports(segments(True, 6, last=500), 40001)
    lone = ipv4_udp(b"between".ljust(1392))  # a full row: only the last is shorter
    rows = one + [lone] + two
    lab.send_run([lab.seal(1 + i, p) for i, p in enumerate(rows)])
    assert lab.drain()[:3] == (EMPTY, 1, 17)
    assert lab.written() == [reference(one), ZERO_VNET + lone, reference(two)]


def test_a_run_with_a_row_python_drops_is_left_for_python(lab: Lab) -> None:
    rows = [ipv4_udp(b"x" * 600) for _ in range(5)]
    rows[2] = ipv4_udp(b"x" * 600, src="100.64.0.200")  # another peer's source
    lab.send_run([lab.seal(1 + i, p) for i, p in enumerate(rows)])
    status, reads, _, _, opened, *_ = lab.drain()
    assert (status, reads, opened) == (OPENED, 0, 5)
    assert lab.written() == []


def test_a_forged_row_stops_the_opening_there(lab: Lab) -> None:
    dgrams = [lab.seal(1 + i, p) for i, p in enumerate(segments(True, 6))]
    forged = bytearray(dgrams[3])
    forged[100] ^= 1
    dgrams[3] = bytes(forged)
    lab.send_run(dgrams)
    status, reads, _, _, opened, *_ = lab.drain()
    assert (status, reads, opened) == (OPENED, 0, 3)
    assert lab.written() == []


def test_keepalives_hellos_and_short_datagrams_are_left_raw(lab: Lab) -> None:
    for dgram in (lab.seal(1, b""), b"\x80" + os.urandom(60), os.urandom(10)):
        lab.tx.send(dgram)
        status, reads, _, _, _, left, size, _ = lab.drain(lone_ends=True)
        assert (status, reads, left, size) == (RAW, 0, len(dgram), 0)
    assert lab.written() == []


def test_a_failed_tun_write_is_reported_and_the_read_still_taken(lab: Lab) -> None:
    lab.tun_peer.close()  # writes now fail with EPIPE
    lab.send_run([lab.seal(1 + i, p) for i, p in enumerate(segments(True, 4))])
    status, reads, rows, *_, err = lab.drain()
    assert (status, reads, rows, err) == (TUN_ERROR, 1, 4, errno.EPIPE)


def test_bad_arguments_are_refused(lab: Lab) -> None:
    with pytest.raises(ValueError, match="source filter"):
        lab.keys.drain(lab.rx.fileno(), lab.buf, lab.tun_w, -1, bytes([5]) + bytes(19),
                       lab.plain, lab.counters, lab.runs, 1, False)  # fmt: skip
    with pytest.raises(ValueError, match="out of range"):
        lab.keys.drain(lab.rx.fileno(), lab.buf, lab.tun_w, -1, b"", lab.plain,
                       lab.counters, bytearray(8), 1, False)  # fmt: skip
    sealing = fastpath.DatagramKeys(CIPHER_AES_256_GCM, lab.key, lab.hp, True)
    with pytest.raises(ValueError, match="seal, they do not open"):
        sealing.drain(lab.rx.fileno(), lab.buf, lab.tun_w, -1, b"", lab.plain,
                      lab.counters, lab.runs, 1, False)  # fmt: skip


def _allowed(entries: bytes, source: bytes) -> bool:
    """The filter's rule, read in Python: the longest entry holding the source
    decides, and it must be marked 1."""
    version = 4 if len(source) == 4 else 6
    best, mark = -1, 0
    for at in range(0, len(entries), 20):
        e = entries[at : at + 20]
        shift = 8 * len(source) - e[1]  # the host bits
        net = int.from_bytes(e[4 : 4 + len(source)], "big")
        if (
            e[0] == version
            and e[1] > best
            and int.from_bytes(source, "big") >> shift == net >> shift
        ):
            best, mark = e[1], e[2]
    return mark == 1


def test_the_source_filter_says_what_lookup_src_says() -> None:
    routes: AllowedIPs[str] = AllowedIPs()
    routes.insert("100.64.0.0/16", "a")
    routes.insert("100.64.3.0/24", "b")
    routes.insert("100.64.3.16/28", "a")
    routes.insert("100.0.0.0/8", "c")
    routes.insert("fd00::/56", "a")
    routes.insert("fd00::80/121", "b")
    rng = np.random.default_rng(5)
    cases = [bytes([100, 64, 3, x]) for x in range(256)]
    cases += [bytes([100, 64, int(y), 1]) for y in rng.integers(0, 256, 64)]
    cases += [bytes([100, 65, 0, 1]), bytes([10, 0, 0, 1])]
    cases += [bytes.fromhex("fd00" + "00" * 13) + bytes([x]) for x in range(256)]
    for peer in ("a", "b", "c"):
        entries = routes.source_filter(peer)
        for src in cases:
            want = routes.lookup(src) == peer
            assert _allowed(entries, src) is want, (peer, src.hex())
