"""One rule of PROTOCOL.md per test, on a pair of cores in memory."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sim import MS, SECOND, SimHost, SimNet, ipv4_packet
from tunnel import datagram, hello
from tunnel.constants import HELLO_FLAG
from tunnel.output import Output


def connected(seed: int = 1, **b_kw: int) -> tuple[SimNet, SimHost, SimHost]:
    net = SimNet(seed)
    a = net.add("a", "100.64.0.1")
    b = net.add("b", "100.64.0.2", **b_kw)
    a.boot()
    b.boot()
    net.run_until(net.now_ns + 200 * MS)
    assert a.peer("b").sealing is not None and b.peer("a").sealing is not None
    return net, a, b


def sealed_from(host: SimHost, to: SimHost, packet: bytes) -> tuple[int, bytes]:
    """(epoch, datagram) that `host` sends for an inner packet, not delivered."""
    out = Output()
    host.node.on_tun_packet(packet, host.now(), out)
    ((_, epoch, dgram),) = out.send
    return epoch, dgram


def deliver(
    net: SimNet, src: SimHost, dst: SimHost, epoch: int, dgram: bytes
) -> Output:
    out = Output()
    dst.node.on_datagram(dst.peer(src.name), (epoch,), dgram, dst.now(), out)
    return out


def test_a_session_forms_with_one_round_of_hellos_and_a_keepalive() -> None:
    net, a, b = connected()
    assert a.peer("b").stats.hellos_accepted >= 1
    assert b.peer("a").stats.hellos_accepted >= 1
    assert a.peer("b").stats.rx_datagrams >= 1  # b's keepalive


def test_packets_wait_for_a_session_and_are_flushed_when_it_forms() -> None:
    net = SimNet(2)
    a = net.add("a", "100.64.0.1")
    b = net.add("b", "100.64.0.2")
    a.boot()
    a.send_packet(b, 7)  # b is not up yet: a queues it
    assert len(a.peer("b").pending) == 1
    b.boot()
    net.run_until(net.now_ns + SECOND)
    assert b.received[7] == 1


def test_a_replayed_hello_is_neither_accepted_nor_answered() -> None:
    net, a, b = connected()
    net.run_until(net.now_ns + SECOND)  # past the answer rate limit
    out = Output()
    a.peer("b").send_hello(a.now(), out, please_answer=True)
    ((_, epoch, dgram),) = out.send
    first = deliver(net, a, b, epoch, dgram)
    assert first.drop is None and len(first.send) == 1  # answered
    net.run_until(net.now_ns + SECOND)
    again = deliver(net, a, b, epoch, dgram)
    assert again.drop == "hello_stale" and again.send == []


def test_answers_to_hellos_are_rate_limited() -> None:
    net, a, b = connected()
    answers = 0
    for _ in range(10):
        out = Output()
        a.peer("b").send_hello(a.now(), out, please_answer=True)
        ((_, epoch, dgram),) = out.send
        answers += len(deliver(net, a, b, epoch, dgram).send)
        net.run_until(net.now_ns + 10 * MS)
    assert 1 <= answers <= 1 + 100 // 250


def test_a_hello_of_another_version_is_dropped() -> None:
    net, a, b = connected()
    peer = a.peer("b")
    epoch = peer.schedule.epoch_at(a.now() // MS)
    keys = peer.schedule.keys(epoch)
    body = bytearray(hello.encode(hello.Hello(bytes(32), bytes(32), a.now(), True)))
    body[0] = 2
    dgram = datagram.seal(keys.send_hello, keys.send_hp, HELLO_FLAG | 5, bytes(body))
    assert deliver(net, a, b, epoch, dgram).drop == "hello_version"


def test_a_packet_from_outside_the_peers_allowed_addresses_is_dropped() -> None:
    net, a, b = connected()
    spoofed = ipv4_packet("100.64.0.99", "100.64.0.2", 1)
    peer = a.peer("b")
    out = Output()
    peer.on_packet(spoofed, a.now(), out)  # sealed as if routed to b
    ((_, epoch, dgram),) = out.send
    got = deliver(net, a, b, epoch, dgram)
    assert got.drop == "source" and got.tun == []


def test_a_packet_to_an_address_no_peer_allows_counts_as_no_route() -> None:
    net, a, b = connected()
    out = Output()
    a.node.on_tun_packet(ipv4_packet("100.64.0.1", "100.64.0.77", 1), a.now(), out)
    assert (out.drop, out.send, a.node.stats_no_route) == ("no_route", [], 1)


def test_multicast_and_broadcast_no_peer_allows_are_discarded_uncounted() -> None:
    net, a, b = connected()
    # An MLDv2 report from :: to ff02::16, as a TUN with no link-local sends it.
    mld_report = bytes.fromhex("6000000000200001") + bytes(16)
    mld_report += ipaddress.IPv6Address("ff02::16").packed + bytes(32)
    chatter = [
        ipv4_packet("100.64.0.1", "224.0.0.251", 1),  # mDNS
        ipv4_packet("100.64.0.1", "255.255.255.255", 2),
        mld_report,  # :: -> ff02::16
    ]
    for packet in chatter:
        out = Output()
        a.node.on_tun_packet(packet, a.now(), out)
        assert (out.drop, out.send) == (None, [])
    assert a.node.stats_no_route == 0


def test_a_control_message_is_dropped_after_opening() -> None:
    net, a, b = connected()
    out = Output()
    a.peer("b").on_packet(b"\x10" + bytes(40), a.now(), out)
    ((_, epoch, dgram),) = out.send
    assert deliver(net, a, b, epoch, dgram).drop == "control"


def test_an_inner_length_beyond_the_plaintext_is_dropped() -> None:
    net, a, b = connected()
    packet = bytearray(ipv4_packet("100.64.0.1", "100.64.0.2", 1, size=64))
    packet[2:4] = (200).to_bytes(2, "big")
    epoch, dgram = sealed_from(a, b, bytes(packet))
    assert deliver(net, a, b, epoch, dgram).drop == "length"


def test_padding_is_stripped_from_delivered_packets() -> None:
    net, a, b = connected()
    packet = ipv4_packet("100.64.0.1", "100.64.0.2", 1, size=61)
    epoch, dgram = sealed_from(a, b, packet)
    assert (len(dgram) - 24) % 16 == 0
    assert deliver(net, a, b, epoch, dgram).tun == [packet]


def test_a_datagram_from_the_previous_and_next_epoch_opens() -> None:
    net, a, b = connected()
    for shift in (-1, 1):
        a.skew_ns = shift * 1000 * MS
        epoch, dgram = sealed_from(a, b, ipv4_packet("100.64.0.1", "100.64.0.2", 1))
        a.skew_ns = 0
        assert deliver(net, a, b, epoch, dgram).tun
        net.run_until(net.now_ns + 3 * SECOND)  # let both leave that epoch


def test_a_sender_whose_clock_steps_back_less_than_a_hop_keeps_its_epoch() -> None:
    net, a, b = connected()
    first, _ = sealed_from(a, b, ipv4_packet("100.64.0.1", "100.64.0.2", 1))
    a.skew_ns = -600 * MS
    second, _ = sealed_from(a, b, ipv4_packet("100.64.0.1", "100.64.0.2", 2))
    assert second >= first


def test_a_sender_whose_clock_steps_back_more_than_a_hop_replaces_its_ephemeral() -> (
    None
):
    net, a, b = connected()
    net.run_until(net.now_ns + 2 * SECOND)
    a.send_packet(b, 1)
    before = a.node.ephemerals.current
    a.skew_ns = -2500 * MS
    a.send_packet(b, 2)
    assert a.node.ephemerals.current is not before
    a.skew_ns = 0
    net.run_until(net.now_ns + 2 * SECOND)
    assert b.received[2] == 1


def test_an_idle_ephemeral_expires_without_a_hello_and_traffic_restarts() -> None:
    net, a, b = connected()
    first = a.node.ephemerals.current
    sent = a.peer("b").stats.hellos_sent
    net.run_until(net.now_ns + 181 * SECOND)
    assert first.erased and a.node.ephemerals.current is not first
    assert a.peer("b").stats.hellos_sent == sent
    a.send_packet(b, 3)
    net.run_until(net.now_ns + SECOND)
    assert b.received[3] == 1


def test_no_ephemeral_private_key_outlives_180_seconds() -> None:
    net, a, b = connected()
    born = []
    for _ in range(400):
        born.append(a.node.ephemerals.current)
        a.send_packet(b, 0)
        net.run_until(net.now_ns + SECOND)
        for eph in born:
            if a.now() - eph.created_ns > 180 * SECOND + 100 * MS:
                assert eph.erased


def test_undecryptable_data_on_a_live_tuple_draws_a_hello_at_most_once_a_second() -> (
    None
):
    net, a, b = connected()
    epoch, dgram = sealed_from(a, b, ipv4_packet("100.64.0.1", "100.64.0.2", 1))
    b.crash()
    b.boot()
    net.run_until(net.now_ns + 50 * MS)
    hellos = 0
    for _ in range(20):
        hellos += len(deliver(net, a, b, epoch, dgram).send)
    assert hellos == 1


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(min_size=0, max_size=400), shift=st.integers(-3, 3))
def test_random_bytes_never_raise_and_never_deliver(garbage: bytes, shift: int) -> None:
    net, a, b = _shared_pair()
    peer = b.peer("a")
    epoch = peer.schedule.epoch_at(b.now() // MS) + shift
    out = Output()
    b.node.on_datagram(peer, (epoch,), garbage, b.now(), out)
    assert out.tun == [] and out.drop is not None


@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, 10_000), flip=st.integers(1, 255))
def test_a_tampered_datagram_never_opens(position: int, flip: int) -> None:
    net, a, b = _shared_pair()
    epoch, dgram = sealed_from(a, b, ipv4_packet("100.64.0.1", "100.64.0.2", 9))
    tampered = bytearray(dgram)
    tampered[position % len(tampered)] ^= flip
    out = deliver(net, a, b, epoch, bytes(tampered))
    assert out.tun == []


_PAIR: list[tuple[SimNet, SimHost, SimHost]] = []


def _shared_pair() -> tuple[SimNet, SimHost, SimHost]:
    if not _PAIR:
        _PAIR.append(connected(seed=42))
    return _PAIR[0]
