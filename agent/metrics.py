"""`hopr-tunnel metrics`: the status of `show`, in Prometheus' text format.

Made from the same status dicts as `show --json` (agent/show.py), so there is
one source of truth and no listener in the agent: an operator scrapes by
running the command, for example into node_exporter's textfile collector from
a systemd timer (README.md, "Metrics").

Names follow Prometheus' conventions: a `hopr_tunnel_` prefix, base units
(seconds, bytes), `_total` on counters. Every series of a peer carries the
labels interface, peer (its name in the config) and public_key, as the
WireGuard exporters label theirs, so dashboards can join on either. Counters
restart at zero with the agent, as Prometheus' rate() expects of a restart.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

PREFIX = "hopr_tunnel_"

# name, type, help, and where the value comes from in a peer's status
_PEER_COUNTERS = (
    ("peer_sent_bytes_total", "sealed bytes sent to the peer", "tx_bytes"),
    ("peer_received_bytes_total", "authentic bytes received", "rx_bytes"),
    ("peer_sent_datagrams_total", "datagrams sent to the peer", "tx_datagrams"),
    ("peer_received_datagrams_total", "authentic datagrams received", "rx_datagrams"),
    ("peer_hellos_sent_total", "hellos sent to the peer", "hellos_sent"),
    ("peer_hellos_accepted_total", "hellos accepted from the peer", "hellos_accepted"),
)


def render(statuses: Iterable[dict[str, Any]]) -> str:
    """Prometheus text exposition (format 0.0.4) of these interfaces."""
    families: dict[str, tuple[str, str, list[str]]] = {}
    for status in statuses:
        for name, kind, text, sample in _interface_samples(status):
            families.setdefault(name, (kind, text, []))[2].append(sample)
    lines = []
    for name, (kind, text, samples) in families.items():
        lines.append(f"# HELP {PREFIX}{name} {text}")
        lines.append(f"# TYPE {PREFIX}{name} {kind}")
        lines.extend(f"{PREFIX}{name}{sample}" for sample in samples)
    return "".join(line + "\n" for line in lines)


Sample = tuple[str, str, str, str]  # family name, type, help, "{labels} value"


def _interface_samples(status: dict[str, Any]) -> Iterator[Sample]:
    iface = {"interface": status["name"]}
    yield _gauge("up", "1 while the agent answers", iface, 1)
    yield _gauge("hop_interval_seconds", "the hop interval", iface,
                 status["hop_ms"] / 1000)  # fmt: skip
    yield _gauge(
        "start_time_seconds", "when the agent started, Unix time", iface,
        status["started_unix_ms"] / 1000,
    )  # fmt: skip
    if "native_rx_datagrams" in status:  # agents before 2026-12-04 did not say
        yield _counter(
            "native_rx_datagrams_total",
            "datagrams received and written to the TUN in native code", iface,
            status["native_rx_datagrams"],
        )  # fmt: skip
    for reason, count in sorted(status["drops"].items()):
        yield _counter(
            "interface_drops_total", "packets from the TUN dropped, by reason",
            {**iface, "reason": reason}, count,
        )  # fmt: skip
    for peer in status["peers"]:
        yield from _peer_samples(status, peer)


def _peer_samples(status: dict[str, Any], peer: dict[str, Any]) -> Iterator[Sample]:
    labels = {
        "interface": status["name"],
        "peer": peer["name"],
        "public_key": peer["public_key"],
    }
    for name, text, key in _PEER_COUNTERS:
        yield _counter(name, text, labels, peer[key])
    for reason, count in sorted(peer["drops"].items()):
        yield _counter(
            "peer_drops_total", "datagrams from the peer dropped, by reason",
            {**labels, "reason": reason}, count,
        )  # fmt: skip
    yield _gauge("peer_session", "1 while a session can seal to the peer", labels,
                 int(peer["session"]))  # fmt: skip
    yield _gauge("peer_epoch", "the pair's current epoch", labels, peer["epoch"])
    yield _gauge(
        "peer_next_hop_seconds", "time until the pair's next hop", labels,
        peer["next_hop_ms"] / 1000,
    )  # fmt: skip
    now_ms = status["unix_ms"]
    for name, text, ago_key in (
        ("peer_latest_hello_seconds", "latest accepted hello, Unix time",
         "last_hello_ago_ms"),
        ("peer_latest_datagram_seconds", "latest authentic datagram, Unix time",
         "last_datagram_ago_ms"),
    ):  # fmt: skip
        ago_ms = peer[ago_key]
        if ago_ms is not None:  # absent until it happens, as in `show`
            yield _gauge(name, text, labels, (now_ms - ago_ms) / 1000)
    if peer["clock_offset_ms"] is not None:
        yield _gauge(
            "peer_clock_offset_seconds", "the peer's clock minus ours, by its hellos",
            labels, peer["clock_offset_ms"] / 1000,
        )  # fmt: skip


def _gauge(name: str, text: str, labels: dict[str, str], value: float) -> Sample:
    return name, "gauge", text, f"{_labels(labels)} {_number(value)}"


def _counter(name: str, text: str, labels: dict[str, str], value: float) -> Sample:
    return name, "counter", text, f"{_labels(labels)} {_number(value)}"


def _labels(labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(value) if isinstance(value, float) else str(int(value))
