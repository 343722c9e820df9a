"""What the core asks its I/O shell to do, filled in by each call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .buffers import RunBuffers

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

    # Buffers the fast path reuses (tunnel/buffers.py), made on first use.
    _buffers: RunBuffers | None = None

    @property
    def buffers(self) -> RunBuffers:
        if self._buffers is None:
            self._buffers = RunBuffers()
        return self._buffers

    def clear(self) -> None:
        """Forget what was carried out; buffers lent for sends are free again."""
        if self._buffers is not None:
            self._buffers.release()
        self.tun.clear()
        self.tun_gso.clear()
        self.send_runs.clear()
        self.send.clear()
        self.drop = None
