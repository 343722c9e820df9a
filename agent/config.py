"""Reading peers.toml into values the core uses as they are.

The file (TOML, read with the stdlib's tomllib):

    [interface]
    name = "hopr0"                                  # TUN device
    private_key_file = "/etc/hopr-tunnel/host.key"  # or private_key = "base64"
    address = ["100.64.0.1/24", "fd00:64::1/64"]    # addresses of the TUN device
    listen = "198.18.0.1"                           # underlay address to bind
    port_range = "20000-29999"                      # our side's ports
    hop_interval = "10s"                            # 1s .. 1h
    cipher = "aes-256-gcm"                          # or "chacha20-poly1305"
    mtu = 1420

    [[peer]]
    name = "db-1"
    public_key = "base64"
    endpoint = "198.18.0.2"             # underlay address, no port: ports hop
    allowed_ips = ["100.64.0.2/32", "fd00:64::2/128"]
    port_range = "20000-29999"          # the peer's own range
    psk_file = "/etc/hopr-tunnel/db-1.psk"          # or psk = "base64"

Required: interface.private_key_file (or private_key), interface.address,
interface.listen, and per peer name, public_key, endpoint and allowed_ips.
Defaults: interface.name "hopr0", interface.port_range "20000-29999",
hop_interval "10s", cipher "aes-256-gcm", mtu 1420 (agent/constants.py says
why); a peer's port_range defaults to ours, its psk to none.

Value forms: keys are standard base64 of 32 bytes, as `wg` writes them.
hop_interval is a plain integer of seconds or a string like "10s", "1.5s", "1m",
"1h", "1500ms". A port range is "MIN-MAX" within 1024..65535. Peer names are 1 to 32
letters, digits, ".", "_" or "-". Paths in private_key_file and psk_file are
relative to the config file's directory. A secret (key file, psk file, or the config
itself when it holds an inline private_key or psk) must not be accessible by group
or others: mode 0600.

Every mistake raises ConfigError with one sentence: the file, the field (as in
`peer "db-1".allowed_ips`), what is wrong and the fix. The message never holds
a secret.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from tunnel import keys
from tunnel.schedule import PairSchedule

from . import config_values as v
from .config_values import Address, ConfigError, Interface, Network, Table
from .constants import (
    DEFAULT_CIPHER,
    DEFAULT_HOP_MS,
    DEFAULT_IFNAME,
    DEFAULT_MTU,
    DEFAULT_PORT_RANGE,
)

__all__ = [
    "Config",
    "ConfigDiff",
    "ConfigError",
    "InterfaceConfig",
    "PeerConfig",
    "diff",
    "load",
]

# Known keys with the example each fix suggests, in the documented order.
TOP_KEYS = {"interface": "{...}", "peer": "[{...}]"}
INTERFACE_KEYS = {
    "name": f'"{DEFAULT_IFNAME}"',
    "private_key_file": '"/etc/hopr-tunnel/host.key"',
    "private_key": '"<output of hopr-tunnel genkey>"',
    "address": '["100.64.0.1/24"]',
    "listen": '"198.18.0.1"',
    "port_range": '"20000-29999"',
    "hop_interval": '"10s"',
    "cipher": f'"{DEFAULT_CIPHER}"',
    "mtu": str(DEFAULT_MTU),
}
PEER_KEYS = {
    "name": '"db-1"',
    "public_key": '"<the peer\'s hopr-tunnel pubkey>"',
    "endpoint": '"198.18.0.2"',
    "allowed_ips": '["100.64.0.2/32"]',
    "port_range": '"20000-29999"',
    "psk_file": '"/etc/hopr-tunnel/db-1.psk"',
    "psk": '"<output of hopr-tunnel genpsk>"',
}

# Interface fields that feed every pair's root or schedule: when one differs,
# every peer must be set up again (see `diff`).
ROOT_FIELDS = ("private_key", "hop_ms", "cipher_id", "port_range")

_TOML_WHERE = re.compile(r"(.*) \(at line (\d+), column (\d+)\)")


@dataclass(frozen=True)
class InterfaceConfig:
    name: str
    private_key: bytes = field(repr=False)
    public_key: bytes
    addresses: tuple[Interface, ...]
    listen: Address
    port_range: tuple[int, int]
    hop_ms: int
    cipher_id: int
    mtu: int


@dataclass(frozen=True)
class PeerConfig:
    name: str
    public_key: bytes
    endpoint: Address
    allowed_ips: tuple[Network, ...]
    port_range: tuple[int, int]
    psk: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Config:
    path: Path
    interface: InterfaceConfig
    peers: tuple[PeerConfig, ...]

    def schedule(self, peer: PeerConfig) -> PairSchedule:
        """The pair's schedule from our side; load() made sure it can form."""
        i = self.interface
        return PairSchedule(
            i.private_key,
            peer.public_key,
            peer.psk,
            i.hop_ms,
            i.cipher_id,
            i.port_range,
            peer.port_range,
        )


class ConfigDiff(NamedTuple):
    """Peer names by what a reload must do with them, in config order."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    unchanged: tuple[str, ...]


def diff(old: Config, new: Config) -> ConfigDiff:
    """Compare two configs peer by peer (a peer is known by its name).

    A kept peer is changed when any of its fields differs or when an interface
    field in ROOT_FIELDS does, since those reshape every pair's schedule. Other
    interface fields (name, address, listen, mtu) are the caller's to compare.
    """
    before = {p.name: p for p in old.peers}
    now = {p.name for p in new.peers}
    moved = any(
        getattr(old.interface, f) != getattr(new.interface, f) for f in ROOT_FIELDS
    )
    kept = [p for p in new.peers if p.name in before]
    return ConfigDiff(
        added=tuple(p.name for p in new.peers if p.name not in before),
        removed=tuple(p.name for p in old.peers if p.name not in now),
        changed=tuple(p.name for p in kept if moved or p != before[p.name]),
        unchanged=tuple(p.name for p in kept if not moved and p == before[p.name]),
    )


# -- Loading ------------------------------------------------------------------------


def load(path: str | os.PathLike[str]) -> Config:
    """Read, parse and check a config; raise ConfigError on the first mistake."""
    path = Path(path)
    doc, mode = _read_toml(path)
    top = Table(doc, path, mode, "", TOP_KEYS)
    top.refuse_unknown()
    if type(doc.get("interface")) is not dict:
        raise ConfigError(
            f"{path} has no [interface] section; add one with at "
            "least private_key_file, address and listen."
        )
    interface = _interface(top.sub(doc["interface"], "interface", INTERFACE_KEYS))
    tables = doc.get("peer", [])
    if type(tables) is not list:
        top.fail(
            "peer",
            f"is {v.describe(tables)}, not an array of tables",
            "write each peer as a [[peer]] section (two brackets)",
        )
    peers = tuple(_peer(top, n, t, interface) for n, t in enumerate(tables, 1))
    _refuse_duplicates(top, peers)
    _refuse_overlaps(top, peers)
    return Config(path, interface, peers)


def _read_toml(path: Path) -> tuple[dict[str, Any], int]:
    """The parsed document and the file's permission bits (read from one open)."""
    try:
        with path.open("rb") as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            data = f.read()
    except OSError as exc:
        raise ConfigError(
            f"{path} cannot be read ({exc.strerror or exc}); check "
            "the path and that this user may read it."
        ) from None
    try:
        return tomllib.loads(data.decode("utf-8")), mode
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; save it as UTF-8.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_syntax_message(path, str(exc))) from None


def _syntax_message(path: Path, detail: str) -> str:
    match = _TOML_WHERE.fullmatch(detail)
    if match is None:
        return f"{path} is not valid TOML ({detail}); fix the syntax."
    what, line, column = match.groups()
    return (
        f"{path}: line {line}, column {column} is not valid TOML ({what}); "
        "fix the syntax there."
    )


def _interface(t: Table) -> InterfaceConfig:
    t.refuse_unknown()
    private_key = v.secret(t, "private_key", "genkey", required=True)
    assert private_key is not None  # required=True returns a key or raises
    return InterfaceConfig(
        name=v.ifname(t, DEFAULT_IFNAME),
        private_key=private_key,
        public_key=keys.public_from_private(private_key),
        addresses=v.interfaces(t, "address"),
        listen=v.ip(t, "listen"),
        port_range=v.port_range(t, "port_range", DEFAULT_PORT_RANGE),
        hop_ms=v.hop_ms(t, DEFAULT_HOP_MS),
        cipher_id=v.cipher_id(t, DEFAULT_CIPHER),
        mtu=v.mtu(t, DEFAULT_MTU),
    )


def _peer(
    top: Table, number: int, data: object, interface: InterfaceConfig
) -> PeerConfig:
    if type(data) is not dict:
        top.fail(
            "peer",
            f"#{number} is {v.describe(data)}, not a table",
            "write each peer as a [[peer]] section",
        )
    # Name the peer by its name as soon as it has one, else by its place.
    named = type(data.get("name")) is str
    label = f'peer "{data["name"]}"' if named else f"peer #{number}"
    t = top.sub(data, label, PEER_KEYS)
    t.refuse_unknown()
    name = v.peer_name(t)
    t = top.sub(data, f'peer "{name}"', PEER_KEYS)
    endpoint = v.ip(t, "endpoint")
    if endpoint.version != interface.listen.version:
        family = f"IPv{interface.listen.version}"
        t.fail(
            "endpoint",
            f"is IPv{endpoint.version} but interface.listen is {family}",
            f"give the peer's {family} address, or listen on an "
            f"IPv{endpoint.version} address",
        )
    return PeerConfig(
        name=name,
        public_key=v.public_key(t, interface.private_key, interface.public_key),
        endpoint=endpoint,
        allowed_ips=v.networks(t, "allowed_ips"),
        port_range=v.port_range(t, "port_range", interface.port_range),
        psk=v.secret(t, "psk", "genpsk", required=False),
    )


# -- Checks across peers ------------------------------------------------------------


def _refuse_duplicates(top: Table, peers: tuple[PeerConfig, ...]) -> None:
    numbers: dict[str, int] = {}
    owners: dict[bytes, str] = {}
    for number, peer in enumerate(peers, 1):
        t = top.sub({}, f'peer "{peer.name}"', PEER_KEYS)
        if peer.name in numbers:
            t.fail(
                "name",
                f"is used by peers #{numbers[peer.name]} and #{number}",
                "give each peer its own name",
            )
        if peer.public_key in owners:
            t.fail(
                "public_key",
                f'is also the key of peer "{owners[peer.public_key]}"',
                "give each peer its own key, from `hopr-tunnel pubkey` on it",
            )
        numbers[peer.name] = number
        owners[peer.public_key] = peer.name


def _refuse_overlaps(top: Table, peers: tuple[PeerConfig, ...]) -> None:
    """No address may route to two peers.

    CIDR blocks either nest or are disjoint. Sorted by (family, first address,
    widest first), each block either lies inside the innermost block still open
    or closes it; a block overlaps an earlier one exactly when it lies inside an
    open one, and checking the innermost suffices, since a chain of open blocks
    with two owners was refused when its second owner joined.
    """
    entries = sorted(
        ((net, n) for n, p in enumerate(peers) for net in p.allowed_ips),
        key=lambda e: (e[0].version, e[0].network_address, e[0].prefixlen),
    )
    chain: list[tuple[Network, int]] = []
    for net, owner in entries:
        while chain and not _inside(net, chain[-1][0]):
            chain.pop()
        if chain and chain[-1][1] != owner:
            _overlap(top, peers, chain[-1], (net, owner))
        chain.append((net, owner))


def _inside(inner: Network, outer: Network) -> bool:
    if isinstance(inner, type(outer)):
        return inner.subnet_of(outer)  # type: ignore[arg-type]
    return False


def _overlap(
    top: Table,
    peers: tuple[PeerConfig, ...],
    first: tuple[Network, int],
    second: tuple[Network, int],
) -> NoReturn:
    """Refuse, naming the peer that comes later in the file, and the other one."""
    (net, n), (other_net, other) = sorted((first, second), key=lambda e: -e[1])
    t = top.sub({}, f'peer "{peers[n].name}"', PEER_KEYS)
    t.fail(
        "allowed_ips",
        f'has {net}, which overlaps {other_net} of peer "{peers[other].name}"',
        "give each address to one peer only",
    )
