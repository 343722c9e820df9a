"""`hopr-tunnel metrics`: show's status in Prometheus' text format.

The output is read back with prometheus_client's own parser, so what is checked
is what a Prometheus server would ingest. The netns tier (test_agent_smoke.py)
runs the command against real agents.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import render

KEY = "m6dD/DQJ1s8XI3VDsvLPsDJBUO4UA5muT0HmqnJWy2A="


def status(**changes: Any) -> dict[str, Any]:
    """One interface with one peer, shaped as agent/show.py builds it."""
    peer: dict[str, Any] = {
        "name": "db-1",
        "public_key": KEY,
        "epoch": 359273111,
        "next_hop_ms": 3848,
        "session": True,
        "last_hello_ago_ms": 1500,
        "last_datagram_ago_ms": 20,
        "tx_bytes": 123456,
        "rx_bytes": 654321,
        "tx_datagrams": 100,
        "rx_datagrams": 200,
        "hellos_sent": 4,
        "hellos_accepted": 3,
        "drops": {"replay": 7, "auth": 2},
        "clock_offset_ms": -1.5,
    }
    peer.update(changes)
    return {
        "name": "hopr0",
        "hop_ms": 10_000,
        "unix_ms": 1_796_365_559_141,
        "started_unix_ms": 1_796_365_500_000,
        "drops": {"no_route": 5},
        "native_rx_datagrams": 4096,
        "peers": [peer],
    }


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[s.name, frozenset(s.labels.items())] = s.value
    return found


def peer_labels(**extra: str) -> frozenset[tuple[str, str]]:
    return frozenset(
        {"interface": "hopr0", "peer": "db-1", "public_key": KEY, **extra}.items()
    )


def test_peer_traffic_and_hellos_are_counters_with_the_peer_labels() -> None:
    got = samples(render([status()]))
    assert got["hopr_tunnel_peer_sent_bytes_total", peer_labels()] == 123456
    assert got["hopr_tunnel_peer_received_bytes_total", peer_labels()] == 654321
    assert got["hopr_tunnel_peer_sent_datagrams_total", peer_labels()] == 100
    assert got["hopr_tunnel_peer_received_datagrams_total", peer_labels()] == 200
    assert got["hopr_tunnel_peer_hellos_sent_total", peer_labels()] == 4
    assert got["hopr_tunnel_peer_hellos_accepted_total", peer_labels()] == 3


def test_drops_are_counted_by_reason() -> None:
    got = samples(render([status()]))
    assert got["hopr_tunnel_peer_drops_total", peer_labels(reason="replay")] == 7
    assert got["hopr_tunnel_peer_drops_total", peer_labels(reason="auth")] == 2
    iface = frozenset({"interface": "hopr0", "reason": "no_route"}.items())
    assert got["hopr_tunnel_interface_drops_total", iface] == 5


def test_datagrams_received_natively_are_a_counter_when_the_agent_says() -> None:
    iface = frozenset({"interface": "hopr0"}.items())
    assert (
        samples(render([status()]))["hopr_tunnel_native_rx_datagrams_total", iface]
        == 4096
    )
    older = status()
    del older["native_rx_datagrams"]
    assert not any(
        name == "hopr_tunnel_native_rx_datagrams_total"
        for name, _ in samples(render([older]))
    )


def test_times_are_seconds_and_instants_are_unix_time() -> None:
    got = samples(render([status()]))
    iface = frozenset({"interface": "hopr0"}.items())
    assert got["hopr_tunnel_hop_interval_seconds", iface] == 10.0
    assert got["hopr_tunnel_start_time_seconds", iface] == 1_796_365_500.0
    assert got["hopr_tunnel_peer_next_hop_seconds", peer_labels()] == 3.848
    latest = got["hopr_tunnel_peer_latest_datagram_seconds", peer_labels()]
    assert latest == pytest.approx(1_796_365_559.121)
    assert got["hopr_tunnel_peer_clock_offset_seconds", peer_labels()] == -0.0015


def test_session_epoch_and_up_are_gauges() -> None:
    text = render([status(session=False)])
    kinds = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert kinds["hopr_tunnel_peer_session"] == "gauge"
    assert kinds["hopr_tunnel_peer_epoch"] == "gauge"
    assert kinds["hopr_tunnel_peer_sent_bytes"] == "counter"
    got = samples(text)
    assert got["hopr_tunnel_peer_session", peer_labels()] == 0
    assert got["hopr_tunnel_peer_epoch", peer_labels()] == 359273111
    assert got["hopr_tunnel_up", frozenset({"interface": "hopr0"}.items())] == 1


def test_what_never_happened_is_absent_not_zero() -> None:
    never = status(
        last_hello_ago_ms=None, last_datagram_ago_ms=None, clock_offset_ms=None
    )
    text = render([never])
    assert "latest_hello" not in text
    assert "latest_datagram" not in text
    assert "clock_offset" not in text


def test_two_interfaces_share_one_family_each() -> None:
    other = copy.deepcopy(status())
    other["name"] = "hopr1"
    text = render([status(), other])
    assert text.count("# TYPE hopr_tunnel_peer_sent_bytes_total counter") == 1
    interfaces = {
        dict(labels)["interface"]
        for name, labels in samples(text)
        if name == "hopr_tunnel_peer_sent_bytes_total"
    }
    assert interfaces == {"hopr0", "hopr1"}


def test_label_values_are_escaped() -> None:
    text = render([status(name='odd"name\\x')])
    assert samples(text)["hopr_tunnel_peer_epoch", frozenset(
        {"interface": "hopr0", "peer": 'odd"name\\x', "public_key": KEY}.items()
    )] == 359273111  # fmt: skip


def test_no_interface_is_empty_output() -> None:
    assert render([]) == ""
