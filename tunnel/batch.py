"""The fast path: runs of packets for one peer, and runs of datagrams from it.

A TSO superpacket from the TUN splits into dozens of segments for the same peer,
and UDP GRO hands over dozens of datagrams of the same 4-tuple at once. These
functions give such runs the same treatment as Peer.on_packet and
Peer.on_datagram, one by one in effect, but pay the per-call costs once per run:
the session, epoch and keys are looked up once, a block of counters is reserved
in one step, and every header mask of the run comes from a single AES-ECB call
(ECB encrypts each 16-byte block independently, so one call over the
concatenated samples equals one call per datagram).

Anything unusual (no session yet, a hello, a datagram that does not open under
the session the run started with) falls back to the general path for that item.
"""

from __future__ import annotations

from collections.abc import Sequence

from .constants import COUNTER_MAX, HEADER_LEN, HELLO_FLAG, MIN_DATAGRAM, PAD_TO
from .datagram import Buffer, open_
from .output import Output
from .peer import MS, Peer
from .session import SendStepBack, Session

_NONCE_PREFIX = bytes(4)
_SAMPLE = slice(HEADER_LEN, HEADER_LEN + 16)


def seal_packets(
    peer: Peer, packets: Sequence[bytes], now_ns: int, out: Output
) -> None:
    """Seal inner packets routed to `peer`, in order, under its sealing session."""
    session = peer.sealing
    if session is None or len(packets) < 2:
        for packet in packets:
            peer.on_packet(packet, now_ns, out)
        return
    reserved = _reserve(session, peer.schedule.epoch_at(now_ns // MS), len(packets))
    if reserved is None:
        for packet in packets:
            peer.on_packet(packet, now_ns, out)
        return
    epoch, first = reserved
    keys = peer.schedule.keys(epoch)
    encrypt = peer.schedule.send_data_aead(epoch, session.secret).encrypt
    sealed = []
    for counter, packet in enumerate(packets, first):
        ad = counter.to_bytes(8, "big")
        extra = -len(packet) % PAD_TO
        sealed.append(encrypt(_NONCE_PREFIX + ad, packet + bytes(extra), ad))
    masks = keys.send_hp.update(b"".join([ct[:16] for ct in sealed]))
    send = out.send
    size = 0
    for i, ct in enumerate(sealed):
        mask = int.from_bytes(masks[16 * i : 16 * i + 8], "big")
        send.append((peer, epoch, ((first + i) ^ mask).to_bytes(8, "big") + ct))
        size += len(ct) + HEADER_LEN
    session.last_data_ns = now_ns
    peer.stats.tx_bytes += size
    peer.stats.tx_datagrams += len(sealed)


def _reserve(session: Session, clock_epoch: int, count: int) -> tuple[int, int] | None:
    """(epoch, first counter) of `count` consecutive counters, or None."""
    try:
        epoch, first = session.next_counter(clock_epoch)
    except SendStepBack:
        return None
    if first + count - 1 > COUNTER_MAX:
        session.send_counter = first  # give it back: the general path decides
        return None
    session.send_counter = first + count
    return epoch, first


def open_datagrams(
    peer: Peer,
    dgrams: Sequence[Buffer],
    epochs: tuple[int, ...],
    now_ns: int,
    out: Output,
) -> None:
    """Open datagrams that came in together on one socket of `peer`."""
    session = None if len(dgrams) < 2 else _run_session(peer, epochs, now_ns)
    if session is None or min(map(len, dgrams)) < MIN_DATAGRAM:
        for dgram in dgrams:
            peer.on_datagram(dgram, epochs, now_ns, out)
        return
    epoch = epochs[0]
    keys = peer.schedule.keys(epoch)
    aead = peer.schedule.recv_data_aead(epoch, session.secret)
    masks = keys.recv_hp.update(b"".join([d[_SAMPLE] for d in dgrams]))
    for i, dgram in enumerate(dgrams):
        h = int.from_bytes(dgram[:HEADER_LEN], "big") ^ int.from_bytes(
            masks[16 * i : 16 * i + 8], "big"
        )
        plaintext = None if h & HELLO_FLAG else open_(aead, h, dgram)
        if plaintext is None:
            peer.on_datagram(dgram, epochs, now_ns, out)
        elif not session.accept(epoch, h):
            peer.drop(out, "replay")
        else:
            peer.opened(session, plaintext, len(dgram), now_ns, out)


def _run_session(peer: Peer, epochs: tuple[int, ...], now_ns: int) -> Session | None:
    """The session a run most likely opens under: the last that opened data."""
    session = peer.rx_session
    if session is None or len(epochs) != 1:
        return None
    epoch = epochs[0]
    if abs(epoch - peer.schedule.epoch_at(now_ns // MS)) > 1:
        return None
    return session if session.may_receive(epoch) else None
