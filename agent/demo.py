"""`hopr-tunnel demo`: three hosts on this machine, hopping, in a live view.

    host namespace: gets no interface, address or route; only the namespaces'
    names in /run/netns, the agents' control sockets and a temporary directory

    hopr-demo-<pid>-hub           hopr-demo-<pid>-a                 -b, -c alike
    +--------------------+        +------------------------------+
    | br0 (bridge, no IP)|        | eth0 198.18.0.1/24           |
    |  +-- veth-a <----> |--------| hopr-<pid>-a (TUN)           |
    |  +-- veth-b <----> |-- b    |   100.64.0.1/24              |
    |  +-- veth-c <----> |-- c    | hopr-tunnel up a.toml        |
    +--------------------+        | ping 100.64.0.2 (b), .3 (c)  |
                                  +------------------------------+

The demo builds that, writes keys and configs with `hopr-tunnel mesh`'s
generator into a private temporary directory, starts one agent per host (its
log goes to a file there), waits until every agent answers on its control
socket, then pings each pair across the tunnel (a's agent pings b and c, b's
pings c; a pair whose hellos at start crossed no agent yet gets its session
from its first ping) and redraws every pair's epoch, ports, pings and bytes
until Ctrl-C, SIGTERM or --duration. The agents' own `show` status feeds the
view, read from their control sockets as `hopr-tunnel show --json` reads it.

Leaving nothing behind, on every exit path: the namespaces, the temporary
directory and the interfaces are all named after this process's pid, so the
clean-up removes whatever carries that name, even what a signal interrupted
half-made. It stops the processes it started (SIGTERM, then SIGKILL), then any
process still inside one of its namespaces (only this demo enters them), and
it ignores Ctrl-C while it runs, so a second one cannot cut it short.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import combinations
from pathlib import Path
from typing import IO, Any

from . import control
from . import demo_view as view
from .demo_view import PairRow
from .mesh import generate, load_inventory

HOST_NAMES = ("a", "b", "c")
REFRESH_S = 0.5
CONFIG_NAME = "demo"
PING_INTERVAL_S = 0.2  # five a second: every hop falls between two pings
READY_TIMEOUT_S = 30.0  # agents import their libraries on a possibly busy CPU
SESSION_TIMEOUT_S = 20.0  # hellos and held packets take well under a second
STOP_TIMEOUT_S = 5.0  # an agent's teardown takes well under a second
LOG_TAIL_LINES = 15
TOOLS = {"ip": "iproute2", "ping": "iputils-ping"}
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class DemoError(Exception):
    """The demo cannot run here, for a reason the user fixes: one sentence."""


class DemoFailure(Exception):
    """Something broke while the demo ran; the message says what and shows logs."""


class Stopped(Exception):
    """SIGTERM or SIGHUP: end the demo as Ctrl-C does."""


def preflight() -> None:
    """Refuse to start, naming the fix, when this machine cannot run the demo."""
    if os.geteuid() != 0:
        raise DemoError(
            "the demo creates network namespaces and TUN devices, which needs "
            "root; run `sudo hopr-tunnel demo`."
        )
    if not Path("/dev/net/tun").exists():
        raise DemoError("/dev/net/tun is missing; run `sudo modprobe tun` first.")
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None:
            raise DemoError(
                f"the `{tool}` command is missing; install it with "
                f"`sudo apt-get install {package}`."
            )


def hopr_command() -> list[str]:
    """The command the agents run as: this installation's console script."""
    beside = Path(sys.executable).with_name("hopr-tunnel")
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-m", "agent.cli"]


# -- The hosts ------------------------------------------------------------------------


@dataclass
class DemoHost:
    name: str
    index: int
    ns: str
    ifname: str
    config: Path
    log: Path
    agent: subprocess.Popen[bytes] | None = None

    @property
    def underlay(self) -> str:
        return f"198.18.0.{self.index + 1}"

    @property
    def tunnel(self) -> str:
        return f"100.64.0.{self.index + 1}"


class Demo:
    """The namespaces, configs, agents and pings of one demo run.

    `close` stops what it started and removes what it made; `run` calls it on
    every exit path.
    """

    def __init__(self, hop_ms: int) -> None:
        self.hop_ms = hop_ms
        self.pid = os.getpid()
        self.prefix = f"hopr-demo-{self.pid}"
        self.hub = f"{self.prefix}-hub"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.hosts = [self._host(i, name) for i, name in enumerate(HOST_NAMES)]
        self.by_name = {h.name: h for h in self.hosts}
        self.rows = [PairRow(a.name, b.name) for a, b in combinations(self.hosts, 2)]
        self.lock = threading.Lock()  # ping readers feed rows the view reads
        self.pings: dict[str, subprocess.Popen[str]] = {}
        self.started_s = time.monotonic()
        self._made_run_dir = not control.run_dir().exists()

    def _host(self, index: int, name: str) -> DemoHost:
        directory = self.tmp / name
        return DemoHost(
            name=name,
            index=index,
            ns=f"{self.prefix}-{name}",
            ifname=ifname(self.pid, name),
            config=directory / f"{name}.toml",
            log=self.tmp / f"{name}.log",
        )

    # -- building ---------------------------------------------------------------

    def build(self) -> None:
        """The underlay bridge, one namespace per host, and every config."""
        self._namespace(self.hub)
        _ip(self.hub, "link", "add", "br0", "type", "bridge")
        _ip(self.hub, "link", "set", "br0", "up")
        for host in self.hosts:
            self._namespace(host.ns)
            port = f"veth-{host.name}"  # a bare "a" would read as `ip`'s "address"
            _ip(self.hub, "link", "add", port, "type", "veth",
                "peer", "name", "eth0", "netns", host.ns)  # fmt: skip
            _ip(self.hub, "link", "set", port, "master", "br0", "up")
            _ip(host.ns, "addr", "add", f"{host.underlay}/24", "dev", "eth0")
            _ip(host.ns, "link", "set", "eth0", "up")
        self.write_configs()

    def _namespace(self, ns: str) -> None:
        _run("ip", "netns", "add", ns)
        _ip(ns, "link", "set", "lo", "up")

    def write_configs(self) -> None:
        """Keys and configs by `hopr-tunnel mesh`'s generator, in self.tmp.

        An inventory sets one interface name for every host; the agents share
        /run/hopr-tunnel, so each host needs its own name. The generator keeps
        the keys it finds, so one run per host, each with that host's name,
        yields consistent configs.
        """
        inventory = self.tmp / "inventory.toml"
        lines = ["[defaults]", f'hop_interval = "{self.hop_ms}ms"']
        for host in self.hosts:
            lines += ["", "[[host]]", f'name = "{host.name}"']
            lines += [f'underlay = "{host.underlay}"', f'address = "{host.tunnel}"']
        inventory.write_text("\n".join(lines) + "\n")
        mesh = load_inventory(inventory)
        for i, host in enumerate(self.hosts):
            named = {**mesh.defaults, "name": host.ifname}
            each = dataclasses.replace(mesh, defaults=named)
            generate(each, self.tmp, CONFIG_NAME, psk=True)[i].rename(host.config)
        for host in self.hosts:  # the last run's configs, with another's name
            (host.config.parent / f"{CONFIG_NAME}.toml").unlink(missing_ok=True)

    # -- agents and pings -------------------------------------------------------

    def start_agents(self) -> None:
        for host in self.hosts:
            with host.log.open("wb") as log:
                host.agent = self._spawn(
                    host.ns, [*hopr_command(), "up", str(host.config)], log
                )

    def _spawn(self, ns: str, argv: list[str], out: Any) -> subprocess.Popen[Any]:
        # A session of its own: Ctrl-C reaches the demo only, which then stops
        # its children in order. No systemd variables: the agents are not the
        # service the demo may run in.
        env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARIABLES}
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            text=out is subprocess.PIPE,
        )

    def wait_ready(self) -> None:
        """Until every agent answers on its control socket."""
        for host in self.hosts:
            try:
                _wait(partial(self.answers, host), READY_TIMEOUT_S, self.check_agents)
            except TimeoutError:
                raise DemoFailure(
                    f"the agent of host {host.name} did not answer within "
                    f"{READY_TIMEOUT_S:.0f} s; the end of its log:\n"
                    + self.log_tail(host)
                ) from None

    def answers(self, host: DemoHost) -> bool:
        return self.status(host) is not None

    def first_pings(self) -> None:
        """Ping each pair until one reply: the first packet brings up its session.

        Agents started together send their first hellos before their peers
        listen, so sessions form on the first traffic; done here, the view's
        loss count is about the hops alone.
        """
        deadline = time.monotonic() + SESSION_TIMEOUT_S
        waiting = list(self.rows)
        while waiting:
            self.check_agents()
            if time.monotonic() > deadline:
                raise DemoFailure(self._no_session(waiting[0]))
            pings = [(row, self._ping(row, "-c", "1", "-W", "2")) for row in waiting]
            waiting = [row for row, proc in pings if proc.wait() != 0]

    def _no_session(self, row: PairRow) -> str:
        left = self.by_name[row.left]
        return (
            f"no ping from {row.left} to {row.right} came back within "
            f"{SESSION_TIMEOUT_S:.0f} s; the end of {row.left}'s agent log:\n"
            + self.log_tail(left)
        )

    def _ping(self, row: PairRow, *options: str) -> subprocess.Popen[Any]:
        left, right = self.by_name[row.left], self.by_name[row.right]
        argv = ["ping", "-n", *options, right.tunnel]
        out = subprocess.PIPE if "-O" in options else subprocess.DEVNULL
        return self._spawn(left.ns, argv, out)

    def start_pings(self) -> None:
        for row in self.rows:
            proc = self._ping(row, "-O", "-i", str(PING_INTERVAL_S))
            self.pings[row.name] = proc
            reader = threading.Thread(
                target=self._read_ping, args=(row, proc), daemon=True
            )
            reader.start()

    def _read_ping(self, row: PairRow, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self.lock:
                row.ping.feed(line)

    # -- watching ---------------------------------------------------------------

    def status(self, host: DemoHost) -> dict[str, Any] | None:
        """The agent's `show` status, or None when it does not answer."""
        try:
            return control.statuses(host.ifname)[0]
        except control.ControlError:
            return None

    def refresh(self) -> None:
        """Check the agents still run and read every pair's status."""
        self.check_agents()
        statuses = {h.name: self.status(h) for h in self.hosts}
        with self.lock:
            for row in self.rows:
                row.update(statuses[row.left])

    def check_agents(self) -> None:
        for host in self.hosts:
            if host.agent is not None and host.agent.poll() is not None:
                raise DemoFailure(
                    f"the agent of host {host.name} exited with status "
                    f"{host.agent.returncode}; the end of its log:\n"
                    + self.log_tail(host)
                )

    def log_tail(self, host: DemoHost) -> str:
        try:
            lines = host.log.read_text(errors="replace").splitlines()
        except OSError:
            return "  (no log)"
        return "\n".join(f"  {line}" for line in lines[-LOG_TAIL_LINES:])

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_s

    # -- cleaning up ------------------------------------------------------------

    def close(self) -> list[str]:
        """Stop our processes, then sweep; return what could not be removed."""
        children: list[subprocess.Popen[Any]] = [*self.pings.values()]
        children += [h.agent for h in self.hosts if h.agent is not None]
        with _signals_ignored():
            _stop(children)
            return sweep(self.pid, self._made_run_dir)


def sweep(pid: int, remove_run_dir: bool = False) -> list[str]:
    """Remove whatever the demo of `pid` made; return what resisted (normally [])."""
    prefix = f"hopr-demo-{pid}"
    steps: list[tuple[str, Callable[[], None]]] = [
        ("stop processes", lambda: _kill_strays(prefix)),
        ("delete namespaces", lambda: _delete_namespaces(prefix)),
        ("remove control sockets", lambda: _remove_sockets(pid, remove_run_dir)),
        ("remove temporary files", lambda: _remove_temp_dirs(prefix)),
    ]
    problems = []
    with _signals_ignored():
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - the next steps must run
                problems.append(f"{what}: {exc}")
    return problems


def _stop(children: list[subprocess.Popen[Any]]) -> None:
    """SIGTERM, a few seconds to finish, then SIGKILL; by PID, ours only."""
    for proc in children:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for proc in children:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _kill_strays(prefix: str) -> None:
    """Whatever still runs inside our namespaces: only the demo enters them."""
    for pid in _pids_in_namespaces(_namespaces(prefix)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _namespaces(prefix: str) -> list[str]:
    listed = _run("ip", "netns", "list").stdout.splitlines()
    names = [line.split()[0] for line in listed if line.strip()]
    return [ns for ns in names if ns.startswith(f"{prefix}-")]


def _delete_namespaces(prefix: str) -> None:
    for ns in _namespaces(prefix):
        _run("ip", "netns", "delete", ns)


def _remove_sockets(pid: int, remove_run_dir: bool) -> None:
    for name in HOST_NAMES:  # left behind only by an agent that was killed
        with contextlib.suppress(FileNotFoundError):
            control.socket_path(ifname(pid, name)).unlink()
    if remove_run_dir:
        with contextlib.suppress(OSError):  # not empty: other agents use it
            control.run_dir().rmdir()


def _remove_temp_dirs(prefix: str) -> None:
    for path in Path(tempfile.gettempdir()).glob(f"{prefix}-*"):
        shutil.rmtree(path)


def ifname(pid: int, host: str) -> str:
    return f"hopr-{pid}-{host}"  # at most 14 characters, IFNAMSIZ allows 15


# -- Running ------------------------------------------------------------------------


def run(hop_ms: int, duration_s: float | None, out: IO[str]) -> int:
    """The whole demo; its exit status. Raises DemoError before making anything."""
    preflight()
    demo: Demo | None = None
    status = 0
    with stop_on_signals():
        try:
            demo = Demo(hop_ms)
            _show(demo, duration_s, out)
        except (KeyboardInterrupt, Stopped):
            write(out, "\n")
        except DemoFailure as exc:
            print(f"hopr-tunnel demo: {exc}", file=sys.stderr)
            status = 1
        finally:
            write(out, "stopping the agents and removing the namespaces...\n")
            problems = demo.close() if demo else sweep(os.getpid())
    t_s = demo.elapsed_s() if demo else 0.0
    if demo is not None and demo.pings:
        write(out, "".join(f"{line}\n" for line in view.summary(demo.rows, t_s)))
    for problem in problems:
        print(f"hopr-tunnel demo: could not {problem}", file=sys.stderr)
    write(out, "" if problems else "removed the namespaces, agents, keys and logs.\n")
    return status if not problems else 1


def _show(demo: Demo, duration_s: float | None, out: IO[str]) -> None:
    names = ", ".join(h.ns for h in demo.hosts)
    write(out, f"building 3 hosts in network namespaces {names}...\n")
    demo.build()
    demo.start_agents()
    pids = ", ".join(f"{h.name} pid {_pid(h.agent)}" for h in demo.hosts)
    write(out, f"agents: {pids}; waiting until they answer...\n")
    demo.wait_ready()
    write(out, "bringing up each pair's session with a first ping...\n")
    demo.first_pings()
    demo.start_pings()
    pids = ", ".join(f"{name} pid {p.pid}" for name, p in demo.pings.items())
    write(out, f"pings: {pids}\n")
    watch(demo, duration_s, out, out.isatty())


def watch(demo: Demo, duration_s: float | None, out: IO[str], tty: bool) -> None:
    """Redraw every REFRESH_S until the duration ends (or forever)."""
    started_s = time.monotonic()
    first = True
    while True:
        demo.refresh()
        with demo.lock:
            text = _screen(demo, first) if tty else _log_lines(demo)
        write(out, text)
        first = False
        elapsed_s = time.monotonic() - started_s
        if duration_s is not None and elapsed_s >= duration_s:
            return
        time.sleep(REFRESH_S - elapsed_s % REFRESH_S)


def _screen(demo: Demo, first: bool) -> str:
    hosts = [
        view.HostLine(h.name, h.ns, h.underlay, h.tunnel, h.ifname, _pid(h.agent))
        for h in demo.hosts
    ]
    height = shutil.get_terminal_size().lines
    screen = view.Screen(hosts, demo.hop_ms, demo.elapsed_s(), demo.hub, height)
    return view.frame(view.screen_lines(demo.rows, screen), first)


def _log_lines(demo: Demo) -> str:
    elapsed_s = demo.elapsed_s()
    return "".join(view.log_line(elapsed_s, row) + "\n" for row in demo.rows)


def _pid(proc: subprocess.Popen[Any] | None) -> int | None:
    return None if proc is None else proc.pid


# -- Helpers --------------------------------------------------------------------------


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise DemoFailure(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
    return done


def _ip(ns: str, *args: str) -> None:
    _run("ip", "-n", ns, *args)


def _wait(
    done: Callable[[], bool], timeout_s: float, check: Callable[[], None]
) -> None:
    """Poll `done` until true; `check` raises if waiting became pointless."""
    deadline = time.monotonic() + timeout_s
    while not done():
        check()
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.1)


def _pids_in_namespaces(names: list[str]) -> list[int]:
    inodes = set()
    for ns in names:
        with contextlib.suppress(OSError):
            inodes.add(f"net:[{os.stat(f'/run/netns/{ns}').st_ino}]")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(entry / "ns" / "net") in inodes:
                found.append(int(entry.name))
    return found


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP end the demo as Ctrl-C does: through the clean-up."""

    def stop(signum: int, frame: object) -> None:
        raise Stopped(signal.Signals(signum).name)

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, signal.SIG_IGN) for s in signals}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def write(out: IO[str], text: str) -> None:
    out.write(text)
    out.flush()
