"""Real agents under replay, restarts, mismatched configs and reloads.

- Datagrams captured on the underlay and sent again into the live ports are
  dropped and counted in `show --json`; captured before the receiver restarted,
  they never open after it.
- An agent restarted mid-transfer (SIGTERM, or kill -9) carries traffic again
  within 2 s of logging ready, with nothing done by hand; SIGTERM or SIGINT
  leaves no interface, route, socket, reserved port range or control socket.
- A pair whose configs disagree on a key, the psk, hop_interval or the cipher
  passes nothing, and `show --json` says why: hellos sent, none accepted, a hint.
- SIGHUP with a config that fails validation is refused with the reason (file
  and field) and not one ping is lost; SIGHUP with a third peer added to the
  config neither interrupts a running transfer to the second peer nor delays
  it, and makes the third reachable.

The lab (tests/netns.py) draws the topology.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any

import pytest

from tests.netns import CONTROL_DIR, Host, Lab, require_netns
from tests.netns_results import (
    Datagram,
    drops,
    peer_status,
    ping_result,
    ping_stop,
    read_datagrams,
)
from tunnel import keys

pytestmark = pytest.mark.netns

MARKER = b"replay-me-marker"
MARKED = 30
RESUME_LIMIT_S = 2.0
STALL_LIMIT_S = 1.0


# -- Replay ------------------------------------------------------------------------


def send_marked(lab: Lab, a: Host, b: Host, port: int = 7000) -> int:
    """Send MARKED datagrams from a to b over the tunnel; how many b received."""
    sink = listen_for_marked(lab, b, port)
    lab.tool(
        a,
        "udp-send",
        to=b.tunnel_v4,
        port=port,
        marker_hex=MARKER.hex(),
        count=MARKED,
        interval_s=0.01,
    )
    return stop_sink(sink)


def listen_for_marked(lab: Lab, b: Host, port: int = 7000) -> subprocess.Popen[str]:
    return lab.serve(
        b, "udp-sink", bind=b.tunnel_v4, port=port, marker_hex=MARKER.hex()
    )


def stop_sink(sink: subprocess.Popen[str]) -> int:
    time.sleep(0.3)  # what is in flight lands first
    sink.terminate()
    out, _ = sink.communicate(10)
    return int(json.loads(out.splitlines()[-1])["marked"])


def capture_marked(lab: Lab, a: Host, b: Host) -> list[Datagram]:
    """The underlay datagrams from a to b while a sends marked datagrams to b."""
    src, dst = a.underlay(lab.family), b.underlay(lab.family)
    with lab.capture("marked", f"udp and src host {src} and dst host {dst}") as pcap:
        received = send_marked(lab, a, b)
    assert received == MARKED, f"only {received} of {MARKED} crossed before replay"
    return [d for d in read_datagrams(pcap) if d.src == src and d.dst == dst]


def replay(lab: Lab, a: Host, b: Host, datagrams: list[Datagram]) -> None:
    """Send the captured payloads again, from a's underlay address and ports."""
    items = [[d.sport, d.dport, d.payload.hex()] for d in datagrams]
    path = lab.tmp / "replay.json"
    path.write_text(json.dumps(items))
    lab.tool(
        a, "raw-send", src=a.underlay(lab.family), dst=b.underlay(lab.family), file=path
    )
    time.sleep(0.3)


def assert_in_window(lab: Lab, b: Host, datagrams: list[Datagram]) -> None:
    """The replay went to live ports: their epochs are still in b's window."""
    pair = lab.check(b)["peers"][0]
    hop_ms, phase_ms, now = pair["hop_ms"], pair["phase_ms"], pair["epoch"]
    oldest = min(int((d.time_s * 1000 - phase_ms) // hop_ms) for d in datagrams)
    assert oldest >= now - 1, "the replay came too late to reach live ports"


def total(counts: dict[str, int]) -> int:
    return sum(counts.values())


def test_replayed_datagrams_are_dropped_and_counted() -> None:
    require_netns("tcpdump")
    with Lab(2, hop_interval="10s") as lab:
        a, b = lab.hosts
        lab.start_all()
        lab.wait_reachable(a, b.tunnel_v4)
        captured = capture_marked(lab, a, b)
        before = drops(lab.show(b), "a")
        sink = listen_for_marked(lab, b)
        replay(lab, a, b, captured)
        assert_in_window(lab, b, captured)
        assert stop_sink(sink) == 0, "a replayed datagram was delivered"
        after = drops(lab.show(b), "a")
        assert after.get("replay", 0) - before.get("replay", 0) >= MARKED, after
        assert total(after) - total(before) >= len(captured), (before, after)


def test_datagrams_captured_before_a_receiver_restart_never_open_after_it() -> None:
    require_netns("tcpdump")
    with Lab(2, hop_interval="10s") as lab:
        a, b = lab.hosts
        lab.start_all()
        lab.wait_reachable(a, b.tunnel_v4)
        captured = capture_marked(lab, a, b)
        lab.restart(b)
        lab.wait_reachable(a, b.tunnel_v4)
        before = drops(lab.show(b), "a")
        sink = listen_for_marked(lab, b)
        replay(lab, a, b, captured)
        assert_in_window(lab, b, captured)
        assert stop_sink(sink) == 0, "a datagram from before the restart opened"
        after = drops(lab.show(b), "a")
        assert total(after) - total(before) >= len(captured), (before, after)
        assert send_marked(lab, a, b) == MARKED, "the listener heard nothing new"


# -- Restart -----------------------------------------------------------------------


def first_reply_after(proc: subprocess.Popen[str], t: float) -> float | None:
    result = ping_stop(proc)
    later = [when for when, _ in result.replies if when > t]
    return min(later) if later else None


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"]
)
def test_traffic_resumes_within_2s_of_a_restarted_agent_being_ready(sig: int) -> None:
    require_netns()
    with Lab(2, hop_interval="1s") as lab:
        a, b = lab.hosts
        lab.start_all()
        lab.wait_reachable(a, b.tunnel_v4)
        transfer = lab.transfer_start(a, b, 4, 6_000_000, rate_bytes_s=1_000_000)
        ping = lab.ping_start(a, b.tunnel_v4, 100_000, 0.05)
        time.sleep(2)
        assert transfer.source.poll() is None, "the transfer ended before the restart"
        ready_at = lab.restart(b, sig)
        time.sleep(RESUME_LIMIT_S + 1)
        first = first_reply_after(ping, ready_at)
        assert first is not None, "no reply after the restart"
        print(f"restart: first reply {first - ready_at:.3f} s after ready")
        assert first - ready_at < RESUME_LIMIT_S, (
            f"resumed {first - ready_at:.2f} s late"
        )
        result = transfer.result(120)
        assert result["received"]["sha256"] == result["sent"]["sha256"]


def leftovers(lab: Lab, host: Host) -> dict[str, Any]:
    """What of host's agent is still in its namespace and the control directory."""
    link = lab.run(host, "ip", "link", "show", "dev", host.ifname, check=False)
    routes = (
        lab.run(host, "ip", "-4", "route").stdout
        + lab.run(host, "ip", "-6", "route").stdout
    )
    reserved = lab.run(host, "sysctl", "-n", "net.ipv4.ip_local_reserved_ports")
    found = {
        "interface": link.returncode == 0,
        "routes": [
            r for r in routes.splitlines() if r.startswith(("100.64.", "fd00:64"))
        ],
        "udp sockets": lab.run(host, "ss", "-uanH").stdout.split("\n")[:-1],
        "reserved ports": reserved.stdout.strip(),
        "control socket": [p.name for p in CONTROL_DIR.glob(f"{host.ifname}.*")],
    }
    return {what: value for what, value in found.items() if value}


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"]
)
def test_a_stop_signal_leaves_no_interface_route_socket_or_reserved_port(
    sig: int,
) -> None:
    require_netns()
    with Lab(2, hop_interval="1s") as lab:
        a, b = lab.hosts
        lab.start_all()
        lab.wait_reachable(a, b.tunnel_v4)
        assert lab.stop(a, sig) == 0
        assert leftovers(lab, a) == {}


# -- Mismatched configs ------------------------------------------------------------


def other_psk(lab: Lab) -> str:
    path = lab.tmp / "other.psk"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(keys.encode_key(os.urandom(32)) + "\n")
    return path.name


MISMATCHES: dict[str, Any] = {
    "key": lambda lab: {"peer_fields": {"a": {"public_key": random_public_key()}}},
    "psk": lambda lab: {"peer_fields": {"a": {"psk_file": other_psk(lab)}}},
    "hop_interval": lambda lab: {"interface": {"hop_interval": "2s"}},
    "cipher": lambda lab: {"interface": {"cipher": "chacha20-poly1305"}},
}


def random_public_key() -> str:
    return keys.encode_key(keys.public_from_private(keys.generate_private()))


@pytest.mark.parametrize("what", list(MISMATCHES))
def test_a_mismatch_passes_nothing_and_show_names_the_cause(what: str) -> None:
    require_netns()
    with Lab(2, hop_interval="1s", psk=True) as lab:
        a, b = lab.hosts
        lab.write_config(b, **MISMATCHES[what](lab))
        lab.start_all()
        pings = [
            lab.ping_start(a, b.tunnel_v4, 30, 0.1),
            lab.ping_start(b, a.tunnel_v6, 30, 0.1),
        ]
        assert [ping_result(p, 30).received for p in pings] == [0, 0]
        for host, peer in ((a, "b"), (b, "a")):
            status = peer_status(lab.show(host), peer)
            assert status["hellos_sent"] >= 3, status
            assert status["hellos_accepted"] == 0, status
            assert status["rx_datagrams"] == 0, status
            assert status["hint"], status


# -- Reload ------------------------------------------------------------------------


def test_a_reload_that_fails_validation_is_refused_with_the_reason_and_no_loss() -> (
    None
):
    require_netns()
    with Lab(2, hop_interval="1s") as lab:
        a, b = lab.hosts
        lab.start_all()
        lab.wait_reachable(a, b.tunnel_v4)
        offset = a.log.stat().st_size
        ping = lab.ping_start(a, b.tunnel_v4, 100_000, 0.02)
        time.sleep(1)
        lab.write_config(a, interface={"hop_interval": "0.2s"})  # below 1 s
        lab.send_signal(a, signal.SIGHUP)
        time.sleep(2)
        result = ping_stop(ping)
        refused = [
            line
            for line in lab.log_text(a, offset).splitlines()
            if "reload refused" in line
        ]
        assert len(refused) == 1, lab.log_text(a, offset)
        assert " ERROR " in refused[0] and str(a.config) in refused[0], refused
        assert "interface.hop_interval" in refused[0], refused
        assert result.missing_seqs(in_flight=5) == [], result.output[-2000:]
        (status,) = lab.show(a)["interfaces"]
        assert status["hop_ms"] == 1000, "the refused config was applied"


def test_sighup_adding_a_peer_keeps_a_running_transfer_and_reaches_the_new_peer() -> (
    None
):
    require_netns()
    with Lab(3, hop_interval="1s", peers={"a": ["b"], "b": ["a"], "c": ["a"]}) as lab:
        a, b, c = lab.hosts
        lab.start_all()
        lab.wait_reachable(a, b.tunnel_v4)
        transfer = lab.transfer_start(a, b, 4, 20_000_000, rate_bytes_s=4_000_000)
        time.sleep(1.5)
        assert transfer.source.poll() is None, "the transfer ended before the reload"
        lab.write_config(a, peers=["b", "c"])
        lab.send_signal(a, signal.SIGHUP)
        lab.wait_reachable(a, c.tunnel_v4, timeout_s=10)
        lab.wait_reachable(c, a.tunnel_v6, timeout_s=10)
        result = transfer.result(120)
        assert result["received"]["sha256"] == result["sent"]["sha256"]
        assert result["received"]["max_gap_s"] < STALL_LIMIT_S, result["received"]
        assert a.proc is not None and a.proc.poll() is None, "the agent exited"
