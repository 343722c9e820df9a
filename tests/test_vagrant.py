"""The Vagrant lab: its Vagrantfile validates and its inventory makes a valid mesh.

Booting the lab needs a hypervisor; these checks need only `vagrant` (Debian's
package) and this checkout.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.config import load
from agent.mesh import generate, load_inventory

LAB = Path(__file__).resolve().parent.parent / "vagrant"
UNDERLAY_SPACE = ipaddress.ip_network("198.18.0.0/15")


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="needs vagrant (apt)")
def test_vagrantfile_validates(tmp_path: Path) -> None:
    # Vagrant's state and home go to tmp_path, not into the checkout or ~.
    env = {
        **os.environ,
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),
        "VAGRANT_HOME": str(tmp_path / "home"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
    }
    validate = subprocess.run(
        ["vagrant", "validate", "--ignore-provider"],
        cwd=LAB, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert validate.returncode == 0, validate.stdout + validate.stderr
    assert "Vagrantfile validated successfully" in validate.stdout
    assert not (LAB / ".mesh").exists()  # validating makes no keys


def test_lab_inventory_makes_three_hosts_on_the_benchmark_range(tmp_path: Path) -> None:
    inventory = load_inventory(LAB / "inventory.toml")
    assert [h.name for h in inventory.hosts] == ["alpha", "beta", "gamma"]
    assert all(h.underlay in UNDERLAY_SPACE for h in inventory.hosts)


def test_lab_inventory_gives_every_vm_a_config_with_the_others(tmp_path: Path) -> None:
    inventory = load_inventory(LAB / "inventory.toml")
    configs = [load(c) for c in generate(inventory, tmp_path, "mesh", psk=True)]
    for config in configs:
        assert len(config.peers) == 2
        assert all(peer.psk is not None for peer in config.peers)
