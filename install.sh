#!/bin/bash
# Install hopr-tunnel from this checkout on Debian 12+ or Ubuntu 24.04+.
#
#   sudo ./install.sh              install, or update to this checkout
#   sudo ./install.sh --no-native  the same, without a C compiler (slower)
#   sudo ./install.sh --uninstall  remove it, keeping /etc/hopr-tunnel
#
# What it does, each step safe to repeat:
#   - apt packages it needs (python3 >= 3.11, venv, iproute2, procps, and
#     iputils-ping for `hopr-tunnel demo`), only those missing, with
#     --no-install-recommends; and, unless --no-native, gcc, libc6-dev,
#     python3-dev and libssl-dev to build the data path's native part
#     (tunnel/_fastpath.c, about 1.5x the throughput; without it the agent
#     runs the same protocol in Python);
#   - a virtual environment in /opt/hopr-tunnel holding this checkout, and
#     /usr/local/bin/hopr-tunnel pointing into it;
#   - the system user hopr-tunnel that the service runs as, owner of
#     /etc/hopr-tunnel (mode 0700, files 0600);
#   - the unit /etc/systemd/system/hopr-tunnel@.service, and a daemon-reload
#     when systemd runs this machine.
# pip honours PIP_INDEX_URL, PIP_FIND_LINKS and PIP_NO_INDEX from the
# environment, for a machine that installs from a local wheel directory.
set -euo pipefail

readonly PREFIX=/opt/hopr-tunnel
readonly LINK=/usr/local/bin/hopr-tunnel
readonly CONF_DIR=/etc/hopr-tunnel
readonly UNIT=/etc/systemd/system/hopr-tunnel@.service
readonly SERVICE_USER=hopr-tunnel
readonly APT_PACKAGES=(python3 python3-venv iproute2 procps iputils-ping)
readonly BUILD_PACKAGES=(gcc libc6-dev python3-dev libssl-dev)
SOURCE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SOURCE
NATIVE=1

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
usage_error() { printf 'install.sh: %s\n' "$*" >&2; exit 2; }

systemd_running() {
    # The check sd_booted(3) makes: systemd is PID 1 on this machine.
    [[ -d /run/systemd/system ]]
}

# Installs the packages named (only those missing); fails as apt-get does.
install_apt_packages() {
    local missing=() package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null |
            grep -q 'install ok installed' || missing+=("$package")
    done
    if ((${#missing[@]} == 0)); then
        return
    fi
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

install_build_packages() {
    # Wanted, not needed: without them the agent runs in Python.
    install_apt_packages "${BUILD_PACKAGES[@]}" ||
        say "could not install ${BUILD_PACKAGES[*]}; going on without the native part"
}

check_python() {
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "hopr-tunnel needs Python 3.11 or newer; this machine has" \
            "$(python3 -V 2>&1). Use Debian 12 or Ubuntu 24.04 or later."
}

install_venv() {
    # A venv made by another Python (after a release upgrade) cannot be
    # updated in place: make it anew.
    if [[ -x "$PREFIX/bin/python" ]] && ! "$PREFIX/bin/python" -c '' 2>/dev/null; then
        rm -rf "$PREFIX"
    fi
    if [[ ! -x "$PREFIX/bin/python" ]]; then
        say "creating the virtual environment $PREFIX"
        python3 -m venv "$PREFIX"
    fi
    # pip builds in the source tree; build in a copy so a read-only or shared
    # checkout stays untouched.
    local build
    build=$(mktemp -d)
    tar -C "$SOURCE" --exclude=.git --exclude='*.egg-info' --exclude=build \
        --exclude=__pycache__ --exclude='.*_cache' --exclude='*.so' -cf - . |
        tar -C "$build" -xf -
    say "installing hopr-tunnel from $SOURCE"
    "$PREFIX/bin/pip" install -q --disable-pip-version-check --upgrade "$build"
    rm -rf "$build"
    ln -sfn "$PREFIX/bin/hopr-tunnel" "$LINK"
    if "$PREFIX/bin/python" -c 'import tunnel._fastpath' 2>/dev/null; then
        say "data path: native part built"
    else
        say "data path: native part not built (no compiler or OpenSSL headers);" \
            "the agent runs in Python, about 1.5x slower"
    fi
}

create_user() {
    if ! getent passwd "$SERVICE_USER" >/dev/null; then
        say "creating the system user $SERVICE_USER"
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$SERVICE_USER"
    fi
}

secure_config_dir() {
    # The agent reads its config and keys as $SERVICE_USER, and refuses keys
    # that others can read: hand the directory to it, private.
    install -d -m 0700 -o "$SERVICE_USER" -g "$SERVICE_USER" "$CONF_DIR"
    chown -R "$SERVICE_USER:$SERVICE_USER" "$CONF_DIR"
    chmod -R go-rwx "$CONF_DIR"
}

install_unit() {
    install -m 0644 "$SOURCE/systemd/hopr-tunnel@.service" "$UNIT"
    if systemd_running; then
        systemctl daemon-reload
    fi
}

do_install() {
    install_apt_packages "${APT_PACKAGES[@]}"
    if ((NATIVE)); then
        install_build_packages
    fi
    check_python
    install_venv
    create_user
    secure_config_dir
    install_unit
    say "done. Put a config in $CONF_DIR/NAME.toml (see README), then:"
    say "  systemctl enable --now hopr-tunnel@NAME"
    say "Running tunnels keep the old code until: systemctl restart hopr-tunnel@NAME"
}

stop_instances() {
    local instances
    instances=$(systemctl list-units --all --plain --no-legend 'hopr-tunnel@*' |
        awk '{print $1}')
    if [[ -n "$instances" ]]; then
        # Word splitting wanted: one unit name per word.
        # shellcheck disable=SC2086
        systemctl disable --now $instances
    fi
}

do_uninstall() {
    if systemd_running; then
        stop_instances
    fi
    # Links left by `systemctl enable` while systemd was not running.
    rm -f /etc/systemd/system/*.wants/hopr-tunnel@*.service
    rm -f "$UNIT"
    if systemd_running; then
        systemctl daemon-reload
    fi
    if [[ -L "$LINK" && "$(readlink "$LINK")" == "$PREFIX/"* ]]; then
        rm -f "$LINK"
    fi
    rm -rf "$PREFIX"
    say "removed hopr-tunnel; kept $CONF_DIR (configs and keys) and the user" \
        "$SERVICE_USER that owns it"
}

main() {
    case "${1:-}" in
    "" | --uninstall) ;;
    --no-native) NATIVE=0 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) usage_error "unknown option '$1'; use --no-native, --uninstall, --help or no option." ;;
    esac
    ((EUID == 0)) || die "run as root: sudo $0 $*"
    command -v apt-get >/dev/null || die "this script supports Debian and Ubuntu only."
    if [[ "${1:-}" == --uninstall ]]; then
        do_uninstall
    else
        do_install
    fi
}

main "$@"
