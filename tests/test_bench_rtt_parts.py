"""bench/rtt_parts.py splits an idle ping's round trip into its hops."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from tests.netns import require_netns

TOOL = Path(__file__).resolve().parent.parent / "bench" / "rtt_parts.py"
sys.path.insert(0, str(TOOL.parent))

import rtt_parts  # noqa: E402

# Capture points of one ping, in µs after its request left a's TUN.
USUAL = (0, 30, 35, 80, 95, 120, 126, 170)
MEASURED = (0, 40, 47, 100, 125, 160, 166, 230)
REQUEST, REPLY = 8, 0
ENDS = {
    REQUEST: ("100.64.0.1", "100.64.0.2"),
    REPLY: ("100.64.0.2", "100.64.0.1"),
    "a": ("198.18.0.1", "198.18.0.2"),
    "b": ("198.18.0.2", "198.18.0.1"),
}


def echo(icmp_type: int, seq: int, t: float) -> Packet:
    """An echo as read from a TUN capture (raw IP), at time t."""
    src, dst = ENDS[icmp_type]
    p = IP(bytes(IP(src=src, dst=dst) / ICMP(type=icmp_type, id=77, seq=seq)))
    p.time = t
    return p


def datagram(sender: str, t: float, size: int = 120) -> Packet:
    """A datagram as read from a veth capture (Ethernet), at time t."""
    src, dst = ENDS[sender]
    frame = Ether() / IP(src=src, dst=dst) / UDP(sport=21000, dport=22000)
    p = Ether(bytes(frame / Raw(bytes(size))))
    p.time = t
    return p


def ping(
    captures: dict[str, list[Packet]], seq: int, offsets_us: tuple[int, ...]
) -> None:
    """Add ping seq's packets to the captures, one per offset, in chain order."""
    points = [
        ("tun_a", partial(echo, REQUEST, seq)),
        ("ul_a", partial(datagram, "a")),
        ("ul_b", partial(datagram, "a")),
        ("tun_b", partial(echo, REQUEST, seq)),
        ("tun_b", partial(echo, REPLY, seq)),
        ("ul_b", partial(datagram, "b")),
        ("ul_a", partial(datagram, "b")),
        ("tun_a", partial(echo, REPLY, seq)),
    ]
    # Fewer offsets than points: the ping was lost after its last one.
    for (capture, make), us in zip(points, offsets_us, strict=False):
        captures[capture].append(make(seq * 0.01 + us / 1e6))


def test_each_hop_is_the_time_between_two_capture_points() -> None:
    captures: dict[str, list[Packet]] = {name: [] for name in rtt_parts.CAPTURES}
    for seq in range(1, rtt_parts.WARMUP + 1):
        ping(captures, seq, USUAL)
    ping(captures, 6, MEASURED)
    ping(captures, 7, USUAL)
    ping(captures, 8, USUAL[:4])  # b's kernel never answers this one
    # A keepalive from a between ping 6's request and its datagram.
    keepalive = [datagram("a", 0.06 + 10e-6, size=16) for _ in range(2)]
    captures["ul_a"].append(keepalive[0])
    captures["ul_b"].append(keepalive[1])

    measured = rtt_parts.hops(*(captures[name] for name in rtt_parts.CAPTURES))

    assert measured.dropped == 1
    assert measured.intervals == {
        "a: tun -> udp": [40.0, 30.0],
        "wire a->b": [7.0, 5.0],
        "b: udp -> tun": [53.0, 45.0],
        "b: kernel echo": [25.0, 15.0],
        "b: tun -> udp": [35.0, 25.0],
        "wire b->a": [6.0, 6.0],
        "a: udp -> tun": [64.0, 44.0],
        "round trip": [230.0, 170.0],
    }


@pytest.mark.netns
def test_the_tool_splits_real_hopr_pings(tmp_path: Path) -> None:
    require_netns("tcpdump")
    out = tmp_path / "parts.json"
    argv = [sys.executable, str(TOOL), "--contender", "hopr", "--pings", "12",
            "--interval", "0.01", "--json", str(out)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    hopr = json.loads(out.read_text())["contenders"]["hopr"]
    assert hopr["pings_used"] > 0
    round_trip = hopr["round trip"]["median_us"]
    for hop in rtt_parts.HOPS:
        assert hopr[hop]["median_us"] > 0, hop
        # Every ping's hop is part of its round trip, so its median is too.
        assert hopr[hop]["median_us"] <= round_trip, hop
    assert round_trip >= hopr["b: kernel echo"]["median_us"]
