"""What an operator sees of an agent's life, with real agents in namespaces.

- `up` with a control directory it cannot create says so in one sentence (the
  directory and the fix), exits 2 and leaves no interface or reserved port.
- A freshly started idle agent counts no drops: the kernel sends nothing of its
  own into the TUN (no IPv6 link-local, so no router solicitations or MLD).
- A scheduled port that another process holds is one WARNING naming the port;
  the agent keeps running and carries traffic after that epoch.
- Logs, even at debug level, never hold a private key, a psk or an inner payload.
- A lab leaves no namespace, process, control socket or file behind, whether
  its block ends well or fails.

The lab (tests/netns.py) draws the topology.
"""

from __future__ import annotations

import base64
import signal
import subprocess
import time

import pytest

from tests.netns import CONTROL_DIR, HOPR, Host, Lab, require_netns
from tests.netns_results import ping_result
from tunnel import keys

pytestmark = pytest.mark.netns

IDLE_S = 5.0  # the kernel solicits routers within a second or two of link up
MARKER = b"SecretInnerBytes"  # 16 bytes: the longest pattern ping -p takes


def test_an_uncreatable_control_directory_is_one_sentence_leaving_nothing() -> None:
    require_netns()
    with Lab(2) as lab:
        a = lab["a"]
        done = lab.run(
            a, "env", "HOPR_TUNNEL_RUN_DIR=/proc/nope", *HOPR, "up", str(a.config),
            check=False,
        )  # fmt: skip
        message = done.stderr.strip()
        assert done.returncode == 2, done
        assert "Traceback" not in done.stderr and len(message.splitlines()) == 1
        assert "/proc/nope" in message and "HOPR_TUNNEL_RUN_DIR" in message, message
        link = lab.run(a, "ip", "link", "show", "dev", a.ifname, check=False)
        assert link.returncode != 0, "the TUN device was left behind"
        reserved = lab.run(a, "sysctl", "-n", "net.ipv4.ip_local_reserved_ports")
        assert reserved.stdout.strip() == "", "reserved ports were left behind"


def test_a_freshly_started_idle_agent_counts_no_drops() -> None:
    require_netns()
    with Lab(2) as lab:
        lab.start_all()
        time.sleep(IDLE_S)
        for host in lab.hosts:
            (status,) = lab.show(host)["interfaces"]
            assert status["drops"] == {}, (host.name, status["drops"])
            (peer,) = status["peers"]
            # The first hello of the agent started first may meet a peer not up
            # yet: an ICMP port unreachable, counted as recv_econnrefused. That
            # is the peer's start, not traffic of this host's own.
            peer["drops"].pop("recv_econnrefused", None)
            assert peer["drops"] == {}, (host.name, peer["drops"])


# -- A port something else holds ------------------------------------------------------


def epoch_ports(lab: Lab, host: Host, epoch: int) -> int:
    """host's own port towards its only peer in `epoch`, per `hopr-tunnel check`."""
    pair = lab.check(host)["peers"][0]
    middle_ms = epoch * pair["hop_ms"] + pair["phase_ms"] + pair["hop_ms"] // 2
    (found,) = lab.check(host, middle_ms)["peers"]
    assert found["epoch"] == epoch
    return int(found["ports"]["ours"])


def a_future_port(lab: Lab, host: Host) -> tuple[int, int]:
    """(epoch, port): an epoch at least 4 hops ahead whose port no open epoch has."""
    now = lab.check(host)["peers"][0]["epoch"]
    open_now = {epoch_ports(lab, host, n) for n in range(now - 1, now + 3)}
    for epoch in range(now + 4, now + 20):
        port = epoch_ports(lab, host, epoch)
        if port not in open_now:
            return epoch, port
    raise AssertionError("every future epoch draws a port open now")


def test_a_scheduled_port_another_process_holds_is_a_warning_naming_it() -> None:
    require_netns()
    with Lab(2, hop_interval="1s") as lab:
        a, b = lab.hosts
        lab.start_all()
        lab.wait_reachable(a, b.tunnel_v4)
        epoch, port = a_future_port(lab, a)
        lab.serve(a, "udp-sink", bind=a.underlay_v4, port=port, marker_hex="00")
        while lab.check(a)["peers"][0]["epoch"] <= epoch + 1:
            time.sleep(0.2)
        assert a.proc is not None and a.proc.poll() is None, "the agent exited"
        warnings = [
            line
            for line in lab.log_text(a).splitlines()
            if " WARNING " in line and f"port {port}" in line
        ]
        assert warnings, lab.log_text(a)[-3000:]
        assert "Traceback" not in lab.log_text(a)
        lab.wait_reachable(a, b.tunnel_v4, timeout_s=3)


# -- Logs ---------------------------------------------------------------------------


def secret_forms(secret: bytes) -> list[str]:
    return [keys.encode_key(secret), secret.hex(), base64.b64encode(secret).decode()]


def test_logs_never_hold_a_key_a_psk_or_an_inner_payload(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_netns()
    monkeypatch.setattr("tests.netns.AGENT_LOG_LEVEL", "debug")
    with Lab(2, hop_interval="1s", psk=True) as lab:
        a, b = lab.hosts
        lab.start_all()
        lab.wait_reachable(a, b.tunnel_v4)
        pings = [
            lab.ping_start(a, b.tunnel_v4, 20, 0.05, MARKER.hex()),
            lab.ping_start(b, a.tunnel_v6, 20, 0.05, MARKER.hex()),
            # No peer has this address: a no_route drop, logged at debug.
            lab.ping_start(a, "100.64.0.77", 5, 0.05, MARKER.hex()),
        ]
        assert [ping_result(p, 30).received for p in pings] == [20, 20, 0]
        lab.send_signal(a, signal.SIGHUP)
        lab.wait_reachable(a, b.tunnel_v6)
        for host in lab.hosts:
            assert lab.stop(host) == 0
        logs = {h.name: lab.log_text(h) for h in lab.hosts}
    assert " DEBUG " in logs["a"], "a logged no debug line:\n" + logs["a"]
    secrets_ = [s for h in lab.hosts for s in secret_forms(h.private_key)]
    secrets_ += [s for psk in lab.psks.values() for s in secret_forms(psk)]
    payloads = [MARKER.decode(), MARKER.hex(), MARKER[:8].hex()]
    for name, text in logs.items():
        assert not [s for s in secrets_ if s in text], f"a key in {name}'s log"
        assert not [p for p in payloads if p in text], f"a payload in {name}'s log"


# -- The lab itself ------------------------------------------------------------------


class Failed(Exception):
    """What a test block raises to stand for a failed assertion."""


def lab_that_ran(ending: str) -> Lab:
    """A lab whose agents came up and carried a ping, then closed (or failed)."""
    try:
        with Lab(2) as lab:
            lab.start_all()
            lab.wait_reachable(lab["a"], lab["b"].tunnel_v4)
            if ending == "failed":
                raise Failed
    except Failed:
        pass
    return lab


@pytest.mark.parametrize("ending", ["ok", "failed"])
def test_a_lab_leaves_no_namespace_process_or_file_behind(ending: str) -> None:
    require_netns()
    lab = lab_that_ran(ending)
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    assert lab.prefix not in namespaces.stdout
    assert not lab.tmp.exists()
    assert all(h.proc is not None and h.proc.poll() is not None for h in lab.hosts)
    assert not [p for h in lab.hosts for p in CONTROL_DIR.glob(f"{h.ifname}.*")]
