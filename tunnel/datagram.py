"""Sealing and opening datagrams (PROTOCOL.md, "Datagram format").

    header (8 bytes, masked) || AEAD ciphertext

The unmasked header h is a u64: top bit set for a hello (63 random bits), clear
for data (the 63-bit counter). nonce = 4 zero bytes || u64(h), associated data =
u64(h). The mask is the first 8 bytes of AES-128-ECB(hp, first 16 ciphertext
bytes), so a receiver can unmask before it knows which key opens the datagram.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import CipherContext

from .constants import HEADER_LEN, HELLO_FLAG, MIN_DATAGRAM, PAD_TO
from .schedule import AEAD

_NONCE_PREFIX = bytes(4)
# A received datagram: bytes, or a slice of a GRO buffer.
Buffer = bytes | bytearray | memoryview


def seal(aead: AEAD, hp: CipherContext, h: int, plaintext: bytes) -> bytes:
    ad = h.to_bytes(8, "big")
    ct = aead.encrypt(_NONCE_PREFIX + ad, plaintext, ad)
    mask = int.from_bytes(hp.update(ct[:16])[:8], "big")
    return (h ^ mask).to_bytes(8, "big") + ct


def unmask(hp: CipherContext, datagram: Buffer) -> int:
    """The header h of a datagram at least MIN_DATAGRAM long."""
    mask = int.from_bytes(hp.update(datagram[HEADER_LEN : HEADER_LEN + 16])[:8], "big")
    return int.from_bytes(datagram[:HEADER_LEN], "big") ^ mask


def open_(aead: AEAD, h: int, datagram: Buffer) -> bytes | None:
    """The plaintext, or None if the datagram does not open under this key."""
    ad = h.to_bytes(8, "big")
    try:
        return aead.decrypt(_NONCE_PREFIX + ad, datagram[HEADER_LEN:], ad)
    except InvalidTag:
        return None


def is_hello(h: int) -> bool:
    return bool(h & HELLO_FLAG)


def long_enough(datagram: Buffer) -> bool:
    return len(datagram) >= MIN_DATAGRAM


def pad(packet: bytes) -> bytes:
    """Zero bytes up to a multiple of 16 (PROTOCOL.md, "Data")."""
    extra = -len(packet) % PAD_TO
    return packet + bytes(extra) if extra else packet


def inner_length(plaintext: Buffer) -> int | None:
    """The inner packet's own length, or None for a control/unknown first byte.

    IPv4: total length; IPv6: 40 + payload length. A plaintext too short to hold
    the length field yields a length that fails the caller's bounds check.
    """
    version = plaintext[0] >> 4
    if version == 4:
        if len(plaintext) < 20:
            return len(plaintext) + 1
        return int.from_bytes(plaintext[2:4], "big")
    if version == 6:
        if len(plaintext) < 40:
            return len(plaintext) + 1
        return 40 + int.from_bytes(plaintext[4:6], "big")
    return None
