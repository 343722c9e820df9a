"""Wire packets merged back into superpackets for one TUN write (receive side).

The TUN device takes the same virtio-net header on write as it gives on read
(tunnel/offload.py). Merged superpackets are written with NEEDS_CSUM and the
pseudo-header sum, the form the kernel's own GRO hands up; the AEAD has already
authenticated every byte, so the kernel need not verify the inner checksum again.
tunnel/runs.py reaches the same result for a whole GRO run at once, with numpy;
this module works packet by packet, for everything else.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from .offload import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_TCPV4,
    GSO_TCPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    MAX_SUPERPACKET,
    TCP_ACK,
    TCP_CSUM_OFFSET,
    TCP_CWR,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    TCP_URG,
    ZERO_VNET_HDR,
    VnetHdr,
    _pseudo_sum,
    checksum,
)

# -- Coalescing (wire packets -> TUN write) -------------------------------------------
#
# Segments of one TCP flow merge while they arrive in order and differ only where
# the kernel's segmentation would make them differ: IP length, id and checksum,
# TCP seq and checksum, PSH on the last and CWR on the first. Every segment but
# the last carries the same payload length (the gso_size). A packet of a flow
# that cannot join closes that flow's batch, so a flow's packets never overtake
# each other; packets of different flows may.
#
# This runs once per received packet, so a segment's "shape" (every header byte
# that must be equal within a batch) is one integer: the header read as a number
# with the differing fields masked out.

_CLOSING = TCP_SYN | TCP_FIN | TCP_RST | TCP_URG
_FLUSH_ALL = b""  # flow key of a packet that may be TCP but cannot be parsed
_NOT_TCP_V6 = {IPPROTO_UDP, 58, 59}  # UDP, ICMPv6, no next header


def _shape_mask(l4: int, thl: int) -> int:
    """Mask over IP + TCP header bytes: zero where segments of a batch differ."""
    mask = bytearray(b"\xff" * (l4 + thl))
    varying = [(2, 6), (10, 12)] if l4 == 20 else [(4, 6)]  # lengths, id, csum
    varying += [(l4 + 4, l4 + 8), (l4 + 16, l4 + 18)]  # TCP seq, checksum
    for start, end in varying:
        mask[start:end] = bytes(end - start)
    mask[l4 + 13] = 0xFF & ~(TCP_PSH | TCP_CWR)
    return int.from_bytes(mask, "big")


_SHAPE = {
    (l4, thl): _shape_mask(l4, thl) for l4 in (20, 40) for thl in range(20, 64, 4)
}

# (shape, seq, flags, l4, hlen, end): a TCP segment that may join a batch
_Segment = tuple[int, int, int, int, int, int]


def _parse(p: bytes) -> tuple[bytes | None, _Segment | None]:
    """(flow key, segment): key None for non-TCP, segment None if it must pass alone.

    The flow key is the addresses and ports, which sit side by side in IPv4
    without options and in IPv6 without extension headers.
    """
    n = len(p)
    if n >= 40 and p[0] == 0x45 and p[9] == IPPROTO_TCP:
        l4, key, end = 20, p[12:24], (p[2] << 8) | p[3]
        if p[6] & 0x3F or p[7]:  # a fragment
            return key, None
    elif n >= 60 and p[0] >> 4 == 6 and p[6] == IPPROTO_TCP:
        l4, key, end = 40, p[8:44], 40 + ((p[4] << 8) | p[5])
    else:
        return _other_key(p), None
    thl = (p[l4 + 12] >> 4) * 4
    hlen, flags = l4 + thl, p[l4 + 13]
    if thl < 20 or hlen >= end or end > n or flags & _CLOSING or not flags & TCP_ACK:
        return key, None  # no payload, truncated, or a flag that must travel alone
    shape = int.from_bytes(p[:hlen], "big") & _SHAPE[l4, thl]
    seq = int.from_bytes(p[l4 + 4 : l4 + 8], "big")
    return key, (shape, seq, flags, l4, hlen, end)


def _other_key(p: bytes) -> bytes | None:
    """The flow key of a TCP packet that cannot merge: IPv4 with options or IPv6
    with extension headers (unknown: _FLUSH_ALL); None for everything else."""
    if len(p) >= 20 and p[0] >> 4 == 4 and p[9] == IPPROTO_TCP:
        ihl = (p[0] & 0x0F) * 4
        return p[12:20] + p[ihl : ihl + 4]
    if len(p) >= 40 and p[0] >> 4 == 6 and p[6] not in _NOT_TCP_V6:
        return _FLUSH_ALL
    return None


class _Batch:
    """Segments of one flow to be written to the TUN device as one superpacket."""

    __slots__ = ("parts", "head", "mss", "size", "next_seq", "open")

    def __init__(self, packet: bytes, seg: _Segment) -> None:
        _, seq, flags, _, hlen, end = seg
        self.parts = [(packet, hlen, end)]  # each packet with its payload's bounds
        self.head = seg
        self.mss = end - hlen
        self.size = end
        self.next_seq = (seq + self.mss) & 0xFFFFFFFF
        self.open = not flags & TCP_PSH

    def take(self, packet: bytes, seg: _Segment) -> bool:
        """Append the segment if it continues this batch; a short one closes it."""
        shape, seq, flags, _, hlen, end = seg
        plen = end - hlen
        if (
            seq != self.next_seq
            or shape != self.head[0]
            or flags & TCP_CWR
            or plen > self.mss
            or self.size + plen > MAX_SUPERPACKET
        ):
            return False
        self.parts.append((packet, hlen, end))
        self.size += plen
        self.next_seq = (seq + plen) & 0xFFFFFFFF
        self.open = plen == self.mss and not flags & TCP_PSH
        return True

    def written(self) -> tuple[bytes, bytes]:
        """(virtio-net header, packet) for one TUN write."""
        _, _, flags, l4, hlen, end = self.head
        first = self.parts[0][0]
        if len(self.parts) == 1:
            return ZERO_VNET_HDR, bytes(first[:end])
        hdr = bytearray(first[:hlen])
        v4 = l4 == 20
        if v4:
            struct.pack_into("!H", hdr, 2, self.size)
            struct.pack_into("!H", hdr, 10, 0)
            struct.pack_into("!H", hdr, 10, checksum(hdr[:20]))
        else:
            struct.pack_into("!H", hdr, 4, self.size - 40)
        hdr[l4 + 13] |= self.parts[-1][0][l4 + 13] & TCP_PSH
        # NEEDS_CSUM: the field holds the pseudo-header sum, not inverted.
        partial = (_pseudo_sum(hdr, IPPROTO_TCP) + self.size - l4) % 0xFFFF
        struct.pack_into("!H", hdr, l4 + TCP_CSUM_OFFSET, partial)
        gso = (GSO_TCPV4 if v4 else GSO_TCPV6) | (GSO_ECN if flags & TCP_CWR else 0)
        vnet = VnetHdr(F_NEEDS_CSUM, gso, hlen, self.mss, l4, TCP_CSUM_OFFSET)
        payloads = [memoryview(p)[start:stop] for p, start, stop in self.parts]
        return vnet.pack(), b"".join([hdr, *payloads])


def coalesce(packets: Iterable[bytes]) -> list[tuple[bytes, bytes]]:
    """(virtio-net header, packet) pairs to write to a TUN device with offloads.

    In-order TCP segments of one flow become one GSO superpacket of at most
    MAX_SUPERPACKET bytes; every other packet is passed on alone with a zero
    header. UDP is never merged: a receiver could not deliver it as one datagram.
    Bytes after a packet's own IP length (padding) are left out of superpackets.
    """
    out: list[_Batch | bytes] = []
    batches: dict[bytes, _Batch] = {}
    for packet in packets:
        key, seg = _parse(packet)
        if seg is None:
            _close(batches, key)
            out.append(packet)
            continue
        assert key is not None  # a segment always has its flow
        batch = batches.get(key)
        if batch is not None and batch.take(packet, seg):
            if not batch.open:
                del batches[key]
            continue
        batch = _Batch(packet, seg)
        out.append(batch)
        if batch.open:
            batches[key] = batch
        else:
            batches.pop(key, None)
    return [x.written() if isinstance(x, _Batch) else (ZERO_VNET_HDR, x) for x in out]


def _close(batches: dict[bytes, _Batch], key: bytes | None) -> None:
    """A packet that cannot join closes its flow's batch (or all, if unknown)."""
    if key == _FLUSH_ALL:
        batches.clear()
    elif key is not None:
        batches.pop(key, None)
