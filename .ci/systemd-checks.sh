#!/bin/bash
# Static checks of systemd/hopr-tunnel@.service, called by .ci/run.
#
# `systemd-analyze verify` exits 0 on most mistakes (an unknown key, a typo in a
# section name) and only prints them, so any output at all fails this check.
# `systemd-analyze security --offline=true` scores the sandboxing (0 is best,
# 10 is none); the score is printed for the log, not enforced.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
unit="$repo/systemd/hopr-tunnel@.service"

if ! command -v systemd-analyze >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        systemd procps >/dev/null
fi

# verify checks that ExecStart's binary exists, and this machine need not have
# hopr-tunnel installed: verify inside a scratch root holding the real unit, the
# system's own units, /bin/kill for ExecReload, and a stand-in for the agent.
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root/usr/local/bin" \
    "$root/bin"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
cp "$(readlink -f /bin/kill)" "$root/bin/kill"
printf '#!/bin/sh\n' >"$root/usr/local/bin/hopr-tunnel"
chmod 0755 "$root/usr/local/bin/hopr-tunnel"
cp "$unit" "$root/etc/systemd/system/"

output=$(systemd-analyze verify --root="$root" hopr-tunnel@mesh.service 2>&1) || {
    echo "systemd-analyze verify failed:"
    echo "$output"
    exit 1
}
if [[ -n "$output" ]]; then
    echo "systemd-analyze verify printed warnings (any output fails):"
    echo "$output"
    exit 1
fi
echo "systemd-analyze verify: hopr-tunnel@.service clean"

score=$(systemd-analyze security --offline=true "$unit" 2>&1 |
    grep 'Overall exposure level') || {
    echo "systemd-analyze security gave no score:"
    systemd-analyze security --offline=true "$unit" || true
    exit 1
}
echo "systemd-analyze security: ${score#→ }"
