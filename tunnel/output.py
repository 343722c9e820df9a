"""What the core asks its I/O shell to do, filled in by each call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .peer import Peer


@dataclass(slots=True)
class Output:
    """Packets for the TUN device and datagrams for peers' per-epoch sockets.

    `send` holds (peer, epoch, datagram): the shell writes the datagram on the
    peer's socket for that epoch. `drop` is the reason the last input was
    dropped, or None; the peer's counters already count it.
    """

    tun: list[bytes] = field(default_factory=list)
    send: list[tuple[Peer, int, bytes]] = field(default_factory=list)
    drop: str | None = None

    def clear(self) -> None:
        self.tun.clear()
        self.send.clear()
        self.drop = None
