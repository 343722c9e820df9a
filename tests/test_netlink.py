"""The TUN device's addresses, MTU and routes (agent/netlink.py), on a real TUN in
a private netns, observed with `ip -j`; and the reserved-ports bookkeeping on a
plain file standing in for the sysctl."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.netlink import Link, ReservedPorts, format_ports, parse_ports
from tests.private_netns import private_netns  # noqa: F401  (fixture)
from tunnel import udpoffload
from tunnel.tun import open_tun
from tunnel.udpoffload import segments_per_send

IFNAME = "hoprtest0"
ADDRESSES = (
    ipaddress.ip_interface("100.64.0.1/24"),
    ipaddress.ip_interface("fd00:64::1/64"),
)


def ip_json(*argv: str) -> list[dict[str, object]]:
    done = subprocess.run(["ip", "-j", *argv], check=True, capture_output=True)
    return json.loads(done.stdout or b"[]")  # type: ignore[no-any-return]


def routes() -> set[str]:
    found = set()
    for family in ("-4", "-6"):
        for route in ip_json(family, "route", "show", "dev", IFNAME, "proto", "static"):
            found.add(str(route["dst"]))
    return found


@pytest.fixture
def link(request: pytest.FixtureRequest) -> Iterator[Link]:
    request.getfixturevalue("private_netns")
    tun = open_tun(IFNAME)
    link = Link(IFNAME)
    try:
        link.configure(ADDRESSES, 1420)
        yield link
    finally:
        link.close()
        tun.close()


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def test_configure_sets_the_addresses_mtu_and_brings_the_device_up(link: Link) -> None:
    (info,) = ip_json("addr", "show", "dev", IFNAME)
    addresses = {
        f"{a['local']}/{a['prefixlen']}"
        for a in info["addr_info"]  # type: ignore[attr-defined]
        if a["scope"] == "global"
    }
    assert addresses == {"100.64.0.1/24", "fd00:64::1/64"}
    assert info["mtu"] == 1420 and "UP" in info["flags"]  # type: ignore[operator]


def test_the_device_gets_no_ipv6_link_local_address(link: Link) -> None:
    """Without one the kernel sends no router solicitation or MLD into the TUN."""
    (info,) = ip_json("addr", "show", "dev", IFNAME)
    scopes = {a["scope"] for a in info["addr_info"]}  # type: ignore[attr-defined]
    assert scopes == {"global"}, info["addr_info"]


def test_each_allowed_network_outside_the_devices_prefixes_gets_a_route(
    link: Link,
) -> None:
    link.set_routes([net("100.64.0.2/32"), net("10.9.0.0/16"), net("fd00:65::/64")])
    assert routes() == {"10.9.0.0/16", "fd00:65::/64"}


def test_a_network_no_longer_wanted_loses_its_route_and_others_stay(link: Link) -> None:
    link.set_routes([net("10.9.0.0/16"), net("10.10.0.0/16")])
    link.set_routes([net("10.10.0.0/16")])
    assert routes() == {"10.10.0.0/16"}


def test_close_removes_the_routes_it_added(link: Link) -> None:
    link.set_routes([net("10.9.0.0/16")])
    link.close()
    assert routes() == set()


def test_reserving_adds_our_range_to_what_was_there(tmp_path: Path) -> None:
    sysctl = tmp_path / "ip_local_reserved_ports"
    sysctl.write_text("8080\n")
    ReservedPorts((20000, 20009), path=sysctl).reserve()
    assert sysctl.read_text() == "8080,20000-20009\n"


def test_releasing_takes_back_only_the_ports_we_added(tmp_path: Path) -> None:
    sysctl = tmp_path / "ip_local_reserved_ports"
    sysctl.write_text("20005\n")
    reserved = ReservedPorts((20000, 20009), path=sysctl)
    reserved.reserve()
    sysctl.write_text(sysctl.read_text().strip() + ",30000-30009\n")  # another agent
    reserved.release()
    assert sysctl.read_text() == "20005,30000-30009\n"


def test_releasing_everything_writes_an_empty_line(tmp_path: Path) -> None:
    sysctl = tmp_path / "ip_local_reserved_ports"
    sysctl.write_text("\n")
    reserved = ReservedPorts((20000, 20009), path=sysctl)
    reserved.reserve()
    reserved.release()
    assert sysctl.read_text() == "\n"


def test_port_lists_read_back_as_written() -> None:
    text = "22,8000-8010,20000-29999"
    assert format_ports(parse_ports(text)) == text


def test_ports_a_killed_agent_left_reserved_are_taken_back_next_time(
    tmp_path: Path,
) -> None:
    sysctl, ledger = tmp_path / "ip_local_reserved_ports", tmp_path / "hopr0.ports"
    sysctl.write_text("8080\n")
    ReservedPorts((20000, 20009), ledger, path=sysctl).reserve()  # then SIGKILL
    successor = ReservedPorts((20000, 20009), ledger, path=sysctl)
    successor.reserve()
    successor.release()
    assert (sysctl.read_text(), ledger.exists()) == ("8080\n", False)


def test_superpackets_are_capped_at_one_gso_send_of_sealed_datagrams(
    link: Link,
) -> None:
    segs = segments_per_send(1420)
    assert segs == 45  # 45 datagrams of 1448 bytes: the most one send takes
    link.configure(ADDRESSES, 1420, segs)
    (info,) = ip_json("-d", "link", "show", "dev", IFNAME)
    assert info["gso_max_segs"] == segs


def test_larger_mtus_mean_fewer_segments_per_send() -> None:
    mtus = (576, 1280, 1420, 8920)
    counts = [segments_per_send(mtu) for mtu in mtus]
    assert counts == sorted(counts, reverse=True)
    for mtu, n in zip(mtus, counts, strict=True):
        datagram = mtu + (-mtu % 16) + 24  # padded, with header and tag
        assert n <= udpoffload.UDP_MAX_SEGMENTS
        assert n * datagram <= udpoffload.GSO_MAX_BYTES
