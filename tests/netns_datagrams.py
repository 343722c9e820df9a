"""Exact-datagram tools the fast-path netns tests run inside their namespaces.

Run as a script (`python3 tests/netns_datagrams.py COMMAND ...`) under
`ip netns exec`. Each tool reports every datagram or echo it sent or received as
[length, digest] (an 8-byte BLAKE2b of the payload, in hex), so the test can tell
a datagram that arrived whole from one that was merged with another, split,
truncated or padded: those have a length and digest nobody sent.

    udp-collect  print "listening", then record each datagram received, until
                 SIGTERM or until nothing came for --idle-s after the first
    udp-burst    send datagrams of every size 1..--max-size (and runs of equal
                 sizes) back to back from one socket, in bursts, DF set
    udp-gso      send buffers with UDP_SEGMENT set on the socket, so the kernel
                 makes one UDP superpacket of each; report every segment
    icmp-sweep   echo requests with payloads of every size 0..--max-size, DF
                 set; report which replies came back with the exact payload

Only the standard library, so it starts fast in every namespace.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

# Run as a script from this directory, which is then on sys.path.
from netns_tools import internet_checksum

SOL_UDP = 17
UDP_SEGMENT = 103
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2
IPV6_MTU_DISCOVER = 23
IPV6_PMTUDISC_DO = 2
SO_RCVBUFFORCE = 33  # as root, past net.core.rmem_max
RCVBUF_BYTES = 8 << 20  # a whole burst waits in the socket, not dropped by it
ICMP_ECHO, ICMP_ECHOREPLY = 8, 0
ICMP6_ECHO, ICMP6_ECHOREPLY = 128, 129
ECHO_HDR = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
ECHO_WINDOW = 16  # requests in flight at once
ECHO_WAIT_S = 2.0  # a request unanswered this long is missing


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


def digest(payload: bytes) -> list[Any]:
    return [len(payload), hashlib.blake2b(payload, digest_size=8).hexdigest()]


def family_of(address: str) -> socket.AddressFamily:
    version = ipaddress.ip_address(address).version
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def dont_fragment(sock: socket.socket, family: socket.AddressFamily) -> None:
    """DF on every send: a datagram too big for the route fails, never fragments."""
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)


# -- UDP ---------------------------------------------------------------------------


def udp_collect(args: argparse.Namespace) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sock = socket.socket(family_of(args.bind), socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
    sock.bind((args.bind, args.port))
    sock.settimeout(args.idle_s)
    received: list[list[Any]] = []
    print("listening", flush=True)
    try:
        while True:
            try:
                received.append(digest(sock.recv(65_535)))
            except TimeoutError:
                if received:
                    break
    finally:
        emit({"received": received})


def burst_sizes(max_size: int) -> list[int]:
    """Every size up, every size down, and runs of one size ending shorter.

    Sealed datagrams are padded to 16 bytes, so neighbouring sizes make equal
    outer datagrams: the runs a UDP_SEGMENT send or UDP_GRO receive batches.
    """
    up = list(range(1, max_size + 1))
    runs = []
    for size in (1, 15, 16, 17, 100, max_size // 2, max_size - 1, max_size):
        runs += [size] * 40 + [max(size - 1, 1)]
    return up + up[::-1] + runs


def udp_burst(args: argparse.Namespace) -> None:
    family = family_of(args.to)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    dont_fragment(sock, family)
    rng = random.Random(args.seed)
    sizes = burst_sizes(args.max_size)
    sent = []
    for start in range(0, len(sizes), args.burst):
        for size in sizes[start : start + args.burst]:
            payload = rng.randbytes(size)
            sock.sendto(payload, (args.to, args.port))
            sent.append(digest(payload))
        time.sleep(args.pause_s)
    emit({"sent": sent})


def udp_gso(args: argparse.Namespace) -> None:
    """Each of --sends "SEGMENT:COUNT:TAIL" is one send of COUNT segments of
    SEGMENT bytes and one of TAIL bytes (none if 0), cut by the kernel."""
    family = family_of(args.to)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    dont_fragment(sock, family)
    rng = random.Random(args.seed)
    sent = []
    for spec in args.sends.split(","):
        segment, count, tail = (int(x) for x in spec.split(":"))
        payloads = [rng.randbytes(segment) for _ in range(count)]
        payloads += [rng.randbytes(tail)] if tail else []
        sock.setsockopt(SOL_UDP, UDP_SEGMENT, segment)
        sock.sendto(b"".join(payloads), (args.to, args.port))
        sent += [digest(p) for p in payloads]
        time.sleep(args.pause_s)
    emit({"sent": sent})


# -- ICMP echo ---------------------------------------------------------------------


def icmp_sweep(args: argparse.Namespace) -> None:
    family = family_of(args.to)
    v6 = family == socket.AF_INET6
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    sock = socket.socket(family, socket.SOCK_RAW, proto)
    dont_fragment(sock, family)
    ident = os.getpid() & 0xFFFF
    rng = random.Random(args.seed)
    payloads = {size: rng.randbytes(size) for size in range(args.max_size + 1)}
    answers: dict[int, bytes] = {}
    errors: dict[int, str] = {}
    in_flight: dict[int, float] = {}  # size (the sequence number): when sent
    pending = list(payloads)
    while pending or in_flight:
        now = time.monotonic()
        for size in [s for s, at in in_flight.items() if now - at > ECHO_WAIT_S]:
            del in_flight[size]  # lost: reported as missing
        while pending and len(in_flight) < ECHO_WINDOW:
            size = pending.pop(0)
            try:
                sock.sendto(echo_request(v6, ident, size, payloads[size]), (args.to, 0))
                in_flight[size] = time.monotonic()
            except OSError as exc:
                errors[size] = exc.strerror or str(exc)
        if select.select([sock], [], [], 0.1)[0]:
            reply = echo_reply(v6, ident, sock.recv(65_535))
            if reply is not None and reply[0] in payloads:
                answers.setdefault(reply[0], reply[1])
                in_flight.pop(reply[0], None)
    wrong = [s for s, data in answers.items() if data != payloads[s]]
    missing = [s for s in payloads if s not in answers and s not in errors]
    emit({"sizes": len(payloads), "answered": len(answers), "wrong": wrong,
          "missing": missing, "errors": errors})  # fmt: skip


def echo_request(v6: bool, ident: int, seq: int, payload: bytes) -> bytes:
    """An echo request; ICMPv6 checksums are the kernel's on a raw socket."""
    kind = ICMP6_ECHO if v6 else ICMP_ECHO
    message = ECHO_HDR.pack(kind, 0, 0, ident, seq) + payload
    if v6:
        return message
    return ECHO_HDR.pack(kind, 0, internet_checksum(message), ident, seq) + payload


def echo_reply(v6: bool, ident: int, data: bytes) -> tuple[int, bytes] | None:
    """(sequence, payload) of our echo reply, or None for anything else."""
    if not v6:
        data = data[(data[0] & 0x0F) * 4 :]  # raw IPv4 sockets get the IP header
    if len(data) < ECHO_HDR.size:
        return None
    kind, _, _, their_ident, seq = ECHO_HDR.unpack_from(data)
    if kind != (ICMP6_ECHOREPLY if v6 else ICMP_ECHOREPLY) or their_ident != ident:
        return None
    return seq, data[ECHO_HDR.size :]


# -- Command line ------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("udp-collect")
    s.add_argument("--bind", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--idle-s", type=float, default=3.0)
    for name in ("udp-burst", "udp-gso"):
        s = sub.add_parser(name)
        s.add_argument("--to", required=True)
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--seed", type=int, default=1)
        s.add_argument("--pause-s", type=float, default=0.01)
    s = sub.choices["udp-burst"]
    s.add_argument("--max-size", type=int, required=True)
    s.add_argument("--burst", type=int, default=64)
    sub.choices["udp-gso"].add_argument("--sends", required=True)
    s = sub.add_parser("icmp-sweep")
    s.add_argument("--to", required=True)
    s.add_argument("--max-size", type=int, required=True)
    s.add_argument("--seed", type=int, default=1)
    return p


COMMANDS = {
    "udp-collect": udp_collect,
    "udp-burst": udp_burst,
    "udp-gso": udp_gso,
    "icmp-sweep": icmp_sweep,
}

if __name__ == "__main__":
    arguments = parser().parse_args()
    COMMANDS[arguments.command](arguments)
