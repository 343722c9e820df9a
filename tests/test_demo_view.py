"""The demo's ping counts, from lines as iputils `ping -O` prints them."""

from __future__ import annotations

from agent.demo_view import LOST_AFTER_SEQS, PingCount


def reply(seq: int, rtt_ms: float = 0.5) -> str:
    return f"64 bytes from 100.64.0.2: icmp_seq={seq} ttl=64 time={rtt_ms} ms\n"


def no_answer(seq: int) -> str:
    return f"no answer yet for icmp_seq={seq}\n"


def fed(*lines: str) -> PingCount:
    count = PingCount()
    for line in lines:
        count.feed(line)
    return count


def test_each_reply_counts_and_the_last_gives_the_round_trip() -> None:
    count = fed(reply(1, 0.4), reply(2, 0.7))
    assert (count.replies, count.lost, count.last_rtt_ms) == (2, 0, 0.7)


def test_a_late_reply_is_not_a_loss() -> None:
    count = fed(no_answer(1), no_answer(2), reply(1), reply(2), reply(3))
    assert (count.replies, count.lost) == (3, 0)


def test_a_request_is_lost_once_enough_later_ones_went_out() -> None:
    later = [reply(seq) for seq in range(2, 2 + LOST_AFTER_SEQS)]
    assert fed(no_answer(1), *later[:-1]).lost == 0
    assert fed(no_answer(1), *later).lost == 1


def test_a_duplicate_reply_counts_once() -> None:
    count = fed(reply(1), reply(1).replace(" ms", " ms (DUP!)"))
    assert count.replies == 1


def test_counting_goes_on_after_the_sequence_number_wraps() -> None:
    count = fed(reply(65534), reply(65535), no_answer(0), reply(1), reply(2))
    assert (count.replies, count.lost, count.sent_seq) == (4, 0, 65536 + 2)


def test_other_lines_change_nothing() -> None:
    count = fed("PING 100.64.0.2 (100.64.0.2) 56(84) bytes of data.\n", "\n")
    assert (count.replies, count.lost, count.last_rtt_ms) == (0, 0, None)
