#!/usr/bin/env python3
"""Issue 5's same-run ratios from peers.sh JSON output (stdlib only).

    ratios.py [--project NAME] RUN.json...

For each run (one peers.sh --json file), from that run's own numbers only:

  tcp1 vs wireguard-go, tcp1 vs openvpn   project's single-stream TCP as a multiple
  tcp4 / tcp1                             the project's 4-stream vs single-stream
  rtt vs wireguard-go                     the project's median ping RTT over wg-go's
  CPU-s per Gbit                          daemon CPU seconds (both ends) per gigabit
                                          moved, tcp1 and tcp4, for every contender
  hop cost                                1 - tcp1(NAME-hop1s) / tcp1(NAME-hop60s),
                                          when the run has both (run.sh --hop-cost)

Each line says the issue's target and whether this run met it. Numbers are never
compared across runs: the machine is shared and its speed moves between runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

Summary = dict[str, dict[str, Any]]


def load(path: str) -> tuple[Summary, dict[str, Any]]:
    with open(path) as f:
        doc = json.load(f)
    return {s["contender"]: s for s in doc["summary"]}, doc.get("meta", {})


def value(run: Summary, name: str, key: str) -> float | None:
    row = run.get(name)
    if row is None or row.get("status") != "ok":
        return None
    v = row.get(key)
    return float(v) if isinstance(v, (int, float)) else None


def cpu_per_gbit(
    run: Summary, name: str, streams: int, duration_s: float
) -> float | None:
    """Daemon CPU seconds per gigabit moved in the tcpN run (None: in-kernel)."""
    cpu = value(run, name, f"dcpu{streams}_s")
    mbps = value(run, name, f"tcp{streams}_mbps")
    if cpu is None or not mbps or not duration_s:
        return None
    return cpu / (mbps * duration_s / 1000.0)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def verdict(met: bool | None) -> str:
    return "-" if met is None else ("met" if met else "NOT met")


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def report(path: str, project: str) -> list[str]:
    run, meta = load(path)
    duration_s = float(meta.get("duration_s") or 0)
    tcp1 = value(run, project, "tcp1_mbps")
    lines = [f"{path}  ({meta.get('date', '?')}, {duration_s:g} s per test)"]

    def target(
        label: str, v: float | None, spec: str, ok: bool | None, goal: str
    ) -> None:
        lines.append(
            f"  {label:<28} {fmt(v, spec):>8}   target {goal:<8} {verdict(ok)}"
        )

    vs_wg = ratio(tcp1, value(run, "wireguard-go", "tcp1_mbps"))
    vs_ovpn = ratio(tcp1, value(run, "openvpn", "tcp1_mbps"))
    tcp4_1 = ratio(value(run, project, "tcp4_mbps"), tcp1)
    rtt = ratio(
        value(run, project, "rtt_med_ms"), value(run, "wireguard-go", "rtt_med_ms")
    )
    target(
        "tcp1 vs wireguard-go",
        vs_wg,
        ".2f",
        None if vs_wg is None else vs_wg >= 5,
        ">= 5x",
    )
    target(
        "tcp1 vs openvpn",
        vs_ovpn,
        ".2f",
        None if vs_ovpn is None else vs_ovpn >= 4,
        ">= 4x",
    )
    target(
        "tcp4 / tcp1", tcp4_1, ".2f", None if tcp4_1 is None else tcp4_1 >= 1, ">= 1x"
    )
    target(
        "rtt median vs wireguard-go",
        rtt,
        ".2f",
        None if rtt is None else rtt <= 1,
        "<= 1x",
    )
    hop = hop_cost(run, project)
    target(
        "hop cost (1 s vs 60 s)",
        hop,
        ".1%",
        None if hop is None else hop <= 0.05,
        "<= 5%",
    )
    lines += cpu_table(run, project, duration_s)
    return lines


def hop_cost(run: Summary, project: str) -> float | None:
    fast = value(run, f"{project}-hop1s", "tcp1_mbps")
    slow = value(run, f"{project}-hop60s", "tcp1_mbps")
    return 1 - fast / slow if fast is not None and slow else None


def cpu_table(run: Summary, project: str, duration_s: float) -> list[str]:
    """CPU-s per Gbit of every contender, and whether the project's is lowest."""
    lines = ["  CPU-s per Gbit (daemons, both ends)      tcp1      tcp4   Mbit/s tcp1"]
    own = cpu_per_gbit(run, project, 1, duration_s)
    others = []
    for name in run:
        c1 = cpu_per_gbit(run, name, 1, duration_s)
        c4 = cpu_per_gbit(run, name, 4, duration_s)
        mbps = value(run, name, "tcp1_mbps")
        cells = f"{fmt(c1, '.3f'):>9} {fmt(c4, '.3f'):>9} {fmt(mbps, '.0f'):>8}"
        lines.append(f"    {name:<36} {cells}")
        if name != project and not name.startswith(project + "-") and c1 is not None:
            others.append(c1)
    lowest = None if own is None or not others else own < min(others)
    lines.append(f"  {'lowest CPU-s per Gbit (tcp1)':<28} {fmt(own, '.3f'):>8}   "
                 f"target {'lowest':<8} {verdict(lowest)}")  # fmt: skip
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="issue 5's ratios per peers.sh run")
    parser.add_argument("--project", default="hopr", help="contender name of ours")
    parser.add_argument("runs", nargs="+", help="peers.sh --json files")
    args = parser.parse_args(argv)
    for path in args.runs:
        print("\n".join(report(path, args.project)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
