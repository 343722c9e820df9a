"""Memory the fast path reuses from one run to the next (tunnel/runs.py).

A run of datagrams is sealed or opened by one `map` of the AEAD method over
per-row arguments: the nonce, the associated data, the input and the output of
each row, as memoryviews. The loop then runs in C; what is left per row is the
AEAD call itself. Making those views would cost as much as the Python loop did,
so they are made once per buffer and row shape and kept:

- the nonces and associated data of up to MAX_ROWS rows live in one block;
  a run writes its counters into the block with one numpy assignment, and the
  views of each row's nonce (4 zero bytes || counter) and associated data
  (the counter) stay valid;
- a buffer the shell reuses (its receive buffer) and the buffers lent here
  keep their row views from run to run (`RunBuffers.rows`);
- sealed runs are written into buffers lent until the shell has sent them:
  `Output.clear` gives them back (`release`), so a lent buffer is never
  rewritten while a send that reads it is pending.

Nothing here holds key material; the buffers hold ciphertext or, for opened
runs, plaintext that is copied out before the call that opened it returns.
"""

from __future__ import annotations

import numpy as np

from .constants import HEADER_LEN
from .native import MAX_ROWS as NATIVE_ROWS

Buffer = bytes | bytearray | memoryview

MAX_ROWS = 128  # a GSO send or GRO receive holds at most 64 (128 on Linux 6.9+)
NONCE_LEN = 12
LENT_MIN = 1 << 16  # every lent buffer can hold any run: reusable for all sizes
_VIEWS_KEPT = 32  # row-view lists kept; more buffers or shapes than this: rebuilt
LENT_KEPT = 4  # free lent buffers kept: a burst's worth, the rest back to malloc


class RunBuffers:
    def __init__(self) -> None:
        self._block = bytearray(MAX_ROWS * NONCE_LEN)
        flat = memoryview(self._block)
        starts = range(0, MAX_ROWS * NONCE_LEN, NONCE_LEN)
        self.nonces = [flat[at : at + NONCE_LEN] for at in starts]
        self.ads = [flat[at + NONCE_LEN - HEADER_LEN : at + NONCE_LEN] for at in starts]
        # The counter is the nonce's last 8 bytes, big-endian (PROTOCOL.md).
        block = np.frombuffer(self._block, np.uint8).reshape(MAX_ROWS, NONCE_LEN)
        self.counters = block[:, NONCE_LEN - HEADER_LEN :].view(">u8")[:, 0]
        self._views: dict[tuple[int, int, int, int], list[memoryview]] = {}
        self._kept: dict[int, bytearray] = {}  # by id: the buffers whose views are kept
        self._free: list[bytearray] = []
        self._lent: list[bytearray] = []
        self.plain = self.keep(bytearray(0))  # an opened run, copied out in the call
        self.split = self.keep(bytearray(0))  # a split superpacket, sealed in the call
        self._split_rows: np.ndarray | None = None
        # The counters of a natively opened run (tunnel/native.py).
        self.opened = np.zeros(NATIVE_ROWS, dtype=np.uint64)

    def keep(self, buf: bytearray) -> bytearray:
        """Keep the row views of buf from run to run (a buffer that is reused)."""
        self._kept[id(buf)] = buf  # referenced here, so its id stays its own
        return buf

    def rows(
        self, buf: Buffer, stride: int, start: int, length: int
    ) -> list[memoryview]:
        """Views of buf[i*stride + start : i*stride + start + length] for every
        row that fits in buf; kept for a buffer that is (`keep`)."""
        key = (id(buf), stride, start, length)
        views = self._views.get(key)
        if views is not None:
            return views
        view = memoryview(buf).cast("B")
        starts = range(start, len(view) - length + 1, stride)
        views = [view[at : at + length] for at in starts]
        if self._kept.get(id(buf)) is buf:
            if len(self._views) >= _VIEWS_KEPT:
                self._views.clear()
            self._views[key] = views
        return views

    def lend(self, nbytes: int) -> bytearray:
        """A buffer of at least nbytes, not written again until `release`."""
        if nbytes > LENT_MIN:
            buf = bytearray(nbytes)  # never (runs fit in 64 KB): not kept
        elif self._free:
            buf = self._free.pop()
        else:
            buf = self.keep(bytearray(LENT_MIN))
        self._lent.append(buf)
        return buf

    def release(self) -> None:
        """Every lent buffer is free again: the shell has carried out the sends."""
        self._free += [b for b in self._lent if len(b) == LENT_MIN]
        self._lent.clear()
        for buf in self._free[LENT_KEPT:]:
            self._forget(buf)
        del self._free[LENT_KEPT:]

    def plain_buffer(self, nbytes: int) -> bytearray:
        """Scratch for an opened run: valid until the caller returns."""
        if len(self.plain) < nbytes:
            self._forget(self.plain)
            self.plain = self.keep(bytearray(max(nbytes, LENT_MIN)))
        return self.plain

    def split_rows(self, rows: int, width: int) -> np.ndarray:
        """Scratch rows for offload.split_tcp_rows, sealed before the call that
        split them returns; their content is whatever the last split left."""
        if len(self.split) < rows * width:
            self._forget(self.split)
            self.split = self.keep(bytearray(max(rows * width, LENT_MIN)))
        array = np.frombuffer(self.split, np.uint8, rows * width).reshape(rows, width)
        self._split_rows = array
        return array

    def split_views(self, rows: np.ndarray) -> list[memoryview] | None:
        """The kept row views of `rows` if split_rows made it, else None."""
        if rows is not self._split_rows:
            return None
        return self.rows(self.split, rows.shape[1], 0, rows.shape[1])

    def _forget(self, buf: bytearray) -> None:
        self._kept.pop(id(buf), None)
        self._views = {k: v for k, v in self._views.items() if k[0] != id(buf)}
