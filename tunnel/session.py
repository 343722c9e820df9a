"""Ephemerals and sessions (PROTOCOL.md, "Sessions").

An *ephemeral* is the agent-wide X25519 key pair that gives forward secrecy; the
node replaces it every 120 s of use and erases replaced ones soon after. A
*session* is what one peer's ephemeral and one of ours make together: its secret S
feeds every data key, and it keeps per-epoch sending counters and replay windows.

A sender keeps one counter per epoch and never returns to an epoch it has left, so
no (key, nonce) pair repeats; a receiver keeps one replay window per epoch and
accepts no epoch below one less than the highest it accepted data for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import keys
from .constants import COUNTER_MAX, KEY_LEN
from .replay import ReplayWindow


@dataclass(eq=False, slots=True)
class Ephemeral:
    private: bytes
    public: bytes
    created_ns: int
    replaced_ns: int | None = None  # when a newer ephemeral took over
    erased: bool = False

    @classmethod
    def generate(cls, now_ns: int) -> Ephemeral:
        private = keys.clamp(os.urandom(KEY_LEN))
        return cls(private, keys.public_from_private(private), now_ns)

    def erase(self) -> None:
        """Forget the private half; what was derived from it goes with its sessions."""
        self.private = bytes(KEY_LEN)
        self.erased = True


class SendStepBack(Exception):
    """The clock went back more than one hop: this session must seal no more."""


@dataclass(eq=False, slots=True)
class Session:
    own: Ephemeral
    peer_eph: bytes
    secret: bytes
    formed_ns: int
    send_epoch: int = -1  # newest epoch sealed for; never go below it
    send_counter: int = 0  # next counter in send_epoch
    recv_epoch: int = -1  # highest epoch data was accepted for
    windows: dict[int, ReplayWindow] = field(default_factory=dict)
    last_data_ns: int | None = None  # non-empty packet sealed or opened
    erased: bool = False

    def next_counter(self, epoch: int) -> tuple[int, int]:
        """(epoch, counter) to seal with, given the sender's clock epoch.

        A clock that stepped back by less than a hop keeps sealing for the newest
        epoch used; by more, the session is done (SendStepBack).
        """
        if epoch < self.send_epoch:
            if epoch < self.send_epoch - 1:
                raise SendStepBack
            epoch = self.send_epoch
        if epoch > self.send_epoch:
            self.send_epoch, self.send_counter = epoch, 0
        counter = self.send_counter
        if counter > COUNTER_MAX:
            raise SendStepBack
        self.send_counter = counter + 1
        return epoch, counter

    def may_receive(self, epoch: int) -> bool:
        return epoch >= self.recv_epoch - 1

    def accept(self, epoch: int, counter: int) -> bool:
        """Mark a counter of an opened datagram seen; False for a replay."""
        window = self.windows.get(epoch)
        if window is None:
            window = self.windows[epoch] = ReplayWindow()
        if not window.accept(counter):
            return False
        if epoch > self.recv_epoch:
            self.recv_epoch = epoch
            for old in [e for e in self.windows if e < epoch - 1]:
                del self.windows[old]
        return True

    def accept_run(self, epoch: int, first: int, count: int) -> bool:
        """`accept` for consecutive counters all above the window; False (nothing
        changed) when they are not, and the caller accepts them one by one."""
        window = self.windows.get(epoch)
        if window is None:
            window = self.windows[epoch] = ReplayWindow()
        if not window.accept_run(first, count):
            return False
        if epoch > self.recv_epoch:
            self.recv_epoch = epoch
            for old in [e for e in self.windows if e < epoch - 1]:
                del self.windows[old]
        return True

    def erase(self) -> None:
        self.secret = bytes(KEY_LEN)
        self.windows.clear()
        self.erased = True


class Ephemerals:
    """The agent's current ephemeral and the replaced ones not yet erased."""

    def __init__(self, now_ns: int) -> None:
        self.current = Ephemeral.generate(now_ns)
        self.replaced: list[Ephemeral] = []
        self.rotation_requested = False

    def rotate(self, now_ns: int) -> Ephemeral:
        old = self.current
        old.replaced_ns = now_ns
        self.replaced.append(old)
        self.current = Ephemeral.generate(now_ns)
        self.rotation_requested = False
        return self.current

    def find(self, public: bytes) -> Ephemeral | None:
        """A live ephemeral of ours with this public key."""
        if self.current.public == public:
            return self.current
        for eph in self.replaced:
            if eph.public == public:
                return eph
        return None

    def drop_erased(self) -> None:
        self.replaced = [e for e in self.replaced if not e.erased]
