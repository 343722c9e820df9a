"""install.sh's static checks; tests/test_systemd_nspawn.py runs it for real."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = ["install.sh", ".ci/systemd-checks.sh", ".ci/run", "vagrant/build-box.sh"]
REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="needs shellcheck (apt)")
@pytest.mark.parametrize("script", SCRIPTS)
def test_script_passes_shellcheck(script: str) -> None:
    check = subprocess.run(
        ["shellcheck", str(REPO / script)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout


def test_install_refuses_an_unknown_option_with_status_2() -> None:
    done = subprocess.run(
        ["bash", str(REPO / "install.sh"), "--frobnicate"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "unknown option '--frobnicate'" in done.stderr


def test_install_help_says_what_it_does_without_doing_it() -> None:
    done = subprocess.run(
        ["bash", str(REPO / "install.sh"), "--help"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0
    assert "--uninstall" in done.stdout
