"""peers.toml: a valid file loads into values the core uses; each mistake is
refused with one sentence that names the file, the field and the fix."""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config, ConfigError, diff, load
from tunnel import keys
from tunnel.constants import CIPHER_IDS

HERE = Path(__file__).parent
VECTORS = json.loads((HERE / "vectors" / "v1.json").read_text())
HOST = VECTORS["host_a"]  # our host in these tests
DB1 = VECTORS["host_b"]
DB2_PUBLIC = keys.encode_key(keys.public_from_private(keys.generate_private()))
LOW_ORDER_POINTS = [
    "00" * 32,  # the identity
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",  # order 8
]

Doc = dict[str, Any]


def to_toml(doc: Doc) -> str:
    """Enough of a TOML writer for these tests: scalars, arrays, tables."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in doc.items() if _is_value(v)]
    for key, value in doc.items():
        if isinstance(value, dict):
            lines += [f"[{key}]", *(f"{k} = {json.dumps(v)}" for k, v in value.items())]
        elif isinstance(value, list) and not _is_value(value):
            for table in value:
                lines += [f"[[{key}]]"]
                lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _is_value(v: object) -> bool:
    return not isinstance(v, dict) and not (
        isinstance(v, list) and v and all(isinstance(t, dict) for t in v)
    )


class Site:
    """A config directory: a private key file, a psk file, and configs to write."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.key_file = self.secret("host.key", HOST["private_key_b64"])
        self.psk_text = keys.encode_key(os.urandom(32))
        self.psk_file = self.secret("db-1.psk", self.psk_text)

    def secret(self, name: str, text: str, mode: int = 0o600) -> Path:
        path = self.root / name
        path.write_text(text + "\n")
        path.chmod(mode)
        return path

    def doc(self) -> Doc:
        return {
            "interface": {
                "private_key_file": "host.key",
                "address": ["100.64.0.1/24", "fd00:64::1/64"],
                "listen": "198.18.0.1",
            },
            "peer": [
                {
                    "name": "db-1",
                    "public_key": DB1["public_key_b64"],
                    "endpoint": "198.18.0.2",
                    "allowed_ips": ["100.64.0.2/32", "fd00:64::2/128"],
                    "psk_file": "db-1.psk",
                },
                {
                    "name": "db-2",
                    "public_key": DB2_PUBLIC,
                    "endpoint": "198.18.0.3",
                    "allowed_ips": ["100.64.0.3/32"],
                },
            ],
        }

    def write(self, doc: Doc, mode: int = 0o600, name: str = "peers.toml") -> Path:
        path = self.root / name
        path.write_text(to_toml(doc))
        path.chmod(mode)
        return path


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def refusal(path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        load(path)
    message = str(err.value)
    assert message.startswith(f"{path}"), message
    assert "\n" not in message and message.endswith("."), message
    return message


# -- A valid config ----------------------------------------------------------------


def test_valid_config_loads_values_ready_for_the_core(site: Site) -> None:
    cfg = load(site.write(site.doc()))
    i, (db1, db2) = cfg.interface, cfg.peers
    assert i.private_key == keys.decode_key(HOST["private_key_b64"])
    assert i.public_key == keys.decode_key(HOST["public_key_b64"])
    assert i.addresses == (
        ipaddress.ip_interface("100.64.0.1/24"),
        ipaddress.ip_interface("fd00:64::1/64"),
    )
    assert i.listen == ipaddress.ip_address("198.18.0.1")
    assert (db1.name, db2.name) == ("db-1", "db-2")
    assert db1.public_key == keys.decode_key(DB1["public_key_b64"])
    assert db1.endpoint == ipaddress.ip_address("198.18.0.2")
    assert db1.allowed_ips == (
        ipaddress.ip_network("100.64.0.2/32"),
        ipaddress.ip_network("fd00:64::2/128"),
    )
    assert db1.psk == keys.decode_key(site.psk_text)
    assert db2.psk is None


def test_optional_fields_take_the_documented_defaults(site: Site) -> None:
    i = load(site.write(site.doc())).interface
    assert i.name == "hopr0"
    assert i.port_range == (20000, 29999)
    assert i.hop_ms == 10_000
    assert i.cipher_id == CIPHER_IDS["aes-256-gcm"]
    assert i.mtu == 1420


def test_explicit_interface_fields_are_used(site: Site) -> None:
    doc = site.doc()
    doc["interface"] |= {
        "name": "tun-db",
        "port_range": "30000-30999",
        "cipher": "chacha20-poly1305",
        "mtu": 9000,
    }
    i = load(site.write(doc)).interface
    assert (i.name, i.port_range, i.mtu) == ("tun-db", (30000, 30999), 9000)
    assert i.cipher_id == CIPHER_IDS["chacha20-poly1305"]


@pytest.mark.parametrize(
    "written, hop_ms",
    [
        ("10s", 10_000),
        ("1m", 60_000),
        ("1h", 3_600_000),
        ("1500ms", 1500),
        ("1.5s", 1500),
        ("0.25m", 15_000),
        ("1s", 1000),
        (30, 30_000),
    ],
)
def test_hop_interval_takes_units_or_plain_seconds(
    site: Site, written: object, hop_ms: int
) -> None:
    doc = site.doc()
    doc["interface"]["hop_interval"] = written
    assert load(site.write(doc)).interface.hop_ms == hop_ms


def test_peer_port_range_defaults_to_ours_and_may_differ(site: Site) -> None:
    doc = site.doc()
    doc["interface"]["port_range"] = "21000-21999"
    doc["peer"][1]["port_range"] = "40000-40999"
    db1, db2 = load(site.write(doc)).peers
    assert db1.port_range == (21000, 21999)
    assert db2.port_range == (40000, 40999)


def test_secret_file_paths_are_relative_to_the_config(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = site.write(site.doc())
    monkeypatch.chdir("/")
    assert load(path).peers[0].psk == keys.decode_key(site.psk_text)


def test_inline_secrets_are_accepted_in_a_file_only_its_owner_reads(
    site: Site,
) -> None:
    doc = site.doc()
    del doc["interface"]["private_key_file"], doc["peer"][0]["psk_file"]
    doc["interface"]["private_key"] = HOST["private_key_b64"]
    doc["peer"][0]["psk"] = site.psk_text
    cfg = load(site.write(doc, mode=0o600))
    assert cfg.interface.private_key == keys.decode_key(HOST["private_key_b64"])
    assert cfg.peers[0].psk == keys.decode_key(site.psk_text)


def test_a_config_without_peers_is_valid(site: Site) -> None:
    doc = site.doc()
    del doc["peer"]
    assert load(site.write(doc)).peers == ()


def test_loading_twice_gives_equal_configs(site: Site) -> None:
    path = site.write(site.doc())
    assert load(path) == load(path)


def test_repr_shows_no_private_key_or_psk(site: Site) -> None:
    cfg = load(site.write(site.doc()))
    text = repr(cfg)
    assert repr(cfg.interface.private_key) not in text
    assert repr(cfg.peers[0].psk) not in text


@pytest.mark.parametrize("case", VECTORS["cases"][:2] + VECTORS["cases"][-2:])
def test_schedule_of_a_loaded_pair_derives_the_vector_root(
    site: Site, case: dict[str, Any]
) -> None:
    doc = site.doc()
    doc["interface"] |= {
        "hop_interval": f"{case['hop_ms']}ms",
        "cipher": case["cipher"],
        "port_range": "{}-{}".format(*case["port_range_a"]),
    }
    db1 = doc["peer"][0]
    db1["port_range"] = "{}-{}".format(*case["port_range_b"])
    del db1["psk_file"]
    if case["psk_b64"]:
        db1["psk_file"] = site.secret("vector.psk", case["psk_b64"]).name
    cfg = load(site.write(doc))
    schedule = cfg.schedule(cfg.peers[0])
    assert schedule.root.hex() == case["root"]
    assert schedule.epoch_at(case["unix_ms"]) == case["epoch"]


# -- Mistakes in values ------------------------------------------------------------

Edit = Callable[[Doc], None]


def iface(**changes: Any) -> Edit:
    return lambda doc: doc["interface"].update(changes)


def peer(n: int, **changes: Any) -> Edit:
    return lambda doc: doc["peer"][n].update(changes)


def drop(section: str, key: str, n: int = 0) -> Edit:
    def edit(doc: Doc) -> None:
        table = doc[section] if section == "interface" else doc[section][n]
        del table[key]

    return edit


def rename(section: str, key: str, new: str) -> Edit:
    def edit(doc: Doc) -> None:
        table = doc[section] if section == "interface" else doc[section][0]
        table[new] = table.pop(key)

    return edit


def low_order_key(point: str) -> str:
    return keys.encode_key(bytes.fromhex(point))


# A table reads better than the formatter's one-argument-per-line layout.
# fmt: off
MISTAKES: dict[str, tuple[Edit, str, str]] = {
    # id: (edit, the field the message names, a piece of its fix)
    "unknown interface key": (
        rename("interface", "private_key_file", "privat_key_file"),
        "interface.privat_key_file", "rename it to private_key_file"),
    "unknown peer key": (
        rename("peer", "allowed_ips", "alowed_ips"),
        'peer "db-1".alowed_ips', "rename it to allowed_ips"),
    "unknown top-level table": (
        lambda doc: doc.update(peers=doc.pop("peer")), "peers", "rename it to peer"),
    "unknown key like no known one": (
        iface(colour="blue"), "interface.colour", "remove it (known keys: name,"),
    "missing address": (
        drop("interface", "address"), "interface.address", "add address ="),
    "missing listen": (drop("interface", "listen"), "interface.listen", "add listen ="),
    "missing private key": (
        drop("interface", "private_key_file"), "interface.private_key_file",
        "add private_key_file ="),
    "missing peer name": (drop("peer", "name"), "peer #1.name", "add name ="),
    "missing public key": (
        drop("peer", "public_key"), 'peer "db-1".public_key', "add public_key ="),
    "missing endpoint": (
        drop("peer", "endpoint"), 'peer "db-1".endpoint', "add endpoint ="),
    "missing allowed_ips": (
        drop("peer", "allowed_ips"), 'peer "db-1".allowed_ips', "add allowed_ips ="),
    "mtu as a string": (iface(mtu="1420"), "interface.mtu", "write it like mtu = 1420"),
    "mtu as a boolean": (iface(mtu=True), "interface.mtu", "write it like mtu = 1420"),
    "address as a string": (
        iface(address="100.64.0.1/24"), "interface.address",
        'write it like address = ["100.64.0.1/24"]'),
    "allowed_ips of numbers": (
        peer(0, allowed_ips=[1]), 'peer "db-1".allowed_ips', "write allowed_ips ="),
    "empty allowed_ips": (
        peer(0, allowed_ips=[]), 'peer "db-1".allowed_ips', "list at least one"),
    "port_range as a number": (
        iface(port_range=20000), "interface.port_range", 'port_range = "20000-29999"'),
    "hop_interval as a float": (
        iface(hop_interval=1.5), "interface.hop_interval", '"1500ms"'),
    "peer as one table": (
        lambda doc: doc.update(peer=doc["peer"][0]), "peer", "[[peer]] section"),
    "public key not base64": (
        peer(0, public_key="not base64!"), 'peer "db-1".public_key',
        "`hopr-tunnel pubkey` on the peer"),
    "public key of 31 bytes": (
        peer(0, public_key=keys.encode_key(bytes(range(1, 32)))),
        'peer "db-1".public_key', "`hopr-tunnel pubkey` on the peer"),
    "private key and key file both": (
        iface(private_key=HOST["private_key_b64"]), "interface.private_key",
        "keep only private_key_file"),
    "psk and psk file both": (
        peer(0, psk=keys.encode_key(bytes(32))), 'peer "db-1".psk',
        "keep only psk_file"),
    "inline psk of the wrong length": (
        lambda doc: doc["peer"][1].update(psk="AAAA"), 'peer "db-2".psk',
        "`hopr-tunnel genpsk`"),
    "private key file missing": (
        iface(private_key_file="nowhere.key"), "interface.private_key_file",
        "hopr-tunnel genkey >"),
    "psk file missing": (
        peer(0, psk_file="nowhere.psk"), 'peer "db-1".psk_file',
        "hopr-tunnel genpsk >"),
    "allowed_ips with host bits": (
        peer(0, allowed_ips=["100.64.0.2/24"]), 'peer "db-1".allowed_ips',
        'write "100.64.0.0/24" for the network or "100.64.0.2/32"'),
    "allowed_ips not a network": (
        peer(0, allowed_ips=["100.64.0/33"]), 'peer "db-1".allowed_ips',
        'like "100.64.0.2/32"'),
    "address not an address": (
        iface(address=["100.64.0.300/24"]), "interface.address",
        'like "100.64.0.1/24"'),
    "our own public key": (
        peer(1, public_key=HOST["public_key_b64"]), 'peer "db-2".public_key',
        "`hopr-tunnel pubkey` on the peer"),
    "port range below 1024": (
        iface(port_range="80-1000"), "interface.port_range",
        "starts below 1024"),
    "port range above 65535": (
        peer(0, port_range="60000-70000"), 'peer "db-1".port_range',
        "pick ports within 1024..65535"),
    "port range inverted": (
        iface(port_range="30000-20000"), "interface.port_range", '"20000-30000"'),
    "port range malformed": (
        iface(port_range="20000:29999"), "interface.port_range", "MIN-MAX"),
    "hop_interval under 1s": (
        iface(hop_interval="500ms"), "interface.hop_interval", 'from "1s" to "1h"'),
    "hop_interval of half a second": (
        iface(hop_interval="0.5s"), "interface.hop_interval", 'from "1s" to "1h"'),
    "hop_interval finer than a millisecond": (
        iface(hop_interval="1.0005s"), "interface.hop_interval", "milliseconds"),
    "hop_interval over 1h": (
        iface(hop_interval="2h"), "interface.hop_interval", 'from "1s" to "1h"'),
    "hop_interval zero": (iface(hop_interval=0), "interface.hop_interval", '"1s"'),
    "hop_interval malformed": (
        iface(hop_interval="ten seconds"), "interface.hop_interval", '"10s"'),
    "unknown cipher": (
        iface(cipher="aes-128-gcm"), "interface.cipher",
        'use "aes-256-gcm" or "chacha20-poly1305"'),
    "mtu below 1280": (iface(mtu=1279), "interface.mtu", "IPv6 needs at least 1280"),
    "mtu above 9000": (iface(mtu=9001), "interface.mtu", "like 1420"),
    "endpoint a host name": (
        peer(0, endpoint="db-1.example"), 'peer "db-1".endpoint',
        "names are not resolved"),
    "endpoint with a port": (
        peer(0, endpoint="198.18.0.2:20000"), 'peer "db-1".endpoint',
        'give only the address, "198.18.0.2"'),
    "IPv6 endpoint with a port": (
        peer(0, endpoint="[fd00::2]:20000"), 'peer "db-1".endpoint',
        'give only the address, "fd00::2"'),
    "listen not an address": (
        iface(listen="eth0"), "interface.listen", "numeric address"),
    "endpoint of the other family": (
        peer(1, endpoint="fd00::3"), 'peer "db-2".endpoint',
        "give the peer's IPv4 address"),
    "interface name too long": (
        iface(name="hopr-tunnel-zero"), "interface.name", "use 1 to 15 letters"),
    "interface name with a slash": (
        iface(name="a/b"), "interface.name", 'like "hopr0"'),
    "interface name empty": (iface(name=""), "interface.name", "use 1 to 15"),
    "interface name dot-dot": (iface(name=".."), "interface.name", "use 1 to 15"),
    "peer name with a space": (
        peer(0, name="db 1"), 'peer "db 1".name', 'like "db-1"'),
}
# fmt: on


@pytest.mark.parametrize("edit, field, fix", MISTAKES.values(), ids=MISTAKES.keys())
def test_mistake_is_refused_naming_file_field_and_fix(
    site: Site, edit: Edit, field: str, fix: str
) -> None:
    doc = site.doc()
    edit(doc)
    message = refusal(site.write(doc))
    assert f"{field} " in message
    assert fix in message


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=["identity", "order-8"])
def test_low_order_public_key_is_refused(site: Site, point: str) -> None:
    doc = site.doc()
    doc["peer"][0]["public_key"] = low_order_key(point)
    message = refusal(site.write(doc))
    assert 'peer "db-1".public_key is a low-order point' in message


def test_private_key_file_not_holding_a_key_is_refused(site: Site) -> None:
    site.secret("host.key", "not a key at all")
    message = refusal(site.write(site.doc()))
    assert "interface.private_key_file names" in message
    assert "does not hold a key" in message
    assert "not a key at all" not in message  # a secret file's text is never echoed


# -- Mistakes in files -------------------------------------------------------------


def test_missing_config_file_is_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path / "absent.toml")
    assert "cannot be read (No such file or directory)" in message


def test_directory_as_config_is_refused(tmp_path: Path) -> None:
    assert "cannot be read" in refusal(tmp_path)


def test_toml_syntax_error_names_the_line(site: Site) -> None:
    path = site.root / "peers.toml"
    path.write_text('[interface]\nlisten = "198.18.0.1"\nmtu = \n')
    message = refusal(path)
    assert "line 3" in message and "fix the syntax there" in message


def test_config_that_is_not_utf8_is_refused(site: Site) -> None:
    path = site.root / "peers.toml"
    path.write_bytes(b'[interface]\nname = "\xff"\n')
    assert "is not UTF-8 text" in refusal(path)


def test_config_without_interface_section_is_refused(site: Site) -> None:
    doc = site.doc()
    del doc["interface"]
    assert "has no [interface] section" in refusal(site.write(doc))


@pytest.mark.parametrize("which", ["private key", "psk"])
def test_secret_file_readable_by_others_is_refused(site: Site, which: str) -> None:
    path = site.key_file if which == "private key" else site.psk_file
    path.chmod(0o644)
    message = refusal(site.write(site.doc()))
    assert "(mode 0644)" in message
    assert f"chmod 600 {path}" in message


def test_secret_file_readable_by_group_is_refused(site: Site) -> None:
    site.key_file.chmod(0o640)
    assert f"chmod 600 {site.key_file}" in refusal(site.write(site.doc()))


def test_inline_private_key_in_a_config_others_can_read_is_refused(
    site: Site,
) -> None:
    doc = site.doc()
    del doc["interface"]["private_key_file"]
    doc["interface"]["private_key"] = HOST["private_key_b64"]
    path = site.write(doc, mode=0o644)
    message = refusal(path)
    assert "interface.private_key is written inline" in message
    assert f"chmod 600 {path}" in message


def test_inline_psk_in_a_config_others_can_read_is_refused(site: Site) -> None:
    doc = site.doc()
    del doc["peer"][0]["psk_file"]
    doc["peer"][0]["psk"] = site.psk_text
    path = site.write(doc, mode=0o644)
    message = refusal(path)
    assert 'peer "db-1".psk is written inline' in message
    assert f"chmod 600 {path}" in message


def test_config_without_inline_secrets_may_be_readable_by_others(site: Site) -> None:
    assert load(site.write(site.doc(), mode=0o644)).peers


# -- Mistakes across peers ---------------------------------------------------------


@pytest.mark.parametrize(
    "db2_ips, overlapped",
    [
        (["100.64.0.0/24"], "100.64.0.2/32"),
        (["100.64.0.2/32"], "100.64.0.2/32"),
        (["fd00:64::/64"], "fd00:64::2/128"),
    ],
    ids=["wider", "same", "ipv6"],
)
def test_overlapping_allowed_ips_name_both_peers(
    site: Site, db2_ips: list[str], overlapped: str
) -> None:
    doc = site.doc()
    doc["peer"][1]["allowed_ips"] = db2_ips
    message = refusal(site.write(doc))
    assert f'peer "db-2".allowed_ips has {db2_ips[0]}' in message
    assert f'overlaps {overlapped} of peer "db-1"' in message


def test_overlap_hidden_behind_a_peers_own_nesting_is_found(site: Site) -> None:
    doc = site.doc()
    doc["peer"][0]["allowed_ips"] = ["100.64.0.0/16", "100.64.1.0/24"]
    doc["peer"][1]["allowed_ips"] = ["100.64.2.0/24"]
    message = refusal(site.write(doc))
    assert 'peer "db-2".allowed_ips has 100.64.2.0/24' in message
    assert 'overlaps 100.64.0.0/16 of peer "db-1"' in message


def test_nested_allowed_ips_of_one_peer_are_accepted(site: Site) -> None:
    doc = site.doc()
    doc["peer"][0]["allowed_ips"] = ["100.64.0.0/16", "100.64.1.0/24"]
    doc["peer"][1]["allowed_ips"] = ["100.65.0.0/16"]
    assert len(load(site.write(doc)).peers) == 2


def test_duplicate_peer_names_are_refused(site: Site) -> None:
    doc = site.doc()
    doc["peer"][1]["name"] = "db-1"
    message = refusal(site.write(doc))
    assert 'peer "db-1".name is used by peers #1 and #2' in message


def test_duplicate_public_keys_name_both_peers(site: Site) -> None:
    doc = site.doc()
    doc["peer"][1]["public_key"] = DB1["public_key_b64"]
    message = refusal(site.write(doc))
    assert 'peer "db-2".public_key is also the key of peer "db-1"' in message


# -- diff --------------------------------------------------------------------------


def load_edited(site: Site, edit: Edit, name: str) -> Config:
    doc = site.doc()
    edit(doc)
    return load(site.write(doc, name=name))


def test_diff_of_equal_configs_leaves_every_peer_unchanged(site: Site) -> None:
    old = load(site.write(site.doc(), name="old.toml"))
    new = load(site.write(site.doc(), name="new.toml"))
    assert diff(old, new) == ((), (), (), ("db-1", "db-2"))


def test_diff_names_added_and_removed_peers(site: Site) -> None:
    old = load_edited(site, lambda doc: doc["peer"].pop(1), "old.toml")
    new = load_edited(site, lambda doc: doc["peer"].pop(0), "new.toml")
    added, removed, changed, unchanged = diff(old, new)
    assert (added, removed, changed, unchanged) == (("db-2",), ("db-1",), (), ())


def test_diff_marks_a_peer_changed_when_one_of_its_fields_differs(
    site: Site,
) -> None:
    old = load(site.write(site.doc(), name="old.toml"))
    new = load_edited(site, peer(0, allowed_ips=["100.64.0.9/32"]), "new.toml")
    assert diff(old, new).changed == ("db-1",)
    assert diff(old, new).unchanged == ("db-2",)


def test_diff_marks_a_peer_changed_when_its_psk_differs(site: Site) -> None:
    old = load(site.write(site.doc(), name="old.toml"))
    site.secret("db-1.psk", keys.encode_key(os.urandom(32)))
    new = load(site.write(site.doc(), name="new.toml"))
    assert diff(old, new).changed == ("db-1",)


@pytest.mark.parametrize(
    "edit",
    [
        iface(hop_interval="20s"),
        iface(cipher="chacha20-poly1305"),
        iface(port_range="30000-39999"),
        iface(private_key_file="other.key"),
    ],
    ids=["hop_interval", "cipher", "port_range", "private_key"],
)
def test_diff_marks_every_peer_changed_when_a_root_field_differs(
    site: Site, edit: Edit
) -> None:
    site.secret("other.key", keys.encode_key(keys.generate_private()))
    old = load(site.write(site.doc(), name="old.toml"))
    new = load_edited(site, edit, "new.toml")
    assert diff(old, new) == ((), (), ("db-1", "db-2"), ())


def test_diff_leaves_peers_unchanged_when_only_the_mtu_differs(site: Site) -> None:
    old = load(site.write(site.doc(), name="old.toml"))
    new = load_edited(site, iface(mtu=1280), "new.toml")
    assert diff(old, new).unchanged == ("db-1", "db-2")
