"""Cryptokey routing: the longest allowed network holding an address names its peer."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

from tunnel.allowedips import AllowedIPs, Network


class Peer:
    """A stand-in for the data plane's peer: compared by identity, as there."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Peer({self.name})"


def addr(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def icmp4(src: str, dst: str) -> bytes:
    return bytes(IP(src=src, dst=dst) / ICMP())


def icmp6(src: str, dst: str) -> bytes:
    return bytes(IPv6(src=src, dst=dst) / ICMPv6EchoRequest())


@pytest.fixture
def peers() -> tuple[Peer, Peer, Peer]:
    return Peer("a"), Peer("b"), Peer("c")


def test_empty_table_has_no_peer_for_any_address() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    assert table.lookup(addr("100.64.0.1")) is None
    assert table.lookup(addr("fd00::1")) is None


def test_longest_prefix_wins(peers: tuple[Peer, Peer, Peer]) -> None:
    a, b, c = peers
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert("100.64.0.0/10", a)
    table.insert("100.64.1.0/24", b)
    table.insert("100.64.1.7/32", c)
    assert table.lookup(addr("100.64.1.7")) is c
    assert table.lookup(addr("100.64.1.8")) is b
    assert table.lookup(addr("100.65.0.1")) is a
    assert table.lookup(addr("100.128.0.1")) is None


def test_longest_prefix_wins_whatever_the_insertion_order(
    peers: tuple[Peer, Peer, Peer],
) -> None:
    a, b, _ = peers
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert("fd00:1::/64", b)
    table.insert("fd00::/8", a)
    assert table.lookup(addr("fd00:1::5")) is b
    assert table.lookup(addr("fd00:2::5")) is a


def test_default_route_catches_every_address(peers: tuple[Peer, Peer, Peer]) -> None:
    a, b, _ = peers
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert("0.0.0.0/0", a)
    table.insert("::/0", b)
    assert table.lookup(addr("198.18.0.1")) is a
    assert table.lookup(addr("255.255.255.255")) is a
    assert table.lookup(addr("2001:db8::1")) is b


def test_ipv4_and_ipv6_tables_are_separate(peers: tuple[Peer, Peer, Peer]) -> None:
    a, _, _ = peers
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert("0.0.0.0/0", a)
    # ::/96 holds the IPv6 addresses whose low 32 bits look like any IPv4 one.
    assert table.lookup(addr("::100.64.0.1")) is None
    assert table.lookup(addr("::ffff:100.64.0.1")) is None


def test_inserting_a_present_network_moves_it_to_the_new_peer(
    peers: tuple[Peer, Peer, Peer],
) -> None:
    a, b, _ = peers
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert("100.64.0.0/24", a)
    table.insert("100.64.0.0/24", b)
    assert table.lookup(addr("100.64.0.9")) is b
    assert table.entries(a) == []


def test_host_bits_of_a_string_network_are_cleared(
    peers: tuple[Peer, Peer, Peer],
) -> None:
    a, _, _ = peers
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert("100.64.0.77/24", a)
    assert table.entries(a) == [ipaddress.ip_network("100.64.0.0/24")]


def test_remove_drops_every_network_of_that_peer_only(
    peers: tuple[Peer, Peer, Peer],
) -> None:
    a, b, _ = peers
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert("100.64.0.0/24", a)
    table.insert("fd00::/64", a)
    table.insert("100.64.0.0/16", b)
    table.remove(a)
    assert table.lookup(addr("100.64.0.1")) is b
    assert table.lookup(addr("fd00::1")) is None
    assert table.entries(a) == []


def test_remove_matches_the_peer_object_not_an_equal_one() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    name = "peer"
    equal_name = "".join(["pe", "er"])  # equal, but another object
    table.insert("100.64.0.0/24", name)
    table.remove(equal_name)
    assert table.lookup(addr("100.64.0.1")) is name


def test_entries_lists_a_peers_networks(peers: tuple[Peer, Peer, Peer]) -> None:
    a, b, _ = peers
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert("fd00::/64", a)
    table.insert(ipaddress.IPv4Network("100.64.0.0/24"), a)
    table.insert("100.64.0.5/32", a)
    table.insert("100.64.1.0/24", b)
    assert table.entries(a) == [
        ipaddress.IPv4Network("100.64.0.5/32"),
        ipaddress.IPv4Network("100.64.0.0/24"),
        ipaddress.IPv6Network("fd00::/64"),
    ]


def test_overlaps_names_peers_whose_networks_contain_or_lie_in_it(
    peers: tuple[Peer, Peer, Peer],
) -> None:
    a, b, c = peers
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert("100.64.0.0/16", a)  # contains the query
    table.insert("100.64.1.0/24", b)  # lies in the query
    table.insert("100.64.1.128/25", b)  # b again: named once
    table.insert("100.65.0.0/16", c)  # beside it
    assert table.overlaps("100.64.0.0/23") == [b, a]
    assert table.overlaps("fd00::/8") == []


def test_lookup_rejects_an_address_of_the_wrong_length() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    with pytest.raises(ValueError):
        table.lookup(bytes(5))


def test_none_is_not_a_peer() -> None:
    table: AllowedIPs[Peer | None] = AllowedIPs()
    with pytest.raises(ValueError):
        table.insert("100.64.0.0/24", None)


def test_ipv4_packet_is_routed_by_its_destination_and_checked_by_its_source(
    peers: tuple[Peer, Peer, Peer],
) -> None:
    a, b, _ = peers
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert("100.64.0.0/24", a)
    table.insert("100.64.1.0/24", b)
    packet = icmp4(src="100.64.0.2", dst="100.64.1.3")
    assert table.lookup_dst(packet) is b
    assert table.lookup_src(packet) is a


def test_ipv6_packet_is_routed_by_its_destination_and_checked_by_its_source(
    peers: tuple[Peer, Peer, Peer],
) -> None:
    a, b, _ = peers
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert("fd00:a::/64", a)
    table.insert("fd00:b::/64", b)
    packet = icmp6(src="fd00:a::2", dst="fd00:b::3")
    assert table.lookup_dst(packet) is b
    assert table.lookup_src(packet) is a


def test_packet_from_outside_every_network_has_no_peer(
    peers: tuple[Peer, Peer, Peer],
) -> None:
    a, _, _ = peers
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert("100.64.0.0/24", a)
    assert table.lookup_src(icmp4(src="100.64.9.9", dst="100.64.0.1")) is None


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x45",
        bytes([0x45]) + bytes(18),  # IPv4 header one byte short
        bytes([0x60]) + bytes(38),  # IPv6 header one byte short
        bytes([0x60]) + bytes(19),  # long enough for IPv4, not for IPv6
        bytes([0x00]) + bytes(59),  # version 0
        bytes([0x50]) + bytes(59),  # version 5
        bytes([0xF0]) + bytes(59),  # version 15
    ],
)
def test_bytes_that_are_not_an_ip_packet_have_no_peer(garbage: bytes) -> None:
    table: AllowedIPs[str] = AllowedIPs()
    table.insert("0.0.0.0/0", "any4")
    table.insert("::/0", "any6")
    assert table.lookup_dst(garbage) is None
    assert table.lookup_src(garbage) is None


@given(st.binary(max_size=64))
def test_lookup_from_any_bytes_never_raises(packet: bytes) -> None:
    table: AllowedIPs[str] = AllowedIPs()
    table.insert("0.0.0.0/0", "any4")
    table.insert("fd00::/8", "ula")
    assert table.lookup_dst(packet) in (None, "any4", "ula")
    assert table.lookup_src(packet) in (None, "any4", "ula")


# -- Agreement with a brute-force reference --------------------------------------


def brute_force(entries: dict[Network, int], address: bytes) -> int | None:
    """The value of the longest network holding the address, by trying them all."""
    ip = ipaddress.ip_address(address)
    holding = [net for net in entries if net.version == ip.version and ip in net]
    if not holding:
        return None
    return entries[max(holding, key=lambda net: net.prefixlen)]


def _clustered(bits: int) -> st.SearchStrategy[int]:
    # One of four top-bit patterns and a small tail, so that networks nest and
    # collide and addresses fall inside them often.
    top = st.integers(min_value=0, max_value=3).map(lambda hi: hi << (bits - 2))
    tail = st.integers(min_value=0, max_value=(1 << 9) - 1)
    return st.builds(lambda hi, lo: hi | lo, top, tail)


def _networks(bits: int) -> st.SearchStrategy[Network]:
    family = ipaddress.IPv4Network if bits == 32 else ipaddress.IPv6Network
    length = st.integers(min_value=0, max_value=bits)
    return st.builds(
        lambda a, n: family((a, n), strict=False), _clustered(bits), length
    )


def _address(bits: int) -> st.SearchStrategy[bytes]:
    near = _clustered(bits).map(lambda a: a.to_bytes(bits // 8, "big"))
    return st.one_of(near, st.binary(min_size=bits // 8, max_size=bits // 8))


_v4_and_v6_networks = st.lists(st.one_of(_networks(32), _networks(128)), max_size=30)
_addresses = st.lists(st.one_of(_address(32), _address(128)), min_size=1, max_size=20)


@given(_v4_and_v6_networks, _addresses)
def test_lookup_agrees_with_brute_force(
    networks: list[Network], addresses: list[bytes]
) -> None:
    table: AllowedIPs[int] = AllowedIPs()
    entries: dict[Network, int] = {}
    for value, network in enumerate(networks):
        table.insert(network, value)
        entries[network] = value  # a later insert of the same network wins
    for address in addresses:
        assert table.lookup(address) == brute_force(entries, address)


@given(_v4_and_v6_networks, st.one_of(_networks(32), _networks(128)))
def test_overlaps_agrees_with_brute_force(
    networks: list[Network], query: Network
) -> None:
    table: AllowedIPs[int] = AllowedIPs()
    entries: dict[Network, int] = {}
    for value, network in enumerate(networks):
        table.insert(network, value)
        entries[network] = value
    expected = {v for net, v in entries.items() if _overlap(net, query)}
    found = table.overlaps(query)
    assert sorted(found) == sorted(expected)


def _overlap(one: Network, other: Network) -> bool:
    if one.version != other.version:
        return False
    return one.overlaps(other)
