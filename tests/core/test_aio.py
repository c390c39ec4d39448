"""A stop must never be lost: a wait that is woken in the same loop step as its task is
cancelled ends in CancelledError. Python 3.11's ``asyncio.wait_for`` returned the result
instead (CPython gh-86296), which once left the historian waiting out an hour-long
statistics timeout after its stop (CI, tests/historian/test_historian_stats.py)."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from gateway.core.aio import wait_event, within
from gateway.store.journal import Journal

ROOT = Path(__file__).resolve().parents[2]


Start = Callable[[], Coroutine[Any, Any, None]]


async def _woken_and_cancelled(start: Start, wake: Callable[[], object]) -> None:
    """Wake the task's wait, let the loop run ``steps`` steps, cancel the task: whatever
    the step the cancel lands in, the task must end cancelled."""
    for steps in range(5):
        task = asyncio.create_task(start())
        for _ in range(3):
            await asyncio.sleep(0)
        assert not task.done()
        wake()
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        try:
            with pytest.raises(asyncio.CancelledError):
                async with asyncio.timeout(5):
                    await asyncio.shield(task)
        finally:
            if not task.done():  # the cancel was swallowed: end the task for the report
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


async def test_within_and_wait_event_pass_on_a_cancel_that_races_the_wake() -> None:
    for waits in (lambda ev: within(ev.wait(), 100), lambda ev: wait_event(ev, 100)):
        ev = asyncio.Event()

        async def loop(ev: asyncio.Event = ev, waits: Callable[[asyncio.Event], Awaitable[object]] = waits
                       ) -> None:
            while True:  # a service's loop: a swallowed cancel would wait again
                ev.clear()
                await waits(ev)

        await _woken_and_cancelled(loop, ev.set)
    ev = asyncio.Event()
    assert await wait_event(ev, 0.01) is False
    with pytest.raises(TimeoutError):
        await within(ev.wait(), 0.01)


async def test_journal_wait_passes_on_a_cancel_that_races_a_commit(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.db") as j:
        async def follow() -> None:
            while True:
                await j.wait(j.last_seq + 10, 3600)

        # the journal wakes its waiters with call_soon_threadsafe(ev.set) on each commit
        await _woken_and_cancelled(follow, j._notify)


def test_no_asyncio_wait_for_in_the_product() -> None:
    """wait_for is the race above; gateway.core.aio.within is its replacement."""
    found = []
    for pkg in ("gateway", "drivers", "rules", "uplink", "central", "simulators"):
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.Attribute) and node.attr == "wait_for"
                        and isinstance(node.value, ast.Name) and node.value.id == "asyncio"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, f"asyncio.wait_for swallows a racing cancel in Python 3.11: {found}"
