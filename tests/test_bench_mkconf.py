"""bench/mkconf.py writes two configs that agent/config.py accepts and that pair up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import Config, load

MKCONF = Path(__file__).resolve().parent.parent / "bench" / "mkconf.py"
SIDE_A = {
    "HB_TUN_IP": "100.64.0.1",
    "HB_PEER_TUN_IP": "100.64.0.2",
    "HB_UL_IP": "198.18.0.1",
    "HB_PEER_UL_IP": "198.18.0.2",
    "HB_TUN_PREFIX": "24",
}


def mkconf(tmp_path: Path, *args: str, env: dict[str, str] = SIDE_A) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, str(MKCONF), str(tmp_path / "a" / "peers.toml"),
         str(tmp_path / "b" / "peers.toml"), *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def configs(tmp_path: Path) -> tuple[Config, Config]:
    status, output = mkconf(tmp_path, "--hop-interval", "1s")
    assert status == 0, output
    return load(tmp_path / "a" / "peers.toml"), load(tmp_path / "b" / "peers.toml")


def test_configs_load_with_the_requested_hop_interval_and_cipher(
    configs: tuple[Config, Config],
) -> None:
    for config in configs:
        assert config.interface.hop_ms == 1000
        assert config.interface.cipher_id == 1  # aes-256-gcm


def test_each_side_names_the_other_as_its_peer(configs: tuple[Config, Config]) -> None:
    a, b = configs
    assert a.peers[0].public_key == b.interface.public_key
    assert b.peers[0].public_key == a.interface.public_key
    assert str(a.peers[0].endpoint) == "198.18.0.2"
    assert str(b.peers[0].endpoint) == "198.18.0.1"


def test_tunnel_addresses_follow_the_hb_variables(
    configs: tuple[Config, Config],
) -> None:
    a, b = configs
    assert [str(x) for x in a.interface.addresses] == ["100.64.0.1/24"]
    assert [str(n) for n in b.peers[0].allowed_ips] == ["100.64.0.1/32"]


def test_configs_are_private_to_their_owner(tmp_path: Path) -> None:
    assert mkconf(tmp_path)[0] == 0
    assert (tmp_path / "a" / "peers.toml").stat().st_mode & 0o077 == 0


def test_a_missing_variable_is_one_sentence_and_status_2(tmp_path: Path) -> None:
    env = {k: v for k, v in SIDE_A.items() if k != "HB_UL_IP"}
    env["HB_UL_IP"] = ""
    status, output = mkconf(tmp_path, env=env)
    assert status == 2
    assert "HB_UL_IP is not set" in output
