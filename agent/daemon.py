"""`hopr-tunnel up`: run the tunnel for one config until told to stop.

Start-up, in order, each step undone by `teardown` in reverse: check privileges
and the listen address, open the TUN device, give it addresses, MTU and state,
reserve our port range, start the data plane with every peer (each gets its
hop sockets and a hello), route every peer's allowed networks through the
device, open the control socket. Then one INFO line, READY=1 to systemd, and a
byte down the pipe of a `--detach`ed parent.

Signals (handled on the event loop): SIGTERM and SIGINT stop and tear down;
SIGHUP reloads the config. A reload that fails validation is refused with the
reason at ERROR and the running tunnel carries on; otherwise peers added,
removed or changed are applied, and peers that did not change keep their
sessions and sockets untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

from tunnel.dataplane import DataPlane
from tunnel.node import Node
from tunnel.peer import Peer
from tunnel.tun import Tun, open_tun_offloaded
from tunnel.udpoffload import segments_per_send

from . import logs, sdnotify
from .config import Config, ConfigError, PeerConfig, diff, load
from .control import ControlError, ControlServer, ports_ledger
from .detach import detached
from .logs import RateLimit
from .monitor import Monitor
from .netlink import Link, NetlinkFailure, ReservedPorts
from .show import interface_status

log = logging.getLogger("hopr-tunnel")

CAP_NET_ADMIN = 12
MONITOR_EVERY_S = 1.0
LOG_EVERY_S = 60.0  # one warning per port (or unreachable peer) a minute


class StartError(Exception):
    """The agent cannot start, for a reason the user can fix; one sentence."""


# -- checks before anything is created -------------------------------------------


def check_privileges(cfg: Config) -> None:
    """CAP_NET_ADMIN is needed for the TUN device, netlink and the sysctl."""
    if not has_capability(CAP_NET_ADMIN):
        raise StartError(
            f"creating {cfg.interface.name} needs CAP_NET_ADMIN; run "
            f"`sudo hopr-tunnel up {cfg.path}`, or start it with systemd "
            "(hopr-tunnel@.service grants that capability)."
        )


def has_capability(bit: int) -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


def check_listen(cfg: Config) -> None:
    """The listen address must be one of this host's: bind a probe socket."""
    listen = cfg.interface.listen
    family = socket.AF_INET6 if listen.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(listen), 0))
        except OSError as exc:
            raise StartError(
                f"{cfg.path}: interface.listen {listen} cannot be used here "
                f"({exc.strerror}); give an address of this host."
            ) from None


# -- the agent ---------------------------------------------------------------------


class Agent:
    """Everything `up` creates, and how to change it and take it down."""

    def __init__(self, cfg: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.loop = loop
        self.started_ns = time.time_ns()
        self.tun: Tun | None = None
        self.link: Link | None = None
        self.reserved: ReservedPorts | None = None
        self.plane: DataPlane | None = None
        self.control: ControlServer | None = None
        self.monitor = Monitor(cfg.interface.name)
        self.log_limit = RateLimit(LOG_EVERY_S)
        self.stopped = asyncio.Event()
        self.exit_status = 0
        self.reachable = -1  # peers reachable, as last told to systemd
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Bring the tunnel up; StartError (after undoing what was done) if not."""
        try:
            await self._start()
        except BaseException:
            self.teardown()
            raise

    async def _start(self) -> None:
        i = self.cfg.interface
        self.control = ControlServer(i.name, self.handle)
        try:
            await self.control.start()
        except ControlError as exc:
            self.control = None
            raise StartError(str(exc)) from None
        self.tun, tun_refused = self._open_tun()
        try:
            self.link = Link(self.tun.name)
            segs = segments_per_send(i.mtu) if self.tun.vnet_hdr else 0
            self.link.configure(i.addresses, i.mtu, segs)
        except NetlinkFailure as exc:
            raise StartError(f"{exc}; check {self.cfg.path}") from None
        self.reserved = ReservedPorts(i.port_range, ports_ledger(i.name))
        self.reserved.reserve()
        node = Node(i.private_key, i.hop_ms, i.cipher_id, i.port_range, time.time_ns())
        self.plane = DataPlane(
            node, self.tun, i.listen, self.loop, self._socket_failed, self._tun_lost,
            tun_refused,
        )  # fmt: skip
        log.info("%s: data path: %s", i.name, self.plane.offloads.describe())
        for peer in self.cfg.peers:
            self._add_peer(peer)
        self.plane.start()
        self._set_routes()

    def _open_tun(self) -> tuple[Tun, str | None]:
        """The TUN device, with superpackets if the kernel takes them (and the
        kernel's refusal if not)."""
        name = self.cfg.interface.name
        try:
            tun, _flags, refused = open_tun_offloaded(name)
            return tun, refused
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise StartError(
                    f"interface {name} is held by another process; stop it, or "
                    f"set another interface.name in {self.cfg.path}."
                ) from None
            raise StartError(
                f"cannot create TUN device {name} ({exc.strerror}); check that "
                "/dev/net/tun exists and no other kind of interface has that "
                f"name (interface.name in {self.cfg.path})."
            ) from None

    def _add_peer(self, pc: PeerConfig) -> None:
        assert self.plane is not None
        self.plane.add_peer(
            pc.name, pc.public_key, pc.psk, pc.port_range, pc.allowed_ips, pc.endpoint
        )

    def _remove_peer(self, name: str) -> None:
        assert self.plane is not None
        self.plane.remove_peer(name)
        self.monitor.forget(name)

    def _set_routes(self) -> None:
        assert self.link is not None
        self.link.set_routes(n for p in self.cfg.peers for n in p.allowed_ips)

    def _socket_failed(
        self, peer: Peer, ports: tuple[int, int], step: str, exc: OSError
    ) -> None:
        """A hop socket that could not open: a taken port, or no route to peer."""
        ifname, why = self.cfg.interface.name, exc.strerror or str(exc)
        if step == "bind" and self.log_limit.allow(("port", ports[0])):
            log.warning(
                "%s: cannot bind port %d for peer %s (%s); the peer misses the "
                "epochs that draw it; free the port or change interface.port_range",
                ifname,
                ports[0],
                peer.name,
                why,
            )
        elif step == "connect" and self.log_limit.allow(("connect", peer.name)):
            log.warning(
                "%s: cannot reach peer %s at %s (%s); retrying every second; "
                "check the underlay route to it",
                ifname,
                peer.name,
                self.plane.sockets[peer.name].endpoint if self.plane else "?",
                why,
            )

    def _tun_lost(self, exc: OSError) -> None:
        log.error(
            "%s: the TUN device failed (%s); was it deleted? stopping",
            self.cfg.interface.name,
            exc.strerror or exc,
        )
        self.exit_status = 1
        self.stop("TUN device lost")

    # -- running -----------------------------------------------------------------

    def announce_ready(self) -> None:
        i = self.cfg.interface
        text = (
            f"{i.name} ready: {len(self.cfg.peers)} peers, listening on {i.listen} "
            f"ports {i.port_range[0]}-{i.port_range[1]}, hop {i.hop_ms / 1000:g}s, "
            f"pid {os.getpid()}"
        )
        log.info("%s", text)
        sdnotify.ready(text)

    def install_stop_signals(self) -> None:
        """Before start: a SIGTERM during start-up still tears down cleanly."""
        self.loop.add_signal_handler(signal.SIGTERM, self.stop, "SIGTERM")
        self.loop.add_signal_handler(signal.SIGINT, self.stop, "SIGINT")
        self.loop.set_exception_handler(_log_loop_error)

    def install_reload_signal(self) -> None:
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)

    def start_tasks(self) -> None:
        self.tasks.append(self.loop.create_task(self._monitor()))
        interval_s = sdnotify.watchdog_interval_s()
        if interval_s is not None:
            self.tasks.append(self.loop.create_task(self._watchdog(interval_s / 2)))

    async def _monitor(self) -> None:
        while True:
            await asyncio.sleep(MONITOR_EVERY_S)
            if self.plane is None:
                continue
            now_ns = time.time_ns()
            for peer in list(self.plane.node.peers.values()):
                self.monitor.check(peer, now_ns)
            reachable = self.monitor.reachable_count()
            if reachable != self.reachable:
                self.reachable = reachable
                total = len(self.plane.node.peers)
                sdnotify.status(f"{reachable} of {total} peers reachable")

    async def _watchdog(self, every_s: float) -> None:
        while True:
            sdnotify.watchdog()
            await asyncio.sleep(every_s)

    def stop(self, why: str = "down") -> None:
        if not self.stopped.is_set():
            log.info("%s: stopping (%s)", self.cfg.interface.name, why)
            self.stopped.set()

    def handle(self, command: str) -> dict[str, Any]:
        """A control socket request."""
        if command == "show":
            assert self.plane is not None
            status = interface_status(
                self.cfg, self.plane, self.started_ns, time.time_ns()
            )
            return {"ok": True, "status": status}
        if command == "down":
            self.loop.call_soon(self.stop, "hopr-tunnel down")
            return {"ok": True, "pid": os.getpid()}
        return {"ok": False, "error": f"unknown command {command!r}"}

    # -- reload --------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: apply the config file as it is now, or refuse it whole."""
        sdnotify.reloading()
        name = self.cfg.interface.name
        try:
            new = load(self.cfg.path)
            self._refuse_interface_change(new)
        except ConfigError as exc:
            log.error("%s: reload refused, the tunnel keeps its config: %s", name, exc)
            sdnotify.ready()
            return
        try:
            summary = self._apply(new)
        except NetlinkFailure as exc:
            log.error("%s: reload partly applied: %s", name, exc)
        else:
            log.info("%s: reloaded %s: %s", name, self.cfg.path, summary)
        sdnotify.ready()

    def _refuse_interface_change(self, new: Config) -> None:
        old = self.cfg.interface
        if new.interface.name != old.name:
            raise ConfigError(
                f"{new.path}: interface.name changed from {old.name} to "
                f"{new.interface.name}, which a reload cannot do; put it back, or "
                f"run `hopr-tunnel down {old.name}` and `up` again."
            )

    def _apply(self, new: Config) -> str:
        assert self.plane is not None and self.link is not None
        old, self.cfg = self.cfg, new
        changes = diff(old, new)
        by_name = {p.name: p for p in new.peers}
        for name in changes.removed + changes.changed:
            self._remove_peer(name)
        self._apply_interface(old, new)
        for name in changes.added + changes.changed:
            self._add_peer(by_name[name])
        mtu = new.interface.mtu
        segs = segments_per_send(mtu) if self.tun and self.tun.vnet_hdr else 0
        self.link.configure(new.interface.addresses, mtu, segs)
        self._set_routes()
        return (
            f"{len(changes.added)} added, {len(changes.removed)} removed, "
            f"{len(changes.changed)} changed, {len(changes.unchanged)} unchanged"
        )

    def _apply_interface(self, old: Config, new: Config) -> None:
        """Interface fields a reload can change: the core's pair inputs (no peers
        are left in the node when they differ, since every peer then counts as
        changed), the reserved port range and the listen address."""
        assert self.plane is not None
        i, node = new.interface, self.plane.node
        if not node.peers:
            node.private_key, node.hop_ms = i.private_key, i.hop_ms
            node.cipher_id, node.own_ports = i.cipher_id, i.port_range
        if i.port_range != old.interface.port_range and self.reserved is not None:
            self.reserved.release()
            self.reserved = ReservedPorts(i.port_range, ports_ledger(i.name))
            self.reserved.reserve()
        if i.listen != old.interface.listen:
            self.plane.set_listen(i.listen)

    # -- teardown -------------------------------------------------------------------

    def teardown(self) -> None:
        """Undo every step of start that happened; safe to call twice."""
        for task in self.tasks:
            task.cancel()
        self.tasks.clear()
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.plane is not None:
            self.plane.close()
            self.plane = None
        if self.link is not None:
            self.link.close()
            self.link = None
        if self.tun is not None:
            self.tun.close()
            self.tun = None
        if self.reserved is not None:
            self.reserved.release()
            self.reserved = None


# -- entry points --------------------------------------------------------------------


def up(config: Path, detach: bool, log_level: str, log_file: Path | None) -> int:
    """`hopr-tunnel up`: ConfigError or StartError for the user's mistakes."""
    logs.setup(log_level)
    cfg = prepare(config)
    if not detach:
        return run(cfg)
    outcome = detached(
        lambda ready_fd, on_ready: run(cfg, ready_fd, on_ready), log_file
    )
    if outcome.startswith("ready"):
        return 0
    if outcome.startswith("error "):
        raise StartError(outcome.removeprefix("error ").strip())
    raise StartError(
        "the agent exited before it was ready; run `hopr-tunnel up` without "
        "--detach to see why."
    )


def prepare(config: Path) -> Config:
    """Everything that can fail before a fork: the config and privileges.

    The path is made absolute: a reload reads it again after --detach has
    changed the directory to /.
    """
    cfg = load(Path(config).absolute())
    check_privileges(cfg)
    check_listen(cfg)
    return cfg


def run(
    cfg: Config, ready_fd: int | None = None, on_ready: Callable[[], None] | None = None
) -> int:
    """Run the agent in this process until stopped; the exit status."""
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    agent = Agent(cfg, loop)
    try:
        return loop.run_until_complete(_serve(agent, ready_fd, on_ready))
    finally:
        agent.teardown()
        loop.close()


async def _serve(
    agent: Agent, ready_fd: int | None, on_ready: Callable[[], None] | None
) -> int:
    agent.install_stop_signals()
    try:
        await agent.start()
    except StartError as exc:
        if ready_fd is None:
            raise
        _report(ready_fd, f"error {exc}")
        return 2
    if agent.stopped.is_set():  # SIGTERM while starting: never report ready
        return 0
    agent.install_reload_signal()
    agent.start_tasks()
    agent.announce_ready()
    if ready_fd is not None:
        _report(ready_fd, "ready")
    if on_ready is not None:
        on_ready()
    await agent.stopped.wait()
    sdnotify.stopping()
    agent.teardown()
    log.info("%s: down", agent.cfg.interface.name)
    return agent.exit_status


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A bug of ours in a callback: log it with its traceback, keep running."""
    exc = context.get("exception")
    log.error("unexpected error: %s", context.get("message"), exc_info=exc)


def _report(fd: int, message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, message.encode() + b"\n")
        os.close(fd)
