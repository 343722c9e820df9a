#!/usr/bin/env python3
"""Where an idle ping's round trip goes, hop by hop (needs root, tcpdump, scapy).

    rtt_parts.py [--contender hopr|wireguard-go]... [--pings 60] [--interval 0.01]
                 [--json FILE]

For each contender it builds two private network namespaces joined by a veth
pair (underlay 198.18.0.1/2), brings the tunnel up between them (100.64.0.1/2),
captures both TUN devices and both veths with nanosecond timestamps while one
ping runs from a to b, and splits every echo into the seven steps between the
four capture points:

    a: tun -> udp     a's agent reads the request from its TUN and sends it
    wire a->b         a's veth to b's veth
    b: udp -> tun     b's agent receives, opens and writes the request
    b: kernel echo    b's kernel turns the request into a reply
    b: tun -> udp     b's agent reads and sends the reply
    wire b->a         b's veth to a's veth
    a: udp -> tun     a's agent receives, opens and writes the reply

Issue 5 compares the median RTT of such pings. At 10 ms apart each request finds
both agents asleep, so what the idle RTT pays is each agent's first wakeup after
that pause, which no throughput test sees. The table shows which of the four
agent steps that cost lands in, next to wireguard-go's, on the same machine in
the same run. The timestamps are the kernel's at its capture taps: a
veth's receive stamp is taken when the frame is queued for the softirq, so time
spent waiting in that backlog counts towards "udp -> tun".

Default contenders: hopr, plus wireguard-go when `wireguard-go` and `wg` are on
PATH. Nothing outside the run's own namespaces is touched. Exit status 2 with one
sentence on stderr when something it needs is missing or a tunnel never came up.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Sequence
from decimal import Decimal
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any, NamedTuple

try:
    from scapy.layers.inet import ICMP, IP, UDP
    from scapy.packet import Packet
    from scapy.utils import rdpcap
except ImportError:  # a bench host without the test extras
    print("rtt_parts.py: scapy is missing; pip install -e '.[test]' brings it.",
          file=sys.stderr)  # fmt: skip
    sys.exit(2)

ROOT = Path(__file__).resolve().parent.parent
MKCONF = ROOT / "bench" / "mkconf.py"
TUN_A, TUN_B = "100.64.0.1", "100.64.0.2"
UL_A, UL_B = "198.18.0.1", "198.18.0.2"
PREFIX = 24
HOPR_TUN = "hopr0"
WG_PORT = 51820
WG_SOCKETS = Path("/var/run/wireguard")
WARMUP = 5
HOPS = (
    "a: tun -> udp",
    "wire a->b",
    "b: udp -> tun",
    "b: kernel echo",
    "b: tun -> udp",
    "wire b->a",
    "a: udp -> tun",
)
ROUND_TRIP = "round trip"
CAPTURES = ("tun_a", "tun_b", "ul_a", "ul_b")  # the argument order of hops()
UP_TIMEOUT_S = 30.0
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 3.0
ECHO_REQUEST, ECHO_REPLY = 8, 0

# One direction's datagram times, in ns: on the sender's veth, on the receiver's.
Way = tuple[list[int], list[int]]


class Failure(Exception):
    """A reason to stop with status 2: the sentence, then optional detail."""

    def __init__(self, sentence: str, detail: str = "") -> None:
        super().__init__(sentence)
        self.detail = detail


# -- Pairing the captures ----------------------------------------------------------


class Hops(NamedTuple):
    """Per-ping intervals in microseconds, by name (HOPS and ROUND_TRIP), and how
    many pings after the warm-up had a chain that could not be matched."""

    intervals: dict[str, list[float]]
    dropped: int


def nanos(packet: Packet) -> int:
    """The capture time in ns: exact from a nanosecond pcap, where scapy reads it
    as a Decimal, and one type however the packet was made."""
    return round(Decimal(packet.time) * 1_000_000_000)


def echoes(packets: Sequence[Packet], icmp_type: int) -> dict[tuple[int, int], int]:
    """Capture time of the first ICMP echo of icmp_type, per (id, seq)."""
    times: dict[tuple[int, int], int] = {}
    for p in packets:
        if ICMP in p and p[ICMP].type == icmp_type:
            times.setdefault((p[ICMP].id, p[ICMP].seq), nanos(p))
    return times


def datagrams(packets: Sequence[Packet], src: str) -> list[int]:
    """Sorted capture times of src's datagrams that have its most common length.

    That length is the ping's: keepalives and handshakes have others.
    """
    sized = [(nanos(p), p[IP].len) for p in packets if UDP in p and p[IP].src == src]
    if not sized:
        return []
    common = Counter(length for _, length in sized).most_common(1)[0][0]
    return sorted(t for t, length in sized if length == common)


def first_between(times: list[int], lo: int, hi: int) -> int | None:
    """The first of the sorted times in [lo, hi], or None."""
    i = bisect_left(times, lo)
    return times[i] if i < len(times) and times[i] <= hi else None


def crossing(start: int, end: int, way: Way) -> list[int | None]:
    """When one datagram left on the sender's veth and reached the receiver's,
    taking the first of the way's datagrams in [start, end] for each."""
    sent = first_between(way[0], start, end)
    return [sent, None if sent is None else first_between(way[1], sent, end)]


def hops(
    tun_a: Sequence[Packet],
    tun_b: Sequence[Packet],
    ul_a: Sequence[Packet],
    ul_b: Sequence[Packet],
) -> Hops:
    """Split each echo from a to b into HOPS, from the four captures' packets.

    On the TUNs a request and its reply pair by ICMP id and seq. The underlay is
    encrypted, so there a ping's datagram is the first one of its direction and
    of the usual length at or after the TUN packet it carries, and not after that
    packet shows up on the other TUN. The first WARMUP requests are left out.
    """
    sent, answered = echoes(tun_a, ECHO_REQUEST), echoes(tun_a, ECHO_REPLY)
    arrived, echoed = echoes(tun_b, ECHO_REQUEST), echoes(tun_b, ECHO_REPLY)
    forth = (datagrams(ul_a, UL_A), datagrams(ul_b, UL_A))
    back = (datagrams(ul_b, UL_B), datagrams(ul_a, UL_B))
    intervals: dict[str, list[float]] = {name: [] for name in (*HOPS, ROUND_TRIP)}
    dropped = 0
    for key in sorted(sent, key=sent.__getitem__)[WARMUP:]:
        t0, t3, t4, t7 = sent[key], arrived.get(key), echoed.get(key), answered.get(key)
        chain: list[int | None] = [t0, None, None, t3, t4, None, None, t7]
        if t3 is not None and t4 is not None and t7 is not None:
            chain[1:3] = crossing(t0, t3, forth)
            chain[5:7] = crossing(t4, t7, back)
        times = [t for t in chain if t is not None]
        if len(times) < len(chain) or any(x > y for x, y in pairwise(times)):
            dropped += 1
            continue
        for name, (start, end) in zip(HOPS, pairwise(times), strict=True):
            intervals[name].append((end - start) / 1000)
        intervals[ROUND_TRIP].append((times[-1] - t0) / 1000)
    return Hops(intervals, dropped)


# -- Two namespaces ----------------------------------------------------------------


class Lab:
    """Two namespaces joined by a veth pair, the processes started in them, and a
    private temporary directory: close() removes all of it."""

    def __init__(self, tag: str) -> None:
        self.ns = {side: f"hrp{tag}{side}" for side in "ab"}
        self.veth = {side: f"hrv{tag}{side}" for side in "ab"}
        self.tmp = Path(tempfile.mkdtemp(prefix=f"rtt-parts-{tag}-"))
        self.logs: list[Path] = []  # the tunnels', printed when one never comes up
        self.sockets: list[Path] = []  # wireguard-go's, in the host's /var/run
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        for side in "ab":
            run(["ip", "netns", "add", self.ns[side]])
            self._namespaces.append(self.ns[side])
        run(["ip", "link", "add", self.veth["a"], "netns", self.ns["a"], "type",
             "veth", "peer", self.veth["b"], "netns", self.ns["b"]])  # fmt: skip
        for side, address in (("a", UL_A), ("b", UL_B)):
            self.ip(side, "addr", "add", f"{address}/{PREFIX}", "dev", self.veth[side])
            self.ip(side, "link", "set", self.veth[side], "up")
            self.ip(side, "link", "set", "lo", "up")

    def close(self) -> None:
        """Stop our processes by PID, delete our namespaces and files."""
        # A second Ctrl-C or a SIGTERM must not cut the cleanup short.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            for proc in self._procs:
                stop(proc)
            for ns in self._namespaces:
                subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
            for socket in self.sockets:  # left behind by a wireguard-go killed -9
                with contextlib.suppress(OSError):
                    socket.unlink()
            shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def ip(self, side: str, *args: str) -> None:
        run(["ip", "-n", self.ns[side], *args])

    def run(self, side: str, *argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return run(["ip", "netns", "exec", self.ns[side], *argv], **kw)

    def start(
        self, side: str, argv: Sequence[str], log: Path, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        """Start argv in side's namespace, output to log; close() stops it."""
        with log.open("wb") as out:
            # A session of its own: a Ctrl-C meant for us does not reach it.
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns[side], *argv],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, **env}, cwd=ROOT, start_new_session=True,
            )  # fmt: skip
        self._procs.append(proc)
        return proc

    def answers(self) -> bool:
        """Whether b's tunnel address answers one ping from a."""
        argv = ["ip", "netns", "exec", self.ns["a"], "ping", "-c1", "-W1", TUN_B]
        return subprocess.run(argv, capture_output=True).returncode == 0


def run(
    argv: Sequence[str],
    timeout_s: float = 30,
    env: dict[str, str] | None = None,
    stdin_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout_s, input=stdin_text,
        env=None if env is None else {**os.environ, **env},
    )  # fmt: skip
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()
        raise Failure(f"`{' '.join(argv)}` exited with {done.returncode}: {output}")
    return done


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(ready: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join([f"--- {path.name} ---", *text])


# -- The tunnels -------------------------------------------------------------------


def hopr_command() -> list[str]:
    """The console script beside this Python: the namespaces need no pyenv shim."""
    beside = Path(sys.executable).with_name("hopr-tunnel")
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "agent.cli"]


def up_hopr(lab: Lab) -> dict[str, str]:
    """Start hopr-tunnel on both sides; the TUN device of each."""
    conf = {side: lab.tmp / f"{side}.toml" for side in "ab"}
    env = {"HB_TUN_IP": TUN_A, "HB_PEER_TUN_IP": TUN_B, "HB_UL_IP": UL_A,
           "HB_PEER_UL_IP": UL_B, "HB_TUN_PREFIX": str(PREFIX)}  # fmt: skip
    run([sys.executable, str(MKCONF), str(conf["a"]), str(conf["b"]),
         "--hop-interval", "10s", "--cipher", "aes-256-gcm"], env=env)  # fmt: skip
    for side in "ab":
        run_dir = lab.tmp / f"run-{side}"  # the control socket's, private to the run
        run_dir.mkdir()
        log = lab.tmp / f"hopr-{side}.log"
        lab.logs.append(log)
        argv = [*hopr_command(), "up", "--log-level", "warning", str(conf[side])]
        lab.start(side, argv, log, {"HOPR_TUNNEL_RUN_DIR": str(run_dir)})
    return {"a": HOPR_TUN, "b": HOPR_TUN}


def up_wireguard_go(lab: Lab) -> dict[str, str]:
    """Start and configure wireguard-go on both sides; the TUN device of each."""
    iface = {side: f"hrw{lab.ns[side][3:]}" for side in "ab"}
    # wireguard-go's UAPI sockets share one directory across namespaces.
    uapi = {side: WG_SOCKETS / f"{iface[side]}.sock" for side in "ab"}
    key = {side: lab.tmp / f"wg-{side}.key" for side in "ab"}
    public = {}
    for side in "ab":
        private = run(["wg", "genkey"]).stdout
        fd = os.open(key[side], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(private)
        public[side] = run(["wg", "pubkey"], stdin_text=private).stdout.strip()
        log = lab.tmp / f"wireguard-go-{side}.log"
        lab.logs.append(log)
        lab.sockets.append(uapi[side])
        env = {"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"}
        lab.start(side, ["wireguard-go", "-f", iface[side]], log, env)
    for side, peer, ip, peer_ul, peer_ip in (
        ("a", "b", TUN_A, UL_B, TUN_B),
        ("b", "a", TUN_B, UL_A, TUN_A),
    ):
        # The UAPI socket comes after the link, and `wg set` needs both.
        if not wait_for(uapi[side].exists, START_TIMEOUT_S):
            raise Failure(
                f"wireguard-go made no {iface[side]} in {START_TIMEOUT_S:g} s.",
                "\n".join(tail(log) for log in lab.logs),
            )
        peer_args = ["peer", public[peer], "endpoint", f"{peer_ul}:{WG_PORT}",
                     "allowed-ips", f"{peer_ip}/32"]  # fmt: skip
        lab.run(side, "wg", "set", iface[side], "listen-port", str(WG_PORT),
                "private-key", str(key[side]), *peer_args)  # fmt: skip
        lab.ip(side, "addr", "add", f"{ip}/{PREFIX}", "dev", iface[side])
        lab.ip(side, "link", "set", iface[side], "mtu", "1420", "up")
    return iface


UP: dict[str, Callable[[Lab], dict[str, str]]] = {
    "hopr": up_hopr,
    "wireguard-go": up_wireguard_go,
}


# -- Measuring ---------------------------------------------------------------------


def listening(log: Path) -> bool:
    return b"listening on" in log.read_bytes()


def capture_pings(
    lab: Lab, tun: dict[str, str], pings: int, interval: float
) -> dict[str, Path]:
    """Ping b from a under four captures; the pcap files, by CAPTURES name."""
    pcaps, dumps = {}, []
    for side in "ab":
        for kind, iface, bpf in (("tun", tun[side], "icmp"),
                                 ("ul", lab.veth[side], "udp")):  # fmt: skip
            name = f"{kind}_{side}"
            pcaps[name] = lab.tmp / f"{name}.pcap"
            log = lab.tmp / f"tcpdump-{name}.log"
            # Unbuffered, so nothing is lost at SIGINT; as root (-Z), so the file
            # lands in our private directory.
            argv = ["tcpdump", "-i", iface, "-n", "-U", "--immediate-mode",
                    "--time-stamp-precision=nano", "-Z", "root",
                    "-w", str(pcaps[name]), bpf]  # fmt: skip
            dumps.append((lab.start(side, argv, log, {}), log))
    for _, log in dumps:
        if not wait_for(partial(listening, log), START_TIMEOUT_S):
            raise Failure(f"tcpdump did not start in {START_TIMEOUT_S:g} s.", tail(log))
    # ping's status 1 only means lost replies: hops() drops those pings.
    argv = ["ip", "netns", "exec", lab.ns["a"],
            "ping", "-c", str(pings), "-i", str(interval), "-q", TUN_B]  # fmt: skip
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=pings * interval + 30
    )
    if done.returncode > 1:
        raise Failure(f"ping failed: {(done.stderr or done.stdout).strip()}")
    time.sleep(0.5)  # the last replies reach the files
    for proc, _ in dumps:
        stop(proc, signal.SIGINT)
    return pcaps


def measure(name: str, pings: int, interval: float) -> Hops:
    """Bring name's tunnel up in a lab of its own and split its pings."""
    with Lab(f"{os.getpid()}{name[0]}") as lab:
        tun = UP[name](lab)
        if not wait_for(lab.answers, UP_TIMEOUT_S):
            raise Failure(
                f"{name} never came up: {TUN_B} did not answer a ping from a "
                f"within {UP_TIMEOUT_S:g} s.",
                "\n".join(tail(log) for log in lab.logs),
            )
        pcaps = capture_pings(lab, tun, pings, interval)
        return hops(*(list(rdpcap(str(pcaps[capture]))) for capture in CAPTURES))


def p90(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def summary(name: str, measured: Hops) -> dict[str, Any]:
    """median_us and p90_us per hop, pings_used and pings_dropped."""
    if not measured.intervals[ROUND_TRIP]:
        raise Failure(f"none of {name}'s pings could be matched in the captures.")
    out: dict[str, Any] = {
        hop: {
            "median_us": round(statistics.median(values), 3),
            "p90_us": round(p90(values), 3),
        }
        for hop, values in measured.intervals.items()
    }
    out["pings_used"] = len(measured.intervals[ROUND_TRIP])
    out["pings_dropped"] = measured.dropped
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    """One row per hop, median and p90 in µs per contender."""
    lines = [f"{'µs':<16}" + "".join(f"{name:>20}" for name in results),
             " " * 16 + f"{'median':>10}{'p90':>10}" * len(results)]  # fmt: skip
    for hop in (*HOPS, ROUND_TRIP):
        cells = (f"{r[hop]['median_us']:>10.1f}{r[hop]['p90_us']:>10.1f}"
                 for r in results.values())  # fmt: skip
        lines.append(f"{hop:<16}" + "".join(cells))
    for label, key in (("pings used", "pings_used"), ("dropped", "pings_dropped")):
        cells = (f"{r[key]:>20}" for r in results.values())
        lines.append(f"{label:<16}" + "".join(cells))
    return "\n".join(lines)


def missing(contenders: Sequence[str]) -> str | None:
    """Why this cannot run here, as one sentence, or None."""
    if os.geteuid() != 0:
        return "it needs root (network namespaces and captures)."
    tools = ["ip", "tcpdump", "ping"]
    if "wireguard-go" in contenders:
        tools += ["wireguard-go", "wg"]
    for tool in tools:
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH."
    return None


def exit_on_sigterm(signum: int, frame: object) -> None:
    sys.exit(128 + signum)  # unwinds through the labs' cleanup


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contender", action="append", choices=list(UP))
    parser.add_argument("--pings", type=int, default=60)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    if args.pings <= WARMUP:
        parser.error(f"--pings must be more than the {WARMUP} warm-up pings")
    wg = all(shutil.which(tool) for tool in ("wireguard-go", "wg"))
    default = ["hopr", "wireguard-go"] if wg else ["hopr"]
    contenders = list(dict.fromkeys(args.contender or default))
    problem = missing(contenders)
    if problem:
        print(f"rtt_parts.py: {problem}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        results = {
            name: summary(name, measure(name, args.pings, args.interval))
            for name in contenders
        }
    except Failure as failure:
        print(f"rtt_parts.py: {failure}", file=sys.stderr)
        if failure.detail:
            print(failure.detail, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rtt_parts.py: interrupted; its namespaces are gone.", file=sys.stderr)
        return 130
    print(table(results))
    if args.json:
        meta = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "kernel": platform.release(),
            "nproc": os.cpu_count(),
            "pings": args.pings,
            "interval": args.interval,
        }
        doc = {"meta": meta, "contenders": results}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
