"""The I/O shell: moves packets between the TUN device, the peers' hop sockets and
the protocol core, on an asyncio event loop (uvloop in the agent).

Three kinds of wakeup, each handled in one pass:

- the TUN descriptor is readable: read packets until EAGAIN (at most IO_BATCH),
  hand each to `node.on_tun_packet`, then carry out the Output;
- hop sockets are readable: the same with `sock.recv` and `node.on_datagram`
  for each ready socket, passing the epochs that socket's 4-tuple stands for;
- the one timer: `node.on_timer`, the sockets' make-before-break step, and the
  timer re-armed at the earliest of the node's deadline and the next socket hop.

Readers are raw-descriptor callbacks (`loop.add_reader`), not asyncio protocols,
so a wakeup drains a batch with no per-packet Future or callback; the Output of a
whole batch is carried out at once in `flush`, which is where batched sends
(UDP_SEGMENT) and TUN superpackets will plug in. No protocol logic lives here:
the core decides what to seal, open, drop and send; the shell counts only what
the kernel refuses (a send answered by ICMP unreachable, a full TUN queue).

The hop sockets sit in an epoll set of our own, and only that set's descriptor
is registered with the event loop. Two reasons: one wakeup serves every ready
socket, and a connected UDP socket that receives an ICMP port unreachable (a
peer restarting, a port just closed) reports EPOLLERR, on which libuv, hence
uvloop, silently stops watching that descriptor for good; in our own set the
error is just an event, read (and counted) by the next `recv`.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import select
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from . import native, sockets, udpoffload
from .batch import open_datagrams
from .coalesce import coalesce
from .constants import IO_BATCH, PAD_TO, RECV_BUFFER, SEND_BATCH, TUN_READ_MAX
from .node import Node
from .offload import (
    F_NEEDS_CSUM,
    GSO_NONE,
    VNET_HDR_LEN,
    ZERO_VNET_HDR,
    MalformedPacket,
    split,
    split_tcp_rows,
    tcp_shape,
)
from .output import Output
from .peer import Peer
from .runs import open_gro_run, opened_gro_run
from .sockets import Address, HopSocket, PeerSockets
from .tun import Tun

if TYPE_CHECKING:
    from ._fastpath import DatagramKeys
    from .replay import ReplayWindow
    from .session import Session

log = logging.getLogger("hopr-tunnel.dataplane")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# (peer, (our port, peer port), "bind" or "connect", the kernel's error)
OpenErrorHook = Callable[[Peer, tuple[int, int], str, OSError], None]
MS = 1_000_000
# A send that fails with one of these was refused for its GSO cmsg, not lost:
# the kernel or the route's device cannot segment; send one datagram per call.
GSO_REFUSALS = {errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT}
TIMER_MAX_S = 1.0  # re-read the wall clock at least this often (clock steps)
DEBUG_EVERY_NS = 10**9  # per-packet DEBUG lines: at most one a second
GRO_SPACE = udpoffload.GRO_CMSG_SPACE
Bytes = bytes | memoryview
TUN_RUNS_QUEUED = 4  # superpackets (up to 64 KB each) held before a TUN write
# What DatagramKeys.drain says (tunnel/_fastpath.c)
DRAIN_EMPTY, DRAIN_RAW, DRAIN_OPENED, DRAIN_RECV_ERROR, DRAIN_TUN_ERROR = range(5)
DRAIN_BUDGET, DRAIN_LONE = 5, 6


class IOErrors:
    """What the kernel refused, by where and errno name, for `show`."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def count(self, where: str, exc: OSError) -> None:
        key = f"{where}_{errno.errorcode.get(exc.errno or 0, 'error').lower()}"
        self.counts[key] = self.counts.get(key, 0) + 1


class Offloads:
    """Which kernel batching the data path uses, and what the kernel refused.

    TUN: superpackets in and out (tunnel/tunoffload.py), decided when the device
    is opened; UDP: GSO sends and GRO receives (tunnel/udpoffload.py), probed
    here on a socket of the listen address's family. Anything refused falls back
    to one packet per system call on that side only.
    """

    def __init__(self, tun: Tun, tun_refused: str | None, family: int) -> None:
        self.tun = tun.vnet_hdr
        self.refused: list[str] = []
        if not self.tun:
            self.refused.append(tun_refused or "TUNSETOFFLOAD: not asked")
        probe = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        with probe:
            refusals = [udpoffload.gso_refusal(probe), udpoffload.gro_refusal(probe)]
        self.gso, self.gro = (r is None for r in refusals)
        self.refused += [r for r in refusals if r is not None]

    def describe(self) -> str:
        """One line for the log: fast, or plain and why."""
        runs = f"runs sealed and opened in {native.state}"
        if not self.refused:
            return f"fast (TUN superpackets, UDP GSO, UDP GRO; {runs})"
        parts = [
            "TUN superpackets" if self.tun else "",
            "UDP GSO" if self.gso else "",
            "UDP GRO" if self.gro else "",
        ]
        using = ", ".join(p for p in parts if p) or "nothing"
        refused = "; ".join(self.refused)
        return (
            f"plain where refused (kernel refused {refused}); batching {using}; "
            f"one packet per system call elsewhere; {runs}"
        )


class DataPlane:
    def __init__(
        self,
        node: Node,
        tun: Tun,
        listen: Address,
        loop: asyncio.AbstractEventLoop,
        on_open_error: OpenErrorHook | None = None,
        on_tun_lost: Callable[[OSError], None] | None = None,
        tun_refused: str | None = None,
    ) -> None:
        self.node = node
        family = socket.AF_INET6 if listen.version == 6 else socket.AF_INET
        self.offloads = Offloads(tun, tun_refused, family)
        self.on_open_error = on_open_error
        self.on_tun_lost = on_tun_lost
        self.tun = tun
        self.listen = listen
        self.loop = loop
        self.sockets: dict[str, PeerSockets] = {}
        self.peer_errors: dict[str, IOErrors] = {}
        self.tun_errors = IOErrors()
        self.out = Output()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_ns = 0
        self._debug_ns = 0
        self.running = False
        self.epoll = select.epoll()
        self.hops: dict[int, tuple[Peer, HopSocket]] = {}  # by socket descriptor
        self._dgrams: list[bytes | memoryview] = []  # one socket's, this wakeup
        # GRO runs are read into one buffer, opened before the next read; the
        # views of its rows are made once (tunnel/buffers.py).
        self._rx = self.out.buffers.keep(bytearray(RECV_BUFFER))
        self._rx_views = [memoryview(self._rx)]
        # (first counter, count) of each read a native drain took, and the
        # plaintext buffer it opens into (made at full size: never replaced)
        self._drained = bytearray(16 * IO_BATCH)
        self._plain = self.out.buffers.plain_buffer(RECV_BUFFER)
        self.native_rx = 0  # datagrams the native drain took, for `show`

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self.running = True
        on_tun = self._on_tun_vnet if self.tun.vnet_hdr else self._on_tun
        self.loop.add_reader(self.tun.fd, on_tun)
        self.loop.add_reader(self.epoll.fileno(), self._on_sockets)
        self._on_timer()

    def close(self) -> None:
        """Stop reading and close every socket; the TUN stays the caller's."""
        self.running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.loop.remove_reader(self.tun.fd)
        self.loop.remove_reader(self.epoll.fileno())
        for peer_sockets in self.sockets.values():
            peer_sockets.close()
        self.sockets.clear()
        self.epoll.close()

    # -- peers -----------------------------------------------------------------------

    def add_peer(
        self,
        name: str,
        public_key: bytes,
        psk: bytes | None,
        peer_ports: tuple[int, int],
        allowed_ips: Iterable[Network],
        endpoint: Address,
    ) -> Peer:
        """Add a peer to the core, open its sockets, send its first hello."""
        now_ns = time.time_ns()
        out = self.out
        peer = self.node.add_peer(
            name, public_key, psk, peer_ports, allowed_ips, now_ns, out
        )
        self.peer_errors[name] = IOErrors()
        peer_sockets = PeerSockets(
            peer.schedule,
            self.listen,
            endpoint,
            on_open=lambda hop: self._watch(peer, hop),
            on_close=self._unwatch,
            on_open_error=lambda ports, step, exc: self._open_failed(
                peer, ports, step, exc
            ),
        )
        self.sockets[name] = peer_sockets
        peer_sockets.update(now_ns // MS)
        self.flush(out)
        self._arm(self.node.next_deadline_ns(now_ns))
        return peer

    def remove_peer(self, name: str) -> None:
        self.node.remove_peer(name)
        self.sockets.pop(name).close()
        self.peer_errors.pop(name, None)

    def set_listen(self, listen: Address) -> None:
        """Rebind every peer's sockets on a new listen address; sessions stay."""
        self.listen = listen
        now_ms = time.time_ns() // MS
        for peer_sockets in self.sockets.values():
            peer_sockets.close()
            peer_sockets.listen = listen
            peer_sockets.retry_ms.clear()
            peer_sockets.update(now_ms)

    def _open_failed(
        self, peer: Peer, ports: tuple[int, int], step: str, exc: OSError
    ) -> None:
        self.peer_errors[peer.name].count(step, exc)
        if self.on_open_error is not None:
            self.on_open_error(peer, ports, step, exc)

    # -- readers ---------------------------------------------------------------------

    def _watch(self, peer: Peer, hop: HopSocket) -> None:
        if self.offloads.gro and not udpoffload.enable_udp_gro(hop.sock):
            self.offloads.gro = False  # one refusal is the kernel's answer for all
        fd = hop.sock.fileno()
        self.hops[fd] = (peer, hop)
        self.epoll.register(fd, select.EPOLLIN)

    def _unwatch(self, hop: HopSocket) -> None:
        fd = hop.sock.fileno()
        self.epoll.unregister(fd)
        del self.hops[fd]

    def _on_tun(self) -> None:
        node, out, fd = self.node, self.out, self.tun.fd
        now_ns = time.time_ns()
        for i in range(IO_BATCH):
            try:
                packet = os.read(fd, TUN_READ_MAX)
            except BlockingIOError:
                break
            except OSError as exc:  # EBADFD: the device was deleted under us
                self._tun_lost(exc)
                return
            if i == 0 and self._send_lone(packet, now_ns):
                return
            node.on_tun_packet(packet, now_ns, out)
            if out.drop is not None:
                self._debug_drop(None, out.drop, now_ns)
        self.flush(out)
        self._arm(node.next_deadline_ns(now_ns))

    def _on_tun_vnet(self) -> None:
        """TUN with offloads: each read is a superpacket and its virtio-net header,
        split into the wire packets it stands for and sealed as one run."""
        node, out, fd = self.node, self.out, self.tun.fd
        now_ns = time.time_ns()
        for i in range(IO_BATCH):
            try:
                data = os.read(fd, TUN_READ_MAX)
            except BlockingIOError:
                break
            except OSError as exc:
                self._tun_lost(exc)
                return
            if data[1] == GSO_NONE and not data[0] & F_NEEDS_CSUM:
                # One packet, its checksum complete: nothing to split. The
                # common case of sparse traffic, where every call counts.
                if i == 0 and self._send_lone(data[VNET_HDR_LEN:], now_ns):
                    return
                node.on_tun_packet(data[VNET_HDR_LEN:], now_ns, out)
            else:
                self._seal_superpacket(data, now_ns)
            if out.drop is not None:
                self._debug_drop(None, out.drop, now_ns)
            if out.send_runs or len(out.send) >= SEND_BATCH:
                self.flush(out)  # a superpacket's run goes out at once
        self.flush(out)
        self._arm(node.next_deadline_ns(now_ns))

    def _send_lone(self, packet: bytes, now_ns: int) -> bool:
        """The first packet of a wakeup, sent the short way if Peer.seal_one can
        seal it; then the wakeup ends. It skips the read that would find the
        queue empty, the Output and the timer (nothing was queued and no
        deadline moved): on an idle tunnel that is most of the work, and if
        more packets wait, the descriptor is still readable and the loop comes
        straight back. False: nothing done, take the general way."""
        peer = self.node.routes.lookup_dst(packet)
        sealed = None if peer is None else peer.seal_one(packet, now_ns)
        if sealed is None:
            return False
        assert peer is not None
        epoch, dgram = sealed
        peer_sockets = self.sockets.get(peer.name)
        sock = None if peer_sockets is None else peer_sockets.socket_for(epoch)
        if sock is None:
            self._count_no_socket(peer)
            return True
        try:  # what _send does, two calls shorter while nothing goes wrong
            sock.send(dgram)
        except ConnectionRefusedError:  # for an earlier datagram: this one again
            self._send(peer, sock, dgram)
        except OSError as exc:
            self.peer_errors[peer.name].count("send", exc)
        return True

    def _seal_superpacket(self, data: bytes, now_ns: int) -> None:
        """A read with its virtio-net header, split into wire packets and sealed."""
        node = self.node
        vnet, packet = data[:VNET_HDR_LEN], memoryview(data)[VNET_HDR_LEN:]
        try:
            shape = tcp_shape(vnet, packet)
            if shape is None:  # not TCP, or one segment: packet by packet
                node.on_tun_packets(split(vnet, packet, PAD_TO), now_ns, self.out)
            elif not node.on_tun_superpacket(packet, shape, now_ns, self.out):
                rows = split_tcp_rows(vnet, packet, PAD_TO, self.out.buffers, shape)
                assert rows is not None  # only tcp_shape says None
                node.on_tun_rows(rows[0], rows[1], now_ns, self.out)
        except MalformedPacket:
            node.stats_malformed += 1

    def _tun_lost(self, exc: OSError) -> None:
        """A TUN read error never clears; stop reading rather than spin."""
        self.tun_errors.count("read", exc)
        self.loop.remove_reader(self.tun.fd)
        if self.on_tun_lost is not None:
            self.on_tun_lost(exc)

    def _on_sockets(self) -> None:
        now_ns = time.time_ns()
        hops = self.hops
        ready = self.epoll.poll(0)
        for fd, _events in ready:
            found = hops.get(fd)
            if found is not None:
                lone = self._drain(found[0], found[1], fd, now_ns, len(ready) == 1)
                if lone:  # one datagram, delivered the short way: nothing queued
                    return
        self.flush(self.out)
        self._arm(self.node.next_deadline_ns(now_ns))

    def _drain(
        self, peer: Peer, hop: HopSocket, fd: int, now_ns: int, alone: bool
    ) -> bool:
        """Read what the socket holds, then open it as one run (tunnel/batch.py).

        True: the first read was one datagram that Peer.open_one opened, written
        to the TUN at once, and the socket (`alone`, the only one ready) is left
        for the next wakeup if it holds more (see _send_lone)."""
        gro, superpackets = self.offloads.gro, self.tun.vnet_hdr
        if gro and superpackets:
            settled = peer.drain_keys(hop.epochs, now_ns)
            if settled is not None:
                return self._drain_native(peer, hop, fd, now_ns, alone, settled)
        sock, dgrams, out, rx = hop.sock, self._dgrams, self.out, self._rx_views
        for i in range(IO_BATCH):
            try:
                if gro:  # a run of datagrams of one size, laid end to end
                    nbytes, anc, _flags, _addr = sock.recvmsg_into(rx, GRO_SPACE)
                    # (no cmsg for a lone datagram: spare an idle tunnel a call)
                    size = udpoffload.gro_segment_size(anc) if anc else None
                    if size and size < nbytes:
                        if dgrams:  # keep arrival order
                            open_datagrams(peer, dgrams, hop.epochs, now_ns, out)
                            dgrams.clear()
                        open_gro_run(peer, self._rx, size, hop.epochs, now_ns, out,
                                     superpackets, nbytes)  # fmt: skip
                        if len(out.tun_gso) >= TUN_RUNS_QUEUED:
                            self.flush(out)
                        continue
                    if (
                        i == 0
                        and alone
                        and self._write_lone(peer, hop, rx[0][:nbytes], now_ns)
                    ):
                        return True
                    data = bytes(rx[0][:nbytes])  # rx is read into again
                else:
                    data = sock.recv(RECV_BUFFER)
                    if i == 0 and alone and self._write_lone(peer, hop, data, now_ns):
                        return True
                dgrams.append(data)
            except BlockingIOError:
                break
            except OSError as exc:  # e.g. ECONNREFUSED: ICMP for an earlier send
                self.peer_errors[peer.name].count("recv", exc)
        if dgrams:
            open_datagrams(peer, dgrams, hop.epochs, now_ns, self.out)
            dgrams.clear()
            if self.out.drop is not None:
                self._debug_drop(peer, self.out.drop, now_ns)
        return False

    def _drain_native(
        self,
        peer: Peer,
        hop: HopSocket,
        fd: int,
        now_ns: int,
        alone: bool,
        settled: tuple[Session, int, ReplayWindow, DatagramKeys, bytes],
    ) -> bool:
        """_drain for a settled session (Peer.drain_keys), in native code: each
        read that is the common case (fresh, in order, every datagram one whole
        packet from this peer) goes from the socket to the TUN inside one call
        (DatagramKeys.drain). The first read that is not comes back still in the
        receive buffer, opened if it opened, and takes the Python way above;
        then, if nothing changed, the native drain goes on. Same answer as
        _drain."""
        out, rx, plain, tun_fd = self.out, self._rx, self._plain, self.tun.fd
        if out.tun or out.tun_gso:
            self.flush(out)  # another socket's, this wakeup: written in order
        opened_counters, drained = out.buffers.opened, self._drained
        budget, first = IO_BATCH, True
        while True:
            session, epoch, window, keys, sources = settled
            status, reads, rows, nbytes, opened, left, size, err = keys.drain(
                fd, rx, tun_fd, window.highest, sources, plain, opened_counters,
                drained, budget, alone and first,
            )  # fmt: skip
            if reads:
                for at in range(0, 16 * reads, 16):
                    session.accept_run(
                        epoch,
                        int.from_bytes(drained[at : at + 8], "little"),
                        int.from_bytes(drained[at + 8 : at + 16], "little"),
                    )
                peer.count_rx(session, rows, nbytes, now_ns)
                self.native_rx += rows
                budget -= reads
            if status == DRAIN_LONE:
                return True
            if status in (DRAIN_EMPTY, DRAIN_BUDGET):
                return False
            if status == DRAIN_TUN_ERROR:
                self.tun_errors.count("write", OSError(err, os.strerror(err)))
            elif status == DRAIN_RECV_ERROR:
                exc = OSError(err, os.strerror(err))
                self.peer_errors[peer.name].count("recv", exc)
                budget -= 1
            else:  # a read for the Python way
                budget -= 1
                if status == DRAIN_OPENED:
                    opened_gro_run(peer, rx, left, size, session, hop.epochs, opened,
                                   plain, now_ns, out, True)  # fmt: skip
                elif size and size < left:
                    open_gro_run(peer, rx, size, hop.epochs, now_ns, out, True, left)
                else:
                    one = memoryview(rx)[:left]
                    lone = first and alone
                    if not (lone and self._write_lone(peer, hop, one, now_ns)):
                        open_datagrams(peer, [bytes(one)], hop.epochs, now_ns, out)
                if out.drop is not None:
                    self._debug_drop(peer, out.drop, now_ns)
                if out.tun or out.tun_gso:
                    self.flush(out)  # before the drain writes more to the TUN
            first = False
            if budget <= 0:
                return False
            again = peer.drain_keys(hop.epochs, now_ns)
            if again is None:  # what the Python way did changed the session
                return False
            settled = again

    def _write_lone(
        self, peer: Peer, hop: HopSocket, dgram: Bytes, now_ns: int
    ) -> bool:
        """A lone datagram opened by Peer.open_one, written to the TUN; False:
        nothing done, take the general way."""
        packet = peer.open_one(dgram, hop.epochs, now_ns)
        if packet is None:
            return False
        try:
            if self.tun.vnet_hdr:
                os.writev(self.tun.fd, (ZERO_VNET_HDR, packet))
            else:
                os.write(self.tun.fd, packet)
        except OSError as exc:
            self.tun_errors.count("write", exc)
        return True

    def _debug_drop(self, peer: Peer | None, reason: str, now_ns: int) -> None:
        self.out.drop = None
        if now_ns - self._debug_ns >= DEBUG_EVERY_NS and log.isEnabledFor(
            logging.DEBUG
        ):
            self._debug_ns = now_ns
            who = "no peer" if peer is None else f"peer {peer.name}"
            log.debug("%s: dropped a packet from %s: %s", self.tun.name, who, reason)

    # -- output ----------------------------------------------------------------------

    def flush(self, out: Output) -> None:
        """Carry out a batch's Output: TUN writes, then datagrams to peers.

        Consecutive datagrams for one peer and epoch go out in GSO runs, one
        system call for up to UDP_MAX_SEGMENTS of them.
        """
        if out.tun_gso:
            self._write_tun_runs(out)
        elif out.tun:
            self._write_tun(out.tun)
        done = 0
        for at, peer, epoch, size, buf in out.send_runs:
            self._send_datagrams(out.send, done, at)
            done = at
            self._send_buffer(peer, epoch, size, buf)
        self._send_datagrams(out.send, done, len(out.send))
        out.clear()

    def _send_datagrams(
        self, sends: list[tuple[Peer, int, bytes]], i: int, n: int
    ) -> None:
        """sends[i:n], consecutive ones of a peer and epoch in GSO runs."""
        sockets = self.sockets
        while i < n:
            peer, epoch, _ = sends[i]
            j = i + 1
            while j < n and sends[j][0] is peer and sends[j][1] == epoch:
                j += 1
            peer_sockets = sockets.get(peer.name)
            sock = None if peer_sockets is None else peer_sockets.socket_for(epoch)
            if sock is None:
                self._count_no_socket(peer, j - i)
            elif j - i > 1 and self.offloads.gso:
                group = [d for _, _, d in sends[i:j]]
                for run in udpoffload.gso_runs(group):
                    self._send_run(peer, sock, run)
            else:
                for k in range(i, j):
                    self._send(peer, sock, sends[k][2])
            i = j

    def _send_buffer(self, peer: Peer, epoch: int, size: int, buf: memoryview) -> None:
        """Datagrams of `size` bytes laid end to end (tunnel/runs.py), in as few
        GSO sends as the kernel's limits allow."""
        peer_sockets = self.sockets.get(peer.name)
        sock = None if peer_sockets is None else peer_sockets.socket_for(epoch)
        if sock is None:
            self._count_no_socket(peer, -(-len(buf) // size))
            return
        if not self.offloads.gso:
            for at in range(0, len(buf), size):
                self._send(peer, sock, buf[at : at + size])
            return
        step = size * min(udpoffload.UDP_MAX_SEGMENTS, udpoffload.GSO_MAX_BYTES // size)
        for at in range(0, len(buf), step):
            chunk = buf[at : at + step]
            if len(chunk) <= size:
                self._send(peer, sock, chunk)
            else:
                self._send_run(peer, sock, [chunk], size)

    def _write_tun_runs(self, out: Output) -> None:
        """Superpackets made whole by tunnel/runs.py, in order with the rest."""
        done = 0
        for at, buffers in out.tun_gso:
            if at > done:
                self._write_tun(out.tun[done:at])
                done = at
            try:
                os.writev(self.tun.fd, buffers)
            except OSError as exc:
                self.tun_errors.count("write", exc)
        if done < len(out.tun):
            self._write_tun(out.tun[done:])

    def _write_tun(self, packets: list[bytes]) -> None:
        fd = self.tun.fd
        if self.tun.vnet_hdr:
            lone = len(packets) == 1  # nothing to coalesce with
            pairs = [(ZERO_VNET_HDR, packets[0])] if lone else coalesce(packets)
            for hdr, packet in pairs:
                try:
                    os.writev(fd, (hdr, packet))
                except OSError as exc:
                    self.tun_errors.count("write", exc)
            return
        for packet in packets:
            try:
                os.write(fd, packet)
            except OSError as exc:
                self.tun_errors.count("write", exc)

    def _send(self, peer: Peer, sock: socket.socket, dgram: Bytes) -> None:
        try:
            sockets.send(sock, [dgram])
        except OSError as exc:  # ENOBUFS, EAGAIN, ECONNREFUSED twice: lost
            self.peer_errors[peer.name].count("send", exc)

    def _send_run(
        self, peer: Peer, sock: socket.socket, run: Sequence[Bytes], size: int = 0
    ) -> None:
        """Equal-size datagrams (the last may be shorter) in one GSO sendmsg:
        each an item of run, or (size given) laid end to end in run[0]."""
        if len(run) == 1 and not size:
            self._send(peer, sock, run[0])
            return
        size = size or len(run[0])
        try:
            sockets.send(sock, run, [udpoffload.segment_cmsg(size)])
        except OSError as exc:
            if exc.errno not in GSO_REFUSALS:
                self.peer_errors[peer.name].count("send", exc)
                return
            self._gso_refused(exc)
            whole = b"".join(run)
            for at in range(0, len(whole), size):
                self._send(peer, sock, whole[at : at + size])

    def _gso_refused(self, exc: OSError) -> None:
        self.offloads.gso = False
        self.offloads.refused.append(f"UDP_SEGMENT on send: {exc.strerror}")
        log.info("%s: data path: %s", self.tun.name, self.offloads.describe())

    def _count_no_socket(self, peer: Peer, count: int = 1) -> None:
        errors = self.peer_errors.get(peer.name)
        if errors is not None:
            errors.counts["send_no_socket"] = (
                errors.counts.get("send_no_socket", 0) + count
            )

    # -- the timer -------------------------------------------------------------------

    def _on_timer(self) -> None:
        self._timer = None
        self._armed_ns = 0
        if not self.running:
            return
        now_ns = time.time_ns()
        self.node.on_timer(now_ns, self.out)
        for peer_sockets in self.sockets.values():
            peer_sockets.update(now_ns // MS)
        self.flush(self.out)
        self._arm(self.next_deadline_ns(now_ns))

    def next_deadline_ns(self, now_ns: int) -> int:
        deadline = self.node.next_deadline_ns(now_ns)
        for peer_sockets in self.sockets.values():
            deadline = min(deadline, peer_sockets.next_change_ms(now_ns // MS) * MS)
        return deadline

    def _arm(self, deadline_ns: int) -> None:
        """Keep the one timer at the earliest deadline asked for."""
        if self._timer is not None and self._armed_ns <= deadline_ns:
            return
        if self._timer is not None:
            self._timer.cancel()
        delay_s = min(max(deadline_ns - time.time_ns(), 0) / 1e9, TIMER_MAX_S)
        self._armed_ns = deadline_ns
        self._timer = self.loop.call_later(delay_s, self._on_timer)
