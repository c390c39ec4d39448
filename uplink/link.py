"""The uplink's view of a metered link: a bandwidth cap and a monthly data budget.

``Link`` is shared by both lanes of the sync (alarms and everything else) so that a
backlog drains at the cap while alarms still go first: a waiter with a higher
priority is served before any lower one that queued earlier.

The budget counts bytes on the wire per calendar month (UTC) and persists the
counters in the state directory (``uplink-link.json``) so a restart does not reset
them. When the month's budget is spent, sample traffic stops and only alarms and
other events still go (``allow(lane)``), until the month rolls over or the budget
is raised: a metered 4G link must not run up a bill, but an alarm must not wait
for next month either.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PRIO_ALARMS = 0
PRIO_BULK = 1


def month_of(epoch_s: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(epoch_s))


class TokenBucket:
    """Bytes-per-second token bucket with a burst, and priority among waiters.

    ``await take(n, prio)`` returns once ``n`` bytes may be sent. Requests larger
    than the burst are allowed to take the bucket into debt (the next waiter then
    waits for it to refill), so one big envelope never deadlocks the link.
    """

    def __init__(self, rate: float | None, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst if burst is not None else (max(rate, 16384.0) if rate else 0.0)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._wake: asyncio.TimerHandle | None = None

    def _refill(self) -> None:
        now = self._clock()
        if self.rate:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self, n: int, prio: int = PRIO_BULK) -> None:
        if not self.rate:
            return
        self._refill()
        if not self._waiters and self._tokens > 0:
            self._tokens -= n
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (prio, next(self._seq), fut)
        heapq.heappush(self._waiters, entry)
        self._schedule()
        try:
            await fut
        except asyncio.CancelledError:
            if entry in self._waiters:
                self._waiters.remove(entry)
                heapq.heapify(self._waiters)
            raise
        self._tokens -= n

    def _schedule(self) -> None:
        if self._wake is not None or not self._waiters or not self.rate:
            return
        self._refill()
        delay = 0.0 if self._tokens > 0 else (-self._tokens + 1) / self.rate
        self._wake = asyncio.get_running_loop().call_later(delay, self._release)

    def _release(self) -> None:
        self._wake = None
        self._refill()
        while self._waiters and self._tokens > 0:
            _p, _s, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
                # the waiter subtracts its own size when it resumes; serve one at a time
                break
        self._schedule_later()

    def _schedule_later(self) -> None:
        # let the woken waiter run and spend its tokens before the next decision
        if self._waiters:
            asyncio.get_running_loop().call_soon(self._schedule)


class Link:
    """Cap, budget and counters for one uplink (persisted under ``state_dir``)."""

    def __init__(self, state_dir: Path | None, *, rate: int | None = None, monthly_budget: int | None = None,
                 clock: Callable[[], float] = time.time):
        self.bucket = TokenBucket(float(rate) if rate else None)
        self.rate = rate
        self.monthly_budget = monthly_budget
        self._clock = clock
        self._path = state_dir / "uplink-link.json" if state_dir is not None else None
        self.month = month_of(clock())
        self.month_bytes = 0
        self.total_bytes_out = 0
        self.total_bytes_in = 0
        self.envelopes = 0
        self.samples = 0
        self.budget_blocked = False
        self._dirty = 0
        self._saved_at = clock()
        self._load()

    def _load(self) -> None:
        if self._path is None or not self._path.exists():
            return
        try:
            doc = json.loads(self._path.read_text())
        except (OSError, ValueError) as e:
            log.warning("uplink counters %s unreadable (%s); starting from zero", self._path, e)
            return
        if doc.get("month") == self.month:
            self.month_bytes = int(doc.get("month_bytes", 0))
        self.total_bytes_out = int(doc.get("total_bytes_out", 0))
        self.total_bytes_in = int(doc.get("total_bytes_in", 0))

    def save(self) -> None:
        if self._path is None:
            return
        tmp = self._path.with_suffix(".tmp")
        doc = {"month": self.month, "month_bytes": self.month_bytes,
               "total_bytes_out": self.total_bytes_out, "total_bytes_in": self.total_bytes_in}
        try:
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self._path)
            self._dirty = 0
            self._saved_at = self._clock()
        except OSError as e:
            log.warning("cannot save uplink counters to %s: %s", self._path, e)

    def _roll(self) -> None:
        m = month_of(self._clock())
        if m != self.month:
            log.info("uplink budget: new month %s (last month used %d bytes)", m, self.month_bytes)
            self.month, self.month_bytes = m, 0
            if self.budget_blocked:
                self.budget_blocked = False

    def allow(self, lane: str) -> bool:
        """May this lane send now? Alarms always may; bulk only within the budget."""
        self._roll()
        if lane == "alarms" or self.monthly_budget is None:
            return True
        over = self.month_bytes >= self.monthly_budget
        if over and not self.budget_blocked:
            log.error("uplink monthly budget of %d bytes spent (%s): only alarms and events go until "
                      "the month ends or the budget is raised", self.monthly_budget, self.month)
        elif not over and self.budget_blocked:
            log.info("uplink monthly budget available again; samples resume")
        self.budget_blocked = over
        return not over

    async def send(self, nbytes: int, lane: str) -> None:
        """Wait for the cap to let ``nbytes`` go on ``lane``, then count them."""
        await self.bucket.take(nbytes, PRIO_ALARMS if lane == "alarms" else PRIO_BULK)
        self.count_out(nbytes)

    def count_out(self, nbytes: int) -> None:
        self._roll()
        self.month_bytes += nbytes
        self.total_bytes_out += nbytes
        self._dirty += nbytes
        # persist every MiB or every minute, so a crash loses little of the month's count
        if self._dirty > 1 << 20 or self._clock() - self._saved_at > 60:
            self.save()

    def count_in(self, nbytes: int) -> None:
        self._roll()
        self.month_bytes += nbytes
        self.total_bytes_in += nbytes

    def stats(self) -> dict[str, Any]:
        return {
            "bandwidth_bytes_per_s": self.rate,
            "monthly_budget_bytes": self.monthly_budget,
            "month": self.month,
            "month_bytes": self.month_bytes,
            "budget_blocked": self.budget_blocked,
            "bytes_out_total": self.total_bytes_out,
            "bytes_in_total": self.total_bytes_in,
            "envelopes": self.envelopes,
            "samples": self.samples,
        }
