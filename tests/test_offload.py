"""Superpackets split into wire packets and merged back (tunnel/offload.py).

Packets are built with scapy and checked with scapy: each segment must parse, its
checksums must equal what scapy computes afresh, and the segments together must
carry the superpacket's payload byte for byte, as the kernel's own GSO would.
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet, Raw

from tunnel import offload
from tunnel.buffers import RunBuffers
from tunnel.coalesce import coalesce
from tunnel.offload import (
    F_NEEDS_CSUM,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    ZERO_VNET_HDR,
    MalformedPacket,
    VnetHdr,
    split,
)

A4, B4 = "100.64.0.1", "100.64.0.2"
A6, B6 = "fd00:64::1", "fd00:64::2"
TS_OPTS = [("NOP", None), ("NOP", None), ("Timestamp", (123, 456))]


def rfc1071_sum(data: bytes) -> int:
    """Reference ones' complement sum, word by word, folded."""
    data += b"\0" * (len(data) & 1)
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def pseudo_header_sum(pkt: Packet, l4_len: int, proto: int) -> int:
    ip = pkt[IP] if IP in pkt else pkt[IPv6]
    from ipaddress import ip_address

    addrs = ip_address(ip.src).packed + ip_address(ip.dst).packed
    return rfc1071_sum(
        addrs + proto.to_bytes(2, "big") + l4_len.to_bytes(4, "big")[-4:]
    )


def as_from_tun(pkt: Packet, gso_type: int, mss: int) -> tuple[bytes, bytes]:
    """(virtio-net header, superpacket) as a TUN read hands them over: NEEDS_CSUM,
    the L4 checksum field holding the pseudo-header sum."""
    raw = bytearray(bytes(pkt))
    l4 = 20 if IP in pkt else 40
    is_tcp = TCP in pkt
    at = l4 + (16 if is_tcp else 6)
    proto = 6 if is_tcp else 17
    raw[at : at + 2] = pseudo_header_sum(pkt, len(raw) - l4, proto).to_bytes(2, "big")
    hdr = VnetHdr(F_NEEDS_CSUM, gso_type, 0, mss, l4, at - l4)
    return hdr.pack(), bytes(raw)


def tcp4(
    payload: bytes, flags: str = "A", seq: int = 1000, sport: int = 40000
) -> Packet:
    tcp = TCP(sport=sport, dport=5201, seq=seq, ack=9, flags=flags, options=TS_OPTS)
    return IP(src=A4, dst=B4, id=77, flags="DF") / tcp / Raw(payload)


def tcp6(payload: bytes, flags: str = "A", seq: int = 1000) -> Packet:
    return (
        IPv6(src=A6, dst=B6)
        / TCP(sport=40000, dport=5201, seq=seq, ack=9, flags=flags, options=TS_OPTS)
        / Raw(payload)
    )


def udp(payload: bytes, v6: bool = False) -> Packet:
    ip = IPv6(src=A6, dst=B6) if v6 else IP(src=A4, dst=B4, id=5)
    return ip / UDP(sport=443, dport=50000) / Raw(payload)


def parse(segment: bytes) -> Packet:
    return IP(segment) if segment[0] >> 4 == 4 else IPv6(segment)


def checksums_verify(segment: bytes) -> bool:
    """True if scapy, recomputing every checksum afresh, gets the same fields."""
    pkt = parse(segment)
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    fields = [l4.chksum] + ([pkt[IP].chksum] if IP in pkt else [])
    del l4.chksum
    if IP in pkt:
        del pkt[IP].chksum
    again = parse(bytes(pkt))
    l4_again = again[TCP] if TCP in again else again[UDP]
    return fields == [l4_again.chksum] + ([again[IP].chksum] if IP in again else [])


def payloads(segments: list[bytes]) -> bytes:
    out = b""
    for s in segments:
        pkt = parse(s)
        out += bytes(pkt[TCP].payload if TCP in pkt else pkt[UDP].payload)
    return out


# -- TSO over IPv4 --------------------------------------------------------------------


@pytest.fixture(scope="module")
def data60k() -> bytes:
    return os.urandom(60_000)


def test_tso4_every_segment_parses_with_checksums_scapy_agrees_with(
    data60k: bytes,
) -> None:
    segments = split(*as_from_tun(tcp4(data60k, "PA"), GSO_TCPV4, 1448))
    assert len(segments) == -(-60_000 // 1448)
    assert all(checksums_verify(s) for s in segments)


def test_tso4_segments_carry_the_payload_byte_exact(data60k: bytes) -> None:
    segments = split(*as_from_tun(tcp4(data60k), GSO_TCPV4, 1448))
    assert payloads(segments) == data60k


def test_tso4_segments_have_mss_payload_and_matching_ip_length(data60k: bytes) -> None:
    segments = split(*as_from_tun(tcp4(data60k), GSO_TCPV4, 1448))
    sizes = [len(parse(s)[TCP].payload) for s in segments]
    assert sizes[:-1] == [1448] * (len(segments) - 1)
    assert all(parse(s)[IP].len == len(s) for s in segments)


def test_tso4_sequence_numbers_advance_by_segment_payload(data60k: bytes) -> None:
    segments = split(*as_from_tun(tcp4(data60k, seq=5000), GSO_TCPV4, 1448))
    assert [parse(s)[TCP].seq for s in segments] == [
        5000 + i * 1448 for i in range(len(segments))
    ]


def test_tso4_sequence_numbers_wrap_around_2_to_32() -> None:
    seq = 2**32 - 2000
    segments = split(*as_from_tun(tcp4(os.urandom(5000), seq=seq), GSO_TCPV4, 1448))
    assert [parse(s)[TCP].seq for s in segments] == [
        (seq + i * 1448) % 2**32 for i in range(4)
    ]
    assert all(checksums_verify(s) for s in segments)


def test_tso4_ip_id_increments_per_segment(data60k: bytes) -> None:
    segments = split(*as_from_tun(tcp4(data60k), GSO_TCPV4, 1448))
    assert [parse(s)[IP].id for s in segments] == [77 + i for i in range(len(segments))]


def test_fin_and_psh_only_on_the_last_segment() -> None:
    segments = split(*as_from_tun(tcp4(os.urandom(5000), "FPA"), GSO_TCPV4, 1448))
    flags = [str(parse(s)[TCP].flags) for s in segments]
    assert flags == ["A", "A", "A", "FPA"]


def test_cwr_only_on_the_first_segment() -> None:
    pkt = tcp4(os.urandom(5000), "PAEC")
    segments = split(*as_from_tun(pkt, GSO_TCPV4 | offload.GSO_ECN, 1448))
    flags = [str(parse(s)[TCP].flags) for s in segments]
    assert flags == ["AEC", "AE", "AE", "PAE"]


def test_tcp_options_are_copied_to_every_segment(data60k: bytes) -> None:
    segments = split(*as_from_tun(tcp4(data60k), GSO_TCPV4, 1448))
    assert all(
        parse(s)[TCP].options == parse(segments[0])[TCP].options for s in segments
    )
    assert dict(parse(segments[-1])[TCP].options)["Timestamp"] == (123, 456)


# -- TSO over IPv6 --------------------------------------------------------------------


def test_tso6_segments_verify_and_reassemble(data60k: bytes) -> None:
    segments = split(*as_from_tun(tcp6(data60k, "PA"), GSO_TCPV6, 1428))
    assert all(checksums_verify(s) for s in segments)
    assert payloads(segments) == data60k
    assert all(parse(s)[IPv6].plen == len(s) - 40 for s in segments)
    assert str(parse(segments[-1])[TCP].flags) == "PA"


def test_gso_type_that_contradicts_the_ip_version_is_malformed() -> None:
    hdr, packet = as_from_tun(tcp6(b"x" * 3000), GSO_TCPV6, 1000)
    wrong = VnetHdr(F_NEEDS_CSUM, GSO_TCPV4, 0, 1000, 40, 16).pack()
    with pytest.raises(MalformedPacket):
        split(wrong, packet)


# -- UDP segmentation offload ---------------------------------------------------------


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_uso_segments_are_separate_datagrams_with_own_length_and_checksum(
    v6: bool,
) -> None:
    data = os.urandom(14_001)
    segments = split(*as_from_tun(udp(data, v6), GSO_UDP_L4, 1400))
    assert len(segments) == 11
    assert all(checksums_verify(s) for s in segments)
    assert [parse(s)[UDP].len for s in segments] == [1408] * 10 + [9]
    assert payloads(segments) == data


def test_uso4_ip_ids_increment() -> None:
    segments = split(*as_from_tun(udp(os.urandom(4200)), GSO_UDP_L4, 1400))
    assert [parse(s)[IP].id for s in segments] == [5, 6, 7]


# -- Single packets -------------------------------------------------------------------


@pytest.mark.parametrize(
    "pkt", [tcp4(b"hello"), tcp6(b"hello"), udp(b"hi"), udp(b"hi", v6=True)],
    ids=["tcp4", "tcp6", "udp4", "udp6"],
)  # fmt: skip
def test_needs_csum_packet_gets_its_full_checksum(pkt: Packet) -> None:
    (segment,) = split(*as_from_tun(pkt, offload.GSO_NONE, 0))
    assert checksums_verify(segment)
    assert payloads([segment]) == bytes(pkt[Raw])


def test_packet_without_offload_passes_unchanged() -> None:
    raw = bytes(tcp4(b"plain"))
    assert split(ZERO_VNET_HDR, raw) == [raw]


def test_pad_to_pads_each_segment_with_zeros_to_a_multiple() -> None:
    data = os.urandom(5000)
    segments = split(*as_from_tun(tcp4(data), GSO_TCPV4, 1448), pad_to=16)
    assert all(len(s) % 16 == 0 for s in segments)
    assert all(
        s[parse(s)[IP].len :] == bytes(len(s) - parse(s)[IP].len) for s in segments
    )
    assert payloads([s[: parse(s)[IP].len] for s in segments]) == data


@pytest.mark.parametrize(
    "hdr",
    [
        VnetHdr(F_NEEDS_CSUM, GSO_TCPV4, 0, 0, 20, 16),  # gso_size 0
        VnetHdr(F_NEEDS_CSUM, offload.GSO_UDP, 0, 1000, 20, 6),  # UFO, never enabled
        VnetHdr(F_NEEDS_CSUM, GSO_TCPV4, 0, 1000, 9000, 16),  # L4 beyond the end
        VnetHdr(F_NEEDS_CSUM, offload.GSO_NONE, 0, 0, 20, 9000),  # field beyond
    ],
    ids=["gso_size-0", "ufo", "l4-outside", "csum-outside"],
)
def test_input_no_kernel_would_produce_is_malformed(hdr: VnetHdr) -> None:
    with pytest.raises(MalformedPacket):
        split(hdr.pack(), bytes(tcp4(b"y" * 3000)))


def test_short_virtio_header_is_malformed() -> None:
    with pytest.raises(MalformedPacket):
        split(b"\0" * 4, bytes(tcp4(b"y")))


# -- Coalescing -----------------------------------------------------------------------


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_coalesce_of_split_is_one_superpacket_that_splits_back_identically(
    v6: bool, data60k: bytes
) -> None:
    pkt, gso = (
        (tcp6(data60k, "PA"), GSO_TCPV6) if v6 else (tcp4(data60k, "PA"), GSO_TCPV4)
    )
    segments = split(*as_from_tun(pkt, gso, 1448))
    (merged,) = coalesce(segments)
    assert split(*merged) == segments


def test_coalesced_header_is_gso_with_the_pseudo_header_sum_as_kernel_expects(
    data60k: bytes,
) -> None:
    ((hdr, packet),) = coalesce(split(*as_from_tun(tcp4(data60k), GSO_TCPV4, 1448)))
    vnet = VnetHdr.unpack(hdr)
    pkt = IP(packet)
    hlen = 20 + len(bytes(pkt[TCP])) - len(data60k)
    assert vnet == VnetHdr(F_NEEDS_CSUM, GSO_TCPV4, hlen, 1448, 20, 16)
    assert pkt.len == len(packet)
    expected = pseudo_header_sum(pkt, len(packet) - 20, 6)
    assert pkt[TCP].chksum % 0xFFFF == expected % 0xFFFF
    assert bytes(pkt[TCP].payload) == data60k


def test_coalesced_superpacket_has_a_valid_ip_header_checksum(data60k: bytes) -> None:
    ((_, packet),) = coalesce(split(*as_from_tun(tcp4(data60k), GSO_TCPV4, 1448)))
    assert rfc1071_sum(packet[:20]) == 0xFFFF


def test_udp_datagrams_are_never_merged() -> None:
    segments = split(*as_from_tun(udp(os.urandom(14_000)), GSO_UDP_L4, 1400))
    assert coalesce(segments) == [(ZERO_VNET_HDR, s) for s in segments]


def test_superpackets_stay_within_64k() -> None:
    data = os.urandom(200_000)
    segments = [
        bytes(tcp4(data[i : i + 1400], seq=1000 + i)) for i in range(0, len(data), 1400)
    ]
    merged = coalesce(segments)
    assert all(len(packet) <= 65_535 for _, packet in merged)
    per_superpacket = (65_535 - 52) // 1400  # 52: IPv4 + TCP with timestamps
    assert len(merged) == -(-len(segments) // per_superpacket)
    assert b"".join(payloads(split(*m)) for m in merged) == data


def test_a_gap_in_sequence_numbers_starts_a_new_superpacket() -> None:
    first = [bytes(tcp4(b"a" * 1000, seq=1000 + i * 1000)) for i in range(3)]
    after_gap = [bytes(tcp4(b"b" * 1000, seq=9000 + i * 1000)) for i in range(3)]
    merged = coalesce(first + after_gap)
    assert [IP(p)[TCP].seq for _, p in merged] == [1000, 9000]


def test_a_short_segment_ends_its_superpacket() -> None:
    sizes = [1000, 1000, 500, 1000, 1000]
    seqs = [1000, 2000, 3000, 3500, 4500]
    packets = [bytes(tcp4(b"c" * n, seq=s)) for n, s in zip(sizes, seqs, strict=True)]
    merged = coalesce(packets)
    assert [len(payloads(split(*m))) for m in merged] == [2500, 2000]


@pytest.mark.parametrize("flags", ["S", "SA", "FA", "RA", "UA"])
def test_segments_with_syn_fin_rst_or_urg_pass_alone(flags: str) -> None:
    packets = [bytes(tcp4(b"d" * 100, seq=1000 + i * 100)) for i in range(3)]
    odd = bytes(tcp4(b"d" * 100, flags, seq=1300))
    tail = [bytes(tcp4(b"d" * 100, seq=1400 + i * 100)) for i in range(2)]
    merged = coalesce([*packets, odd, *tail])
    assert (ZERO_VNET_HDR, odd) in merged
    assert [IP(p)[TCP].seq for _, p in merged] == [1000, 1300, 1400]


def test_pure_acks_pass_alone_and_end_the_flows_superpacket() -> None:
    data = [bytes(tcp4(b"e" * 100, seq=1000 + i * 100)) for i in range(2)]
    ack = bytes(tcp4(b"", seq=1200))
    merged = coalesce([*data, ack, bytes(tcp4(b"e" * 100, seq=1200))])
    assert [len(IP(p)[TCP].payload) for _, p in merged] == [200, 0, 100]


def test_interleaved_flows_merge_each_in_its_own_order() -> None:
    def flow(port: int, i: int) -> bytes:
        return bytes(tcp4(bytes([port % 256]) * 1000, seq=i * 1000, sport=port))

    packets = [flow(port, i) for i in range(4) for port in (1111, 2222)]
    merged = coalesce(packets)
    assert [(IP(p)[TCP].sport, IP(p)[TCP].seq) for _, p in merged] == [
        (1111, 0),
        (2222, 0),
    ]
    assert all(len(split(*m)) == 4 for m in merged)


def test_segments_with_different_acks_are_not_merged() -> None:
    one = bytes(tcp4(b"f" * 100, seq=1000))
    other = IP(bytes(tcp4(b"f" * 100, seq=1100)))
    other[TCP].ack = 10
    del other[TCP].chksum
    assert len(coalesce([one, bytes(other)])) == 2


def test_a_single_segment_passes_unchanged_with_a_zero_header() -> None:
    raw = bytes(tcp4(b"g" * 100))
    assert coalesce([raw]) == [(ZERO_VNET_HDR, raw)]


def test_padding_after_the_ip_packet_is_not_merged_into_the_payload() -> None:
    packets = [
        bytes(tcp4(b"h" * 100, seq=1000 + i * 100)) + bytes(12) for i in range(3)
    ]
    ((_, merged),) = coalesce(packets)
    assert bytes(IP(merged)[TCP].payload) == b"h" * 300


# -- Properties -----------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=64_000), v6=st.booleans(), data=st.data()
)
def test_any_superpacket_splits_into_valid_segments_and_merges_back(
    size: int, v6: bool, data: st.DataObject
) -> None:
    # At most 100 segments per example keeps the scapy checks quick.
    mss = data.draw(st.integers(min_value=max(1, -(-size // 100)), max_value=9000))
    payload = os.urandom(size)
    pkt = tcp6(payload, "PA") if v6 else tcp4(payload, "PA")
    segments = split(*as_from_tun(pkt, GSO_TCPV6 if v6 else GSO_TCPV4, mss))
    assert len(segments) == -(-size // mss)
    assert all(checksums_verify(s) for s in segments)
    assert payloads(segments) == payload
    assert [s for m in coalesce(segments) for s in split(*m)] == segments


@settings(max_examples=30, deadline=None)
@given(size=st.integers(min_value=1, max_value=30_000), data=st.data())
def test_any_uso_superpacket_splits_into_valid_datagrams(
    size: int, data: st.DataObject
) -> None:
    mss = data.draw(st.integers(min_value=max(1, -(-size // 100)), max_value=4000))
    payload = os.urandom(size)
    segments = split(*as_from_tun(udp(payload), GSO_UDP_L4, mss))
    assert all(checksums_verify(s) for s in segments)
    assert payloads(segments) == payload
    assert coalesce(segments) == [(ZERO_VNET_HDR, s) for s in segments]


@settings(max_examples=150, deadline=None)
@given(
    st.booleans(),
    st.integers(2, 46),
    st.sampled_from([1, 88, 536, 1348, 1368, 1400]),
    st.integers(0, 255),
    st.booleans(),
    st.data(),
)
def test_split_into_rows_is_split_byte_for_byte(
    v6: bool, segments: int, mss: int, flags: int, timestamps: bool, data: st.DataObject
) -> None:
    last = data.draw(st.integers(1, mss))
    payload = bytes(range(256)) * (((segments - 1) * mss + last) // 256 + 1)
    payload = payload[: (segments - 1) * mss + last]
    options = bytes([1, 1, 8, 10]) + bytes(range(8)) if timestamps else b""
    thl = 20 + len(options)
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 0xFFFFFF00, 1, (thl // 4) << 4,
                      flags | offload.TCP_ACK, 512, 0, 0) + options  # fmt: skip
    if v6:
        ip = struct.pack("!IHBB16s16s", 0x60000000, thl + len(payload), 6, 64,
                         bytes(15) + b"\1", bytes(15) + b"\2")  # fmt: skip
        l4, kind = 40, offload.GSO_TCPV6
    else:
        addrs = bytes([100, 64, 0, 1, 100, 64, 0, 2])
        ip = struct.pack("!BBHHHBBH8s", 0x45, 0, 20 + thl + len(payload), 0xFFFE,
                         0x4000, 64, 6, 0, addrs)  # fmt: skip
        l4, kind = 20, offload.GSO_TCPV4
    vnet = offload.VnetHdr(offload.F_NEEDS_CSUM, kind, l4 + thl, mss, l4, 16).pack()
    packet = ip + tcp + payload
    want = offload.split(vnet, packet, 16)
    found = offload.split_tcp_rows(vnet, packet, 16)
    assert found is not None
    rows, lengths = found
    scratch = RunBuffers()
    scratch.split_rows(1, len(scratch.split))[:] = 0xA5  # what a last split left
    reused = offload.split_tcp_rows(vnet, packet, 16, scratch)
    assert reused is not None
    assert reused[1] == lengths and reused[0].tobytes() == rows.tobytes()
    assert len(rows) == len(want) == len(lengths)
    for row, length, packet_i in zip(rows, lengths, want, strict=True):
        assert row[: len(packet_i)].tobytes() == packet_i
        assert not row[len(packet_i) :].any()
        own = (
            40 + int.from_bytes(packet_i[4:6], "big")
            if v6
            else int.from_bytes(packet_i[2:4], "big")
        )
        assert length == own
