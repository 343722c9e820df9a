"""Superpackets from a TUN device with offloads, split into wire packets.

With IFF_VNET_HDR and TUNSETOFFLOAD the kernel hands a TUN reader one large
"superpacket" per system call instead of one MTU-sized packet, each prefixed by a
virtio-net header, and accepts such superpackets on write. The protocol carries
only complete packets (PROTOCOL.md, "Data": checksums filled in, no larger than
the tunnel MTU), so the send side splits each superpacket here; the receive side
merges the segments of a TCP flow back into one superpacket (tunnel/coalesce.py)
so that one TUN write delivers many of them.

The virtio-net header (struct virtio_net_hdr, 10 bytes, host byte order: TUN is
used without TUNSETVNETLE/TUNSETVNETBE, so on a little-endian host it is LE):

    u8  flags        NEEDS_CSUM (1): the L4 checksum is partial, see below;
                     DATA_VALID (2): the checksum was already verified
    u8  gso_type     NONE 0, TCPV4 1, UDP 3 (UFO, never enabled by us), TCPV6 4,
                     UDP_L4 5 (USO); bit 0x80 (ECN) marks a TCP flow using ECN
    u16 hdr_len      a hint only: Linux fills in the linear part of its buffer,
                     which may include payload, so header lengths are read from
                     the packet itself
    u16 gso_size     payload bytes per segment (the MSS for TCP)
    u16 csum_start   offset of the L4 header from the start of the IP packet
    u16 csum_offset  offset of the checksum field inside the L4 header

NEEDS_CSUM means the checksum field holds the pseudo-header sum, folded but not
inverted; the full checksum is the inverted ones' complement sum from csum_start
to the end. Split segments each get their own IP length, IPv4 id (+1 per
segment) and header checksum, TCP sequence number and full L4 checksum; FIN and
PSH stay on the last segment, CWR on the first, as in the kernel's own GSO. UDP
(USO) segments become separate datagrams, each with its own length and checksum.

Checksums are ones' complement sums of 16-bit words (RFC 1071), which are byte
order independent: the per-segment payload sums come from one numpy reduction
over little-endian words, byte-swapped once per segment, and the share of the
headers that all segments have in common is summed once per superpacket.

"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .buffers import RunBuffers

# -- The virtio-net header ----------------------------------------------------------

VNET_HDR = struct.Struct("=BBHHHH")
VNET_HDR_LEN = VNET_HDR.size  # 10
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)

F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

MAX_SUPERPACKET = 65_535  # IPv4 total length and IPv6 payload length are u16

IPPROTO_TCP = 6
IPPROTO_UDP = 17
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH = 0x01, 0x02, 0x04, 0x08
TCP_ACK, TCP_URG, TCP_ECE, TCP_CWR = 0x10, 0x20, 0x40, 0x80
TCP_CSUM_OFFSET = 16
UDP_CSUM_OFFSET = 6
UDP_HEADER_LEN = 8

BytesLike = bytes | bytearray | memoryview


class MalformedPacket(ValueError):
    """A superpacket or header no kernel would hand us: the caller drops it."""


@dataclass(frozen=True, slots=True)
class VnetHdr:
    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def pack(self) -> bytes:
        return VNET_HDR.pack(
            self.flags, self.gso_type, self.hdr_len,
            self.gso_size, self.csum_start, self.csum_offset,
        )  # fmt: skip

    @classmethod
    def unpack(cls, data: BytesLike) -> VnetHdr:
        if len(data) < VNET_HDR_LEN:
            raise MalformedPacket("virtio-net header shorter than 10 bytes")
        return cls(*VNET_HDR.unpack_from(data))


# -- Ones' complement arithmetic ----------------------------------------------------
#
# Since 2**16 == 1 (mod 0xffff), a ones' complement sum of 16-bit words is the
# residue modulo 0xffff of any sum congruent to it, and a byte-swapped word is
# the word times 256. Sums here are plain integers congruent to the word sum; the
# checksum of a total s > 0 (every pseudo-header and IP header is) is -s % 0xffff,
# which matches the folded RFC 1071 result, 0 included.


def ones_sum(data: BytesLike) -> int:
    """The ones' complement sum of data's big-endian words (odd tail padded)."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    return int.from_bytes(data, "big") % 0xFFFF


def checksum(data: BytesLike) -> int:
    """The Internet checksum of data (RFC 1071), for data that is not all zero."""
    return -ones_sum(data) % 0xFFFF


def segment_sums(payload: memoryview, seg_len: int) -> list[int]:
    """A sum congruent to ones_sum of each seg_len slice (the last may be shorter)."""
    sums: list[int] = segment_sum_array(payload, seg_len).tolist()
    return sums


def segment_sum_array(payload: memoryview, seg_len: int) -> np.ndarray:
    """segment_sums as an int64 array, for the column arithmetic of split_tcp_rows.

    The words are read little-endian (no byte swap per word), as 32-bit words
    where seg_len allows: a 32-bit word is congruent to the sum of its two
    halves. << 8 then makes each sum congruent to the big-endian word sum."""
    n = -(-len(payload) // seg_len)
    if seg_len & 1 or n < 5:
        starts = range(0, len(payload), seg_len)
        return np.array(
            [ones_sum(payload[i : i + seg_len]) for i in starts], dtype=np.int64
        )
    cut = (n - 1) * seg_len
    wide = 4 if seg_len & 3 == 0 else 2
    words = np.frombuffer(payload, dtype=f"<u{wide}", count=cut // wide)
    sums = np.empty(n, dtype=np.uint64)
    np.add.reduce(words.reshape(n - 1, seg_len // wide), axis=1, out=sums[:-1])
    signed = sums.view(np.int64)  # at most 2**40: no sign, no float promotion
    signed[:-1] <<= 8
    signed[-1] = ones_sum(payload[cut:])
    return signed


def _pseudo_sum(packet: BytesLike, proto: int) -> int:
    """The pseudo-header's addresses and protocol; callers add the L4 length."""
    if packet[0] >> 4 == 4:
        return ones_sum(packet[12:20]) + proto
    return ones_sum(packet[8:40]) + proto


def _udp_checksum(total: int) -> int:
    # A computed zero goes out as 0xffff: zero means "no checksum" in UDP over
    # IPv4 and is not allowed over IPv6 (RFC 768; RFC 8200 section 8.1).
    return -total % 0xFFFF or 0xFFFF


# -- Splitting (TUN read -> wire packets) ---------------------------------------------


def split(vnet_hdr: BytesLike, superpacket: BytesLike, pad_to: int = 1) -> list[bytes]:
    """The complete IP packets that one TUN read (header, superpacket) stands for.

    pad_to > 1 appends zero bytes to each packet up to a multiple of it, so the
    sealer's padding (PROTOCOL.md, "Data") needs no second copy. Raises
    MalformedPacket for input no kernel would produce; the caller drops it.
    """
    hdr = VnetHdr.unpack(vnet_hdr)
    packet = memoryview(superpacket)
    kind = hdr.gso_type & ~GSO_ECN
    if kind == GSO_NONE:
        if hdr.flags & F_NEEDS_CSUM:
            return [_pad(_complete_partial(packet, hdr), pad_to)]
        return [_pad(packet, pad_to)]
    if hdr.gso_size == 0:
        raise MalformedPacket("GSO superpacket with gso_size 0")
    l4 = _l4_offset(packet, hdr)
    if kind in (GSO_TCPV4, GSO_TCPV6):
        _check_version(packet, 4 if kind == GSO_TCPV4 else 6)
        return _split_tcp(packet, l4, hdr.gso_size, pad_to)
    if kind == GSO_UDP_L4:
        return _split_udp(packet, l4, hdr.gso_size, pad_to)
    raise MalformedPacket(f"unsupported gso_type {hdr.gso_type}")


def _pad(packet: BytesLike, pad_to: int) -> bytes:
    extra = -len(packet) % pad_to
    return bytes(packet) + bytes(extra) if extra else bytes(packet)


def _complete_partial(packet: memoryview, hdr: VnetHdr) -> bytes:
    """Fill in a NEEDS_CSUM checksum; the field already holds the pseudo sum."""
    at = hdr.csum_start + hdr.csum_offset
    if at + 2 > len(packet):
        raise MalformedPacket("checksum offset beyond the packet")
    total = ones_sum(packet[hdr.csum_start :])
    is_udp = hdr.csum_offset == UDP_CSUM_OFFSET
    out = bytearray(packet)
    struct.pack_into("!H", out, at, _udp_checksum(total) if is_udp else -total % 0xFFFF)
    return bytes(out)


def _check_version(packet: memoryview, version: int) -> None:
    if packet[0] >> 4 != version:
        raise MalformedPacket(f"gso_type says IPv{version}, the packet is not")


def _l4_offset(packet: memoryview, hdr: VnetHdr) -> int:
    return _l4_at(packet, hdr.flags, hdr.csum_start)


def _l4_at(packet: memoryview, flags: int, csum_start: int) -> int:
    """Where the TCP/UDP header starts: csum_start, else after the IP header."""
    if flags & F_NEEDS_CSUM:
        l4 = csum_start
    elif len(packet) >= 20 and packet[0] >> 4 == 4:
        l4 = (packet[0] & 0x0F) * 4
    else:
        l4 = 40  # IPv6 without NEEDS_CSUM: extension headers are not walked
    if l4 < 20 or l4 + UDP_HEADER_LEN > len(packet):
        raise MalformedPacket("L4 header offset outside the packet")
    return l4


@dataclass(slots=True)
class _IpCut:
    """An IP header cut around the fields that differ between segments.

    IPv4: head (version..tos) | total length | id | mid (fragment..protocol) |
    checksum | tail (addresses, options). IPv6: head (version..flow label) |
    payload length | tail (next header, hop limit, addresses, extension headers).
    """

    v4: bool
    head: bytes
    mid: bytes
    tail: bytes
    id0: int
    base: int  # IPv4: ones' sum of the header without length, id and checksum

    @classmethod
    def of(cls, packet: memoryview, l4: int) -> _IpCut:
        if packet[0] >> 4 == 4:
            head, mid, tail = (
                bytes(packet[0:2]),
                bytes(packet[6:10]),
                bytes(packet[12:l4]),
            )
            ident = int.from_bytes(packet[4:6], "big")
            return cls(True, head, mid, tail, ident, _ipv4_shared_sum(packet, l4))
        return cls(False, bytes(packet[0:4]), b"", bytes(packet[6:l4]), 0, 0)

    def header(self, i: int, total: int) -> bytes:
        """Segment i's IP header, for a packet of total bytes."""
        if not self.v4:
            return self.head + (total - 40).to_bytes(2, "big") + self.tail
        ident = (self.id0 + i) & 0xFFFF
        csum = -(self.base + total + ident) % 0xFFFF
        return _V4.pack(self.head, total, ident, self.mid, csum) + self.tail


def _ipv4_shared_sum(packet: memoryview, l4: int) -> int:
    """Ones' sum of what every segment's IPv4 header shares: all of it but the
    total length, the id and the checksum."""
    return ones_sum(bytes(packet[0:2]) + bytes(packet[6:10]) + bytes(packet[12:l4]))


_V4 = struct.Struct("!2sHH4sH")  # head, total length, id, mid, checksum
_V6 = struct.Struct("!4sH")  # head, payload length
_UDP = struct.Struct("!4sHH")  # ports, length, checksum


def _split_tcp(packet: memoryview, l4: int, mss: int, pad_to: int) -> list[bytes]:
    """TSO: one TCP packet per mss bytes of payload.

    The loop runs once per packet on the wire, so it packs each segment's IP and
    TCP headers in one call; everything all segments share is cut and summed
    once, before it.
    """
    thl = (packet[l4 + 12] >> 4) * 4
    hlen = l4 + thl
    if thl < 20 or hlen > len(packet):
        raise MalformedPacket("TCP header outside the packet")
    payload = packet[hlen:]
    sums = segment_sums(payload, mss) if payload else [0]
    ip = _IpCut.of(packet, l4)
    # Step 1: the TCP header cut around seq, flags and checksum, and the ones'
    # sum of what all segments share of it and of the pseudo-header.
    ports, ack_off = bytes(packet[l4 : l4 + 4]), bytes(packet[l4 + 8 : l4 + 13])
    window, rest = bytes(packet[l4 + 14 : l4 + 16]), bytes(packet[l4 + 18 : hlen])
    base = ones_sum(ports + ack_off + b"\0" + window + rest) + thl
    base += _pseudo_sum(packet, IPPROTO_TCP)
    tcp_fmt = f"{len(ip.tail) + 4}sI5sB2sH{len(rest)}s"
    pack = struct.Struct(("!2sHH4sH" if ip.v4 else "!4sH") + tcp_fmt).pack
    tail, flags = ip.tail + ports, packet[l4 + 13]
    seq0 = int.from_bytes(packet[l4 + 4 : l4 + 8], "big")
    middle = flags & ~(TCP_FIN | TCP_PSH | TCP_CWR)
    v4, id0, ip_base, ip_head, ip_mid = ip.v4, ip.id0, ip.base, ip.head, ip.mid
    # Step 2: one packet per segment; CWR on the first, FIN and PSH on the last.
    last = len(sums) - 1
    out = []
    for i, psum in enumerate(sums):
        off = i * mss
        plen = mss if i < last else len(payload) - off
        f = middle | (flags & TCP_CWR if i == 0 else 0)
        f |= flags & (TCP_FIN | TCP_PSH) if i == last else 0
        seq = (seq0 + off) & 0xFFFFFFFF
        csum = -(base + plen + seq + f + psum) % 0xFFFF  # seq == hi + lo words
        total = hlen + plen
        if v4:
            ident = (id0 + i) & 0xFFFF
            ip_csum = -(ip_base + total + ident) % 0xFFFF
            hdr = pack(ip_head, total, ident, ip_mid, ip_csum,
                       tail, seq, ack_off, f, window, csum, rest)  # fmt: skip
        else:
            hdr = pack(ip_head, total - 40, tail, seq, ack_off, f, window, csum, rest)
        seg = payload[off : off + plen]
        out.append(hdr + seg if pad_to == 1 else _padded(hdr, seg, pad_to))
    return out


def _split_udp(packet: memoryview, l4: int, mss: int, pad_to: int) -> list[bytes]:
    """USO: one UDP datagram, with its own length and checksum, per mss bytes."""
    payload = packet[l4 + UDP_HEADER_LEN :]
    sums = segment_sums(payload, mss) if payload else [0]
    ip = _IpCut.of(packet, l4)
    ports = bytes(packet[l4 : l4 + 4])
    base = ones_sum(ports) + _pseudo_sum(packet, IPPROTO_UDP)
    last = len(sums) - 1
    out = []
    for i, psum in enumerate(sums):
        off = i * mss
        plen = mss if i < last else len(payload) - off
        ulen = UDP_HEADER_LEN + plen
        # The UDP length counts twice: in the header and in the pseudo-header.
        udp = _UDP.pack(ports, ulen, _udp_checksum(base + 2 * ulen + psum))
        hdr = ip.header(i, l4 + ulen) + udp
        out.append(_padded(hdr, payload[off : off + plen], pad_to))
    return out


def _padded(hdr: bytes, seg: memoryview, pad_to: int) -> bytes:
    return b"".join((hdr, seg, bytes(-(len(hdr) + len(seg)) % pad_to)))


# -- Splitting into rows (TUN read -> one array of padded wire packets) --------------


def tcp_shape(
    vnet_hdr: BytesLike, packet: memoryview
) -> tuple[int, int, int, bool] | None:
    """(l4, hlen, mss, v4) of a TSO superpacket: where its TCP header and its
    payload start, the segment size, and whether it is IPv4. None for anything
    that is not a TCP superpacket with more payload than one segment. Raises
    MalformedPacket as `split` does."""
    if len(vnet_hdr) < VNET_HDR_LEN:
        raise MalformedPacket("virtio-net header shorter than 10 bytes")
    flags_v, kind, _, mss, csum_start, _ = VNET_HDR.unpack_from(vnet_hdr)
    kind &= ~GSO_ECN
    if kind not in (GSO_TCPV4, GSO_TCPV6) or mss == 0:
        return None
    l4 = _l4_at(packet, flags_v, csum_start)
    _check_version(packet, 4 if kind == GSO_TCPV4 else 6)
    thl = (packet[l4 + 12] >> 4) * 4
    hlen = l4 + thl
    if thl < 20 or hlen > len(packet):
        raise MalformedPacket("TCP header outside the packet")
    if len(packet) - hlen <= mss:
        return None
    return l4, hlen, mss, kind == GSO_TCPV4


def split_tcp_rows(
    vnet_hdr: BytesLike,
    superpacket: BytesLike,
    pad_to: int,
    into: RunBuffers | None = None,
    shape: tuple[int, int, int, bool] | None = None,
) -> tuple[np.ndarray, list[int]] | None:
    """A TSO superpacket split as `split(..., pad_to)` does, into rows of one array.

    Returns (rows, lengths): row i holds wire packet i, zero-padded to a multiple
    of pad_to (byte for byte what `split` returns), and lengths[i] is its IP
    length; every row is as long as the longest. None for anything that is not
    a TCP superpacket with payload: the caller uses `split`. Raises
    MalformedPacket as `split` does. With `into`, the rows are its scratch
    (RunBuffers.split_rows), valid until the next split into it. `shape` is
    tcp_shape's answer for it, where the caller has it already.

    Every segment but the last carries mss bytes, and only the first and the
    last differ in flags, so the per-segment fields (IPv4 id and checksum,
    sequence number, TCP checksum) are computed as columns for the uniform case
    and the first and last rows are patched afterwards: a few array operations
    per superpacket, whatever its length.
    """
    if pad_to & 1:
        raise ValueError("split_tcp_rows needs an even pad_to: rows are 16-bit words")
    packet = memoryview(superpacket)
    if shape is None:
        shape = tcp_shape(vnet_hdr, packet)
    if shape is None:
        return None
    l4, hlen, mss, v4 = shape
    thl = hlen - l4
    payload = packet[hlen:]
    n = -(-len(payload) // mss)
    cut = (n - 1) * mss
    last_len = len(payload) - cut
    flags = packet[l4 + 13]
    seq0 = int.from_bytes(packet[l4 + 4 : l4 + 8], "big")
    middle = flags & ~(TCP_FIN | TCP_PSH | TCP_CWR)
    first_f = middle | flags & TCP_CWR
    last_f = middle | flags & (TCP_FIN | TCP_PSH)
    # What all segments share of the TCP checksum: the header without seq,
    # flags and checksum, and the pseudo-header without the length.
    ports, ack_off = bytes(packet[l4 : l4 + 4]), bytes(packet[l4 + 8 : l4 + 13])
    window, rest = bytes(packet[l4 + 14 : l4 + 16]), bytes(packet[l4 + 18 : hlen])
    base = ones_sum(ports + ack_off + b"\0" + window + rest) + thl
    base += _pseudo_sum(packet, IPPROTO_TCP)

    width = hlen + mss + (-(hlen + mss) % pad_to)
    if into is None:
        rows = np.zeros((n, width), dtype=np.uint8)
    else:  # scratch: zero what the packets do not cover
        rows = into.split_rows(n, width)
        rows[:-1, hlen + mss :] = 0
        rows[-1, hlen + last_len :] = 0
    rows[:, :hlen] = np.frombuffer(packet[:hlen], dtype=np.uint8)
    body = np.frombuffer(payload, dtype=np.uint8)
    rows[:-1, hlen : hlen + mss] = body[:cut].reshape(n - 1, mss)
    rows[-1, hlen : hlen + last_len] = body[cut:]
    words = rows.view(">u2")  # word k of a row is bytes 2k, 2k+1, big-endian
    index = _index(n)

    # Sequence numbers: l4 + 4 is a multiple of 4 (IP headers are 32-bit words).
    seq = (index * mss + seq0) & 0xFFFFFFFF
    rows.view(">u4")[:, (l4 + 4) // 4] = seq
    rows[:, l4 + 13] = middle
    rows[0, l4 + 13] = first_f
    rows[-1, l4 + 13] = last_f
    # The TCP checksum of each row: seq counts as its two words (2**16 == 1
    # mod 0xffff), the payload as its segment sum.
    psum = segment_sum_array(payload, mss)
    middle_csum = _FAR - (base + mss + middle) - (seq + psum)
    csum = words[:, (l4 + TCP_CSUM_OFFSET) // 2]
    csum[:] = middle_csum % 0xFFFF
    csum[0] = -(base + mss + first_f + seq0 + int(psum[0])) % 0xFFFF
    tail_seq = (seq0 + cut) & 0xFFFFFFFF
    csum[-1] = -(base + last_len + last_f + tail_seq + int(psum[-1])) % 0xFFFF

    total, last_total = hlen + mss, hlen + last_len
    if v4:
        ip_base = _ipv4_shared_sum(packet, l4)
        id0 = int.from_bytes(packet[4:6], "big")
        ident = (index + id0) & 0xFFFF
        words[:, 1] = total
        words[-1, 1] = last_total
        words[:, 2] = ident
        ip_csum = words[:, 5]
        ip_csum[:] = (_FAR - (ip_base + total) - ident) % 0xFFFF
        ip_csum[-1] = -(ip_base + last_total + int(ident[-1])) % 0xFFFF
    else:
        words[:, 2] = total - 40
        words[-1, 2] = last_total - 40
    return rows, [total] * (n - 1) + [last_total]


# A multiple of 0xffff far above any sum here: (_FAR - x) % 0xffff == -x % 0xffff
# with no negative numbers in the arrays.
_FAR = 0xFFFF << 40
_INDEX = np.arange(1024, dtype=np.int64)


def _index(n: int) -> np.ndarray:
    return _INDEX[:n] if n <= len(_INDEX) else np.arange(n, dtype=np.int64)
