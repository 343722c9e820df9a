"""Parsers for single values of peers.toml, each refusing a mistake in one sentence.

A `Table` is one TOML table together with where it sits (file, field prefix such
as `peer "db-1"`) and the keys it may hold, each with the example a fix suggests.
Every parser reads its key from a Table and either returns the value ready for
the core or raises ConfigError: "FILE: FIELD what is wrong; the fix." Messages
never quote a secret. agent/config.py assembles these into a Config.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from pathlib import Path
from typing import Any, NoReturn

from tunnel import keys
from tunnel.constants import CIPHER_IDS, HOP_MS_MAX, HOP_MS_MIN

from .constants import (
    DEFAULT_IFNAME,
    DEFAULT_MTU,
    IFNAME_MAX,
    MTU_MAX,
    MTU_MIN,
    PEER_NAME_MAX,
    PORT_MAX,
    PORT_MIN,
    SECRET_MODE_MASK,
)

Address = IPv4Address | IPv6Address
Interface = IPv4Interface | IPv6Interface
Network = IPv4Network | IPv6Network

_IFNAME = re.compile(rf"[A-Za-z0-9_.-]{{1,{IFNAME_MAX}}}")
_PEER_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{PEER_NAME_MAX - 1}}}")
_PORT_RANGE = re.compile(r"(\d+)\s*-\s*(\d+)")
_INTERVAL = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)?")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
_KIND_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "a table",
}
_REQUIRED: Any = object()


class ConfigError(ValueError):
    """A mistake in the config: one sentence naming the file, the field, the fix."""


def describe(value: object) -> str:
    """A TOML value's kind, as a message names it."""
    return _KIND_NAMES.get(type(value), f"a {type(value).__name__}")


@dataclass(frozen=True)
class Table:
    """One TOML table, where it sits, and the keys it may hold (key -> example)."""

    data: Mapping[str, Any]
    path: Path
    mode: int  # permission bits of the config file, for inline secrets
    prefix: str  # "interface", 'peer "db-1"', "peer #2", "" at the top
    known: Mapping[str, str]

    def sub(
        self, data: Mapping[str, Any], prefix: str, known: Mapping[str, str]
    ) -> Table:
        return Table(data, self.path, self.mode, prefix, known)

    def fail(self, key: str, problem: str, fix: str) -> NoReturn:
        name = f"{self.prefix}.{key}" if self.prefix else key
        raise ConfigError(f"{self.path}: {name} {problem}; {fix}.")

    def refuse_unknown(self) -> None:
        for key in self.data:
            if key in self.known:
                continue
            close = difflib.get_close_matches(key, self.known, n=1, cutoff=0.6)
            if close:
                fix = f"rename it to {close[0]} if that is what you meant, or remove it"
            else:
                fix = f"remove it (known keys: {', '.join(self.known)})"
            self.fail(key, "is not a known key", fix)

    def get(self, key: str, kind: type, default: Any = _REQUIRED) -> Any:
        """The value if present and of the kind, else the default, else an error."""
        example = f"{key} = {self.known[key]}"
        if key not in self.data:
            if default is _REQUIRED:
                self.fail(key, "is missing", f"add {example}")
            return default
        value = self.data[key]
        if type(value) is not kind:  # exact: TOML booleans are not integers here
            self.fail(
                key,
                f"is {describe(value)}, not {_KIND_NAMES[kind]}",
                f"write it like {example}",
            )
        return value

    def texts(self, key: str) -> list[str]:
        """A required, non-empty array of strings."""
        values: list[Any] = self.get(key, list)
        example = f"{key} = {self.known[key]}"
        if not values:
            self.fail(key, "is empty", f"list at least one, like {example}")
        if not all(isinstance(v, str) for v in values):
            self.fail(key, "holds something other than strings", f"write {example}")
        return values

    def resolve(self, text: str) -> Path:
        """A path from the config, relative to the config file's directory."""
        return self.path.parent / Path(text).expanduser()


# -- Names --------------------------------------------------------------------------


def ifname(t: Table, default: str) -> str:
    name: str = t.get("name", str, default)
    if _IFNAME.fullmatch(name) is None or name in (".", ".."):
        t.fail(
            "name",
            f'is "{name}", not a valid interface name',
            f"use 1 to {IFNAME_MAX} letters, digits, '.', '_' or '-', "
            f'like "{DEFAULT_IFNAME}"',
        )
    return name


def peer_name(t: Table) -> str:
    name: str = t.get("name", str)
    if _PEER_NAME.fullmatch(name) is None:
        t.fail(
            "name",
            f'is "{name}", not a usable peer name',
            f"use 1 to {PEER_NAME_MAX} letters, digits, '.', '_' or '-', "
            'starting with a letter or digit, like "db-1"',
        )
    return name


# -- Keys and secrets ---------------------------------------------------------------


def secret(t: Table, key: str, maker: str, required: bool) -> bytes | None:
    """A 32-byte secret given inline as `key` or in the file `key`_file.

    `maker` is the hopr-tunnel command that makes one, for the fix.
    """
    file_key = f"{key}_file"
    if key in t.data and file_key in t.data:
        t.fail(key, f"is given together with {file_key}", f"keep only {file_key}")
    if key in t.data:
        return _inline_secret(t, key, maker)
    if file_key in t.data or required:
        return _secret_file(t, file_key, t.get(file_key, str), maker)
    return None


def _inline_secret(t: Table, key: str, maker: str) -> bytes:
    text: str = t.get(key, str)
    if t.mode & SECRET_MODE_MASK:
        t.fail(
            key,
            "is written inline in a file that group or others can access "
            f"(mode {t.mode:04o})",
            f"run chmod 600 {t.path}, or move it to {key}_file",
        )
    return _decode_key(t, key, text, f"put the output of `hopr-tunnel {maker}` there")


def _secret_file(t: Table, key: str, text: str, maker: str) -> bytes:
    path = t.resolve(text)
    make = f"create it with `umask 077; hopr-tunnel {maker} > {path}`"
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            t.fail(key, f"names {path}, which is not a regular file", make)
        if info.st_mode & SECRET_MODE_MASK:
            mode = stat.S_IMODE(info.st_mode)
            t.fail(
                key,
                f"names {path}, which group or others can access (mode {mode:04o})",
                f"run chmod 600 {path}",
            )
        content = path.read_bytes().decode("ascii", errors="replace")
    except FileNotFoundError:
        t.fail(key, f"names {path}, which does not exist", make)
    except OSError as exc:
        t.fail(
            key,
            f"names {path}, which cannot be read ({exc.strerror})",
            "run as root or give this user read access",
        )
    fix = f"put the output of `hopr-tunnel {maker}` in it"
    return _decode_key(t, key, content, fix, f"names {path}, which ")


def _decode_key(t: Table, key: str, text: str, fix: str, lead: str = "") -> bytes:
    try:
        return keys.decode_key(text)
    except keys.KeyError_ as exc:
        t.fail(key, f"{lead}does not hold a key ({exc})", fix)


def public_key(t: Table, own_private: bytes, own_public: bytes) -> bytes:
    """The peer's key; refuses our own key and low-order points."""
    fix = "copy the output of `hopr-tunnel pubkey` on the peer"
    public = _decode_key(t, "public_key", t.get("public_key", str), fix)
    if public == own_public:
        t.fail("public_key", "is this host's own public key", fix)
    try:
        low_order = keys.is_zero(keys.x25519(own_private, public))
    except ValueError:  # the X25519 backend refuses an all-zero result itself
        low_order = True
    if low_order:
        t.fail("public_key", "is a low-order point (X25519 with it gives zero)", fix)
    return public


# -- Addresses ----------------------------------------------------------------------


def interfaces(t: Table, key: str) -> tuple[Interface, ...]:
    """Addresses with their prefix, like "100.64.0.1/24"."""
    return tuple(_interface(t, key, text) for text in t.texts(key))


def _interface(t: Table, key: str, text: str) -> Interface:
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        t.fail(
            key,
            f'holds "{text}", not an address with a prefix',
            'write it like "100.64.0.1/24"',
        )


def networks(t: Table, key: str) -> tuple[Network, ...]:
    """Networks without host bits, like "100.64.0.0/24"."""
    return tuple(_network(t, key, text) for text in t.texts(key))


def _network(t: Table, key: str, text: str) -> Network:
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        t.fail(key, f'holds "{text}", not a network', 'write it like "100.64.0.2/32"')
    host = ipaddress.ip_interface(text).ip
    t.fail(
        key,
        f'holds "{text}", which has host bits set',
        f'write "{loose}" for the network or "{host}/{loose.max_prefixlen}" '
        "for the one address",
    )


def ip(t: Table, key: str) -> Address:
    """A numeric IPv4 or IPv6 address with no port."""
    text: str = t.get(key, str)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if port.isdigit() and _is_ip(host):
        t.fail(
            key,
            f'is "{text}", which includes a port',
            f'give only the address, "{host}" (ports hop, so none is set)',
        )
    t.fail(
        key,
        f'is "{text}", not an IP address',
        'give a numeric address like "198.18.0.2" (names are not resolved)',
    )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# -- Numbers ------------------------------------------------------------------------


def port_range(t: Table, key: str, default: tuple[int, int]) -> tuple[int, int]:
    """ "MIN-MAX" within PORT_MIN..PORT_MAX, as a (min, max) tuple."""
    text: str | None = t.get(key, str, None)
    if text is None:
        return default
    match = _PORT_RANGE.fullmatch(text.strip())
    if match is None:
        t.fail(
            key,
            f'is "{text}", not a port range',
            'write it as MIN-MAX, like "20000-29999"',
        )
    low, high = int(match[1]), int(match[2])
    if low > high:
        t.fail(
            key,
            f'is "{text}", which is inverted',
            f'write the lower port first: "{high}-{low}"',
        )
    fix = f'pick ports within {PORT_MIN}..{PORT_MAX}, like "20000-29999"'
    if low < PORT_MIN:
        t.fail(
            key,
            f'is "{text}", which starts below {PORT_MIN} (system services live there)',
            fix,
        )
    if high > PORT_MAX:
        t.fail(key, f'is "{text}", which ends above {PORT_MAX}, the highest port', fix)
    return low, high


def hop_ms(t: Table, default_ms: int) -> int:
    """An integer of seconds, or a string like "10s", "1.5s", "1m", "1500ms"."""
    key, value = "hop_interval", t.data.get("hop_interval", f"{default_ms}ms")
    fix = 'write seconds as an integer, or a string like "10s", "1m" or "1500ms"'
    if type(value) is int:
        interval_ms = value * 1000
    elif type(value) is str and (match := _INTERVAL.fullmatch(value.strip())):
        exact_ms = Decimal(match[1]) * _UNIT_MS[match[2] or "s"]
        if exact_ms != exact_ms.to_integral_value():
            t.fail(key, f'is "{value}", not a whole number of milliseconds', fix)
        interval_ms = int(exact_ms)
    elif type(value) is str:
        t.fail(key, f'is "{value}", not an interval', fix)
    else:
        t.fail(key, f"is {describe(value)}", fix)
    if not HOP_MS_MIN <= interval_ms <= HOP_MS_MAX:
        t.fail(
            key,
            f"is {json.dumps(value)} ({interval_ms} ms), outside 1s..1h",
            'pick an interval from "1s" to "1h", like "10s"',
        )
    return interval_ms


def cipher_id(t: Table, default: str) -> int:
    name: str = t.get("cipher", str, default)
    if name not in CIPHER_IDS:
        valid = " or ".join(f'"{c}"' for c in CIPHER_IDS)
        t.fail("cipher", f'is "{name}", not a supported cipher', f"use {valid}")
    return CIPHER_IDS[name]


def mtu(t: Table, default: int) -> int:
    value: int = t.get("mtu", int, default)
    if not MTU_MIN <= value <= MTU_MAX:
        t.fail(
            "mtu",
            f"is {value}, outside {MTU_MIN}..{MTU_MAX} (IPv6 needs at least {MTU_MIN})",
            f"pick one in that span, like {DEFAULT_MTU}",
        )
    return value
