"""The pair's schedule: root, hop phase, epochs, ports and per-epoch keys.

Everything here is a pure function of the pair's static secrets and an epoch
number (PROTOCOL.md, "Host and pair secrets" and "The schedule"). Both ends of a
pair compute the same values, so nothing here is ever sent.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import (
    Cipher,
    CipherContext,
    algorithms,
    modes,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import keys, native
from .constants import (
    CIPHER_AES_256_GCM,
    CIPHER_CHACHA20_POLY1305,
    HOP_MS_MAX,
    HOP_MS_MIN,
    KEY_LEN,
    ROOT_SALT,
)

LO, HI = b"lo", b"hi"
LO_TO_HI, HI_TO_LO = b"lo>hi", b"hi>lo"

if TYPE_CHECKING:
    from ._fastpath import DatagramKeys

AEAD = AESGCM | ChaCha20Poly1305


def prf(key: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA256 over the concatenation of parts."""
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


def hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=salt, info=info).derive(
        ikm
    )


def u32(x: int) -> bytes:
    return x.to_bytes(4, "big")


def u64(x: int) -> bytes:
    return x.to_bytes(8, "big")


def make_aead(cipher_id: int, key: bytes) -> AEAD:
    if cipher_id == CIPHER_AES_256_GCM:
        return AESGCM(key)
    if cipher_id == CIPHER_CHACHA20_POLY1305:
        return ChaCha20Poly1305(key)
    raise ValueError(f"unknown cipher id {cipher_id}")


def make_hp(key16: bytes) -> CipherContext:
    """An AES-128-ECB encryptor for header masks; ECB keeps no state between calls."""
    return Cipher(algorithms.AES(key16), modes.ECB()).encryptor()


class PairError(ValueError):
    """Static keys that cannot form a pair (all-zero DH, our own key)."""


def derive_root(
    dh: bytes, psk: bytes, lo: bytes, hi: bytes, hop_ms: int, cipher_id: int
) -> bytes:
    info = b"root" + lo + hi + u32(hop_ms) + bytes([cipher_id])
    return hkdf(dh + psk, ROOT_SALT, info)


def port_in(epoch_secret: bytes, side: bytes, lo_port: int, hi_port: int) -> int:
    draw = int.from_bytes(prf(epoch_secret, b"port", side)[:4], "big")
    return lo_port + draw % (hi_port - lo_port + 1)


@dataclass(slots=True)
class EpochKeys:
    """Everything one epoch needs, from this host's point of view.

    `send_*` is for our direction (us to peer), `recv_*` for the peer's.
    """

    epoch: int
    secret: bytes
    local_port: int
    remote_port: int
    send_dir: bytes
    recv_dir: bytes
    send_hp: CipherContext
    recv_hp: CipherContext
    send_hello: AEAD
    recv_hello: AEAD
    send_hp_key: bytes = b""  # the raw keys, for tunnel/_fastpath.c
    recv_hp_key: bytes = b""
    # data AEADs per session secret, filled on first use
    send_data: dict[bytes, AEAD] = field(default_factory=dict)
    recv_data: dict[bytes, AEAD] = field(default_factory=dict)
    # raw data keys per session secret, for tunnel/_fastpath.c
    send_data_keys: dict[bytes, bytes] = field(default_factory=dict)
    recv_data_keys: dict[bytes, bytes] = field(default_factory=dict)
    # native keys for one datagram at a time (_fastpath.DatagramKeys) per session
    send_lone: dict[bytes, DatagramKeys] = field(default_factory=dict)
    recv_lone: dict[bytes, DatagramKeys] = field(default_factory=dict)


class PairSchedule:
    """The schedule of one pair of hosts, seen from our side of it."""

    def __init__(
        self,
        own_private: bytes,
        peer_public: bytes,
        psk: bytes | None,
        hop_ms: int,
        cipher_id: int,
        own_ports: tuple[int, int],
        peer_ports: tuple[int, int],
    ) -> None:
        if not HOP_MS_MIN <= hop_ms <= HOP_MS_MAX:
            raise PairError(
                f"hop interval {hop_ms} ms outside {HOP_MS_MIN}..{HOP_MS_MAX}"
            )
        own_public = keys.public_from_private(own_private)
        if own_public == peer_public:
            raise PairError("the peer's public key is our own")
        try:
            dh = keys.x25519(own_private, peer_public)
        except ValueError as exc:
            raise PairError("the peer's public key is a low-order point") from exc
        if keys.is_zero(dh):
            raise PairError("the peer's public key is a low-order point")
        self.own_public = own_public
        self.peer_public = peer_public
        self.is_lo = own_public < peer_public
        self.lo, self.hi = sorted((own_public, peer_public))
        self.hop_ms = hop_ms
        self.cipher_id = cipher_id
        self.own_ports = own_ports
        self.peer_ports = peer_ports
        self.root = derive_root(
            dh, psk or bytes(KEY_LEN), self.lo, self.hi, hop_ms, cipher_id
        )
        self.phase_ms = int.from_bytes(prf(self.root, b"phase")[:4], "big") % hop_ms
        self.side = LO if self.is_lo else HI
        self.send_dir = LO_TO_HI if self.is_lo else HI_TO_LO
        self.recv_dir = HI_TO_LO if self.is_lo else LO_TO_HI
        self._epochs: dict[int, EpochKeys] = {}

    # -- time --

    def epoch_at(self, t_ms: int) -> int:
        return (t_ms - self.phase_ms) // self.hop_ms

    def epoch_start_ms(self, n: int) -> int:
        return n * self.hop_ms + self.phase_ms

    # -- per-epoch values -----------------------------------------------------------

    def epoch_secret(self, n: int) -> bytes:
        return prf(self.root, b"epoch", u64(n))

    def ports(self, n: int) -> tuple[int, int]:
        """(our port, peer's port) in epoch n."""
        keys_n = self._epochs.get(n)
        if keys_n is not None:
            return keys_n.local_port, keys_n.remote_port
        secret = self.epoch_secret(n)
        return self._ports_from(secret)

    def _ports_from(self, secret: bytes) -> tuple[int, int]:
        own = port_in(secret, self.side, *self.own_ports)
        peer_side = HI if self.is_lo else LO
        return own, port_in(secret, peer_side, *self.peer_ports)

    def keys(self, n: int) -> EpochKeys:
        """The epoch's keys, derived once and cached until `forget_before`."""
        cached = self._epochs.get(n)
        if cached is None:
            cached = self._derive(n)
            self._epochs[n] = cached
        return cached

    def _derive(self, n: int) -> EpochKeys:
        secret = self.epoch_secret(n)
        local_port, remote_port = self._ports_from(secret)
        send_hp, recv_hp = hp_key(secret, self.send_dir), hp_key(secret, self.recv_dir)
        return EpochKeys(
            epoch=n,
            secret=secret,
            local_port=local_port,
            remote_port=remote_port,
            send_dir=self.send_dir,
            recv_dir=self.recv_dir,
            send_hp=make_hp(send_hp),
            recv_hp=make_hp(recv_hp),
            send_hp_key=send_hp,
            recv_hp_key=recv_hp,
            send_hello=make_aead(self.cipher_id, hello_key(secret, self.send_dir)),
            recv_hello=make_aead(self.cipher_id, hello_key(secret, self.recv_dir)),
        )

    def send_data_aead(self, n: int, session_secret: bytes) -> AEAD:
        return self._data_aead(n, session_secret, send=True)

    def recv_data_aead(self, n: int, session_secret: bytes) -> AEAD:
        return self._data_aead(n, session_secret, send=False)

    def send_data_key(self, n: int, session_secret: bytes) -> bytes:
        """The key send_data_aead is made from, for a native seal of a run."""
        return self._data_key(n, session_secret, send=True)

    def recv_data_key(self, n: int, session_secret: bytes) -> bytes:
        """The key recv_data_aead is made from, for a native open of a run."""
        return self._data_key(n, session_secret, send=False)

    # These two are on an idle tunnel's every packet, where each Python call
    # costs microseconds (the CPU's caches are cold): once made, the keys are
    # found without one.

    def send_lone(self, n: int, session_secret: bytes) -> DatagramKeys | None:
        """send_data_aead's key and the epoch's send_hp as native keys set up
        once, to seal one datagram at a time; None where tunnel/_fastpath.c
        is not built."""
        k = self._epochs.get(n)
        made = None if k is None else k.send_lone.get(session_secret)
        if made is not None and native.fastpath is not None:
            return made
        return self._lone(n, session_secret, send=True)

    def recv_lone(self, n: int, session_secret: bytes) -> DatagramKeys | None:
        """The same for recv_data_aead and recv_hp, to open."""
        k = self._epochs.get(n)
        made = None if k is None else k.recv_lone.get(session_secret)
        if made is not None and native.fastpath is not None:
            return made
        return self._lone(n, session_secret, send=False)

    def _lone(self, n: int, session_secret: bytes, send: bool) -> DatagramKeys | None:
        fast = native.fastpath
        if fast is None:
            return None
        k = self.keys(n)
        cache = k.send_lone if send else k.recv_lone
        made = cache.get(session_secret)
        if made is None:
            key = self._data_key(n, session_secret, send)
            hp = k.send_hp_key if send else k.recv_hp_key
            made = fast.DatagramKeys(self.cipher_id, key, hp, send)
            cache[session_secret] = made
        return made

    def _data_aead(self, n: int, session_secret: bytes, send: bool) -> AEAD:
        k = self.keys(n)
        cache = k.send_data if send else k.recv_data
        aead = cache.get(session_secret)
        if aead is None:
            key = self._data_key(n, session_secret, send)
            aead = cache[session_secret] = make_aead(self.cipher_id, key)
        return aead

    def _data_key(self, n: int, session_secret: bytes, send: bool) -> bytes:
        k = self.keys(n)
        cache = k.send_data_keys if send else k.recv_data_keys
        key = cache.get(session_secret)
        if key is None:
            direction = k.send_dir if send else k.recv_dir
            key = cache[session_secret] = data_key(k.secret, direction, session_secret)
        return key

    def forget_before(self, n: int) -> None:
        """Erase cached keys of epochs below n (they are stale; keep none longer)."""
        for old in [e for e in self._epochs if e < n]:
            del self._epochs[old]

    def forget_session(self, session_secret: bytes) -> None:
        """Erase every data key derived from an erased session secret."""
        for k in self._epochs.values():
            k.send_data.pop(session_secret, None)
            k.recv_data.pop(session_secret, None)
            k.send_data_keys.pop(session_secret, None)
            k.recv_data_keys.pop(session_secret, None)
            k.send_lone.pop(session_secret, None)
            k.recv_lone.pop(session_secret, None)

    # -- sessions --

    def session_secret(
        self, own_eph_private: bytes, own_eph_public: bytes, peer_eph_public: bytes
    ) -> bytes | None:
        """S for our ephemeral and the peer's; None for a low-order peer ephemeral."""
        try:
            shared = keys.x25519(own_eph_private, peer_eph_public)
        except ValueError:
            return None
        if keys.is_zero(shared):
            return None
        if self.is_lo:
            e_lo, e_hi = own_eph_public, peer_eph_public
        else:
            e_lo, e_hi = peer_eph_public, own_eph_public
        return hkdf(shared, self.root, b"session" + e_lo + e_hi)


def hp_key(epoch_secret: bytes, direction: bytes) -> bytes:
    return prf(epoch_secret, b"hp", direction)[:16]


def hello_key(epoch_secret: bytes, direction: bytes) -> bytes:
    return prf(epoch_secret, b"hello", direction)


def data_key(epoch_secret: bytes, direction: bytes, session_secret: bytes) -> bytes:
    return prf(epoch_secret, b"data", direction, session_secret)
