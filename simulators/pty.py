"""A socat pty pair standing in for a serial cable, shared by the serial-line simulators.

socat joins two ptys and names them by symlinks: the simulator opens ``sim_link``,
the gateway opens ``link`` as if it were /dev/ttyUSB0. Killing socat (or removing the
links) is how the tests pull the USB adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import termios
from pathlib import Path


def _both_exist(a: Path, b: Path) -> bool:
    return a.exists() and b.exists()  # two stats on local links: not worth a thread


async def open_pty_pair(link: Path, sim_link: Path) -> tuple[asyncio.subprocess.Process, int]:
    """Start socat with the two links and open the simulator's end raw and non-blocking.

    Returns the socat process and the simulator end's file descriptor."""
    socat = shutil.which("socat")
    if socat is None:
        raise RuntimeError("socat is not installed (apt-get install socat)")
    link.parent.mkdir(parents=True, exist_ok=True)
    for p in (link, sim_link):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    proc = await asyncio.create_subprocess_exec(
        socat, f"pty,raw,echo=0,link={sim_link}", f"pty,raw,echo=0,link={link}",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    # socat makes the links once both ptys exist: wait for them (bounded), not a fixed time
    while not _both_exist(link, sim_link):
        if proc.returncode is not None or loop.time() > deadline:
            if proc.returncode is None:
                proc.kill()
            raise RuntimeError(f"socat did not create {link}")
        await asyncio.sleep(0.01)
    fd = os.open(sim_link, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    attrs = termios.tcgetattr(fd)
    attrs[0] = attrs[1] = attrs[3] = 0  # raw: no input/output/local processing
    attrs[2] = termios.CS8 | termios.CREAD | termios.CLOCAL
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    return proc, fd


def close_fd(fd: int | None) -> None:
    """Stop watching the simulator's end and close it (tolerant of a loop or fd gone)."""
    if fd is None:
        return
    with contextlib.suppress(ValueError, RuntimeError):
        asyncio.get_running_loop().remove_reader(fd)
    with contextlib.suppress(OSError):
        os.close(fd)


def write_fd(fd: int | None, data: bytes) -> OSError | None:
    """Write to the line; a vanished pty is not an error for a simulator, just reported."""
    if fd is None:
        return None
    try:
        os.write(fd, data)
    except OSError as e:
        return e
    return None


async def stop_socat(proc: asyncio.subprocess.Process | None) -> None:
    """Terminate socat (the cable), killing it if it does not go within 3 s."""
    if proc is None or proc.returncode is not None:
        return
    proc.terminate()
    try:
        async with asyncio.timeout(3.0):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
