"""agent.sdnotify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import sdnotify


@pytest.fixture
def systemd_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[socket.socket]:
    """A bound datagram socket whose path is in $NOTIFY_SOCKET, as systemd does."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def received(sock: socket.socket) -> dict[str, str]:
    message = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in message.split("\n"))


def test_ready_sends_ready_1(systemd_socket: socket.socket) -> None:
    assert sdnotify.ready()
    assert received(systemd_socket) == {"READY": "1"}


def test_ready_can_carry_a_status_line(systemd_socket: socket.socket) -> None:
    assert sdnotify.ready("3 peers")
    assert received(systemd_socket) == {"READY": "1", "STATUS": "3 peers"}


def test_status_is_kept_on_one_line(systemd_socket: socket.socket) -> None:
    assert sdnotify.status("peer a up\nREADY=1")
    assert received(systemd_socket) == {"STATUS": "peer a up READY=1"}


def test_stopping_sends_stopping_1(systemd_socket: socket.socket) -> None:
    assert sdnotify.stopping()
    assert received(systemd_socket) == {"STOPPING": "1"}


def test_watchdog_sends_watchdog_1(systemd_socket: socket.socket) -> None:
    assert sdnotify.watchdog()
    assert received(systemd_socket) == {"WATCHDOG": "1"}


def test_reloading_carries_the_monotonic_clock_of_the_call(
    systemd_socket: socket.socket,
) -> None:
    before_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading()
    after_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message = received(systemd_socket)
    assert message["RELOADING"] == "1"
    assert before_us <= int(message["MONOTONIC_USEC"]) <= after_us


def test_abstract_socket_named_with_at_sign(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"hopr-test-{os.getpid()}-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready()
        assert received(sock) == {"READY": "1"}


def test_outside_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False


def test_vanished_socket_returns_false(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert sdnotify.notify("READY=1") is False


def test_watchdog_interval_in_seconds_for_this_process() -> None:
    env = {"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}
    assert sdnotify.watchdog_interval_s(env) == 20.0


def test_watchdog_interval_without_pid_applies_to_us() -> None:
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "1500000"}) == 1.5


def test_watchdog_meant_for_another_process_is_ignored() -> None:
    env = {"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert sdnotify.watchdog_interval_s(env) is None


@pytest.mark.parametrize("value", ["", "0", "soon", "-5"])
def test_no_or_bad_watchdog_setting_means_unwatched(value: str) -> None:
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": value}) is None
