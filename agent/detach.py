"""`hopr-tunnel up --detach`: run the agent as a daemon, return once it is up.

The classic double fork: the child starts a new session (no controlling
terminal), its child runs the agent with / as its directory and stdin from
/dev/null, and the intermediate exits so the daemon is nobody's child. The
agent reports "ready" or "error <sentence>" down a pipe, and the parent waits
for that (or for the pipe to close, if the agent died first). Until then the
daemon's logs reach the shell's stderr; once up they go to the log file given,
or nowhere, so a shell or a test capturing output is not held open by the
daemon.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

log = logging.getLogger("hopr-tunnel")

# run(ready_fd, on_ready) -> exit status: the agent, in the daemon process
Runner = Callable[[int, Callable[[], None]], int]


def detached(runner: Runner, log_file: Path | None) -> str:
    """Start the daemon; what it reported: "ready", "error ...", or "" if it died."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _daemon_child(runner, write_fd, log_file)
    os.close(write_fd)
    answer = _read_all(read_fd)
    os.waitpid(pid, 0)
    return answer


def _daemon_child(runner: Runner, ready_fd: int, log_file: Path | None) -> NoReturn:
    os.setsid()
    if os.fork() != 0:
        os._exit(0)
    status = 1
    try:
        os.chdir("/")
        _redirect(0, os.devnull, os.O_RDONLY)
        status = runner(ready_fd, lambda: _quiet(log_file))
    except BaseException:
        log.exception("the detached agent failed")
    finally:
        os._exit(status)


def _quiet(log_file: Path | None) -> None:
    """Stop writing to the terminal of the shell that ran `up --detach`."""
    target = os.devnull if log_file is None else str(log_file)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    _redirect(1, target, flags)
    _redirect(2, target, flags)


def _redirect(fd: int, path: str, flags: int) -> None:
    new = os.open(path, flags, 0o600)
    os.dup2(new, fd)
    os.close(new)


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace")
