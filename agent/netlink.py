"""The host side of the TUN device, over rtnetlink (pyroute2; no `ip` commands).

`Link` gives the device its addresses and MTU (and no IPv6 link-local address,
so the kernel sends nothing of its own into it), brings it up, and keeps one route
per peer allowed network through it: `set_routes` adds what is missing and
removes what it added before and is no longer wanted, so a reload touches only
the routes of peers that came or went. A network inside one of the device's own
prefixes needs no route of its own (the kernel's connected route covers it).
Closing the TUN descriptor removes the device, its addresses and its routes;
`close` removes the routes first anyway, so a failure to close leaves nothing.

pyroute2 (0.9) drives netlink through an asyncio loop of its own, which cannot
run inside the agent's uvloop loop (nor can uvloop open netlink sockets), so
every netlink request runs on one worker thread that owns the IPRoute; callers
block for the few milliseconds a request takes, only at start, reload and exit.

`ReservedPorts` keeps our port range out of the kernel's choice of ephemeral
ports (net.ipv4.ip_local_reserved_ports, which also covers IPv6) while the agent
runs, and on exit takes back only the ports it added, so another agent's range
or the operator's own entries stay.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .config_values import Interface, Network

log = logging.getLogger("hopr-tunnel.netlink")

IFA_F_NODAD = 0x02  # the TUN is point-to-point: IPv6 duplicate detection only delays
ADDR_GEN_NONE = 1  # IN6_ADDR_GEN_MODE_NONE: no link-local address (if_link.h)
RESERVED_PORTS = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")


T = TypeVar("T")


class NetlinkFailure(Exception):
    """The kernel refused a change to the device; the message says which."""


def _on_worker(method: Callable[..., T]) -> Callable[..., T]:
    """Run a Link method on the Link's netlink thread and wait for it."""

    @functools.wraps(method)
    def wrapper(self: Link, *args: Any, **kwargs: Any) -> T:
        return self.worker.submit(method, self, *args, **kwargs).result()

    return wrapper


class Link:
    """Addresses, MTU, state and routes of one device."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="netlink")
        self.addresses: tuple[Interface, ...] = ()
        self.routes: set[Network] = set()
        self.closed = False
        try:
            self.index = self._open()
        except BaseException:
            self.worker.shutdown()
            raise

    @_on_worker
    def _open(self) -> int:
        self.ipr = IPRoute()
        found = self.ipr.link_lookup(ifname=self.ifname)
        if not found:
            self.ipr.close()
            raise NetlinkFailure(f"interface {self.ifname} does not exist")
        return int(found[0])

    @_on_worker
    def configure(
        self, addresses: Iterable[Interface], mtu: int, gso_max_segs: int = 0
    ) -> None:
        """Set the MTU and exactly these addresses, and bring the device up.

        gso_max_segs > 0 caps the segments of a superpacket the kernel hands
        the TUN (tunnel/udpoffload.py, segments_per_send).
        """
        self._no_link_local()
        self._call("set the MTU", "link", "set", index=self.index, mtu=mtu)
        if gso_max_segs:
            self._gso_max_segs(gso_max_segs)
        wanted = tuple(addresses)
        for address in self.addresses:
            if address not in wanted:
                self._addr("del", address)
        for address in wanted:
            if address not in self.addresses:
                self._addr("add", address)
        self.addresses = wanted
        self._call("bring it up", "link", "set", index=self.index, state="up")

    @_on_worker
    def set_routes(self, networks: Iterable[Network]) -> None:
        """Route these networks through the device, except those it is on."""
        wanted = {n for n in networks if not self.connected(n)}
        for network in self.routes - wanted:
            self._route("del", network)
        for network in wanted - self.routes:
            self._route("add", network)
        self.routes = wanted

    def _gso_max_segs(self, segs: int) -> None:
        """Superpackets no larger than one GSO send of sealed datagrams: a
        64 KB superpacket would take two sends, and two GRO reads at the peer,
        the second for a single datagram. Best effort: an older kernel that
        cannot change it only costs that extra send."""
        try:
            self.ipr.link("set", index=self.index, gso_max_segs=segs)
        except NetlinkError as exc:
            log.debug("%s: cannot set gso_max_segs: %s", self.ifname, exc)

    def _no_link_local(self) -> None:
        """No IPv6 link-local address, so the kernel sends nothing of its own.

        Given one, the kernel sends router solicitations and MLD reports into the
        TUN, which no peer routes: they would only count as drops. Peers reach
        each other on the configured addresses; nothing here uses link-local.
        Must come before the device is up. Best effort: with IPv6 disabled on the
        host the kernel refuses, and then sends no IPv6 anyway.
        """
        spec = [["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", ADDR_GEN_NONE]]}]]
        try:
            self.ipr.link("set", index=self.index, IFLA_AF_SPEC={"attrs": spec})
        except NetlinkError as exc:
            log.debug("%s: cannot turn off IPv6 link-local: %s", self.ifname, exc)

    def connected(self, network: Network) -> bool:
        """Whether a prefix of the device's own addresses holds `network`."""
        return any(
            a.version == network.version and network.subnet_of(a.network)  # type: ignore[arg-type]
            for a in self.addresses
        )

    def close(self) -> None:
        """Remove our routes (best effort: the device may be gone already)."""
        if self.closed:
            return
        self._close()
        self.worker.shutdown()
        self.closed = True

    @_on_worker
    def _close(self) -> None:
        for network in self.routes:
            try:
                self._route("del", network)
            except NetlinkFailure as exc:
                log.debug("%s", exc)
        self.routes = set()
        self.ipr.close()

    # -- requests ----------------------------------------------------------------------

    def _addr(self, command: str, address: Interface) -> None:
        self._call(
            f"{command} address {address}",
            "addr",
            command,
            index=self.index,
            address=str(address.ip),
            prefixlen=address.network.prefixlen,
            flags=IFA_F_NODAD if address.version == 6 else 0,
        )

    def _route(self, command: str, network: Network) -> None:
        try:
            self.ipr.route(command, dst=str(network), oif=self.index)
        except NetlinkError as exc:
            if command == "add" and exc.code == errno.EEXIST:
                log.warning(
                    "%s: a route to %s exists already; it is left as it is, "
                    "so traffic to it may not enter the tunnel",
                    self.ifname,
                    network,
                )
                return
            if command == "del" and exc.code in (errno.ESRCH, errno.ENODEV):
                return
            raise NetlinkFailure(
                f"{self.ifname}: cannot {command} the route to {network} "
                f"({exc.args[-1] if exc.args else exc})"
            ) from None

    def _call(self, what: str, method: str, *args: object, **kwargs: object) -> None:
        try:
            getattr(self.ipr, method)(*args, **kwargs)
        except NetlinkError as exc:
            if method == "addr" and args[0] == "add" and exc.code == errno.EEXIST:
                return
            raise NetlinkFailure(
                f"{self.ifname}: cannot {what} ({exc.args[-1] if exc.args else exc})"
            ) from None


class ReservedPorts:
    """Our port range in net.ipv4.ip_local_reserved_ports while we run.

    What we added is also written to a ledger file (next to the control socket),
    so an agent killed with SIGKILL leaves a note: the next agent for the same
    interface counts those ports as its own to take back, not as the operator's.
    """

    def __init__(
        self,
        port_range: tuple[int, int],
        ledger: Path | None = None,
        path: Path = RESERVED_PORTS,
    ):
        self.path = path
        self.ledger = ledger
        self.ours = set(range(port_range[0], port_range[1] + 1))
        self.added: set[int] = set()

    def reserve(self) -> None:
        """Add our range; a failure is a WARNING, never fatal."""
        try:
            before = parse_ports(self.path.read_text()) - self._left_over()
            self.added = self.ours - before
            self.path.write_text(format_ports(before | self.ours) + "\n")
            if self.ledger is not None:
                self.ledger.write_text(format_ports(self.added) + "\n")
        except OSError as exc:
            self.added = set()
            log.warning(
                "cannot reserve ports %s in %s (%s); the kernel may hand one of "
                "them out as a source port, and that epoch's socket then fails",
                format_ports(self.ours),
                self.path,
                exc.strerror or exc,
            )

    def _left_over(self) -> set[int]:
        """Ports a killed predecessor added and never took back."""
        try:
            return parse_ports(self.ledger.read_text()) if self.ledger else set()
        except (OSError, ValueError):
            return set()

    def release(self) -> None:
        """Take back the ports we added, keeping whatever others added since."""
        try:
            if self.added:
                now = parse_ports(self.path.read_text())
                # A newline even when empty: the kernel ignores a write of no bytes.
                self.path.write_text(format_ports(now - self.added) + "\n")
            if self.ledger is not None:
                self.ledger.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot restore %s (%s)", self.path, exc.strerror or exc)
        self.added = set()


def parse_ports(text: str) -> set[int]:
    """ "20000-29999,30001" -> the set of ports it names."""
    ports: set[int] = set()
    for part in text.replace("\n", "").split(","):
        if not part.strip():
            continue
        first, _, last = part.strip().partition("-")
        ports.update(range(int(first), int(last or first) + 1))
    return ports


def format_ports(ports: set[int]) -> str:
    """The sysctl's own form: sorted ranges joined by commas."""
    ranges: list[str] = []
    ordered = sorted(ports)
    start = 0
    for i, port in enumerate(ordered):
        if i + 1 == len(ordered) or ordered[i + 1] != port + 1:
            first = ordered[start]
            ranges.append(str(port) if first == port else f"{first}-{port}")
            start = i + 1
    return ",".join(ranges)
