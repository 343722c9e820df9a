"""hopr-tunnel data plane.

The protocol core (schedule, keys, datagram, hello, session, replay, allowedips,
peer) is pure: it never touches a socket, a TUN device, asyncio or the clock;
callers pass `now_ns`. The I/O shell (tun, sockets, dataplane) moves packets
between the TUN device and the per-epoch UDP sockets.
"""
