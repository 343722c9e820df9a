"""Static and ephemeral X25519 keys, in the base64 form `wg genkey` uses."""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)

from .constants import KEY_LEN


class KeyError_(ValueError):
    """A key that is not 32 bytes of standard base64."""


def decode_key(text: str) -> bytes:
    """Standard base64 of exactly 32 bytes, as `wg` writes keys."""
    text = text.strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyError_("not valid base64") from exc
    if len(raw) != KEY_LEN:
        raise KeyError_(f"decodes to {len(raw)} bytes, not {KEY_LEN}")
    return raw


def encode_key(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def generate_private() -> bytes:
    """A clamped X25519 private key, as `wg genkey` emits."""
    return clamp(os.urandom(KEY_LEN))


def clamp(raw32: bytes) -> bytes:
    """RFC 7748 clamping, so the stored key is the scalar actually used."""
    raw = bytearray(raw32)
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    return bytes(raw)


def public_from_private(private: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes_raw()


def x25519(private: bytes, public: bytes) -> bytes:
    """The shared secret; all zeros means a low-order public key (caller rejects)."""
    key = X25519PrivateKey.from_private_bytes(private)
    return key.exchange(X25519PublicKey.from_public_bytes(public))


def is_zero(raw: bytes) -> bool:
    return not any(raw)
