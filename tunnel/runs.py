"""Whole GRO runs opened at once: per-run work in numpy, per-datagram work in C.

UDP GRO hands the I/O shell a buffer of equal-size datagrams from one 4-tuple,
laid end to end. `batch.open_datagrams` already pays the session lookup and the
header-mask AES call once per run; this module goes further for the common case
of a bulk TCP flow, where every datagram of the run is data under the same
session, in counter order, carrying one segment of one inner TCP flow:

- the datagrams are rows of one numpy array, so unmasking every header is one
  AES-ECB call and one vector XOR;
- each row is opened with `decrypt_into` straight into a row of one plaintext
  buffer: the AEAD call is the only per-datagram Python left;
- a run of consecutive counters above the replay window is accepted in one step
  (`Session.accept_run`), otherwise counter by counter;
- the inner packets' lengths and sources are checked as columns, and a run that
  is one TCP flow in order becomes a single GSO superpacket for the TUN (the
  same result `coalesce.coalesce` reaches packet by packet).

Whenever a run is not that common case (a hello, a datagram that does not open,
a replayed counter, a mix of flows), the rows go the general way, so the rules
of PROTOCOL.md are applied by the same code as for single datagrams.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
from cryptography.exceptions import InvalidTag

from . import native
from .batch import _reserve, _run_session
from .buffers import MAX_ROWS, RunBuffers
from .coalesce import _shape_mask
from .constants import HEADER_LEN, MIN_DATAGRAM, PAD_TO, TAG_LEN
from .datagram import Buffer
from .offload import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_TCPV4,
    GSO_TCPV6,
    IPPROTO_TCP,
    TCP_ACK,
    TCP_CSUM_OFFSET,
    TCP_CWR,
    TCP_PSH,
    VnetHdr,
    _pseudo_sum,
    checksum,
)
from .output import Output
from .peer import MS, Peer
from .session import Session

_NONCE_PREFIX = bytes(4)
_MAX_L4 = 100  # what tunnel/_fastpath.c takes: an IPv6 header and 60 bytes more
_IPV6_HEADER_LEN = 40
_OVERHEAD = HEADER_LEN + TAG_LEN
_CLOSING = 0x01 | 0x02 | 0x04 | 0x20  # FIN, SYN, RST, URG travel alone
_SHAPES: dict[tuple[int, int], np.ndarray] = {}


def open_gro_run(
    peer: Peer,
    buf: bytes | bytearray,
    size: int,
    epochs: tuple[int, ...],
    now_ns: int,
    out: Output,
    superpackets: bool,
    nbytes: int | None = None,
) -> None:
    """Open a GRO buffer of datagrams of `size` bytes (the last may be shorter):
    all of buf, or its first nbytes (a receive buffer the shell reuses).

    With `superpackets` (the TUN takes GSO writes) a run that is one TCP flow in
    order is handed over as one GSO write in `out.tun_gso`;
    otherwise its inner packets go to `out.tun` one by one.

    Where tunnel/_fastpath.c is built (tunnel/native.py), unmasking and opening
    the rows is one call to it, up to the first row that is a hello or does not
    open; what follows (replay window, checks, coalescing) is the same code.
    """
    nbytes = len(buf) if nbytes is None else nbytes
    view = memoryview(buf)[:nbytes]
    full = nbytes // size
    last = nbytes - full * size or size  # the last datagram's size
    rows = full if last == size else full + 1
    session = _run_session(peer, epochs, now_ns)
    if (
        session is None
        or rows < 2
        or size <= MIN_DATAGRAM + 16
        or last <= MIN_DATAGRAM + 16
    ):
        _general(peer, view, size, 0, epochs, now_ns, out)
        return
    epoch = epochs[0]
    fast = native.fastpath
    if fast is not None and rows <= native.MAX_ROWS:
        schedule, plen, bufs = peer.schedule, size - _OVERHEAD, out.buffers
        plain = bufs.plain_buffer(rows * plen)
        opened = fast.open_run(
            buf, nbytes, size, schedule.cipher_id,
            schedule.recv_data_key(epoch, session.secret),
            schedule.keys(epoch).recv_hp_key, plain, bufs.opened,
        )  # fmt: skip
        opened_gro_run(peer, buf, nbytes, size, session, epochs, opened, plain, now_ns,
                       out, superpackets)  # fmt: skip
        return
    grid = np.frombuffer(buf, np.uint8, full * size).reshape(full, size)
    samples = grid[:, 8:24].tobytes()
    heads = np.ascontiguousarray(grid[:, :HEADER_LEN]).tobytes()
    if rows > full:  # the shorter last datagram
        at = full * size
        samples += buf[at + 8 : at + 24]
        heads += buf[at : at + 8]
    masks = peer.schedule.keys(epoch).recv_hp.update(samples)
    counters = np.frombuffer(heads, ">u8") ^ np.frombuffer(masks, ">u8")[::2]
    if int(counters.max()) >> 63:  # a hello among them: rare, the general way
        _general(peer, view, size, 0, epochs, now_ns, out)
        return
    plen = size - _OVERHEAD
    bufs = out.buffers
    plain = bufs.plain_buffer(rows * plen)
    ins = bufs.rows(buf, size, HEADER_LEN, size - HEADER_LEN)
    outs = bufs.rows(plain, plen, 0, plen)
    decrypt = peer.schedule.recv_data_aead(epoch, session.secret).decrypt_into
    opened = _each_row(bufs, decrypt, counters[:full], ins, outs)
    if opened == full < rows:  # the shorter last datagram
        ad = counters[full:].astype(">u8").tobytes()
        at, pat = full * size, full * plen
        try:
            decrypt(_NONCE_PREFIX + ad, view[at + HEADER_LEN :], ad,
                    memoryview(plain)[pat : pat + last - _OVERHEAD])  # fmt: skip
            opened = rows
        except InvalidTag:
            pass
    numbers = counters[:opened].tolist()
    last = last if opened == rows else size  # did the shorter one open?
    _opened_rows(peer, session, epoch, numbers, plain, plen, last, size, now_ns,
                 out, superpackets)  # fmt: skip
    if opened < rows:  # another session, or forged: the general way
        _general(peer, view, size, opened, epochs, now_ns, out)


def opened_gro_run(
    peer: Peer,
    buf: bytes | bytearray,
    nbytes: int,
    size: int,
    session: Session,
    epochs: tuple[int, ...],
    opened: int,
    plain: bytearray,
    now_ns: int,
    out: Output,
    superpackets: bool,
) -> None:
    """The rest of open_gro_run once the native part opened the rows of
    buf[:nbytes] under `session` in epochs[0] up to `opened`, their plaintexts
    in plain and their counters in out.buffers.opened: replay window, checks,
    delivery; rows from `opened` on (a hello, another session's, forged) each
    the general way. DataPlane's native drain ends here too, for a read it
    opened but did not take."""
    full = nbytes // size
    last = nbytes - full * size or size  # the last datagram's size
    rows = full if last == size else full + 1
    numbers = out.buffers.opened[:opened].tolist()
    last = last if opened == rows else size  # did the shorter one open?
    _opened_rows(peer, session, epochs[0], numbers, plain, size - _OVERHEAD, last, size,
                 now_ns, out, superpackets)  # fmt: skip
    if opened < rows:
        _general(peer, memoryview(buf)[:nbytes], size, opened, epochs, now_ns, out)


def _general(
    peer: Peer,
    view: memoryview,
    size: int,
    first_row: int,
    epochs: tuple[int, ...],
    now_ns: int,
    out: Output,
) -> None:
    """Rows from first_row on, each through Peer.on_datagram."""
    for at in range(first_row * size, len(view), size):
        peer.on_datagram(view[at : at + size], epochs, now_ns, out)


def _opened_rows(
    peer: Peer,
    session: Session,
    epoch: int,
    counters: list[int],
    plain: bytearray,
    plen: int,
    last: int,
    size: int,
    now_ns: int,
    out: Output,
    superpackets: bool,
) -> None:
    """Replay-check, count and deliver rows that opened under `session`.

    Rows are plen bytes of plain; the last row holds only last - overhead bytes
    of plaintext (then whatever the buffer held before)."""
    n = len(counters)
    if n == 0:
        return
    first = counters[0]
    if counters[-1] - first == n - 1 and session.accept_run(epoch, first, n):
        fresh = list(range(n))
    else:
        fresh = []
        for i, counter in enumerate(counters):
            if session.accept(epoch, counter):
                fresh.append(i)
            else:
                peer.drop(out, "replay")
        if not fresh:
            return
    sizes = [size] * len(fresh)
    if last != size and fresh[-1] == n - 1:
        sizes[-1] = last  # the run's shorter last datagram opened
    peer.opened_run(session, len(fresh), sum(sizes), now_ns, out)
    session.last_data_ns = now_ns
    grid = np.frombuffer(plain, np.uint8, n * plen).reshape(n, plen)
    if len(fresh) < n:
        grid = grid[fresh]
        plain = bytearray(grid.tobytes())
    if not _deliver_flow(peer, grid, sizes[-1] - _OVERHEAD, out, superpackets):
        pview = memoryview(plain)
        for i, dsize in enumerate(sizes):
            peer.deliver(pview[i * plen : i * plen + dsize - _OVERHEAD], out)


def _deliver_flow(
    peer: Peer, grid: np.ndarray, last_plen: int, out: Output, superpackets: bool
) -> bool:
    """Deliver rows that are whole packets from one of the peer's addresses;
    each stretch of rows of one TCP flow in order as one superpacket. False:
    not that case, nothing done (the caller delivers row by row)."""
    rows, plen = grid.shape
    version = grid[0, 0] >> 4
    if version == 4:
        src, flow = slice(12, 16), slice(16, 24)  # destination and ports
        l4 = 20
    elif version == 6:
        src, flow = slice(8, 24), slice(24, 44)
        l4 = 40
    else:
        return False
    if peer.routes.lookup_src(grid[0, :l4].tobytes()) is not peer:
        return False
    fast = native.fastpath
    # The bulk case in one native call: the whole run one flow in order.
    if fast is not None and superpackets and rows > 1:
        packet = fast.coalesce_tcp(grid, plen, 0, rows, last_plen)
        if packet is not None:
            out.tun_gso.append((len(out.tun), (packet,)))
            return True
    lengths = _column16(grid, 2) if version == 4 else _column16(grid, 4) + 40
    if int(lengths.min()) < l4 or int(lengths.max()) > plen:
        return False
    if int(lengths[-1]) > last_plen:
        return False
    # The common case, a bulk flow: the whole run is one in-order stretch, and
    # _superpacket's header comparison covers every row's version and source.
    # (Natively that was asked above already.)
    whole_run = fast is None and superpackets and rows > 1
    if whole_run and _superpacket(grid, lengths, l4, out):
        return True
    if version == 4 and _any(grid[:, 0] != 0x45):
        return False
    if version == 6 and _any((grid[:, 0] >> 4) != 6):
        return False
    sources = grid[:, src]
    if _any(sources != sources[0]):
        return False
    if not superpackets:
        for i, length in enumerate(lengths.tolist()):
            out.tun.append(grid[i, :length].tobytes())
        return True
    # Stretches of one flow: several TCP streams interleave at GSO-run
    # granularity, so a run is mostly a few long stretches.
    flows = grid[:, flow]
    starts = [0, *(np.flatnonzero((flows[1:] != flows[:-1]).any(axis=1)) + 1), rows]
    for start, end in zip(starts, starts[1:], strict=False):
        if end - start > 1 and _stretch(grid, start, end, lengths, l4, last_plen, out):
            continue
        for i in range(start, end):
            out.tun.append(grid[i, : int(lengths[i])].tobytes())
    return True


def _stretch(
    grid: np.ndarray,
    start: int,
    end: int,
    lengths: np.ndarray,
    l4: int,
    last_plen: int,
    out: Output,
) -> bool:
    """Rows start..end-1 as one superpacket, natively where built."""
    fast = native.fastpath
    if fast is None:
        return _superpacket(grid[start:end], lengths[start:end], l4, out)
    packet = fast.coalesce_tcp(grid, grid.shape[1], start, end, last_plen)
    if packet is None:
        return False
    out.tun_gso.append((len(out.tun), (packet,)))
    return True


def _superpacket(grid: np.ndarray, lengths: np.ndarray, l4: int, out: Output) -> bool:
    """One in-order TCP flow of full segments (the last may be shorter) as one
    GSO write; False if the rows are anything else.

    Row 0 is checked field by field; every other row must then equal it in each
    header byte that segmentation leaves alone (coalesce._shape_mask: version,
    addresses, ports, fragment bits, header length, flags but PSH and CWR), so
    those checks hold for all rows, and only lengths, sequence numbers, PSH and
    CWR are looked at row by row."""
    rows, plen = grid.shape
    head = grid[0, : min(plen, l4 + 14)].tobytes()
    if len(head) < l4 + 14:
        return False
    if l4 == 20 and (head[0] != 0x45 or head[9] != IPPROTO_TCP):
        return False
    if l4 == 20 and (head[6] & 0x3F or head[7]):
        return False  # a fragment
    if l4 == 40 and head[6] != IPPROTO_TCP:
        return False
    thl = (head[l4 + 12] >> 4) * 4
    hlen = l4 + thl
    flags0 = head[l4 + 13]
    if thl < 20 or hlen >= int(lengths[0]):
        return False  # a header cut short, or no payload
    if flags0 & _CLOSING or not flags0 & TCP_ACK:
        return False
    shape = _shape(l4, thl)
    heads = grid[:, :hlen] & shape
    if _any(heads != heads[0]):
        return False
    flags = grid[:, l4 + 13]
    if _any(flags[1:] & TCP_CWR):
        return False
    payload = lengths - hlen
    mss = int(payload[0])
    if _any(payload[:-1] != mss) or not 0 < int(payload[-1]) <= mss:
        return False
    seq = np.ascontiguousarray(grid[:, l4 + 4 : l4 + 8]).view(">u4").reshape(rows)
    expected = (int(seq[0]) + mss * np.arange(rows, dtype=np.int64)) & 0xFFFFFFFF
    if _any(seq != expected):
        return False
    total = hlen + int(payload.sum())
    hdr = bytearray(grid[0, :hlen].tobytes())
    if l4 == 20:
        struct.pack_into("!H", hdr, 2, total)
        struct.pack_into("!H", hdr, 10, 0)
        struct.pack_into("!H", hdr, 10, checksum(hdr[:20]))
    else:
        struct.pack_into("!H", hdr, 4, total - 40)
    # PSH mid-run (the end of each sender's TSO write) is kept on the last
    # segment, as GRO in the kernel does: Linux receivers do not act on it.
    hdr[l4 + 13] |= TCP_PSH if _any(flags & TCP_PSH) else 0
    partial = (_pseudo_sum(hdr, IPPROTO_TCP) + total - l4) % 0xFFFF
    struct.pack_into("!H", hdr, l4 + TCP_CSUM_OFFSET, partial)
    gso = (GSO_TCPV4 if l4 == 20 else GSO_TCPV6) | (
        GSO_ECN if int(flags[0]) & TCP_CWR else 0
    )
    vnet = VnetHdr(F_NEEDS_CSUM, gso, hlen, mss, l4, TCP_CSUM_OFFSET).pack()
    body = grid[:-1, hlen : hlen + mss].tobytes()
    last = grid[-1, hlen : int(lengths[-1])].tobytes()
    out.tun_gso.append((len(out.tun), (vnet, bytes(hdr), body, last)))
    return True


def _column16(grid: np.ndarray, at: int) -> np.ndarray:
    """The big-endian u16 at byte `at` of every row, as int64."""
    column: np.ndarray
    if grid.shape[1] % 2 == 0 and at % 2 == 0:  # rows of whole words: a view
        column = grid.view(">u2")[:, at // 2].astype(np.int64)
    else:
        column = (grid[:, at].astype(np.int64) << 8) | grid[:, at + 1]
    return column


def _any(array: np.ndarray) -> bool:
    """array.any(), without the Python wrapper ndarray.any goes through."""
    return bool(np.count_nonzero(array))


def _shape(l4: int, thl: int) -> np.ndarray:
    """The header bytes that must be equal within a run, as a uint8 mask."""
    mask = _SHAPES.get((l4, thl))
    if mask is None:
        as_int = _shape_mask(l4, thl)
        mask = np.frombuffer(as_int.to_bytes(l4 + thl, "big"), np.uint8).copy()
        _SHAPES[l4, thl] = mask
    return mask


# -- Sealing a superpacket's rows (TUN read -> one GSO buffer) ------------------------


def seal_rows(
    peer: Peer, rows: np.ndarray, lengths: list[int], now_ns: int, out: Output
) -> None:
    """Seal wire packets held as rows (offload.split_tcp_rows) into one buffer of
    datagrams laid end to end, for one UDP_SEGMENT send: `out.send_runs`.

    Each row is sealed with encrypt_into straight into its place in the buffer,
    and the headers of all rows are masked with one AES-ECB call. Without a
    session that can seal them all, the packets take the general way (queued
    while a session forms), as single packets would.
    """
    n, width = rows.shape
    session = peer.sealing
    reserved = None
    if session is not None:
        reserved = _reserve(session, peer.schedule.epoch_at(now_ns // MS), n)
    if reserved is None:
        flat = rows.reshape(-1)
        for i, length in enumerate(lengths):
            packet = flat[i * width : i * width + _padded(length)].tobytes()
            peer.on_packet(packet, now_ns, out)
        return
    assert session is not None
    epoch, first = reserved
    size = width + _OVERHEAD  # every datagram but the last
    last_plen = _padded(lengths[-1])
    bufs = out.buffers
    buf = bufs.lend((n - 1) * size + last_plen + _OVERHEAD)
    view = memoryview(buf)[: (n - 1) * size + last_plen + _OVERHEAD]
    plain = rows.data.cast("B")
    ins = bufs.split_views(rows) or bufs.rows(plain, width, 0, width)
    outs = bufs.rows(buf, size, HEADER_LEN, size - HEADER_LEN)
    encrypt = peer.schedule.send_data_aead(epoch, session.secret).encrypt_into
    counters = np.arange(first, first + n, dtype=np.uint64)
    _each_row(bufs, encrypt, counters[:-1], ins, outs)
    ad = (first + n - 1).to_bytes(8, "big")
    at = (n - 1) * size + HEADER_LEN
    encrypt(_NONCE_PREFIX + ad, plain[(n - 1) * width : (n - 1) * width + last_plen],
            ad, view[at:])  # fmt: skip
    # Every header masked with one AES-ECB call over the rows' samples.
    body = np.frombuffer(buf, np.uint8, (n - 1) * size).reshape(n - 1, size)
    samples = body[:, 8:24].tobytes() + bytes(view[at : at + 16])
    masks = np.frombuffer(peer.schedule.keys(epoch).send_hp.update(samples), ">u8")
    heads = counters ^ masks[::2]
    body[:, :HEADER_LEN].view(">u8")[:, 0] = heads[:-1]
    view[at - HEADER_LEN : at] = int(heads[-1]).to_bytes(8, "big")
    _sealed_run(peer, session, epoch, size, view, n, now_ns, out)


def seal_superpacket(
    peer: Peer,
    packet: memoryview,
    shape: tuple[int, int, int, bool],
    now_ns: int,
    out: Output,
) -> bool:
    """A TCP superpacket (offload.tcp_shape) split and sealed by one native call
    into one buffer of datagrams, byte for byte what split_tcp_rows and
    seal_rows make of it. False, with nothing done, where that cannot be: no
    native module, a shape or run length it does not take, no session that can
    seal every segment. The caller then takes the Python way, which decides."""
    fast = native.fastpath
    session = peer.sealing
    l4, hlen, mss, v4 = shape
    n = -(-(len(packet) - hlen) // mss)
    if fast is None or session is None or n > native.MAX_ROWS:
        return False
    if l4 > _MAX_L4 or not (v4 or l4 >= _IPV6_HEADER_LEN):
        return False
    reserved = _reserve(session, peer.schedule.epoch_at(now_ns // MS), n)
    if reserved is None:
        return False
    epoch, first = reserved
    schedule = peer.schedule
    size = _padded(hlen + mss) + _OVERHEAD
    buf = out.buffers.lend(n * size)
    n, nbytes = fast.seal_tcp(
        packet, l4, hlen, mss, v4, schedule.cipher_id,
        schedule.send_data_key(epoch, session.secret),
        schedule.keys(epoch).send_hp_key, first, buf,
    )  # fmt: skip
    _sealed_run(peer, session, epoch, size, memoryview(buf)[:nbytes], n, now_ns, out)
    return True


def _sealed_run(
    peer: Peer,
    session: Session,
    epoch: int,
    size: int,
    view: memoryview,
    n: int,
    now_ns: int,
    out: Output,
) -> None:
    """A sealed run of n datagrams of `size` (the last may be shorter), to send."""
    out.send_runs.append((len(out.send), peer, epoch, size, view))
    session.last_data_ns = now_ns
    peer.stats.tx_bytes += len(view)
    peer.stats.tx_datagrams += n


def _each_row(
    bufs: RunBuffers,
    aead: Callable[[Buffer, Buffer, Buffer, Buffer], int],
    counters: np.ndarray,
    ins: list[memoryview],
    outs: list[memoryview],
) -> int:
    """aead(nonce, ins[i], ad, outs[i]) for each row's counter, the loop in C
    (tunnel/buffers.py). Returns how many rows were done: all, or those before
    the first that did not open (InvalidTag)."""
    done: list[int] = []
    try:
        for at in range(0, len(counters), MAX_ROWS):
            chunk = counters[at : at + MAX_ROWS]
            k = len(chunk)
            bufs.counters[:k] = chunk
            done.extend(map(aead, bufs.nonces[:k], ins[at : at + k], bufs.ads,
                            outs[at : at + k]))  # fmt: skip
    except InvalidTag:
        pass
    return len(done)


def _padded(length: int) -> int:
    return length + (-length % PAD_TO)
