"""The I/O shell (tunnel/dataplane.py) on a real TUN device, in a private netns.

    private netns
    +--------------------------------------------------------------------+
    | hoprdp0 (TUN) 100.64.0.1/24 <-> DataPlane(node A) on uvloop         |
    |                                  | 127.0.0.1:20000 <-> :20001       |
    |                                  v                                  |
    |                    the test's peer: node B (sans-IO) + one socket   |
    +--------------------------------------------------------------------+

Both sides use one-port ranges, so every epoch draws the same 4-tuple and the
peer needs one socket. Kernel sockets on 100.64.0.1 send packets into the TUN
and receive what the shell writes to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest
import uvloop

from agent.netlink import Link
from tests.private_netns import private_netns  # noqa: F401  (fixture)
from tunnel import keys
from tunnel.constants import CIPHER_AES_256_GCM
from tunnel.dataplane import DataPlane
from tunnel.node import Node
from tunnel.output import Output
from tunnel.tun import open_tun

LOCAL = ipaddress.ip_address("127.0.0.1")
A_PORTS, B_PORTS = (20000, 20000), (20001, 20001)
HOP_MS = 1000
WAIT_S = 5.0


def ipv4_udp(src: str, dst: str, dport: int, payload: bytes) -> bytes:
    """An IPv4/UDP packet the kernel accepts: header checksum set, UDP's zero."""
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(udp),
            0,
            0,
            64,
            17,
            0,
            ipaddress.IPv4Address(src).packed,
            ipaddress.IPv4Address(dst).packed,
        )
    )
    total = sum(struct.unpack("!10H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    header[10:12] = struct.pack("!H", ~total & 0xFFFF)
    return bytes(header) + udp


class Bench:
    """Node A behind the shell under test, node B driven by the test."""

    def __init__(self, with_peer_socket: bool = True) -> None:
        self.loop = uvloop.new_event_loop()
        self.tun = open_tun("hoprdp0")
        self.link = Link("hoprdp0")
        self.link.configure([ipaddress.ip_interface("100.64.0.1/24")], 1420)
        a, b = keys.generate_private(), keys.generate_private()
        now = time.time_ns()
        self.plane = DataPlane(
            Node(a, HOP_MS, CIPHER_AES_256_GCM, A_PORTS, now),
            self.tun,
            LOCAL,
            self.loop,
        )
        self.b = Node(b, HOP_MS, CIPHER_AES_256_GCM, B_PORTS, now)
        self.b_out = Output()
        self.delivered: list[bytes] = []  # inner packets node B opened
        self.wire: list[bytes] = []  # datagrams node B received
        self.sock: socket.socket | None = None
        if with_peer_socket:
            self.open_peer_socket()
        self.peer_a = self.b.add_peer(
            "a",
            keys.public_from_private(a),
            None,
            A_PORTS,
            [ipaddress.ip_network("100.64.0.1/32")],
            now,
            self.b_out,
        )
        self.plane.add_peer(
            "b",
            keys.public_from_private(b),
            None,
            B_PORTS,
            [ipaddress.ip_network("100.64.0.2/32")],
            LOCAL,
        )
        self.plane.start()
        self._b_flush()

    def open_peer_socket(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((str(LOCAL), B_PORTS[0]))
        self.sock.connect((str(LOCAL), A_PORTS[0]))
        self.sock.setblocking(False)
        self.loop.add_reader(self.sock.fileno(), self._b_readable)

    def b_says_hello(self) -> None:
        self.peer_a.send_hello(time.time_ns(), self.b_out, please_answer=True)
        self._b_flush()

    def _b_readable(self) -> None:
        assert self.sock is not None
        now = time.time_ns()
        n = self.peer_a.schedule.epoch_at(now // 1_000_000)
        while True:
            try:
                dgram = self.sock.recv(65535)
            except BlockingIOError:
                break
            self.wire.append(dgram)
            self.b.on_datagram(self.peer_a, (n - 1, n, n + 1), dgram, now, self.b_out)
        self._b_flush()

    def _b_flush(self) -> None:
        self.delivered += self.b_out.tun
        if self.sock is not None:
            for _, _, dgram in self.b_out.send:
                self.sock.send(dgram)
        self.b_out.clear()

    def b_sends(self, packet: bytes) -> None:
        self.b.on_tun_packet(packet, time.time_ns(), self.b_out)
        self._b_flush()

    def until(self, condition: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + WAIT_S
        while not condition() and time.monotonic() < deadline:
            self.loop.run_until_complete(asyncio.sleep(0.01))
        return condition()

    def session(self) -> bool:
        return self.until(
            lambda: (
                self.peer_a.sealing is not None
                and self.plane.node.peers["b"].sealing is not None
            )
        )

    def close(self) -> None:
        self.plane.close()
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
        self.link.close()
        self.tun.close()
        self.loop.close()


@pytest.fixture
def bench(request: pytest.FixtureRequest) -> Iterator[Bench]:
    request.getfixturevalue("private_netns")
    made = Bench()
    try:
        yield made
    finally:
        made.close()


def test_a_packet_routed_into_the_tun_reaches_the_peer(bench: Bench) -> None:
    assert bench.session()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as app:
        app.sendto(b"hello through the tunnel", ("100.64.0.2", 9))
    assert bench.until(
        lambda: any(p.endswith(b"through the tunnel") for p in bench.delivered)
    )


def test_the_wire_never_carries_the_inner_payload(bench: Bench) -> None:
    assert bench.session()
    secret = b"inner payload that must not leak" * 4
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as app:
        app.sendto(secret, ("100.64.0.2", 9))
    assert bench.until(lambda: any(secret in p for p in bench.delivered))
    assert not any(secret[:16] in d for d in bench.wire)


def test_a_lone_packet_refused_for_an_earlier_one_is_sent_again(bench: Bench) -> None:
    """DataPlane._send_lone meets ECONNREFUSED as _send does: the kernel reports
    the ICMP port unreachable of an earlier datagram on the next send, which
    did not go out; it goes out again."""
    assert bench.session() and bench.sock is not None
    session = bench.plane.node.peers["b"].sealing
    assert session is not None
    ours = bench.plane.sockets["b"].socket_for(session.send_epoch)
    assert ours is not None
    bench.loop.remove_reader(bench.sock.fileno())
    bench.sock.close()  # the peer's hop socket is gone for a moment
    ours.send(b"x" * 40)  # its ICMP port unreachable waits on our socket
    bench.open_peer_socket()
    packet = ipv4_udp("100.64.0.1", "100.64.0.2", 9, b"the port is back")
    assert bench.plane._send_lone(packet, time.time_ns())
    assert bench.until(lambda: packet in bench.delivered)


def test_a_datagram_from_the_peer_is_written_to_the_tun(bench: Bench) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as app:
        app.bind(("100.64.0.1", 7777))
        app.setblocking(False)
        assert bench.session()
        bench.b_sends(ipv4_udp("100.64.0.2", "100.64.0.1", 7777, b"from b"))
        got: list[bytes] = []

        def received() -> bool:
            with contextlib.suppress(BlockingIOError):
                got.append(app.recv(100))
            return bool(got)

        assert bench.until(received) and got == [b"from b"]


def test_junk_datagrams_are_counted_and_traffic_goes_on(bench: Bench) -> None:
    assert bench.session() and bench.sock is not None
    for size in (0, 1, 23, 24, 100, 1400):
        bench.sock.send(os.urandom(size))
    drops = bench.plane.node.peers["b"].stats.drops
    assert bench.until(lambda: sum(drops.values()) >= 6)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as app:
        app.sendto(b"still works", ("100.64.0.2", 9))
    assert bench.until(lambda: any(p.endswith(b"still works") for p in bench.delivered))


def test_a_send_the_peer_refuses_is_counted_not_raised(
    request: pytest.FixtureRequest,
) -> None:
    request.getfixturevalue("private_netns")
    lonely = Bench(with_peer_socket=False)  # nothing listens on the peer's port
    try:
        errors = lonely.plane.peer_errors["b"].counts
        assert lonely.until(lambda: any("econnrefused" in k for k in errors))
        assert lonely.plane.running
    finally:
        lonely.close()


def test_a_socket_refused_once_still_receives_afterwards(
    request: pytest.FixtureRequest,
) -> None:
    request.getfixturevalue("private_netns")
    late = Bench(with_peer_socket=False)  # the peer comes up after our hello
    try:
        errors = late.plane.peer_errors["b"].counts
        assert late.until(lambda: any("econnrefused" in k for k in errors))
        late.open_peer_socket()
        late.b_says_hello()
        assert late.session()
    finally:
        late.close()
