"""bench/ratios.py reads a peers.sh JSON file and judges issue 5's targets."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import ratios  # noqa: E402


def row(
    name: str, tcp1: float, tcp4: float, rtt: float, cpu1: float | None
) -> dict[str, Any]:
    return {
        "contender": name, "status": "ok", "tcp1_mbps": tcp1, "tcp4_mbps": tcp4,
        "rtt_med_ms": rtt, "dcpu1_s": cpu1, "dcpu4_s": cpu1,
    }  # fmt: skip


def run_file(tmp_path: Path, rows: list[dict[str, Any]]) -> str:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"meta": {"duration_s": 10}, "summary": rows}))
    return str(path)


def line(lines: list[str], label: str) -> str:
    return next(x for x in lines if x.strip().startswith(label))


def test_throughput_multiples_are_taken_within_the_run(tmp_path: Path) -> None:
    path = run_file(tmp_path, [
        row("wireguard-go", 500, 500, 0.2, 10), row("openvpn", 400, 400, 0.3, 8),
        row("hopr", 3000, 3300, 0.1, 12),
    ])  # fmt: skip
    lines = ratios.report(path, "hopr")
    assert "6.00" in line(lines, "tcp1 vs wireguard-go")
    assert line(lines, "tcp1 vs wireguard-go").endswith(" met")
    assert "7.50" in line(lines, "tcp1 vs openvpn")
    assert "1.10" in line(lines, "tcp4 / tcp1")


def test_a_target_missed_says_not_met(tmp_path: Path) -> None:
    path = run_file(
        tmp_path,
        [row("wireguard-go", 500, 500, 0.2, 10), row("hopr", 1000, 900, 0.3, 9)],
    )
    lines = ratios.report(path, "hopr")
    assert line(lines, "tcp1 vs wireguard-go").endswith("NOT met")
    assert line(lines, "rtt median vs wireguard-go").endswith("NOT met")


def test_cpu_seconds_per_gigabit_moved(tmp_path: Path) -> None:
    # 1000 Mbit/s for 10 s is 10 Gbit; 5 CPU-s for it is 0.5 CPU-s per Gbit.
    path = run_file(
        tmp_path, [row("hopr", 1000, 1000, 0.1, 5), row("tinc", 500, 500, 0.1, 5)]
    )
    lines = ratios.report(path, "hopr")
    assert "0.500" in line(lines, "hopr")
    assert "1.000" in line(lines, "tinc")
    assert line(lines, "lowest CPU-s per Gbit").endswith(" met")


def test_hop_cost_compares_1s_with_60s_hops(tmp_path: Path) -> None:
    path = run_file(
        tmp_path,
        [row("hopr-hop1s", 960, 960, 0.1, 5), row("hopr-hop60s", 1000, 1000, 0.1, 5)],
    )
    lines = ratios.report(path, "hopr")
    assert "4.0%" in line(lines, "hop cost")
    assert line(lines, "hop cost").endswith(" met")
