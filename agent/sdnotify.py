"""Tell systemd how the agent is doing, through the sd_notify datagram protocol.

systemd gives a Type=notify service the path of a datagram socket in
$NOTIFY_SOCKET (a leading "@" names a socket in the abstract namespace) and
reads newline-separated KEY=VALUE assignments from it. The agent uses:

- READY=1 once the TUN device is up and its sockets are bound, so `systemctl
  start` returns only when the tunnel can carry traffic;
- RELOADING=1 on SIGHUP, then READY=1 when the new config is live; systemd 253
  and later (Type=notify-reload) also want MONOTONIC_USEC with it, older ones
  ignore the extra field;
- STOPPING=1 when it starts tearing down;
- WATCHDOG=1 from its event loop, at least twice per WatchdogSec, so a hung loop
  gets the service restarted;
- STATUS=... a one-line summary shown by `systemctl status`.

Outside systemd (no $NOTIFY_SOCKET) every call does nothing and returns False,
so the agent calls these unconditionally. A socket that has gone away also
returns False: notification is best effort and must never stop the data plane.
No dependency: one AF_UNIX datagram per call.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `state` (KEY=VALUE lines) to systemd; True when it was delivered."""
    env = os.environ if environ is None else environ
    address = _socket_address(env.get("NOTIFY_SOCKET", ""))
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError:
        return False
    return True


def _socket_address(value: str) -> str | bytes | None:
    """$NOTIFY_SOCKET as an address for sendto, None when there is none."""
    if value.startswith("@"):
        # The abstract namespace: a NUL byte where the "@" stands.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # unset, or a vsock address that this agent never runs under


def ready(status_text: str | None = None) -> bool:
    """The tunnel carries traffic: `systemctl start` may return."""
    return notify(_with_status("READY=1", status_text))


def reloading() -> bool:
    """A reload began; call ready() when the new config is live."""
    now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={now_us}")


def stopping() -> bool:
    """Tear-down began: systemd should not expect READY or WATCHDOG any more."""
    return notify("STOPPING=1")


def watchdog() -> bool:
    """Proof of life for WatchdogSec; send at least every watchdog_interval_s()/2."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """A one-line summary for `systemctl status`."""
    return notify(_with_status(None, text))


def _with_status(state: str | None, status_text: str | None) -> str:
    lines = [] if state is None else [state]
    if status_text is not None:
        # A newline would start a new assignment: keep the summary on one line.
        lines.append("STATUS=" + " ".join(status_text.splitlines()))
    return "\n".join(lines)


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout systemd set for this process, None when unwatched."""
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    if pid is not None and pid != str(os.getpid()):
        return None  # meant for another process, e.g. the one that exec'd us
    try:
        timeout_us = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return timeout_us / 1_000_000 if timeout_us > 0 else None
