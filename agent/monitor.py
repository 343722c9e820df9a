"""Peer lifecycle in the logs, read from the core's counters once a second.

The data path stays free of logging; this looks at each peer's state from the
outside and says what changed:

- INFO "reachable" when a peer first has a session (and again after it was lost);
- INFO "lost" when a reachable peer has sent nothing for LOST_AFTER_HOPS hops
  plus IDLE_GRACE_S, although we sent to it meanwhile (an idle pair is quiet,
  not lost: the protocol has no periodic keepalive);
- WARNING when a peer's clock is off by more than a quarter hop (by its last
  accepted hello), or when a hello was refused because its clock is off by more
  than a hop;
- WARNING, once per peer, when it has accepted none of our hellos for
  UNANSWERED_WARN_S, or sooner when datagrams arrive from it but none opens: it is
  down or unreachable, or the two configs disagree (a mismatch in key, psk,
  hop_interval or cipher moves the ports too, so usually nothing arrives at all).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .logs import RateLimit

if TYPE_CHECKING:
    from tunnel.peer import Peer

log = logging.getLogger("hopr-tunnel.monitor")

MS = 1_000_000
LOST_AFTER_HOPS = 3
IDLE_GRACE_S = 10  # a peer answering only every 10 s (TCP keepalives...) is alive
CLOCK_WARN_EVERY_S = 300.0  # one clock warning per peer per 5 minutes
UNANSWERED_WARN_S = 30  # a peer booting at the same time answers well within this


@dataclass(slots=True)
class PeerWatch:
    reachable: bool = False
    last_heard_ns: int | None = None
    sent_at_heard: int = 0  # our datagrams and hellos sent when we last heard it
    mismatch_said: bool = False
    first_hello_ns: int | None = None  # when we first saw a hello of ours sent
    refused_seen: int | None = None


class Monitor:
    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self.watches: dict[str, PeerWatch] = {}
        self.clock_limit = RateLimit(CLOCK_WARN_EVERY_S)

    def forget(self, name: str) -> None:
        self.watches.pop(name, None)

    def check(self, peer: Peer, now_ns: int) -> None:
        watch = self.watches.setdefault(peer.name, PeerWatch())
        self._heard(peer, watch)
        self._reachability(peer, watch, now_ns)
        self._clock(peer, watch)
        self._unanswered(peer, watch, now_ns)

    def reachable_count(self) -> int:
        return sum(w.reachable for w in self.watches.values())

    def _heard(self, peer: Peer, watch: PeerWatch) -> None:
        stats = peer.stats
        heard = max(stats.last_hello_ns or 0, stats.last_rx_ns or 0) or None
        if heard != watch.last_heard_ns:
            watch.last_heard_ns = heard
            watch.sent_at_heard = stats.tx_datagrams + stats.hellos_sent

    def _reachability(self, peer: Peer, watch: PeerWatch, now_ns: int) -> None:
        stats = peer.stats
        if not watch.reachable:
            fresh = watch.last_heard_ns is not None and (
                now_ns - watch.last_heard_ns < self._lost_after_ns(peer)
            )
            if peer.sealing is not None and fresh:
                watch.reachable = True
                log.info("%s: peer %s reachable", self.ifname, peer.name)
            return
        silent_ns = now_ns - (watch.last_heard_ns or 0)
        sent_since = stats.tx_datagrams + stats.hellos_sent > watch.sent_at_heard
        if sent_since and silent_ns >= self._lost_after_ns(peer):
            watch.reachable = False
            log.info(
                "%s: peer %s lost: nothing received for %.0f s",
                self.ifname,
                peer.name,
                silent_ns / 1e9,
            )

    @staticmethod
    def _lost_after_ns(peer: Peer) -> int:
        return (LOST_AFTER_HOPS * peer.schedule.hop_ms + IDLE_GRACE_S * 1000) * MS

    def _clock(self, peer: Peer, watch: PeerWatch) -> None:
        stats, hop_ms = peer.stats, peer.schedule.hop_ms
        offset = stats.clock_offset_ns
        skewed = offset is not None and abs(offset) > hop_ms * MS // 4
        if skewed and self.clock_limit.allow(("offset", peer.name)):
            log.warning(
                "%s: peer %s's clock is %+.3f s off ours, more than a quarter "
                "of the %.3g s hop; check NTP on both hosts",
                self.ifname,
                peer.name,
                (offset or 0) / 1e9,
                hop_ms / 1000,
            )
        refused = stats.rejected_offset_ns
        if refused is not None and refused != watch.refused_seen:
            watch.refused_seen = refused
            if self.clock_limit.allow(("refused", peer.name)):
                log.warning(
                    "%s: refused a hello from peer %s: its clock is %+.3f s off "
                    "ours, more than one hop; fix the clock (NTP) on one host",
                    self.ifname,
                    peer.name,
                    refused / 1e9,
                )

    def _unanswered(self, peer: Peer, watch: PeerWatch, now_ns: int) -> None:
        stats = peer.stats
        if stats.hellos_sent and watch.first_hello_ns is None:
            watch.first_hello_ns = now_ns
        if watch.mismatch_said or stats.hellos_accepted or watch.first_hello_ns is None:
            return
        garbled = stats.drops.get("auth", 0) >= 3
        waited_ns = now_ns - watch.first_hello_ns
        if garbled or waited_ns >= UNANSWERED_WARN_S * 10**9:
            watch.mismatch_said = True
            what = (
                "datagrams arrive from it but none opens"
                if garbled
                else f"it has answered none of our hellos in {waited_ns / 1e9:.0f} s"
            )
            log.warning(
                "%s: peer %s: %s; it is down or unreachable, or its config and ours "
                "disagree: check its public key, psk, hop_interval, cipher and clock",
                self.ifname,
                peer.name,
                what,
            )
