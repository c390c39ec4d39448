"""Small helpers shared by the tests: waiting on conditions, free ports."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path


def free_port() -> int:
    """An ephemeral TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], object], timeout: float = 10.0, interval: float = 0.02,
               what: str = "condition") -> object:
    """Poll ``cond`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def async_wait_until(cond: Callable[[], object | Awaitable[object]], timeout: float = 10.0,  # noqa: ASYNC109
                           interval: float = 0.02, what: str = "condition") -> object:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        v = cond()
        if asyncio.iscoroutine(v) or isinstance(v, asyncio.Future):
            v = await v
        if v:
            return v
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    def ok() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            return False

    wait_until(ok, timeout, what=f"{host}:{port} to accept connections")


def mount_tmpfs(where: Path, size: str, *, why_root: str = "mounting a tmpfs needs root") -> Iterator[Path]:
    """A real small tmpfs at ``where``/mnt for disk-full tests, unmounted afterwards; the
    test is skipped when not root or when mounting fails. Use from a fixture with
    ``yield from``."""
    import os
    import subprocess
    import uuid

    import pytest

    mnt = where / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip(why_root)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", f"safegw-test-{uuid.uuid4().hex[:8]}",
                        str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
