"""The journal: round trips, cursors, retention with gap records, failures, concurrency.

Everything runs against real SQLite files in a temporary directory. The disk-full
tests use a real small tmpfs when the test runs as root, and SQLite's
``max_page_count`` limit (named as such) otherwise and in addition.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from gateway.core.batch import Batch, Quality
from gateway.core.record import EVENT, SAMPLES
from gateway.store.journal import Journal, JournalClosed, JournalUnusable
from tests.fixtures.helpers import async_wait_until, mount_tmpfs

T0 = 1_700_000_000 * 10**9


def mk(i: int, n: int = 100, t0: int = T0) -> Batch:
    """A deterministic batch number ``i``: values tell which batch they came from."""
    rng = np.random.default_rng(i)
    return Batch.build(np.arange(n) % 50, t0 + i * 10**9 + np.arange(n) * 1000,
                       rng.normal(20, 5, n), np.where(np.arange(n) % 17 == 0, Quality.TIMEOUT, 0))


class Clock:
    def __init__(self, t: int = T0):
        self.t = t

    def __call__(self) -> int:
        return self.t


def db_facts(path: Path) -> tuple[int, int, int]:
    """(rows, SUM(nbytes), meta bytes) straight from the file."""
    db = sqlite3.connect(path)
    try:
        rows, total = db.execute("SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM records").fetchone()
        meta = db.execute("SELECT value FROM meta WHERE key='bytes'").fetchone()[0]
        return rows, total, meta
    finally:
        db.close()


def gaps(j: Journal) -> list[dict]:
    return [r.event() for r in j.read_sync(0, 10**6, kinds=(EVENT,)) if r.is_gap]


@pytest.fixture
def jpath(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


# ---------------------------------------------------------------------- basics
def test_round_trip_one_row_per_batch(jpath: Path) -> None:
    with Journal(jpath) as j:
        seqs = [j.submit_batch(mk(i, 1000)).result() for i in range(5)]
        ev = {"type": "alarm", "ts": T0, "channel": "GT-301", "level": "hh", "text": "可燃气体"}
        eseq = j.submit_event(ev).result()
        many = j.append_sync([mk(10), {"type": "register", "ts": T0 + 1}, mk(11)])
        assert seqs == [1, 2, 3, 4, 5] and eseq == 6 and many == [7, 8, 9]
        recs = j.read_sync(0, 100)
        assert [r.seq for r in recs] == list(range(1, 10))
        for i, r in enumerate(recs[:5]):
            assert r.kind == SAMPLES and r.n == 1000
            assert r.batch().equals(mk(i, 1000))
            assert (r.ts_min, r.ts_max) == (mk(i, 1000).ts_min, mk(i, 1000).ts_max)
        assert recs[5].event() == ev
        assert recs[7].event()["type"] == "register"
        with pytest.raises(TypeError):
            recs[5].batch()
        with pytest.raises(TypeError):
            recs[0].event()
        assert j.stats()["last_seq"] == 9
    rows, total, meta = db_facts(jpath)
    assert rows == 9 and total == meta  # columnar: one row per batch, counter exact


def test_uncompressed_and_limits(jpath: Path) -> None:
    with Journal(jpath, compress=False) as j:
        for i in range(10):
            j.submit_batch(mk(i, 100)).result()
        j.submit_event({"type": "x", "ts": T0}).result()
        assert len(j.read_sync(0, 3)) == 3
        assert [r.seq for r in j.read_sync(0, 100, max_samples=250)] == [1, 2, 3]
        assert [r.seq for r in j.read_sync(0, 100, kinds=(EVENT,))] == [11]
        assert j.read_sync(11) == []
    _rows, total, meta = db_facts(jpath)
    assert total == meta == 10 * 100 * 21 + len(b'{"type":"x","ts":1700000000000000000}')


def test_bad_record_fails_alone(jpath: Path) -> None:
    """A record that cannot be encoded fails its own future, not the group it shares."""
    with Journal(jpath) as j:
        good1 = j.submit_batch(mk(1))
        bad_event = j.submit_event({"type": "x", "ts": T0, "obj": object()})
        empty = j.submit_batch(Batch.empty())
        wrong = j.submit_many([mk(2), "not a record"])  # type: ignore[list-item]
        good2 = j.submit_batch(mk(3))
        assert good1.result() == 1 and good2.result() == 2
        with pytest.raises(TypeError):
            bad_event.result()
        with pytest.raises(ValueError):
            empty.result()
        with pytest.raises(TypeError):
            wrong.result()
        assert [r.seq for r in j.read_sync(0)] == [1, 2]  # submit_many is all or nothing
        assert j.read_sync(1)[0].batch().equals(mk(3))


def test_closed_journal_refuses(jpath: Path) -> None:
    j = Journal(jpath)
    assert j.alive and j.stats()["alive"]
    fut = j.submit_batch(mk(0))
    j.close()
    assert not j.alive
    assert fut.result() == 1  # queued before close: committed by close
    j.close()  # idempotent
    with pytest.raises(JournalClosed):
        j.submit_batch(mk(1))


def test_restart_keeps_everything(jpath: Path) -> None:
    with Journal(jpath) as j:
        j.register("influx")
        for i in range(20):
            j.submit_batch(mk(i)).result()
        j.ack_sync("influx", 12)
        before = j.stats()
    with Journal(jpath) as j:
        assert j.last_seq == 20 and j.first_seq == 1
        assert j.bytes == before["payload_bytes"]
        assert j.cursor("influx") == 12 and j.lag("influx") == 8
        assert j.submit_batch(mk(99)).result() == 21


def test_not_a_database_is_refused_not_replaced(jpath: Path) -> None:
    jpath.write_bytes(b"this is not a journal\n" * 1000)
    with pytest.raises(JournalUnusable, match="move it aside"):
        Journal(jpath)
    assert jpath.read_bytes().startswith(b"this is not a journal")  # untouched


# ---------------------------------------------------------------------- cursors
def test_cursors_only_move_forward_on_ack(jpath: Path) -> None:
    with Journal(jpath) as j:
        for i in range(10):
            j.submit_batch(mk(i)).result()
        assert j.register("historian") == 0  # backfills what is kept
        assert j.register("mqtt", start="end") == 10
        assert j.register("historian") == 0  # idempotent
        j.ack_sync("historian", 4)
        j.ack_sync("historian", 2)  # late ack of an older range: no step back
        assert j.cursor("historian") == 4
        with pytest.raises(ValueError, match="ends at 10"):
            j.ack_sync("historian", 11)
        assert j.lag("historian") == 6 and j.lag("mqtt") == 0
        assert set(j.stats()["consumers"]) == {"historian", "mqtt"}
        j.unregister("mqtt")
        assert set(j.stats()["consumers"]) == {"historian"}
        assert j.consumers() == {"historian": 4, "mqtt": 10}
        with pytest.raises(ValueError):
            j.register("x", start="middle")


async def test_many_consumers_async(jpath: Path) -> None:
    """Twenty consumers read and ack at their own pace; all see every record once."""
    j = Journal(jpath)
    try:
        names = [f"c{i}" for i in range(20)]
        for n in names:
            j.register(n)
        total = 120
        seen: dict[str, list[int]] = {n: [] for n in names}

        async def consumer(name: str, chunk: int) -> None:
            cur = j.cursor(name)
            while cur < total:
                await j.wait(cur, timeout=10)
                recs = await j.read(cur, limit=chunk)
                seen[name].extend(r.seq for r in recs)
                cur = recs[-1].seq
                await j.ack(name, cur)

        async def producer() -> None:
            for i in range(total):
                await j.append_batch(mk(i, 50))

        async with asyncio.timeout(60):
            await asyncio.gather(producer(), *(consumer(n, 1 + k % 7) for k, n in enumerate(names)))
        for n in names:
            assert seen[n] == list(range(1, total + 1))
            assert j.cursor(n) == total and j.lag(n) == 0
    finally:
        j.close()
    with Journal(jpath) as j2:
        assert all(j2.cursor(n) == total for n in names)


# ---------------------------------------------------------------------- retention
def test_quota_without_active_consumer_drops_silently(jpath: Path) -> None:
    with Journal(jpath, quota_bytes=50_000, compress=False, clock=Clock(T0 + 10**12)) as j:
        for i in range(40):
            j.submit_batch(mk(i)).result()  # 2100 bytes each
        assert j.bytes <= 50_000
        assert gaps(j) == []
        assert j.first_seq > 1 and j.last_seq == 40
        assert j.read_sync(0)[0].seq == j.first_seq
    _rows, total, meta = db_facts(jpath)
    assert total == meta
    with Journal(jpath, quota_bytes=50_000) as j:
        assert j.bytes == meta


def test_quota_drops_oldest_and_writes_gap_in_place(jpath: Path) -> None:
    with Journal(jpath, quota_bytes=50_000, compress=False, clock=Clock(T0 + 10**12)) as j:
        j.register("uplink")
        j.register("historian")
        for i in range(20):
            j.submit_batch(mk(i)).result()
        j.submit_event({"type": "alarm", "ts": T0 + 21 * 10**9}).result()  # seq 21
        j.ack_sync("historian", 21)
        j.ack_sync("uplink", 3)
        for i in range(21, 30):
            j.submit_batch(mk(i)).result()
        # 29 batches + 1 event ≈ 61 KB > 50 KB: dropped down to 45 KB, oldest first
        gs = gaps(j)
        assert len(gs) == 1
        g = gs[0]
        first_kept = j.first_seq
        # the gap sits at the sequence of the last dropped record, right before the kept ones
        recs = j.read_sync(3, 1000)
        assert recs[0].is_gap and recs[0].seq == g["to_seq"] == first_kept
        assert recs[1].seq == g["to_seq"] + 1
        assert g["from_seq"] == 4 and g["reason"] == "quota" and g["consumers"] == ["uplink"]
        dropped = range(g["from_seq"], g["to_seq"] + 1)
        assert g["samples"] == 100 * len([s for s in dropped if s != 21])
        assert g["events"] == (1 if 21 in dropped else 0)
        assert g["ts_from"] == mk(3).ts_min and g["ts_to"] == mk(g["to_seq"] - 1).ts_max
        assert j.bytes <= 50_000
        # the historian, already past the dropped range, just continues
        assert j.read_sync(j.cursor("historian"))[0].seq == 22
        assert j.stats()["gaps"] == 1
    _rows, total, meta = db_facts(jpath)
    assert total == meta


def test_gap_folds_into_the_next(jpath: Path) -> None:
    """A gap that must itself be dropped hands its counts to the new gap."""
    with Journal(jpath, quota_bytes=30_000, compress=False, clock=Clock(T0 + 10**12)) as j:
        j.register("slow")  # never acknowledges
        for i in range(200):
            j.submit_batch(mk(i)).result()
        gs = gaps(j)
        assert len(gs) == 1, gs  # one gap, always at the head
        g = gs[0]
        assert g["from_seq"] == 1 and g["to_seq"] == j.first_seq
        kept = j.read_sync(0, 10**6)
        assert kept[0].is_gap and all(not r.is_gap for r in kept[1:])
        assert g["samples"] + sum(r.n for r in kept[1:]) == 200 * 100
        assert g["ts_from"] == mk(0).ts_min
    _rows, total, meta = db_facts(jpath)
    assert total == meta


def test_age_retention(jpath: Path) -> None:
    clock = Clock(T0 + 100 * 10**9)
    with Journal(jpath, max_age_s=60, clock=clock) as j:
        j.register("uplink")
        for i in range(100):
            j.submit_batch(mk(i)).result()  # batch i spans T0+i s
        # cutoff T0+40s: batches 0..39 end before it, batch 40 ends 99 µs after it
        assert j.enforce_retention_sync() == 40
        g = gaps(j)
        assert len(g) == 1 and g[0]["reason"] == "age" and (g[0]["from_seq"], g[0]["to_seq"]) == (1, 40)
        assert g[0]["samples"] == 40 * 100
        clock.t += 10**12  # everything old now, but the newest record stays
        asyncio.run(j.enforce_retention())
        assert j.last_seq == 100 and [r.seq for r in j.read_sync(0, 10)][-1] == 100
        g = gaps(j)
        assert len(g) == 1 and g[0]["from_seq"] == 1 and g[0]["to_seq"] == 99
        assert g[0]["samples"] == 99 * 100
    rows, total, meta = db_facts(jpath)
    assert total == meta and rows == 2


def test_inactive_consumer_is_warned_on_return(jpath: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Journal(jpath, quota_bytes=30_000, compress=False, clock=Clock(T0 + 10**12)) as j:
        j.register("historian")
        j.unregister("historian")  # e.g. its section was taken out of the config
        for i in range(50):
            j.submit_batch(mk(i)).result()
        assert gaps(j) == []  # nobody active was behind
        with caplog.at_level("WARNING", logger="gateway.store.journal"):
            assert j.register("historian") == 0
        assert any("historian resumes" in r.getMessage() for r in caplog.records)


def test_retention_keeps_acked_ranges_without_gap(jpath: Path) -> None:
    clock = Clock(T0 + 100 * 10**9)
    with Journal(jpath, max_age_s=30, clock=clock) as j:
        j.register("a")
        j.register("b")
        for i in range(50):
            j.submit_batch(mk(i)).result()
        j.ack_sync("a", 50)
        j.ack_sync("b", 50)
        assert j.enforce_retention_sync() == 50 - 1  # all but the newest
        assert gaps(j) == []


# ---------------------------------------------------------------------- failures
def _fill_until_full(j: Journal, start: int) -> tuple[dict[int, int], sqlite3.Error]:
    """Append batches until a commit fails; returns {seq: batch number} committed."""
    committed: dict[int, int] = {}
    i = start
    while True:
        try:
            committed[j.submit_batch(mk(i, 1000)).result()] = i
        except sqlite3.Error as e:
            return committed, e
        i += 1
        assert i < start + 100_000, "never got full"


def _check_committed(j: Journal, committed: dict[int, int]) -> None:
    recs = {r.seq: r for r in j.read_sync(0, 10**6)}
    for seq, i in committed.items():
        assert recs[seq].batch().equals(mk(i, 1000)), seq


def test_full_database_max_page_count(jpath: Path) -> None:
    """SQLITE_FULL made with PRAGMA max_page_count (a database size limit, not a real
    full disk): failed commits fail their futures, roll back, keep the byte counter,
    lose nothing committed, and the writer commits again once there is room."""
    with Journal(jpath, compress=False) as j:
        j.call_in_writer(lambda db: db.execute("PRAGMA max_page_count=60")).result()
        committed, err = _fill_until_full(j, 0)
        assert err.sqlite_errorcode == sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
        assert committed and j.stats()["failed_commits"] == 1 and j.stats()["last_error"]
        # while full, every append fails (and says why)
        futs = [j.submit_batch(mk(10**5 + k, 1000)) for k in range(5)]
        assert all(isinstance(f.exception(), sqlite3.Error) for f in futs)
        _check_committed(j, committed)
        other = sqlite3.connect(jpath)  # a separate connection sees exactly the same
        recs = {r.seq: r for r in j.read_sync(0, 10**6, db=other)}
        other.close()
        assert sorted(recs) == sorted(committed)
        assert db_facts(jpath)[1] == db_facts(jpath)[2] == j.bytes
        last = j.last_seq
        j.call_in_writer(lambda db: db.execute("PRAGMA max_page_count=100000")).result()
        more = {j.submit_batch(mk(500 + k, 1000)).result(): 500 + k for k in range(10)}
        assert min(more) == last + 1  # no sequence burnt by the failures
        assert j.stats()["last_error"] is None
        _check_committed(j, {**committed, **more})
    assert db_facts(jpath)[1] == db_facts(jpath)[2]


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 6 MB tmpfs (needs root; skipped otherwise)."""
    yield from mount_tmpfs(tmp_path, "6m", why_root="mounting a tmpfs needs root; "
                           "test_full_database_max_page_count covers the logic")


def test_disk_full_real_tmpfs(small_tmpfs: Path) -> None:
    """A really full file system: commits fail with SQLITE_FULL, nothing committed is
    lost, and once space comes back the same journal commits again."""
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * 2 * 2**20)
    path = small_tmpfs / "journal.db"
    j = Journal(path, compress=False)
    try:
        j.register("uplink")
        committed, err = _fill_until_full(j, 0)
        assert err.sqlite_errorcode == sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
        assert len(committed) > 10
        _check_committed(j, committed)
        assert j.bytes == db_facts(path)[1] == db_facts(path)[2]
        filler.unlink()  # the operator frees space
        more = {j.submit_batch(mk(1000 + k, 1000)).result(): 1000 + k for k in range(20)}
        assert min(more) == max(committed) + 1
        j.ack_sync("uplink", 5)
        _check_committed(j, {**committed, **more})
    finally:
        j.close()
    with Journal(path) as j2:  # and it opens cleanly, no repair
        _check_committed(j2, {**committed, **more})
        assert j2.cursor("uplink") == 5
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        db.close()


# ---------------------------------------------------------------------- concurrency
def test_reading_while_writing(jpath: Path) -> None:
    """Readers in other threads (and another connection) always see a prefix of what
    is committed: contiguous sequences, identical content, never a half batch."""
    j = Journal(jpath, quota_bytes=10**9)
    stop = threading.Event()
    errors: list[str] = []
    reads = [0]

    def reader() -> None:
        cur = 0
        db = sqlite3.connect(jpath, check_same_thread=False)
        while True:
            # whether everything was committed *before* this read: a read that began before
            # the barrier may rightly see less
            done = stop.is_set()
            if done and cur >= 300:
                break
            recs = j.read_sync(cur, 25, db=db if reads[0] % 2 else None)
            reads[0] += 1
            for r in recs:
                if r.seq != cur + 1:
                    errors.append(f"hole: {cur} then {r.seq}")
                if not r.batch().equals(mk(r.seq - 1, 200)):
                    errors.append(f"content of {r.seq}")
                cur = r.seq
            if done and not recs and cur < 300:
                errors.append(f"stopped at {cur}")
                break
        db.close()

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(300):
            j.submit_batch(mk(i, 200))
        j.append_sync([])  # a barrier: everything before is committed
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        j.close()
    assert not errors, errors[:5]
    assert reads[0] > 3


async def test_wait_wakes_on_commit_and_times_out(jpath: Path) -> None:
    j = Journal(jpath)
    try:
        t = time.monotonic()
        assert await j.wait(0, timeout=0.2) is False
        assert 0.15 < time.monotonic() - t < 2
        waiter = asyncio.create_task(j.wait(0, timeout=10))
        await asyncio.sleep(0)  # let it register
        assert not waiter.done()
        await j.append_batch(mk(0))
        async with asyncio.timeout(2):
            assert await waiter is True
        assert await j.wait(0) is True  # already there: immediate
        # a wait from a thread running its own event loop is woken too
        got: list[bool] = []
        th = threading.Thread(target=lambda: got.append(asyncio.run(j.wait(1, timeout=10))))
        th.start()
        # the thread's wait is registered before the commit (else it would not need waking)
        here = asyncio.get_running_loop()
        await async_wait_until(lambda: any(lp is not here for lp, *_ in list(j._listeners)), 5,
                               what="the thread's wait to register")
        j.submit_event({"type": "x", "ts": 1})
        await asyncio.to_thread(th.join, 5)
        assert got == [True]
        # close wakes waiters, which then report there is nothing new
        waiter = asyncio.create_task(j.wait(j.last_seq, timeout=30))
        await async_wait_until(lambda: any(lp is here for lp, *_ in list(j._listeners)), 5,
                               what="the waiter to register")
        await asyncio.to_thread(j.close)
        async with asyncio.timeout(2):
            assert await waiter is False
    finally:
        j.close()


async def test_group_commit_off_the_loop(jpath: Path) -> None:
    """Many concurrent appends share few commits, and the loop keeps ticking meanwhile."""
    j = Journal(jpath)
    try:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        tk = asyncio.create_task(ticker())
        seqs = await asyncio.gather(*(j.append_batch(mk(i, 500)) for i in range(500)))
        tk.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tk
        assert sorted(seqs) == list(range(1, 501))
        assert j.commits < 250  # grouped
        assert ticks > 0
    finally:
        j.close()


def test_cancelled_before_taken_is_not_written(jpath: Path) -> None:
    """A future cancelled before the journal took it is not written; one the journal
    already took cannot be cancelled, and is written. Either way the caller knows."""
    with Journal(jpath) as j:
        futs = [j.submit_batch(mk(i)) for i in range(300)]
        cancelled = {i for i, f in enumerate(futs) if f.cancel()}
        written = [f.result() for i, f in enumerate(futs) if i not in cancelled]
        assert written == list(range(1, len(written) + 1))
        recs = j.read_sync(0, 1000)
        expect = [i for i in range(300) if i not in cancelled]
        assert len(recs) == len(expect)
        assert all(r.batch().equals(mk(i)) for r, i in zip(recs, expect, strict=True))


def test_seq_before_newest_keeps_to_a_sample_budget(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db", sync="normal")
    try:
        seqs = j.append_sync([mk(0), mk(1), {"type": "alarm", "ts": T0}, mk(2), mk(3)])  # 100 samples each
        assert j.seq_before_newest(T0, 10_000) == (0, 400, T0, False)  # the whole window fits
        # the newest two records only (mk(i) starts at T0 + i s)
        assert j.seq_before_newest(T0, 250) == (seqs[2], 200, T0 + 2 * 10**9, True)
        assert j.seq_before_newest(T0 + 2 * 10**9, 10_000) == (seqs[2], 200, T0 + 2 * 10**9, False)
        assert j.seq_before_newest(T0, 50) == (j.last_seq, 0, None, True)
        assert j.seq_before_newest(T0 + 60 * 10**9, 10_000) == (j.last_seq, 0, None, False)  # nothing so late
    finally:
        j.close()
