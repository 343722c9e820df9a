"""The control socket behind `hopr-tunnel show` and `hopr-tunnel down`.

Each agent listens on a UNIX stream socket named after its interface,
/run/hopr-tunnel/<ifname>.sock ($HOPR_TUNNEL_RUN_DIR replaces the directory, for
tests and unusual hosts). The directory is created 0700 when missing, the socket
is 0600, and a connecting process must run as root or as the agent's own user
(SO_PEERCRED), since `show` reveals endpoints, ports and traffic counts.

One request per connection, one JSON object per line each way:

    {"command": "show"}  ->  {"ok": true, "status": {...}}   (agent/show.py)
    {"command": "down"}  ->  {"ok": true, "pid": 1234}, then the agent stops
    anything else        ->  {"ok": false, "error": "..."}

A socket file whose agent died (kill -9) refuses connections; `up` removes it,
and `show` without an interface name skips it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

RUN_DIR = Path("/run/hopr-tunnel")
REQUEST_MAX = 4096
CLIENT_TIMEOUT_S = 5.0
Handler = Callable[[str], dict[str, Any]]


class ControlError(Exception):
    """No agent answers on a control socket; the message says which and why."""


def run_dir() -> Path:
    return Path(os.environ.get("HOPR_TUNNEL_RUN_DIR") or RUN_DIR)


def socket_path(ifname: str) -> Path:
    return run_dir() / f"{ifname}.sock"


def ports_ledger(ifname: str) -> Path:
    """Where the agent notes the reserved ports it added (agent/netlink.py)."""
    return run_dir() / f"{ifname}.ports"


# -- server ---------------------------------------------------------------------------


class ControlServer:
    """Answers requests with `handler(command)`; runs on the agent's event loop."""

    def __init__(self, ifname: str, handler: Handler) -> None:
        self.path = socket_path(ifname)
        self.handler = handler
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Listen; ControlError, in one sentence, if the socket cannot be made."""
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ControlError(
                f"cannot create the control directory {directory} "
                f"({exc.strerror or exc}); create it (mode 0700), or point "
                "HOPR_TUNNEL_RUN_DIR at a writable directory."
            ) from None
        take_over_stale(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window for others
        try:
            sock.bind(str(self.path))
        except OSError as exc:
            sock.close()
            raise ControlError(
                f"cannot create the control socket {self.path} "
                f"({exc.strerror or exc}); make {directory} writable for the "
                "agent, or point HOPR_TUNNEL_RUN_DIR at a directory that is."
            ) from None
        finally:
            os.umask(old_umask)
        self.server = await asyncio.start_unix_server(self._serve, sock=sock)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            if not _trusted(writer.get_extra_info("socket")):
                answer: dict[str, Any] = {"ok": False, "error": "permission denied"}
            else:
                line = await asyncio.wait_for(reader.readline(), CLIENT_TIMEOUT_S)
                answer = self._answer(line)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (OSError, ValueError):  # TimeoutError is an OSError
            pass  # a client that went away or sent junk gets nothing
        finally:
            writer.close()

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line[:REQUEST_MAX])
            command = request["command"]
        except (ValueError, TypeError, KeyError):
            return {"ok": False, "error": 'expected {"command": ...}'}
        return self.handler(str(command))


def _trusted(sock: socket.socket | None) -> bool:
    """Root or the agent's own user, from the kernel's peer credentials."""
    if sock is None:
        return False
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (0, os.geteuid())


def take_over_stale(path: Path) -> None:
    """Remove a socket file no agent listens on; refuse if one does."""
    try:
        answer = request(path, "show")
    except ControlError:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    pid = answer.get("status", {}).get("pid", "?")
    raise ControlError(
        f"an agent already runs on {path} (pid {pid}); stop it with "
        f"`hopr-tunnel down {path.stem}` or pick another interface.name"
    )


# -- client ---------------------------------------------------------------------------


def request(path: Path, command: str, timeout_s: float = CLIENT_TIMEOUT_S) -> Any:
    """Send one command to the agent at `path` and return its JSON answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
            sock.sendall(json.dumps({"command": command}).encode() + b"\n")
            data = _read_line(sock)
        except FileNotFoundError:
            raise ControlError(f"no agent runs for {path.stem} (no {path})") from None
        except PermissionError:
            raise ControlError(
                f"{path} is only for root; run the command with sudo"
            ) from None
        except OSError as exc:
            raise ControlError(
                f"the agent for {path.stem} does not answer on {path} "
                f"({exc.strerror or exc})"
            ) from None
    try:
        return json.loads(data)
    except ValueError:
        raise ControlError(f"the agent on {path} sent no valid answer") from None


def _read_line(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            return b"".join(chunks)


def sockets() -> Iterator[Path]:
    """Every control socket in the run directory, by interface name."""
    try:
        yield from sorted(run_dir().glob("*.sock"))
    except OSError:
        return


# -- what `show` and `down` do ------------------------------------------------------

DOWN_TIMEOUT_S = 15.0  # the unit's TimeoutStopSec: teardown takes well under this


def statuses(ifname: str | None) -> list[dict[str, Any]]:
    """Status of one agent, or of every agent in this network namespace."""
    if ifname is not None:
        return [_status(socket_path(ifname))]
    found = []
    here = netns_id()
    for path in sockets():
        try:
            status = _status(path)
        except ControlError:
            continue  # a stale socket of an agent that was killed
        if status.get("netns") in (here, None):
            found.append(status)
    return found


def _status(path: Path) -> dict[str, Any]:
    answer = request(path, "show")
    if not isinstance(answer, dict) or not answer.get("ok"):
        raise ControlError(f"the agent on {path} refused: {_error(answer)}")
    status: dict[str, Any] = answer["status"]
    return status


def stop(ifname: str, timeout_s: float = DOWN_TIMEOUT_S) -> int:
    """Ask the agent to stop and wait until it is gone; its pid."""
    path = socket_path(ifname)
    answer = request(path, "down")
    if not isinstance(answer, dict) or not answer.get("ok"):
        raise ControlError(f"the agent on {path} refused: {_error(answer)}")
    pid = int(answer["pid"])
    deadline = time.monotonic() + timeout_s
    while path.exists() or _alive(pid):
        if time.monotonic() > deadline:
            raise ControlError(
                f"the agent for {ifname} (pid {pid}) did not stop within "
                f"{timeout_s:.0f} s; look at its logs, or kill it"
            )
        time.sleep(0.05)
    return pid


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent counts as gone)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rpartition(")")[2].split()[0] not in ("Z", "X")


def _error(answer: Any) -> str:
    return str(answer.get("error")) if isinstance(answer, dict) else "no answer"


def netns_id() -> int | None:
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return None
