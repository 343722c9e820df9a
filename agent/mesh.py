"""`hopr-tunnel mesh`: keys and one config per host of a full mesh, from an inventory.

The inventory is a small TOML file:

    [defaults]                  # optional: [interface] settings for every host
    hop_interval = "10s"        # also cipher, port_range, mtu, name
    cipher = "aes-256-gcm"

    [[host]]
    name = "alpha"              # becomes its peer name in the other configs
    underlay = "198.18.0.1"     # it listens here and the others reach it here
    address = "100.64.0.1"      # tunnel address: "IP", "IP/prefix", or a list
    port_range = "20000-29999"  # optional: this host's own range

A bare tunnel address gets prefix /24 (IPv4) or /64 (IPv6) on the host's own
interface, and /32 or /128 as the host's allowed_ips in the other configs.

For each host, OUT/NAME/ holds what goes into that host's /etc/hopr-tunnel:

    mesh.toml          its config, with every other host as a peer
    mesh.key           its private key (mode 0600)
    mesh.pub           its public key
    mesh-PEER.psk      with --psk: the pair's pre-shared key, the same on both
                       hosts (mode 0600)

"mesh" is the config name (--name), so `systemctl enable --now hopr-tunnel@mesh`
runs it. Paths in the config are relative to it, so the directory can be copied
as it is. Running again keeps every key and psk already in OUT, so adding a host
rewrites the configs without changing anybody's keys.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunnel import keys
from tunnel.constants import KEY_LEN

from . import config_values as v
from .config import INTERFACE_KEYS
from .config_values import Address, ConfigError, Interface, Table
from .constants import (
    DEFAULT_CIPHER,
    DEFAULT_HOP_MS,
    DEFAULT_IFNAME,
    DEFAULT_MTU,
    DEFAULT_PORT_RANGE,
)

__all__ = ["Host", "Inventory", "generate", "load_inventory"]

TOP_KEYS = {"defaults": "{...}", "host": "[{...}]"}
DEFAULT_KEYS = {
    key: INTERFACE_KEYS[key]
    for key in ("name", "port_range", "hop_interval", "cipher", "mtu")
}
HOST_KEYS = {
    "name": '"alpha"',
    "underlay": '"198.18.0.1"',
    "address": '"100.64.0.1"',
    "port_range": '"20000-29999"',
}
# The subnet a bare tunnel address gets on its host's interface: one /24 (or
# /64) holds a mesh of up to 254 hosts and routes them all through the tunnel.
BARE_PREFIX = {4: 24, 6: 64}
SECRET_FILE_MODE = 0o600
# A config name is a file name and a systemd instance name (hopr-tunnel@NAME):
# these characters need no escaping in either.
_CONFIG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Host:
    name: str
    underlay: Address
    addresses: tuple[Interface, ...]
    port_range: tuple[int, int]


@dataclass(frozen=True)
class Inventory:
    path: Path
    defaults: dict[str, Any]  # as written, copied into every [interface]
    hosts: tuple[Host, ...]


def load_inventory(path: Path) -> Inventory:
    """Read and check an inventory; raise ConfigError on the first mistake."""
    doc = _read(path)
    top = Table(doc, path, 0, "", TOP_KEYS)
    top.refuse_unknown()
    defaults = _defaults(top, doc.get("defaults", {}))
    port_range = v.port_range(defaults, "port_range", DEFAULT_PORT_RANGE)
    tables = doc.get("host", [])
    if type(tables) is not list or not all(type(t) is dict for t in tables):
        top.fail("host", "is not an array of tables", "write each host as [[host]]")
    hosts = tuple(_host(top, n, t, port_range) for n, t in enumerate(tables, 1))
    _refuse_clashes(top, hosts)
    return Inventory(path, dict(defaults.data), hosts)


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(
            f"{path} cannot be read ({exc.strerror or exc}); check the path."
        ) from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix it.") from None


def _defaults(top: Table, data: object) -> Table:
    if type(data) is not dict:
        top.fail("defaults", "is not a table", "write it as a [defaults] section")
    t = top.sub(data, "defaults", DEFAULT_KEYS)
    t.refuse_unknown()
    # Parsed only to refuse a mistake here, naming the inventory, rather than
    # in every generated config.
    v.ifname(t, DEFAULT_IFNAME)
    v.hop_ms(t, DEFAULT_HOP_MS)
    v.cipher_id(t, DEFAULT_CIPHER)
    v.mtu(t, DEFAULT_MTU)
    return t


def _host(
    top: Table, number: int, data: dict[str, Any], ports: tuple[int, int]
) -> Host:
    label = f'host "{data["name"]}"' if type(data.get("name")) is str else None
    t = top.sub(data, label or f"host #{number}", HOST_KEYS)
    t.refuse_unknown()
    return Host(
        name=v.peer_name(t),
        underlay=v.ip(t, "underlay"),
        addresses=_addresses(t),
        port_range=v.port_range(t, "port_range", ports),
    )


def _addresses(t: Table) -> tuple[Interface, ...]:
    value = t.data.get("address")
    texts = t.texts("address") if type(value) is not str else [value]
    return tuple(_address(t, text) for text in texts)


def _address(t: Table, text: str) -> Interface:
    try:
        address = ipaddress.ip_interface(text)
    except ValueError:
        t.fail("address", f'holds "{text}", not an IP address', 'write "100.64.0.1"')
    if "/" not in text:
        address = ipaddress.ip_interface(f"{text}/{BARE_PREFIX[address.version]}")
    return address


def _refuse_clashes(top: Table, hosts: tuple[Host, ...]) -> None:
    if len(hosts) < 2:
        top.fail("host", f"lists {len(hosts)} host(s)", "list at least two [[host]]")
    families = {h.underlay.version for h in hosts}
    if len(families) > 1:
        top.fail("host", "mixes IPv4 and IPv6 underlays", "use one family for all")
    seen: dict[object, str] = {}
    for host in hosts:
        t = top.sub({}, f'host "{host.name}"', HOST_KEYS)
        things = [("name", host.name), ("underlay", host.underlay)]
        things += [("address", a.ip) for a in host.addresses]
        for field, value in things:
            if value in seen:
                t.fail(field, f"repeats {value} of {seen[value]}", "make it unique")
            seen[value] = f'host "{host.name}"'


# -- Writing ------------------------------------------------------------------------


def generate(inventory: Inventory, out: Path, name: str, psk: bool) -> list[Path]:
    """Write every host's directory; return the config paths, in inventory order."""
    if _CONFIG_NAME.fullmatch(name) is None:
        raise ConfigError(
            f'config name "{name}" is not a plain file name; use letters, digits, '
            '".", "_" or "-", like "mesh".'
        )
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    private = {h.name: _private_key(out / h.name, name) for h in inventory.hosts}
    psks = _psks(inventory.hosts, out, name) if psk else {}
    written = []
    for host in inventory.hosts:
        public = keys.public_from_private(private[host.name])
        (out / host.name / f"{name}.pub").write_text(keys.encode_key(public) + "\n")
        config = out / host.name / f"{name}.toml"
        text = _render(inventory, host, name, private, psks)
        _write_file(config, text, SECRET_FILE_MODE)
        written.append(config)
    return written


def _private_key(directory: Path, name: str) -> bytes:
    """The host's private key: the one in OUT if there is one, else a new one."""
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / f"{name}.key"
    if path.exists():
        return _read_key(path)
    private = keys.generate_private()
    _write_secret(path, private)
    return private


def _psks(hosts: tuple[Host, ...], out: Path, name: str) -> dict[frozenset[str], bytes]:
    """One psk per pair, the same file in both hosts' directories."""
    psks = {}
    for i, a in enumerate(hosts):
        for b in hosts[i + 1 :]:
            copies = (out / a.name / f"{name}-{b.name}.psk",
                      out / b.name / f"{name}-{a.name}.psk")  # fmt: skip
            kept = [_read_key(path) for path in copies if path.exists()]
            psk = kept[0] if kept else os.urandom(KEY_LEN)
            for path in copies:
                _write_secret(path, psk)
            psks[frozenset((a.name, b.name))] = psk
    return psks


def _read_key(path: Path) -> bytes:
    try:
        return keys.decode_key(path.read_text().strip())
    except keys.KeyError_ as exc:
        raise ConfigError(
            f"{path} does not hold a key ({exc}); delete it to get a new one."
        ) from None


def _write_secret(path: Path, key: bytes) -> None:
    _write_file(path, keys.encode_key(key) + "\n", SECRET_FILE_MODE)


def _write_file(path: Path, text: str, mode: int) -> None:
    """Write `text` with `mode` from the first byte: no moment of wider access."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), mode)  # O_CREAT's mode is cut by the umask
        f.write(text)


def _render(
    inventory: Inventory,
    host: Host,
    name: str,
    private: dict[str, bytes],
    psks: dict[frozenset[str], bytes],
) -> str:
    made_by = f"hopr-tunnel mesh {inventory.path.name}"
    lines = [f"# {name}.toml for {host.name}, made by `{made_by}`"]
    lines += ["", "[interface]", f"private_key_file = {_toml(name + '.key')}"]
    lines += [f"address = {_toml([str(a) for a in host.addresses])}"]
    lines += [f"listen = {_toml(str(host.underlay))}"]
    lines += [f"port_range = {_toml(_range_text(host.port_range))}"]
    lines += [f"{k} = {_toml(val)}" for k, val in inventory.defaults.items()
              if k != "port_range"]  # fmt: skip
    for peer in inventory.hosts:
        if peer is host:
            continue
        public = keys.public_from_private(private[peer.name])
        lines += ["", "[[peer]]", f"name = {_toml(peer.name)}"]
        lines += [f"public_key = {_toml(keys.encode_key(public))}"]
        lines += [f"endpoint = {_toml(str(peer.underlay))}"]
        lines += [f"allowed_ips = {_toml([_host_network(a) for a in peer.addresses])}"]
        lines += [f"port_range = {_toml(_range_text(peer.port_range))}"]
        if frozenset((host.name, peer.name)) in psks:
            lines += [f"psk_file = {_toml(f'{name}-{peer.name}.psk')}"]
    return "\n".join(lines) + "\n"


def _host_network(address: Interface) -> str:
    return str(ipaddress.ip_network(address.ip))


def _range_text(ports: tuple[int, int]) -> str:
    return f"{ports[0]}-{ports[1]}"


def _toml(value: object) -> str:
    """A TOML literal: JSON's strings, integers and arrays are valid TOML."""
    return json.dumps(value)
