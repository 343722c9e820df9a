"""What `hopr-tunnel show` reports, as data (the --json form) and as text.

The agent builds `interface_status` on request from its config, the core's peer
state and the I/O shell's counters; the CLI prints it. Times are milliseconds:
ages as "..._ago_ms" (null when it never happened), instants as Unix ms. No key
material is ever in it, only public keys.

Schema of one interface (`show --json` prints {"interfaces": [these]}):

    name, pid, config, public_key, listen, port_range [min, max], hop_ms,
    cipher, mtu, addresses [..], unix_ms (when the status was taken),
    started_unix_ms, netns (inode of the agent's network namespace),
    drops {reason: count} (packets from the TUN with no peer, TUN errors),
    peers: [{
        name, public_key, endpoint, allowed_ips [..], port_range, side "lo"|"hi",
        epoch, ports {ours, theirs}, next_hop_ms,
        sockets [{ports [ours, theirs], epochs [..]}],
        session (bool), session_age_ms,
        last_hello_ago_ms, last_datagram_ago_ms,
        tx_bytes, rx_bytes, tx_datagrams, rx_datagrams,
        hellos_sent, hellos_accepted,
        drops {reason: count}, clock_offset_ms, refused_clock_offset_ms,
        hint (a sentence, or null)
    }]
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from tunnel import keys
from tunnel.constants import CIPHER_IDS

from .control import netns_id

if TYPE_CHECKING:
    from tunnel.dataplane import DataPlane
    from tunnel.peer import Peer

    from .config import Config, PeerConfig

MS = 1_000_000
CIPHER_NAMES = {v: k for k, v in CIPHER_IDS.items()}
NO_HELLO_HINT = (
    "no hello accepted from this peer: check its public key, psk, hop_interval, "
    "cipher and clock"
)
HINT_AFTER_HELLOS = 3  # the first hellos may simply race the peer's start


def interface_status(
    cfg: Config, plane: DataPlane, started_ns: int, now_ns: int
) -> dict[str, Any]:
    i = cfg.interface
    drops = dict(plane.tun_errors.counts)
    if plane.node.stats_no_route:
        drops["no_route"] = plane.node.stats_no_route
    if plane.node.stats_malformed:
        drops["malformed"] = plane.node.stats_malformed
    return {
        "name": i.name,
        "pid": os.getpid(),
        "config": str(cfg.path),
        "public_key": keys.encode_key(i.public_key),
        "listen": str(i.listen),
        "port_range": list(i.port_range),
        "hop_ms": i.hop_ms,
        "cipher": CIPHER_NAMES.get(i.cipher_id, str(i.cipher_id)),
        "mtu": i.mtu,
        "data_path": plane.offloads.describe(),
        "native_rx_datagrams": plane.native_rx,
        "addresses": [str(a) for a in i.addresses],
        "unix_ms": now_ns // MS,
        "started_unix_ms": started_ns // MS,
        "netns": netns_id(),
        "drops": drops,
        "peers": [
            peer_status(p, plane.node.peers[p.name], plane, now_ns)
            for p in cfg.peers
            if p.name in plane.node.peers
        ],
    }


def peer_status(
    pc: PeerConfig, peer: Peer, plane: DataPlane, now_ns: int
) -> dict[str, Any]:
    now_ms = now_ns // MS
    schedule, stats = peer.schedule, peer.stats
    epoch = schedule.epoch_at(now_ms)
    ours, theirs = schedule.ports(epoch)
    hops = plane.sockets[pc.name].by_ports.values()
    drops = dict(stats.drops)
    for reason, count in plane.peer_errors[pc.name].counts.items():
        drops[reason] = drops.get(reason, 0) + count
    session_age = peer.session_age_ns(now_ns)
    return {
        "name": pc.name,
        "public_key": keys.encode_key(pc.public_key),
        "endpoint": str(pc.endpoint),
        "allowed_ips": [str(n) for n in pc.allowed_ips],
        "port_range": list(pc.port_range),
        "side": "lo" if schedule.is_lo else "hi",
        "epoch": epoch,
        "ports": {"ours": ours, "theirs": theirs},
        "next_hop_ms": schedule.epoch_start_ms(epoch + 1) - now_ms,
        "sockets": sorted(
            ({"ports": list(h.ports), "epochs": list(h.epochs)} for h in hops),
            key=lambda s: s["epochs"],
        ),
        "session": peer.sealing is not None,
        "session_age_ms": None if session_age is None else session_age // MS,
        "last_hello_ago_ms": _ago(stats.last_hello_ns, now_ns),
        "last_datagram_ago_ms": _ago(
            _latest(stats.last_hello_ns, stats.last_rx_ns), now_ns
        ),
        "tx_bytes": stats.tx_bytes,
        "rx_bytes": stats.rx_bytes,
        "tx_datagrams": stats.tx_datagrams,
        "rx_datagrams": stats.rx_datagrams,
        "hellos_sent": stats.hellos_sent,
        "hellos_accepted": stats.hellos_accepted,
        "drops": drops,
        "clock_offset_ms": _ms(stats.clock_offset_ns),
        "refused_clock_offset_ms": _ms(stats.rejected_offset_ns),
        "hint": hint(stats.hellos_sent, stats.hellos_accepted),
    }


def hint(hellos_sent: int, hellos_accepted: int) -> str | None:
    if hellos_accepted == 0 and hellos_sent >= HINT_AFTER_HELLOS:
        return NO_HELLO_HINT
    return None


def _latest(*instants_ns: int | None) -> int | None:
    known = [t for t in instants_ns if t is not None]
    return max(known) if known else None


def _ago(instant_ns: int | None, now_ns: int) -> int | None:
    return None if instant_ns is None else (now_ns - instant_ns) // MS


def _ms(duration_ns: int | None) -> float | None:
    return None if duration_ns is None else round(duration_ns / MS, 1)


# -- text ------------------------------------------------------------------------------


def render(status: dict[str, Any]) -> list[str]:
    """`wg show`-like lines for one interface."""
    lines = [
        f"interface: {status['name']}",
        f"  public key: {status['public_key']}",
        f"  listening: {status['listen']} ports {_range(status['port_range'])}",
        f"  hop: every {ms_text(status['hop_ms'])}, {status['cipher']}, "
        f"mtu {status['mtu']}, pid {status['pid']}",
    ]
    if status.get("data_path"):  # agents before 2026-12 did not say
        lines.append(f"  data path: {status['data_path']}")
    if status.get("native_rx_datagrams"):
        lines.append(
            f"  received in native code: {status['native_rx_datagrams']} datagrams"
        )
    if status["drops"]:
        lines.append(f"  drops: {_counts(status['drops'])}")
    for peer in status["peers"]:
        lines += [""] + _peer_lines(peer)
    return lines


def _peer_lines(p: dict[str, Any]) -> list[str]:
    ports = p["ports"]
    lines = [
        f"peer: {p['name']} ({p['public_key']})",
        f"  endpoint: {p['endpoint']}",
        f"  allowed ips: {', '.join(p['allowed_ips'])}",
        f"  epoch: {p['epoch']}, ports {ports['ours']} -> {ports['theirs']}, "
        f"next hop in {ms_text(p['next_hop_ms'])}",
        f"  session: {_session(p)}",
        f"  latest hello: {ago_text(p['last_hello_ago_ms'])}",
        f"  latest datagram: {ago_text(p['last_datagram_ago_ms'])}",
        f"  transfer: {bytes_text(p['rx_bytes'])} received "
        f"({p['rx_datagrams']} datagrams), {bytes_text(p['tx_bytes'])} sent "
        f"({p['tx_datagrams']} datagrams)",
        f"  hellos: {p['hellos_sent']} sent, {p['hellos_accepted']} accepted",
    ]
    if p["clock_offset_ms"] is not None:
        lines.append(f"  clock offset: {p['clock_offset_ms']:+.1f} ms")
    if p["refused_clock_offset_ms"] is not None:
        lines.append(
            f"  hello refused for its clock: {p['refused_clock_offset_ms']:+.1f} ms"
        )
    if p["drops"]:
        lines.append(f"  drops: {_counts(p['drops'])}")
    if p["hint"]:
        lines.append(f"  hint: {p['hint']}")
    return lines


def _session(p: dict[str, Any]) -> str:
    if not p["session"]:
        return "none"
    return f"for {ms_text(p['session_age_ms'])}"


def _range(port_range: list[int]) -> str:
    return f"{port_range[0]}-{port_range[1]}"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items()))


def ms_text(ms: int | None) -> str:
    """A duration in the largest unit that keeps it readable: 1.5s, 3m 20s."""
    if ms is None:
        return "never"
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s".replace(".0s", "s")
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m"


def ago_text(ms: int | None) -> str:
    return "never" if ms is None else f"{ms_text(ms)} ago"


def bytes_text(n: int) -> str:
    size, unit = float(n), "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{n} B" if unit == "B" else f"{size:.2f} {unit}"
