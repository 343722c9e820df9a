"""A lab of network namespaces running real agents, for the netns tests.

    host netns (untouched: no interface, address or route is added there)

    hopr-t-<pid>-<rand>-hub        hopr-t-<pid>-<rand>-a     hopr-t-<pid>-<rand>-b ...
    +-----------------------+      +-------------------+     +-------------------+
    | br0 (bridge, no IP)   |      | eth0 198.18.0.1   |     | eth0 198.18.0.2   |
    |  +-- pa  <---veth---> |------| eth0 fd00:18::1   |     | eth0 fd00:18::2   |
    |  +-- pb  <---veth---> |--+   | ht<rand>0 (TUN)   |     | ht<rand>1 (TUN)   |
    |  +-- pc ...           |  |   |  100.64.0.1/24    |     |  100.64.0.2/24    |
    | tcpdump -i br0 here   |  |   |  fd00:64::1/64    |     |  fd00:64::2/64    |
    +-----------------------+  |   | hopr-tunnel up    |     | hopr-tunnel up    |
                               |   +-------------------+     +-------------------+
                               +--------------------------------------^ (eth0)

Every host namespace has a veth whose other end sits on one bridge in the hub
namespace, so any host reaches any other on the underlay (198.18.0.0/15 and
fd00:18::/64) and a capture on br0 sees every underlay datagram. Each host runs
`hopr-tunnel up CONFIG` on a TUN device with a name unique to the run (control
sockets live in the shared /run/hopr-tunnel/), tunnel addresses in 100.64.0.0/10
and fd00:64::/64.

`Lab` builds all of this on entry and removes it on every exit path (an
exception, a failed assertion, KeyboardInterrupt, SIGTERM to pytest): it stops
the processes it started, by PID only, deletes its namespaces and its temporary
directory, and prints the agents' logs when the block failed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from tests.netns_results import PingResult, Transfer, ping_result
from tunnel import keys

Popen = subprocess.Popen[str]
TOOLS = Path(__file__).with_name("netns_tools.py")
CONTROL_DIR = Path("/run/hopr-tunnel")
NAMES = "abcdefgh"
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
# HOPR_TEST_LOG_LEVEL=debug puts the agents' debug lines in the logs printed on
# failure.
AGENT_LOG_LEVEL = os.environ.get("HOPR_TEST_LOG_LEVEL", "info")
READY_LINE = re.compile(rb"\bready\b", re.IGNORECASE)


def hopr_command() -> list[str]:
    """The installed console script, next to this Python (no pyenv shim)."""
    beside = Path(sys.executable).with_name("hopr-tunnel")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("hopr-tunnel")
    return [found] if found else [sys.executable, "-m", "agent.cli"]


HOPR = hopr_command()


@functools.cache
def unavailable_reason() -> str | None:
    """Why the netns tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN devices)"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing"
    for tool in ("ip", "ping"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    probe = subprocess.run([*HOPR, "up", "--help"], capture_output=True, text=True)
    if probe.returncode != 0:
        return "this hopr-tunnel has no `up` command yet"
    return None


def require_netns(*tools: str) -> None:
    """Skip the calling test, with the reason, when the lab cannot run."""
    reason = unavailable_reason()
    missing = [t for t in tools if shutil.which(t) is None]
    if reason is None and missing:
        reason = f"`{missing[0]}` is not installed"
    if reason is not None:
        pytest.skip(reason)


# -- Hosts -------------------------------------------------------------------------


@dataclass(eq=False)  # hashed by identity: a host is one namespace
class Host:
    """One namespace with its underlay link, its keys and its agent."""

    index: int
    name: str
    ns: str
    ifname: str
    private_key: bytes = field(repr=False)
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    ready_at: float | None = None
    # Runs the agent's command line, e.g. a launcher that restricts it first.
    command_prefix: tuple[str, ...] = ()

    @property
    def public_key(self) -> bytes:
        return keys.public_from_private(self.private_key)

    @property
    def underlay_v4(self) -> str:
        return f"198.18.0.{self.index + 1}"

    @property
    def underlay_v6(self) -> str:
        return f"fd00:18::{self.index + 1}"

    @property
    def tunnel_v4(self) -> str:
        return f"100.64.0.{self.index + 1}"

    @property
    def tunnel_v6(self) -> str:
        return f"fd00:64::{self.index + 1}"

    def underlay(self, family: int) -> str:
        return self.underlay_v6 if family == 6 else self.underlay_v4

    def tunnel(self, family: int) -> str:
        return self.tunnel_v6 if family == 6 else self.tunnel_v4


# -- The lab -----------------------------------------------------------------------


class Lab:
    """N hosts on one underlay, each with a config and (once started) an agent.

    `peers` maps a host name to the names it lists as peers; by default every
    host lists every other (a full mesh). `interface` holds extra [interface]
    fields for every host's config (hop_interval, cipher, ...).
    """

    def __init__(
        self,
        n: int = 2,
        *,
        underlay: int = 4,
        hop_interval: str = "1s",
        peers: dict[str, Sequence[str]] | None = None,
        psk: bool = False,
        interface: dict[str, Any] | None = None,
    ) -> None:
        self.tag = f"{os.getpid()}-{secrets.token_hex(3)}"
        self.prefix = f"hopr-t-{self.tag}"
        self.family = underlay
        self.hop_interval = hop_interval
        self.interface = dict(interface or {})
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.hub = f"{self.prefix}-hub"
        self.hosts = [self._host(i) for i in range(n)]
        self.by_name = {h.name: h for h in self.hosts}
        names = [h.name for h in self.hosts]
        self.peers = peers or {a: [b for b in names if b != a] for a in names}
        self.psks = {pair: os.urandom(32) for pair in self._pairs()} if psk else {}
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._files: list[IO[Any]] = []
        self._old_sigterm: Any = None

    def _host(self, i: int) -> Host:
        name = NAMES[i]
        return Host(
            index=i,
            name=name,
            ns=f"{self.prefix}-{name}",
            ifname=f"ht{self.tag[-6:]}{i}",
            private_key=keys.generate_private(),
            config=self.tmp / f"{name}.toml",
            log=self.tmp / f"{name}.log",
        )

    def _pairs(self) -> list[tuple[str, str]]:
        names = [h.name for h in self.hosts]
        return [(a, b) for a in names for b in names if a < b]

    def __getitem__(self, name: str) -> Host:
        return self.by_name[name]

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> Lab:
        self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
        try:
            self._build()
        except BaseException:
            self.close(failed=True)
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(failed=exc_type is not None)

    def close(self, failed: bool) -> None:
        """Stop our processes, delete our namespaces and files; never raises."""
        try:
            for host in self.hosts:
                self._stop_quietly(host)
            for proc in self._procs:
                _terminate(proc)
            if failed:
                self.print_logs()
        finally:
            for f in self._files:
                f.close()
            for ns in reversed(self._namespaces):
                subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
            for host in self.hosts:
                _remove_control_files(host.ifname)
            shutil.rmtree(self.tmp, ignore_errors=True)
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)

    def print_logs(self) -> None:
        for host in self.hosts:
            if host.log.exists():
                text = host.log.read_text(errors="replace")
                print(f"----- agent log of host {host.name} ({host.ns}) -----")
                print(text[-20_000:])

    # -- building ----------------------------------------------------------------

    def _build(self) -> None:
        self._add_namespace(self.hub)
        self.sysctl(
            self.hub,
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        )
        self.ip(self.hub, "link", "add", "br0", "type", "bridge", "stp_state", "0")
        self.ip(self.hub, "link", "set", "br0", "up")
        for host in self.hosts:
            self._add_host(host)
        for host in self.hosts:
            self.write_config(host)

    def _add_namespace(self, ns: str) -> None:
        _run(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        self.ip(ns, "link", "set", "lo", "up")

    def _add_host(self, host: Host) -> None:
        self._add_namespace(host.ns)
        # No DAD wait on the underlay, and ICMP errors unthrottled so the test of
        # closed ports sees one per probe.
        self.sysctl(
            host.ns,
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv4.icmp_ratelimit=0",
            "net.ipv6.icmp.ratelimit=0",
        )
        port = f"p{host.name}"
        self.ip(
            self.hub,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            host.ns,
        )
        self.ip(self.hub, "link", "set", port, "master", "br0", "up")
        self.ip(host.ns, "addr", "add", f"{host.underlay_v4}/24", "dev", "eth0")
        self.ip(
            host.ns, "addr", "add", f"{host.underlay_v6}/64", "dev", "eth0", "nodad"
        )
        self.ip(host.ns, "link", "set", "eth0", "up")

    def ip(self, ns: str, *args: str) -> None:
        _run(["ip", "-n", ns, *args])

    def sysctl(self, ns: str, *settings: str) -> None:
        _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *settings])

    # -- configs -----------------------------------------------------------------

    def write_config(
        self,
        host: Host,
        peers: Iterable[str] | None = None,
        interface: dict[str, Any] | None = None,
        peer_fields: dict[str, dict[str, Any]] | None = None,
    ) -> Path:
        """Write host's config (0600), with overrides; return its path."""
        _write_secret(self.tmp / f"{host.name}.key", keys.encode_key(host.private_key))
        fields = {
            "name": host.ifname,
            "private_key_file": f"{host.name}.key",
            "address": [f"{host.tunnel_v4}/24", f"{host.tunnel_v6}/64"],
            "listen": host.underlay(self.family),
            "hop_interval": self.hop_interval,
            **self.interface,
            **(interface or {}),
        }
        lines = ["[interface]", *_toml_fields(fields)]
        names = self.peers.get(host.name, []) if peers is None else peers
        for name in names:
            extra = (peer_fields or {}).get(name, {})
            lines += ["", "[[peer]]", *_toml_fields(self._peer(host, name, extra))]
        _write_secret(host.config, "\n".join(lines) + "\n")
        return host.config

    def _peer(self, host: Host, name: str, extra: dict[str, Any]) -> dict[str, Any]:
        peer = self[name]
        fields: dict[str, Any] = {
            "name": name,
            "public_key": keys.encode_key(peer.public_key),
            "endpoint": peer.underlay(self.family),
            "allowed_ips": [f"{peer.tunnel_v4}/32", f"{peer.tunnel_v6}/128"],
        }
        pair = tuple(sorted((host.name, name)))
        if pair in self.psks:
            psk_file = self.tmp / f"{pair[0]}-{pair[1]}.psk"
            _write_secret(psk_file, keys.encode_key(self.psks[pair]))
            fields["psk_file"] = psk_file.name
        return {**fields, **extra}

    # -- agents ------------------------------------------------------------------

    def start(self, host: Host, wait: bool = True) -> float | None:
        """Start host's agent; with wait, return the time it logged ready."""
        log = host.log.open("ab")
        self._files.append(log)
        offset = log.tell()
        cmd = ["ip", "netns", "exec", host.ns, *host.command_prefix]
        cmd += [*HOPR, "up", str(host.config)]
        cmd += ["--log-level", AGENT_LOG_LEVEL]
        host.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        host.ready_at = None
        return self.wait_ready(host, offset) if wait else None

    def start_all(self) -> None:
        offsets = {}
        for host in self.hosts:
            offsets[host.name] = host.log.stat().st_size if host.log.exists() else 0
            self.start(host, wait=False)
        for host in self.hosts:
            self.wait_ready(host, offsets[host.name])

    def wait_ready(self, host: Host, offset: int = 0) -> float:
        """Wait for the agent's "ready" log line (after offset); its time."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        assert host.proc is not None
        while time.monotonic() < deadline:
            if READY_LINE.search(host.log.read_bytes()[offset:]):
                host.ready_at = time.time()
                return host.ready_at
            if host.proc.poll() is not None:
                raise AssertionError(
                    f"agent {host.name} exited with status "
                    f"{host.proc.returncode} before it was ready:\n"
                    f"{self.log_text(host, offset)[-3000:]}"
                )
            time.sleep(0.01)
        raise AssertionError(
            f"agent {host.name} logged no ready line within "
            f"{READY_TIMEOUT_S} s:\n{self.log_text(host, offset)[-3000:]}"
        )

    def log_text(self, host: Host, offset: int = 0) -> str:
        return host.log.read_bytes()[offset:].decode(errors="replace")

    def send_signal(self, host: Host, sig: int) -> None:
        assert host.proc is not None and host.proc.poll() is None, host.name
        os.kill(host.proc.pid, sig)

    def stop(self, host: Host, sig: int = signal.SIGTERM) -> int:
        """Signal the agent and wait for it to exit; its exit status."""
        self.send_signal(host, sig)
        assert host.proc is not None
        try:
            return host.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            host.proc.kill()
            host.proc.wait()
            raise AssertionError(
                f"agent {host.name} was still running {STOP_TIMEOUT_S} s after "
                f"signal {sig}; killed it"
            ) from None

    def restart(self, host: Host, sig: int = signal.SIGTERM) -> float:
        """Stop the agent with sig, start it again; the time it was ready."""
        self.stop(host, sig)
        ready_at = self.start(host)
        assert ready_at is not None
        return ready_at

    def _stop_quietly(self, host: Host) -> None:
        if host.proc is not None and host.proc.poll() is None:
            with contextlib.suppress(AssertionError, OSError):
                self.stop(host)

    # -- commands in namespaces --------------------------------------------------

    def run(
        self, ns: str | Host, *argv: str, timeout_s: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return _run(_in(ns, argv), timeout_s=timeout_s, check=check)

    def popen(self, ns: str | Host, *argv: str, **kw: Any) -> subprocess.Popen[Any]:
        """Start a process in a namespace; the lab stops it on exit."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(_in(ns, argv), start_new_session=True, **kw)
        self._procs.append(proc)
        return proc

    def tool(self, ns: str | Host, command: str, **options: Any) -> Any:
        """Run a netns_tools command to its end; its JSON result.

        Options become flags: marker_hex="00" is --marker-hex 00.
        """
        argv = tool_argv(command, options)
        done = self.run(ns, *argv, timeout_s=120)
        return json.loads(done.stdout.strip().splitlines()[-1])

    def tool_start(self, ns: str | Host, command: str, **options: Any) -> Popen:
        """Start a netns_tools command; read its result with last_json."""
        argv = tool_argv(command, options)
        return self.popen(ns, *argv, stdout=subprocess.PIPE, text=True)

    def serve(self, ns: str | Host, command: str, **options: Any) -> Popen:
        """Start a serving netns_tools command; return once it is listening."""
        proc = self.tool_start(ns, command, **options)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "listening", f"{command} did not start: {line!r}"
        return proc

    def show(self, host: Host) -> dict[str, Any]:
        """`hopr-tunnel show IFACE --json` of host's agent."""
        done = self.run(host, *HOPR, "show", host.ifname, "--json", timeout_s=20)
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    def check(self, host: Host, at_ms: int | None = None) -> dict[str, Any]:
        """`hopr-tunnel check CONFIG --json [--at MS]` of host's config."""
        at = [] if at_ms is None else ["--at", str(at_ms)]
        done = _run([*HOPR, "check", str(host.config), "--json", *at])
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    # -- traffic -----------------------------------------------------------------

    def ping_start(
        self,
        src: Host,
        dst: str,
        count: int,
        interval_s: float,
        pattern_hex: str | None = None,
    ) -> subprocess.Popen[str]:
        argv = ["ping", "-D", "-n", "-c", str(count), "-i", str(interval_s), "-W", "1"]
        if pattern_hex:
            argv += ["-p", pattern_hex]
        return self.popen(
            src, *argv, dst, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def ping(
        self,
        src: Host,
        dst: str,
        count: int,
        interval_s: float,
        pattern_hex: str | None = None,
    ) -> PingResult:
        proc = self.ping_start(src, dst, count, interval_s, pattern_hex)
        return ping_result(proc, timeout_s=count * interval_s + 30)

    def wait_reachable(self, src: Host, dst: str, timeout_s: float = 10) -> float:
        """Ping until one reply comes back; the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            done = self.run(
                src, "ping", "-n", "-c", "1", "-W", "0.5", dst, check=False, timeout_s=5
            )
            if done.returncode == 0:
                return time.monotonic() - started
        raise AssertionError(f"{dst} not reachable from {src.name} in {timeout_s} s")

    def transfer_start(
        self,
        src: Host,
        dst: Host,
        family: int,
        nbytes: int,
        port: int = 5201,
        rate_bytes_s: int = 0,
    ) -> Transfer:
        """A TCP transfer of nbytes random bytes from src to dst's tunnel address."""
        addr = dst.tunnel(family)
        sink = self.serve(dst, "tcp-sink", bind=addr, port=port)
        source = self.tool_start(
            src,
            "tcp-source",
            to=addr,
            port=port,
            bytes=nbytes,
            rate_bytes_s=rate_bytes_s,
        )
        return Transfer(sink, source, nbytes)

    @contextlib.contextmanager
    def capture(self, name: str, bpf: str = "udp") -> Iterator[Path]:
        """tcpdump on the hub's bridge for the block; yields the pcap path."""
        pcap, log = self.tmp / f"{name}.pcap", self.tmp / f"{name}.tcpdump.log"
        with log.open("wb") as err:
            # Unbuffered (-U, --immediate-mode) so nothing is lost at SIGINT; as
            # root (-Z) so the file lands in our private temp directory.
            argv = ["tcpdump", "-i", "br0", "-n", "-U", "--immediate-mode", "-s", "0"]
            argv += ["-Z", "root", "-w", str(pcap), bpf]
            proc = self.popen(self.hub, *argv, stderr=err)
        try:
            _wait_for(lambda: b"listening on" in log.read_bytes(), 10, "tcpdump")
            yield pcap
        finally:
            time.sleep(0.1)  # let the last datagrams reach the file
            proc.send_signal(signal.SIGINT)
            proc.wait(10)


# -- Helpers -----------------------------------------------------------------------


def tool_argv(command: str, options: dict[str, Any]) -> list[str]:
    argv = [sys.executable, str(TOOLS), command]
    for name, value in options.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    return argv


def _in(ns: str | Host, argv: Sequence[str]) -> list[str]:
    name = ns.ns if isinstance(ns, Host) else ns
    return ["ip", "netns", "exec", name, *argv]


def _run(
    argv: Sequence[str], timeout_s: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return done


def _wait_for(ready: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not start within {timeout_s} s")
        time.sleep(0.02)


def _terminate(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _remove_control_files(ifname: str) -> None:
    """What a killed agent of ours may leave in the shared control directory."""
    if CONTROL_DIR.is_dir():
        for path in CONTROL_DIR.glob(f"{ifname}*"):
            with contextlib.suppress(OSError):
                path.unlink()


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    os.chmod(path, 0o600)


def _toml_fields(fields: dict[str, Any]) -> list[str]:
    return [f"{key} = {_toml_value(value)}" for key, value in fields.items()]


def _toml_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool | int):
        return str(value).lower()
    return json.dumps(str(value))  # a TOML basic string for ASCII text


def _sigterm_to_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
