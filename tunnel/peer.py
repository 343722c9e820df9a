"""One peer's protocol state machine (PROTOCOL.md, "Sessions" to "Data").

Inputs are a datagram from the peer's socket (with the epochs its 4-tuple stands
for), an inner packet routed to this peer, or a timer tick; each takes `now_ns`
and fills an Output with what to write to the TUN and what to send. Nothing the
network sends can raise here: a bad datagram is dropped, counted by reason, and
named in `Output.drop`. Only a datagram that opened and passed the replay window
changes state.

Sealing needs a session: the peer's newest ephemeral with our newest one the peer
has confirmed (`knows`). Until there is one, packets wait in a small queue and
hellos go out with backoff.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import datagram, hello
from .constants import (
    COUNTER_MAX,
    EPHEMERAL_ACTIVE_NS,
    EPHEMERAL_MAX_AGE_NS,
    HELLO_ANSWER_INTERVAL_NS,
    HELLO_FLAG,
    HELLO_RETRY_FIRST_NS,
    HELLO_RETRY_MAX_NS,
    KEY_LEN,
    MAX_SESSIONS_TRIED,
    MIN_DATAGRAM,
    PENDING_PACKETS_MAX,
    UNKNOWN_SESSION_HELLO_NS,
)
from .datagram import Buffer
from .output import Output
from .schedule import PairSchedule
from .session import Ephemeral, Ephemerals, SendStepBack, Session

if TYPE_CHECKING:
    from ._fastpath import DatagramKeys
    from .allowedips import AllowedIPs
    from .replay import ReplayWindow

NO_KEY = bytes(KEY_LEN)
MS = 1_000_000


@dataclass(slots=True)
class PeerStats:
    """What `show` reports; only ever counts, never contents."""

    tx_bytes: int = 0
    rx_bytes: int = 0
    tx_datagrams: int = 0
    rx_datagrams: int = 0
    hellos_sent: int = 0
    hellos_accepted: int = 0
    last_hello_ns: int | None = None  # last hello accepted
    last_rx_ns: int | None = None  # last data datagram opened
    clock_offset_ns: int | None = None  # peer clock minus ours, from its last hello
    rejected_offset_ns: int | None = None  # same, from the last hello refused on time
    drops: dict[str, int] = field(default_factory=dict)


class Peer:
    def __init__(
        self,
        name: str,
        schedule: PairSchedule,
        ephemerals: Ephemerals,
        routes: AllowedIPs[Peer],
    ) -> None:
        self.name = name
        self.schedule = schedule
        self.ephemerals = ephemerals
        self.routes = routes
        self.peer_eph: bytes | None = None  # the peer's newest ephemeral
        self.knows: Ephemeral | None = None  # our newest ephemeral it confirmed
        self.knows_since_ns = 0
        self.sessions: list[Session] = []  # in the order formed
        self.sealing: Session | None = None
        self.pending: deque[bytes] = deque()
        self.last_hello_ts = 0  # newest hello timestamp accepted
        self.last_hello_sent_ts = 0
        self.hello_due_ns: int | None = None
        self.hello_backoff_ns = HELLO_RETRY_FIRST_NS
        self.last_answer_ns = -HELLO_ANSWER_INTERVAL_NS
        self.last_unknown_ns = -UNKNOWN_SESSION_HELLO_NS
        self.session_since_ns: int | None = None
        self.rx_session: Session | None = None  # the last to open data
        # routes.source_filter(self) and the routes generation it was made at
        self._source_filter: tuple[int, bytes] | None = None
        self.stats = PeerStats()

    # -- inputs --

    def start(self, now_ns: int, out: Output) -> None:
        """Announce ourselves: a hello that asks for an answer."""
        self.send_hello(now_ns, out, please_answer=True)
        self.hello_due_ns = now_ns + self.hello_backoff_ns

    def on_packet(self, packet: bytes, now_ns: int, out: Output) -> None:
        """An inner packet from the TUN routed to this peer: seal it or queue it."""
        if self.sealing is not None and self._seal(packet, now_ns, out):
            return
        if len(self.pending) >= PENDING_PACKETS_MAX:
            self.pending.popleft()
            self.drop(out, "no_session")
        self.pending.append(packet)
        self._maybe_hello(now_ns, out)

    def on_datagram(
        self, dgram: Buffer, epochs: tuple[int, ...], now_ns: int, out: Output
    ) -> None:
        """A datagram from the socket of the peer's 4-tuple for these epochs."""
        if len(dgram) < MIN_DATAGRAM:
            self.drop(out, "short")
            return
        clock_epoch = self.schedule.epoch_at(now_ns // MS)
        seen_data = False
        for epoch in epochs:
            if abs(epoch - clock_epoch) > 1:
                continue
            keys = self.schedule.keys(epoch)
            h = datagram.unmask(keys.recv_hp, dgram)
            if datagram.is_hello(h):
                if self._hello_in(dgram, h, epoch, now_ns, out):
                    return
            else:
                seen_data = True
                if self._data_in(dgram, h, epoch, now_ns, out):
                    return
        self.drop(out, "auth")
        if seen_data:
            self._unknown_session(now_ns, out)

    def on_timer(self, now_ns: int, out: Output) -> None:
        self._maybe_hello(now_ns, out)
        self._expire_sessions(now_ns)
        self.schedule.forget_before(self.schedule.epoch_at(now_ns // MS) - 1)

    def next_deadline_ns(self, now_ns: int) -> int:
        """When on_timer next has work: a hello retry or the next epoch."""
        next_epoch = self.schedule.epoch_at(now_ns // MS) + 1
        deadline = self.schedule.epoch_start_ms(next_epoch) * MS
        if self.hello_due_ns is not None:
            deadline = min(deadline, self.hello_due_ns)
        return deadline

    # -- ephemerals (called by the node) ----------------------------------------------

    def on_ephemeral_replaced(self, now_ns: int, out: Output) -> None:
        """Our ephemeral changed: form its session and announce it if we talk."""
        if self.peer_eph is None:
            return
        self._form(self.ephemerals.current, self.peer_eph, now_ns)
        if self.sessions:
            self.send_hello(now_ns, out, please_answer=True)
            self.hello_due_ns = now_ns + self.hello_backoff_ns

    def forget_ephemeral(self, eph: Ephemeral, now_ns: int, out: Output) -> None:
        """Erase every session made with an ephemeral the node erased."""
        for session in [s for s in self.sessions if s.own is eph]:
            self._erase(session)
        if self.knows is eph:
            self.knows = None
        self._choose_sealing(now_ns, out)

    def used_since(self, eph: Ephemeral, since_ns: int) -> bool:
        return any(
            s.own is eph and s.last_data_ns is not None and s.last_data_ns >= since_ns
            for s in self.sessions
        )

    def still_needs(self, eph: Ephemeral, now_ns: int, linger_ns: int) -> bool:
        """Whether a replaced ephemeral may still open datagrams in flight."""
        if not any(s.own is eph for s in self.sessions):
            return False
        confirmed_newer = (
            self.knows is not None
            and self.knows is not eph
            and self.knows.created_ns > eph.created_ns
        )
        return not confirmed_newer or now_ns - self.knows_since_ns < linger_ns

    # -- hellos --

    def send_hello(self, now_ns: int, out: Output, please_answer: bool) -> None:
        ts = max(now_ns, self.last_hello_sent_ts + 1)
        self.last_hello_sent_ts = ts
        body = hello.Hello(
            self.ephemerals.current.public, self.peer_eph or NO_KEY, ts, please_answer
        )
        epoch = self.schedule.epoch_at(now_ns // MS)
        keys = self.schedule.keys(epoch)
        h = HELLO_FLAG | secrets.randbits(63)
        dgram = datagram.seal(keys.send_hello, keys.send_hp, h, hello.encode(body))
        out.send.append((self, epoch, dgram))
        self.stats.hellos_sent += 1

    def _hello_in(
        self, dgram: Buffer, h: int, epoch: int, now_ns: int, out: Output
    ) -> bool:
        """Open, check and apply a hello; False if it does not open in this epoch."""
        plaintext = datagram.open_(self.schedule.keys(epoch).recv_hello, h, dgram)
        if plaintext is None:
            return False
        msg = hello.decode(plaintext)
        if msg is None:
            self.drop(out, "hello_version")
            return True
        offset = msg.timestamp_ns - now_ns
        if abs(offset) > self.schedule.hop_ms * MS:
            self.stats.rejected_offset_ns = offset
            self.drop(out, "hello_clock")
            return True
        if msg.timestamp_ns <= self.last_hello_ts:
            self.drop(out, "hello_stale")
            return True
        if msg.eph_public != self.peer_eph and not self._learn(msg, now_ns):
            self.drop(out, "hello_ephemeral")
            return True
        self._accept_hello(msg, offset, now_ns, out)
        return True

    def _learn(self, msg: hello.Hello, now_ns: int) -> bool:
        """Record a new peer ephemeral and form its sessions; False if low-order."""
        current = self.ephemerals.current
        if (
            self.schedule.session_secret(
                current.private, current.public, msg.eph_public
            )
            is None
        ):
            return False
        self.peer_eph = msg.eph_public
        seen = self.ephemerals.find(msg.peer_eph_seen)
        self._set_knows(seen, now_ns, reset=True)
        if seen is not None and seen is not current:
            self._form(seen, msg.eph_public, now_ns)
        self._form(current, msg.eph_public, now_ns)
        return True

    def _accept_hello(
        self, msg: hello.Hello, offset: int, now_ns: int, out: Output
    ) -> None:
        self.last_hello_ts = msg.timestamp_ns
        self.stats.hellos_accepted += 1
        self.stats.last_hello_ns = now_ns
        self.stats.clock_offset_ns = offset
        seen = self.ephemerals.find(msg.peer_eph_seen)
        if seen is not None:
            self._set_knows(seen, now_ns, reset=False)
        self._choose_sealing(now_ns, out)
        own_newest = self.ephemerals.current.public
        wants = msg.please_answer or msg.peer_eph_seen != own_newest
        if wants and now_ns - self.last_answer_ns >= HELLO_ANSWER_INTERVAL_NS:
            self.last_answer_ns = now_ns
            self.send_hello(now_ns, out, please_answer=False)

    def _unknown_session(self, now_ns: int, out: Output) -> None:
        """Data we cannot open: the peer holds a session we lost; say hello."""
        if now_ns - self.last_unknown_ns >= UNKNOWN_SESSION_HELLO_NS:
            self.last_unknown_ns = now_ns
            self.send_hello(now_ns, out, please_answer=True)

    def _needs_hello(self, now_ns: int) -> bool:
        if self.sealing is None:
            return bool(self.pending)
        current = self.ephemerals.current
        return self.knows is not current and self.used_since(
            self.sealing.own, now_ns - EPHEMERAL_ACTIVE_NS
        )

    def _maybe_hello(self, now_ns: int, out: Output) -> None:
        """Hellos with backoff while traffic waits on the peer (PROTOCOL.md)."""
        if not self._needs_hello(now_ns):
            self.hello_due_ns = None
            self.hello_backoff_ns = HELLO_RETRY_FIRST_NS
            return
        if self.hello_due_ns is not None:
            if now_ns < self.hello_due_ns:
                return
            self.hello_backoff_ns = min(2 * self.hello_backoff_ns, HELLO_RETRY_MAX_NS)
        self.send_hello(now_ns, out, please_answer=True)
        self.hello_due_ns = now_ns + self.hello_backoff_ns

    # -- data --

    def _seal(self, packet: bytes, now_ns: int, out: Output) -> bool:
        """Seal under the sealing session; False if the session can seal no more."""
        session = self.sealing
        assert session is not None
        try:
            epoch, counter = session.next_counter(self.schedule.epoch_at(now_ns // MS))
        except SendStepBack:
            self.sealing = None
            self.ephemerals.rotation_requested = True
            return False
        out.send.append(
            (self, epoch, self._sealed(session, epoch, counter, packet, now_ns))
        )
        return True

    def _sealed(
        self, session: Session, epoch: int, counter: int, packet: bytes, now_ns: int
    ) -> bytes:
        schedule = self.schedule
        lone = schedule.send_lone(epoch, session.secret)
        if lone is not None:  # natively: the same bytes, with less work
            dgram = lone.seal(counter, packet)
        else:
            aead = schedule.send_data_aead(epoch, session.secret)
            hp = schedule.keys(epoch).send_hp
            dgram = datagram.seal(aead, hp, counter, datagram.pad(packet))
        if packet:
            session.last_data_ns = now_ns
        self.stats.tx_bytes += len(dgram)
        self.stats.tx_datagrams += 1
        return dgram

    # -- one packet, the short way ---------------------------------------------------
    #
    # A lone packet on an idle tunnel (a ping, a DNS query) pays for every Python
    # call while the CPU's caches are cold, so the I/O shell first offers it
    # these two, which do what on_packet and on_datagram would do when nothing
    # but data is at stake: no hello, no new epoch, no session to confirm, no
    # drop. Anything else returns None, having changed nothing, and the shell
    # takes the general way. Neither moves a deadline of next_deadline_ns.

    def seal_one(self, packet: bytes, now_ns: int) -> tuple[int, bytes] | None:
        """(epoch, datagram) of a packet under the sealing session, in the epoch
        it last sealed for; None: use on_packet."""
        session = self.sealing
        if session is None:
            return None
        epoch = session.send_epoch
        counter = session.send_counter
        if epoch != self.schedule.epoch_at(now_ns // MS) or counter > COUNTER_MAX:
            return None
        session.send_counter = counter + 1
        return epoch, self._sealed(session, epoch, counter, packet, now_ns)

    def open_one(
        self, dgram: Buffer, epochs: tuple[int, ...], now_ns: int
    ) -> bytes | None:
        """The inner packet of a data datagram that opens under the session the
        peer seals with, is fresh and may be delivered; None: use on_datagram."""
        settled = self._settled(epochs, now_ns)
        if settled is None or len(dgram) < MIN_DATAGRAM:
            return None
        session, epoch, window = settled
        schedule = self.schedule
        lone = schedule.recv_lone(epoch, session.secret)
        plaintext: bytes | None
        if lone is not None:  # natively: unmask, no hello, open
            opened = lone.open(dgram)
            if opened is None:
                return None
            h, plaintext = opened
        else:
            h = datagram.unmask(schedule.keys(epoch).recv_hp, dgram)
            if h & HELLO_FLAG:
                return None
            aead = schedule.recv_data_aead(epoch, session.secret)
            plaintext = datagram.open_(aead, h, dgram)
        if not plaintext:  # does not open here, or a keepalive
            return None
        length = self._deliverable(plaintext)
        if isinstance(length, str) or not window.accept(h):
            return None
        self.count_rx(session, 1, len(dgram), now_ns)
        return plaintext[:length]

    def _settled(
        self, epochs: tuple[int, ...], now_ns: int
    ) -> tuple[Session, int, ReplayWindow] | None:
        """The session, epoch and replay window a hop socket's data opens under
        when nothing is changing: one epoch, in use and current, under the
        session the peer seals with, which has opened data in it before. The
        short ways (open_one, drain_keys) take only that case; anything else
        needs on_datagram's rules."""
        session = self.rx_session
        if session is None or session is not self.sealing or len(epochs) != 1:
            return None
        epoch = epochs[0]
        window = session.windows.get(epoch)
        if window is None or epoch != session.recv_epoch:
            return None
        if session not in self.sessions[-MAX_SESSIONS_TRIED:]:
            return None  # on_datagram would not try it
        if abs(epoch - self.schedule.epoch_at(now_ns // MS)) > 1:
            return None
        return session, epoch, window

    def drain_keys(
        self, epochs: tuple[int, ...], now_ns: int
    ) -> tuple[Session, int, ReplayWindow, DatagramKeys, bytes] | None:
        """What DataPlane needs to drain a hop socket natively
        (DatagramKeys.drain): the settled session, epoch and replay window,
        the keys that open its data, and the filter of the sources this peer
        may send from. None: not settled, or no native part."""
        settled = self._settled(epochs, now_ns)
        if settled is None:
            return None
        session, epoch, window = settled
        keys = self.schedule.recv_lone(epoch, session.secret)
        if keys is None:
            return None
        cached = self._source_filter
        if cached is None or cached[0] != self.routes.generation:
            cached = (self.routes.generation, self.routes.source_filter(self))
            self._source_filter = cached
        return session, epoch, window, keys, cached[1]

    def count_rx(self, session: Session, count: int, size: int, now_ns: int) -> None:
        """`count` data datagrams of `size` bytes in all, opened under `session`
        and delivered the short way (open_one, or a native drain)."""
        stats = self.stats
        stats.rx_bytes += size
        stats.rx_datagrams += count
        stats.last_rx_ns = now_ns
        session.last_data_ns = now_ns

    def _data_in(
        self, dgram: Buffer, counter: int, epoch: int, now_ns: int, out: Output
    ) -> bool:
        """Open under the newest sessions; False if none opens it in this epoch."""
        for session in reversed(self.sessions[-MAX_SESSIONS_TRIED:]):
            if not session.may_receive(epoch):
                continue
            aead = self.schedule.recv_data_aead(epoch, session.secret)
            plaintext = datagram.open_(aead, counter, dgram)
            if plaintext is None:
                continue
            if not session.accept(epoch, counter):
                self.drop(out, "replay")
                return True
            self.opened(session, plaintext, len(dgram), now_ns, out)
            return True
        return False

    def opened(
        self, session: Session, plaintext: bytes, size: int, now_ns: int, out: Output
    ) -> None:
        """An authentic, fresh data datagram: confirm its session, deliver."""
        self.opened_run(session, 1, size, now_ns, out)
        if not plaintext:
            return  # a keepalive
        session.last_data_ns = now_ns
        self.deliver(plaintext, out)

    def opened_run(
        self, session: Session, count: int, size: int, now_ns: int, out: Output
    ) -> None:
        """`count` authentic, fresh datagrams of `size` bytes in all: count them
        and confirm their session; the caller delivers what they carry."""
        self.stats.rx_bytes += size
        self.stats.rx_datagrams += count
        self.stats.last_rx_ns = now_ns
        self.rx_session = session
        # Under the sealing session this confirms nothing new: the sealing
        # session already pairs the ephemeral the peer knows with its newest.
        if session is not self.sealing and session.peer_eph == self.peer_eph:
            self._set_knows(session.own, now_ns, reset=False)
            self._choose_sealing(now_ns, out)

    def deliver(self, plaintext: bytes | memoryview, out: Output) -> None:
        """An opened data plaintext to the TUN if its inner packet is whole and
        its source is one of this peer's allowed addresses."""
        found = self._deliverable(plaintext)
        if isinstance(found, str):
            self.drop(out, found)
        else:
            out.tun.append(bytes(plaintext[:found]))

    def _deliverable(self, plaintext: bytes | memoryview) -> int | str:
        """The inner packet's length, or why it may not be delivered."""
        length = datagram.inner_length(plaintext)
        if length is None:
            return "control"
        if length > len(plaintext) or length < 20:
            return "length"
        if self.routes.lookup_src(plaintext) is not self:
            return "source"
        return length

    # -- sessions --

    def _set_knows(self, eph: Ephemeral | None, now_ns: int, reset: bool) -> None:
        """Record that the peer confirmed our ephemeral `eph`.

        A new peer ephemeral resets what it knows (a restarted peer knows none of
        ours); otherwise the newest confirmation wins.
        """
        newer = eph is not None and (
            self.knows is None or eph.created_ns > self.knows.created_ns
        )
        if reset or newer:
            self.knows = eph
            self.knows_since_ns = now_ns

    def _form(self, own: Ephemeral, peer_eph: bytes, now_ns: int) -> Session | None:
        for session in self.sessions:
            if session.own is own and session.peer_eph == peer_eph:
                return session
        secret = self.schedule.session_secret(own.private, own.public, peer_eph)
        if secret is None or own.erased:
            return None
        session = Session(own, peer_eph, secret, now_ns)
        self.sessions.append(session)
        while len(self.sessions) > MAX_SESSIONS_TRIED + 1:
            oldest = next(s for s in self.sessions if s is not self.sealing)
            self._erase(oldest)
        return session

    def _choose_sealing(self, now_ns: int, out: Output) -> None:
        """Seal under (newest peer ephemeral, our newest it confirmed)."""
        want = None
        if self.knows is not None and self.peer_eph is not None:
            want = self._form(self.knows, self.peer_eph, now_ns)
        if want is self.sealing:
            return
        self.sealing = want
        if want is None:
            self.session_since_ns = None
            return
        self.session_since_ns = now_ns
        self._seal(b"", now_ns, out)  # one keepalive: the peer sees it confirmed
        while self.pending and self.sealing is not None:
            self._seal(self.pending.popleft(), now_ns, out)

    def _expire_sessions(self, now_ns: int) -> None:
        """Sessions with a superseded peer ephemeral outlive its private key no more."""
        for session in list(self.sessions):
            stale_peer = session.peer_eph != self.peer_eph
            if stale_peer and now_ns - session.formed_ns > EPHEMERAL_MAX_AGE_NS:
                self._erase(session)

    def _erase(self, session: Session) -> None:
        self.sessions.remove(session)
        self.schedule.forget_session(session.secret)
        session.erase()
        if self.sealing is session:
            self.sealing = None
            self.session_since_ns = None
        if self.rx_session is session:
            self.rx_session = None

    def drop(self, out: Output, reason: str) -> None:
        out.drop = reason
        self.stats.drops[reason] = self.stats.drops.get(reason, 0) + 1

    # -- for status --

    def session_age_ns(self, now_ns: int) -> int | None:
        return None if self.session_since_ns is None else now_ns - self.session_since_ns
