"""The kernel's offloads, for real: a TUN device and UDP sockets in a namespace.

    host netns (untouched)
    hopr-off-<pid>-<rand>: hoff0 (TUN, 100.64.7.1/24), lo;
                           tests/offload_probe.py plays the peer 100.64.7.2

The module creates one namespace, runs each case of tests/offload_probe.py in it
once with `ip netns exec` (the TUN device dies with the probe process) and
deletes the namespace on every exit path. Nothing
leaves the namespace: the peer address is only ever reached through the TUN
device, which the probe itself reads.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tunnel import tunoffload

PROBE = Path(__file__).with_name("offload_probe.py")
pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    if os.geteuid() != 0 or not Path("/dev/net/tun").exists() or not shutil.which("ip"):
        pytest.skip("needs root, ip and /dev/net/tun")
    name = f"hopr-off-{os.getpid()}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


_results: dict[tuple[str, str], dict[str, Any]] = {}


def probe(namespace: str, case: str) -> dict[str, Any]:
    """The JSON a probe case printed (each case runs once per namespace)."""
    if (namespace, case) not in _results:
        _results[namespace, case] = _run(namespace, case)
    return _results[namespace, case]


def _run(namespace: str, case: str) -> dict[str, Any]:
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, str(PROBE), case],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_kernel_takes_tcp_and_udp_offloads_with_a_10_byte_header(
    namespace: str,
) -> None:
    result = probe(namespace, "offloads")
    assert result["flags"] & tunoffload.TCP_OFFLOADS == tunoffload.TCP_OFFLOADS
    assert result["vnet_hdr_len"] == 10


def test_device_without_vnet_header_reports_offloads_unavailable(
    namespace: str,
) -> None:
    assert probe(namespace, "offloads")["plain_enable"] is False


def test_kernel_tcp_superpackets_split_into_verified_segments(namespace: str) -> None:
    result = probe(namespace, "tcp-out")
    assert result["sha_ok"] and result["received"] == 1 << 20
    assert result["all_verify"]
    assert result["gso_reads"] > 0 and result["max_segments"] > 1


def test_kernel_delivers_coalesced_superpackets_to_a_socket(namespace: str) -> None:
    result = probe(namespace, "tcp-in")
    assert result["sha_ok"]
    assert result["writes"] < result["segments"] / 10


def test_kernel_udp_superpacket_splits_into_separate_datagrams(namespace: str) -> None:
    result = probe(namespace, "udp-out")
    assert result["gso_type"] == 5  # UDP_L4: the kernel took USO on this device
    assert result["lengths"] == [1200] * 20 + [300]
    assert result["all_verify"] and result["payload_ok"]


def test_udp_segment_send_arrives_as_separate_datagrams(namespace: str) -> None:
    result = probe(namespace, "udp")
    assert result["gso"]
    assert result["plain"] == [[1200]] * 20 + [[300]]


def test_udp_gro_receives_a_run_in_one_call_with_its_segment_size(
    namespace: str,
) -> None:
    result = probe(namespace, "udp")
    assert result["gro"]
    assert result["coalesced"] == [[1200] * 20 + [300]]


def test_socket_wide_udp_segment_splits_every_send(namespace: str) -> None:
    result = probe(namespace, "udp")
    assert result["fixed"]
    assert result["fixed_plain"] == [[1000], [1000], [500]]
