"""The hopr-tunnel command line.

`main` is the click group behind the `hopr-tunnel` console script. Commands
register on it with `@main.command()` in this file: the key tools and `check`
here, the tunnel's lifecycle (`up`, `down`, `show`) in the section at the end.

Keys are standard base64 of 32 bytes, the format `wg genkey`, `wg pubkey` and
`wg genpsk` use, so keys move between the two tools unchanged.

User errors (a ConfigError, a UserError, a click usage error) print one line to
stderr and exit with status 2; no traceback. A traceback means a bug of ours.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from tunnel import keys
from tunnel.constants import KEY_LEN

from .config import Config, ConfigError, PeerConfig, load
from .constants import EXIT_USER_ERROR, SECRET_MODE_MASK

PROG = "hopr-tunnel"

EPILOG = """\b
Example, on each of two hosts:
  umask 077; hopr-tunnel genkey > /etc/hopr-tunnel/host.key
  hopr-tunnel pubkey < /etc/hopr-tunnel/host.key   # give this to the peer
  hopr-tunnel check /etc/hopr-tunnel/peers.toml    # compare ports with the peer
"""


class UserError(click.ClickException):
    """A mistake of the user's, reported in one sentence with exit status 2."""

    exit_code = EXIT_USER_ERROR


class _Group(click.Group):
    """A group whose user errors are one line on stderr, never a traceback.

    click's own handling prints usage and a hint on three lines and knows
    nothing of ConfigError, so the group runs its commands in click's
    non-standalone mode and reports errors itself. A command's integer return
    value, like an explicit ctx.exit(n), becomes the exit status.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            status = super().main(args, prog_name, complete_var, False, **extra)
        except ConfigError as exc:
            _fail(str(exc), EXIT_USER_ERROR)
        except click.ClickException as exc:
            _fail(_one_line(exc), exc.exit_code)
        except click.Abort:
            _fail("aborted.", 1)
        sys.exit(status if isinstance(status, int) else 0)


def _one_line(exc: click.ClickException) -> str:
    message = " ".join(exc.format_message().split())
    if isinstance(exc, click.UsageError) and exc.ctx is not None:
        message = f"{message.rstrip('.')} (see '{exc.ctx.command_path} --help')."
    return message


def _fail(message: str, status: int) -> NoReturn:
    click.echo(f"{PROG}: {message}", err=True)
    sys.exit(status)


@click.group(
    cls=_Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(package_name="hopr-tunnel", prog_name=PROG)
def main() -> None:
    """A tunnel whose ports and keys hop every interval.

    Each pair of hosts derives its UDP ports and keys from their static keys
    and the clock, so nothing on the wire stays the same for long.
    """


# -- Keys ---------------------------------------------------------------------------


@main.command()
def genkey() -> None:
    """Print a new private key (base64, as `wg genkey` does).

    Write it to a file only you can read: `umask 077` before redirecting.
    """
    _print_secret(keys.encode_key(keys.generate_private()))


@main.command()
def genpsk() -> None:
    """Print a new pre-shared key: 32 random bytes, base64.

    Both hosts of a pair put the same psk in their peer entries.
    """
    _print_secret(keys.encode_key(os.urandom(KEY_LEN)))


@main.command()
def pubkey() -> None:
    """Read a private key on stdin and print its public key."""
    raw = click.get_binary_stream("stdin").read()
    try:
        private = keys.decode_key(raw.decode("ascii"))
    except (UnicodeDecodeError, keys.KeyError_) as exc:
        detail = exc if isinstance(exc, keys.KeyError_) else "not ASCII text"
        raise UserError(
            f"stdin does not hold a private key ({detail}); pipe in the "
            "output of `hopr-tunnel genkey`."
        ) from None
    click.echo(keys.encode_key(keys.public_from_private(private)))


def _print_secret(text: str) -> None:
    # The shell opens a redirect's file before this process starts, so no umask
    # set here could make it 0600 (and this process creates no file of its own):
    # the operator's `umask 077` does that. Like `wg genkey`, we warn when it
    # was forgotten, before the secret is written.
    mode = _stdout_file_mode()
    if mode is not None and mode & SECRET_MODE_MASK:
        click.echo(
            f"{PROG}: warning: writing a secret to a file that group or others "
            f"can access (mode {mode:04o}); run chmod 600 on it, or set umask 077 "
            "and run again.",
            err=True,
        )
    click.echo(text)


def _stdout_file_mode() -> int | None:
    """Permission bits of stdout when it is a regular file, else None."""
    try:
        info = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError):  # no real descriptor behind stdout
        return None
    return stat.S_IMODE(info.st_mode) if stat.S_ISREG(info.st_mode) else None


# -- check --------------------------------------------------------------------------


@main.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option(
    "--at",
    "at_ms",
    type=click.IntRange(min=0),
    metavar="UNIX_MS",
    help="Show the schedule at this instant (Unix time in ms) "
    "instead of now, so two operators can compare the same moment.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def check(config: Path, at_ms: int | None, as_json: bool) -> None:
    """Validate CONFIG and show each pair's schedule.

    For every peer: which side of the pair we are (lo or hi), the hop interval,
    the current epoch, the ports both sides use now (ours -> theirs), when the
    next hop comes, and the next epoch's ports. The peer's operator runs the
    same command; their "theirs" is our "ours".
    """
    cfg = load(config)
    now_ms = time.time_ns() // 1_000_000 if at_ms is None else at_ms
    report = schedule_report(cfg, now_ms)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo("\n".join(_report_lines(report)))


def schedule_report(cfg: Config, now_ms: int) -> dict[str, Any]:
    """What `check` shows, as plain data (the --json form). Holds no secret."""
    i = cfg.interface
    return {
        "config": str(cfg.path),
        "unix_ms": now_ms,
        "utc": utc_text(now_ms),
        "interface": {
            "name": i.name,
            "public_key": keys.encode_key(i.public_key),
            "listen": str(i.listen),
            "port_range": list(i.port_range),
        },
        "peers": [_pair_report(cfg, peer, now_ms) for peer in cfg.peers],
    }


def _pair_report(cfg: Config, peer: PeerConfig, now_ms: int) -> dict[str, Any]:
    schedule = cfg.schedule(peer)
    epoch = schedule.epoch_at(now_ms)
    next_ms = schedule.epoch_start_ms(epoch + 1)
    ours, theirs = schedule.ports(epoch)
    next_ours, next_theirs = schedule.ports(epoch + 1)
    return {
        "name": peer.name,
        "public_key": keys.encode_key(peer.public_key),
        "endpoint": str(peer.endpoint),
        "side": "lo" if schedule.is_lo else "hi",
        "hop_ms": schedule.hop_ms,
        "phase_ms": schedule.phase_ms,
        "epoch": epoch,
        "port_ranges": {
            "ours": list(cfg.interface.port_range),
            "theirs": list(peer.port_range),
        },
        "ports": {"ours": ours, "theirs": theirs},
        "next_hop": {
            "in_ms": next_ms - now_ms,
            "unix_ms": next_ms,
            "utc": utc_text(next_ms),
        },
        "next_epoch": {
            "epoch": epoch + 1,
            "ports": {"ours": next_ours, "theirs": next_theirs},
        },
    }


def _report_lines(report: dict[str, Any]) -> list[str]:
    i = report["interface"]
    lines = [
        f"{report['config']}: OK",
        f"interface {i['name']}  public key {i['public_key']}  listen {i['listen']}",
        f"at {report['utc']} (unix_ms {report['unix_ms']})",
    ]
    for pair in report["peers"]:
        lines += [""] + _pair_lines(pair)
    if not report["peers"]:
        lines.append("no peers")
    return lines


def _pair_lines(pair: dict[str, Any]) -> list[str]:
    now, nxt, hop = pair["ports"], pair["next_epoch"], pair["next_hop"]
    ranges = pair["port_ranges"]
    return [
        f"peer {pair['name']}  public key {pair['public_key']}  "
        f"endpoint {pair['endpoint']}",
        f"  our side    {pair['side']}",
        f"  hop         every {seconds_text(pair['hop_ms'])}, "
        f"phase {seconds_text(pair['phase_ms'])}",
        f"  port ranges {_range_text(ranges['ours'])} -> "
        f"{_range_text(ranges['theirs'])}",
        f"  epoch       {pair['epoch']}: ports {now['ours']} -> {now['theirs']} "
        "(ours -> theirs)",
        f"  next hop    in {seconds_text(hop['in_ms'])}, at {hop['utc']}",
        f"  next epoch  {nxt['epoch']}: ports {nxt['ports']['ours']} -> "
        f"{nxt['ports']['theirs']}",
    ]


def _range_text(port_range: list[int]) -> str:
    return f"{port_range[0]}-{port_range[1]}"


def seconds_text(ms: int) -> str:
    """Milliseconds as seconds, without trailing zeros: 10000 -> "10s"."""
    whole, frac = divmod(ms, 1000)
    return f"{whole}s" if frac == 0 else f"{whole}.{frac:03d}".rstrip("0") + "s"


def utc_text(unix_ms: int) -> str:
    """ISO 8601 UTC with milliseconds, like 2026-12-03T12:13:20.123Z."""
    moment = datetime.fromtimestamp(unix_ms // 1000, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{unix_ms % 1000:03d}Z"


# -- mesh ---------------------------------------------------------------------------


@main.command()
@click.argument("inventory", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write one subdirectory per host into.",
)
@click.option("--psk", is_flag=True, help="Add a pre-shared key to every pair.")
@click.option(
    "--name",
    default="mesh",
    show_default=True,
    help="Config name: NAME.toml, run by hopr-tunnel@NAME.",
)
def mesh(inventory: Path, out_dir: Path, psk: bool, name: str) -> None:
    """Make keys and one config per host for a full mesh from INVENTORY.

    INVENTORY is TOML: one [[host]] per host with name, underlay and address,
    and an optional [defaults] table of [interface] settings (hop_interval,
    cipher, port_range, mtu, name). Keys and psks already in --out are kept.
    Copy OUT/HOST/* into /etc/hopr-tunnel/ on each host.
    """
    from .mesh import generate, load_inventory

    inv = load_inventory(inventory)
    configs = generate(inv, out_dir, name, psk)
    for host, config in zip(inv.hosts, configs, strict=True):
        where = f"/etc/hopr-tunnel/ on {host.underlay}"
        click.echo(f"{host.name}: copy {config.parent}/* to {where}")
    click.echo(f"then on each host: systemctl enable --now hopr-tunnel@{name}")


# -- Tunnel lifecycle ---------------------------------------------------------------
# `up`, `down` and `show` register here with @main.command(); they raise
# ConfigError or UserError for the user's mistakes and let _Group report them.


@main.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option(
    "--detach", is_flag=True, help="Run in the background; return once it is up."
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Least severe log level written to stderr.",
)
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --detach: append logs here once up (default: discard them).",
)
def up(config: Path, detach: bool, log_level: str, log_file: Path | None) -> int:
    """Bring up the tunnel of CONFIG and run it until SIGTERM or `down`.

    In the foreground (as systemd runs it) unless --detach. SIGHUP re-reads
    CONFIG: peers added, removed or changed are applied, the others keep going.
    """
    from .daemon import StartError
    from .daemon import up as run_up

    try:
        return run_up(config, detach, log_level, log_file)
    except StartError as exc:
        raise UserError(str(exc)) from None


@main.command()
@click.argument("iface", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def show(iface: str | None, as_json: bool) -> None:
    """Show the running tunnel IFACE, or every one in this network namespace.

    Per peer, like `wg show`: endpoint, epoch and ports now, next hop, session,
    latest hello and datagram, transfer, drops by reason and clock offset.
    """
    from .show import render

    found = _statuses(iface)
    if as_json:
        click.echo(json.dumps({"interfaces": found}, indent=2))
    elif not found:
        click.echo("hopr-tunnel: no tunnel runs in this network namespace.", err=True)
    else:
        click.echo("\n\n".join("\n".join(render(s)) for s in found))


@main.command()
@click.argument("iface", required=False)
def metrics(iface: str | None) -> None:
    """Print the running tunnel's counters in Prometheus' text format.

    The same figures as `show`, for node_exporter's textfile collector or any
    scraper that runs a command: traffic, hellos and drops per peer, sessions,
    epochs and clock offsets. IFACE limits it to one tunnel.
    """
    from .metrics import render

    click.echo(render(_statuses(iface)), nl=False)


def _statuses(iface: str | None) -> list[dict[str, Any]]:
    """What the running agent (or each one here) reports, for show and metrics."""
    from .control import ControlError, statuses

    try:
        return statuses(iface)
    except ControlError as exc:
        raise UserError(f"{exc}.") from None


@main.command()
@click.argument("target", metavar="IFACE|CONFIG")
def down(target: str) -> None:
    """Stop the tunnel IFACE (or the one CONFIG names) and wait until it is gone."""
    from .control import ControlError, stop

    is_config = target.endswith(".toml") or os.sep in target
    ifname = load(target).interface.name if is_config else target
    try:
        stop(ifname)
    except ControlError as exc:
        raise UserError(f"{exc}.") from None


# -- demo ---------------------------------------------------------------------------


def _hop_ms(ctx: click.Context, param: click.Parameter, text: str) -> int:
    from .config_values import Table, hop_ms

    try:
        return hop_ms(Table({"hop_interval": text}, Path("--hop"), 0, "", {}), 0)
    except ConfigError:
        raise click.BadParameter(
            f'"{text}" is not a hop interval from 1s to 1h; write it like "2s"'
        ) from None


@main.command()
@click.option(
    "--hop",
    "hop_ms",
    default="2s",
    show_default=True,
    callback=_hop_ms,
    help='Hop interval of the demo mesh, like "1s" or "1500ms".',
)
@click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Stop after SECONDS instead of at Ctrl-C, for scripts and tests.",
)
def demo(hop_ms: int, duration_s: float | None) -> int:
    """Run three hosts in network namespaces on this machine (needs root).

    Builds the hosts and their underlay, writes their keys and configs, starts
    an agent on each, pings across every pair and shows each pair's epoch and
    ports changing at every hop, with pings and bytes, until Ctrl-C. Then it
    stops the agents and removes everything it made. When stdout is not a
    terminal, it prints one line per pair at each refresh instead.
    """
    from .demo import DemoError, run

    try:
        return run(hop_ms, duration_s, sys.stdout)
    except DemoError as exc:
        raise UserError(str(exc)) from None


if __name__ == "__main__":  # keep last: `python -m agent.cli` sees every command
    main()
