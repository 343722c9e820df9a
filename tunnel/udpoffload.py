"""UDP segmentation (GSO) on send and coalescing (GRO) on receive.

A run of datagrams to one 4-tuple costs one system call each way:

- Send: with UDP_SEGMENT, one `sendmsg` of a buffer of equal-size datagrams laid
  end to end (the last may be shorter) leaves as that many datagrams; the
  segment size rides per call in a cmsg (`segment_cmsg`) or is fixed per socket
  (`set_udp_segment`). At most UDP_MAX_SEGMENTS datagrams and 64 KB per call.
- Receive: with UDP_GRO on, one `recvmsg` may return several datagrams of one
  4-tuple laid end to end, and a (SOL_UDP, UDP_GRO) cmsg gives their size
  (`gro_segment_size`); `segments` cuts them apart again. Without the cmsg the
  buffer is one datagram.

Kernels without UDP_SEGMENT or UDP_GRO (before Linux 4.18 / 5.0) refuse the
option with ENOPROTOOPT; the helpers then return False and the caller sends and
receives one datagram per call.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterable

from .constants import HEADER_LEN, PAD_TO, TAG_LEN

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
UDP_MAX_SEGMENTS = 64  # Linux accepted 64 until 6.9 and 128 since: the smaller
GSO_MAX_BYTES = 65_535 - 8 - 40  # one UDP payload under an IPv6 header

GRO_CMSG_SPACE = socket.CMSG_SPACE(4)  # ancbufsize for recvmsg
_U16 = struct.Struct("=H")
_INT = struct.Struct("=i")
_REFUSALS = {errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP}

Cmsg = tuple[int, int, bytes]


def set_udp_segment(sock: socket.socket, segment_bytes: int) -> bool:
    """Make every send on sock split into datagrams of segment_bytes; 0 = off."""
    return _setsockopt(sock, UDP_SEGMENT, segment_bytes)


def segment_cmsg(segment_bytes: int) -> Cmsg:
    """Ancillary data for one sendmsg: split its buffer every segment_bytes."""
    return (SOL_UDP, UDP_SEGMENT, _U16.pack(segment_bytes))


def udp_gso_supported(sock: socket.socket) -> bool:
    """True if the kernel knows UDP_SEGMENT (probed without changing sock)."""
    return gso_refusal(sock) is None


def gso_refusal(sock: socket.socket) -> str | None:
    """None if the kernel knows UDP_SEGMENT, else its refusal, for the log."""
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError as e:
        if e.errno in _REFUSALS:
            return f"UDP_SEGMENT: {e.strerror}"
        raise
    return None


def gro_refusal(sock: socket.socket) -> str | None:
    """None once UDP_GRO is on for sock, else the kernel's refusal."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError as e:
        if e.errno in _REFUSALS:
            return f"UDP_GRO: {e.strerror}"
        raise
    return None


def enable_udp_gro(sock: socket.socket) -> bool:
    """Let recvmsg on sock return runs of coalesced datagrams."""
    return _setsockopt(sock, UDP_GRO, 1)


def gro_segment_size(ancdata: Iterable[Cmsg]) -> int | None:
    """The size of the coalesced datagrams from recvmsg's ancillary data, if any."""
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= _INT.size:
            return int(_INT.unpack_from(data)[0])
    return None


def segments(buffer: bytes | memoryview, segment_bytes: int | None) -> list[memoryview]:
    """The datagrams in one received buffer (all of it if segment_bytes is None)."""
    view = memoryview(buffer)
    if not segment_bytes or segment_bytes >= len(view):
        return [view]
    return [view[i : i + segment_bytes] for i in range(0, len(view), segment_bytes)]


def gso_runs(
    datagrams: list[bytes], max_bytes: int = GSO_MAX_BYTES
) -> list[list[bytes]]:
    """Cut datagrams into runs that one UDP_SEGMENT sendmsg each can carry.

    A run is equal-size datagrams, possibly ending in one shorter one, at most
    UDP_MAX_SEGMENTS and max_bytes long; the order is kept.
    """
    runs: list[list[bytes]] = []
    size = total = 0
    for d in datagrams:
        run = runs[-1] if runs else None
        if (
            run is None
            or len(d) > size
            or len(run[-1]) < size
            or len(run) >= UDP_MAX_SEGMENTS
            or total + len(d) > max_bytes
        ):
            runs.append([d])
            size = total = len(d)
            continue
        run.append(d)
        total += len(d)
    return runs


def segments_per_send(mtu: int) -> int:
    """How many sealed full-size packets of a tunnel with this MTU fit one GSO
    send: the most segments a TUN superpacket should carry (gso_max_segs), so
    that each is sealed and sent, and arrives by GRO, in one piece."""
    datagram = mtu + (-mtu % PAD_TO) + HEADER_LEN + TAG_LEN
    return max(1, min(UDP_MAX_SEGMENTS, GSO_MAX_BYTES // datagram))


def _setsockopt(sock: socket.socket, option: int, value: int) -> bool:
    try:
        sock.setsockopt(SOL_UDP, option, value)
    except OSError as e:
        if e.errno in _REFUSALS:
            return False
        raise
    return True
