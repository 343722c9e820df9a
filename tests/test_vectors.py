"""Known-answer vectors: the core reproduces ../shared/vectors/v1.json byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunnel import datagram, hello, keys
from tunnel.constants import CIPHER_IDS
from tunnel.schedule import PairSchedule

HERE = Path(__file__).parent
VECTORS = json.loads((HERE / "vectors" / "v1.json").read_text())
SHARED = HERE.parent.parent / "shared" / "vectors" / "v1.json"
CASES = VECTORS["cases"]


def case_id(case: dict) -> str:
    psk = "psk" if case["psk_b64"] else "nopsk"
    return f"{case['cipher']}-{case['hop_ms']}ms-{psk}"


def schedules(case: dict) -> tuple[PairSchedule, PairSchedule]:
    """(host a's view, host b's view) of the pair in a case."""
    a, b = VECTORS["host_a"], VECTORS["host_b"]
    psk = keys.decode_key(case["psk_b64"]) if case["psk_b64"] else None
    cipher = CIPHER_IDS[case["cipher"]]
    ra, rb = tuple(case["port_range_a"]), tuple(case["port_range_b"])
    sa = PairSchedule(
        keys.decode_key(a["private_key_b64"]),
        keys.decode_key(b["public_key_b64"]),
        psk,
        case["hop_ms"],
        cipher,
        ra,
        rb,
    )
    sb = PairSchedule(
        keys.decode_key(b["private_key_b64"]),
        keys.decode_key(a["public_key_b64"]),
        psk,
        case["hop_ms"],
        cipher,
        rb,
        ra,
    )
    return sa, sb


def eph(host: str) -> tuple[bytes, bytes]:
    h = VECTORS[host]
    return bytes.fromhex(h["ephemeral_private"]), bytes.fromhex(h["ephemeral_public"])


@pytest.mark.skipif(not SHARED.exists(), reason="no shared/ checkout beside the repo")
def test_vendored_vectors_match_the_shared_copy() -> None:
    assert json.loads(SHARED.read_text()) == VECTORS


def test_vector_public_keys_derive_from_private_keys() -> None:
    for host in ("host_a", "host_b"):
        h = VECTORS[host]
        public = keys.public_from_private(keys.decode_key(h["private_key_b64"]))
        assert keys.encode_key(public) == h["public_key_b64"]
        priv, pub = eph(host)
        assert keys.public_from_private(priv) == pub


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_root_phase_and_epoch(case: dict) -> None:
    sa, sb = schedules(case)
    assert sa.root.hex() == sb.root.hex() == case["root"]
    assert sa.phase_ms == sb.phase_ms == case["phase_ms"]
    assert ("hi" if not sa.is_lo else "lo") == case["a_is"]
    assert sa.epoch_at(case["unix_ms"]) == case["epoch"]
    assert sa.epoch_start_ms(case["epoch"]) == case["epoch_start_ms"]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_session_secret_agrees_on_both_sides(case: dict) -> None:
    sa, sb = schedules(case)
    (a_priv, a_pub), (b_priv, b_pub) = eph("host_a"), eph("host_b")
    assert sa.session_secret(a_priv, a_pub, b_pub).hex() == case["session"]
    assert sb.session_secret(b_priv, b_pub, a_pub).hex() == case["session"]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_epoch_secrets_ports_and_direction_keys(case: dict) -> None:
    from tunnel.schedule import data_key, hello_key, hp_key

    sa, sb = schedules(case)
    session = bytes.fromhex(case["session"])
    for ep in case["epochs"]:
        n = ep["epoch"]
        secret = sa.epoch_secret(n)
        assert secret.hex() == sb.epoch_secret(n).hex() == ep["epoch_secret"]
        assert sa.ports(n) == (ep["port_a"], ep["port_b"])
        assert sb.ports(n) == (ep["port_b"], ep["port_a"])
        assert sa.send_dir.decode() == ep["dir_a_to_b"]
        a2b, b2a = sa.send_dir, sb.send_dir
        assert hp_key(secret, a2b).hex() == ep["hp_key_a_to_b"]
        assert hp_key(secret, b2a).hex() == ep["hp_key_b_to_a"]
        assert hello_key(secret, a2b).hex() == ep["hello_key_a_to_b"]
        assert hello_key(secret, b2a).hex() == ep["hello_key_b_to_a"]
        assert data_key(secret, a2b, session).hex() == ep["data_key_a_to_b"]
        assert data_key(secret, b2a, session).hex() == ep["data_key_b_to_a"]


def packets(case: dict) -> list[tuple[str, dict]]:
    return [("a", p) for p in case["packets_a_to_b"]] + [
        ("b", p) for p in case["packets_b_to_a"]
    ]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_sealed_datagrams_are_byte_exact(case: dict) -> None:
    sa, sb = schedules(case)
    session = bytes.fromhex(case["session"])
    n = case["packets_epoch"]
    for sender, pkt in packets(case):
        sched = sa if sender == "a" else sb
        k = sched.keys(n)
        plaintext = bytes.fromhex(pkt["plaintext"])
        if pkt["kind"] == "hello":
            h, aead = int(pkt["header"], 16), k.send_hello
        else:
            h, aead = pkt["counter"], sched.send_data_aead(n, session)
        assert datagram.seal(aead, k.send_hp, h, plaintext).hex() == pkt["udp_payload"]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_sealed_datagrams_open_on_the_other_side(case: dict) -> None:
    sa, sb = schedules(case)
    session = bytes.fromhex(case["session"])
    n = case["packets_epoch"]
    for sender, pkt in packets(case):
        receiver = sb if sender == "a" else sa
        k = receiver.keys(n)
        wire = bytes.fromhex(pkt["udp_payload"])
        h = datagram.unmask(k.recv_hp, wire)
        if pkt["kind"] == "hello":
            assert datagram.is_hello(h) and h == int(pkt["header"], 16)
            plaintext = datagram.open_(k.recv_hello, h, wire)
            parsed = hello.decode(plaintext or b"")
            assert parsed is not None
            assert parsed.eph_public == eph("host_a" if sender == "a" else "host_b")[1]
            assert hello.encode(parsed, len(plaintext or b"")) == plaintext
        else:
            assert h == pkt["counter"]
            plaintext = datagram.open_(receiver.recv_data_aead(n, session), h, wire)
        assert plaintext is not None and plaintext.hex() == pkt["plaintext"]
