#!/usr/bin/env bash
# bench/run.sh - hopr-tunnel beside veth, wireguard-go, OpenVPN and tinc in ONE run
# of the shared peers.sh, then issue 5's same-run ratios (bench/ratios.py).
#
# Usage: bench/run.sh [--duration S] [--rounds N] [--json FILE] [--hop-cost] [--python-too]
#                     [--name NAME] [-- PEERS_SH_ARGS...]
#
#   default     contenders veth, wireguard-go, openvpn, tinc and NAME (default
#               "hopr": hopr-tunnel, hop_interval 10s, aes-256-gcm, native part
#               on where it is built)
#   --hop-cost  contenders veth, NAME-hop1s and NAME-hop60s (hop_interval 1s and
#               60s) instead: the throughput a hop every second costs
#   --python-too  also NAME-python: the same agent with its native part off
#               (HOPR_TUNNEL_NATIVE=0), in the same run
#   --json      where peers.sh writes its JSON (default bench/results/<UTC time>.json)
#   after --     anything else for peers.sh (see its --help), e.g. --retry-noisy 2
#
# Needs root and the contenders' packages, as ../shared/bench/README.md says:
#   apt-get install -y --no-install-recommends wireguard-go wireguard-tools openvpn \
#       tinc iperf3 iputils-ping socat ethtool openssl
# Env: HOPR_PEERS_SH (path of peers.sh), HOPR_PYTHON (the Python that has
# hopr-tunnel installed; default python3).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PEERS=${HOPR_PEERS_SH:-$REPO/../shared/bench/peers.sh}

die() { printf 'run.sh: %s\n' "$*" >&2; exit 2; }
usage() { sed -n '2,/^set -e/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

DUR=8 ROUNDS=1 JSON="" HOP_COST=0 NAME=hopr PYTHON_TOO=0
PASS=()
while (($#)); do
    case $1 in
        --duration) DUR=${2:?}; shift 2 ;;
        --rounds) ROUNDS=${2:?}; shift 2 ;;
        --json) JSON=${2:?}; shift 2 ;;
        --hop-cost) HOP_COST=1; shift ;;
        --python-too) PYTHON_TOO=1; shift ;;
        --name) NAME=${2:?}; shift 2 ;;
        --) shift; PASS=("$@"); break ;;
        -h|--help) usage 0 ;;
        *) die "unknown argument $1; see --help." ;;
    esac
done

[[ -x $PEERS ]] || die "peers.sh not found at $PEERS; set HOPR_PEERS_SH to its path."
# The real interpreter (not a pyenv shim), so the namespaces need no PATH magic.
PY=$("${HOPR_PYTHON:-python3}" -c 'import sys; print(sys.executable)') ||
    die "no Python at ${HOPR_PYTHON:-python3}; set HOPR_PYTHON."
"$PY" -c 'import agent.cli' 2>/dev/null ||
    die "$PY cannot import hopr-tunnel; run pip install -e . in $REPO or set HOPR_PYTHON."
HOPR=$("$PY" -c 'import pathlib, sys
p = pathlib.Path(sys.executable).with_name("hopr-tunnel")
print(p if p.exists() else "")')
if [[ -n $HOPR ]]; then HOPR=$(printf '%q' "$HOPR")
else HOPR="$(printf '%q' "$PY") -m agent.cli"; fi

if [[ -z $JSON ]]; then
    mkdir -p "$HERE/results"
    JSON="$HERE/results/$(date -u +%Y-%m-%dT%H%M%SZ)$( ((HOP_COST)) && echo -hopcost).json"
fi

# extra NAME HOP [ENV]: one hopr-tunnel contender for peers.sh's --extra hook.
EXTRA=()
extra() {
    # Each side its own control directory: both name their interface hopr0.
    local up="${3:-}HOPR_TUNNEL_RUN_DIR=\"\$HB_DIR/run\" exec $HOPR up --log-level warning \"\$HB_CONF\""
    local prep
    prep="$(printf '%q %q' "$PY" "$HERE/mkconf.py") \"\$HB_CONF_A\" \"\$HB_CONF_B\""
    prep+=" --hop-interval $2 --cipher aes-256-gcm"
    EXTRA+=(--extra "$1" "$up" "$up" --extra-prep "$prep")
}
if ((HOP_COST)); then
    ONLY=veth
    extra "$NAME-hop1s" 1s
    extra "$NAME-hop60s" 60s
else
    ONLY=veth,wireguard-go,openvpn,tinc
    extra "$NAME" 10s
fi
if ((PYTHON_TOO)); then
    extra "$NAME-python" 10s "HOPR_TUNNEL_NATIVE=0 "
fi

"$PEERS" --only "$ONLY" --duration "$DUR" --rounds "$ROUNDS" --json "$JSON" \
    "${EXTRA[@]}" "${PASS[@]}"
echo
"$PY" "$HERE/ratios.py" --project "$NAME" "$JSON"
