"""`hopr-tunnel demo`: three hosts hop and ping, then nothing of it is left.

The demo runs as a user runs it, as a subprocess with stdout not a terminal, so
it prints one line per pair per refresh:

    [  3.2s] a-b epoch 1796328607 ports 26384->27482 next-hop 477ms hops 1
             replies 5 lost 0 rtt 1.24ms sent 744 B received 744 B session 1s

(one line each). Leftovers are looked for by the names the demo gives what it
makes, all carrying its pid (hopr-demo-<pid>-*), and by the PIDs it printed.
"""

from __future__ import annotations

import re
import signal
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import main
from tests.netns import HOPR, require_netns

PAIRS = ("a-b", "a-c", "b-c")
_PAIR_LINE = re.compile(
    r"\] (?P<pair>[a-c]-[a-c]) epoch (?P<epoch>\d+) ports (?P<ports>\d+->\d+) "
    r".* replies (?P<replies>\d+) lost (?P<lost>\d+) "
)
_PIDS = re.compile(r"^(?:agents|pings): (.*)$", re.MULTILINE)
_PID = re.compile(r"pid (\d+)")
RUN_TIMEOUT_S = 90


def run_demo(*options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HOPR, "demo", *options],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )


def pairs_seen(output: str) -> dict[str, list[re.Match[str]]]:
    seen = defaultdict(list)
    for line in _PAIR_LINE.finditer(output):
        seen[line["pair"]].append(line)
    return seen


def printed_pids(output: str) -> list[int]:
    return [int(pid) for line in _PIDS.findall(output) for pid in _PID.findall(line)]


def leftovers(demo_pid: int, pids: list[int]) -> list[str]:
    """Anything of the demo's still on this machine, described."""
    tag = f"hopr-demo-{demo_pid}-"
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    found = [f"namespace {ns}" for ns in listed.stdout.split() if ns.startswith(tag)]
    found += [f"directory {p}" for p in Path(tempfile.gettempdir()).glob(f"{tag}*")]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone while we looked
        if tag in cmdline or (int(proc.name) in pids and "ping" in cmdline):
            found.append(f"process {proc.name}: {cmdline}")
    return found


@pytest.mark.netns
def test_demo_shows_every_pair_hopping_and_answering_then_leaves_nothing() -> None:
    require_netns()
    done = run_demo("--duration", "8", "--hop", "1s")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    seen = pairs_seen(done.stdout)
    for pair in PAIRS:
        lines = seen[pair]
        assert len({m["epoch"] for m in lines}) >= 2, f"{pair} never hopped:\n{output}"
        assert len({m["ports"] for m in lines}) >= 2, f"{pair} kept its ports"
        assert int(lines[-1]["replies"]) > 0, f"{pair} got no ping reply:\n{output}"
    pids = printed_pids(done.stdout)
    assert len(pids) == 6, f"expected 3 agents and 3 pings:\n{output}"
    assert leftovers(_demo_pid(done.stdout), pids) == []


@pytest.mark.netns
def test_ctrl_c_stops_the_demo_and_leaves_nothing() -> None:
    require_netns()
    proc = subprocess.Popen(
        [*HOPR, "demo", "--hop", "1s"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        head = _read_until_replies(proc)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        rest, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = head + rest
    assert proc.returncode == 0, output
    assert "removed the namespaces" in rest, output
    assert leftovers(proc.pid, printed_pids(output)) == [], output


def test_demo_without_root_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.demo.os.geteuid", lambda: 1000)
    result = CliRunner().invoke(main, ["demo", "--duration", "1"])
    assert result.exit_code == 2
    assert "sudo hopr-tunnel demo" in result.output


def test_hop_below_one_second_is_refused() -> None:
    result = CliRunner().invoke(main, ["demo", "--hop", "500ms"])
    assert result.exit_code == 2
    assert "--hop" in result.output


def _read_until_replies(proc: subprocess.Popen[str]) -> str:
    """The demo's output up to its first pair line with ping replies."""
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        match = _PAIR_LINE.search(line)
        if match and int(match["replies"]) > 0:
            return "".join(lines)
    raise AssertionError("the demo ended before any ping reply:\n" + "".join(lines))


def _demo_pid(output: str) -> int:
    match = re.search(r"hopr-demo-(\d+)-a", output)
    assert match, output
    return int(match[1])
