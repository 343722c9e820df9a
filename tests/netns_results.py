"""What the netns tests read back: ping output, captures, transfers, `show`.

Parsers for the output of the tools the lab (tests/netns.py) runs in its
namespaces, kept apart from the lab itself so each file stays one concern.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PING_REPLY = re.compile(r"^\[(\d+\.\d+)\].*icmp_seq=(\d+)", re.MULTILINE)
_PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")


@dataclass
class PingResult:
    transmitted: int
    received: int
    replies: list[tuple[float, int]]  # (unix time of the reply, icmp_seq)
    duplicates: int
    output: str

    @property
    def lost(self) -> int:
        return self.transmitted - self.received

    def missing_seqs(self, in_flight: int = 0) -> list[int]:
        """Unanswered seqs, but for the last `in_flight` (stopped mid-air)."""
        seen = {seq for _, seq in self.replies}
        last = self.transmitted - in_flight
        return [s for s in range(1, last + 1) if s not in seen]


@dataclass(frozen=True)
class Datagram:
    """One captured underlay UDP datagram."""

    time_s: float
    src: str
    dst: str
    sport: int
    dport: int
    payload: bytes


@dataclass
class Transfer:
    sink: subprocess.Popen[str]
    source: subprocess.Popen[str]
    nbytes: int

    def result(self, timeout_s: float = 120) -> dict[str, Any]:
        """Both ends' results: {"sent": {...}, "received": {...}}."""
        out_source, _ = self.source.communicate(timeout=timeout_s)
        out_sink, _ = self.sink.communicate(timeout=timeout_s)
        return {
            "sent": last_json(out_source, "tcp-source"),
            "received": last_json(out_sink, "tcp-sink"),
        }


def ping_result(proc: subprocess.Popen[str], timeout_s: float) -> PingResult:
    """Wait for a ping to end and read its replies and summary."""
    out, _ = proc.communicate(timeout=timeout_s)
    summary = _PING_SUMMARY.search(out)
    assert summary, f"no ping summary in:\n{out[-2000:]}"
    replies = [(float(t), int(s)) for t, s in _PING_REPLY.findall(out)]
    dups = len(re.findall(r"\(DUP!\)", out))
    return PingResult(int(summary[1]), int(summary[2]), replies, dups, out)


def ping_stop(proc: subprocess.Popen[str]) -> PingResult:
    """Stop a running ping (SIGINT: it prints its summary) and read it."""
    proc.send_signal(signal.SIGINT)
    return ping_result(proc, timeout_s=10)


def read_datagrams(pcap: Path) -> list[Datagram]:
    """The UDP datagrams (IPv4 and IPv6) of a capture, in capture order."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.utils import PcapReader

    found = []
    with PcapReader(str(pcap)) as reader:
        for pkt in reader:
            net = pkt.getlayer(IP) or pkt.getlayer(IPv6)
            udp = pkt.getlayer(UDP)
            if net is None or udp is None:
                continue
            found.append(
                Datagram(
                    float(pkt.time),
                    str(net.src),
                    str(net.dst),
                    int(udp.sport),
                    int(udp.dport),
                    bytes(udp.payload),
                )
            )
    return found


def peer_status(show: dict[str, Any], name: str) -> dict[str, Any]:
    """The entry for peer `name` in `show --json` output."""
    peers = show.get("peers")
    if peers is None and "interfaces" in show:
        peers = [p for i in show["interfaces"] for p in i.get("peers", [])]
    if isinstance(peers, dict):
        return peers[name]  # type: ignore[no-any-return]
    for peer in peers or []:
        if peer.get("name") == name:
            return peer  # type: ignore[no-any-return]
    raise AssertionError(f"no peer {name!r} in show output: {show}")


def drops(show: dict[str, Any], name: str) -> dict[str, int]:
    return dict(peer_status(show, name).get("drops", {}))


def last_json(out: str, what: str) -> Any:
    lines = out.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise AssertionError(f"{what} gave no result:\n{out[-2000:]}") from None
