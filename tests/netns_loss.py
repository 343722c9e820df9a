"""Random loss on the lab's underlay: an nftables table on the hub's bridge.

    hub netns: table bridge hopr_loss
      chain forward (every frame the bridge passes from one host to another)
        iifname "pa" meta l4proto udp counter                          seen a->
        iifname "pa" meta l4proto udp numgen random mod 100 < N counter drop
        iifname "pb" ...                                               seen b->

Only UDP is dropped (the tunnel's datagrams, in both directions and for IPv4 and
IPv6 underlays alike); ARP, neighbour discovery and ICMP pass, so the loss is the
tunnel's alone. The table lives in the hub namespace the lab made and goes away
with it. Per host port, the counters tell how many datagrams the bridge saw and
how many it dropped, so a test can show its loss really happened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tests.netns import Lab

TABLE = "hopr_loss"


@dataclass(frozen=True)
class PortCounts:
    seen: int
    dropped: int


def add_loss(lab: Lab, percent: int) -> None:
    """Drop percent% of the UDP datagrams every host sends on the underlay."""
    rules = [f"add table bridge {TABLE}"]
    rules.append(
        f"add chain bridge {TABLE} forward "
        "{ type filter hook forward priority 0; policy accept; }"
    )
    for host in lab.hosts:
        match = f'iifname "p{host.name}" meta l4proto udp'
        rules.append(f"add rule bridge {TABLE} forward {match} counter")
        rules.append(
            f"add rule bridge {TABLE} forward {match} "
            f"numgen random mod 100 < {percent} counter drop"
        )
    path = lab.tmp / "loss.nft"
    path.write_text("\n".join(rules) + "\n")
    lab.run(lab.hub, "nft", "-f", str(path))


def loss_counts(lab: Lab) -> dict[str, PortCounts]:
    """Per host name: its UDP datagrams the bridge saw, and those it dropped."""
    done = lab.run(lab.hub, "nft", "-j", "list", "table", "bridge", TABLE)
    counts: dict[str, list[int]] = {}
    for item in json.loads(done.stdout)["nftables"]:
        rule = item.get("rule")
        if rule is None:
            continue
        port = next(
            e["match"]["right"]
            for e in rule["expr"]
            if "match" in e and e["match"]["left"] == {"meta": {"key": "iifname"}}
        )
        packets = next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
        counts.setdefault(port[1:], []).append(packets)
    return {name: PortCounts(*c) for name, c in counts.items()}
