"""A pair (and a mesh) of protocol cores, wired in memory with a fake clock.

These are the core's end-to-end specifications: across hundreds of hops, with
ephemeral replacement, restarts, reordering, duplicates, lost hellos and clock
skew, every packet that should arrive arrives exactly once, and none that should
not does.
"""

from __future__ import annotations

from tests.sim import MS, SECOND, Link, SimHost, SimNet, Traffic
from tunnel import datagram


def pair(seed: int = 1, **b_kw: int) -> tuple[SimNet, SimHost, SimHost]:
    net = SimNet(seed)
    a = net.add("a", "100.64.0.1")
    b = net.add("b", "100.64.0.2", **b_kw)
    return net, a, b


def boot(*hosts: SimHost) -> None:
    for host in hosts:
        host.boot()


def assert_exactly_once(
    traffic: Traffic,
    src: SimHost,
    dst: SimHost,
    since_ns: int = 0,
    until_ns: int = 2**63,
) -> None:
    sent = traffic.tags_sent(src, since_ns, until_ns)
    got = {tag for tag in sent if dst.received[tag] > 0}
    assert got == sent, f"{len(sent - got)} of {len(sent)} packets lost"
    dupes = {tag for tag, n in dst.received.items() if n > 1}
    assert not dupes, f"{len(dupes)} packets delivered more than once"


def is_hello_to(dst: SimHost):
    def check(dgram: bytes, sender: SimHost, receiver: SimHost) -> bool:
        if receiver is not dst or receiver.node is None:
            return False
        peer = receiver.node.peers[sender.name]
        epoch = peer.schedule.epoch_at(receiver.now() // MS)
        return any(
            datagram.is_hello(datagram.unmask(peer.schedule.keys(e).recv_hp, dgram))
            for e in (epoch,)
        )

    return check


def test_traffic_crosses_200_hops_exactly_once_with_ephemeral_replacement() -> None:
    net, a, b = pair()
    boot(a, b)
    traffic = Traffic(net, a, b, every_ns=50 * MS)
    end = net.now_ns + 240 * SECOND
    traffic.run(net.now_ns + 10 * MS, end)
    first_eph = a.node.ephemerals.current
    net.run_until(end + SECOND)
    assert_exactly_once(traffic, a, b)
    assert_exactly_once(traffic, b, a)
    assert a.node.ephemerals.current is not first_eph  # replaced at 120 s
    assert first_eph.erased  # and erased after
    schedule = a.peer("b").schedule
    hops = schedule.epoch_at(end // MS) - schedule.epoch_at((end - 240 * SECOND) // MS)
    assert hops >= 200


def test_reordered_and_duplicated_datagrams_arrive_exactly_once() -> None:
    net, a, b = pair(seed=2)
    net.link = Link(duplicate=0.1, jitter_ns=30 * MS)
    boot(a, b)
    traffic = Traffic(net, a, b, every_ns=2 * MS)
    end = net.now_ns + 30 * SECOND
    traffic.run(net.now_ns + 10 * MS, end)
    net.run_until(end + SECOND)
    assert_exactly_once(traffic, a, b)
    assert_exactly_once(traffic, b, a)
    assert b.peer("a").stats.drops.get("replay", 0) > 0


def test_lost_hellos_are_retried_until_a_session_forms() -> None:
    net, a, b = pair(seed=3)
    lost = {"n": 0}

    def lose_first_hellos(dgram: bytes, sender: SimHost, receiver: SimHost) -> bool:
        if lost["n"] < 4 and is_hello_to(receiver)(dgram, sender, receiver):
            lost["n"] += 1
            return True
        return False

    net.link = Link(drop_if=lose_first_hellos)
    boot(a, b)
    traffic = Traffic(net, a, b, every_ns=100 * MS)
    traffic.run(net.now_ns, net.now_ns + 2 * SECOND)  # 20 packets: fit the queue
    net.run_until(net.now_ns + 20 * SECOND)
    assert lost["n"] == 4
    assert_exactly_once(traffic, a, b)
    assert_exactly_once(traffic, b, a)


def test_restart_of_either_side_resumes_traffic() -> None:
    for restarted in ("a", "b"):
        net, a, b = pair(seed=4)
        boot(a, b)
        host = net.hosts[restarted]
        traffic = Traffic(net, a, b, every_ns=20 * MS)
        t0 = net.now_ns
        traffic.run(t0, t0 + 60 * SECOND)
        net.at(t0 + 20 * SECOND, host.crash)
        net.at(t0 + 25 * SECOND, host.boot)
        net.run_until(t0 + 61 * SECOND)
        assert_exactly_once(traffic, a, b, t0, t0 + 20 * SECOND - 10 * MS)
        assert_exactly_once(traffic, b, a, t0, t0 + 20 * SECOND - 10 * MS)
        # within 2 s of the restart everything flows again, both ways
        assert_exactly_once(traffic, a, b, t0 + 27 * SECOND, t0 + 60 * SECOND)
        assert_exactly_once(traffic, b, a, t0 + 27 * SECOND, t0 + 60 * SECOND)


def test_datagrams_recorded_before_a_restart_never_open_after_it() -> None:
    net, a, b = pair(seed=5)
    boot(a, b)
    traffic = Traffic(net, a, b, every_ns=100 * MS)
    t0 = net.now_ns
    traffic.run(t0, t0 + 5 * SECOND)
    net.run_until(t0 + 6 * SECOND)
    b.crash()
    b.boot()
    net.run_until(net.now_ns + SECOND)
    before = sum(b.received.values())
    net.replay_recorded(b)
    assert sum(b.received.values()) == before


def test_replayed_datagrams_are_dropped_and_counted() -> None:
    net, a, b = pair(seed=6)
    boot(a, b)
    traffic = Traffic(net, a, b, every_ns=100 * MS)
    t0 = net.now_ns
    traffic.run(t0, t0 + 3 * SECOND)
    net.run_until(t0 + 3 * SECOND + 50 * MS)
    before = dict(b.received)
    net.replay_recorded(b)
    assert dict(b.received) == before
    assert b.peer("a").stats.drops.get("replay", 0) > 0


def test_clock_skew_of_nine_tenths_of_a_hop_is_tolerated() -> None:
    for skew in (900 * MS, -900 * MS):
        net, a, b = pair(seed=7, skew_ns=skew)
        boot(a, b)
        traffic = Traffic(net, a, b, every_ns=20 * MS)
        t0 = net.now_ns
        traffic.run(t0 + SECOND, t0 + 30 * SECOND)
        net.run_until(t0 + 31 * SECOND)
        assert_exactly_once(traffic, a, b)
        assert_exactly_once(traffic, b, a)


def test_clock_skew_beyond_one_hop_fails_closed() -> None:
    net, a, b = pair(seed=8, skew_ns=1500 * MS)
    boot(a, b)
    traffic = Traffic(net, a, b, every_ns=50 * MS)
    t0 = net.now_ns
    traffic.run(t0, t0 + 20 * SECOND)
    net.run_until(t0 + 21 * SECOND)
    assert sum(a.received.values()) == 0
    assert sum(b.received.values()) == 0
    assert b.peer("a").stats.drops.get("hello_clock", 0) > 0
    assert b.peer("a").stats.rejected_offset_ns is not None


def test_a_full_mesh_of_three_delivers_every_pair() -> None:
    net = SimNet(9)
    hosts = [net.add(n, f"100.64.0.{i + 1}") for i, n in enumerate("abc")]
    boot(*hosts)
    t0 = net.now_ns
    flows = [
        Traffic(net, x, y, every_ns=100 * MS)
        for i, x in enumerate(hosts)
        for y in hosts[i + 1 :]
    ]
    for flow in flows:
        flow.run(t0, t0 + 10 * SECOND)
    net.run_until(t0 + 11 * SECOND)
    for flow in flows:
        for src, dst in ((flow.a, flow.b), (flow.b, flow.a)):
            sent = flow.tags_sent(src)
            assert all(dst.received[t] == 1 for t in sent)


def test_mismatched_hop_interval_exchanges_nothing() -> None:
    net, a, b = pair(seed=10, hop_ms=2000)
    boot(a, b)
    traffic = Traffic(net, a, b, every_ns=100 * MS)
    t0 = net.now_ns
    traffic.run(t0, t0 + 10 * SECOND)
    net.run_until(t0 + 11 * SECOND)
    assert sum(a.received.values()) + sum(b.received.values()) == 0
    assert a.peer("b").stats.hellos_sent > 0
    assert a.peer("b").stats.hellos_accepted == 0
