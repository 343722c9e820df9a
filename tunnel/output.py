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
    # GSO writes for a TUN with offloads (tunnel/runs.py): (len(tun) when it was
    # made, the writev buffers), so the shell keeps them in order with `tun`.
    tun_gso: list[tuple[int, tuple[bytes, ...]]] = field(default_factory=list)
    # Sealed runs (tunnel/runs.py): (len(send) when made, peer, epoch, datagram
    # size, datagrams of that size laid end to end, the last may be shorter).
    send_runs: list[tuple[int, Peer, int, int, memoryview]] = field(
        default_factory=list
    )

    def clear(self) -> None:
        self.tun.clear()
        self.tun_gso.clear()
        self.send_runs.clear()
        self.send.clear()
        self.drop = None
