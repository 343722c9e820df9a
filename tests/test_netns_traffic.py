"""Traffic through real agents in network namespaces: pings and bulk transfers.

A pair and a full mesh of three, each over an IPv4 and over an IPv6 underlay,
with hop_interval 1 s: pings every 10 ms across more than 20 hops lose nothing
(so the hop edges, where sockets and keys change, drop no packet), and 50 MB of
random bytes per flow, paced to span more than 20 hops too, cross TCP with the
same sha256 at both ends, for inner IPv4 and inner IPv6 at once. Each test
prints what it measured (hops, pings, seconds) for the resolution note. The lab
(tests/netns.py) draws the topology.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.netns import Host, Lab, require_netns
from tests.netns_results import PingResult, ping_stop

pytestmark = pytest.mark.netns

HOPS_MIN = 20
PING_INTERVAL_S = 0.01
# Pings run for a time, not a count: on a loaded machine ping sends less often
# than asked, and a count would stretch the test. 21.5 s holds at least 20 hop
# edges of every pair, even without the last replies, which may be in the air
# when ping stops.
PING_S = 21.5
PING_IN_FLIGHT = 10
# Fewer pings than this in PING_S would leave hop edges unprobed (50 ms apart).
PINGS_MIN = 400
TRANSFER_BYTES = 50_000_000
# Paced so that each transfer spans more than HOPS_MIN hop edges (about 21 s).
TRANSFER_RATE_BYTES_S = TRANSFER_BYTES // 21
TRANSFER_TIMEOUT_S = 240


def start_lab(lab: Lab) -> None:
    """Start every agent and wait until each pair carries both inner families."""
    lab.start_all()
    for src in lab.hosts:
        for name in lab.peers[src.name]:
            for family in (4, 6):
                lab.wait_reachable(src, lab[name].tunnel(family))


Flow = tuple[Host, Host, int]  # (source, destination, inner IP version)


def epochs_now(lab: Lab) -> dict[tuple[str, str], int]:
    """Each pair's current epoch, by (host, peer), as `hopr-tunnel check` says."""
    return {
        (h.name, p["name"]): p["epoch"]
        for h in lab.hosts
        for p in lab.check(h)["peers"]
    }


def phases(lab: Lab) -> dict[tuple[str, str], int]:
    """Each pair's hop phase in ms, by (host, peer)."""
    return {
        (h.name, p["name"]): p["phase_ms"]
        for h in lab.hosts
        for p in lab.check(h)["peers"]
    }


def ping_flows(
    lab: Lab, flows: list[Flow], duration_s: float
) -> dict[Flow, PingResult]:
    """Ping along every flow at once for duration_s."""
    procs = {
        (s, d, f): lab.ping_start(s, d.tunnel(f), 10**6, PING_INTERVAL_S)
        for s, d, f in flows
    }
    time.sleep(duration_s)
    return {flow: ping_stop(proc) for flow, proc in procs.items()}


def loss_report(result: PingResult, what: str, phase_ms: int) -> str:
    """Which pings got lost, and how far into its epoch (1 s) each was sent."""
    missing = result.missing_seqs(PING_IN_FLIGHT)
    if not result.replies:
        return f"{what}: no reply at all"
    (t0, seq0), (t1, seq1) = result.replies[0], result.replies[-1]
    per_seq_s = (t1 - t0) / max(seq1 - seq0, 1)
    into = [((t0 + (s - seq0) * per_seq_s) * 1000 - phase_ms) % 1000 for s in missing]
    where = [f"seq {s} at {ms:.0f} ms" for s, ms in zip(missing, into, strict=True)]
    return f"{what}: lost {len(missing)} of {result.transmitted}: " + ", ".join(
        where[:40]
    )


def assert_every_ping_answered_once(lab: Lab, results: dict[Flow, PingResult]) -> None:
    sparse = [r.transmitted for r in results.values() if r.transmitted < PINGS_MIN]
    assert not sparse, f"ping sent too few to probe every hop edge: {sparse}"
    phase_ms = phases(lab)
    losses = [
        loss_report(r, f"{s.name}->{d.name} inner IPv{f}", phase_ms[s.name, d.name])
        for (s, d, f), r in results.items()
        if r.missing_seqs(PING_IN_FLIGHT)
    ]
    assert not losses, "\n".join(losses)
    duplicated = [
        f"{s.name}->{d.name}" for (s, d, _), r in results.items() if r.duplicates
    ]
    assert not duplicated, f"replies arrived twice on {duplicated}"


def ping_across_hops(lab: Lab, flows: list[Flow]) -> None:
    """Ping every flow across HOPS_MIN hops; not one reply may be missing."""
    before = epochs_now(lab)
    results = ping_flows(lab, flows, PING_S)
    after = epochs_now(lab)
    hops = min(after[pair] - before[pair] for pair in before)
    sent = sum(r.transmitted for r in results.values())
    lost = sum(len(r.missing_seqs(PING_IN_FLIGHT)) for r in results.values())
    print(f"pings: {len(flows)} flows, {hops} hops, {sent} sent, {lost} lost")
    assert hops >= HOPS_MIN, f"only {hops} hops while pinging"
    assert_every_ping_answered_once(lab, results)


def transfer_across_hops(lab: Lab, flows: list[Flow]) -> None:
    """TRANSFER_BYTES along every flow at once, paced across HOPS_MIN hops."""
    before = epochs_now(lab)
    started = time.monotonic()
    transfers = [
        lab.transfer_start(
            s, d, f, TRANSFER_BYTES, port=5201 + i, rate_bytes_s=TRANSFER_RATE_BYTES_S
        )
        for i, (s, d, f) in enumerate(flows)
    ]
    for transfer in transfers:
        left_s = TRANSFER_TIMEOUT_S - (time.monotonic() - started)
        result = transfer.result(max(left_s, 1))
        assert_same_bytes(result)
    after = epochs_now(lab)
    hops = min(after[pair] - before[pair] for pair in before)
    print(
        f"transfers: {len(flows)} x {TRANSFER_BYTES} B intact, {hops} hops, "
        f"{time.monotonic() - started:.1f} s"
    )
    assert hops >= HOPS_MIN, f"only {hops} hops while transferring"


def assert_same_bytes(result: dict[str, Any]) -> None:
    sent, received = result["sent"], result["received"]
    assert received["bytes"] == sent["bytes"] == TRANSFER_BYTES
    assert received["sha256"] == sent["sha256"]


@pytest.mark.parametrize("underlay", [4, 6], ids=["underlay-v4", "underlay-v6"])
def test_pair_loses_no_ping_across_20_hops(underlay: int) -> None:
    require_netns()
    with Lab(2, underlay=underlay, hop_interval="1s") as lab:
        start_lab(lab)
        a, b = lab.hosts
        ping_across_hops(lab, [(a, b, 4), (b, a, 6)])


@pytest.mark.parametrize("underlay", [4, 6], ids=["underlay-v4", "underlay-v6"])
def test_pair_carries_50mb_over_tcp_intact_across_20_hops(underlay: int) -> None:
    require_netns()
    with Lab(2, underlay=underlay, hop_interval="1s") as lab:
        start_lab(lab)
        a, b = lab.hosts
        transfer_across_hops(lab, [(a, b, 4), (b, a, 6)])


@pytest.mark.parametrize("underlay", [4, 6], ids=["underlay-v4", "underlay-v6"])
def test_mesh_of_three_loses_no_ping_across_20_hops(underlay: int) -> None:
    require_netns()
    with Lab(3, underlay=underlay, hop_interval="1s") as lab:
        start_lab(lab)
        a, b, c = lab.hosts
        ping_across_hops(lab, [(a, b, 4), (b, c, 6), (c, a, 4)])


@pytest.mark.parametrize("underlay", [4, 6], ids=["underlay-v4", "underlay-v6"])
def test_mesh_of_three_carries_50mb_on_every_pair_intact_across_20_hops(
    underlay: int,
) -> None:
    require_netns()
    with Lab(3, underlay=underlay, hop_interval="1s") as lab:
        start_lab(lab)
        a, b, c = lab.hosts
        transfer_across_hops(lab, [(a, b, 4), (b, c, 6), (c, a, 6)])
