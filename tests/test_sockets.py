"""Hop sockets of one peer (tunnel/sockets.py), on real sockets in a private netns.

Time is passed in, so each test puts the clock where it wants it in the window;
nothing waits.
"""

from __future__ import annotations

import ipaddress
import socket
import time

import pytest

from tests.private_netns import private_netns  # noqa: F401  (fixture)
from tunnel import keys, sockets
from tunnel.constants import CIPHER_AES_256_GCM, SOCKET_RETRY_MS
from tunnel.schedule import PairSchedule
from tunnel.sockets import Address, HopSocket, PeerSockets

LOCAL = ipaddress.ip_address("127.0.0.1")
HOP_MS = 1000
EPOCH = 1_796_300_000  # some epoch of 2026, in hops of one second


def schedule(
    own_ports: tuple[int, int] = (20000, 29999),
    peer_ports: tuple[int, int] = (20000, 29999),
) -> PairSchedule:
    return PairSchedule(
        keys.generate_private(),
        keys.public_from_private(keys.generate_private()),
        None,
        HOP_MS,
        CIPHER_AES_256_GCM,
        own_ports,
        peer_ports,
    )


class Recorder:
    def __init__(self) -> None:
        self.opened: list[HopSocket] = []
        self.closed: list[HopSocket] = []
        self.open_errors: list[tuple[int, str]] = []  # (our port, step)

    def sockets(self, sched: PairSchedule, endpoint: Address = LOCAL) -> PeerSockets:
        return PeerSockets(
            sched,
            LOCAL,
            endpoint,
            self.opened.append,
            self.closed.append,
            lambda ports, step, exc: self.open_errors.append((ports[0], step)),
        )


def mid(sched: PairSchedule, epoch: int) -> int:
    return sched.epoch_start_ms(epoch) + HOP_MS // 2


pytestmark = pytest.mark.usefixtures("private_netns")


def test_window_has_sockets_for_previous_current_and_next_epoch() -> None:
    sched = schedule()
    peer_sockets = Recorder().sockets(sched)
    peer_sockets.update(mid(sched, EPOCH))
    assert sorted(peer_sockets.by_epoch) == [EPOCH - 1, EPOCH, EPOCH + 1]
    peer_sockets.close()


def test_each_socket_is_bound_and_connected_to_its_epochs_ports() -> None:
    sched = schedule()
    peer_sockets = Recorder().sockets(sched)
    peer_sockets.update(mid(sched, EPOCH))
    seen = {
        e: (h.sock.getsockname()[1], h.sock.getpeername()[1])
        for e, h in peer_sockets.by_epoch.items()
    }
    assert seen == {e: sched.ports(e) for e in seen}
    peer_sockets.close()


def test_next_epochs_socket_opens_just_before_the_hop() -> None:
    sched = schedule()
    peer_sockets = Recorder().sockets(sched)
    peer_sockets.update(sched.epoch_start_ms(EPOCH + 1) - 1)
    assert sorted(peer_sockets.by_epoch) == [EPOCH - 1, EPOCH, EPOCH + 1, EPOCH + 2]
    peer_sockets.close()


def test_oldest_socket_closes_at_the_hop() -> None:
    sched = schedule()
    recorder = Recorder()
    peer_sockets = recorder.sockets(sched)
    peer_sockets.update(mid(sched, EPOCH))
    oldest = peer_sockets.by_epoch[EPOCH - 1]
    peer_sockets.update(sched.epoch_start_ms(EPOCH + 1))
    assert EPOCH - 1 not in peer_sockets.by_epoch
    assert oldest in recorder.closed and oldest.sock.fileno() == -1
    peer_sockets.close()


def test_a_datagram_to_a_closed_port_is_refused() -> None:
    sched = schedule()
    peer_sockets = Recorder().sockets(sched)
    peer_sockets.update(mid(sched, EPOCH))
    our_port, peer_port = sched.ports(EPOCH - 1)
    peer_sockets.update(sched.epoch_start_ms(EPOCH + 1))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.bind((str(LOCAL), peer_port))
        sender.connect((str(LOCAL), our_port))
        sender.send(b"late")
        sender.settimeout(1)
        with pytest.raises(ConnectionRefusedError):
            sender.recv(100)
    peer_sockets.close()


def test_epochs_drawing_the_same_ports_share_one_socket() -> None:
    sched = schedule(own_ports=(20000, 20000), peer_ports=(20001, 20001))
    peer_sockets = Recorder().sockets(sched)
    peer_sockets.update(mid(sched, EPOCH))
    (hop,) = peer_sockets.by_ports.values()
    assert hop.epochs == (EPOCH - 1, EPOCH, EPOCH + 1)
    peer_sockets.close()


def test_a_port_another_socket_holds_costs_only_the_epochs_drawing_it() -> None:
    sched = schedule()
    recorder = Recorder()
    peer_sockets = recorder.sockets(sched)
    taken = sched.ports(EPOCH)[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind((str(LOCAL), taken))
        peer_sockets.update(mid(sched, EPOCH))
    window = range(EPOCH - 1, EPOCH + 2)
    missing = {e for e in window if e not in peer_sockets.by_epoch}
    assert missing == {e for e in window if sched.ports(e)[0] == taken}
    assert recorder.open_errors == [(taken, "bind")]
    peer_sockets.close()


def test_a_taken_port_is_tried_again_once_freed() -> None:
    sched = schedule()
    peer_sockets = Recorder().sockets(sched)
    now_ms = sched.epoch_start_ms(EPOCH)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind((str(LOCAL), sched.ports(EPOCH)[0]))
        peer_sockets.update(now_ms)
    peer_sockets.update(now_ms + SOCKET_RETRY_MS)
    assert EPOCH in peer_sockets.by_epoch
    peer_sockets.close()


def test_an_endpoint_without_route_is_reported_per_socket_not_raised() -> None:
    sched = schedule()
    recorder = Recorder()
    peer_sockets = recorder.sockets(sched, ipaddress.ip_address("198.18.0.9"))
    peer_sockets.update(mid(sched, EPOCH))
    assert peer_sockets.by_epoch == {}
    assert {step for _, step in recorder.open_errors} == {"connect"}


def _refused_then_reopened() -> tuple[socket.socket, socket.socket]:
    """(tx, rx): tx holds a pending ICMP port unreachable; rx now owns the port."""
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(("127.0.0.1", port))
    tx.send(b"into a closed port")  # the kernel queues ECONNREFUSED on tx
    time.sleep(0.05)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", port))
    rx.settimeout(2)
    return tx, rx


def test_the_kernel_reports_an_earlier_icmp_error_instead_of_sending() -> None:
    tx, rx = _refused_then_reopened()
    with tx, rx, pytest.raises(ConnectionRefusedError):
        tx.send(b"lost")


def test_a_send_that_reports_an_earlier_icmp_error_is_sent_again() -> None:
    """A peer restarting closes its port for a moment: the ICMP error for a
    datagram sent then must not cost the next datagram (often a hello)."""
    tx, rx = _refused_then_reopened()
    with tx, rx:
        sockets.send(tx, [b"after the restart"])
        assert rx.recv(100) == b"after the restart"
