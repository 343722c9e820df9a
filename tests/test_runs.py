"""A GRO run opened whole (tunnel/runs.py) gives what opening it one by one gives."""

from __future__ import annotations

import os
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.native_or_python import sealing_code  # noqa: F401 (autouse)
from tests.test_peer_rules import connected
from tunnel import batch, coalesce, native, offload
from tunnel.constants import PAD_TO
from tunnel.output import Output
from tunnel.runs import open_gro_run, seal_rows

MSS = 1368


ADDRS = bytes([100, 64, 0, 1, 100, 64, 0, 2])


def tcp_superpacket(
    segments: int, last: int = MSS, sport: int = 40000, seq: int = 1, mss: int = MSS
) -> tuple[bytes, bytes]:
    """(virtio-net header, packet): TSO from 100.64.0.1 to 100.64.0.2."""
    payload = os.urandom((segments - 1) * mss + last)
    ip = struct.pack(
        "!BBHHHBBH8s", 0x45, 0, 40 + len(payload), 7, 0x4000, 64, 6, 0, ADDRS
    )
    tcp = struct.pack("!HHIIBBHHH", sport, 5201, seq, 1, 5 << 4, 0x18, 512, 0, 0)
    hdr = offload.VnetHdr(offload.F_NEEDS_CSUM, offload.GSO_TCPV4, 40, mss, 20, 16)
    return hdr.pack(), ip + tcp + payload


def sealed_run(a: object, packets: list[bytes]) -> tuple[int, bytes, int]:
    """(epoch, GRO buffer, segment size) for packets a seals for b."""
    out = Output()
    batch.seal_packets(a.peer("b"), packets, a.now(), out)  # type: ignore[attr-defined]
    epochs = {e for _, e, _ in out.send}
    dgrams = [d for _, _, d in out.send]
    assert len(epochs) == 1
    return epochs.pop(), b"".join(dgrams), len(dgrams[0])


def gso_write(buffers: tuple[bytes, ...]) -> tuple[bytes, bytes]:
    """(virtio-net header, superpacket) of one TUN write in Output.tun_gso."""
    joined = b"".join(buffers)
    return joined[: offload.VNET_HDR_LEN], joined[offload.VNET_HDR_LEN :]


def wire_packets(vnet: bytes, packet: bytes) -> list[bytes]:
    return offload.split(vnet, packet)


def test_one_tcp_flow_becomes_the_superpacket_the_sender_split() -> None:
    net, a, b = connected()
    vnet, packet = tcp_superpacket(40, last=500)
    segs = wire_packets(vnet, packet)
    epoch, buf, size = sealed_run(a, offload.split(vnet, packet, PAD_TO))
    got = Output()
    open_gro_run(b.peer("a"), buf, size, (epoch,), b.now(), got, superpackets=True)
    assert got.tun == [] and len(got.tun_gso) == 1
    at, buffers = got.tun_gso[0]
    assert at == 0
    written = gso_write(buffers)
    assert [written] == coalesce.coalesce(segs)
    assert b.peer("a").stats.rx_datagrams >= 40


def test_without_superpackets_each_segment_is_delivered_as_sent() -> None:
    net, a, b = connected()
    vnet, packet = tcp_superpacket(10, last=MSS)
    segs = wire_packets(vnet, packet)
    epoch, buf, size = sealed_run(a, offload.split(vnet, packet, PAD_TO))
    got = Output()
    open_gro_run(b.peer("a"), buf, size, (epoch,), b.now(), got, superpackets=False)
    assert got.tun == segs and got.tun_gso == []


def test_a_replayed_run_delivers_nothing_and_counts_each_datagram() -> None:
    net, a, b = connected()
    vnet, packet = tcp_superpacket(12)
    epoch, buf, size = sealed_run(a, offload.split(vnet, packet, PAD_TO))
    peer = b.peer("a")
    open_gro_run(peer, buf, size, (epoch,), b.now(), Output(), superpackets=True)
    again = Output()
    open_gro_run(peer, buf, size, (epoch,), b.now(), again, superpackets=True)
    assert again.tun == [] and again.tun_gso == []
    assert peer.stats.drops["replay"] == 12


def test_a_forged_datagram_mid_run_costs_only_itself() -> None:
    net, a, b = connected()
    vnet, packet = tcp_superpacket(8)
    segs = wire_packets(vnet, packet)
    epoch, buf, size = sealed_run(a, offload.split(vnet, packet, PAD_TO))
    forged = bytearray(buf)
    forged[3 * size + 100] ^= 1  # one bit of datagram 3's ciphertext
    got = Output()
    peer = b.peer("a")
    open_gro_run(peer, bytes(forged), size, (epoch,), b.now(), got, True)
    delivered = [gso_write(bufs)[1] for _, bufs in got.tun_gso] + got.tun
    assert sorted(delivered) != []
    for seg in segs[:3] + segs[4:]:
        assert any(seg[40:] in d for d in delivered)
    assert not any(segs[3][40:] in d for d in delivered)
    assert peer.stats.drops["auth"] == 1


def test_interleaved_flows_are_all_delivered_in_their_own_order() -> None:
    net, a, b = connected()
    one = wire_packets(*tcp_superpacket(6, sport=1000))
    two = wire_packets(*tcp_superpacket(6, sport=2000, seq=99))
    mixed = [p for pair in zip(one, two, strict=True) for p in pair]
    padded = [p + bytes(-len(p) % PAD_TO) for p in mixed]
    epoch, buf, size = sealed_run(a, padded)
    got = Output()
    open_gro_run(b.peer("a"), buf, size, (epoch,), b.now(), got, superpackets=True)
    assert got.tun == mixed and got.tun_gso == []


def test_a_packet_from_an_address_the_peer_does_not_own_is_dropped() -> None:
    net, a, b = connected()
    vnet, packet = tcp_superpacket(4)
    spoofed = bytearray(packet)
    spoofed[12:16] = bytes([100, 64, 0, 9])  # not a's allowed address
    segs = offload.split(vnet, bytes(spoofed), PAD_TO)
    epoch, buf, size = sealed_run(a, segs)
    got = Output()
    peer = b.peer("a")
    open_gro_run(peer, buf, size, (epoch,), b.now(), got, superpackets=True)
    assert got.tun == [] and got.tun_gso == []
    assert peer.stats.drops["source"] == 4


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=4000), st.integers(1, 1500))
def test_random_bytes_as_a_gro_run_never_raise(data: bytes, size: int) -> None:
    net, a, b = connected()
    peer = b.peer("a")
    epoch = peer.schedule.epoch_at(b.now() // 1_000_000)
    got = Output()
    open_gro_run(peer, data, size, (epoch,), b.now(), got, superpackets=True)
    assert got.tun == [] and got.tun_gso == []


def test_stretches_of_interleaved_flows_each_become_a_superpacket() -> None:
    net, a, b = connected()
    one = wire_packets(*tcp_superpacket(6, sport=1000))
    two = wire_packets(*tcp_superpacket(5, sport=2000, seq=99))
    three = wire_packets(*tcp_superpacket(1, sport=3000, seq=7))
    packets = one[:3] + two + three + one[3:]
    padded = [p + bytes(-len(p) % PAD_TO) for p in packets]
    epoch, buf, size = sealed_run(a, padded)
    got = Output()
    open_gro_run(b.peer("a"), buf, size, (epoch,), b.now(), got, superpackets=True)
    written = [gso_write(bufs) for _, bufs in got.tun_gso]
    assert written == (
        coalesce.coalesce(one[:3]) + coalesce.coalesce(two) + coalesce.coalesce(one[3:])
    )
    assert got.tun == three and [at for at, _ in got.tun_gso] == [0, 0, 1]


def sealed_rows(a: object, vnet: bytes, packet: bytes) -> tuple[int, bytes, int]:
    """(epoch, buffer, datagram size) a seals for b from a TCP superpacket."""
    rows, lengths = offload.split_tcp_rows(vnet, packet, PAD_TO) or (None, [])
    assert rows is not None
    out = Output()
    seal_rows(a.peer("b"), rows, lengths, a.now(), out)  # type: ignore[attr-defined]
    assert out.send == [] and len(out.send_runs) == 1
    _, _, epoch, size, buf = out.send_runs[0]
    return epoch, bytes(buf), size


def test_sealed_rows_open_one_by_one_as_the_split_packets() -> None:
    net, a, b = connected()
    vnet, packet = tcp_superpacket(45, last=77)
    epoch, buf, size = sealed_rows(a, vnet, packet)
    got = Output()
    for at in range(0, len(buf), size):
        b.node.on_datagram(b.peer("a"), (epoch,), buf[at : at + size], b.now(), got)
    assert got.tun == wire_packets(vnet, packet)
    assert a.peer("b").stats.tx_datagrams >= 45


def test_sealed_rows_open_as_a_gro_run_into_the_same_superpacket() -> None:
    net, a, b = connected()
    vnet, packet = tcp_superpacket(30, last=MSS)
    epoch, buf, size = sealed_rows(a, vnet, packet)
    got = Output()
    open_gro_run(b.peer("a"), buf, size, (epoch,), b.now(), got, superpackets=True)
    written = [gso_write(bufs) for _, bufs in got.tun_gso]
    assert written == coalesce.coalesce(wire_packets(vnet, packet))


def test_rows_without_a_session_wait_like_single_packets() -> None:
    net, a, b = connected()
    b.crash()
    net.run_until(net.now_ns + 200 * 10**9)  # a's sessions expire while idle
    vnet, packet = tcp_superpacket(3)
    rows, lengths = offload.split_tcp_rows(vnet, packet, PAD_TO) or (None, [])
    assert rows is not None
    out = Output()
    seal_rows(a.peer("b"), rows, lengths, a.now(), out)
    assert out.send_runs == []
    assert list(a.peer("b").pending) == offload.split(vnet, packet, PAD_TO)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_whatever_an_authentic_peer_seals_never_raises(data: st.DataObject) -> None:
    """A peer with the keys may still send nonsense inside: headers that claim
    any length, version or TCP shape. Opening it as a run drops or delivers it
    packet by packet, and never raises."""
    net, a, b = connected()
    size = data.draw(st.sampled_from([32, 48, 64, 112, 1424]))
    rows = data.draw(st.integers(2, 12))
    template = data.draw(st.binary(min_size=size, max_size=size))
    packets = []
    for _ in range(rows):
        row = bytearray(template)
        for _ in range(data.draw(st.integers(0, 4))):
            at = data.draw(st.integers(0, size - 1))
            row[at] = data.draw(st.integers(0, 255))
        packets.append(bytes(row))
    epoch, buf, dsize = sealed_run(a, packets)
    got = Output()
    open_gro_run(b.peer("a"), buf, dsize, (epoch,), b.now(), got, superpackets=True)
    for packet in got.tun:
        assert packet in [p[: len(packet)] for p in packets]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_tcp_segments_with_any_header_changed_never_raise(data: st.DataObject) -> None:
    net, a, b = connected()
    vnet, packet = tcp_superpacket(data.draw(st.integers(3, 10)))
    segs = offload.split(vnet, packet, PAD_TO)[:-1]
    mutated = []
    for seg in segs:
        row = bytearray(seg)
        for _ in range(data.draw(st.integers(0, 3))):
            at = data.draw(st.integers(0, 59))
            row[at] = data.draw(st.integers(0, 255))
        mutated.append(bytes(row))
    epoch, buf, size = sealed_run(a, mutated)
    got = Output()
    open_gro_run(b.peer("a"), buf, size, (epoch,), b.now(), got, superpackets=True)
    delivered = got.tun + [gso_write(bufs)[1] for _, bufs in got.tun_gso]
    assert sum(len(p) for p in delivered) <= sum(len(p) for p in mutated)


# -- Reused buffers (tunnel/buffers.py) --------------------------------------------


def test_runs_sealed_before_a_flush_keep_their_own_buffers() -> None:
    """Two superpackets sealed into one Output before the shell sends either:
    the second must not be written over the first."""
    net, a, b = connected()
    out = Output()
    packets = [tcp_superpacket(20, seq=1), tcp_superpacket(20, seq=1 + 20 * MSS)]
    for vnet, packet in packets:
        split = offload.split_tcp_rows(vnet, packet, PAD_TO, out.buffers)
        assert split is not None
        seal_rows(a.peer("b"), split[0], split[1], a.now(), out)
    assert len(out.send_runs) == 2
    got = Output()
    for _, _, epoch, size, buf in out.send_runs:
        open_gro_run(b.peer("a"), bytes(buf), size, (epoch,), b.now(), got, True)
    written = [gso_write(bufs) for _, bufs in got.tun_gso]
    assert written == [coalesce.coalesce(wire_packets(*p))[0] for p in packets]


def test_a_cleared_output_lends_the_same_buffer_again() -> None:
    net, a, b = connected()
    out = Output()
    lent = []
    for seq in (1, 1 + 10 * MSS):
        split = offload.split_tcp_rows(
            *tcp_superpacket(10, seq=seq), PAD_TO, out.buffers
        )
        assert split is not None
        seal_rows(a.peer("b"), split[0], split[1], a.now(), out)
        lent.append(out.send_runs[0][4].obj)
        out.clear()
    assert lent[0] is lent[1]


def test_a_reused_receive_buffer_opens_only_its_first_nbytes() -> None:
    """The shell reads each GRO run into one buffer: what an earlier, longer run
    left beyond nbytes is never opened or delivered."""
    net, a, b = connected()
    out = Output()
    rx = out.buffers.keep(bytearray(65_535))
    peer = b.peer("a")
    long_run = tcp_superpacket(40, seq=1)
    short_run = tcp_superpacket(9, last=300, seq=1 + 40 * MSS)
    written = []
    for vnet, packet in (long_run, short_run):
        epoch, buf, size = sealed_rows(a, vnet, packet)
        rx[: len(buf)] = buf
        open_gro_run(peer, rx, size, (epoch,), b.now(), out, True, len(buf))
        written += [gso_write(bufs) for _, bufs in out.tun_gso]
        assert out.tun == []
        out.clear()
    expected = [coalesce.coalesce(wire_packets(*p))[0] for p in (long_run, short_run)]
    assert written == expected
    assert peer.stats.drops == {}


def test_runs_longer_than_the_nonce_block_seal_and_open_whole() -> None:
    """More rows than buffers.MAX_ROWS (small MSS): sealed and opened in chunks."""
    net, a, b = connected()
    mss = 96
    payload = os.urandom(299 * mss + 10)
    ip = struct.pack(
        "!BBHHHBBH8s", 0x45, 0, 40 + len(payload), 7, 0x4000, 64, 6, 0, ADDRS
    )
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1, 1, 5 << 4, 0x18, 512, 0, 0)
    vnet = offload.VnetHdr(offload.F_NEEDS_CSUM, offload.GSO_TCPV4, 40, mss, 20, 16)
    packet = ip + tcp + payload
    out = Output()
    split = offload.split_tcp_rows(vnet.pack(), packet, PAD_TO, out.buffers)
    assert split is not None and len(split[1]) == 300 > 128
    seal_rows(a.peer("b"), split[0], split[1], a.now(), out)
    _, _, epoch, size, buf = out.send_runs[0]
    segs = wire_packets(vnet.pack(), packet)
    got = Output()
    for at in range(0, len(buf), 64 * size):  # GRO hands over 64 at most
        chunk = bytes(buf[at : at + 64 * size])
        open_gro_run(b.peer("a"), chunk, size, (epoch,), b.now(), got, False)
    assert got.tun == segs
    got = Output()
    open_gro_run(b.peer("a"), bytes(buf), size, (epoch,), b.now(), got, False)
    assert got.tun == [] and b.peer("a").stats.drops["replay"] == 300


def test_a_split_into_used_scratch_equals_a_split_into_zeros() -> None:
    out = Output()
    for segments, last, mss in ((44, MSS, MSS), (7, 5, 1371), (30, 999, 1371)):
        vnet, packet = tcp_superpacket(segments, last=last, mss=mss)
        fresh = offload.split_tcp_rows(vnet, packet, PAD_TO)
        reused = offload.split_tcp_rows(vnet, packet, PAD_TO, out.buffers)
        assert fresh is not None and reused is not None
        assert reused[1] == fresh[1]
        assert reused[0].tobytes() == fresh[0].tobytes()


def test_a_superpacket_sealed_in_one_call_is_the_run_split_and_seal_make() -> None:
    """Node.on_tun_superpacket: one native call where built; the same datagrams
    (opened by b to the same superpacket) as split_tcp_rows and seal_rows."""
    net, a, b = connected()
    vnet, packet = tcp_superpacket(45, last=900)
    shape = offload.tcp_shape(vnet, memoryview(packet))
    assert shape is not None
    out = Output()
    done = a.node.on_tun_superpacket(memoryview(packet), shape, a.now(), out)
    assert done == (native.fastpath is not None)
    if not done:  # the Python way, as the data plane takes it then
        split = offload.split_tcp_rows(vnet, packet, PAD_TO)
        assert split is not None
        a.node.on_tun_rows(split[0], split[1], a.now(), out)
    ((_, peer, epoch, size, view),) = out.send_runs
    assert peer is a.peer("b") and a.peer("b").stats.tx_datagrams >= 45
    got = Output()
    open_gro_run(b.peer("a"), bytes(view), size, (epoch,), b.now(), got, True)
    ((at, buffers),) = got.tun_gso
    written = gso_write(buffers)
    assert [written] == coalesce.coalesce(wire_packets(vnet, packet))


def test_a_superpacket_with_no_session_is_left_to_the_python_way() -> None:
    net, a, b = connected()
    a.peer("b").sealing = None
    vnet, packet = tcp_superpacket(10)
    shape = offload.tcp_shape(vnet, memoryview(packet))
    assert shape is not None
    out = Output()
    assert not a.node.on_tun_superpacket(memoryview(packet), shape, a.now(), out)
    assert out.send_runs == [] and out.send == []


def test_a_superpacket_to_nobody_is_left_to_the_python_way() -> None:
    net, a, b = connected()
    vnet, packet = tcp_superpacket(10)
    to_nobody = packet[:16] + bytes([100, 64, 9, 9]) + packet[20:]
    shape = offload.tcp_shape(vnet, memoryview(to_nobody))
    assert shape is not None
    assert not a.node.on_tun_superpacket(
        memoryview(to_nobody), shape, a.now(), Output()
    )
