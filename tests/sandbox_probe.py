"""Stand-in for `hopr-tunnel up`, run by the unit to prove its sandbox fits the agent.

tests/test_systemd_nspawn.py swaps ExecStart for this script in a drop-in, so
the unit's hardening is checked against everything the agent does, before and
independently of the agent itself:

- runs as a user other than root, with CAP_NET_ADMIN from the unit;
- AES-GCM from cryptography and an uvloop event loop under
  MemoryDenyWriteExecute and the system call filter;
- a TUN device from /dev/net/tun, brought up with an address over netlink;
- net.ipv4.ip_local_reserved_ports written through ProtectKernelTunables;
- a UNIX socket in /run/hopr-tunnel and a UDP socket on the underlay;
- no other device: DevicePolicy=closed refuses the node given as argv[2];
- READY=1 only after all of that, WATCHDOG=1 from the loop, and on SIGHUP
  RELOADING=1, a line in /run/hopr-tunnel/probe.reloads, READY=1.

Any failure is printed (the journal keeps it) and exits 1 before READY=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import socket
import struct
import sys
from pathlib import Path

import uvloop
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pyroute2 import IPRoute

from agent import sdnotify

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
IFNAME = "hoprprobe0"
RUN_DIR = Path("/run/hopr-tunnel")


def check_identity() -> None:
    assert os.getuid() != 0, "runs as root"
    effective = int(
        Path("/proc/self/status").read_text().split("CapEff:")[1].split()[0], 16
    )
    assert effective == 1 << 12, f"capabilities {effective:#x}, not CAP_NET_ADMIN alone"


def open_tun() -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(
        fd, TUNSETIFF, struct.pack("16sH", IFNAME.encode(), IFF_TUN | IFF_NO_PI)
    )
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=IFNAME)[0]
        ipr.addr("add", index=index, address="100.64.9.1", prefixlen=24)
        ipr.link("set", index=index, state="up")
    return fd


def bind_sockets(underlay: str) -> list[socket.socket]:
    Path("/proc/sys/net/ipv4/ip_local_reserved_ports").write_text("20000-29999\n")
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # A killed predecessor (the watchdog's SIGABRT, then SIGKILL) leaves its
    # socket behind: /run/hopr-tunnel is kept across restarts.
    (RUN_DIR / "probe.sock").unlink(missing_ok=True)
    control.bind(str(RUN_DIR / "probe.sock"))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((underlay, 20000))
    return [control, udp]


def refused_device(path: str) -> None:
    try:
        os.close(os.open(path, os.O_RDWR))
    except PermissionError:
        return
    raise AssertionError(f"{path} opened despite DevicePolicy=closed")


def on_reload() -> None:
    sdnotify.reloading()
    with open(RUN_DIR / "probe.reloads", "a") as log:
        log.write("SIGHUP\n")
    sdnotify.ready("probe reloaded")


async def serve() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    interval_s = sdnotify.watchdog_interval_s() or 10.0
    sdnotify.ready("probe ready")
    while not stop.is_set():
        sdnotify.watchdog()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s / 3)
    sdnotify.stopping()


def main() -> int:
    underlay, forbidden_device = sys.argv[1], sys.argv[2]
    try:
        check_identity()
        AESGCM(bytes(32)).encrypt(bytes(12), b"probe", None)
        tun_fd = open_tun()
        sockets = bind_sockets(underlay)
        refused_device(forbidden_device)
    except Exception as exc:  # report whatever the sandbox refused, then fail
        print(f"probe failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    uvloop.run(serve())
    (RUN_DIR / "probe.sock").unlink()
    for sock in sockets:
        sock.close()
    os.close(tun_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
