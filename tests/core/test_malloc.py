"""The daemon's cap on glibc's malloc arenas: threads started after it share the capped
arenas (counted by glibc's own ``malloc_stats`` report), and an operator's
MALLOC_ARENA_MAX is left alone."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's arenas")

#: 8 threads, each allocating and keeping C heap blocks at once (bytes objects above
#: Python's small-object limit go to malloc), then glibc's report of its arenas
CHILD = """
import ctypes, sys, threading
from gateway.core.malloc import cap_arenas
capped = cap_arenas() if sys.argv[1] == "cap" else None
barrier = threading.Barrier(8)
keep = []
def work():
    blocks = [bytes(4096) for _ in range(64)]
    barrier.wait(timeout=60)  # all eight hold memory together: each would want an arena
    keep.append(blocks)
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join(timeout=60)
print("capped", capped, flush=True)
ctypes.CDLL(None).malloc_stats()  # to stderr: one "Arena N:" block per arena
"""


def _arenas(mode: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **(env or {})}, check=True)
    return out.stdout.strip(), sum(1 for ln in out.stderr.splitlines() if ln.startswith("Arena "))


def test_threads_share_two_arenas_after_the_cap() -> None:
    said, n = _arenas("cap")
    assert said == "capped True"
    assert n == 2
    # without the cap the same threads spread over more arenas: the test can tell
    said, n = _arenas("none")
    assert said == "capped None" and n > 2


def test_an_operators_setting_is_left_alone() -> None:
    said, n = _arenas("cap", {"MALLOC_ARENA_MAX": "3"})
    assert said == "capped False"
    assert 2 <= n <= 3
