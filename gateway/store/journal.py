"""The journal: the gateway's one durable truth (SQLite in WAL mode).

A sample or an event counts as taken only once the transaction that holds it is
committed here. Records are numbered by a sequence that never goes back: a sample
record stores a whole Batch columnar in one row, an event record one JSON document
(alarm transitions, gap records, register changes, ...).

Consumers (historian, MQTT, uplink) each keep a named cursor: the last sequence
their target acknowledged. They read after it and advance it only on success
(``ack``); a cursor never moves backwards.

Retention is by a byte quota (payload bytes, see ``stats()``) and an age, oldest
first. When it must drop records an *active* consumer (one ``register``-ed in this
run) has not acknowledged, a ``gap`` event takes the place of the dropped range: it
gets the sequence number of the last dropped record, so a consumer reading forward
meets the gap exactly where the data would have been, and says which sequence range,
how many samples and events, which time range and why (``quota``, ``age``). If a
gap itself must later be dropped, its counts fold into the next.

All writes go through two dedicated threads: an encoder (columnar bytes, zstd) and a
writer that commits everything encoded so far in one transaction (group commit), so
compression of the next group overlaps the fsync of this one; the event loop never
blocks on either, and a burst of small batches costs one fsync. With a commit cadence,
sample batches wait in the journal's inbox without waking either thread: the encoder
takes the cadence's batches in one go when it is up (or at once, with what waits, when
anything that may not wait arrives), so a small plant pays one handoff a cadence, not
two thread wake-ups a batch. A record that cannot be encoded fails alone; a
transaction that cannot commit (disk full, I/O error) fails every future in it,
rolls back, and leaves what was committed before untouched; the writer keeps going
and commits again once there is room. (It does not delete old data to make room on a
full disk: in WAL mode deleting needs room too, so it would lose data for nothing;
set the quota below the free space instead.)
Reads use their own connections (WAL snapshots) on a reader thread. After
``kill -9`` SQLite's WAL recovery on open is all the repair there is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import zstandard

from gateway.core.aio import within
from gateway.core.batch import Batch
from gateway.core.record import (
    CODEC_RAW,
    CODEC_ZSTD,
    SAMPLES,
    Record,
    decode_data,
    event_record,
)
from gateway.store.retention import drop_oldest
from gateway.store.schema import PAGE_SIZE, SCHEMA, SCHEMA_STEPS, SCHEMA_VERSION, JournalUnusable, connect
from gateway.store.versions import ensure_schema

log = logging.getLogger(__name__)

#: group commit bounds: one transaction takes at most this many queued operations
#: or this many (uncompressed) payload bytes, whichever comes first
GROUP_MAX_OPS = 4096
GROUP_MAX_BYTES = 16 * 2**20
#: longest commit cadence accepted: samples wait at most this long to be taken
COMMIT_EVERY_MAX_S = 10.0


def _nothing(db: sqlite3.Connection) -> None:
    return None


class JournalClosed(RuntimeError):
    pass


def _samples_only(op: str, arg: Any) -> bool:
    """Sample batches only may wait for the commit cadence (events, acks, calls may not)."""
    return op in ("append", "append_many") and all(isinstance(x, Batch) for x in arg)


def _has_batch(op: str, arg: Any) -> bool:
    return op in ("append", "append_many") and any(isinstance(x, Batch) for x in arg)


# a row as inserted: (kind, ts_min, ts_max, n, nbytes, codec, data)
_Row = tuple[int, int, int, int, int, int, bytes]
_Work = tuple[str, Any, "concurrent.futures.Future[Any]"]


class Journal:
    """Durable, sequence-numbered store of batches and events with consumer cursors.

    Thread safety: ``submit_*``, ``read_sync``, ``cursor``, ``lag`` and ``stats`` may be
    called from any thread; the ``async`` methods from any event loop.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        quota_bytes: int = 2 * 10**9,
        max_age_s: float = 30 * 86400.0,
        sync: str = "full",
        compress: bool = True,
        commit_every_s: float = 0.0,
        page_size: int = PAGE_SIZE,
        clock: Callable[[], int] = time.time_ns,
    ):
        if sync not in ("full", "normal", "off"):
            raise ValueError(f"sync must be full, normal or off, not {sync!r}")
        if not 0.0 <= commit_every_s <= COMMIT_EVERY_MAX_S:
            raise ValueError(f"commit_every_s must be within 0-{COMMIT_EVERY_MAX_S:g} s, "
                             f"not {commit_every_s!r}")
        self.commit_every_s = commit_every_s
        self.path = Path(path)
        self.quota_bytes = quota_bytes
        self.max_age_ns = int(max_age_s * 1e9)
        self.compress = compress
        self._sync = sync
        self._clock = clock
        try:
            self._db = connect(self.path, sync, page_size)
            ensure_schema(self._db, self.path, name="journal", version=SCHEMA_VERSION, create=SCHEMA,
                          steps=SCHEMA_STEPS)
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError):  # permissions, locks: say it as it is
                raise
            raise JournalUnusable(
                f"{self.path}: not a usable journal ({e}); move it aside (it may still be read "
                "with the sqlite3 tool) and start again to begin a new one") from e
        self._cursors: dict[str, int] = dict(self._db.execute("SELECT name, seq FROM cursors").fetchall())
        # published state: changes only after a commit, so a reader that sees
        # last_seq = s can read record s
        self.last_seq = 0
        self.first_seq = 1
        self.bytes = 0
        self._load_counters(self._db)
        # the newest record that is not samples is at or before this (at the start: taken
        # to be the end, so that a waiter for events reads once before it waits)
        self.last_event_seq = self.last_seq
        self._active: set[str] = set()
        self._zc = zstandard.ZstdCompressor(level=1)
        # the inbox: submitted work, in order, until the encoder takes it (under _cv)
        self._cv = threading.Condition(threading.Lock())
        self._inbox: list[_Work] = []
        self._urgent = False  # the inbox holds work that may not wait for the cadence
        self._inbox_closed = False
        # encoder thread only: when a release with samples last went to the writer
        self._released = -COMMIT_EVERY_MAX_S
        # encoded work, a release (or a part of one, at the group bounds) a list
        self._encoded: queue.SimpleQueue[list[_Work] | None] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        # waiters: (loop, event, whether only records that are not samples wake it)
        self._listeners: set[tuple[asyncio.AbstractEventLoop, asyncio.Event, bool]] = set()
        self.commits = 0
        self.failed_commits = 0
        self.dropped_records = 0
        self.gaps = 0
        self.last_error: str | None = None
        self._reader_dbs: list[sqlite3.Connection] = []
        self._rlocal = threading.local()
        self._encoder = threading.Thread(target=self._encode_loop, name="journal-encoder", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name="journal-writer", daemon=True)
        self._encoder.start()
        self._writer.start()
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal-reader")

    def _load_counters(self, db: sqlite3.Connection) -> None:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='records'").fetchone()
        last = row[0] if row else 0
        top = db.execute("SELECT MAX(seq) FROM records").fetchone()[0]
        if top is not None and top > last:  # cannot happen with AUTOINCREMENT; be safe
            last = top
        first = db.execute("SELECT MIN(seq) FROM records").fetchone()[0]
        self.last_seq = last
        self.first_seq = first if first is not None else last + 1
        self.bytes = db.execute("SELECT value FROM meta WHERE key='bytes'").fetchone()[0]

    # ------------------------------------------------------------------ writing
    def _submit(self, op: str, arg: Any) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        may_wait = self.commit_every_s > 0 and _samples_only(op, arg)
        with self._cv:
            if self._inbox_closed:
                raise JournalClosed("journal is closed")
            self._inbox.append((op, arg, fut))
            if not may_wait:
                self._urgent = True
                self._cv.notify()
            elif len(self._inbox) == 1:
                self._cv.notify()  # the encoder sets its alarm for the cadence
        return fut

    def submit_batch(self, batch: Batch) -> concurrent.futures.Future[int]:
        """Queue a batch; the future resolves to its sequence once committed."""
        return self._submit("append", [batch])

    def submit_event(self, event: dict[str, Any]) -> concurrent.futures.Future[int]:
        return self._submit("append", [event])

    def submit_many(self, items: Sequence[Batch | dict[str, Any]]) -> concurrent.futures.Future[list[int]]:
        """Queue several records committed together; resolves to their sequences."""
        return self._submit("append_many", list(items))

    async def append_batch(self, batch: Batch) -> int:
        seq: int = await asyncio.wrap_future(self.submit_batch(batch))
        return seq

    async def append_event(self, event: dict[str, Any]) -> int:
        seq: int = await asyncio.wrap_future(self.submit_event(event))
        return seq

    async def append_many(self, items: Sequence[Batch | dict[str, Any]]) -> list[int]:
        seqs: list[int] = await asyncio.wrap_future(self.submit_many(items))
        return seqs

    def append_sync(self, items: Sequence[Batch | dict[str, Any]]) -> list[int]:
        seqs: list[int] = self.submit_many(items).result()
        return seqs

    async def ack(self, consumer: str, seq: int) -> None:
        """Advance a consumer's cursor (durably) after its target acknowledged up to ``seq``.

        A cursor never moves back: acknowledging less than the cursor is a no-op;
        acknowledging beyond the last committed record raises ValueError.
        """
        await asyncio.wrap_future(self._submit("ack", (consumer, seq)))

    def ack_sync(self, consumer: str, seq: int) -> None:
        self._submit("ack", (consumer, seq)).result()

    async def enforce_retention(self) -> int:
        """Apply quota and age now; returns the number of records dropped."""
        n: int = await asyncio.wrap_future(self._submit("retention", None))
        return n

    def enforce_retention_sync(self) -> int:
        n: int = self._submit("retention", None).result()
        return n

    def commit_now(self) -> concurrent.futures.Future[Any]:
        """End a commit cadence's wait: what is queued commits now (a stop, a flush)."""
        return self._submit("call", _nothing)

    def call_in_writer(self, fn: Callable[[sqlite3.Connection], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn(db)`` on the writer thread between transactions (maintenance, tests)."""
        return self._submit("call", fn)

    def _take(self) -> tuple[list[_Work], bool]:
        """Encoder: wait for the next release of the inbox; returns it and whether the
        journal is closing (then it is the last).

        Without a cadence anything submitted is released at once. With one, a release of
        sample batches only waits until the cadence since the last release with samples
        is up (not at all after a quiet spell); anything else (an event, such as an alarm
        transition; an ack; retention; a ``commit_now``; the close) releases at once,
        with the batches that wait before it."""
        with self._cv:
            while not (self._urgent or self._inbox_closed):
                if not self._inbox:
                    self._cv.wait()
                    continue
                left = self._released + self.commit_every_s - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            work, self._inbox, self._urgent = self._inbox, [], False
            return work, self._inbox_closed

    def _encode_loop(self) -> None:
        """Stage 1: serialize and compress each release, in order, while the writer
        commits the previous one (zstd and fsync both run without the GIL); hand it over
        in one piece (in parts at the group bounds)."""
        while True:
            work, closing = self._take()
            if any(_has_batch(op, arg) for op, arg, _ in work):
                self._released = time.monotonic()  # the cadence paces sample releases only
            part: list[_Work] = []
            size = 0
            for op, arg, fut in work:
                if op in ("append", "append_many"):
                    if not fut.set_running_or_notify_cancel():
                        continue  # cancelled before it was taken: it never counted as taken
                    try:
                        rows = [self._encode(x) for x in arg]
                    except (TypeError, ValueError, OverflowError) as e:  # this record fails alone
                        fut.set_exception(e)
                        continue
                    except Exception as e:  # a bug must not strand the caller on its future
                        log.exception("journal encoder: unexpected failure")
                        fut.set_exception(e)
                        continue
                    part.append((op, rows, fut))
                else:
                    part.append((op, arg, fut))
                size += self._weight(part[-1])
                if len(part) >= GROUP_MAX_OPS or size >= GROUP_MAX_BYTES:
                    self._encoded.put(part)
                    part, size = [], 0
            if part:
                self._encoded.put(part)
            if closing:
                self._encoded.put(None)
                return

    def _write_loop(self) -> None:
        """Stage 2: commit everything encoded so far in one transaction (group commit),
        up to the group bounds. The commit cadence is the encoder's: what reaches the
        writer commits at once."""
        while True:
            part = self._encoded.get()
            if part is None:
                return
            work = list(part)
            size = sum(self._weight(w) for w in work)
            stop = False
            while len(work) < GROUP_MAX_OPS and size < GROUP_MAX_BYTES:
                try:
                    nxt = self._encoded.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                work.extend(nxt)
                size += sum(self._weight(w) for w in nxt)
            try:
                self._run_work(work)
            except Exception as e:  # a bug here must not strand callers on futures forever
                log.exception("journal writer: unexpected failure")
                for _op, _arg, fut in work:
                    if not fut.done():
                        fut.set_exception(e)
            if stop:
                return

    @staticmethod
    def _weight(item: _Work) -> int:
        op, arg, _ = item
        if op in ("append", "append_many"):
            return sum(r[4] for r in arg)  # encoded rows: their stored size
        return 64

    def _encode(self, it: Batch | dict[str, Any]) -> _Row:
        if isinstance(it, Batch):
            if not len(it):
                raise ValueError("empty batch: nothing to journal")
            data = it.to_bytes()
            codec = CODEC_RAW
            if self.compress and len(data) > 512:
                data = self._zc.compress(data)
                codec = CODEC_ZSTD
            return (SAMPLES, it.ts_min, it.ts_max, len(it), len(data), codec, data)
        if isinstance(it, dict):
            kind, ts0, ts1, n, data = event_record(it)
            return (kind, ts0, ts1, n, len(data), CODEC_RAW, data)
        raise TypeError(f"the journal takes a Batch or an event dict, not {type(it).__name__}")

    def _run_work(self, work: list[_Work]) -> None:
        db = self._db
        # 1. appends arrive encoded (and marked running) by the encoder; the rest is
        # taken here unless cancelled
        jobs: list[tuple[str, Any, concurrent.futures.Future[Any]]] = []
        for op, arg, fut in work:
            if op in ("append", "append_many"):
                jobs.append((op, arg, fut))
                continue
            if not fut.set_running_or_notify_cancel():
                continue
            if op == "call":
                try:
                    fut.set_result(arg(db))
                except Exception as e:  # the caller's function: its error goes back to the caller
                    fut.set_exception(e)
            else:
                jobs.append((op, arg, fut))
        if not jobs:
            return
        # 2. one transaction for everything
        next_seq = self.last_seq + 1
        added = 0
        top_event = 0
        results: list[tuple[concurrent.futures.Future[Any], Any]] = []
        acks: dict[str, int] = {}
        want_retention = False
        try:
            db.execute("BEGIN IMMEDIATE")
            for op, arg, fut in jobs:
                if op in ("append", "append_many"):
                    seqs = list(range(next_seq, next_seq + len(arg)))
                    db.executemany(
                        "INSERT INTO records(seq, kind, ts_min, ts_max, n, nbytes, codec, data) "
                        "VALUES (?,?,?,?,?,?,?,?)",
                        [(s, *r) for s, r in zip(seqs, arg, strict=True)],
                    )
                    for s, r in zip(seqs, arg, strict=True):
                        if r[0] != SAMPLES:
                            top_event = s
                    next_seq += len(arg)
                    added += sum(r[4] for r in arg)
                    results.append((fut, seqs[0] if op == "append" else seqs))
                elif op == "ack":
                    # checked here, not by the caller: a reader may see a record
                    # committed a moment before last_seq is published
                    name, seq = arg
                    if seq > next_seq - 1:
                        fut.set_exception(ValueError(
                            f"{name}: cannot acknowledge {seq}, the journal ends at {next_seq - 1}"))
                        continue
                    acks[name] = max(acks.get(name, 0), seq)
                    results.append((fut, None))
                elif op == "retention":
                    want_retention = True
                    results.append((fut, "retention"))
            now = self._clock()
            for name, seq in acks.items():
                db.execute(
                    "INSERT INTO cursors(name, seq, updated) VALUES (?, ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET seq=MAX(seq, excluded.seq), updated=excluded.updated",
                    (name, seq, now),
                )
            if added:
                db.execute("UPDATE meta SET value=value+? WHERE key='bytes'", (added,))
            last = next_seq - 1
            total = self.bytes + added
            dropped = gap = None
            if total > self.quota_bytes or want_retention:
                dropped, freed, gap, first = self._retention(db, now, total, last, self.quota_bytes, None)
                total -= freed
            db.execute("COMMIT")
        except Exception as e:  # disk full, I/O error, or a bug: roll back, fail these futures
            self._failed(db, e, [fut for _, _, fut in jobs])
            return
        # 3. publish, then wake everyone
        self.commits += 1
        self.bytes = total
        if last > self.last_seq:
            self.last_seq = last
        if top_event > self.last_event_seq:
            self.last_event_seq = top_event
        if dropped:
            self.first_seq = first
            self.dropped_records += dropped
            if gap:
                self.gaps += 1
        elif added and self.first_seq > last:
            self.first_seq = last
        with self._lock:
            for name, seq in acks.items():
                self._cursors[name] = max(self._cursors.get(name, 0), seq)
        if self.last_error is not None:
            log.info("journal commits again after %d failed commit(s)", self.failed_commits)
            self.last_error = None
        for fut, res in results:
            fut.set_result((dropped or 0) if res == "retention" else res)
        self._notify(events=top_event > 0)

    def _failed(self, db: sqlite3.Connection, e: Exception,
                futs: list[concurrent.futures.Future[Any]]) -> None:
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error as re:
                log.error("journal rollback failed: %s", re)
        try:
            # the file, not our memory, says what is committed (a failed COMMIT may
            # still have landed, e.g. when only the fsync after it failed)
            self._load_counters(db)
        except sqlite3.Error as le:
            log.error("journal: cannot re-read counters: %s", le)
        self.failed_commits += 1
        first_failure = self.last_error is None
        self.last_error = str(e)
        if first_failure:
            log.error("journal commit failed (%d records refused): %s", len(futs), e)
        for fut in futs:
            if not fut.done():
                fut.set_exception(e)

    def _retention(self, db: sqlite3.Connection, now: int, total: int, last: int, quota: int,
                   reason_override: str | None = None) -> tuple[int, int, bool, int]:
        with self._lock:
            active = {c: self._cursors.get(c, 0) for c in self._active}
        return drop_oldest(db, now=now, total=total, last=last, quota=quota, max_age_ns=self.max_age_ns,
                           active=active, name=self.path.name, reason_override=reason_override)

    # ------------------------------------------------------------------ waiting
    def _notify(self, *, events: bool = True) -> None:
        """Wake the waiters (a commit of samples only wakes none that wait for events)."""
        with self._lock:
            listeners = [w for w in self._listeners if events or not w[2]]
        for entry in listeners:
            loop, ev, _ = entry
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:  # that loop is closed; its wait() is gone too
                with self._lock:
                    self._listeners.discard(entry)

    async def wait(self, after: int, timeout: float | None = None,  # noqa: ASYNC109
                   *, events_only: bool = False) -> bool:
        """Wait until a record with sequence > ``after`` is committed (or timeout, or close).
        ``events_only``: a record that is not samples (an event); commits of samples alone
        do not wake this waiter at all (a consumer of events sleeps through the polls).

        Returns whether there is such a record.
        """
        def top() -> int:
            return self.last_event_seq if events_only else self.last_seq

        if top() > after or self._closed:
            return top() > after
        loop = asyncio.get_running_loop()
        ev = asyncio.Event()
        entry = (loop, ev, events_only)
        with self._lock:
            self._listeners.add(entry)
        try:
            deadline = None if timeout is None else loop.time() + timeout
            while top() <= after and not self._closed:
                ev.clear()
                if top() > after or self._closed:
                    break
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    await within(ev.wait(), remaining)
                except TimeoutError:
                    break
            return top() > after
        finally:
            with self._lock:
                self._listeners.discard(entry)

    # ------------------------------------------------------------------ reading
    def _reader_db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._rlocal, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA query_only=1")
            self._rlocal.db = db
            with self._lock:
                self._reader_dbs.append(db)
        return db

    def read_sync(self, after: int, limit: int = 1000, *, max_samples: int | None = None,
                  kinds: tuple[int, ...] | None = None, db: sqlite3.Connection | None = None) -> list[Record]:
        """Records with sequence > ``after``, oldest first; stops at ``limit`` records
        or once ``max_samples`` samples are gathered (at least one record is returned)."""
        db = db or self._reader_db()
        sql = "SELECT seq, kind, ts_min, ts_max, n, codec, data FROM records WHERE seq > ?"
        args: list[Any] = [after]
        if kinds:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            args.extend(kinds)
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit)
        out: list[Record] = []
        total = 0
        for seq, kind, t0, t1, n, codec, data in db.execute(sql, args):
            out.append(Record(seq, kind, t0, t1, n, decode_data(codec, data)))
            total += n if kind == SAMPLES else 0
            if max_samples is not None and total >= max_samples:
                break
        return out

    async def read(self, after: int, limit: int = 1000, *, max_samples: int | None = None,
                   kinds: tuple[int, ...] | None = None) -> list[Record]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._reader, lambda: self.read_sync(after, limit, max_samples=max_samples, kinds=kinds))

    async def run_read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run an arbitrary read-only query on the reader thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, lambda: fn(self._reader_db()))

    # ------------------------------------------------------------------ consumers
    def register(self, name: str, *, start: str = "oldest") -> int:
        """Declare a consumer active in this run; returns its cursor.

        A new consumer starts before the oldest record kept (``start='oldest'``, it
        backfills everything retained) or at the current end (``start='end'``).
        Only active consumers hold retention to account with gap records. Blocks for
        one commit the first time a name is seen.
        """
        if start not in ("oldest", "end"):
            raise ValueError(f"start must be 'oldest' or 'end', not {start!r}")
        with self._lock:
            self._active.add(name)
            known = name in self._cursors
        if not known:
            self.ack_sync(name, 0 if start == "oldest" else self.last_seq)
        cur = self.cursor(name)
        if known and cur < self.first_seq - 1:
            # dropped while this consumer was not running (no gap is written for
            # consumers that are not active): say so, at least
            log.warning("journal: consumer %s resumes at %d, but records %d..%d were dropped by "
                        "retention while it was not registered", name, self.first_seq, cur + 1,
                        self.first_seq - 1)
        return cur

    def unregister(self, name: str) -> None:
        """This consumer stops holding retention to account (its cursor is kept)."""
        with self._lock:
            self._active.discard(name)

    def seq_before_newest(self, ts_ns: int, max_samples: int) -> tuple[int, int, int | None, bool]:
        """Where to start reading the newest sample records ending at or after ``ts_ns``,
        at most ``max_samples`` samples of them: (sequence to read after, samples, the
        oldest such record's ts_min or None, whether the budget cut the window short).
        Walks the rows' fixed columns backwards from the end, not their data."""
        db = self._reader_db()
        total, start, oldest = 0, self.last_seq, None
        sql = "SELECT seq, n, ts_min, ts_max FROM records WHERE kind = ? ORDER BY seq DESC"
        for seq, n, ts_min, ts_max in db.execute(sql, (SAMPLES,)):
            if ts_max < ts_ns:
                break
            if total + n > max_samples:
                return start, total, oldest, True
            total, start, oldest = total + n, seq - 1, ts_min
        return start, total, oldest, False

    def cursor(self, name: str) -> int:
        with self._lock:
            return self._cursors.get(name, 0)

    def lag(self, name: str) -> int:
        return max(0, self.last_seq - self.cursor(name))

    def consumers(self) -> dict[str, int]:
        """Every cursor the journal knows (active in this run or not)."""
        with self._lock:
            return dict(self._cursors)

    def stats(self) -> dict[str, Any]:
        try:
            file_bytes = self.path.stat().st_size
            wal = self.path.with_name(self.path.name + "-wal")
            file_bytes += wal.stat().st_size if wal.exists() else 0
        except OSError:
            file_bytes = 0
        with self._lock:
            active = sorted(self._active)
        return {
            "path": str(self.path),
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "payload_bytes": self.bytes,
            "file_bytes": file_bytes,
            "quota_bytes": self.quota_bytes,
            "max_age_s": self.max_age_ns / 1e9,
            "commits": self.commits,
            "commit_every_s": self.commit_every_s,
            "failed_commits": self.failed_commits,
            "last_error": self.last_error,
            "dropped_records": self.dropped_records,
            "gaps": self.gaps,
            "alive": self.alive,
            "consumers": {n: {"cursor": self.cursor(n), "lag": self.lag(n)} for n in active},
        }

    # ------------------------------------------------------------------ lifecycle
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def alive(self) -> bool:
        """Both worker threads run (for the daemon's watchdog: a journal that cannot
        take data any more should get the service restarted, not pinged along)."""
        return not self._closed and self._encoder.is_alive() and self._writer.is_alive()

    def close(self) -> None:
        """Commit what is queued, stop the writer, checkpoint and close. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._cv:
            self._inbox_closed = True  # the encoder takes what waits, then stops
            self._cv.notify()
        self._encoder.join()
        self._writer.join()
        self._reader.shutdown(wait=True)
        self._notify()
        with self._lock:
            readers, self._reader_dbs = self._reader_dbs, []
        for rdb in readers:
            rdb.close()
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:
            log.warning("journal checkpoint on close failed: %s", e)
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
