"""What an observer on the underlay sees of a pair of real agents.

One capture per underlay family, taken on the hub's bridge (tests/netns.py)
while the pair exchanges pings and UDP datagrams that carry a marker, across
several hops of 1 s. From it: every datagram travels on the ports that
`hopr-tunnel check --json --at MS` gives for the epoch of its capture time; the
marker never appears in clear; no two datagrams begin with the same 8 bytes.
Then, on the live pair: ports of epochs that left the window are closed (a
datagram from the pair's exact old 4-tuple gets ICMP port unreachable), while
the current 4-tuple takes datagrams without an ICMP error.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.netns import Host, Lab, require_netns
from tests.netns_results import Datagram, ping_result, read_datagrams

pytestmark = pytest.mark.netns

MARKER = b"HoprInnerMarker!"  # 16 bytes: the longest pattern ping -p takes
CAPTURE_S = 6.0
# A datagram this close to a hop edge may carry either neighbouring epoch's ports:
# the sender's hop timer fires a little after the edge.
EDGE_MS = 50
UDP_MARKERS = 50


@dataclass
class Wire:
    lab: Lab
    datagrams: list[Datagram]
    pcap_bytes: bytes
    marked_pings: int
    marked_udp: int


@pytest.fixture(scope="module", params=[4, 6], ids=["underlay-v4", "underlay-v6"])
def wire(request: pytest.FixtureRequest) -> Iterator[Wire]:
    require_netns("tcpdump")
    with Lab(2, underlay=request.param, hop_interval="1s") as lab:
        lab.start_all()
        a, b = lab.hosts
        for family in (4, 6):
            lab.wait_reachable(a, b.tunnel(family))
        yield capture_marked_traffic(lab, a, b)


def capture_marked_traffic(lab: Lab, a: Host, b: Host) -> Wire:
    count = int(CAPTURE_S / 0.02)
    sink = lab.serve(
        b, "udp-sink", bind=b.tunnel_v6, port=7000, marker_hex=MARKER.hex()
    )
    with lab.capture("wire") as pcap:
        pings = [
            lab.ping_start(a, b.tunnel(f), count, 0.02, MARKER.hex()) for f in (4, 6)
        ]
        lab.tool(
            a,
            "udp-send",
            to=b.tunnel_v6,
            port=7000,
            marker_hex=MARKER.hex(),
            count=UDP_MARKERS,
            interval_s=0.05,
        )
        replies = sum(ping_result(p, 60).received for p in pings)
    sink.terminate()
    out, _ = sink.communicate(10)
    marked_udp = json.loads(out.splitlines()[-1])["marked"]
    datagrams = [d for d in read_datagrams(pcap) if _between(d, lab)]
    return Wire(lab, datagrams, pcap.read_bytes(), replies, marked_udp)


def _between(d: Datagram, lab: Lab) -> bool:
    agents = {h.underlay(lab.family) for h in lab.hosts}
    return d.src in agents and d.dst in agents


# -- The schedule, as `hopr-tunnel check` prints it --------------------------------


class Schedule:
    """One side's ports per epoch, asked of `hopr-tunnel check --at` and cached."""

    def __init__(self, lab: Lab, host: Host) -> None:
        self.lab, self.host = lab, host
        pair = lab.check(host)["peers"][0]
        self.hop_ms, self.phase_ms = pair["hop_ms"], pair["phase_ms"]
        self.ports: dict[int, tuple[int, int]] = {}

    def epoch_at(self, t_ms: float) -> int:
        return int((t_ms - self.phase_ms) // self.hop_ms)

    def start_ms(self, epoch: int) -> int:
        return epoch * self.hop_ms + self.phase_ms

    def ports_of(self, epoch: int) -> tuple[int, int]:
        """(our port, peer's port) in epoch; one `check` run covers two epochs."""
        if epoch not in self.ports:
            report = self.lab.check(self.host, self.start_ms(epoch) + self.hop_ms // 2)
            pair = report["peers"][0]
            assert pair["epoch"] == epoch
            nxt = pair["next_epoch"]
            self.ports[epoch] = (pair["ports"]["ours"], pair["ports"]["theirs"])
            self.ports[epoch + 1] = (nxt["ports"]["ours"], nxt["ports"]["theirs"])
        return self.ports[epoch]

    def epochs_for(self, t_ms: float) -> list[int]:
        """The epoch of t_ms, and its neighbour when t_ms is at a hop edge."""
        epoch = self.epoch_at(t_ms)
        into_ms = t_ms - self.start_ms(epoch)
        epochs = [epoch]
        if into_ms < EDGE_MS:
            epochs.append(epoch - 1)
        if into_ms > self.hop_ms - EDGE_MS:
            epochs.append(epoch + 1)
        return epochs


# -- Tests -------------------------------------------------------------------------


def test_every_datagram_uses_the_ports_check_gives_for_its_epoch(wire: Wire) -> None:
    lab = wire.lab
    schedules = {h.underlay(lab.family): Schedule(lab, h) for h in lab.hosts}
    wrong = []
    for d in wire.datagrams:
        sender = schedules[d.src]
        epochs = sender.epochs_for(d.time_s * 1000)
        if (d.sport, d.dport) not in [sender.ports_of(n) for n in epochs]:
            expected = {n: sender.ports_of(n) for n in epochs}
            wrong.append(
                f"{d.time_s:.3f} {d.src}:{d.sport} -> {d.dst}:{d.dport}, "
                f"schedule {expected}"
            )
    hops = {schedules[d.src].epoch_at(d.time_s * 1000) for d in wire.datagrams}
    assert len(hops) >= CAPTURE_S - 1, f"capture spans only epochs {sorted(hops)}"
    assert not wrong, f"{len(wrong)} of {len(wire.datagrams)} off schedule:\n" + (
        "\n".join(wrong[:20])
    )


def test_no_datagram_carries_the_inner_payload_in_clear(wire: Wire) -> None:
    assert wire.marked_pings > 0 and wire.marked_udp == UDP_MARKERS, (
        "the marked traffic did not cross the tunnel, so the capture proves nothing"
    )
    assert len(wire.datagrams) >= wire.marked_pings
    assert MARKER not in wire.pcap_bytes
    assert MARKER[:8] not in wire.pcap_bytes


def test_no_two_datagrams_share_their_first_8_bytes(wire: Wire) -> None:
    heads = Counter(d.payload[:8] for d in wire.datagrams)
    repeated = {head.hex(): n for head, n in heads.items() if n > 1}
    assert len(wire.datagrams) > 100
    assert not repeated, f"repeated first 8 bytes: {repeated}"


def test_ports_that_left_the_window_are_closed(wire: Wire) -> None:
    lab = wire.lab
    a, b = lab.hosts
    schedule = Schedule(lab, b)
    soon = schedule.epoch_at(time.time() * 1000)
    for epoch in range(soon - 7, soon + 6):  # ask `check` before the clock matters
        schedule.ports_of(epoch)
    now = wait_mid_epoch(schedule)
    window = {schedule.ports_of(n)[0] for n in range(now - 1, now + 3)}
    old = [n for n in range(now - 6, now - 1) if schedule.ports_of(n)[0] not in window]
    pairs = [schedule.ports_of(n)[::-1] for n in [now, *old]]  # from a's side
    probes = ",".join(f"{s}:{d}" for s, d in pairs)
    result = lab.tool(
        a,
        "udp-probe",
        bind=a.underlay(lab.family),
        to=b.underlay(lab.family),
        wait_s=0.3,
        pairs=probes,
    )
    result = result["results"]
    assert len(old) >= 3, "too few old epochs with a port of their own"
    # The current 4-tuple is open: silence, or the receiver's hello back to the
    # probe's (shared) port when it took the probe for data of a lost session.
    assert result[0][2] in ("silent", "reply"), f"current 4-tuple closed: {result[0]}"
    not_closed = [r for r in result[1:] if r[2] != "refused"]
    assert not not_closed, f"old ports still open (epoch now {now}): {not_closed}"


def wait_mid_epoch(schedule: Schedule) -> int:
    """Wait until at least 300 ms into an epoch with 600 ms left; that epoch."""
    while True:
        now_ms = time.time() * 1000
        epoch = schedule.epoch_at(now_ms)
        into_ms = now_ms - schedule.start_ms(epoch)
        if 300 <= into_ms <= schedule.hop_ms - 600:
            return epoch
        time.sleep(0.05)
