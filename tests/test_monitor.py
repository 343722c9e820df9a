"""Lifecycle logs (agent/monitor.py) read from real protocol cores on the
in-memory network of tests/sim.py, whose clock is simulated: minutes run in
milliseconds."""

from __future__ import annotations

import logging

import pytest

from agent.monitor import Monitor
from tests.sim import MS, SECOND, SimHost, SimNet


def watched(
    net: SimNet,
    a: SimHost,
    b: SimHost,
    monitor: Monitor,
    seconds: int,
    traffic: bool = False,
) -> None:
    """Run the network, checking a's peer b once a (simulated) second."""
    for _ in range(seconds):
        if traffic:  # both ways, as a TCP flow would: the protocol has no keepalive
            a.send_packet(b, net.next_tag)
            b.send_packet(a, net.next_tag + 1)
            net.next_tag += 2
        net.run_until(net.now_ns + SECOND)
        monitor.check(a.peer("b"), a.now())


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


@pytest.fixture
def caplog_info(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="hopr-tunnel")
    return caplog


def test_a_peer_with_a_session_is_logged_reachable_once(
    caplog_info: pytest.LogCaptureFixture,
) -> None:
    net = SimNet()
    a, b = net.add("a", "100.64.0.1"), net.add("b", "100.64.0.2")
    a.boot(), b.boot()
    watched(net, a, b, Monitor("hopr0"), seconds=5, traffic=True)
    assert messages(caplog_info, logging.INFO) == ["hopr0: peer b reachable"]


def test_a_peer_silent_while_we_send_is_logged_lost(
    caplog_info: pytest.LogCaptureFixture,
) -> None:
    net = SimNet()
    a, b = net.add("a", "100.64.0.1"), net.add("b", "100.64.0.2")
    a.boot(), b.boot()
    monitor = Monitor("hopr0")
    watched(net, a, b, monitor, seconds=3, traffic=True)
    b.crash()
    watched(net, a, b, monitor, seconds=20, traffic=True)
    assert any(
        m.startswith("hopr0: peer b lost") for m in messages(caplog_info, logging.INFO)
    )


def test_an_idle_peer_is_not_logged_lost(caplog_info: pytest.LogCaptureFixture) -> None:
    net = SimNet()
    a, b = net.add("a", "100.64.0.1"), net.add("b", "100.64.0.2")
    a.boot(), b.boot()
    monitor = Monitor("hopr0")
    watched(net, a, b, monitor, seconds=3, traffic=True)
    watched(net, a, b, monitor, seconds=60)
    assert not any("lost" in m for m in messages(caplog_info, logging.INFO))


def test_a_lost_peer_that_answers_again_is_reachable_again(
    caplog_info: pytest.LogCaptureFixture,
) -> None:
    net = SimNet()
    a, b = net.add("a", "100.64.0.1"), net.add("b", "100.64.0.2")
    a.boot(), b.boot()
    monitor = Monitor("hopr0")
    watched(net, a, b, monitor, seconds=3, traffic=True)
    b.crash()
    watched(net, a, b, monitor, seconds=20, traffic=True)
    b.boot()
    watched(net, a, b, monitor, seconds=10, traffic=True)
    assert messages(caplog_info, logging.INFO)[-1] == "hopr0: peer b reachable"


def test_a_clock_off_by_more_than_a_quarter_hop_is_a_warning(
    caplog_info: pytest.LogCaptureFixture,
) -> None:
    net = SimNet()
    a, b = net.add("a", "100.64.0.1"), net.add("b", "100.64.0.2", skew_ns=400 * MS)
    a.boot(), b.boot()
    watched(net, a, b, Monitor("hopr0"), seconds=3, traffic=True)
    (warning,) = messages(caplog_info, logging.WARNING)
    # 400 ms of skew, less the simulated link's 5 ms one-way delay
    assert "peer b's clock is +0.395 s off ours" in warning


def test_a_peer_that_never_answers_is_a_warning_naming_what_to_check(
    caplog_info: pytest.LogCaptureFixture,
) -> None:
    net = SimNet()
    a, b = net.add("a", "100.64.0.1"), net.add("b", "100.64.0.2")
    a.boot()  # b never comes up
    watched(net, a, b, Monitor("hopr0"), seconds=40, traffic=True)
    (warning,) = messages(caplog_info, logging.WARNING)
    assert "answered none of our hellos" in warning and "psk" in warning
