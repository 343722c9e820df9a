"""The data path carries every packet whole, with and without the kernel's offloads.

Real agents (`hopr-tunnel up`, hop_interval 1 s) in network namespaces; the lab
(tests/netns.py) draws the topology. Where the kernel takes them, an agent moves
TCP and UDP superpackets through its TUN device and batches its datagrams with
UDP GSO and GRO; every test here must hold on that fast path and on the plain
one alike:

- TCP: three flows of 20 MB of random bytes, two one way and one back, arrive
  with the sha256 they left with, across several hops, with 0 %, 1 % and 5 % of
  the underlay's datagrams dropped at random in both directions
  (tests/netns_loss.py), inner and underlay IPv4 and IPv6; and one flow in
  88-byte segments, the smallest Linux allows.
- Sizes: an echo of every ICMP payload from 0 bytes to the largest that fits the
  tunnel MTU with DF set comes back exact, for IPv4 and IPv6.
- UDP: datagrams of every size, sent back to back from one socket, arrive each on
  its own, byte for byte: none merged, split, padded or duplicated; nearly all
  arrive. A UDP_SEGMENT send inside the tunnel (one UDP superpacket on the TUN)
  arrives as every one of its datagrams.
- Fallback: an agent whose kernel refuses TUNSETOFFLOAD, UDP_SEGMENT or UDP_GRO
  (a seccomp filter, tests/refuse_offloads.py) still carries traffic, including
  every datagram of a UDP superpacket from a fast peer, and says once at INFO
  that its data path is plain and what was refused; an agent whose kernel takes
  everything says once that its data path is fast.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.netns import Host, Lab, require_netns
from tests.netns_loss import add_loss, loss_counts
from tests.netns_results import Transfer, last_json

pytestmark = pytest.mark.netns

DATAGRAMS = Path(__file__).with_name("netns_datagrams.py")
REFUSE = Path(__file__).with_name("refuse_offloads.py")
TUNNEL_MTU = 1420  # the config's default, which the lab keeps
IP_HEADER = {4: 20, 6: 40}
L4_HEADER = 8  # ICMP echo and UDP alike
# Three flows at once, two one way and one back, so superpackets of different
# flows meet in both agents. Each is paced to last at least 4 s, so it spans at
# least 3 hop edges however fast the data path is; loss only slows it further.
FLOW_BYTES = 20_000_000
FLOW_RATE_BYTES_S = 5_000_000
HOPS_MIN = 3
TRANSFER_TIMEOUT_S = 180
TINY_MSS = 88  # TCP_MIN_MSS in Linux: TCP_MAXSEG refuses anything smaller
# 88-byte segments are slow on any path: fewer bytes, paced to span 3 hop edges.
TINY_BYTES = 8_000_000
TINY_RATE_BYTES_S = 2_000_000
FALLBACK_BYTES = 10_000_000
# Bursts of 256 datagrams into a socket buffer of 8 MB: only a full TUN queue or
# agent socket could drop one, and then seldom.
UDP_BURST = 256
UDP_ARRIVED_MIN = 0.98


def largest_payload(family: int) -> int:
    """The largest ICMP or UDP payload one packet in the tunnel carries."""
    return TUNNEL_MTU - IP_HEADER[family] - L4_HEADER


def start_lab(lab: Lab) -> None:
    """Start every agent and wait until each pair carries both inner families."""
    lab.start_all()
    for src in lab.hosts:
        for name in lab.peers[src.name]:
            for family in (4, 6):
                lab.wait_reachable(src, lab[name].tunnel(family), timeout_s=20)


def epoch(lab: Lab, host: Host) -> int:
    """The current epoch of host's first pair, as `hopr-tunnel check` says."""
    return int(lab.check(host)["peers"][0]["epoch"])


def datagram_argv(command: str, options: dict[str, Any]) -> list[str]:
    argv = [sys.executable, str(DATAGRAMS), command]
    for name, value in options.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    return argv


def datagram_tool(lab: Lab, host: Host, command: str, **options: Any) -> Any:
    """Run a netns_datagrams command to its end in host; its JSON result."""
    done = lab.run(host, *datagram_argv(command, options), timeout_s=120)
    return last_json(done.stdout, command)


def collect_start(
    lab: Lab, host: Host, family: int, port: int
) -> subprocess.Popen[str]:
    """Start recording the datagrams host receives on port; once it listens."""
    argv = datagram_argv("udp-collect", {"bind": host.tunnel(family), "port": port})
    proc = lab.popen(host, *argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "listening", f"udp-collect did not start: {line!r}"
    return proc


def collect_stop(proc: subprocess.Popen[str]) -> list[tuple[int, str]]:
    time.sleep(1.0)  # what is still in flight lands first
    proc.terminate()
    out, _ = proc.communicate(10)
    return [(n, h) for n, h in last_json(out, "udp-collect")["received"]]


def assert_only_whole_datagrams(
    sent: list[tuple[int, str]], received: list[tuple[int, str]]
) -> None:
    """Every datagram received is one that was sent, at most as often as sent."""
    unsent = Counter(received) - Counter(sent)
    assert not unsent, (
        f"{sum(unsent.values())} datagrams arrived that nobody sent (merged, "
        f"split or changed), by length: {sorted(n for n, _ in unsent)[:40]}"
    )


def assert_same_bytes(result: dict[str, Any], nbytes: int) -> None:
    sent, received = result["sent"], result["received"]
    assert received["bytes"] == sent["bytes"] == nbytes
    assert received["sha256"] == sent["sha256"]


def data_path_lines(lab: Lab, host: Host) -> list[str]:
    return [line for line in lab.log_text(host).splitlines() if "data path:" in line]


# -- TCP across hops, with loss ----------------------------------------------------


LOSS_CASES = [(0, 4, 4), (1, 4, 6), (1, 6, 4), (5, 6, 6), (5, 4, 4)]


@pytest.mark.parametrize(
    ("loss", "underlay", "inner"),
    LOSS_CASES,
    ids=[f"loss{p}-inner-v{i}-underlay-v{u}" for p, u, i in LOSS_CASES],
)
def test_tcp_flows_arrive_intact_across_hops_with_underlay_loss(
    loss: int, underlay: int, inner: int
) -> None:
    require_netns("nft")
    with Lab(2, underlay=underlay, hop_interval="1s") as lab:
        if loss:
            add_loss(lab, loss)
        start_lab(lab)
        a, b = lab.hosts
        first_epoch = epoch(lab, a)
        other = 6 if inner == 4 else 4
        flows = [(a, b, inner, 5201), (a, b, inner, 5202), (b, a, other, 5203)]
        transfers = [
            lab.transfer_start(s, d, f, FLOW_BYTES, port, FLOW_RATE_BYTES_S)
            for s, d, f, port in flows
        ]
        deadline = time.monotonic() + TRANSFER_TIMEOUT_S
        for transfer in transfers:
            left_s = max(deadline - time.monotonic(), 1)
            assert_same_bytes(transfer.result(left_s), FLOW_BYTES)
        hops = epoch(lab, a) - first_epoch
        assert hops >= HOPS_MIN, f"the transfers crossed only {hops} hops"
        if loss:
            assert_loss_happened(lab, loss)


def test_native_and_python_agents_carry_each_others_tcp_with_loss() -> None:
    """One agent seals and opens runs in C (tunnel/_fastpath.c), its peer in
    Python (HOPR_TUNNEL_NATIVE=0): the wire cannot tell them apart."""
    require_netns("nft")
    pytest.importorskip("tunnel._fastpath", reason="the extension is not built")
    with Lab(2, underlay=4, hop_interval="1s") as lab:
        add_loss(lab, 1)
        a, b = lab.hosts
        b.command_prefix = ("env", "HOPR_TUNNEL_NATIVE=0")
        start_lab(lab)
        first_epoch = epoch(lab, a)
        flows = [(a, b, 4, 5201), (b, a, 6, 5202), (a, b, 6, 5203)]
        transfers = [
            lab.transfer_start(s, d, f, FLOW_BYTES, port, FLOW_RATE_BYTES_S)
            for s, d, f, port in flows
        ]
        deadline = time.monotonic() + TRANSFER_TIMEOUT_S
        for transfer in transfers:
            assert_same_bytes(transfer.result(max(deadline - time.monotonic(), 1)),
                              FLOW_BYTES)  # fmt: skip
        assert epoch(lab, a) - first_epoch >= HOPS_MIN
        assert_loss_happened(lab, 1)
        (native_line,) = data_path_lines(lab, a)
        (python_line,) = data_path_lines(lab, b)
        assert "runs sealed and opened in native code" in native_line, native_line
        assert "in Python (HOPR_TUNNEL_NATIVE=0)" in python_line, python_line
        # a's receiving went through the native drain, b's could not
        ((native,), (python,)) = (lab.show(h)["interfaces"] for h in (a, b))
        assert native["native_rx_datagrams"] > FLOW_BYTES // 1500
        assert python["native_rx_datagrams"] == 0


def assert_loss_happened(lab: Lab, percent: int) -> None:
    """The bridge dropped about percent% of the tunnel's datagrams, both ways."""
    counts = loss_counts(lab)
    seen = sum(c.seen for c in counts.values())
    dropped = sum(c.dropped for c in counts.values())
    assert all(c.dropped for c in counts.values()), (
        f"a direction lost nothing: {counts}"
    )
    # Loose bounds: they check the rule, not the kernel's random numbers.
    assert seen * percent / 300 <= dropped <= seen * percent * 3 / 100, counts


# -- Packet sizes ------------------------------------------------------------------


@pytest.mark.parametrize("inner", [4, 6], ids=["inner-v4", "inner-v6"])
def test_echo_of_every_size_up_to_the_tunnel_mtu_comes_back_exact(inner: int) -> None:
    require_netns()
    # An IPv6 underlay leaves the least room: a full tunnel packet makes the
    # largest outer datagram.
    with Lab(2, underlay=6, hop_interval="1s") as lab:
        start_lab(lab)
        a, b = lab.hosts
        largest = largest_payload(inner)
        to = b.tunnel(inner)
        sweep = datagram_tool(lab, a, "icmp-sweep", to=to, max_size=largest)
        assert sweep["errors"] == {}, "the sender's kernel refused some sizes"
        assert sweep["wrong"] == [], "replies came back changed, by size"
        assert sweep["missing"] == [], "no reply, by payload size"
        assert sweep["answered"] == largest + 1
        # ping agrees: DF set, the largest passes and one byte more does not fit.
        ping = ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "-M", "do"]
        done = lab.run(a, *ping, "-s", str(largest), to, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        done = lab.run(a, *ping, "-s", str(largest + 1), to, check=False)
        assert done.returncode != 0, f"{largest + 1} bytes fit the tunnel MTU"


@pytest.mark.parametrize(
    ("underlay", "inner"), [(4, 6), (6, 4)], ids=["inner-v6", "inner-v4"]
)
def test_tcp_with_the_smallest_segments_arrives_intact(
    underlay: int, inner: int
) -> None:
    require_netns()
    with Lab(2, underlay=underlay, hop_interval="1s") as lab:
        start_lab(lab)
        a, b = lab.hosts
        to = b.tunnel(inner)
        first_epoch = epoch(lab, a)
        sink = lab.serve(b, "tcp-sink", bind=to, port=5201, mss=TINY_MSS)
        source = lab.tool_start(
            a,
            "tcp-source",
            to=to,
            port=5201,
            bytes=TINY_BYTES,
            rate_bytes_s=TINY_RATE_BYTES_S,
            mss=TINY_MSS,
        )
        result = Transfer(sink, source, TINY_BYTES).result(TRANSFER_TIMEOUT_S)
        assert_same_bytes(result, TINY_BYTES)
        assert result["received"]["mss"] <= TINY_MSS
        hops = epoch(lab, a) - first_epoch
        assert hops >= HOPS_MIN, f"the transfers crossed only {hops} hops"


# -- UDP ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("underlay", "inner"), [(4, 4), (6, 6)], ids=["v4-over-v4", "v6-over-v6"]
)
def test_udp_datagrams_of_every_size_arrive_each_whole(
    underlay: int, inner: int
) -> None:
    require_netns()
    with Lab(2, underlay=underlay, hop_interval="1s") as lab:
        start_lab(lab)
        a, b = lab.hosts
        collector = collect_start(lab, b, inner, 7100)
        to, largest = b.tunnel(inner), largest_payload(inner)
        burst = datagram_tool(
            lab, a, "udp-burst", to=to, port=7100, max_size=largest, burst=UDP_BURST
        )
        sent = [(n, h) for n, h in burst["sent"]]
        received = collect_stop(collector)
        assert_only_whole_datagrams(sent, received)
        assert len(received) >= UDP_ARRIVED_MIN * len(sent), (
            f"only {len(received)} of {len(sent)} datagrams arrived"
        )


def gso_sends(inner: int) -> str:
    """udp-gso's SEGMENT:COUNT:TAIL per send: at most 64 datagrams (the limit
    before Linux 6.9) and 64 KB each, from full-size down to 1-byte datagrams."""
    largest = largest_payload(inner)
    full = 60_000 // largest
    sends = [f"{largest}:{full}:100", f"{largest}:{full}:{largest - 1}"]
    return ",".join([*sends, "1000:60:1", "100:64:0", "16:63:15", "1:64:0"])


def assert_udp_segment_send_arrives_whole(
    lab: Lab, src: Host, dst: Host, inner: int, port: int
) -> None:
    collector = collect_start(lab, dst, inner, port)
    to = dst.tunnel(inner)
    result = datagram_tool(
        lab, src, "udp-gso", to=to, port=port, sends=gso_sends(inner)
    )
    sent = [(n, h) for n, h in result["sent"]]
    received = collect_stop(collector)
    assert_only_whole_datagrams(sent, received)
    missing = Counter(sent) - Counter(received)
    assert not missing, (
        f"{len(received)} of {len(sent)} datagrams arrived; missing, by length: "
        f"{sorted(n for n, _ in missing.elements())[:40]}"
    )


@pytest.mark.parametrize(
    ("underlay", "inner"), [(6, 4), (4, 6)], ids=["inner-v4", "inner-v6"]
)
def test_udp_segment_send_arrives_as_every_datagram(underlay: int, inner: int) -> None:
    require_netns()
    with Lab(2, underlay=underlay, hop_interval="1s") as lab:
        start_lab(lab)
        a, b = lab.hosts
        assert_udp_segment_send_arrives_whole(lab, a, b, inner, 7200)


# -- Fallback ----------------------------------------------------------------------

REFUSALS = {
    "tun": (["--tun"], ["TUNSETOFFLOAD"]),
    "udp": (["--udp"], ["UDP_SEGMENT", "UDP_GRO"]),
    "all": (["--tun", "--udp"], ["TUNSETOFFLOAD", "UDP_SEGMENT", "UDP_GRO"]),
}


@pytest.mark.parametrize("refused", list(REFUSALS))
def test_agent_whose_kernel_refuses_offloads_carries_traffic_on_the_plain_path(
    refused: str,
) -> None:
    require_netns()
    pytest.importorskip("pyseccomp", reason="tests/refuse_offloads.py needs it")
    flags, names = REFUSALS[refused]
    with Lab(2, underlay=4, hop_interval="1s") as lab:
        a, b = lab.hosts
        b.command_prefix = (sys.executable, str(REFUSE), *flags, "--")
        start_lab(lab)
        for src, dst, family in ((a, b, 4), (b, a, 6)):
            result = lab.ping(src, dst.tunnel(family), count=20, interval_s=0.05)
            assert result.received == result.transmitted, result.output
        transfers = [
            lab.transfer_start(a, b, 4, FALLBACK_BYTES, port=5201),
            lab.transfer_start(b, a, 6, FALLBACK_BYTES, port=5202),
        ]
        for transfer in transfers:
            assert_same_bytes(transfer.result(TRANSFER_TIMEOUT_S), FALLBACK_BYTES)
        # What a fast agent batches, a plain one still delivers datagram by
        # datagram.
        assert_udp_segment_send_arrives_whole(lab, a, b, 4, 7200)

        plain = data_path_lines(lab, b)
        assert len(plain) == 1, f"want one data path line from b, got {plain}"
        assert " INFO " in plain[0] and "plain" in plain[0], plain[0]
        missing = [name for name in names if name not in plain[0]]
        assert not missing, f"{plain[0]!r} does not name {missing}"
        fast = data_path_lines(lab, a)
        assert len(fast) == 1, f"want one data path line from a, got {fast}"
        assert " INFO " in fast[0] and "fast" in fast[0], fast[0]
        assert "plain" not in fast[0], fast[0]
