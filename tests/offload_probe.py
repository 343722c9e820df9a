"""Run inside a fresh network namespace by tests/test_tunoffload.py; prints JSON.

    ns hopr-off-<pid>-<rand> (created and deleted by the test)
    +------------------------------------------------------------+
    | hoff0 (TUN, IFF_VNET_HDR) 100.64.7.1/24   lo 127.0.0.1     |
    |   kernel TCP socket  <--TUN-->  this script, playing the   |
    |                                 peer 100.64.7.2 by hand     |
    +------------------------------------------------------------+

    offload_probe.py offloads   which offloads the kernel takes on a TUN device
    offload_probe.py tcp-out    kernel -> TUN: superpackets, split, verified
    offload_probe.py tcp-in     coalesced superpackets -> TUN -> kernel socket
    offload_probe.py udp-out    a UDP_SEGMENT send -> TUN: one USO superpacket
    offload_probe.py udp        UDP_SEGMENT send and UDP_GRO receive on lo

It asserts nothing itself: it reports what it saw, the test judges.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scapy.layers.inet import IP, TCP  # noqa: E402

from tunnel import coalesce, offload, tunoffload, udpoffload  # noqa: E402
from tunnel.tun import Tun, open_tun  # noqa: E402

LOCAL, PEER = "100.64.7.1", "100.64.7.2"
DEADLINE_S = 20.0
HDR = offload.VNET_HDR_LEN


def up_tun(vnet_hdr: bool = True) -> tuple[Tun, int]:
    tun = open_tun("hoff0", vnet_hdr=vnet_hdr)
    flags = tunoffload.enabled_offloads(tun.fd)
    for cmd in (
        ["ip", "addr", "add", f"{LOCAL}/24", "dev", tun.name],
        ["ip", "link", "set", tun.name, "mtu", "1500", "up"],
    ):
        subprocess.run(cmd, check=True, timeout=10)
    return tun, flags


def read_tun(fd: int, timeout_s: float, proto: int = 6) -> tuple[bytes, bytes] | None:
    """(virtio-net header, packet) of the next IPv4 packet of proto, or None."""
    end = time.monotonic() + timeout_s
    while (left := end - time.monotonic()) > 0:
        if not select.select([fd], [], [], left)[0]:
            return None
        data = os.read(fd, 70_000)
        packet = data[HDR:]
        if packet and packet[0] >> 4 == 4 and packet[9] == proto:
            return data[:HDR], packet
    return None


def write_tun(fd: int, packet: Any, hdr: bytes = offload.ZERO_VNET_HDR) -> None:
    os.write(fd, hdr + bytes(packet))


def verifies(segment: bytes) -> bool:
    """Checksums recomputed from scratch (word by word, RFC 1071) hold."""

    def total(data: bytes) -> int:
        data += b"\0" * (len(data) & 1)
        s = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        return s

    ihl = (segment[0] & 15) * 4
    length = int.from_bytes(segment[2:4], "big")
    proto = bytes([0, segment[9]])
    pseudo = segment[12:20] + proto + (length - ihl).to_bytes(2, "big")
    return (
        total(segment[:ihl]) == 0xFFFF and total(pseudo + segment[ihl:length]) == 0xFFFF
    )


def case_offloads() -> dict[str, Any]:
    tun, flags = up_tun()
    plain = open_tun("hoff1", vnet_hdr=False)
    return {
        "flags": flags,
        "vnet_hdr_len": tunoffload.vnet_hdr_len(tun.fd),
        "plain_enable": tunoffload.enable_offloads(plain.fd),
    }


def case_tcp_out() -> dict[str, Any]:
    """The kernel sends 1 MB to the 'peer' we play; we ACK what we split."""
    tun, _ = up_tun()
    data = os.urandom(1 << 20)
    sock = socket.socket()
    sock.setblocking(False)
    sock.connect_ex((PEER, 5001))
    syn = IP(wait_for(tun.fd, lambda p: TCP in p and p[TCP].flags == "S")[1])
    isn = 7_000_000
    synack = IP(src=PEER, dst=LOCAL) / TCP(
        sport=5001, dport=syn[TCP].sport, flags="SA", seq=isn, ack=syn[TCP].seq + 1,
        window=65535, options=[("MSS", 1400), ("WScale", 7)],
    )  # fmt: skip
    write_tun(tun.fd, synack)
    sock.setblocking(True)
    select.select([], [sock], [], 5)

    def send() -> None:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send)
    sender.start()
    got, stats = receive_stream(tun.fd, syn, isn)
    sender.join(5)
    stats["sha_ok"] = hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    stats["received"] = len(got)
    return stats


def wait_for(fd: int, match: Any) -> tuple[bytes, bytes]:
    end = time.monotonic() + 5
    while time.monotonic() < end:
        got = read_tun(fd, 1.0)
        if got is not None and match(IP(got[1])):
            return got
    raise TimeoutError("expected packet did not come")


def receive_stream(fd: int, syn: Any, isn: int) -> tuple[bytes, dict[str, Any]]:
    """Split every TUN read, check each segment, ACK cumulatively until FIN."""
    base = syn[TCP].seq + 1
    chunks: dict[int, bytes] = {}
    nxt, fin = base, False
    stats = {"reads": 0, "gso_reads": 0, "max_segments": 0, "all_verify": True}
    end = time.monotonic() + DEADLINE_S
    while not fin and time.monotonic() < end:
        got = read_tun(fd, 1.0)
        if got is None:
            continue
        segments = offload.split(*got)
        stats["reads"] += 1
        stats["gso_reads"] += offload.VnetHdr.unpack(got[0]).gso_type != 0
        stats["max_segments"] = max(stats["max_segments"], len(segments))
        for seg in segments:
            stats["all_verify"] &= verifies(seg)
            tcp = IP(seg)[TCP]
            chunks[tcp.seq] = bytes(tcp.payload)
            fin |= bool(tcp.flags & 0x01)
        while nxt in chunks and chunks[nxt]:
            nxt += len(chunks[nxt])
        ack = IP(src=PEER, dst=LOCAL) / TCP(
            sport=5001, dport=syn[TCP].sport, flags="A", seq=isn + 1,
            ack=nxt + (1 if fin else 0), window=65535,
        )  # fmt: skip
        write_tun(fd, ack)
    ordered = b"".join(chunks[s] for s in sorted(chunks) if s >= base)
    return ordered, stats


def case_tcp_in() -> dict[str, Any]:
    """We send 280 KB as coalesced superpackets; a kernel socket reads it."""
    tun, _ = up_tun()
    listener = socket.socket()
    listener.bind((LOCAL, 5002))
    listener.listen(1)
    syn = IP(src=PEER, dst=LOCAL) / TCP(
        sport=40001, dport=5002, flags="S", seq=1000, window=65535,
        options=[("MSS", 1400), ("WScale", 7)],
    )  # fmt: skip
    write_tun(tun.fd, syn)
    synack = IP(wait_for(tun.fd, lambda p: TCP in p and p[TCP].flags == "SA")[1])
    server_seq = synack[TCP].seq + 1

    def segment(seq: int, payload: bytes) -> bytes:
        return bytes(
            IP(src=PEER, dst=LOCAL, id=seq & 0xFFFF)
            / TCP(
                sport=40001,
                dport=5002,
                flags="A",
                seq=seq,
                ack=server_seq,
                window=65535,
            )  # fmt: skip
            / payload
        )

    write_tun(tun.fd, segment(1001, b""))
    listener.settimeout(5)
    conn, _ = listener.accept()
    conn.settimeout(5)
    data = os.urandom(40 * 1400 * 5)
    received = b""
    writes = segments = 0
    for chunk in range(5):
        part = data[chunk * 56_000 : (chunk + 1) * 56_000]
        packets = [
            segment(1001 + chunk * 56_000 + i, part[i : i + 1400])
            for i in range(0, len(part), 1400)
        ]
        segments += len(packets)
        for hdr, packet in coalesce.coalesce(packets):
            write_tun(tun.fd, packet, hdr)
            writes += 1
        while len(received) < (chunk + 1) * 56_000:
            received += conn.recv(1 << 20)
    return {
        "writes": writes,
        "segments": segments,
        "sha_ok": hashlib.sha256(received).digest() == hashlib.sha256(data).digest(),
    }


def case_udp_out() -> dict[str, Any]:
    """A UDP_SEGMENT send routed into the TUN device arrives as one superpacket."""
    tun, _ = up_tun()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    run = os.urandom(20 * 1200 + 300)
    sender.sendmsg([run], [udpoffload.segment_cmsg(1200)], 0, (PEER, 5003))
    got = read_tun(tun.fd, 5.0, proto=17)
    if got is None:
        return {"reads": 0}
    datagrams = offload.split(*got)
    return {
        "gso_type": offload.VnetHdr.unpack(got[0]).gso_type,
        "lengths": [len(d) - 28 for d in datagrams],
        "all_verify": all(verifies(d) for d in datagrams),
        "payload_ok": b"".join(d[28:] for d in datagrams) == run,
    }


def case_udp() -> dict[str, Any]:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    plain.bind(("127.0.0.1", 0))
    gro = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gro.bind(("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    result: dict[str, Any] = {
        "gso": udpoffload.udp_gso_supported(sender),
        "gro": udpoffload.enable_udp_gro(gro),
    }
    run = b"".join(bytes([i]) * 1200 for i in range(20)) + b"z" * 300
    sender.sendmsg([run], [udpoffload.segment_cmsg(1200)], 0, plain.getsockname())
    result["plain"] = drain(plain)
    sender.sendmsg([run], [udpoffload.segment_cmsg(1200)], 0, gro.getsockname())
    result["coalesced"] = drain(gro)
    result["fixed"] = udpoffload.set_udp_segment(sender, 1000)
    sender.sendto(bytes(2500), plain.getsockname())
    result["fixed_plain"] = drain(plain)
    return result


def drain(sock: socket.socket) -> list[list[int]]:
    """Per recvmsg: the lengths of the datagrams it held (cut at the GRO size)."""
    sock.settimeout(0.5)
    calls = []
    try:
        while True:
            buf, anc, _, _ = sock.recvmsg(65_535, udpoffload.GRO_CMSG_SPACE)
            size = udpoffload.gro_segment_size(anc)
            calls.append([len(d) for d in udpoffload.segments(buf, size)])
    except TimeoutError:
        pass
    return calls


CASES = {
    "offloads": case_offloads,
    "tcp-out": case_tcp_out,
    "tcp-in": case_tcp_in,
    "udp-out": case_udp_out,
    "udp": case_udp,
}

if __name__ == "__main__":
    print(json.dumps(CASES[sys.argv[1]]()))
