#!/usr/bin/env python3
"""Time tunnel/offload.py on the fast path's typical superpacket (stdlib + repo).

    offload_speed.py [--repeat N]

A TCP/IPv4 superpacket as the kernel hands it over: 44 segments of 1408 bytes
(61,952 bytes of payload, timestamps on), split into wire packets; the 44
packets coalesced back; a 44-datagram USO superpacket split. Prints the best of
--repeat timings of process CPU time (the machine is shared: the best is the
least disturbed).
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tunnel import coalesce, offload  # noqa: E402

SEGMENTS, MSS = 44, 1408
ADDRS = bytes([100, 64, 0, 1, 100, 64, 0, 2])


def tcp_superpacket() -> tuple[bytes, bytes]:
    payload = os.urandom(SEGMENTS * MSS)
    ip = struct.pack(
        "!BBHHHBBH8s", 0x45, 0, 52 + len(payload), 1, 0x4000, 64, 6, 0, ADDRS
    )
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1, 1, 8 << 4, 0x18, 512, 0, 0)
    timestamps = bytes([1, 1, 8, 10]) + bytes(8)
    hdr = offload.VnetHdr(offload.F_NEEDS_CSUM, offload.GSO_TCPV4, 52, MSS, 20, 16)
    return hdr.pack(), ip + tcp + timestamps + payload


def udp_superpacket() -> tuple[bytes, bytes]:
    payload = os.urandom(SEGMENTS * 1400)
    ip = struct.pack("!BBHHHBBH8s", 0x45, 0, 0, 1, 0x4000, 64, 17, 0, ADDRS)
    udp = struct.pack("!HHHH", 443, 50000, 0, 0)
    hdr = offload.VnetHdr(offload.F_NEEDS_CSUM, offload.GSO_UDP_L4, 28, 1400, 20, 6)
    return hdr.pack(), ip + udp + payload


def best_us(fn: Callable[[], object], repeat: int, number: int = 200) -> float:
    # CPU time of this process, not wall time: another tenant taking the core
    # away between timings does not count against us.
    runs = timeit.repeat(fn, number=number, repeat=repeat, timer=time.process_time)
    return min(runs) / number * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description="time split/coalesce")
    parser.add_argument("--repeat", type=int, default=15)
    n = parser.parse_args().repeat
    tcp, udp = tcp_superpacket(), udp_superpacket()
    wire = offload.split(*tcp)
    assert len(wire) == SEGMENTS and len(coalesce.coalesce(wire)) == 1
    timings = {
        f"split TCPv4 {SEGMENTS} x {MSS} B": best_us(lambda: offload.split(*tcp), n),
        "  ... with pad_to=16": best_us(lambda: offload.split(*tcp, pad_to=16), n),
        f"coalesce {SEGMENTS} TCP packets": best_us(lambda: coalesce.coalesce(wire), n),
        f"split USO4 {SEGMENTS} x 1400 B": best_us(lambda: offload.split(*udp), n),
    }
    for label, us in timings.items():
        print(f"{label:<32} {us:7.1f} us   {us / SEGMENTS:5.2f} us per packet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
