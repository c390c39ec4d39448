"""This node's outbox as a sync ``Source`` for the next level up.

Each envelope central stores is also put unchanged in the outbox (``central.state``), so
the top can verify every plant's signature itself; the next level pulls it through this
node's ``/sync/v1`` API, or this node pushes it (``uplink.sync.PushClient``).
"""

from __future__ import annotations

import asyncio
import contextlib

from central.state import State
from gateway.core.aio import within
from uplink.sync import Item


class OutboxSource:
    """This node's outbox as a sync ``Source`` for the next level."""

    def __init__(self, node_id: str, state: State):
        self.node_id = node_id
        self.state = state
        self._pos = {"main": 0, "alarms": 0}
        self._head = 0
        self._first = 0
        self._changed = asyncio.Event()

    async def load(self) -> None:
        self._pos = await self.state.upstream_positions()
        self._first, self._head = await self.state.outbox_bounds()

    def added(self, n: int = 1) -> None:
        self._head += n
        self._changed.set()

    async def read(self, lane: str, after: int, *, max_bytes: int, max_items: int = 0) -> list[Item]:
        rows = await self.state.outbox_read(lane, after, max_bytes)
        if max_items:
            rows = rows[:max_items]
        if rows:
            self._head = max(self._head, rows[-1].id)
        return [Item(lane, r.id, r.data, r.samples, 0) for r in rows]

    async def ack(self, lane: str, seq: int) -> None:
        if seq > self._pos.get(lane, 0):
            self._pos[lane] = seq
            await self.state.upstream_ack(lane, seq)

    def position(self, lane: str) -> int:
        return self._pos.get(lane, 0)

    def head(self) -> int:
        return self._head

    def first(self) -> int:
        return self._first

    async def wait(self, after: int, wait_s: float) -> bool:
        # the outbox id space is shared by both lanes: wake on any addition
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await within(self._changed.wait(), wait_s)
        return self._changed.is_set()
