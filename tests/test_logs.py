"""Log lines (agent/logs.py) as journald and as a terminal see them."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import logs


@pytest.fixture(autouse=True)
def restore_logger() -> Iterator[None]:
    """setup() reconfigures the agent's logger; give the next test it back."""
    logger = logging.getLogger(logs.ROOT)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def logged_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, journal: bool) -> str:
    target = tmp_path / "stderr"
    with target.open("w") as stream:
        monkeypatch.setattr(sys, "stderr", stream)
        info = os.fstat(stream.fileno())
        if journal:
            monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        else:
            monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        logs.setup("info")
        logging.getLogger("hopr-tunnel.test").warning("port %d taken", 20001)
        logging.getLogger("hopr-tunnel.test").debug("not shown at info")
    return target.read_text()


def test_under_journald_a_line_has_a_priority_and_no_timestamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert logged_line(tmp_path, monkeypatch, journal=True) == "<4>port 20001 taken\n"


def test_at_a_terminal_a_line_starts_with_the_time_and_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    line = logged_line(tmp_path, monkeypatch, journal=False)
    assert line.endswith(" WARNING port 20001 taken\n") and line[2] == ":"


def test_a_rate_limit_lets_one_event_per_key_through() -> None:
    limit = logs.RateLimit(every_s=60)
    assert [limit.allow("a"), limit.allow("a"), limit.allow("b")] == [True, False, True]
