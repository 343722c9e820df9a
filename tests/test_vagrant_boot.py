"""Opt-in: boot the Vagrant lab for real, under vagrant-libvirt and qemu.

    HOPR_VAGRANT_BOOT=1 python -m pytest -s tests/test_vagrant_boot.py

Runs as root, takes tens of minutes (qemu emulates the CPU: no KVM), and needs
vagrant, vagrant-libvirt, libvirt-daemon-system, qemu-system-x86, qemu-utils,
dnsmasq-base, debootstrap and systemd-nspawn. HOPR_VAGRANT_BOOT_VMS="alpha beta"
boots only those VMs of vagrant/inventory.toml (default: all three).

    host netns (untouched: its routes lead off this machine)
      |
      +-- netns hoprvg-<pid>-<rand>          no uplink: lo, libvirt's bridges, taps
            private mount namespace: /run, /etc/libvirt (a copy), /var/lib/libvirt,
            /var/log/libvirt, /var/cache/libvirt all from the test's own directory
            libvirtd (started by the test, PID recorded) -> dnsmasq, qemu per VM
            vagrant (nsenter'd into the same net and mount namespaces)
            hopr-mgmt 198.18.121.1/24  isolated, DHCP: vagrant's ssh and rsync
            hopr-lab  198.18.10.1/24   isolated, no DHCP: the tunnel's underlay

Both libvirt networks are isolated (no <forward>), so nothing is routed or
NATed; and the namespace has no link out, so there is nowhere to route to. The
box is built by vagrant/build-box.sh from the rootfs tests/nspawn.py caches,
and cached beside it; the VMs install hopr-tunnel from the cached wheels, with
pip's index off. Logs of the latest run stay in
/var/cache/hopr-tunnel-tests/vagrant-boot-last/.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.mesh import load_inventory
from tests import nspawn

REPO = Path(__file__).resolve().parent.parent
LAB = REPO / "vagrant"
BUILD_BOX = LAB / "build-box.sh"
LOG_DIR = nspawn.CACHE_DIR / "vagrant-boot-last"
BOX_NAME = "hopr-test/bookworm"
UNDERLAY_SPACE = ipaddress.ip_network("198.18.0.0/15")
MGMT_NETWORK = "198.18.121.0/24"
TOOLS = (
    "vagrant", "libvirtd", "virsh", "qemu-system-x86_64", "qemu-img", "dnsmasq",
    "mkfs.ext4", "rsync", "ssh", "nsenter", "unshare", "ip",
)  # fmt: skip
LIBVIRT_DIRS = {  # our directory -> where libvirtd sees it
    "etc": "/etc/libvirt",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
}
BOX_BUILD_TIMEOUT_S = 1800
LIBVIRTD_START_TIMEOUT_S = 60
UP_TIMEOUT_S = 5400
DESTROY_TIMEOUT_S = 600
SSH_TIMEOUT_S = 180

# vagrant-libvirt settings for this host, layered under the lab's Vagrantfile
# from VAGRANT_HOME: emulated CPU, no display, and a management network that is
# isolated and numbered inside the underlay space.
HOME_VAGRANTFILE = f"""
Vagrant.configure("2") do |config|
  config.vm.boot_timeout = 1800
  config.vm.provider :libvirt do |libvirt|
    libvirt.uri = "qemu:///system"
    libvirt.driver = "qemu"
    libvirt.cpu_mode = "custom"
    # Not qemu64: numpy (the data plane's) needs x86-64-v2 (SSE4.2, POPCNT) and
    # dies of SIGILL without it. Westmere is v2 plus AES-NI, all of which qemu
    # emulates; libvirt lists no later model as usable under TCG.
    libvirt.cpu_model = "Westmere"
    libvirt.graphics_type = "none"
    libvirt.video_type = "none"
    libvirt.management_network_name = "hopr-mgmt"
    libvirt.management_network_address = "{MGMT_NETWORK}"
    libvirt.management_network_mode = "none"
    libvirt.management_network_guest_ipv6 = "no"
  end
end
"""

# Appended to the copies of libvirt's configs: qemu as root with no security
# driver (the images live in the test's directory), its output to plain files
# (no virtlogd to run), libvirtd's log where the test keeps it.
QEMU_CONF = 'user = "root"\ngroup = "root"\nsecurity_driver = "none"\n'
QEMU_CONF += 'stdio_handler = "file"\n'
LIBVIRTD_CONF = 'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'

# Run by `ip netns exec NS unshare --mount`, so every mount is private to it; it
# execs libvirtd, whose PID is then the one the test started.
LIBVIRTD_LAUNCHER = """
set -eu
state=$1
mount -t tmpfs -o mode=0755 hopr-vagrant-run /run
mkdir -m 0755 /run/libvirt
for pair in etc:/etc/libvirt lib:/var/lib/libvirt log:/var/log/libvirt \
            cache:/var/cache/libvirt; do
    mount --bind "$state/${pair%%:*}" "${pair#*:}"
done
# niced, and so is every qemu it starts: the host's cores are shared.
exec nice -n 10 libvirtd --pid-file "$state/libvirtd.pid"
"""


def _skip_reason() -> str | None:
    if os.environ.get("HOPR_VAGRANT_BOOT") != "1":
        return "opt-in: set HOPR_VAGRANT_BOOT=1 (boots three VMs, tens of minutes)"
    if os.geteuid() != 0:
        return "needs root (network namespace, libvirtd, box build)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    missing += nspawn.missing_tools()
    if missing:
        return f"needs {', '.join(missing)} (apt: vagrant-libvirt, qemu-utils, ...)"
    plugins = subprocess.run(
        ["vagrant", "plugin", "list"], capture_output=True, text=True, check=False
    )
    if "vagrant-libvirt" not in plugins.stdout:
        return "needs the vagrant-libvirt plugin (apt: vagrant-libvirt)"
    return None


SKIP_REASON = _skip_reason()
pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))


def lab_vms() -> list[str]:
    names = [h.name for h in load_inventory(LAB / "inventory.toml").hosts]
    chosen = os.environ.get("HOPR_VAGRANT_BOOT_VMS", "").split() or names
    unknown = set(chosen) - set(names)
    assert not unknown, f"HOPR_VAGRANT_BOOT_VMS: {unknown} not in inventory.toml"
    return [name for name in names if name in chosen]


def cached_box() -> Path:
    """The libvirt box, built once per rootfs and build-box.sh version."""
    rootfs = nspawn.rootfs_tarball()
    recipe = BUILD_BOX.read_bytes() + rootfs.name.encode()
    key = hashlib.sha256(recipe).hexdigest()[:16]
    box = nspawn.CACHE_DIR / f"box-bookworm-{key}.box"
    if not box.exists():
        nspawn._run([str(BUILD_BOX), str(rootfs), str(box)], BOX_BUILD_TIMEOUT_S)
        for stale in nspawn.CACHE_DIR.glob("box-bookworm-*.box"):  # ~1 GB each
            if stale != box:
                stale.unlink()
    return box


class Lab:
    """vagrant and virsh, run inside the test's network and mount namespaces."""

    def __init__(self, netns: str, libvirtd_pid: int, home: Path, dot: Path) -> None:
        self.netns = netns
        self.libvirtd_pid = libvirtd_pid
        self.vms: list[str] = []
        self.timings_s: dict[str, float] = {}
        self.env = {
            **os.environ,
            "VAGRANT_HOME": str(home),
            "VAGRANT_DOTFILE_PATH": str(dot),
            "VAGRANT_CHECKPOINT_DISABLE": "1",
            "LIBVIRT_DEFAULT_URI": "qemu:///system",
            "HOPR_TUNNEL": f"{sys.executable} -m agent.cli",
            "HOPR_VAGRANT_BOX": BOX_NAME,
            "HOPR_VAGRANT_WHEELS": str(nspawn.wheelhouse(REPO)),
        }

    def run(
        self, *cmd: str, timeout_s: float, log: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        # Entering a mount namespace moves to its root: --wd brings us back.
        inside = ["nsenter", "-t", str(self.libvirtd_pid), "-m", "-n", f"--wd={LAB}"]
        inside += ["--", *cmd]
        started = time.monotonic()
        if log is None:
            done = subprocess.run(
                inside, cwd=LAB, env=self.env, capture_output=True, text=True,
                timeout=timeout_s, check=False,
            )  # fmt: skip
        else:
            # Written as it comes, so a long `up` can be followed with tail -f.
            with open(log, "w") as out:
                done = subprocess.run(
                    inside, cwd=LAB, env=self.env, stdout=out, stderr=out,
                    text=True, timeout=timeout_s, check=False,
                )  # fmt: skip
            done.stdout, done.stderr = log.read_text()[-4000:], ""
        self.timings_s[" ".join(cmd[:3])] = time.monotonic() - started
        return done

    def ssh(self, vm: str, command: str) -> subprocess.CompletedProcess[str]:
        return self.run("vagrant", "ssh", vm, "-c", command, timeout_s=SSH_TIMEOUT_S)

    def must(self, *cmd: str, timeout_s: float, log: Path | None = None) -> str:
        done = self.run(*cmd, timeout_s=timeout_s, log=log)
        assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout}{done.stderr}"
        return done.stdout


def _state_dir(root: Path) -> Path:
    """Copies of libvirt's config and (empty) state dirs for the private mounts."""
    for name, system in LIBVIRT_DIRS.items():
        shutil.copytree(system, root / name, symlinks=True)
    autostart = root / "etc/qemu/networks/autostart"
    shutil.rmtree(autostart, ignore_errors=True)  # libvirt's NAT "default" network
    with open(root / "etc/qemu.conf", "a") as conf:
        conf.write(QEMU_CONF)
    with open(root / "etc/libvirtd.conf", "a") as conf:
        conf.write(LIBVIRTD_CONF)
    return root


@contextlib.contextmanager
def libvirtd(netns: str, state: Path) -> Iterator[int]:
    """libvirtd in `netns` and a private mount namespace; killed, with all it ran."""
    launch = ["ip", "netns", "exec", netns, "unshare", "--mount", "--propagation"]
    launch += ["private", "/bin/sh", "-c", LIBVIRTD_LAUNCHER, "sh", str(state)]
    with open(state / "libvirtd.out", "w") as out:
        daemon = subprocess.Popen(launch, stdout=out, stderr=out)
    try:
        _wait_for_socket(daemon, state)
        yield daemon.pid
    finally:
        _stop(daemon)
        _kill_namespace_processes(netns)


def _wait_for_socket(daemon: subprocess.Popen[bytes], state: Path) -> None:
    # The socket is in the private /run: look through libvirtd's own root.
    socket = Path(f"/proc/{daemon.pid}/root/run/libvirt/libvirt-sock")
    deadline = time.monotonic() + LIBVIRTD_START_TIMEOUT_S
    while not socket.exists():
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"libvirtd: {(state / 'libvirtd.out').read_text()}")
        time.sleep(0.2)


def _stop(daemon: subprocess.Popen[bytes]) -> None:
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(timeout=30)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait(timeout=30)


def _kill_namespace_processes(netns: str) -> None:
    """qemu or dnsmasq left by a failed destroy: only our namespace's, by PID."""
    pids = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, text=True, check=False
    ).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)


def _keep_logs(lab: Lab, state: Path) -> None:
    for log in (state / "log").rglob("*.log"):
        shutil.copy(log, LOG_DIR / log.name)
    lines = [f"{what}: {seconds:.0f} s" for what, seconds in lab.timings_s.items()]
    (LOG_DIR / "timings.txt").write_text("\n".join(lines) + "\n")


@contextlib.contextmanager
def _mesh_dir_removed() -> Iterator[None]:
    """The Vagrantfile writes keys to vagrant/.mesh: remove them if we made them."""
    mesh = LAB / ".mesh"
    existed = mesh.exists()
    try:
        yield
    finally:
        if not existed:
            shutil.rmtree(mesh, ignore_errors=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("vagrant-boot")
    shutil.rmtree(LOG_DIR, ignore_errors=True)
    LOG_DIR.mkdir(parents=True)
    box = cached_box()
    try:
        yield from _booted_lab(work, box)
    finally:
        # Two copies of the box (Vagrant's, libvirt's pool) and the VMs' disks.
        shutil.rmtree(work, ignore_errors=True)


def _booted_lab(work: Path, box: Path) -> Iterator[Lab]:
    state = _state_dir(work / "libvirt")
    with (
        _mesh_dir_removed(),
        nspawn.netns(nspawn.unique_name("vg")) as netns,
        libvirtd(netns, state) as pid,
    ):
        lab = Lab(netns, pid, work / "home", work / "dot")
        (work / "home").mkdir()
        (work / "home/Vagrantfile").write_text(HOME_VAGRANTFILE)
        try:
            lab.must("vagrant", "box", "add", "--name", BOX_NAME, str(box),
                     timeout_s=600)  # fmt: skip
            lab.vms = lab_vms()
            # One VM after another: qemu emulates each CPU on a host core.
            up = ["vagrant", "up", "--provider=libvirt", "--no-parallel", *lab.vms]
            lab.must(*up, timeout_s=UP_TIMEOUT_S, log=LOG_DIR / "vagrant-up.log")
            yield lab
        finally:
            lab.run("vagrant", "destroy", "-f", timeout_s=DESTROY_TIMEOUT_S,
                    log=LOG_DIR / "vagrant-destroy.log")  # fmt: skip
            _keep_logs(lab, state)


def test_every_vm_runs_the_mesh_service(lab: Lab) -> None:
    for vm in lab.vms:
        state = lab.ssh(vm, "systemctl is-active hopr-tunnel@mesh")
        assert state.stdout.strip() == "active", f"{vm}: {state.stdout}{state.stderr}"


def test_first_vm_pings_every_other_vm_across_the_tunnel(lab: Lab) -> None:
    inventory = {h.name: h for h in load_inventory(LAB / "inventory.toml").hosts}
    first, *others = lab.vms
    for vm in others:
        address = inventory[vm].addresses[0].ip
        ping = lab.ssh(first, f"ping -c 3 -W 5 {address}")
        assert ping.returncode == 0, f"{first} -> {vm}: {ping.stdout}{ping.stderr}"


def test_show_reports_a_session_with_every_booted_peer(lab: Lab) -> None:
    inventory = {h.name: h for h in load_inventory(LAB / "inventory.toml").hosts}
    first, *others = lab.vms
    for vm in others:  # sessions start with traffic: make some
        lab.ssh(first, f"ping -c 1 -W 5 {inventory[vm].addresses[0].ip}")
    show = lab.ssh(first, "sudo hopr-tunnel show --json")
    assert show.returncode == 0, show.stdout + show.stderr
    (interface,) = json.loads(show.stdout)["interfaces"]
    peers = {peer["name"]: peer for peer in interface["peers"]}
    for vm in others:
        assert peers[vm]["session"], f"{first} has no session with {vm}"
        assert peers[vm]["endpoint"].startswith(str(inventory[vm].underlay))
    text = lab.ssh(first, "sudo hopr-tunnel show")
    assert text.returncode == 0, text.stdout + text.stderr
    for vm in others:
        assert f"peer: {vm} " in text.stdout, text.stdout


def test_libvirt_networks_forward_nothing(lab: Lab) -> None:
    names = lab.must("virsh", "net-list", "--name", timeout_s=60).split()
    assert sorted(names) == ["hopr-lab", "hopr-mgmt"]
    for name in names:
        xml = lab.must("virsh", "net-dumpxml", name, timeout_s=60)
        assert "<forward" not in xml, f"{name} forwards:\n{xml}"


def test_namespace_routes_only_the_underlay_space(lab: Lab) -> None:
    routes = subprocess.run(
        ["ip", "-n", lab.netns, "-j", "route", "show", "table", "all"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for route in json.loads(routes):
        if route.get("type") in ("local", "broadcast") or route["dst"] == "default":
            assert route["dst"] != "default", f"a default route: {route}"
            continue
        if route["dst"].startswith(("fe80:", "ff00:", "127.", "::1")):
            continue
        assert ipaddress.ip_network(route["dst"]).subnet_of(UNDERLAY_SPACE), route
