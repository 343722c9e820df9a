"""The replay window accepts each counter at most once, within the window."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tunnel.constants import COUNTER_MAX, REPLAY_WINDOW, REPLAY_WINDOW_BITS
from tunnel.replay import ReplayWindow

W = REPLAY_WINDOW_BITS


def test_window_is_at_least_the_protocol_minimum() -> None:
    assert W >= REPLAY_WINDOW


def test_empty_window_has_no_highest_counter() -> None:
    assert ReplayWindow().highest == -1


def test_counters_in_order_are_all_accepted() -> None:
    window = ReplayWindow()
    assert all(window.accept(counter) for counter in range(3 * W))
    assert window.highest == 3 * W - 1


def test_duplicate_of_the_highest_counter_is_rejected() -> None:
    window = ReplayWindow()
    assert window.accept(7)
    assert not window.accept(7)


def test_duplicate_of_an_older_counter_is_rejected() -> None:
    window = ReplayWindow()
    for counter in range(100):
        window.accept(counter)
    assert not window.accept(42)


def test_reordered_counters_are_accepted_once_each() -> None:
    window = ReplayWindow()
    order = [5, 1, 4, 0, 3, 2, 9, 6, 8, 7]
    assert [window.accept(counter) for counter in order] == [True] * 10
    assert [window.accept(counter) for counter in order] == [False] * 10


def test_oldest_counter_still_in_the_window_is_accepted() -> None:
    window = ReplayWindow()
    window.accept(10_000)
    assert window.accept(10_000 - (W - 1))


def test_counter_just_older_than_the_window_is_rejected() -> None:
    window = ReplayWindow()
    window.accept(10_000)
    assert not window.accept(10_000 - W)


def test_unseen_counter_left_behind_by_a_jump_is_rejected() -> None:
    window = ReplayWindow()
    window.accept(3 + W)
    assert not window.accept(2)
    assert not window.accept(3)
    assert window.accept(4)


def test_jump_forward_forgets_counters_that_left_the_window() -> None:
    # After the jump, counters that were seen but are now outside the window
    # stay rejected (too old), while unseen ones inside it are accepted.
    window = ReplayWindow()
    for counter in range(W):
        window.accept(counter)
    window.accept(W + 100)
    assert not window.accept(100)
    assert window.accept(W + 50)
    assert not window.accept(W - 1)  # seen before the jump, still in the window


def test_jump_forward_by_more_than_the_window_clears_every_bit() -> None:
    window = ReplayWindow()
    for counter in range(W):
        window.accept(counter)
    far = 10 * W + 17
    window.accept(far)
    accepted = [window.accept(counter) for counter in range(far - W + 1, far)]
    assert all(accepted)


def test_counter_zero_is_accepted_once() -> None:
    window = ReplayWindow()
    assert window.accept(0)
    assert not window.accept(0)


def test_highest_possible_counter_is_accepted_once() -> None:
    window = ReplayWindow()
    assert window.accept(0)
    assert window.accept(COUNTER_MAX)
    assert not window.accept(COUNTER_MAX)
    assert window.highest == COUNTER_MAX


def test_counter_zero_is_too_old_after_the_highest_counter() -> None:
    window = ReplayWindow()
    window.accept(COUNTER_MAX)
    assert not window.accept(0)
    assert window.accept(COUNTER_MAX - 1)


def reference_accepts(counters: list[int]) -> list[bool]:
    """A set of everything seen plus the window rule, with no memory limit."""
    seen: set[int] = set()
    highest = -1
    verdicts = []
    for counter in counters:
        fresh = counter not in seen and counter > highest - W
        if fresh:
            seen.add(counter)
            highest = max(highest, counter)
        verdicts.append(fresh)
    return verdicts


# Counters come as steps from the previous one, biased to the window's edges,
# so that duplicates, reordering inside the window, counters just outside it
# and jumps of any length all turn up; a few jump to any counter at all.
_EDGES = [0, 1, -1, W - 1, W, W + 1, -(W - 1), -W, -(W + 1), 64, -64, 65, -65]
_step = st.one_of(st.sampled_from(_EDGES), st.integers(-W - 70, W + 70))
_anywhere = st.integers(min_value=0, max_value=COUNTER_MAX)


def _walk(start: int, moves: list[tuple[bool, int]]) -> list[int]:
    counters = []
    counter = start
    for jump, value in moves:
        counter = value if jump else min(max(counter + value, 0), COUNTER_MAX)
        counters.append(counter)
    return counters


_stepping = st.tuples(st.just(False), _step)
_jumping = st.tuples(st.just(True), _anywhere)
_move = st.one_of(_stepping, _stepping, _stepping, _stepping, _jumping)  # jumps: 1/5
_counters = st.builds(
    _walk, st.integers(min_value=0, max_value=2 * W), st.lists(_move, max_size=100)
)


@given(_counters)
def test_window_agrees_with_a_set_and_the_window_rule(counters: list[int]) -> None:
    window = ReplayWindow()
    assert [window.accept(counter) for counter in counters] == reference_accepts(
        counters
    )


@given(_counters)
def test_no_counter_is_ever_accepted_twice(counters: list[int]) -> None:
    window = ReplayWindow()
    accepted = [counter for counter in counters if window.accept(counter)]
    assert len(accepted) == len(set(accepted))
