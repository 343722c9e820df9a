"""What `hopr-tunnel demo` shows: ping counts and each pair's row, as text.

Pure functions and small records: the demo (agent/demo.py) feeds them the lines
its pings print and the `show` status of each agent, and writes what they
return. A pair "a-b" is seen from its first host: ports are a's -> b's, bytes
are a's counters (sent to b, received from b), and a pings b.

Two forms: a screen redrawn in place for a terminal, and, when stdout is a file
or a pipe, one line per pair per refresh, whose fields `key value` a log reader
(or a test) can pick out.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from typing import Any

from .show import bytes_text, ms_text

# A request counts as lost once this many later ones went out without its reply
# coming back: at the demo's ping interval that is a reply later than a second.
LOST_AFTER_SEQS = 5
SEQ_WRAP = 1 << 16  # ICMP echo sequence numbers are 16 bits

_REPLY = re.compile(r"icmp_seq=(\d+)\b.*\btime=([\d.]+) ms")
_NO_ANSWER = re.compile(r"no answer yet for icmp_seq=(\d+)")

CLEAR_SCREEN = "\x1b[H\x1b[2J"  # cursor home, erase all: the first frame
HOME = "\x1b[H"  # later frames overwrite in place, which does not flicker
ERASE_LINE_END = "\x1b[K"
ERASE_BELOW = "\x1b[J"


@dataclass
class PingCount:
    """Replies, losses and round-trip time from `ping -O` output, line by line.

    With -O ping reports each request still unanswered when the next goes out;
    such a request is lost once LOST_AFTER_SEQS later ones have gone out and
    its reply has not come back.
    """

    replies: int = 0
    lost: int = 0
    last_rtt_ms: float | None = None
    sent_seq: int = 0  # the highest icmp_seq known to have gone out
    _waiting: set[int] = field(default_factory=set)
    _answered: set[int] = field(default_factory=set)

    def feed(self, line: str) -> None:
        if reply := _REPLY.search(line):
            self._reply(self._unwrap(int(reply[1])), float(reply[2]))
        elif no_answer := _NO_ANSWER.search(line):
            seq = self._unwrap(int(no_answer[1]))
            if seq not in self._answered:
                self._waiting.add(seq)
            self._sent(seq)

    def _unwrap(self, seq_16: int) -> int:
        """icmp_seq is 16 bits: after 65535 it starts again at 0 (hours in)."""
        seq = self.sent_seq - self.sent_seq % SEQ_WRAP + seq_16
        return seq + SEQ_WRAP if seq < self.sent_seq - SEQ_WRAP // 2 else seq

    def _reply(self, seq: int, rtt_ms: float) -> None:
        if seq in self._answered:  # a duplicate (DUP!) adds nothing
            return
        self._answered.add(seq)
        self._waiting.discard(seq)
        self.replies += 1
        self.last_rtt_ms = rtt_ms
        self._sent(seq)

    def _sent(self, seq: int) -> None:
        self.sent_seq = max(self.sent_seq, seq)
        overdue = {s for s in self._waiting if s <= self.sent_seq - LOST_AFTER_SEQS}
        self.lost += len(overdue)
        self._waiting -= overdue
        # Only recent sequence numbers can still be answered or repeated.
        self._answered = {s for s in self._answered if s > self.sent_seq - 100}


@dataclass
class PairRow:
    """One pair as its first host's agent and its ping see it."""

    left: str
    right: str
    reachable: bool = False  # False: no status from the left host's agent
    epoch: int | None = None
    ports: tuple[int, int] | None = None  # (left's, right's) this epoch
    next_hop_ms: int | None = None
    hops: int = 0  # epoch changes seen since the demo began
    tx_bytes: int = 0
    rx_bytes: int = 0
    session_age_ms: int | None = None
    hint: str | None = None
    ping: PingCount = field(default_factory=PingCount)

    @property
    def name(self) -> str:
        return f"{self.left}-{self.right}"

    def update(self, status: dict[str, Any] | None) -> None:
        """Take the left agent's `show` status (None: it did not answer)."""
        peer = _peer(status, self.right) if status else None
        self.reachable = peer is not None
        if peer is None:
            return
        if self.epoch is not None and peer["epoch"] != self.epoch:
            self.hops += 1
        self.epoch = peer["epoch"]
        self.ports = (peer["ports"]["ours"], peer["ports"]["theirs"])
        self.next_hop_ms = peer["next_hop_ms"]
        self.tx_bytes, self.rx_bytes = peer["tx_bytes"], peer["rx_bytes"]
        self.session_age_ms = peer["session_age_ms"] if peer["session"] else None
        self.hint = peer.get("hint")


def _peer(status: dict[str, Any], name: str) -> dict[str, Any] | None:
    peers: list[dict[str, Any]] = status.get("peers", [])
    return next((peer for peer in peers if peer.get("name") == name), None)


# -- A line per pair (stdout is not a terminal) ---------------------------------------


def log_line(elapsed_s: float, row: PairRow) -> str:
    """`key value` fields, the same every refresh, for logs and tests."""
    head = f"[{elapsed_s:6.1f}s] {row.name}"
    if not row.reachable or row.ports is None:
        return f"{head} agent of {row.left} does not answer"
    ping, (ours, theirs) = row.ping, row.ports
    return (
        f"{head} epoch {row.epoch} ports {ours}->{theirs} "
        f"next-hop {ms_text(row.next_hop_ms)} hops {row.hops} "
        f"replies {ping.replies} lost {ping.lost} rtt {_rtt(ping)} "
        f"sent {bytes_text(row.tx_bytes)} received {bytes_text(row.rx_bytes)} "
        f"session {_session(row)}"
    )


# -- The screen (stdout is a terminal) ------------------------------------------------

LABEL_WIDTH = 18
PAIR_WIDTH = 20  # three pairs side by side fit 80 columns
SCREEN_WIDTH = 78


def table_lines(rows: list[PairRow]) -> list[str]:
    """One column per pair, one line per measure: fits an 80-column terminal."""
    cells = [_cells(row) for row in rows]
    lines = [_line("", [f"{row.left} -> {row.right}" for row in rows])]
    for i, label in enumerate(MEASURES):
        lines.append(_line(label, [column[i] for column in cells]))
    for row in rows:
        if row.hint:
            hint = f"{row.left} -> {row.right}: {row.hint}"
            lines += textwrap.wrap(hint, SCREEN_WIDTH, subsequent_indent="  ")
    return lines


MEASURES = (
    "epoch",
    "ports now",
    "next hop in",
    "hops seen",
    "pings ok / lost",
    "last round trip",
    "sent",
    "received",
    "session age",
)


def _cells(row: PairRow) -> list[str]:
    """The pair's value for each of MEASURES."""
    if not row.reachable or row.ports is None:
        return ["no answer"] * len(MEASURES)
    ping = row.ping
    return [
        str(row.epoch),
        f"{row.ports[0]} -> {row.ports[1]}",
        ms_text(row.next_hop_ms),
        str(row.hops),
        f"{ping.replies} / {ping.lost}",
        _rtt(ping),
        bytes_text(row.tx_bytes),
        bytes_text(row.rx_bytes),
        _session(row),
    ]


def _line(label: str, cells: list[str]) -> str:
    text = label.ljust(LABEL_WIDTH) + "".join(c.ljust(PAIR_WIDTH) for c in cells)
    return text.rstrip()


def frame(lines: list[str], first: bool) -> str:
    """The text that redraws the screen with `lines`."""
    body = "".join(line + ERASE_LINE_END + "\n" for line in lines)
    return (CLEAR_SCREEN if first else HOME) + body + ERASE_BELOW


def _rtt(ping: PingCount) -> str:
    return "-" if ping.last_rtt_ms is None else f"{ping.last_rtt_ms:.2f}ms"


def _session(row: PairRow) -> str:
    return "none" if row.session_age_ms is None else ms_text(row.session_age_ms)


@dataclass(frozen=True)
class HostLine:
    name: str
    ns: str
    underlay: str
    tunnel: str
    ifname: str
    pid: int | None


EXPLANATION = (
    "In \"a -> b\", a pings b through the tunnel. Ports now: a's UDP port -> b's,",
    "for this epoch only: each pair hops at its own moment, to new ports and",
    "keys. Sent and received count a's datagrams to and from b on the underlay.",
)


@dataclass(frozen=True)
class Screen:
    """What the screen shows besides the pairs."""

    hosts: list[HostLine]
    hop_ms: int
    elapsed_s: float
    hub: str  # the underlay's namespace, where tcpdump sees every datagram
    height: int  # the terminal's rows: a longer frame would scroll, not redraw


def screen_lines(rows: list[PairRow], screen: Screen) -> list[str]:
    """What runs and each pair now; then, as far as the terminal is tall, what
    the rows mean, what to try and the hosts."""
    hosts, running = screen.hosts, ms_text(int(screen.elapsed_s) * 1000)
    lines = [
        f"hopr-tunnel demo: {len(hosts)} hosts, each in a network namespace, "
        f"hopping every {ms_text(screen.hop_ms)}",
        f"running for {running}; Ctrl-C stops the agents and removes everything",
        "",
        *table_lines(rows),
    ]
    extras = [
        list(EXPLANATION),
        [
            "Try, from another terminal:",
            f"  sudo ip netns exec {hosts[0].ns} hopr-tunnel show",
            f"  sudo ip netns exec {screen.hub} tcpdump -ni br0 udp",
        ],
        _host_lines(hosts),
    ]
    for extra in extras:
        if len(lines) + 1 + len(extra) >= screen.height:
            break
        lines += ["", *extra]
    return lines


def _host_lines(hosts: list[HostLine]) -> list[str]:
    widths = (6, 21, 13, 13, 15)
    head = ("host", "namespace", "underlay", "tunnel", "interface", "agent")
    lines = []
    for cells in [head] + [
        (h.name, h.ns, h.underlay, h.tunnel, h.ifname, f"pid {h.pid}") for h in hosts
    ]:
        padded = [c.ljust(w) for c, w in zip(cells, widths, strict=False)]
        lines.append("".join(padded) + cells[-1])
    return lines


def summary(rows: list[PairRow], elapsed_s: float) -> list[str]:
    """At the end: how many hops and pings each pair went through."""
    lines = [f"ran for {ms_text(int(elapsed_s * 1000))}:"]
    for row in rows:
        ping = row.ping
        lines.append(
            f"  {row.left} -> {row.right}: {row.hops} hops, "
            f"{ping.replies} pings answered, {ping.lost} lost"
        )
    return lines
