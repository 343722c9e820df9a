"""A throwaway Debian 12 booted under systemd-nspawn, for tests of the systemd unit.

The unit's promises (READY only once the tunnel is up, the watchdog, reload, a
clean stop) are made to a real systemd, so the tests boot one as PID 1 of a
container:

    host netns (untouched)
      |
      +-- netns hoprns-<pid>-<rand>-vm   <- systemd-nspawn --boot, the unit runs here
      |     veth 198.18.0.1/24
      |        |
      +-- netns hoprns-<pid>-<rand>-peer <- a peer agent started by the test
            veth 198.18.0.2/24

The root filesystem comes from debootstrap (minbase plus the packages below) and
is cached as a tarball under /var/cache/hopr-tunnel-tests/, keyed by a hash of
everything that shapes it, so only the first run pays for it. Each boot unpacks
a fresh copy, so no test sees what another left behind.

Notes on this host (hybrid cgroup hierarchy, no systemd as PID 1):
- `--register=no --keep-unit`: there is no host systemd/machined to talk to.
- `SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1` and `--system-call-filter=bpf` give the
  container a cgroup v2 tree whose device controller enforces DeviceAllow=.
- The container's systemd is reached with `nsenter -t PID -a`, PID being the
  container's init as the host sees it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What install.sh would otherwise fetch with apt (the container has no route to a
# mirror), plus what a test needs to look around: ping and ps.
PACKAGES = (
    "dbus",
    "gcc",
    "iproute2",
    "iputils-ping",
    "libc6-dev",
    "libssl-dev",
    "procps",
    "python3",
    "python3-dev",
    "python3-venv",
    "systemd",
    "systemd-sysv",
)
CACHE_DIR = Path(os.environ.get("HOPR_TEST_CACHE", "/var/cache/hopr-tunnel-tests"))
DEBOOTSTRAP_TIMEOUT_S = 1800
BOOT_TIMEOUT_S = 120
POWEROFF_TIMEOUT_S = 30


class HarnessUnavailable(Exception):
    """The host lacks what the harness needs; tests skip with this reason."""


def missing_tools() -> list[str]:
    """Host commands the harness needs that are not on PATH."""
    tools = ("debootstrap", "systemd-nspawn", "nsenter", "ip", "tar")
    return [tool for tool in tools if shutil.which(tool) is None]


def rootfs_key() -> str:
    """Hash of everything that shapes the rootfs: change one, build anew."""
    recipe = "|".join((SUITE, MIRROR, "minbase", *sorted(PACKAGES)))
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def rootfs_tarball() -> Path:
    """The cached rootfs tarball, built with debootstrap on first use."""
    tarball = CACHE_DIR / f"rootfs-{SUITE}-{rootfs_key()}.tar"
    if not tarball.exists():
        _build_tarball(tarball)
    return tarball


def _build_tarball(tarball: Path) -> None:
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tarball.parent) as work:
        root = Path(work) / "root"
        cmd = ["debootstrap", "--variant=minbase"]
        cmd += [f"--include={','.join(PACKAGES)}", SUITE, str(root), MIRROR]
        _run(cmd, timeout_s=DEBOOTSTRAP_TIMEOUT_S)
        _prepare_rootfs(root)
        partial = Path(work) / "rootfs.tar"
        _run(["tar", "-C", str(root), "-cf", str(partial), "."], timeout_s=600)
        # A rename is atomic: a run killed halfway leaves no truncated cache entry.
        partial.rename(tarball)


def _prepare_rootfs(root: Path) -> None:
    """Trim what fails or waits inside a container with no console or network."""
    (root / "etc/hostname").write_text("hopr-vm\n")
    mask = root / "etc/systemd/system"
    for unit in (
        "getty@tty1.service",
        "console-getty.service",
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "e2scrub_all.timer",
        "fstrim.timer",
    ):
        link = mask / unit
        if not link.exists():
            link.symlink_to("/dev/null")
    (root / "var/cache/apt/archives").mkdir(parents=True, exist_ok=True)
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


def _run(
    cmd: Sequence[str], timeout_s: float, check: bool = True, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(cmd),
            check=check,
            timeout=timeout_s,
            text=True,
            capture_output=True,
            input=stdin,
        )
    except subprocess.CalledProcessError as error:
        # Put what the command said into the failure a test reports.
        raise AssertionError(
            f"{' '.join(cmd)} exited {error.returncode}:\n{error.stdout}{error.stderr}"
        ) from None


def unique_name(role: str) -> str:
    """A netns or machine name no other run (or helper) can be using."""
    return f"hoprns-{os.getpid()}-{secrets.token_hex(3)}-{role}"


@contextlib.contextmanager
def netns(name: str) -> Iterator[str]:
    """A fresh network namespace, deleted on every exit path."""
    _run(["ip", "netns", "add", name], timeout_s=30)
    try:
        _run(["ip", "-n", name, "link", "set", "lo", "up"], timeout_s=30)
        yield name
    finally:
        _run(["ip", "netns", "delete", name], timeout_s=30, check=False)


def veth_pair(ns_a: str, addr_a: str, ns_b: str, addr_b: str) -> None:
    """Link two namespaces with a veth pair and give each end its address.

    Both ends are created in ns_a and one is moved, so no interface ever
    appears in the host's namespace.
    """
    run_a = ["ip", "-n", ns_a]
    _run([*run_a, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1"], 30)
    _run([*run_a, "link", "set", "veth1", "netns", ns_b], 30)
    for ns, dev, addr in ((ns_a, "veth0", addr_a), (ns_b, "veth1", addr_b)):
        _run(["ip", "-n", ns, "addr", "add", addr, "dev", dev], 30)
        _run(["ip", "-n", ns, "link", "set", dev, "up"], 30)


@contextlib.contextmanager
def tun_node(workdir: Path) -> Iterator[Path]:
    """A private /dev/net/tun node, mode 0666 as udev makes it on Debian.

    Bound into the container instead of the host's own node, so the test never
    changes the host's device permissions (0600 here).
    """
    node = workdir / "tun"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(10, 200))
    os.chmod(node, 0o666)  # mknod applies the umask
    yield node


class Container:
    """A booted container: run commands inside all of its namespaces."""

    def __init__(self, root: Path, leader_pid: int, log: Path) -> None:
        self.root = root
        self.leader_pid = leader_pid
        self.log = log

    def run(
        self, command: str, timeout_s: float = 60, check: bool = True, stdin: str = ""
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command inside the container, as its root."""
        nsenter = ["nsenter", "-t", str(self.leader_pid), "-a"]
        return _run([*nsenter, "/bin/sh", "-c", command], timeout_s, check, stdin)

    def out(self, command: str, timeout_s: float = 60) -> str:
        """What a command that must succeed prints, stripped."""
        return self.run(command, timeout_s).stdout.strip()

    def systemctl(
        self, *args: str, timeout_s: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl " + " ".join(args), timeout_s, check)


@contextlib.contextmanager
def booted(
    netns_name: str,
    workdir: Path,
    binds: Sequence[tuple[Path, str]] = (),
    binds_ro: Sequence[tuple[Path, str]] = (),
) -> Iterator[Container]:
    """Boot the cached rootfs in `netns_name`; power it off and clean up after."""
    root = workdir / "root"
    root.mkdir()
    try:
        _run(["tar", "-C", str(root), "-xf", str(rootfs_tarball())], timeout_s=300)
        with _nspawn(root, netns_name, workdir, binds, binds_ro) as container:
            yield container
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _nspawn(
    root: Path,
    netns_name: str,
    workdir: Path,
    binds: Sequence[tuple[Path, str]],
    binds_ro: Sequence[tuple[Path, str]],
) -> Iterator[Container]:
    log = workdir / "console.log"
    cmd = [
        "systemd-nspawn", "--boot", "--register=no", "--keep-unit",
        f"--directory={root}", f"--machine={netns_name[-24:]}",
        f"--network-namespace-path=/run/netns/{netns_name}",
        "--system-call-filter=bpf", "--console=pipe",
        # nspawn grants CAP_NET_ADMIN only with --private-network; the agent
        # needs it, and the namespace it would configure is the test's own.
        "--capability=CAP_NET_ADMIN",
    ]  # fmt: skip
    cmd += [f"--bind={src}:{dst}" for src, dst in binds]
    cmd += [f"--bind-ro={src}:{dst}" for src, dst in binds_ro]
    env = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
    with open(log, "w") as out:
        nspawn = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env
        )
    try:
        container = Container(root, _leader_pid(nspawn, log), log)
        _wait_until_running(container)
        yield container
    finally:
        _power_off(nspawn)


def _leader_pid(nspawn: subprocess.Popen[bytes], log: Path) -> int:
    """The host PID of the container's init, once it is systemd.

    It is the descendant of nspawn whose PID in its own namespace is 1; before it
    execs systemd it is still nspawn's child setting up, and nsenter would land
    in a half-built container.
    """
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while time.monotonic() < deadline:
        if nspawn.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited:\n{log.read_text()}")
        for pid in _descendants(nspawn.pid):
            if _namespace_pids(pid)[-1:] == [1] and _command(pid) == "systemd":
                return pid
        time.sleep(0.1)
    raise AssertionError(f"no container init after {BOOT_TIMEOUT_S}s")


def _command(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return ""


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                children = [int(child) for child in task.read_text().split()]
                found += children
                pending += children
    return found


def _namespace_pids(pid: int) -> list[int]:
    """NSpid of a process: its PID in each nested PID namespace, outermost first."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(field) for field in line.split()[1:]]
    return []


def _wait_until_running(container: Container) -> None:
    """Wait for boot to finish; a degraded system fails with its failed units."""
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    state = ""
    while not state and time.monotonic() < deadline:
        # Empty until systemd listens on its private socket: ask again.
        wait = container.run(
            "systemctl is-system-running --wait", BOOT_TIMEOUT_S, False
        )
        state = wait.stdout.strip()
        time.sleep(0 if state else 0.2)
    if state != "running":
        failed = container.run("systemctl --failed --no-legend", check=False)
        raise AssertionError(f"container is {state!r}; failed: {failed.stdout}")


def _power_off(nspawn: subprocess.Popen[bytes]) -> None:
    """Ask the container's systemd to power off; kill nspawn if it will not."""
    if nspawn.poll() is None:
        # nspawn turns SIGTERM into SIGRTMIN+3 for a booted init: an orderly halt.
        nspawn.terminate()
        try:
            nspawn.wait(timeout=POWEROFF_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            nspawn.kill()
            nspawn.wait(timeout=POWEROFF_TIMEOUT_S)


def wheelhouse(repo: Path) -> Path:
    """Wheels of the project's dependencies, for pip in a container with no index.

    Downloaded once per dependency list (PyPI is reached from the host only);
    install.sh in the container gets PIP_NO_INDEX=1 and PIP_FIND_LINKS.
    """
    pyproject = tomllib.loads((repo / "pyproject.toml").read_text())
    requirements = sorted(
        pyproject["project"]["dependencies"] + pyproject["build-system"]["requires"]
    )
    key = hashlib.sha256("|".join(requirements).encode()).hexdigest()[:16]
    wheels = CACHE_DIR / f"wheels-{key}"
    if not wheels.exists():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=CACHE_DIR))
        try:
            download = [sys.executable, "-m", "pip", "download", "-q", "-d", str(work)]
            download += ["--only-binary=:all:", "--python-version=3.11"]
            _run([*download, *requirements], timeout_s=600)
            work.rename(wheels)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return wheels
