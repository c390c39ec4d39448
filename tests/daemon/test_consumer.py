"""The journal-consumer base (gateway/consumer.py) against a real Journal: the plain
read → deliver → ack loop through failures, a windowed consumer acking out of order,
drain bounded while the target hangs, waiting without polling, and the stats."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.consumer import AckWindow, Backoff, Health, JournalConsumer
from gateway.core.batch import Batch
from gateway.core.record import EVENT, Record
from gateway.store.journal import Journal
from tests.fixtures.helpers import async_wait_until


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.db", sync="normal")
    yield j
    j.close()


def events(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"type": "note", "ts": 1_700_000_000_000_000_000 + i, "i": i} for i in range(start, start + n)]


class RecordingBackoff(Backoff):
    """A Backoff that remembers the delay it was at each time it was asked."""

    def __init__(self) -> None:
        super().__init__(0.01, 0.04)
        self.asked: list[float] = []

    def next(self) -> float:
        self.asked.append(self.delay)
        return super().next()


class Flaky(JournalConsumer):
    """Fails its first ``failures`` deliveries with OSError, then takes everything."""

    def __init__(self, journal: Journal, failures: int):
        super().__init__(journal, "flaky", max_records=3, what="the flaky target",
                         backoff=RecordingBackoff(), idle_wait_s=5.0)
        self.failures_left = failures
        self.got: list[int] = []

    async def deliver(self, records: list[Record]) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise OSError("connection refused")
        self.got.extend(r.seq for r in records)


async def test_fails_then_recovers_backoff_grows_and_resets_nothing_lost_or_doubled(
        journal: Journal, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gateway.consumer")
    seqs = await journal.append_many(events(7))
    c = Flaky(journal, failures=4)
    assert c.register() == 0
    task = asyncio.create_task(c.run())
    try:
        assert await c.drain(10.0)
        more = await journal.append_many(events(2, 7))
        assert await c.drain(10.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert c.got == seqs + more  # every record once, in order
    assert c.cursor == journal.last_seq == more[-1]
    b = c.backoff
    assert isinstance(b, RecordingBackoff)
    assert b.asked == [0.01, 0.02, 0.04, 0.04]  # doubled up to the cap, once a failure
    assert b.delay == b.first  # reset by the success
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(errors) == 1 and "the flaky target failed: connection refused" in errors[0].getMessage()
    assert len(infos) == 1 and "the flaky target is working again" in infos[0]
    st = c.stats()
    assert st == {"name": "flaky", "cursor": more[-1], "lag": 0, "delivered": 9, "failures": 4,
                  "last_error": None, "state": "ok"}


async def test_stats_while_failing_name_the_error(journal: Journal) -> None:
    await journal.append_many(events(5))
    c = Flaky(journal, failures=1000)
    c.register()
    task = asyncio.create_task(c.run())
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while c.health.failures < 3:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    st = c.stats()
    assert st["state"] == "failing" and st["last_error"] == "connection refused"
    assert st["cursor"] == 0 and st["lag"] == 5 and st["delivered"] == 0 and st["failures"] >= 3
    assert journal.cursor("flaky") == 0


async def test_windowed_consumer_acks_out_of_order_cursor_moves_over_the_done_prefix(
        journal: Journal) -> None:
    seqs = await journal.append_many(events(6))
    c = JournalConsumer(journal, "windowed")
    c.register()
    window = AckWindow()
    # read ahead from positions other than the cursor: two reads, nothing acked yet
    first = await c.read(max_records=3)
    second = await c.read(first[-1].seq, max_records=3)
    assert [r.seq for r in first + second] == seqs and c.cursor == 0
    slots = {r.seq: window.add(r.seq) for r in first + second}
    for s in (seqs[2], seqs[1], seqs[4]):  # answers arrive out of order
        slots[s].done = True
    assert window.advance() is None  # the first one is still in flight
    assert c.cursor == 0
    slots[seqs[0]].done = True
    upto = window.advance()
    assert upto == seqs[2]
    assert await c.ack(upto)
    assert c.cursor == seqs[2] and len(window) == 3
    slots[seqs[5]].done = True
    assert window.advance() is None and c.cursor == seqs[2]  # seqs[3] is missing
    slots[seqs[3]].done = True
    upto = window.advance()
    assert upto == seqs[5] and await c.ack(upto)
    assert c.cursor == seqs[5] and len(window) == 0
    assert not await c.ack(seqs[1])  # never backwards
    assert c.cursor == seqs[5] and c.stats()["delivered"] == 6


async def test_drain_is_bounded_by_its_timeout_while_the_target_hangs(journal: Journal) -> None:
    await journal.append_many(events(3))
    release = asyncio.Event()

    class Hanging(JournalConsumer):
        async def deliver(self, records: list[Record]) -> None:
            await release.wait()

    c = Hanging(journal, "hanging")
    c.register()
    task = asyncio.create_task(c.run())
    loop = asyncio.get_running_loop()
    try:
        t0 = loop.time()
        assert not await c.drain(0.3)
        took = loop.time() - t0
        assert 0.3 <= took < 2.0
        assert c.cursor == 0
        release.set()
        assert await c.drain(10.0)
        assert c.cursor == journal.last_seq
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_wait_wakes_on_commit_or_on_the_owners_event(journal: Journal) -> None:
    c = JournalConsumer(journal, "waiter")
    c.register()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert not await c.wait(timeout=0.1)  # nothing yet: the timeout
    assert loop.time() - t0 >= 0.1
    waiting = asyncio.create_task(c.wait(timeout=10.0))
    await asyncio.sleep(0)
    await journal.append_many(events(1))
    assert await asyncio.wait_for(waiting, 5.0)  # woken by the commit, long before 10 s
    wake = asyncio.Event()
    after = journal.last_seq
    waiting = asyncio.create_task(c.wait(after, 10.0, wake=wake))
    await asyncio.sleep(0)
    wake.set()
    assert not await asyncio.wait_for(waiting, 5.0)  # woken by the owner, no new record


def test_health_logs_state_changes_not_repetitions(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gateway.consumer")
    h = Health("the target")
    h.succeeded()
    h.succeeded()
    for _ in range(5):
        h.failed(OSError("down"))
    h.failed(TimeoutError())
    h.succeeded()
    msgs = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [lv for lv, _ in msgs] == [logging.INFO, logging.ERROR, logging.INFO]
    assert msgs[0][1] == "the target is working"
    assert msgs[1][1] == "the target failed: down"
    assert "is working again" in msgs[2][1] and "6 failure(s)" in msgs[2][1]
    assert h.failures == 6 and h.ok and h.last_error is None


class EventsOnly(JournalConsumer):
    """Takes alarm-like events only (``kinds=(EVENT,)``), as the permit watch does."""

    def __init__(self, journal: Journal):
        super().__init__(journal, "events-only", kinds=(EVENT,), idle_wait_s=30.0)
        self.got: list[int] = []
        self.reads = 0

    async def read(self, after: int | None = None, **kw: Any) -> list[Record]:
        self.reads += 1
        return await super().read(after, **kw)

    async def deliver(self, records: list[Record]) -> None:
        self.got.extend(r.seq for r in records)


async def test_a_filtered_consumer_passes_records_of_other_kinds_and_then_blocks(journal: Journal) -> None:
    """Only samples after the cursor: the cursor still reaches the end (it would hold
    retention back otherwise), and the loop then waits instead of reading in a spin."""
    c = EventsOnly(journal)
    c.register()
    for i in range(5):
        await journal.append_batch(Batch.build([0, 1], 1_700_000_000 * 10**9 + i, [1.0, 2.0], 0))
    task = asyncio.create_task(c.run())
    try:
        await async_wait_until(lambda: c.cursor == journal.last_seq, 10, what="the cursor past the samples")
        reads = c.reads
        # nothing new: a spinning loop would read thousands of times meanwhile
        assert not await journal.wait(journal.last_seq, 0.3)
        assert c.reads <= reads + 1
        seq = await journal.append_event(events(1)[0])
        await async_wait_until(lambda: c.got == [seq] and c.cursor == seq, 10, what="the event")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
