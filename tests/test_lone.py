"""Peer.seal_one and Peer.open_one: the short way for a lone packet.

Each either does exactly what on_packet / on_datagram would have done for that
packet, or declines (None) having changed nothing, so the general way that
follows gives the same result as if it had never been asked. Each test runs
with the native keys (tunnel/_fastpath.c, DatagramKeys) and without.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.native_or_python import sealing_code  # noqa: F401 (autouse)
from tests.sim import MS, SECOND, ipv4_packet
from tests.test_peer_rules import connected, deliver, sealed_from
from tunnel.output import Output
from tunnel.peer import Peer

PING = ipv4_packet("100.64.0.1", "100.64.0.2", 1, size=84)


def state(peer: Peer) -> tuple[object, ...]:
    """What opening or sealing may change, for before/after comparisons."""
    session = peer.sealing
    assert session is not None
    windows = {e: (w.highest, w._seen) for e, w in session.windows.items()}
    return (
        dataclasses.asdict(peer.stats),
        windows,
        session.recv_epoch,
        session.send_epoch,
        session.send_counter,
        session.last_data_ns,
        peer.rx_session,
        peer.hello_due_ns,
    )


def test_open_one_delivers_and_counts_as_on_datagram_does() -> None:
    net, a, b = connected()
    peer = b.peer("a")
    first = sealed_from(a, b, PING)
    second = sealed_from(a, b, PING)
    before = dataclasses.asdict(peer.stats)
    assert peer.open_one(first[1], (first[0],), b.now()) == PING
    short = dataclasses.asdict(peer.stats)
    assert deliver(net, a, b, *second).tun == [PING]
    general = dataclasses.asdict(peer.stats)
    for key in ("rx_bytes", "rx_datagrams"):
        assert short[key] - before[key] == general[key] - short[key] > 0
    assert deliver(net, a, b, *first).drop == "replay"  # the window took it


def forged(a: object, b: object) -> tuple[int, bytes]:
    epoch, dgram = sealed_from(a, b, PING)  # type: ignore[arg-type]
    return epoch, dgram[:-1] + bytes([dgram[-1] ^ 1])


def keepalive(a: object, b: object) -> tuple[int, bytes]:
    out = Output()
    a.peer("b").on_packet(b"", a.now(), out)  # type: ignore[attr-defined]
    ((_, epoch, dgram),) = out.send
    return epoch, dgram


def hello_of(a: object, b: object) -> tuple[int, bytes]:
    out = Output()
    a.peer("b").send_hello(a.now(), out, please_answer=False)  # type: ignore[attr-defined]
    ((_, epoch, dgram),) = out.send
    return epoch, dgram


def spoofed(a: object, b: object) -> tuple[int, bytes]:
    packet = ipv4_packet("100.64.0.9", "100.64.0.2", 1)
    return sealed_from(a, b, packet)  # type: ignore[arg-type]


def control(a: object, b: object) -> tuple[int, bytes]:
    out = Output()
    a.peer("b").on_packet(b"\x10" + bytes(40), a.now(), out)  # type: ignore[attr-defined]
    ((_, epoch, dgram),) = out.send
    return epoch, dgram


@pytest.mark.parametrize(
    ("make", "drop", "delivered"),
    [
        (forged, "auth", False),
        (keepalive, None, False),
        (hello_of, None, False),
        (spoofed, "source", False),
        (control, "control", False),
    ],
)
def test_open_one_declines_what_is_not_plain_data(
    make: object, drop: str | None, delivered: bool
) -> None:
    net, a, b = connected()
    peer = b.peer("a")
    epoch, dgram = make(a, b)  # type: ignore[operator]
    before = state(peer)
    assert peer.open_one(dgram, (epoch,), b.now()) is None
    assert state(peer) == before
    out = deliver(net, a, b, epoch, dgram)
    assert out.drop == drop and bool(out.tun) == delivered


def test_open_one_declines_a_replay_and_the_general_way_counts_it() -> None:
    net, a, b = connected()
    peer = b.peer("a")
    epoch, dgram = sealed_from(a, b, PING)
    assert deliver(net, a, b, epoch, dgram).tun == [PING]
    before = state(peer)
    assert peer.open_one(dgram, (epoch,), b.now()) is None
    assert state(peer) == before
    assert deliver(net, a, b, epoch, dgram).drop == "replay"


def test_open_one_leaves_a_new_epoch_to_the_general_way() -> None:
    net, a, b = connected()
    peer = b.peer("a")
    a.skew_ns = 1000 * MS  # a is a hop ahead: it seals for the next epoch
    epoch, dgram = sealed_from(a, b, PING)
    a.skew_ns = 0
    session = peer.sealing
    assert session is not None and epoch == session.recv_epoch + 1
    before = state(peer)
    assert peer.open_one(dgram, (epoch,), b.now()) is None
    assert state(peer) == before
    assert deliver(net, a, b, epoch, dgram).tun == [PING]
    assert session.recv_epoch == epoch


def test_a_datagram_sealed_by_seal_one_opens_as_the_packet() -> None:
    net, a, b = connected()
    sender = a.peer("b")
    sealed = sender.seal_one(PING, a.now())
    assert sealed is not None
    epoch, dgram = sealed
    assert deliver(net, a, b, epoch, dgram).tun == [PING]
    # The general way carries on from the next counter: nothing is reused.
    again = sealed_from(a, b, PING)
    assert again[0] == epoch and again[1][:8] != dgram[:8]
    assert deliver(net, a, b, *again).tun == [PING]


def test_seal_one_leaves_a_new_epoch_and_no_session_to_on_packet() -> None:
    net, a, b = connected()
    sender = a.peer("b")
    net.run_until(net.now_ns + SECOND)  # the clock is in an epoch not sealed for
    before = state(sender)
    assert sender.seal_one(PING, a.now()) is None
    assert state(sender) == before
    epoch, dgram = sealed_from(a, b, PING)
    assert deliver(net, a, b, epoch, dgram).tun == [PING]
    sender.sealing = None
    assert sender.seal_one(PING, a.now()) is None


def test_a_forgotten_session_leaves_no_key_behind() -> None:
    net, a, b = connected()
    pong = ipv4_packet("100.64.0.2", "100.64.0.1", 1, size=84)
    for host, other, packet in ((a, b, PING), (b, a, pong)):
        peer = host.peer(other.name)
        session = peer.sealing
        assert session is not None
        sealed = peer.seal_one(packet, host.now())
        assert sealed is not None
        epoch, dgram = sealed
        assert deliver(net, host, other, epoch, dgram).tun == [packet]
        keys = peer.schedule.keys(epoch)
        caches = [keys.send_data_keys, keys.send_lone, keys.send_data]
        assert any(session.secret in cache for cache in caches)
        peer.schedule.forget_session(session.secret)
        for cache in (*caches, keys.recv_data_keys, keys.recv_lone, keys.recv_data):
            assert session.secret not in cache


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 199), st.integers(1, 255))
def test_open_one_on_anything_never_raises_nor_changes_state(
    garbage: bytes, at: int, flip: int
) -> None:
    """Random bytes, and an authentic datagram with one byte changed."""
    net, a, b = connected()
    peer = b.peer("a")
    epoch, dgram = sealed_from(a, b, PING)
    tampered = bytearray(dgram)
    tampered[at % len(dgram)] ^= flip
    before = state(peer)
    for candidate in (garbage, bytes(tampered)):
        assert peer.open_one(candidate, (epoch,), b.now()) is None
    assert state(peer) == before
