"""Hello plaintexts (PROTOCOL.md, "Hello").

    u8 version = 1 | u8 flags | u16 reserved | eph_pub (32)
    | peer_eph_seen (32) | u64 timestamp_ns | zero padding

The padded length is a multiple of 16 from 80 to 320, chosen by the sender so
hellos are as long as data datagrams are.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from .constants import (
    HELLO_BODY_LEN,
    HELLO_MAX_LEN,
    HELLO_MIN_LEN,
    HELLO_PLEASE_ANSWER,
    KEY_LEN,
    PAD_TO,
    VERSION,
)


@dataclass(frozen=True, slots=True)
class Hello:
    eph_public: bytes
    peer_eph_seen: bytes  # zeros when unknown
    timestamp_ns: int
    please_answer: bool


def encode(hello: Hello, length: int | None = None) -> bytes:
    """The padded plaintext; a random valid length unless one is given."""
    if length is None:
        steps = (HELLO_MAX_LEN - HELLO_MIN_LEN) // PAD_TO + 1
        length = HELLO_MIN_LEN + PAD_TO * secrets.randbelow(steps)
    flags = HELLO_PLEASE_ANSWER if hello.please_answer else 0
    body = (
        bytes((VERSION, flags, 0, 0))
        + hello.eph_public
        + hello.peer_eph_seen
        + hello.timestamp_ns.to_bytes(8, "big")
    )
    return body + bytes(length - len(body))


def decode(plaintext: bytes) -> Hello | None:
    """The hello, or None when its version is not ours or it is too short."""
    if len(plaintext) < HELLO_BODY_LEN or plaintext[0] != VERSION:
        return None
    return Hello(
        eph_public=plaintext[4 : 4 + KEY_LEN],
        peer_eph_seen=plaintext[4 + KEY_LEN : 4 + 2 * KEY_LEN],
        timestamp_ns=int.from_bytes(plaintext[68:76], "big"),
        please_answer=bool(plaintext[1] & HELLO_PLEASE_ANSWER),
    )
