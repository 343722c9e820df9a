"""A fixture that runs one test inside a fresh, anonymous network namespace.

    host netns (untouched)
      `-- this test process, between setup and teardown:
            anonymous netns with only `lo` (up), made by unshare(CLONE_NEWNET)

The test's own thread moves into the new namespace and back afterwards (setns),
so sockets, TUN devices and netlink requests it makes never touch the host. The
namespace has no name and vanishes with its last socket: nothing to clean up by
name, even after a crash. Threads started inside it (the netlink worker) stay in
it. Needs root (CAP_SYS_ADMIN); the tests using it skip otherwise.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Iterator

import pytest

CLONE_NEWNET = 0x40000000


def _libc_call(name: str, *args: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def netns_available() -> str | None:
    """Why the fixture cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root for unshare(CLONE_NEWNET)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


@pytest.fixture
def private_netns() -> Iterator[None]:
    reason = netns_available()
    if reason is not None:
        pytest.skip(reason)
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _libc_call("unshare", CLONE_NEWNET)
        try:
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            yield
        finally:
            _libc_call("setns", home, CLONE_NEWNET)
    finally:
        os.close(home)
