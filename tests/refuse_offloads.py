"""Run a command on a kernel that refuses the data path's offloads.

    python3 tests/refuse_offloads.py [--tun] [--udp] -- COMMAND [ARG ...]

Installs a seccomp filter, then execs COMMAND, which inherits it (and so do its
children). The filter makes the kernel answer as one without the feature does:

    --tun  ioctl(fd, TUNSETOFFLOAD, ...)              -> EINVAL
    --udp  setsockopt/getsockopt(fd, SOL_UDP, UDP_SEGMENT or UDP_GRO, ...)
                                                      -> ENOPROTOOPT

Every other system call runs as usual. The filter is built with libseccomp
(through pyseccomp), which resolves system call numbers for this architecture.
"""

from __future__ import annotations

import argparse
import errno
import os

import pyseccomp as seccomp

TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int), linux/if_tun.h
SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h
UDP_GRO = 104


def refusing_filter(tun: bool, udp: bool) -> seccomp.SyscallFilter:
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    if tun:
        f.add_rule(
            seccomp.ERRNO(errno.EINVAL),
            "ioctl",
            seccomp.Arg(1, seccomp.EQ, TUNSETOFFLOAD),
        )
    if udp:
        for call in ("setsockopt", "getsockopt"):
            for option in (UDP_SEGMENT, UDP_GRO):
                f.add_rule(
                    seccomp.ERRNO(errno.ENOPROTOOPT),
                    call,
                    seccomp.Arg(1, seccomp.EQ, SOL_UDP),
                    seccomp.Arg(2, seccomp.EQ, option),
                )
    return f


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tun", action="store_true", help="refuse TUNSETOFFLOAD")
    p.add_argument("--udp", action="store_true", help="refuse UDP_SEGMENT, UDP_GRO")
    p.add_argument("command", nargs="+")
    args = p.parse_args()
    refusing_filter(args.tun, args.udp).load()
    os.execvp(args.command[0], args.command)


if __name__ == "__main__":
    main()
