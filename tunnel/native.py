"""The native part of the fast path, when it was built (tunnel/_fastpath.c).

Splitting a TCP superpacket and sealing its segments, and opening a GRO run,
are done by one C call per run where the extension is installed; everywhere
else the same work is done in Python (offload.split_tcp_rows, runs.seal_rows,
runs.open_gro_run), which is the reference the extension is tested against.
Both produce the same datagrams: a peer cannot tell which one its peer runs.

`fastpath` is the module, or None: not built (no compiler or OpenSSL headers
when it was installed), or switched off with HOPR_TUNNEL_NATIVE=0 (to compare
the two, or to rule the extension out when chasing a problem).
"""

from __future__ import annotations

import os
from types import ModuleType

MAX_ROWS = 1024  # the extension's limit per call; longer runs take Python
ENV = "HOPR_TUNNEL_NATIVE"


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get(ENV, "1") == "0":
        return None, f"Python ({ENV}=0)"
    try:
        from . import _fastpath
    except ImportError:
        return None, "Python (the native extension was not built)"
    return _fastpath, "native code"


fastpath, state = _load()
