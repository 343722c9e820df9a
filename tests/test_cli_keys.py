"""The command line: key tools in wg's format, `check`, and one-line user errors."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from agent.cli import main
from tunnel import keys
from tunnel.constants import CIPHER_IDS
from tunnel.schedule import PairSchedule

HERE = Path(__file__).parent
VECTORS = json.loads((HERE / "vectors" / "v1.json").read_text())
HOST_A, HOST_B = VECTORS["host_a"], VECTORS["host_b"]
CASES = VECTORS["cases"]
_SCRIPT = shutil.which("hopr-tunnel")
HOPR = [_SCRIPT] if _SCRIPT else [sys.executable, "-m", "agent.cli"]
WG = shutil.which("wg")


def run(*args: str, stdin: str | bytes | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=stdin)


def hopr(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """hopr-tunnel as a real process, the way an operator runs it."""
    return subprocess.run(
        [*HOPR, *args], capture_output=True, text=True, timeout=30, **kwargs
    )


def assert_one_line_user_error(result: Result) -> None:
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hopr-tunnel: "), result.stderr
    assert "Traceback" not in result.stderr


def case_id(case: dict[str, Any]) -> str:
    psk = "psk" if case["psk_b64"] else "nopsk"
    return f"{case['cipher']}-{case['hop_ms']}ms-{psk}"


# -- genkey, pubkey, genpsk ---------------------------------------------------------


def test_genkey_prints_a_clamped_32_byte_key() -> None:
    result = run("genkey")
    assert result.exit_code == 0
    raw = base64.b64decode(result.stdout.strip(), validate=True)
    assert len(raw) == 32
    assert raw[0] & 7 == 0  # clamped as X25519 and `wg genkey` do
    assert raw[31] & 0x80 == 0 and raw[31] & 0x40 == 0x40


def test_genkey_prints_a_new_key_each_time() -> None:
    assert run("genkey").stdout != run("genkey").stdout


def test_genpsk_prints_32_bytes_of_base64() -> None:
    result = run("genpsk")
    assert result.exit_code == 0
    assert len(base64.b64decode(result.stdout.strip(), validate=True)) == 32
    assert run("genpsk").stdout != result.stdout


@pytest.mark.parametrize("host", [HOST_A, HOST_B], ids=["host_a", "host_b"])
def test_pubkey_of_a_vector_private_key_is_its_public_key(host: dict) -> None:
    result = run("pubkey", stdin=host["private_key_b64"] + "\n")
    assert result.exit_code == 0
    assert result.stdout == host["public_key_b64"] + "\n"


@pytest.mark.parametrize(
    "stdin",
    ["not a key\n", "", keys.encode_key(bytes(31)) + "\n", b"\xff\xfe\n"],
    ids=["garbage", "empty", "31 bytes", "not ascii"],
)
def test_pubkey_refuses_what_is_not_a_private_key_in_one_line(
    stdin: str | bytes,
) -> None:
    result = run("pubkey", stdin=stdin)
    assert_one_line_user_error(result)
    assert "stdin does not hold a private key" in result.stderr
    assert "hopr-tunnel genkey" in result.stderr


def test_genkey_piped_into_pubkey_gives_the_public_key(tmp_path: Path) -> None:
    line = " ".join(HOPR)
    pipeline = f"umask 077; {line} genkey | tee host.key | {line} pubkey"
    done = subprocess.run(
        ["sh", "-c", pipeline],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    private = keys.decode_key((tmp_path / "host.key").read_text())
    assert done.stdout == keys.encode_key(keys.public_from_private(private)) + "\n"
    assert done.stderr == ""


def redirect_into_file(path: Path, mode: int, command: str) -> str:
    """Run `hopr-tunnel COMMAND > path` into an existing file; return stderr."""
    path.touch()
    path.chmod(mode)
    with path.open("w") as stdout:
        done = subprocess.run(
            [*HOPR, command],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            check=True,
        )
    return done.stderr


@pytest.mark.parametrize("command", ["genkey", "genpsk"])
def test_secret_written_to_a_file_others_can_read_gets_a_warning(
    tmp_path: Path, command: str
) -> None:
    stderr = redirect_into_file(tmp_path / "secret", 0o644, command)
    assert "warning" in stderr and "(mode 0644)" in stderr and "chmod 600" in stderr
    assert len(keys.decode_key((tmp_path / "secret").read_text())) == 32


def test_secret_written_to_a_private_file_gets_no_warning(tmp_path: Path) -> None:
    assert redirect_into_file(tmp_path / "secret", 0o600, "genkey") == ""


# -- wg compatibility ---------------------------------------------------------------

needs_wg = pytest.mark.skipif(WG is None, reason="wg (wireguard-tools) not installed")


def wg(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [WG or "wg", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout


@needs_wg
def test_wg_pubkey_agrees_with_ours_on_our_key() -> None:
    private = hopr("genkey").stdout
    assert hopr("pubkey", input=private).stdout == wg("pubkey", stdin=private)


@needs_wg
def test_our_pubkey_agrees_with_wg_on_a_wg_key() -> None:
    private = wg("genkey")
    assert hopr("pubkey", input=private).stdout == wg("pubkey", stdin=private)


@needs_wg
def test_wg_pubkey_of_a_vector_private_key_is_its_public_key() -> None:
    public = wg("pubkey", stdin=HOST_A["private_key_b64"] + "\n")
    assert public == HOST_A["public_key_b64"] + "\n"


# -- check --------------------------------------------------------------------------


def write_pair_configs(root: Path, case: dict[str, Any]) -> tuple[Path, Path]:
    """peers.toml for host a (peer b) and for host b (peer a), as in a case."""
    paths = []
    for me, peer, me_ip, peer_ip, mine, theirs in (
        ("a", "b", "198.18.0.1", "198.18.0.2", "port_range_a", "port_range_b"),
        ("b", "a", "198.18.0.2", "198.18.0.1", "port_range_b", "port_range_a"),
    ):
        host, other = VECTORS[f"host_{me}"], VECTORS[f"host_{peer}"]
        psk = f'psk = "{case["psk_b64"]}"' if case["psk_b64"] else ""
        path = root / f"{me}.toml"
        path.write_text(f"""
[interface]
private_key = "{host["private_key_b64"]}"
address = ["100.64.0.{1 if me == "a" else 2}/24"]
listen = "{me_ip}"
port_range = "{case[mine][0]}-{case[mine][1]}"
hop_interval = "{case["hop_ms"]}ms"
cipher = "{case["cipher"]}"

[[peer]]
name = "host-{peer}"
public_key = "{other["public_key_b64"]}"
endpoint = "{peer_ip}"
allowed_ips = ["100.64.0.{2 if me == "a" else 1}/32"]
port_range = "{case[theirs][0]}-{case[theirs][1]}"
{psk}
""")
        path.chmod(0o600)
        paths.append(path)
    return paths[0], paths[1]


def check_json(path: Path, at_ms: int) -> dict[str, Any]:
    result = run("check", str(path), "--at", str(at_ms), "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def vector_schedule(case: dict[str, Any]) -> PairSchedule:
    """Host a's schedule for a case, built straight from the vectors."""
    psk = keys.decode_key(case["psk_b64"]) if case["psk_b64"] else None
    return PairSchedule(
        keys.decode_key(HOST_A["private_key_b64"]),
        keys.decode_key(HOST_B["public_key_b64"]),
        psk,
        case["hop_ms"],
        CIPHER_IDS[case["cipher"]],
        tuple(case["port_range_a"]),
        tuple(case["port_range_b"]),
    )


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_check_shows_the_ports_the_schedule_gives(
    tmp_path: Path, case: dict[str, Any]
) -> None:
    a_path, _ = write_pair_configs(tmp_path, case)
    (pair,) = check_json(a_path, case["unix_ms"])["peers"]
    schedule = vector_schedule(case)
    epoch = schedule.epoch_at(case["unix_ms"])
    assert pair["epoch"] == epoch == case["epoch"]
    assert (pair["ports"]["ours"], pair["ports"]["theirs"]) == schedule.ports(epoch)
    nxt = pair["next_epoch"]
    assert nxt["epoch"] == epoch + 1
    assert (nxt["ports"]["ours"], nxt["ports"]["theirs"]) == schedule.ports(epoch + 1)
    assert pair["side"] == case["a_is"]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_check_ports_match_the_vector_ports(
    tmp_path: Path, case: dict[str, Any]
) -> None:
    a_path, _ = write_pair_configs(tmp_path, case)
    (pair,) = check_json(a_path, case["unix_ms"])["peers"]
    vector = {e["epoch"]: e for e in case["epochs"]}
    for shown in (pair, pair["next_epoch"]):
        if shown["epoch"] in vector:
            port_a, port_b = (
                vector[shown["epoch"]]["port_a"],
                vector[shown["epoch"]]["port_b"],
            )
            assert (shown["ports"]["ours"], shown["ports"]["theirs"]) == (
                port_a,
                port_b,
            )


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_both_operators_see_the_same_schedule_from_their_sides(
    tmp_path: Path, case: dict[str, Any]
) -> None:
    a_path, b_path = write_pair_configs(tmp_path, case)
    (a,) = check_json(a_path, case["unix_ms"])["peers"]
    (b,) = check_json(b_path, case["unix_ms"])["peers"]
    assert {a["side"], b["side"]} == {"lo", "hi"}
    assert (a["epoch"], a["phase_ms"], a["next_hop"]) == (
        b["epoch"],
        b["phase_ms"],
        b["next_hop"],
    )
    assert a["port_ranges"] == {
        "ours": b["port_ranges"]["theirs"],
        "theirs": b["port_ranges"]["ours"],
    }
    for a_view, b_view in ((a, b), (a["next_epoch"], b["next_epoch"])):
        assert a_view["ports"]["ours"] == b_view["ports"]["theirs"]
        assert a_view["ports"]["theirs"] == b_view["ports"]["ours"]


def test_check_next_hop_is_the_start_of_the_next_epoch(tmp_path: Path) -> None:
    case = CASES[0]
    a_path, _ = write_pair_configs(tmp_path, case)
    (pair,) = check_json(a_path, case["unix_ms"])["peers"]
    start_ms = vector_schedule(case).epoch_start_ms(case["epoch"] + 1)
    assert pair["next_hop"]["unix_ms"] == start_ms
    assert pair["next_hop"]["in_ms"] == start_ms - case["unix_ms"]
    assert 0 < pair["next_hop"]["in_ms"] <= case["hop_ms"]


def test_check_text_names_side_hop_epoch_ports_and_next_hop(tmp_path: Path) -> None:
    case = CASES[0]
    a_path, _ = write_pair_configs(tmp_path, case)
    report = check_json(a_path, case["unix_ms"])
    (pair,) = report["peers"]
    result = run("check", str(a_path), "--at", str(case["unix_ms"]))
    assert result.exit_code == 0
    text = result.stdout
    now, nxt = pair["ports"], pair["next_epoch"]
    assert f"peer host-b  public key {HOST_B['public_key_b64']}" in text
    assert f"our side    {case['a_is']}" in text
    assert f"every {case['hop_ms'] // 1000}s" in text
    assert f"{pair['epoch']}: ports {now['ours']} -> {now['theirs']}" in text
    assert f"at {pair['next_hop']['utc']}" in text
    ports = nxt["ports"]
    assert f"{nxt['epoch']}: ports {ports['ours']} -> {ports['theirs']}" in text


def test_check_shows_times_in_utc(tmp_path: Path) -> None:
    a_path, _ = write_pair_configs(tmp_path, CASES[0])
    report = check_json(a_path, 1_000_123)  # 1970-01-01 00:16:40.123 UTC
    assert report["utc"] == "1970-01-01T00:16:40.123Z"


def test_check_without_at_uses_the_current_time(tmp_path: Path) -> None:
    a_path, _ = write_pair_configs(tmp_path, CASES[0])
    before_ms = time.time_ns() // 1_000_000
    result = run("check", str(a_path), "--json")
    after_ms = time.time_ns() // 1_000_000
    report = json.loads(result.stdout)
    assert before_ms <= report["unix_ms"] <= after_ms
    schedule = vector_schedule(CASES[0])
    assert report["peers"][0]["epoch"] == schedule.epoch_at(report["unix_ms"])


def test_check_output_holds_no_private_key_or_psk(tmp_path: Path) -> None:
    case = next(c for c in CASES if c["psk_b64"])
    a_path, _ = write_pair_configs(tmp_path, case)
    for args in (["--json"], []):
        out = run("check", str(a_path), "--at", str(case["unix_ms"]), *args).stdout
        assert HOST_A["private_key_b64"] not in out
        assert case["psk_b64"] not in out


def test_check_refuses_a_bad_config_in_one_line_with_status_2(
    tmp_path: Path,
) -> None:
    a_path, _ = write_pair_configs(tmp_path, CASES[0])
    a_path.write_text(a_path.read_text().replace('cipher = "', 'cipher = "x-'))
    result = run("check", str(a_path))
    assert_one_line_user_error(result)
    assert f"{a_path}: interface.cipher" in result.stderr


def test_check_of_a_missing_file_fails_in_one_line_from_a_real_process(
    tmp_path: Path,
) -> None:
    done = hopr("check", str(tmp_path / "absent.toml"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "absent.toml cannot be read" in done.stderr


# -- The group ----------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_has_help(command: str) -> None:
    result = run(command, "--help")
    assert result.exit_code == 0
    usage = result.stdout.splitlines()[0]
    assert usage.startswith("Usage: ") and f" {command} " in usage


def test_group_help_ends_with_an_example() -> None:
    result = run("--help")
    assert result.exit_code == 0
    assert "hopr-tunnel genkey > /etc/hopr-tunnel/host.key" in result.stdout


@pytest.mark.parametrize(
    "args",
    [["no-such-command"], ["check"], ["check", "x", "--at", "-1"]],
    ids=["unknown command", "missing argument", "bad option value"],
)
def test_usage_errors_are_one_line_with_status_2(args: list[str]) -> None:
    result = run(*args)
    assert_one_line_user_error(result)
    assert "--help" in result.stderr
