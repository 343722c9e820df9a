"""The TUN device: a file descriptor that carries inner IP packets.

Opening /dev/net/tun and naming it with TUNSETIFF gives a layer-3 device; with
IFF_NO_PI each read returns exactly one IP packet and each write takes one, with
no 4-byte packet-information prefix. The descriptor is non-blocking so the I/O
shell drains it until EAGAIN on each wakeup.

Room for offloads: `open_tun(..., vnet_hdr=True)` adds IFF_VNET_HDR, after which
every packet carries a virtio-net header (see tunnel/offload.py) and the kernel
may hand over TCP superpackets once TUNSETOFFLOAD enables them. The plain path
leaves it off. The device is not persistent: closing the descriptor (or the
process dying) removes the interface together with its addresses and routes.
"""

from __future__ import annotations

import fcntl
import os
import struct
from dataclasses import dataclass

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA  # _IOW('T', 202, int)
TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int)
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFNAMSIZ = 16
IFREQ = struct.Struct(f"{IFNAMSIZ}sH22x")  # struct ifreq: name, flags, padding


@dataclass(slots=True)
class Tun:
    """An open TUN device; `fd` is non-blocking."""

    fd: int
    name: str
    vnet_hdr: bool

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_tun(name: str, vnet_hdr: bool = False) -> Tun:
    """Create (or attach to) the TUN device `name`; OSError as the kernel says.

    EPERM means the caller lacks CAP_NET_ADMIN; EBUSY that another process holds
    a device of that name.
    """
    flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
    fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        request = IFREQ.pack(name.encode(), flags)
        answer = fcntl.ioctl(fd, TUNSETIFF, request)
    except BaseException:
        os.close(fd)
        raise
    given = IFREQ.unpack(answer)[0].rstrip(b"\0").decode()
    return Tun(fd, given, vnet_hdr)


def set_offload(tun: Tun, flags: int) -> None:
    """TUNSETOFFLOAD: which offloads (TUN_F_CSUM, TUN_F_TSO4, ...) we accept.

    Only meaningful on a device opened with vnet_hdr=True.
    """
    fcntl.ioctl(tun.fd, TUNSETOFFLOAD, flags)


def open_tun_offloaded(name: str) -> tuple[Tun, int, str | None]:
    """The TUN device with superpackets where the kernel allows them.

    Returns (tun, TUN_F_* flags taken, why not): with flags set the device has a
    virtio-net header and TSO (and USO) on; otherwise the device is reopened
    plain, before anyone configured it, and the reason says what the kernel
    refused. A non-persistent device vanishes with its last descriptor, so the
    reopen leaves nothing behind.
    """
    from .tunoffload import try_offloads

    tun = open_tun(name, vnet_hdr=True)
    try:
        flags, why_not = try_offloads(tun.fd)
    except BaseException:
        tun.close()
        raise
    if flags:
        return tun, flags, None
    tun.close()
    return open_tun(name), 0, why_not
