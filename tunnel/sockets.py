"""One peer's hopping UDP sockets: a socket per 4-tuple of the epochs in use.

In epoch n a pair talks on one 4-tuple: (listen, our port) to (endpoint, peer
port), both ports drawn by the schedule. A receiver accepts epochs n-1, n and n+1
of its own clock, so each peer has a socket open for each of those epochs, bound
to the listen address and our port (SO_REUSEADDR, since several peers, or several
epochs, may draw the same local port) and connected to the endpoint and the
peer's port. A connected socket receives only from its 4-tuple, so the kernel
sorts datagrams by peer and epoch before we read them; datagrams to a port
outside the window meet a closed port.

Sockets are opened before they are needed and closed after: the socket of epoch
n+2 opens SOCKET_LEAD_MS before our hop to n+1 (make), the one of n-1 closes at
the hop (break). Two epochs of the window may draw the same 4-tuple; they then
share one socket, and `HopSocket.epochs` names both, which is what the core's
`on_datagram` wants to know.

A port some other process holds (bind fails), or an endpoint with no route
(connect fails), costs the peer those epochs only: the failure goes to
`on_open_error`, naming the step, and the 4-tuple is tried again after
SOCKET_RETRY_MS. Nothing here reads the protocol: the schedule gives ports.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .constants import SOCKET_BUFFER_BYTES, SOCKET_LEAD_MS, SOCKET_RETRY_MS
from .schedule import PairSchedule

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Ports = tuple[int, int]  # (our port, peer's port)
OpenErrorHook = Callable[
    [Ports, str, OSError], None
]  # (ports, "bind"|"connect", error)
SocketHook = Callable[["HopSocket"], None]
Cmsg = tuple[int, int, bytes]


@dataclass(eq=False, slots=True)
class HopSocket:
    """A socket for one 4-tuple and the epochs of the window that draw it."""

    sock: socket.socket
    ports: Ports
    epochs: tuple[int, ...]


class PeerSockets:
    """The sockets of one peer, kept in step with the local clock by `update`."""

    def __init__(
        self,
        schedule: PairSchedule,
        listen: Address,
        endpoint: Address,
        on_open: SocketHook,
        on_close: SocketHook,
        on_open_error: OpenErrorHook,
    ) -> None:
        self.schedule = schedule
        self.listen = listen
        self.endpoint = endpoint
        self.on_open = on_open
        self.on_close = on_close
        self.on_open_error = on_open_error
        self.by_ports: dict[Ports, HopSocket] = {}
        self.by_epoch: dict[int, HopSocket] = {}
        self.retry_ms: dict[Ports, int] = {}  # ports whose bind failed: when to retry
        self.lead_ms = min(SOCKET_LEAD_MS, schedule.hop_ms // 10)

    # -- the window ------------------------------------------------------------------

    def wanted_epochs(self, now_ms: int) -> range:
        """n-1, n, n+1 of the clock, and n+2 once the hop is within lead_ms."""
        n = self.schedule.epoch_at(now_ms)
        ahead = self.schedule.epoch_at(now_ms + self.lead_ms)
        return range(n - 1, ahead + 2)

    def next_change_ms(self, now_ms: int) -> int:
        """When `update` next has work: the next make or break instant."""
        hop_ms = self.schedule.epoch_start_ms(self.schedule.epoch_at(now_ms) + 1)
        make_ms = hop_ms - self.lead_ms
        change_ms = make_ms if make_ms > now_ms else hop_ms
        if self.retry_ms:
            change_ms = min(change_ms, min(self.retry_ms.values()))
        return change_ms

    def update(self, now_ms: int) -> None:
        """Open the sockets the window needs first, then close the ones it left."""
        wanted: dict[Ports, list[int]] = {}
        for epoch in self.wanted_epochs(now_ms):
            wanted.setdefault(self.schedule.ports(epoch), []).append(epoch)
        by_epoch: dict[int, HopSocket] = {}
        for ports, epochs in wanted.items():
            hop = self.by_ports.get(ports) or self._open(ports, now_ms)
            if hop is None:
                continue
            hop.epochs = tuple(epochs)
            by_epoch.update(dict.fromkeys(epochs, hop))
        self.by_epoch = by_epoch
        for ports in [p for p in self.by_ports if p not in wanted]:
            self._close(self.by_ports.pop(ports))
        for ports in [p for p in self.retry_ms if p not in wanted]:
            del self.retry_ms[ports]

    def socket_for(self, epoch: int) -> socket.socket | None:
        hop = self.by_epoch.get(epoch)
        return None if hop is None else hop.sock

    def close(self) -> None:
        for hop in self.by_ports.values():
            self._close(hop)
        self.by_ports.clear()
        self.by_epoch.clear()

    # -- sockets ---------------------------------------------------------------------

    def _open(self, ports: Ports, now_ms: int) -> HopSocket | None:
        if now_ms < self.retry_ms.get(ports, now_ms):
            return None
        try:
            sock = open_connected(self.listen, ports[0], self.endpoint, ports[1])
        except OpenFailed as failed:
            self.retry_ms[ports] = now_ms + SOCKET_RETRY_MS
            self.on_open_error(ports, failed.step, failed.error)
            return None
        self.retry_ms.pop(ports, None)
        hop = HopSocket(sock, ports, ())
        self.by_ports[ports] = hop
        self.on_open(hop)
        return hop

    def _close(self, hop: HopSocket) -> None:
        self.on_close(hop)
        hop.sock.close()


class OpenFailed(Exception):
    """A hop socket could not be set up: at which step, and the kernel's error."""

    def __init__(self, step: str, error: OSError) -> None:
        super().__init__(step, error)
        self.step = step
        self.error = error


def open_connected(
    listen: Address, our_port: int, endpoint: Address, peer_port: int
) -> socket.socket:
    """A non-blocking UDP socket bound to (listen, our_port), connected onward;
    OpenFailed if the kernel refuses the bind or the connect."""
    family = socket.AF_INET6 if listen.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    step = "bind"
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        _grow_buffers(sock)
        sock.bind((str(listen), our_port))
        step = "connect"
        sock.connect((str(endpoint), peer_port))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OpenFailed(step, exc) from None
    except BaseException:
        sock.close()
        raise
    return sock


SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def _grow_buffers(sock: socket.socket) -> None:
    """Large kernel buffers; the *FORCE options pass net.core.*mem_max (needs
    CAP_NET_ADMIN, which the agent has), the plain ones are the fallback."""
    for force, plain in (
        (SO_RCVBUFFORCE, socket.SO_RCVBUF),
        (SO_SNDBUFFORCE, socket.SO_SNDBUF),
    ):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER_BYTES)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER_BYTES)


def send(
    sock: socket.socket,
    data: Sequence[bytes | memoryview],
    cmsg: list[Cmsg] | None = None,
) -> None:
    """Send `data` (one datagram, or a GSO run with its cmsg) on a connected socket.

    An ICMP error for an earlier datagram (a peer that restarted, a port that
    was closed) is reported by the next send, as ECONNREFUSED, instead of
    sending; that send is made again, once. Other errors reach the caller.
    """
    for attempt in (0, 1):
        try:
            if cmsg is None and len(data) == 1:
                sock.send(data[0])
            else:
                sock.sendmsg(data, cmsg or [])
            return
        except ConnectionRefusedError:
            if attempt:
                raise
