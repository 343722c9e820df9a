"""The agent's protocol core: its ephemerals, its peers and cryptokey routing.

The I/O shell feeds it inner packets from the TUN device, datagrams from peers'
sockets and timer ticks, each with `now_ns`, and carries out the Output. The node
owns what is shared between peers: the ephemeral (one per agent, replaced every
120 s of use and erased within 180 s of its birth) and the allowed-address table
that maps an inner destination to its peer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import numpy as np

from . import native
from .allowedips import AllowedIPs
from .batch import seal_packets
from .constants import (
    EPHEMERAL_ACTIVE_NS,
    EPHEMERAL_LINGER_NS,
    EPHEMERAL_MAX_AGE_NS,
    EPHEMERAL_ROTATE_NS,
)
from .datagram import Buffer
from .output import Output
from .peer import Peer
from .runs import seal_rows, seal_superpacket
from .schedule import PairSchedule
from .session import Ephemeral, Ephemerals

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Node:
    def __init__(
        self,
        private_key: bytes,
        hop_ms: int,
        cipher_id: int,
        own_ports: tuple[int, int],
        now_ns: int,
    ) -> None:
        self.private_key = private_key
        self.hop_ms = hop_ms
        self.cipher_id = cipher_id
        self.own_ports = own_ports
        self.ephemerals = Ephemerals(now_ns)
        self.routes: AllowedIPs[Peer] = AllowedIPs()
        self.peers: dict[str, Peer] = {}
        self.stats_no_route = 0
        self.stats_malformed = 0  # TUN superpackets no kernel should hand over

    # -- peers --

    def add_peer(
        self,
        name: str,
        public_key: bytes,
        psk: bytes | None,
        peer_ports: tuple[int, int],
        allowed_ips: Iterable[Network],
        now_ns: int,
        out: Output,
    ) -> Peer:
        """A new peer, greeted with a hello that asks for an answer."""
        schedule = PairSchedule(
            self.private_key,
            public_key,
            psk,
            self.hop_ms,
            self.cipher_id,
            self.own_ports,
            peer_ports,
        )
        peer = Peer(name, schedule, self.ephemerals, self.routes)
        for network in allowed_ips:
            self.routes.insert(network, peer)
        self.peers[name] = peer
        peer.start(now_ns, out)
        return peer

    def remove_peer(self, name: str) -> Peer:
        peer = self.peers.pop(name)
        self.routes.remove(peer)
        for session in list(peer.sessions):
            peer._erase(session)
        return peer

    # -- inputs --

    def on_tun_packet(self, packet: bytes, now_ns: int, out: Output) -> None:
        """An inner packet from the TUN: route it by destination, then seal it."""
        peer = self.routes.lookup_dst(packet)
        if peer is None:
            if not is_multicast(packet):
                self.stats_no_route += 1
                out.drop = "no_route"
            return
        peer.on_packet(packet, now_ns, out)
        if self.ephemerals.rotation_requested:
            self._rotate(now_ns, out)

    def on_tun_packets(self, packets: list[bytes], now_ns: int, out: Output) -> None:
        """The wire packets of one TUN superpacket: one destination, one run."""
        if len(packets) == 1:
            self.on_tun_packet(packets[0], now_ns, out)
            return
        peer = self.routes.lookup_dst(packets[0])
        if peer is None:
            self.stats_no_route += len(packets)
            out.drop = "no_route"
            return
        seal_packets(peer, packets, now_ns, out)
        if self.ephemerals.rotation_requested:
            self._rotate(now_ns, out)

    def on_tun_rows(
        self, rows: np.ndarray, lengths: list[int], now_ns: int, out: Output
    ) -> None:
        """A TCP superpacket split into rows (offload.split_tcp_rows)."""
        peer = self.routes.lookup_dst(rows[0, :40].tobytes())
        if peer is None:
            self.stats_no_route += len(lengths)
            out.drop = "no_route"
            return
        seal_rows(peer, rows, lengths, now_ns, out)
        if self.ephemerals.rotation_requested:
            self._rotate(now_ns, out)

    def on_tun_superpacket(
        self,
        packet: memoryview,
        shape: tuple[int, int, int, bool],
        now_ns: int,
        out: Output,
    ) -> bool:
        """A TCP superpacket (offload.tcp_shape) sealed in one native call
        (runs.seal_superpacket); False: not done, split it and take on_tun_rows."""
        if native.fastpath is None:  # before the lookup on_tun_rows makes too
            return False
        peer = self.routes.lookup_dst(packet[:40])
        if peer is None or not seal_superpacket(peer, packet, shape, now_ns, out):
            return False
        if self.ephemerals.rotation_requested:
            self._rotate(now_ns, out)
        return True

    def on_datagram(
        self,
        peer: Peer,
        epochs: tuple[int, ...],
        dgram: Buffer,
        now_ns: int,
        out: Output,
    ) -> None:
        peer.on_datagram(dgram, epochs, now_ns, out)

    def on_timer(self, now_ns: int, out: Output) -> None:
        self._maybe_rotate(now_ns, out)
        self._erase_replaced(now_ns, out)
        for peer in self.peers.values():
            peer.on_timer(now_ns, out)

    def next_deadline_ns(self, now_ns: int) -> int:
        current = self.ephemerals.current
        deadline = current.created_ns + (
            EPHEMERAL_ROTATE_NS
            if self._in_use(current, now_ns)
            else EPHEMERAL_MAX_AGE_NS
        )
        for eph in self.ephemerals.replaced:
            deadline = min(
                deadline,
                eph.created_ns + EPHEMERAL_MAX_AGE_NS,
                now_ns + EPHEMERAL_LINGER_NS,
            )
        for peer in self.peers.values():
            deadline = min(deadline, peer.next_deadline_ns(now_ns))
        return max(deadline, now_ns)

    # -- ephemerals --

    def _in_use(self, eph: Ephemeral, now_ns: int) -> bool:
        since = now_ns - EPHEMERAL_ACTIVE_NS
        return any(p.used_since(eph, since) for p in self.peers.values())

    def _maybe_rotate(self, now_ns: int, out: Output) -> None:
        """Replace at 120 s if used (announced), or at 180 s idle (silently)."""
        current = self.ephemerals.current
        age = now_ns - current.created_ns
        if self.ephemerals.rotation_requested or (
            age >= EPHEMERAL_ROTATE_NS and self._in_use(current, now_ns)
        ):
            self._rotate(now_ns, out)
        elif age >= EPHEMERAL_MAX_AGE_NS:
            self.ephemerals.rotate(now_ns)
            self._erase(current, now_ns, out)

    def _rotate(self, now_ns: int, out: Output) -> None:
        self.ephemerals.rotate(now_ns)
        for peer in self.peers.values():
            peer.on_ephemeral_replaced(now_ns, out)

    def _erase_replaced(self, now_ns: int, out: Output) -> None:
        """Erase a replaced ephemeral once no peer can still use it, or at 180 s."""
        for eph in list(self.ephemerals.replaced):
            too_old = now_ns - eph.created_ns >= EPHEMERAL_MAX_AGE_NS
            needed = any(
                p.still_needs(eph, now_ns, EPHEMERAL_LINGER_NS)
                for p in self.peers.values()
            )
            if too_old or not needed:
                self._erase(eph, now_ns, out)

    def _erase(self, eph: Ephemeral, now_ns: int, out: Output) -> None:
        for peer in self.peers.values():
            peer.forget_ephemeral(eph, now_ns, out)
        eph.erase()
        self.ephemerals.drop_erased()


def is_multicast(packet: bytes) -> bool:
    """Whether an inner packet goes to a multicast or broadcast address.

    The host's own stacks send these on every interface (IGMP, MLD, mDNS, ...);
    with no peer that allows the address they are discarded uncounted, since a
    `no_route` drop should point at a missing allowed address, not at chatter.
    """
    version = packet[0] >> 4 if packet else 0
    if version == 4 and len(packet) >= 20:
        return 224 <= packet[16] <= 239 or packet[16:20] == b"\xff\xff\xff\xff"
    if version == 6 and len(packet) >= 40:
        return packet[24] == 0xFF
    return False
