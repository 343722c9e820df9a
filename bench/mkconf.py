#!/usr/bin/env python3
"""Write the two peers.toml files of a peers.sh run (the --extra-prep step).

    mkconf.py CONF_A CONF_B [--hop-interval 10s] [--cipher aes-256-gcm] [--mtu N]

peers.sh runs it inside namespace hb-a with the HB_* variables of side a:
HB_TUN_IP/HB_PEER_TUN_IP (tunnel addresses), HB_UL_IP/HB_PEER_UL_IP (underlay),
HB_TUN_PREFIX. It makes a fresh key pair per side and writes each config with
its private key inline, mode 0600 (agent/config.py refuses a readable one).
Exit status 2 with one sentence when a variable is missing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tunnel import keys  # noqa: E402

NEEDED = ("HB_TUN_IP", "HB_PEER_TUN_IP", "HB_UL_IP", "HB_PEER_UL_IP")
PORT_RANGE = "20000-29999"


def side(
    private: bytes, tun: str, peer_tun: str, ul: str, peer_ul: str,
    peer_public: bytes, args: argparse.Namespace, prefix: str,
) -> str:  # fmt: skip
    """One host's peers.toml, in the format of agent/config.py."""
    return (
        "[interface]\n"
        'name = "hopr0"\n'
        f'private_key = "{keys.encode_key(private)}"\n'
        f'address = ["{tun}/{prefix}"]\n'
        f'listen = "{ul}"\n'
        f'port_range = "{PORT_RANGE}"\n'
        f'hop_interval = "{args.hop_interval}"\n'
        f'cipher = "{args.cipher}"\n'
        f"mtu = {args.mtu}\n"
        "\n[[peer]]\n"
        'name = "bench-peer"\n'
        f'public_key = "{keys.encode_key(peer_public)}"\n'
        f'endpoint = "{peer_ul}"\n'
        f'allowed_ips = ["{peer_tun}/32"]\n'
        f'port_range = "{PORT_RANGE}"\n'
    )


def write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)  # an existing file keeps its old mode otherwise


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("conf_a", type=Path)
    parser.add_argument("conf_b", type=Path)
    parser.add_argument("--hop-interval", default="10s")
    parser.add_argument("--cipher", default="aes-256-gcm")
    parser.add_argument("--mtu", type=int, default=1420)
    args = parser.parse_args(argv)
    missing = [name for name in NEEDED if not os.environ.get(name)]
    if missing:
        print(f"mkconf.py: {missing[0]} is not set; run it from peers.sh --extra-prep.")
        return 2
    e = os.environ
    prefix = e.get("HB_TUN_PREFIX", "24")
    key_a, key_b = keys.generate_private(), keys.generate_private()
    pub_a, pub_b = keys.public_from_private(key_a), keys.public_from_private(key_b)
    tun_a, tun_b, ul_a, ul_b = (e[name] for name in NEEDED)
    write_secret(
        args.conf_a, side(key_a, tun_a, tun_b, ul_a, ul_b, pub_b, args, prefix)
    )
    write_secret(
        args.conf_b, side(key_b, tun_b, tun_a, ul_b, ul_a, pub_a, args, prefix)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
