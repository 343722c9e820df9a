"""Agent-level constants, each with its reason.

Protocol constants (hop interval bounds, key length, cipher ids) live in
tunnel/constants.py; these are choices about the host side: config defaults and
the limits the config loader enforces.
"""

from tunnel.constants import HEADER_LEN, PAD_TO, TAG_LEN

# -- Config defaults (documented in agent/config.py) ----------------------------

DEFAULT_IFNAME = "hopr0"  # says what it is; does not collide with wg0 or tun0
# Above most registered services (1024-19999 holds many well-known daemons) and
# below Linux's ephemeral source-port range (32768-60999), so a hop never lands
# on a port the host hands out for its own outgoing connections.
DEFAULT_PORT_RANGE = (20_000, 29_999)
# Long enough that clocks synced by NTP (milliseconds apart) sit deep inside one
# epoch and one socket set per pair per 10 s is cheap; short enough that no flow
# an observer could follow lasts longer than that.
DEFAULT_HOP_MS = 10_000
DEFAULT_CIPHER = "aes-256-gcm"  # AES-NI makes it fastest on most servers
# An inner packet of MTU bytes, padded to PAD_TO, plus our header, the tag, UDP
# and an IPv6 outer header must fit a 1500-byte underlay:
#   ceil16(1420) + 8 + 16 + 8 + 40 = 1424 + 72 = 1496 <= 1500.
# 1420 is also WireGuard's default, which operators already size links for.
DEFAULT_MTU = 1420
UNDERLAY_OVERHEAD_V6 = 40 + 8 + HEADER_LEN + TAG_LEN  # outer IPv6 + UDP + ours
assert -(-DEFAULT_MTU // PAD_TO) * PAD_TO + UNDERLAY_OVERHEAD_V6 <= 1500

# -- Limits the config loader enforces ------------------------------------------

MTU_MIN = 1280  # RFC 8200 section 5: IPv6 needs links of at least 1280 bytes
MTU_MAX = 9000  # the common jumbo frame; underlays rarely carry more
PORT_MIN = 1024  # ports below are system services (and need privilege to bind)
PORT_MAX = 65_535
IFNAME_MAX = 15  # IFNAMSIZ is 16 bytes including the terminating NUL
PEER_NAME_MAX = 32  # names appear in logs and `show` columns; keep them short
# Any group or other permission bit on a file holding a secret is refused, as
# wg refuses world-accessible key files; 0600 (owner only) is what we ask for.
SECRET_MODE_MASK = 0o077

# -- Command line ----------------------------------------------------------------

EXIT_USER_ERROR = 2  # a user's mistake (config, usage), as click and wg use 2
