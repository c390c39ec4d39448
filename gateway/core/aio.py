"""Waiting with a deadline without losing a cancellation.

Python 3.11's ``asyncio.wait_for`` returns the inner result when the inner awaitable
finishes in the same loop step as the caller is cancelled, and so swallows the
cancellation (CPython gh-86296, fixed in 3.12). A service stopped at that moment keeps
running: its loop goes back to waiting and the stop hangs. ``asyncio.timeout`` has no
such window, so every bounded wait in the project goes through these two helpers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(aw: Awaitable[T], timeout: float | None) -> T:  # noqa: ASYNC109
    """``await aw``, raising TimeoutError after ``timeout`` seconds (None: no limit)."""
    async with asyncio.timeout(timeout):
        return await aw


async def wait_event(ev: asyncio.Event, timeout: float | None) -> bool:  # noqa: ASYNC109
    """Wait until ``ev`` is set or ``timeout`` seconds pass; returns whether it is set."""
    try:
        async with asyncio.timeout(timeout):
            await ev.wait()
    except TimeoutError:
        pass
    return ev.is_set()
