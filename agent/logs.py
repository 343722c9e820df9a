"""Logging to stderr, as a daemon under systemd or at a shell wants it.

Under journald (systemd sets $JOURNAL_STREAM to the device and inode of the
stream it gave us as stderr) each line carries a syslog priority prefix like
"<4>" so `journalctl -p warning` works, and no timestamp, since the journal
adds its own. At a shell each line starts with the time instead.

What is logged where (STYLE.md): INFO for lifecycle (ready, peer reachable, peer
lost, reload, down), WARNING for what an operator must act on (clock offset above
a quarter hop, a scheduled port that something else holds), DEBUG for the rest,
rate limited. No message ever holds a key, a psk or an inner packet: only names,
addresses, ports and counts.
"""

from __future__ import annotations

import logging
import os
import sys
import time

LEVELS = ("debug", "info", "warning", "error")
ROOT = "hopr-tunnel"

# syslog priorities for sd-daemon(3) prefixes
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{record.getMessage()}"


def under_journald() -> bool:
    """Whether stderr is the journal stream systemd named in $JOURNAL_STREAM."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        info = os.fstat(sys.stderr.fileno())
        return (info.st_dev, info.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


def setup(level: str = "info") -> logging.Logger:
    """Configure the agent's logger once, writing to the current stderr."""
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    if under_journald():
        handler.setFormatter(_JournalFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s.%(msecs)03d %(levelname)s %(message)s", "%H:%M:%S"
            )
        )
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger


class RateLimit:
    """At most one event per key every `every_s` seconds (monotonic clock)."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.last: dict[object, float] = {}

    def allow(self, key: object) -> bool:
        now = time.monotonic()
        if now - self.last.get(key, -self.every_s - 1) < self.every_s:
            return False
        self.last[key] = now
        return True
