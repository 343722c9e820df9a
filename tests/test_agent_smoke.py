"""Smoke test: two real agents started with `hopr-tunnel up` carry a ping.

    host netns (untouched)
    hoprsmoke-<pid>-<rand>-a              hoprsmoke-<pid>-<rand>-b
    +--------------------------+          +--------------------------+
    | veth0 198.18.0.1/24      |<-------->| veth1 198.18.0.2/24      |
    | hs<rand>a 100.64.0.1/24  |          | hs<rand>b 100.64.0.2/24  |
    | hopr-tunnel up a.toml    |          | hopr-tunnel up b.toml    |
    +--------------------------+          +--------------------------+

hop_interval is 1 s, so a few seconds of traffic cross several hops. Every
namespace, process and file is removed on every exit path; processes are
stopped by PID. The full integration suite is tests/test_netns_*.py.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tunnel import keys

HOPR = [str(Path(sys.executable).with_name("hopr-tunnel"))]
if not Path(HOPR[0]).exists():
    HOPR = [sys.executable, "-m", "agent.cli"]
READY_TIMEOUT_S = 15.0
SESSION_TIMEOUT_S = 10.0


@dataclass
class Side:
    ns: str
    ifname: str
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *argv],
            check=check,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def show(self) -> dict[str, object]:
        done = self.run(*HOPR, "show", "--json")
        found = json.loads(done.stdout)["interfaces"]
        mine = [s for s in found if s["name"] == self.ifname]
        assert len(mine) == 1, done.stdout
        return mine[0]  # type: ignore[no-any-return]


def _require() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, TUN devices)")
    for tool in ("ip", "ping"):
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is not installed")


def _config(side: Side, me: int, key: Path, peer_public: bytes) -> None:
    peer = 3 - me
    side.config.write_text(
        f"""[interface]
name = "{side.ifname}"
private_key_file = "{key}"
address = ["100.64.0.{me}/24"]
listen = "198.18.0.{me}"
hop_interval = "1s"

[[peer]]
name = "peer{peer}"
public_key = "{keys.encode_key(peer_public)}"
endpoint = "198.18.0.{peer}"
allowed_ips = ["100.64.0.{peer}/32"]
"""
    )


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Side, Side]]:
    _require()
    tag = f"{os.getpid()}-{secrets.token_hex(2)}"
    short = secrets.token_hex(3)
    sides = tuple(
        Side(
            f"hoprsmoke-{tag}-{n}",
            f"hs{short}{n}",
            tmp_path / f"{n}.toml",
            tmp_path / f"{n}.log",
        )
        for n in "ab"
    )
    privates = [keys.generate_private() for _ in sides]
    made: list[str] = []
    try:
        for side in sides:
            subprocess.run(["ip", "netns", "add", side.ns], check=True)
            made.append(side.ns)
            side.run("ip", "link", "set", "lo", "up")
        _link(*sides)
        for me, (side, private) in enumerate(zip(sides, privates, strict=True), 1):
            key = tmp_path / f"{me}.key"
            key.write_text(keys.encode_key(private) + "\n")
            key.chmod(0o600)
            _config(side, me, key, keys.public_from_private(privates[2 - me]))
        yield sides  # type: ignore[misc]
    finally:
        for side in sides:
            _stop(side)
        for ns in made:
            subprocess.run(["ip", "netns", "delete", ns], check=False)


def _link(a: Side, b: Side) -> None:
    a.run("ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
    a.run("ip", "link", "set", "veth1", "netns", b.ns)
    for side, dev, addr in (
        (a, "veth0", "198.18.0.1/24"),
        (b, "veth1", "198.18.0.2/24"),
    ):
        side.run("ip", "addr", "add", addr, "dev", dev)
        side.run("ip", "link", "set", dev, "up")


def _start(side: Side, env: dict[str, str] | None = None) -> None:
    log = side.log.open("ab")
    side.proc = subprocess.Popen(
        ["ip", "netns", "exec", side.ns, *HOPR, "up", str(side.config)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=None if env is None else {**os.environ, **env},
    )
    log.close()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while b" ready" not in side.log.read_bytes():
        assert side.proc.poll() is None, side.log.read_text()
        assert time.monotonic() < deadline, side.log.read_text()
        time.sleep(0.02)


def _stop(side: Side) -> None:
    if side.proc is not None and side.proc.poll() is None:
        side.proc.send_signal(signal.SIGTERM)
        try:
            side.proc.wait(10)
        except subprocess.TimeoutExpired:
            side.proc.kill()
            side.proc.wait()


def _wait_session(side: Side) -> dict[str, object]:
    deadline = time.monotonic() + SESSION_TIMEOUT_S
    while True:
        peer = side.show()["peers"][0]  # type: ignore[index]
        if peer["session"] or time.monotonic() > deadline:
            return peer  # type: ignore[no-any-return]
        time.sleep(0.1)


@pytest.mark.netns
def test_ping_crosses_the_tunnel_between_two_agents(pair: tuple[Side, Side]) -> None:
    a, b = pair
    _start(a)
    _start(b)
    done = a.run("ping", "-c", "20", "-i", "0.05", "-W", "2", "100.64.0.2", check=False)
    assert "20 packets transmitted, 20 received" in done.stdout, done.stdout


@pytest.mark.netns
def test_show_reports_the_peer_with_a_session(pair: tuple[Side, Side]) -> None:
    a, b = pair
    _start(a)
    _start(b)
    peer = _wait_session(a)
    assert (peer["name"], peer["session"], peer["hint"]) == ("peer2", True, None)
    # Which data path runs, as the agent logged it at start.
    assert str(a.show()["data_path"]).startswith(("fast", "plain"))
    text = a.run(*HOPR, "show", a.ifname).stdout
    assert "  data path: " in text and "runs sealed and opened in" in text, text


@pytest.mark.netns
def test_metrics_count_a_pings_traffic_for_prometheus(pair: tuple[Side, Side]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    a, b = pair
    _start(a)
    _start(b)
    a.run("ping", "-c", "5", "-i", "0.05", "-W", "2", "100.64.0.2")
    text = a.run(*HOPR, "metrics", a.ifname).stdout
    values = {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("peer") == "peer2"
    }
    assert values["hopr_tunnel_peer_session"] == 1, text
    assert values["hopr_tunnel_peer_received_datagrams_total"] >= 5, text
    assert values["hopr_tunnel_peer_sent_bytes_total"] > 5 * 84, text


@pytest.mark.netns
def test_down_stops_the_agent_and_leaves_no_interface(pair: tuple[Side, Side]) -> None:
    a, _ = pair
    _start(a)
    a.run(*HOPR, "down", a.ifname)
    assert a.proc is not None and a.proc.wait(5) == 0
    assert a.run("ip", "link", "show", a.ifname, check=False).returncode != 0


@pytest.mark.netns
def test_a_refused_reload_keeps_the_tunnel_running(pair: tuple[Side, Side]) -> None:
    a, b = pair
    _start(a)
    _start(b)
    a.config.write_text(a.config.read_text() + "\nnot toml =\n")
    assert a.proc is not None
    a.proc.send_signal(signal.SIGHUP)
    done = a.run("ping", "-c", "10", "-i", "0.05", "-W", "2", "100.64.0.2", check=False)
    assert "10 received" in done.stdout and "reload refused" in a.log.read_text()


@pytest.mark.netns
def test_up_detach_returns_once_ready_and_down_stops_it(
    pair: tuple[Side, Side],
) -> None:
    a, _ = pair
    try:
        done = a.run(*HOPR, "up", str(a.config), "--detach", check=False)
        assert done.returncode == 0, done.stderr
        assert a.show()["name"] == a.ifname  # the control socket answers at once
    finally:
        a.run(*HOPR, "down", a.ifname, check=False)
    assert a.run("ip", "link", "show", a.ifname, check=False).returncode != 0


@pytest.mark.netns
def test_a_deleted_interface_stops_the_agent_with_status_1(
    pair: tuple[Side, Side],
) -> None:
    a, _ = pair
    _start(a)
    a.run("ip", "link", "delete", a.ifname)
    assert a.proc is not None and a.proc.wait(10) == 1
    assert "TUN device failed" in a.log.read_text()


@pytest.mark.netns
def test_systemd_hears_ready_then_the_watchdog(
    pair: tuple[Side, Side], tmp_path: Path
) -> None:
    a, _ = pair
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify"))
        notify.settimeout(10)
        _start(
            a, {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "1000000"}
        )
        first = notify.recv(4096).decode()
        later = notify.recv(4096).decode()
        while "WATCHDOG=1" not in later:  # the first STATUS=... may come between
            later = notify.recv(4096).decode()
    assert first.startswith("READY=1\nSTATUS=") and "WATCHDOG=1" in later
