"""`hopr-tunnel up`, `show` and `down` as a user meets them when something is
wrong: one sentence on stderr and exit status 2, nothing created."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tunnel import keys

HOPR = [sys.executable, "-m", "agent.cli"]


def hopr(
    *argv: str, run_dir: Path, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOPR_TUNNEL_RUN_DIR=str(run_dir))
    return subprocess.run(
        [*prefix, *HOPR, *argv], capture_output=True, text=True, env=env, timeout=60
    )


def valid_config(tmp_path: Path) -> Path:
    key = tmp_path / "host.key"
    key.write_text(keys.encode_key(keys.generate_private()) + "\n")
    key.chmod(0o600)
    peer = keys.encode_key(keys.public_from_private(keys.generate_private()))
    config = tmp_path / "peers.toml"
    config.write_text(
        f"""[interface]
name = "hoprcli0"
private_key_file = "host.key"
address = ["100.64.0.1/24"]
listen = "127.0.0.1"

[[peer]]
name = "b"
public_key = "{peer}"
endpoint = "127.0.0.2"
allowed_ips = ["100.64.0.2/32"]
"""
    )
    return config


def test_up_with_a_bad_config_says_why_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "peers.toml"
    config.write_text("[interface]\nname = 7\n")
    done = hopr("up", str(config), run_dir=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(f"hopr-tunnel: {config}")
    assert done.stderr.count("\n") == 1


def test_up_without_cap_net_admin_names_the_fix(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not (shutil.which("setpriv") and shutil.which("unshare")):
        pytest.skip("needs root, unshare and setpriv to drop the capability")
    # In a netns of its own: were the check broken, nothing lands on the host.
    drop = ("unshare", "--net", "setpriv", "--bounding-set", "-net_admin")
    done = hopr("up", str(valid_config(tmp_path)), run_dir=tmp_path, prefix=drop)
    assert done.returncode == 2
    assert "needs CAP_NET_ADMIN" in done.stderr and "sudo" in done.stderr


def test_up_with_a_listen_address_not_on_this_host_is_refused(tmp_path: Path) -> None:
    config = valid_config(tmp_path)
    config.write_text(config.read_text().replace("127.0.0.1", "198.18.255.254"))
    done = hopr("up", str(config), run_dir=tmp_path)
    assert done.returncode == 2
    assert "interface.listen 198.18.255.254 cannot be used here" in done.stderr


def test_down_of_an_interface_without_agent_is_an_error(tmp_path: Path) -> None:
    done = hopr("down", "hoprnone0", run_dir=tmp_path)
    assert (done.returncode, done.stderr.strip()) == (
        2,
        f"hopr-tunnel: no agent runs for hoprnone0 (no {tmp_path}/hoprnone0.sock).",
    )


def test_show_with_no_agents_lists_no_interfaces(tmp_path: Path) -> None:
    done = hopr("show", "--json", run_dir=tmp_path)
    assert (done.returncode, json.loads(done.stdout)) == (0, {"interfaces": []})
