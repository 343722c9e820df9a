"""Asking the kernel for TCP/UDP superpackets on a TUN device.

A TUN device opened with IFF_VNET_HDR (tunnel/tun.py, `open_tun(vnet_hdr=True)`)
prefixes every packet with a virtio-net header (tunnel/offload.py). Two ioctls
then turn on the fast path:

- TUNSETVNETHDRSZ fixes the header at 10 bytes (struct virtio_net_hdr; the
  12-byte variant adds a num_buffers field TUN has no use for).
- TUNSETOFFLOAD names the offloads we can take: TUN_F_CSUM (partial checksums),
  TUN_F_TSO4/TSO6/TSO_ECN (TCP superpackets) and, where the kernel knows them
  (Linux 6.2 and later), TUN_F_USO4/USO6 (UDP superpackets). The kernel then
  advertises TSO/GSO on the device, so the local stack hands over up to 64 KB at
  a time instead of one MTU-sized packet, and accepts such superpackets on
  write.

The kernel refuses flags it does not know with EINVAL, so USO is asked for first
and dropped on refusal. If even the TCP set is refused, or the device has no
virtio-net header, `enable_offloads` returns False and the caller stays on the
plain path: one packet per read and write, never a header.
"""

from __future__ import annotations

import errno
import fcntl
import struct

TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int)
TUNGETIFF = 0x800454D2  # _IOR('T', 210, unsigned int)
TUNSETVNETHDRSZ = 0x400454D8  # _IOW('T', 216, int)
TUNGETVNETHDRSZ = 0x800454D7  # _IOR('T', 215, int)
IFF_VNET_HDR = 0x4000

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

TCP_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
UDP_OFFLOADS = TUN_F_USO4 | TUN_F_USO6
VNET_HDR_LEN = 10  # struct virtio_net_hdr, tunnel/offload.py

_IFREQ = struct.Struct("16sH22x")
_INT = struct.Struct("i")
_REFUSALS = {errno.EINVAL, errno.ENOTTY, errno.EOPNOTSUPP}


def enable_offloads(fd: int) -> bool:
    """Turn on checksum, TSO (and USO where known) offloads on a TUN fd.

    True when the kernel took at least the TCP set: reads may then return
    superpackets, each with a 10-byte virtio-net header, and writes must carry
    one. False when the device has no IFF_VNET_HDR or the kernel refuses; the
    device is then left as it was.
    """
    return enabled_offloads(fd) != 0


def enabled_offloads(fd: int) -> int:
    """enable_offloads, returning the TUN_F_* flags the kernel accepted (or 0)."""
    return try_offloads(fd)[0]


def try_offloads(fd: int) -> tuple[int, str | None]:
    """(TUN_F_* flags the kernel accepted, why none were) for the agent's log.

    The reason names the refused interface and the kernel's words, e.g.
    "TUNSETOFFLOAD: Invalid argument"; it is None when the TCP set was taken.
    """
    if not _has_vnet_hdr(fd):
        return 0, "the device has no IFF_VNET_HDR"
    refused = _refusal(fd, TUNSETVNETHDRSZ, _INT.pack(VNET_HDR_LEN))
    if refused is not None:
        return 0, f"TUNSETVNETHDRSZ: {refused.strerror}"
    for flags in (TCP_OFFLOADS | UDP_OFFLOADS, TCP_OFFLOADS):
        refused = _refusal(fd, TUNSETOFFLOAD, flags)
        if refused is None:
            return flags, None
    assert refused is not None
    return 0, f"TUNSETOFFLOAD: {refused.strerror}"


def disable_offloads(fd: int) -> None:
    """Back to one MTU-sized packet per read; the header stays on the fd."""
    _set_offload(fd, 0)


def vnet_hdr_len(fd: int) -> int:
    """The virtio-net header length the kernel uses on this fd."""
    answer = fcntl.ioctl(fd, TUNGETVNETHDRSZ, _INT.pack(0))
    return int(_INT.unpack(answer)[0])


def _has_vnet_hdr(fd: int) -> bool:
    answer = fcntl.ioctl(fd, TUNGETIFF, _IFREQ.pack(b"", 0))
    return bool(_IFREQ.unpack(answer)[1] & IFF_VNET_HDR)


def _set_offload(fd: int, flags: int) -> bool:
    return _refusal(fd, TUNSETOFFLOAD, flags) is None


def _refusal(fd: int, request: int, arg: int | bytes) -> OSError | None:
    """The kernel's refusal of an ioctl (an option it does not know), or None."""
    try:
        fcntl.ioctl(fd, request, arg)
    except OSError as e:
        if e.errno in _REFUSALS:
            return e
        raise
    return None
