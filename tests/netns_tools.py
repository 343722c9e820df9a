"""Small traffic tools the netns tests run inside their namespaces.

Run as a script (`python3 tests/netns_tools.py COMMAND ...`) under
`ip netns exec`, so each tool sees only its namespace's interfaces. Tools that
serve print one "listening" line on stdout once their socket is bound, so the
harness can start the other end without sleeping; every tool prints its result as
one JSON line on stdout at the end.

    tcp-sink    accept one TCP connection, hash what arrives, note the longest stall
    tcp-source  send N random bytes over TCP (optionally paced), hash them
                (both: --mss caps the segment size, e.g. 88 for tiny packets)
    udp-sink    count UDP datagrams, and those that carry a marker, until SIGTERM
    udp-send    send N UDP datagrams that carry a marker
    udp-probe   from exact 4-tuples, see which ports answer ICMP port unreachable
    raw-send    send given UDP payloads with given ports from a raw socket (replay)

Only the standard library, so it starts fast in every namespace.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any

CHUNK_BYTES = 64 * 1024
ACCEPT_TIMEOUT_S = 30.0
# A transfer that moves no byte for this long is stuck; the sink gives up.
IDLE_TIMEOUT_S = 30.0


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


def family_of(address: str) -> socket.AddressFamily:
    version = ipaddress.ip_address(address).version
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def listening() -> None:
    print("listening", flush=True)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so `finally` blocks print the result."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


# -- TCP ---------------------------------------------------------------------------


def tcp_sink(args: argparse.Namespace) -> None:
    server = socket.socket(family_of(args.bind), socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    set_mss(server, args.mss)
    server.bind((args.bind, args.port))
    server.listen(1)
    server.settimeout(ACCEPT_TIMEOUT_S)
    listening()
    conn, _ = server.accept()
    conn.settimeout(IDLE_TIMEOUT_S)
    digest, total, max_gap_s = hashlib.sha256(), 0, 0.0
    started = last = time.monotonic()
    while chunk := conn.recv(CHUNK_BYTES):
        now = time.monotonic()
        if total:
            max_gap_s = max(max_gap_s, now - last)
        last = now
        digest.update(chunk)
        total += len(chunk)
    emit(
        {
            "bytes": total,
            "sha256": digest.hexdigest(),
            "max_gap_s": round(max_gap_s, 3),
            "seconds": round(last - started, 3),
            "mss": conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG),
        }
    )


def tcp_source(args: argparse.Namespace) -> None:
    conn = socket.socket(family_of(args.to), socket.SOCK_STREAM)
    set_mss(conn, args.mss)
    conn.settimeout(IDLE_TIMEOUT_S)
    conn.connect((args.to, args.port))
    digest, started, sent = hashlib.sha256(), time.monotonic(), 0
    for chunk in random_chunks(args.bytes):
        digest.update(chunk)
        conn.sendall(chunk)
        sent += len(chunk)
        pace(started, sent, args.rate_bytes_s)
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)  # wait for the sink to close: everything was read
    emit(
        {
            "bytes": args.bytes,
            "sha256": digest.hexdigest(),
            "seconds": round(time.monotonic() - started, 3),
        }
    )


def set_mss(sock: socket.socket, mss: int) -> None:
    """Cap the segments both ways (announced in the SYN); 0 leaves the default."""
    if mss:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)


def random_chunks(total: int) -> Iterator[bytes]:
    left = total
    while left > 0:
        chunk = os.urandom(min(CHUNK_BYTES, left))
        left -= len(chunk)
        yield chunk


def pace(started: float, sent: int, rate_bytes_s: int) -> None:
    """Sleep until the bytes sent so far fit the rate (0 = no pacing)."""
    if rate_bytes_s <= 0:
        return
    ahead_s = sent / rate_bytes_s - (time.monotonic() - started)
    if ahead_s > 0:
        time.sleep(ahead_s)


# -- UDP ---------------------------------------------------------------------------


def udp_sink(args: argparse.Namespace) -> None:
    exit_on_sigterm()
    sock = socket.socket(family_of(args.bind), socket.SOCK_DGRAM)
    sock.bind((args.bind, args.port))
    sock.settimeout(0.2)
    marker = bytes.fromhex(args.marker_hex)
    count = marked = 0
    listening()
    try:
        while True:
            try:
                data = sock.recv(65_535)
            except TimeoutError:
                continue
            count += 1
            marked += marker in data
    finally:
        emit({"count": count, "marked": marked})


def udp_send(args: argparse.Namespace) -> None:
    sock = socket.socket(family_of(args.to), socket.SOCK_DGRAM)
    marker = bytes.fromhex(args.marker_hex)
    payload = (marker * (args.size // len(marker) + 1))[: args.size]
    for _ in range(args.count):
        sock.sendto(payload, (args.to, args.port))
        time.sleep(args.interval_s)
    emit({"sent": args.count})


def udp_probe(args: argparse.Namespace) -> None:
    """Per (our port, their port): "refused", "silent" or "bind_error"."""
    results = []
    for pair in args.pairs.split(","):
        sport, dport = (int(p) for p in pair.split(":"))
        results.append([sport, dport, probe_one(args, sport, dport)])
        time.sleep(0.05)
    emit({"results": results})


def probe_one(args: argparse.Namespace, sport: int, dport: int) -> str:
    sock = socket.socket(family_of(args.to), socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.bind, sport))
    except OSError as exc:
        return f"bind_error: {exc.strerror}"
    sock.connect((args.to, dport))
    sock.settimeout(args.wait_s)
    try:
        sock.send(b"probe from the netns tests")
        sock.recv(65_535)
        return "reply"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "silent"
    finally:
        sock.close()


# -- Raw replay --------------------------------------------------------------------


def raw_send(args: argparse.Namespace) -> None:
    """Send each [sport, dport, payload_hex] line of a JSON file from src to dst."""
    src, dst = ipaddress.ip_address(args.src), ipaddress.ip_address(args.dst)
    sock = socket.socket(family_of(args.src), socket.SOCK_RAW, socket.IPPROTO_UDP)
    sock.bind((args.src, 0))
    with open(args.file) as f:
        items = json.load(f)
    for sport, dport, payload_hex in items:
        segment = udp_segment(src, dst, sport, dport, bytes.fromhex(payload_hex))
        sock.sendto(segment, (args.dst, 0))
        time.sleep(args.interval_s)
    emit({"sent": len(items)})


def udp_segment(src: Any, dst: Any, sport: int, dport: int, payload: bytes) -> bytes:
    length = 8 + len(payload)
    header = struct.pack("!HHHH", sport, dport, length, 0)
    if src.version == 4:
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, 17, length)
    else:
        pseudo = src.packed + dst.packed + struct.pack("!I3xB", length, 17)
    checksum = internet_checksum(pseudo + header + payload) or 0xFFFF
    return struct.pack("!HHHH", sport, dport, length, checksum) + payload


def internet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# -- Command line ------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("tcp-sink")
    s.add_argument("--bind", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--mss", type=int, default=0)
    s = sub.add_parser("tcp-source")
    s.add_argument("--to", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--bytes", type=int, required=True)
    s.add_argument("--rate-bytes-s", type=int, default=0)
    s.add_argument("--mss", type=int, default=0)
    s = sub.add_parser("udp-sink")
    s.add_argument("--bind", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--marker-hex", required=True)
    s = sub.add_parser("udp-send")
    s.add_argument("--to", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--marker-hex", required=True)
    s.add_argument("--count", type=int, default=10)
    s.add_argument("--size", type=int, default=200)
    s.add_argument("--interval-s", type=float, default=0.01)
    s = sub.add_parser("udp-probe")
    s.add_argument("--bind", required=True)
    s.add_argument("--to", required=True)
    s.add_argument("--pairs", required=True, help="SPORT:DPORT,...")
    s.add_argument("--wait-s", type=float, default=0.5)
    s = sub.add_parser("raw-send")
    s.add_argument("--src", required=True)
    s.add_argument("--dst", required=True)
    s.add_argument("--file", required=True)
    s.add_argument("--interval-s", type=float, default=0.001)
    return p


COMMANDS = {
    "tcp-sink": tcp_sink,
    "tcp-source": tcp_source,
    "udp-sink": udp_sink,
    "udp-send": udp_send,
    "udp-probe": udp_probe,
    "raw-send": raw_send,
}

if __name__ == "__main__":
    arguments = parser().parse_args()
    COMMANDS[arguments.command](arguments)
