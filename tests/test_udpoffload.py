"""The pure parts of the UDP GSO/GRO helpers (the kernel side: test_tunoffload)."""

from __future__ import annotations

import socket

from hypothesis import given
from hypothesis import strategies as st

from tunnel.udpoffload import (
    SOL_UDP,
    UDP_GRO,
    UDP_MAX_SEGMENTS,
    UDP_SEGMENT,
    gro_segment_size,
    gso_runs,
    segment_cmsg,
    segments,
)


def test_gro_segment_size_is_read_from_the_udp_gro_cmsg() -> None:
    anc = [
        (socket.SOL_SOCKET, 1, b"\0" * 4),
        (SOL_UDP, UDP_GRO, (1400).to_bytes(4, "little")),
    ]
    assert gro_segment_size(anc) == 1400


def test_no_gro_cmsg_means_one_datagram() -> None:
    assert gro_segment_size([]) is None
    assert [bytes(d) for d in segments(b"abc", None)] == [b"abc"]


def test_segments_cut_a_coalesced_buffer_at_the_segment_size() -> None:
    buf = b"a" * 10 + b"b" * 10 + b"c" * 3
    assert [bytes(d) for d in segments(buf, 10)] == [b"a" * 10, b"b" * 10, b"c" * 3]


def test_segment_cmsg_carries_a_u16_size_for_sendmsg() -> None:
    level, kind, data = segment_cmsg(1400)
    assert (level, kind, int.from_bytes(data, "little")) == (SOL_UDP, UDP_SEGMENT, 1400)


def test_gso_runs_end_at_a_shorter_datagram() -> None:
    runs = gso_runs([b"x" * 100, b"x" * 100, b"x" * 60, b"x" * 100])
    assert [[len(d) for d in r] for r in runs] == [[100, 100, 60], [100]]


def test_gso_runs_split_at_a_longer_datagram() -> None:
    runs = gso_runs([b"x" * 100, b"x" * 200])
    assert [[len(d) for d in r] for r in runs] == [[100], [200]]


def test_gso_runs_hold_at_most_the_kernels_segment_count() -> None:
    runs = gso_runs([b"x" * 10] * (UDP_MAX_SEGMENTS + 1))
    assert [len(r) for r in runs] == [UDP_MAX_SEGMENTS, 1]


@given(st.lists(st.integers(min_value=1, max_value=1500), max_size=200))
def test_gso_runs_keep_order_and_each_run_is_sendable(sizes: list[int]) -> None:
    datagrams = [bytes([i % 256]) * n for i, n in enumerate(sizes)]
    runs = gso_runs(datagrams, max_bytes=65_000)
    assert [d for r in runs for d in r] == datagrams
    for run in runs:
        assert len(run) <= UDP_MAX_SEGMENTS and sum(map(len, run)) <= 65_000
        assert all(len(d) == len(run[0]) for d in run[:-1])
        assert len(run[-1]) <= len(run[0])
