"""Protocol and implementation constants, each with its reason.

Protocol constants come from PROTOCOL.md (version 1) and must not change without a
new protocol version. Implementation constants are our choices where the protocol
leaves room; docs/protocol.md records why.
"""

# -- Protocol (PROTOCOL.md) ------------------------------------------------------

VERSION = 1
ROOT_SALT = b"hopr-tunnel/v1"

CIPHER_AES_256_GCM = 1
CIPHER_CHACHA20_POLY1305 = 2
CIPHER_IDS = {
    "aes-256-gcm": CIPHER_AES_256_GCM,
    "chacha20-poly1305": CIPHER_CHACHA20_POLY1305,
}

HOP_MS_MIN = 1_000  # hop interval bounds, inclusive
HOP_MS_MAX = 3_600_000

KEY_LEN = 32  # X25519 keys, psk, PRF outputs
HEADER_LEN = 8  # masked u64 header
TAG_LEN = 16  # AEAD tag, both ciphers
MIN_DATAGRAM = HEADER_LEN + TAG_LEN  # a keepalive; anything shorter is dropped
PAD_TO = 16  # plaintexts are padded to a multiple of this
HELLO_FLAG = 1 << 63  # top bit of the header: hello, not data
COUNTER_MAX = (1 << 63) - 1

HELLO_BODY_LEN = 76  # version, flags, reserved, eph, peer_eph_seen, ts
HELLO_MIN_LEN = 80
HELLO_MAX_LEN = 320
HELLO_PLEASE_ANSWER = 0x01

EPHEMERAL_ROTATE_NS = 120 * 10**9  # replace an ephemeral in use at this age
EPHEMERAL_ACTIVE_NS = 120 * 10**9  # "in use": a session carried data this recently
EPHEMERAL_LINGER_NS = 10 * 10**9  # keep a replaced key after all peers confirmed
EPHEMERAL_MAX_AGE_NS = 180 * 10**9  # never keep an ephemeral private key longer
MAX_SESSIONS_TRIED = 3  # both sides may replace at once
UNKNOWN_SESSION_HELLO_NS = 10**9  # hello answer to undecryptable data, at most 1/s

REPLAY_WINDOW = 2048  # counters remembered per (epoch, direction, session)

# -- Implementation choices -------------------------------------------------------

REPLAY_WINDOW_BITS = 4096  # ours is twice the minimum: room for GSO bursts reordered
HELLO_ANSWER_INTERVAL_NS = 250 * 10**6  # "a few times a second per peer": at most 4/s
HELLO_RETRY_FIRST_NS = 250 * 10**6  # backoff for unanswered hellos: 0.25 s ...
HELLO_RETRY_MAX_NS = 8 * 10**9  # ... doubling up to 8 s
PENDING_PACKETS_MAX = 64  # packets held per peer while its session forms

# -- I/O shell (tunnel/sockets.py, tunnel/dataplane.py) ------------------------------

IO_BATCH = 64  # packets drained per wakeup before other fds get a turn
SEND_BATCH = 128  # datagrams queued before they go out mid-wakeup (GSO runs)
RECV_BUFFER = 65_535  # largest UDP payload; one datagram per recv
TUN_READ_MAX = 65_535 + 10  # a TUN superpacket and its virtio-net header
# Open the next epoch's socket this long before our hop, so a peer whose clock is
# slightly ahead finds it bound; capped at a tenth of the hop for short hops.
SOCKET_LEAD_MS = 200
SOCKET_RETRY_MS = 1_000  # a port another process holds is tried again after this
SOCKET_BUFFER_BYTES = 4 << 20  # per-socket kernel buffers: absorb bursts at hop edges
