"""install.sh and hopr-tunnel@.service under a real systemd, booted with nspawn.

    host netns (untouched)
      +-- netns ...-vm    systemd-nspawn --boot: Debian 12, install.sh, the unit
      |     veth0 198.18.0.1/24          hopr0 100.64.0.1/24 (the real agent)
      +-- netns ...-peer  a peer agent run by the test (python -m agent.cli up)
            veth1 198.18.0.2/24          hopr0 100.64.0.2/24

One container serves the whole module (boot and install take half a minute);
each test leaves it as it found it. tests/nspawn.py builds and caches the rootfs.

Three groups:
- the harness and install.sh: boot, install, reinstall, uninstall, and
  `systemd-analyze verify` of the installed unit on a real system;
- the unit's sandbox, with tests/sandbox_probe.py in place of the agent: the
  agent's every need is met as the unprivileged user (TUN, netlink, sysctl,
  sockets, notify), another device is refused, and reload, watchdog and stop
  behave as the unit says;
- the real agent (`hopr-tunnel up`) against a peer: start returns once the
  tunnel is up, a ping crosses, reload keeps the tunnel, the watchdog restarts a
  stopped agent, stop leaves no interface. These skip until `up` exists.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.mesh import generate, load_inventory
from tests import nspawn

REPO = Path(__file__).resolve().parent.parent
VM_UNDERLAY, PEER_UNDERLAY = "198.18.0.1", "198.18.0.2"
INSTALL = "PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels /src/install.sh"
# The unit's own WatchdogSec is 20 s; the tests shorten it in a drop-in so a
# stopped agent is caught within seconds.
TEST_WATCHDOG = "[Service]\nWatchdogSec=3\n"
SETTLE_TIMEOUT_S = 60  # upper bound for a state change we wait for


def _harness_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces and systemd-nspawn"
    missing = nspawn.missing_tools()
    if missing:
        return (
            f"needs {', '.join(missing)}: apt-get install debootstrap systemd-container"
        )
    if not Path("/dev/net/tun").exists():
        return "needs /dev/net/tun"
    return None


def _agent_missing() -> str | None:
    """Why the real-agent tests cannot run yet: `hopr-tunnel up` must exist."""
    cmd = [sys.executable, "-m", "agent.cli", "up", "--help"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    if done.returncode != 0:
        return "`hopr-tunnel up` does not exist yet (its --help fails)"
    return None


HARNESS_MISSING = _harness_missing()
AGENT_MISSING = _agent_missing()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(HARNESS_MISSING is not None, reason=str(HARNESS_MISSING)),
]
needs_agent = pytest.mark.skipif(AGENT_MISSING is not None, reason=str(AGENT_MISSING))


@dataclass
class Lab:
    vm: nspawn.Container
    peer_ns: str
    mesh_dir: Path  # bound into the container read-only as /lab


def wait_until(
    check: Callable[[], bool], what: str, evidence: Callable[[], str] = str
) -> None:
    """Poll `check` until it holds; else fail with `what` and `evidence()`."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not within {SETTLE_TIMEOUT_S}s: {what}\n{evidence()}"
            )
        time.sleep(0.5)


def make_mesh(directory: Path) -> None:
    """Configs for vm and peer, and a second vm config with a third peer."""
    hosts = [("vm", VM_UNDERLAY, "100.64.0.1"), ("peer", PEER_UNDERLAY, "100.64.0.2")]
    grown = [*hosts, ("gamma", "198.18.0.3", "100.64.0.3")]
    for out, members in (("two", hosts), ("three", grown)):
        inventory = directory / f"{out}.toml"
        text = '[defaults]\nhop_interval = "2s"\n'
        for name, underlay, address in members:
            text += f'[[host]]\nname = "{name}"\nunderlay = "{underlay}"\n'
            text += f'address = "{address}"\n'
        inventory.write_text(text)
        # Same key directory for both: generate keeps existing keys.
        generate(load_inventory(inventory), directory / "keys", "mesh", psk=True)
        shutil.copytree(directory / "keys", directory / out)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("nspawn")
    mesh_dir = work / "mesh"
    mesh_dir.mkdir()
    make_mesh(mesh_dir)
    binds_ro = [
        (REPO, "/src"),
        (nspawn.wheelhouse(REPO), "/wheels"),
        (mesh_dir, "/lab"),
    ]
    with contextlib.ExitStack() as stack:
        vm_ns = stack.enter_context(nspawn.netns(nspawn.unique_name("vm")))
        peer_ns = stack.enter_context(nspawn.netns(nspawn.unique_name("peer")))
        nspawn.veth_pair(vm_ns, f"{VM_UNDERLAY}/24", peer_ns, f"{PEER_UNDERLAY}/24")
        tun = stack.enter_context(nspawn.tun_node(work))
        vm = stack.enter_context(
            nspawn.booted(vm_ns, work, [(tun, "/dev/net/tun")], binds_ro)
        )
        vm.run(INSTALL, timeout_s=600)
        yield Lab(vm, peer_ns, mesh_dir)


# -- The harness and install.sh ------------------------------------------------------


def test_container_runs_systemd_as_pid_1(lab: Lab) -> None:
    assert lab.vm.out("ps -o comm= -p 1") == "systemd"
    assert lab.vm.out("systemctl is-system-running") == "running"


def test_install_puts_hopr_tunnel_on_path(lab: Lab) -> None:
    assert "Usage: hopr-tunnel" in lab.vm.out("hopr-tunnel --help")


def test_install_builds_the_native_data_path(lab: Lab) -> None:
    state = "import tunnel.native as n; print(n.state)"
    assert lab.vm.out(f"/opt/hopr-tunnel/bin/python -c '{state}'") == "native code"


def test_install_gives_config_dir_to_the_service_user_only(lab: Lab) -> None:
    assert (
        lab.vm.out("stat -c '%U:%G %a' /etc/hopr-tunnel")
        == "hopr-tunnel:hopr-tunnel 700"
    )


def test_installed_unit_verifies_without_a_word(lab: Lab) -> None:
    verify = lab.vm.run("systemd-analyze verify hopr-tunnel@mesh.service 2>&1")
    assert verify.stdout == ""


def test_installing_again_succeeds_and_keeps_the_command(lab: Lab) -> None:
    lab.vm.run(INSTALL, timeout_s=600)
    assert "Usage: hopr-tunnel" in lab.vm.out("hopr-tunnel --help")


def test_installing_again_hands_new_config_files_to_the_service_user(lab: Lab) -> None:
    lab.vm.run("umask 022; echo '# draft' > /etc/hopr-tunnel/draft.toml")
    try:
        lab.vm.run(INSTALL, timeout_s=600)
        owner = lab.vm.out("stat -c '%U %a' /etc/hopr-tunnel/draft.toml")
        assert owner == "hopr-tunnel 600"
    finally:
        lab.vm.run("rm -f /etc/hopr-tunnel/draft.toml")


def test_uninstall_removes_the_program_and_keeps_configs_and_keys(lab: Lab) -> None:
    lab.vm.run("install -o hopr-tunnel -m 0600 /lab/two/vm/* /etc/hopr-tunnel/")
    try:
        lab.vm.run("/src/install.sh --uninstall")
        gone = "/opt/hopr-tunnel /usr/local/bin/hopr-tunnel "
        gone += "/etc/systemd/system/hopr-tunnel@.service"
        assert (
            lab.vm.out(f"for p in {gone}; do test -e $p && echo $p; done; true") == ""
        )
        assert lab.vm.run("systemctl cat hopr-tunnel@mesh", check=False).returncode != 0
        kept = lab.vm.out("ls /etc/hopr-tunnel").split()
        assert {"mesh.toml", "mesh.key", "mesh-peer.psk"} <= set(kept)
    finally:
        lab.vm.run(INSTALL, timeout_s=600)
        lab.vm.run("rm -f /etc/hopr-tunnel/*")


# -- The unit's sandbox, with tests/sandbox_probe.py as the agent ---------------------

PROBE_DROP_IN = f"""[Service]
ExecStart=
ExecStart=/opt/hopr-tunnel/bin/python /usr/local/lib/hopr-tunnel-probe.py \
{VM_UNDERLAY} /dev/hopr-probe-fuse
# Shown in the private /dev too, so that only the device policy can refuse it.
BindPaths=/dev/hopr-probe-fuse
"""


def write(vm: nspawn.Container, path: str, text: str) -> None:
    vm.run(f"mkdir -p $(dirname {path}) && cat > {path}", stdin=text)


def journal(vm: nspawn.Container, unit: str) -> str:
    return vm.run(f"journalctl -u {unit} --no-pager -n 30", check=False).stdout


def unit_property(vm: nspawn.Container, unit: str, name: str) -> str:
    return vm.out(f"systemctl show -P {name} {unit}")


@pytest.fixture
def probe(lab: Lab) -> Iterator[str]:
    """hopr-tunnel@probe running the probe in the unit's sandbox."""
    unit = "hopr-tunnel@probe.service"
    vm = lab.vm
    probe_path = "/usr/local/lib/hopr-tunnel-probe.py"
    vm.run(f"install -m 0644 /src/tests/sandbox_probe.py {probe_path}")
    # A device the agent must not reach: /dev/fuse's numbers, open to all (0666)
    # so that only DevicePolicy=closed can refuse it.
    vm.run("mknod -m 0666 /dev/hopr-probe-fuse c 10 229")
    write(vm, f"/etc/systemd/system/{unit}.d/probe.conf", PROBE_DROP_IN)
    write(vm, f"/etc/systemd/system/{unit}.d/watchdog.conf", TEST_WATCHDOG)
    vm.run("systemctl daemon-reload")
    try:
        started = vm.systemctl("start", unit, timeout_s=120, check=False)
        assert started.returncode == 0, journal(vm, unit)
        yield unit
    finally:
        vm.systemctl("stop", unit, check=False)
        vm.run(f"rm -rf /etc/systemd/system/{unit}.d /dev/hopr-probe-fuse")
        vm.run("systemctl daemon-reload; systemctl reset-failed", check=False)


def test_sandboxed_agent_is_active_once_ready(lab: Lab, probe: str) -> None:
    assert unit_property(lab.vm, probe, "ActiveState") == "active"
    assert lab.vm.out(f"systemctl status {probe} | grep Status:").endswith(
        '"probe ready"'
    )


def test_sandbox_lets_the_agent_make_its_tun_device(lab: Lab, probe: str) -> None:
    assert "100.64.9.1/24" in lab.vm.out("ip -br addr show hoprprobe0")


def test_sandbox_lets_the_agent_reserve_its_ports(lab: Lab, probe: str) -> None:
    reserved = lab.vm.out("cat /proc/sys/net/ipv4/ip_local_reserved_ports")
    assert reserved == "20000-29999"


def test_reload_signals_the_agent_and_keeps_it_running(lab: Lab, probe: str) -> None:
    pid = unit_property(lab.vm, probe, "MainPID")
    lab.vm.systemctl("reload", probe)
    wait_until(
        lambda: (
            lab.vm.run("cat /run/hopr-tunnel/probe.reloads", check=False).stdout
            == "SIGHUP\n"
        ),
        "the probe logs the SIGHUP of systemctl reload",
    )
    assert unit_property(lab.vm, probe, "MainPID") == pid
    assert unit_property(lab.vm, probe, "ActiveState") == "active"


def test_watchdog_restarts_a_stopped_agent(lab: Lab, probe: str) -> None:
    pid = unit_property(lab.vm, probe, "MainPID")
    lab.vm.run(f"kill -STOP {pid}")
    wait_until(
        lambda: (
            unit_property(lab.vm, probe, "MainPID") not in (pid, "0")
            and unit_property(lab.vm, probe, "ActiveState") == "active"
        ),
        "systemd restarts the agent that stopped feeding the watchdog",
        lambda: journal(lab.vm, probe),
    )
    assert unit_property(lab.vm, probe, "NRestarts") == "1"
    assert "watchdog" in journal(lab.vm, probe).lower()


def test_stop_removes_the_interface(lab: Lab, probe: str) -> None:
    lab.vm.systemctl("stop", probe)
    assert lab.vm.run("ip link show hoprprobe0", check=False).returncode != 0
    assert unit_property(lab.vm, probe, "ActiveState") == "inactive"


# -- The real agent against a peer ---------------------------------------------------

MESH = "hopr-tunnel@mesh.service"


@pytest.fixture
def peer(lab: Lab) -> Iterator[subprocess.Popen[str]]:
    """The peer agent in its own namespace, run from this checkout."""
    config = lab.mesh_dir / "two" / "peer" / "mesh.toml"
    cmd = ["ip", "netns", "exec", lab.peer_ns, sys.executable, "-m", "agent.cli"]
    # Its control socket goes to the lab, not the host's /run/hopr-tunnel.
    env = {**os.environ, "HOPR_TUNNEL_RUN_DIR": str(lab.mesh_dir / "peer-run")}
    with open(lab.mesh_dir / "peer.log", "w") as log:
        agent = subprocess.Popen(
            [*cmd, "up", str(config)], cwd=REPO, env=env, text=True,
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield agent
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=15)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()


@pytest.fixture
def mesh(lab: Lab, peer: subprocess.Popen[str]) -> Iterator[str]:
    """hopr-tunnel@mesh started in the vm, the peer agent running."""
    vm = lab.vm
    vm.run(
        "install -o hopr-tunnel -g hopr-tunnel -m 0600 /lab/two/vm/* /etc/hopr-tunnel/"
    )
    write(vm, f"/etc/systemd/system/{MESH}.d/watchdog.conf", TEST_WATCHDOG)
    vm.run("systemctl daemon-reload")
    try:
        started = vm.systemctl("start", MESH, timeout_s=120, check=False)
        assert started.returncode == 0, journal(vm, MESH)
        yield MESH
    finally:
        vm.systemctl("stop", MESH, check=False)
        vm.run(f"rm -rf /etc/systemd/system/{MESH}.d /etc/hopr-tunnel/*")
        vm.run("systemctl daemon-reload; systemctl reset-failed", check=False)


def ping_answered(lab: Lab) -> bool:
    """One echo reply from the peer over the tunnel, however many requests it takes.

    The first request may wait for the pair's hellos, and one sent just then
    may go unanswered: ping repeats each second until the deadline.
    """
    cmd = f"ping -n -c 1 -w {SETTLE_TIMEOUT_S} 100.64.0.2"
    done = lab.vm.run(cmd, timeout_s=SETTLE_TIMEOUT_S + 10, check=False)
    if done.returncode != 0:  # show both agents' side of the story
        print(
            done.stdout, journal(lab.vm, MESH), (lab.mesh_dir / "peer.log").read_text()
        )
    return done.returncode == 0


@needs_agent
def test_start_returns_once_the_tunnel_is_up(lab: Lab, mesh: str) -> None:
    # Nothing waited between `systemctl start` returning and this look.
    assert "100.64.0.1/24" in lab.vm.out("ip -br addr show hopr0")
    assert unit_property(lab.vm, mesh, "ActiveState") == "active"


@needs_agent
def test_ping_crosses_the_tunnel(lab: Lab, mesh: str) -> None:
    assert ping_answered(lab)


@needs_agent
def test_reload_applies_a_new_peer_without_dropping_the_tunnel(
    lab: Lab, mesh: str
) -> None:
    assert ping_answered(lab)  # the pair has a session
    pid = unit_property(lab.vm, mesh, "MainPID")
    lab.vm.run("install -o hopr-tunnel -m 0600 /lab/three/vm/* /etc/hopr-tunnel/")
    pinging = subprocess.Popen(
        ["nsenter", "-t", str(lab.vm.leader_pid), "-a", "ping", "-n", "-c", "20",
         "-i", "0.2", "100.64.0.2"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    lab.vm.systemctl("reload", mesh)
    out, _ = pinging.communicate(timeout=SETTLE_TIMEOUT_S)
    assert " 0% packet loss" in out
    assert unit_property(lab.vm, mesh, "MainPID") == pid
    assert "gamma" in lab.vm.out("hopr-tunnel show hopr0")


@needs_agent
def test_watchdog_restarts_a_stopped_agent_and_the_tunnel_returns(
    lab: Lab, mesh: str
) -> None:
    pid = unit_property(lab.vm, mesh, "MainPID")
    lab.vm.run(f"kill -STOP {pid}")
    wait_until(
        lambda: (
            unit_property(lab.vm, mesh, "MainPID") not in (pid, "0")
            and unit_property(lab.vm, mesh, "ActiveState") == "active"
        ),
        "systemd restarts the agent that stopped feeding the watchdog",
        lambda: journal(lab.vm, mesh),
    )
    assert unit_property(lab.vm, mesh, "NRestarts") == "1"
    assert ping_answered(lab)


@needs_agent
def test_stop_leaves_no_interface(lab: Lab, mesh: str) -> None:
    lab.vm.systemctl("stop", mesh)
    assert lab.vm.run("ip link show hopr0", check=False).returncode != 0
