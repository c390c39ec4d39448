"""The permit alarm watch (gateway/admin/permits/watch.py) against a real journal and a real
register store: which alarm events flag which permits, its cursor passing the sample
records, an alarm journaled while the watch was stopped still acted on after the restart,
and a store failure retried without losing the alarm."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.admin.permits.analysis import Snapshot, analyse
from gateway.admin.permits.watch import PermitWatch
from gateway.admin.registers import RegisterStore
from gateway.core.batch import Batch, Quality
from gateway.core.channels import ChannelInfo, ChannelTable
from gateway.core.config import ChannelBase
from gateway.store.journal import Journal
from tests.fixtures.helpers import async_wait_until

T0 = int(dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC).timestamp()) * 10**9


def table() -> ChannelTable:
    specs = [
        ChannelBase(name="GT-1", kind="gas", unit="%LEL", gas="methane", area="R-101"),
        ChannelBase(name="GT-2", kind="gas", unit="%LEL", gas="methane", area="R-101"),
        ChannelBase(name="TT-1", kind="temperature", unit="°C", area="R-101"),
        ChannelBase(name="GT-5", kind="gas", unit="%LEL", gas="methane", area="R-105"),
    ]
    return ChannelTable([ChannelInfo(i, s.name, s.kind, s.unit, "plc", s) for i, s in enumerate(specs)])


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.db", sync="normal")
    yield j
    j.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RegisterStore]:
    s = RegisterStore(tmp_path / "r.db", channels=table().names(), clock=lambda: T0)
    yield s
    s.close()


def passing() -> dict[str, Any]:
    snaps = [Snapshot("GT-1", "gas", "%LEL", "methane", "R-101", 1.0, Quality.GOOD, T0 - 10**9)]
    return analyse(snaps, T0, stale_after_s=30.0, step="test")


def in_progress(store: RegisterStore, no: str, **data: Any) -> int:
    body = {
        "permit_no": no,
        "applicant_unit": "m",
        "location": "R-101",
        "content": "weld",
        "work_leader": "Wang",
        "level": "second",
        "valid_from": "2026-12-07T07:00:00+00:00",
        "valid_to": "2026-12-08T07:00:00+00:00",
        **data,
    }
    doc, _ = store.create("hot_work_permit", body, "a")
    sigs = [
        {"role": r, "name": r, "signed_at": "2026-12-07T07:50:00+00:00"}
        for r in ("applicant", "work_leader", "guardian", "analyst", "approver")
    ]
    for step, fields in (("analyse", {}), ("approve", {"signatures": sigs}), ("start", {})):
        store.transition("hot_work_permit", doc["id"], step, fields, "a", analysis=passing())
    return int(doc["id"])


def alarm(channel: str, transition: str = "raise", rule: str = "limit", ts: int = T0) -> dict[str, Any]:
    return {
        "type": "alarm",
        "id": None,
        "ts": ts,
        "channel": channel,
        "index": 0,
        "kind": "gas",
        "unit": "%LEL",
        "rule": rule,
        "level": "h",
        "code": 1,
        "transition": transition,
        "state": "active_unacked",
        "priority": "high",
        "value": 27.0,
        "limit": 25.0,
        "who": None,
    }


def samples(n: int) -> Batch:
    return Batch(
        np.zeros(n, np.int32), np.arange(T0, T0 + n, dtype=np.int64), np.ones(n), np.zeros(n, np.uint8)
    )


async def run_until_drained(w: PermitWatch) -> None:
    task = asyncio.create_task(w.run())
    try:
        assert await w.drain(10.0, target=w.journal.last_seq)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_which_alarms_flag_which_permits(journal: Journal, store: RegisterStore) -> None:
    """A raise or escalate on a channel the permit names or a gas channel of its area flags
    it; a clear, maintenance, a temperature channel of the area or another area does not."""
    by_area = in_progress(store, "A", area="R-101")
    by_name = in_progress(store, "B", channels=["GT-5"])
    elsewhere = in_progress(store, "C", area="R-999")
    emitted: list[dict[str, Any]] = []
    w = PermitWatch(journal, store, table(), emitted.extend)
    w.register()
    await journal.append_many(
        [
            alarm("GT-2", "clear"),
            alarm("GT-2", "suppress", rule="maintenance"),
            alarm("TT-1"),
            samples(50),
            alarm("GT-7"),
        ]
    )
    await run_until_drained(w)
    assert emitted == [] and w.cursor == journal.last_seq  # passed the samples, flagged nothing
    await journal.append_many([samples(10), alarm("GT-2", "escalate"), alarm("GT-5")])
    await run_until_drained(w)
    states = {rid: store.get("hot_work_permit", rid)["state"] for rid in (by_area, by_name, elsewhere)}
    assert states == {by_area: "suspended", by_name: "suspended", elsewhere: "in_progress"}
    notices = [e for e in emitted if e["type"] == "reminder"]
    assert {(n["id"], n["channel"]) for n in notices} == {(by_area, "GT-2"), (by_name, "GT-5")}
    assert w.stats()["flags"] == 2


async def test_an_alarm_journaled_while_the_watch_was_stopped_is_acted_on_after_restart(
    journal: Journal, store: RegisterStore
) -> None:
    rid = in_progress(store, "A", area="R-101")
    first = PermitWatch(journal, store, table(), lambda _e: None)
    first.register()
    await journal.append_many([samples(5)])
    await run_until_drained(first)
    await journal.append_many([alarm("GT-1")])  # the gateway is "down" meanwhile
    emitted: list[dict[str, Any]] = []
    second = PermitWatch(journal, store, table(), emitted.extend)
    assert second.register() == first.cursor  # resumes from the cursor, not from the end
    await run_until_drained(second)
    assert store.get("hot_work_permit", rid)["state"] == "suspended"
    assert [e["rule"] for e in emitted if e["type"] == "reminder"] == ["permit_flagged"]


async def test_a_store_failure_is_retried_and_the_alarm_not_lost(
    journal: Journal, store: RegisterStore
) -> None:
    rid = in_progress(store, "A", area="R-101")
    real = store.permits_in_progress
    calls = {"n": 0}

    def flaky() -> list[tuple[str, int, list[str], str | None]]:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise sqlite3.OperationalError("database is locked")
        return real()

    store.permits_in_progress = flaky  # type: ignore[method-assign]
    w = PermitWatch(journal, store, table(), lambda _e: None)
    w.backoff.first = w.backoff.delay = 0.01
    w.register()
    await journal.append_many([alarm("GT-1")])
    await run_until_drained(w)
    assert calls["n"] == 3 and w.health.failures == 2
    assert store.get("hot_work_permit", rid)["state"] == "suspended"


async def test_sample_commits_do_not_wake_the_watch(journal: Journal, store: RegisterStore) -> None:
    """The polls' commits of samples neither wake the watch nor make it read or ack (a
    commit of its cursor each); the next event does, and the cursor passes everything."""
    rid = in_progress(store, "A", area="R-101")
    w = PermitWatch(journal, store, table(), lambda _e: None)
    reads = 0
    real_read = w.read

    async def counted(*a: Any, **kw: Any) -> Any:
        nonlocal reads
        reads += 1
        return await real_read(*a, **kw)

    w.read = counted  # type: ignore[method-assign]
    w.register()
    task = asyncio.create_task(w.run())
    try:
        await async_wait_until(lambda: any(eo for *_, eo in list(journal._listeners)), 10,
                               what="the watch to wait for events")
        assert reads == 1  # its first pass
        for _ in range(3):
            # a plain waiter on each commit: once it is woken, every wake of the commit
            # before it has run too (the writer wakes waiters in commit order)
            plain = asyncio.create_task(journal.wait(journal.last_seq, timeout=30))
            await async_wait_until(lambda: sum(1 for *_, eo in list(journal._listeners) if not eo) == 1,
                                   10, what="the plain waiter to register")
            await journal.append_many([samples(5)])
            assert await plain
        commits = journal.commits
        assert reads == 1 and w.cursor == 0, "sample commits woke the watch"
        await journal.append_many([alarm("GT-1")])
        await async_wait_until(lambda: w.cursor == journal.last_seq, 10, what="the watch to pass the event")
        assert reads == 2
        assert journal.commits == commits + 2  # the event's, and the watch's one ack
        assert store.get("hot_work_permit", rid)["state"] == "suspended"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
