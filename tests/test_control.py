"""The control socket (agent/control.py): a real server on an event loop thread,
in a temporary run directory, and the client the CLI uses."""

from __future__ import annotations

import asyncio
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import control


class Running:
    """A control server for `ifname` on its own event loop thread."""

    def __init__(self, ifname: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = control.ControlServer(ifname, self.handle)
        self.commands: list[str] = []
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)
        except BaseException:
            self._stop_loop()
            raise

    def handle(self, command: str) -> dict[str, Any]:
        self.commands.append(command)
        if command == "show":
            status = {"name": self.server.path.stem, "netns": control.netns_id()}
            return {"ok": True, "status": status}
        return {"ok": False, "error": f"unknown command {command!r}"}

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    where = tmp_path / "run"
    monkeypatch.setenv("HOPR_TUNNEL_RUN_DIR", str(where))
    return where


@pytest.fixture
def agent(run_dir: Path) -> Iterator[Running]:
    running = Running("hopr7")
    try:
        yield running
    finally:
        running.stop()


def test_show_returns_the_agents_status(agent: Running) -> None:
    assert control.statuses("hopr7") == [{"name": "hopr7", "netns": control.netns_id()}]


def test_an_unknown_command_is_answered_with_an_error(agent: Running) -> None:
    answer = control.request(control.socket_path("hopr7"), "reboot")
    assert answer == {"ok": False, "error": "unknown command 'reboot'"}


def test_the_socket_is_for_its_owner_only(agent: Running, run_dir: Path) -> None:
    modes = (
        stat.S_IMODE(run_dir.stat().st_mode),
        stat.S_IMODE(control.socket_path("hopr7").stat().st_mode),
    )
    assert modes == (0o700, 0o600)


def test_no_agent_is_an_error_naming_the_interface(run_dir: Path) -> None:
    with pytest.raises(control.ControlError, match="no agent runs for hopr9"):
        control.statuses("hopr9")


def test_a_stale_socket_is_taken_over(run_dir: Path) -> None:
    run_dir.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(control.socket_path("hopr7")))  # bound, never listening
    running = Running("hopr7")
    try:
        assert control.statuses("hopr7")[0]["name"] == "hopr7"
    finally:
        running.stop()


def test_a_second_agent_for_the_same_interface_is_refused(agent: Running) -> None:
    with pytest.raises(control.ControlError, match="already runs"):
        Running("hopr7")


def test_show_without_a_name_lists_live_agents_and_skips_stale_ones(
    agent: Running, run_dir: Path
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(control.socket_path("hopr8")))
    assert [s["name"] for s in control.statuses(None)] == ["hopr7"]


def test_closing_removes_the_socket_file(run_dir: Path) -> None:
    Running("hopr7").stop()
    assert not control.socket_path("hopr7").exists()


def test_show_with_no_agent_says_so_on_stderr_and_succeeds(run_dir: Path) -> None:
    from click.testing import CliRunner

    from agent.cli import main

    done = CliRunner().invoke(main, ["show"])
    assert done.exit_code == 0
    assert done.stdout == ""
    assert "no tunnel runs in this network namespace" in done.stderr
