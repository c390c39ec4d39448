"""The C allocator's per-thread arenas, capped for a long-running daemon on a small PC.

glibc gives each thread that allocates its own malloc arena, up to eight per core. The
daemon's few threads (journal writer and encoder, readers, a library's I/O thread) each
then hold their own partly used heap: memory freed in one arena is not reused by the
others, and RSS grows with the thread count rather than with the data. Two arenas (the
main one and one shared by the threads) took ~7 MB off a 50,000-channel daemon
(bench/footprint.py, docs/performance.md); the threads then share one arena's lock, which
costs nothing measurable at the daemon's allocation rate (numpy buffers and journal
batches, not small objects: those go to Python's own allocator).

Set ``MALLOC_ARENA_MAX`` in the environment to choose otherwise: it is then left alone.
Not glibc (musl, macOS): nothing to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc malloc.h
DAEMON_ARENAS = 2


def cap_arenas(n: int = DAEMON_ARENAS) -> bool:
    """Cap the arenas threads started from now on may create; True when glibc took it.
    Call it before starting threads."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False  # the operator's choice, already applied by glibc at start
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_ARENA_MAX, n) == 1
    if not ok:
        log.debug("malloc: mallopt(M_ARENA_MAX, %d) refused", n)
    return ok
