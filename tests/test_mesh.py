"""`hopr-tunnel mesh`: an inventory becomes one loadable config per host, and every
pair's two configs derive the same schedule."""

from __future__ import annotations

import itertools
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.config import Config, ConfigError, load
from agent.mesh import generate, load_inventory

THREE_HOSTS = """
[defaults]
hop_interval = "2s"
cipher = "chacha20-poly1305"

[[host]]
name = "alpha"
underlay = "198.18.0.1"
address = "100.64.0.1"

[[host]]
name = "beta"
underlay = "198.18.0.2"
address = ["100.64.0.2/24", "fd00:64::2"]
port_range = "30000-30999"

[[host]]
name = "gamma"
underlay = "198.18.0.3"
address = "100.64.0.3"
"""


def make_mesh(tmp_path: Path, inventory: str = THREE_HOSTS, psk: bool = False) -> dict:
    path = tmp_path / "inventory.toml"
    path.write_text(inventory)
    configs = generate(load_inventory(path), tmp_path / "out", "mesh", psk)
    return {config.parent.name: load(config) for config in configs}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_pairs_agree(configs: dict[str, Config]) -> None:
    for a, b in itertools.combinations(configs, 2):
        peer_b = next(p for p in configs[a].peers if p.name == b)
        peer_a = next(p for p in configs[b].peers if p.name == a)
        from_a, from_b = configs[a].schedule(peer_b), configs[b].schedule(peer_a)
        assert from_a.root == from_b.root
        assert from_a.is_lo != from_b.is_lo
        for epoch in range(100, 110):
            ours, theirs = from_a.ports(epoch)
            assert from_b.ports(epoch) == (theirs, ours)


def test_every_host_gets_a_config_that_loads(tmp_path: Path) -> None:
    configs = make_mesh(tmp_path)
    assert sorted(configs) == ["alpha", "beta", "gamma"]


def test_every_other_host_is_a_peer(tmp_path: Path) -> None:
    configs = make_mesh(tmp_path)
    for name, config in configs.items():
        assert {p.name for p in config.peers} == set(configs) - {name}


def test_each_pair_derives_the_same_schedule_from_both_ends(tmp_path: Path) -> None:
    assert_pairs_agree(make_mesh(tmp_path))


def test_with_psk_each_pair_still_agrees(tmp_path: Path) -> None:
    assert_pairs_agree(make_mesh(tmp_path, psk=True))


def test_with_psk_both_ends_hold_the_same_psk(tmp_path: Path) -> None:
    configs = make_mesh(tmp_path, psk=True)
    alpha_beta = next(p for p in configs["alpha"].peers if p.name == "beta")
    beta_alpha = next(p for p in configs["beta"].peers if p.name == "alpha")
    assert alpha_beta.psk is not None
    assert alpha_beta.psk == beta_alpha.psk


def test_without_psk_no_pair_has_one(tmp_path: Path) -> None:
    configs = make_mesh(tmp_path)
    assert all(p.psk is None for c in configs.values() for p in c.peers)


def test_endpoints_and_listen_are_the_underlay_addresses(tmp_path: Path) -> None:
    configs = make_mesh(tmp_path)
    assert str(configs["alpha"].interface.listen) == "198.18.0.1"
    beta = next(p for p in configs["alpha"].peers if p.name == "beta")
    assert str(beta.endpoint) == "198.18.0.2"


def test_bare_address_gets_a_subnet_on_its_host_and_one_address_as_peer(
    tmp_path: Path,
) -> None:
    configs = make_mesh(tmp_path)
    assert [str(a) for a in configs["alpha"].interface.addresses] == ["100.64.0.1/24"]
    alpha = next(p for p in configs["beta"].peers if p.name == "alpha")
    assert [str(n) for n in alpha.allowed_ips] == ["100.64.0.1/32"]


def test_all_of_a_hosts_addresses_are_its_allowed_ips(tmp_path: Path) -> None:
    configs = make_mesh(tmp_path)
    beta = next(p for p in configs["alpha"].peers if p.name == "beta")
    assert [str(n) for n in beta.allowed_ips] == ["100.64.0.2/32", "fd00:64::2/128"]


def test_host_port_range_is_its_own_and_its_peers_know_it(tmp_path: Path) -> None:
    configs = make_mesh(tmp_path)
    assert configs["beta"].interface.port_range == (30000, 30999)
    beta = next(p for p in configs["gamma"].peers if p.name == "beta")
    assert beta.port_range == (30000, 30999)


def test_defaults_reach_every_interface(tmp_path: Path) -> None:
    configs = make_mesh(tmp_path)
    assert {c.interface.hop_ms for c in configs.values()} == {2000}


def test_secrets_are_owner_only(tmp_path: Path) -> None:
    make_mesh(tmp_path, psk=True)
    out = tmp_path / "out" / "alpha"
    for name in ("mesh.key", "mesh-beta.psk", "mesh.toml"):
        assert mode(out / name) == 0o600, name
    assert mode(out) == 0o700


def test_running_again_keeps_every_key(tmp_path: Path) -> None:
    first = make_mesh(tmp_path, psk=True)
    again = make_mesh(tmp_path, psk=True)
    for name in first:
        assert first[name].interface.private_key == again[name].interface.private_key
        assert [p.psk for p in first[name].peers] == [p.psk for p in again[name].peers]


def test_adding_a_host_keeps_the_others_keys(tmp_path: Path) -> None:
    first = make_mesh(tmp_path)
    delta = (
        '\n[[host]]\nname = "delta"\nunderlay = "198.18.0.4"\naddress = "100.64.0.4"\n'
    )
    grown = make_mesh(tmp_path, THREE_HOSTS + delta)
    assert "delta" in {p.name for p in grown["alpha"].peers}
    for name in first:
        assert first[name].interface.public_key == grown[name].interface.public_key
    assert_pairs_agree(grown)


def test_command_writes_the_mesh_and_says_where_to_copy(tmp_path: Path) -> None:
    (tmp_path / "inventory.toml").write_text(THREE_HOSTS)
    inventory, out = str(tmp_path / "inventory.toml"), str(tmp_path / "out")
    result = CliRunner().invoke(main, ["mesh", inventory, "--out", out])
    assert result.exit_code == 0, result.output
    assert "alpha: copy" in result.output
    assert "hopr-tunnel@mesh" in result.output
    assert (tmp_path / "out" / "gamma" / "mesh.toml").exists()


def test_command_refuses_a_bad_inventory_with_one_line_and_status_2(
    tmp_path: Path,
) -> None:
    (tmp_path / "inventory.toml").write_text(THREE_HOSTS.replace("underlay", "undrlay"))
    inventory, out = str(tmp_path / "inventory.toml"), str(tmp_path / "out")
    result = CliRunner().invoke(main, ["mesh", inventory, "--out", out])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert "rename it to underlay" in result.output


MISTAKES = {
    "duplicate name": (
        ('name = "beta"', 'name = "alpha"'),
        'host "alpha".name repeats alpha',
    ),
    "duplicate underlay": (
        ('underlay = "198.18.0.3"', 'underlay = "198.18.0.1"'),
        'host "gamma".underlay repeats 198.18.0.1 of host "alpha"',
    ),
    "duplicate address": (
        ('address = "100.64.0.3"', 'address = "100.64.0.1"'),
        'host "gamma".address repeats 100.64.0.1 of host "alpha"',
    ),
    "underlay not an address": (
        ('underlay = "198.18.0.3"', 'underlay = "gamma.example"'),
        'host "gamma".underlay is "gamma.example", not an IP address',
    ),
    "address not an address": (
        ('address = "100.64.0.3"', 'address = "100.64.0.300"'),
        'host "gamma".address holds "100.64.0.300", not an IP address',
    ),
    "mixed underlay families": (
        ('underlay = "198.18.0.3"', 'underlay = "fd00::3"'),
        "host mixes IPv4 and IPv6 underlays",
    ),
    "bad default": (
        ('hop_interval = "2s"', 'hop_interval = "2 days"'),
        'defaults.hop_interval is "2 days", not an interval',
    ),
    "unknown default": (
        ('cipher = "chacha20-poly1305"', 'listen = "198.18.0.9"'),
        "defaults.listen is not a known key",
    ),
    "port range below 1024": (
        ('port_range = "30000-30999"', 'port_range = "500-600"'),
        'host "beta".port_range is "500-600", which',
    ),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_mistake_is_refused_naming_inventory_and_field(
    tmp_path: Path, mistake: str
) -> None:
    (old, new), expected = MISTAKES[mistake]
    assert old in THREE_HOSTS
    path = tmp_path / "inventory.toml"
    path.write_text(THREE_HOSTS.replace(old, new, 1))
    with pytest.raises(ConfigError) as refused:
        load_inventory(path)
    assert str(refused.value).startswith(f"{path}: ")
    assert expected in str(refused.value)


def test_one_host_is_no_mesh(tmp_path: Path) -> None:
    path = tmp_path / "inventory.toml"
    path.write_text(
        THREE_HOSTS.split("[[host]]")[0] + "[[host]]" + THREE_HOSTS.split("[[host]]")[1]
    )
    with pytest.raises(ConfigError, match="lists 1 host"):
        load_inventory(path)


def test_config_name_must_be_a_plain_file_name(tmp_path: Path) -> None:
    path = tmp_path / "inventory.toml"
    path.write_text(THREE_HOSTS)
    with pytest.raises(ConfigError, match='config name "../x"'):
        generate(load_inventory(path), tmp_path / "out", "../x", psk=False)
