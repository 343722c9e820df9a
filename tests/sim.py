"""An in-memory network of protocol cores with a fake clock.

Each SimHost runs a tunnel.node.Node. Datagrams travel through SimNet, which can
delay, reorder, duplicate and lose them, and which delivers a datagram only as
the kernel would: to the receiver's socket whose 4-tuple matches, for the epochs
of the receiver's own clock window (n-1, n, n+1). Hours of hops run in a second.
"""

from __future__ import annotations

import heapq
import ipaddress
import random
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tunnel import keys
from tunnel.constants import CIPHER_AES_256_GCM
from tunnel.node import Node
from tunnel.output import Output
from tunnel.peer import Peer

SECOND = 10**9
MS = 10**6
START_NS = 1_796_300_000_000 * MS


def ipv4_packet(src: str, dst: str, tag: int, size: int = 100) -> bytes:
    """A minimal IPv4/UDP packet carrying `tag`; its length field is right."""
    payload = struct.pack("!Q", tag) + bytes(max(0, size - 36))
    udp = struct.pack("!HHHH", 9, 9, 8 + len(payload), 0) + payload
    header = struct.pack(
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
    return header + udp


def tag_of(packet: bytes) -> int:
    return int(struct.unpack_from("!Q", packet, 28)[0])


@dataclass
class SimHost:
    name: str
    private: bytes
    address: str
    net: SimNet
    skew_ns: int = 0
    hop_ms: int = 1000
    cipher_id: int = CIPHER_AES_256_GCM
    node: Node | None = None
    received: Counter[int] = field(default_factory=Counter)
    alive: bool = True

    @property
    def public(self) -> bytes:
        return keys.public_from_private(self.private)

    def now(self) -> int:
        return self.net.now_ns + self.skew_ns

    def boot(self) -> None:
        """Start (or restart) the agent: a fresh node, fresh ephemeral."""
        self.alive = True
        self.node = Node(
            self.private, self.hop_ms, self.cipher_id, (20000, 29999), self.now()
        )
        out = Output()
        for other in self.net.hosts.values():
            if other is not self:
                self.node.add_peer(
                    other.name,
                    other.public,
                    None,
                    (20000, 29999),
                    [ipaddress.ip_network(other.address + "/32")],
                    self.now(),
                    out,
                )
        self.net.carry(self, out)
        self.net.schedule_timer(self)

    def crash(self) -> None:
        self.alive = False
        self.node = None

    def send_packet(self, dst: SimHost, tag: int) -> None:
        if not self.alive or self.node is None:
            return
        out = Output()
        self.node.on_tun_packet(
            ipv4_packet(self.address, dst.address, tag), self.now(), out
        )
        self.net.carry(self, out)

    def peer(self, name: str) -> Peer:
        assert self.node is not None
        return self.node.peers[name]


@dataclass
class Link:
    loss: float = 0.0
    duplicate: float = 0.0
    delay_ns: int = 5 * MS
    jitter_ns: int = 0  # uniform extra delay: reorders datagrams
    drop_if: Callable[[bytes, SimHost, SimHost], bool] | None = None


class SimNet:
    def __init__(self, seed: int = 1) -> None:
        self.now_ns = START_NS
        self.hosts: dict[str, SimHost] = {}
        self.link = Link()
        self.rng = random.Random(seed)
        self._events: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 0
        self.recorded: list[tuple[SimHost, SimHost, int, int, bytes]] = []
        self.unreachable = 0
        self.next_tag = 0  # packet tags are unique across every flow

    def add(self, name: str, address: str, **kw: int) -> SimHost:
        seed = self.rng.randbytes(32)
        host = SimHost(name, keys.clamp(seed), address, self, **kw)
        self.hosts[name] = host
        return host

    # -- events --------------------------------------------------------------------

    def at(self, when_ns: int, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._events, (when_ns, self._seq, action))

    def run_until(self, end_ns: int) -> None:
        while self._events and self._events[0][0] <= end_ns:
            when, _, action = heapq.heappop(self._events)
            self.now_ns = max(self.now_ns, when)
            action()
        self.now_ns = max(self.now_ns, end_ns)

    def schedule_timer(self, host: SimHost) -> None:
        node = host.node
        if node is None:
            return
        local_deadline = node.next_deadline_ns(host.now())
        delay = min(max(local_deadline - host.now(), MS), 100 * MS)

        def tick() -> None:
            if host.node is not node:
                return  # the host restarted; its new node has its own timer
            out = Output()
            node.on_timer(host.now(), out)
            self.carry(host, out)
            self.schedule_timer(host)

        self.at(self.now_ns + delay, tick)

    # -- datagrams -----------------------------------------------------------------

    def carry(self, sender: SimHost, out: Output) -> None:
        for peer, epoch, dgram in out.send:
            receiver = self.hosts[peer.name]
            src_port, dst_port = peer.schedule.ports(epoch)
            self.recorded.append((sender, receiver, src_port, dst_port, dgram))
            self._transmit(sender, receiver, src_port, dst_port, dgram)
        for packet in out.tun:
            sender.received[tag_of(packet)] += 1
        out.clear()

    def _transmit(
        self,
        sender: SimHost,
        receiver: SimHost,
        src_port: int,
        dst_port: int,
        dgram: bytes,
    ) -> None:
        link = self.link
        if link.drop_if is not None and link.drop_if(dgram, sender, receiver):
            return
        if self.rng.random() < link.loss:
            return
        copies = 2 if self.rng.random() < link.duplicate else 1
        for _ in range(copies):
            delay = link.delay_ns + self.rng.randint(0, link.jitter_ns)
            self.at(
                self.now_ns + delay,
                lambda: self.deliver(sender, receiver, src_port, dst_port, dgram),
            )

    def deliver(
        self,
        sender: SimHost,
        receiver: SimHost,
        src_port: int,
        dst_port: int,
        dgram: bytes,
    ) -> None:
        """Hand a datagram to the receiver socket bound to its 4-tuple, if open."""
        node = receiver.node
        if node is None or sender.name not in node.peers:
            self.unreachable += 1
            return
        peer = node.peers[sender.name]
        clock_epoch = peer.schedule.epoch_at(receiver.now() // MS)
        epochs = tuple(
            e
            for e in (clock_epoch - 1, clock_epoch, clock_epoch + 1)
            if peer.schedule.ports(e) == (dst_port, src_port)
        )
        if not epochs:
            self.unreachable += 1
            return
        out = Output()
        node.on_datagram(peer, epochs, dgram, receiver.now(), out)
        self.carry(receiver, out)

    def replay_recorded(self, into: SimHost) -> None:
        """Send every recorded datagram addressed to `into` once more."""
        for sender, receiver, src, dst, dgram in list(self.recorded):
            if receiver is into:
                self.deliver(sender, receiver, src, dst, dgram)


class Traffic:
    """Numbered packets between two hosts, to check exactly-once delivery."""

    def __init__(self, net: SimNet, a: SimHost, b: SimHost, every_ns: int) -> None:
        self.net, self.a, self.b, self.every_ns = net, a, b, every_ns
        self.sent: dict[str, list[tuple[int, int]]] = {a.name: [], b.name: []}

    def run(self, start_ns: int, end_ns: int) -> None:
        t = start_ns
        while t < end_ns:
            self.net.at(t, self._both)
            t += self.every_ns

    def _both(self) -> None:
        for src, dst in ((self.a, self.b), (self.b, self.a)):
            self.net.next_tag += 1
            tag = self.net.next_tag
            if src.alive:
                self.sent[src.name].append((self.net.now_ns, tag))
                src.send_packet(dst, tag)

    def tags_sent(
        self, src: SimHost, since_ns: int = 0, until_ns: int = 2**63
    ) -> set[int]:
        return {tag for t, tag in self.sent[src.name] if since_ns <= t < until_ns}
