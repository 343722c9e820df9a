"""The fast path gives the same results as the one-by-one path."""

from __future__ import annotations

from tests.sim import SECOND, ipv4_packet
from tests.test_peer_rules import connected
from tunnel import batch
from tunnel.output import Output


def packets(n: int, size: int = 1400) -> list[bytes]:
    return [ipv4_packet("100.64.0.1", "100.64.0.2", i, size=size - i) for i in range(n)]


def test_a_sealed_run_opens_one_by_one_in_order() -> None:
    net, a, b = connected()
    out = Output()
    batch.seal_packets(a.peer("b"), packets(40), a.now(), out)
    assert len(out.send) == 40
    got = Output()
    for _, epoch, dgram in out.send:
        b.node.on_datagram(b.peer("a"), (epoch,), dgram, b.now(), got)
    assert got.tun == packets(40)


def test_a_run_of_datagrams_opens_like_one_by_one() -> None:
    net, a, b = connected()
    out = Output()
    for packet in packets(30):
        a.node.on_tun_packet(packet, a.now(), out)
    epoch = out.send[0][1]
    got = Output()
    batch.open_datagrams(
        b.peer("a"), [d for _, _, d in out.send], (epoch,), b.now(), got
    )
    assert got.tun == packets(30)


def test_a_run_with_replays_and_garbage_delivers_each_packet_once() -> None:
    net, a, b = connected()
    out = Output()
    batch.seal_packets(a.peer("b"), packets(10), a.now(), out)
    epoch = out.send[0][1]
    dgrams = [d for _, _, d in out.send]
    mixed = dgrams[:5] + [dgrams[2], b"\x00" * 40] + dgrams[5:] + dgrams[:3]
    got = Output()
    batch.open_datagrams(b.peer("a"), mixed, (epoch,), b.now(), got)
    assert got.tun == packets(10)
    assert b.peer("a").stats.drops["replay"] == 4


def test_counters_reserved_by_a_run_are_never_reused() -> None:
    net, a, b = connected()
    out = Output()
    batch.seal_packets(a.peer("b"), packets(5), a.now(), out)
    a.node.on_tun_packet(packets(1)[0], a.now(), out)
    batch.seal_packets(a.peer("b"), packets(5), a.now(), out)
    epochs = {e for _, e, _ in out.send}
    got = Output()
    for _, epoch, dgram in out.send:
        b.node.on_datagram(b.peer("a"), (epoch,), dgram, b.now(), got)
    assert len(epochs) == 1 and len(got.tun) == 11


def test_a_run_without_a_session_waits_like_single_packets() -> None:
    net, a, b = connected()
    b.crash()
    net.run_until(net.now_ns + 200 * SECOND)  # a's ephemeral expires while idle
    tx_before = a.peer("b").stats.tx_datagrams
    out = Output()
    batch.seal_packets(a.peer("b"), packets(3), a.now(), out)
    assert a.peer("b").sealing is None
    assert list(a.peer("b").pending) == packets(3)
    assert a.peer("b").stats.tx_datagrams == tx_before
