"""The journal: the gateway's one durable truth (SQLite in WAL mode).

A sample or an event counts as taken only once the transaction that holds it is
committed here. Records are numbered by a sequence that never goes back (SQLite
AUTOINCREMENT): a sample record stores a whole Batch columnar in one row, an event
record one JSON document (alarm transitions, gap records, register changes, ...).

Consumers (historian, MQTT, uplink) each keep a named cursor: the last sequence
their target acknowledged. They read after it and advance it only on success.

Retention is by a byte quota and an age. When it must drop records a registered
consumer has not acknowledged, the oldest go first and a ``gap`` event is appended
that says which sequence range and how many samples were lost, so the loss travels
upstream instead of disappearing.

All writes go through one dedicated thread that commits everything pending in one
transaction (group commit): the event loop never blocks on fsync, and a burst of
small batches costs one fsync. Reads use their own connection in another thread.
After ``kill -9`` SQLite's WAL recovery on open is all the repair there is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from gateway.batch import Batch

log = logging.getLogger(__name__)

SAMPLES = 1
EVENT = 2

CODEC_RAW = 0
CODEC_ZSTD = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind    INTEGER NOT NULL,
    ts_min  INTEGER NOT NULL,
    ts_max  INTEGER NOT NULL,
    n       INTEGER NOT NULL,
    nbytes  INTEGER NOT NULL,
    codec   INTEGER NOT NULL,
    data    BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    name    TEXT PRIMARY KEY,
    seq     INTEGER NOT NULL,
    updated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key     TEXT PRIMARY KEY,
    value   INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta(key, value) VALUES ('bytes', 0);
"""


@dataclass(slots=True)
class Record:
    seq: int
    kind: int
    ts_min: int
    ts_max: int
    n: int
    data: bytes

    def batch(self) -> Batch:
        if self.kind != SAMPLES:
            raise TypeError(f"record {self.seq} is an event, not samples")
        return Batch.from_bytes(self.data)

    def event(self) -> dict[str, Any]:
        if self.kind != EVENT:
            raise TypeError(f"record {self.seq} holds samples, not an event")
        doc: dict[str, Any] = json.loads(self.data)
        return doc


_RETENTION = object()


class JournalClosed(RuntimeError):
    pass


def event_record(event: dict[str, Any]) -> tuple[int, int, int, int, bytes]:
    ts = int(event.get("ts", 0))
    return (EVENT, ts, ts, 1, json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode())


class Journal:
    """Durable, sequence-numbered store of batches and events with consumer cursors."""

    def __init__(
        self,
        path: str | Path,
        *,
        quota_bytes: int = 2 * 10**9,
        max_age_s: float = 30 * 86400.0,
        sync: str = "full",
        compress: bool = True,
        clock: Callable[[], int] = time.time_ns,
    ):
        self.path = Path(path)
        self.quota_bytes = quota_bytes
        self.max_age_ns = int(max_age_s * 1e9)
        self.compress = compress
        self._clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._connect(sync)
        with self._db:
            self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name='records'").fetchone()
        self.last_seq: int = row[0] if row else 0
        first = self._db.execute("SELECT MIN(seq) FROM records").fetchone()[0]
        self.first_seq: int = first if first is not None else self.last_seq + 1
        self.bytes: int = self._db.execute("SELECT value FROM meta WHERE key='bytes'").fetchone()[0]
        self._cursors: dict[str, int] = dict(self._db.execute("SELECT name, seq FROM cursors").fetchall())
        self._active: set[str] = set()
        self._sync = sync
        self._zc = zstandard.ZstdCompressor(level=1)
        self._queue: queue.SimpleQueue[tuple[str, Any, concurrent.futures.Future[Any]] | None] = (
            queue.SimpleQueue())
        self._closed = False
        self._listeners: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._writer = threading.Thread(target=self._write_loop, name="journal-writer", daemon=True)
        self._writer.start()
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal-reader")
        self._rlocal = threading.local()
        self.commits = 0
        self.dropped_records = 0

    def _connect(self, sync: str) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        if not self.path.exists() or self.path.stat().st_size == 0:
            db.execute("PRAGMA page_size=16384")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        db.execute("PRAGMA wal_autocheckpoint=4096")
        return db

    # ------------------------------------------------------------------ writing
    def _submit(self, op: str, arg: Any) -> concurrent.futures.Future[Any]:
        if self._closed:
            raise JournalClosed("journal is closed")
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put((op, arg, fut))
        return fut

    def _encode_batch(self, b: Batch) -> tuple[int, int, int, int, bytes, int]:
        raw = b.to_bytes()
        return (SAMPLES, b.ts_min, b.ts_max, len(b), raw, CODEC_RAW)

    def submit_batch(self, batch: Batch) -> concurrent.futures.Future[int]:
        """Queue a batch; the future resolves to its sequence once committed."""
        return self._submit("append", [batch])

    def submit_event(self, event: dict[str, Any]) -> concurrent.futures.Future[int]:
        return self._submit("append", [event])

    def submit_many(self, items: list[Batch | dict[str, Any]]) -> concurrent.futures.Future[list[int]]:
        """Queue several records committed together; resolves to their sequences."""
        return self._submit("append_many", items)

    async def append_batch(self, batch: Batch) -> int:
        seq: int = await asyncio.wrap_future(self.submit_batch(batch))
        return seq

    async def append_event(self, event: dict[str, Any]) -> int:
        seq: int = await asyncio.wrap_future(self.submit_event(event))
        return seq

    async def append_many(self, items: list[Batch | dict[str, Any]]) -> list[int]:
        seqs: list[int] = await asyncio.wrap_future(self.submit_many(items))
        return seqs

    def append_sync(self, items: list[Batch | dict[str, Any]]) -> list[int]:
        seqs: list[int] = self.submit_many(items).result()
        return seqs

    async def ack(self, consumer: str, seq: int) -> None:
        """Advance a consumer's cursor (durably) after its target acknowledged up to ``seq``."""
        await asyncio.wrap_future(self._submit("ack", (consumer, seq)))

    def ack_sync(self, consumer: str, seq: int) -> None:
        self._submit("ack", (consumer, seq)).result()

    async def enforce_retention(self) -> int:
        """Apply quota and age now; returns the number of records dropped."""
        n: int = await asyncio.wrap_future(self._submit("retention", None))
        return n

    def _write_loop(self) -> None:
        db = self._db
        while True:
            item = self._queue.get()
            if item is None:
                return
            work = [item]
            stop = False
            while len(work) < 10_000:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                work.append(nxt)
            self._run_work(db, work)
            if stop:
                return

    def _run_work(self, db: sqlite3.Connection, work: list[tuple[str, Any, concurrent.futures.Future[Any]]]) -> None:
        results: list[tuple[concurrent.futures.Future[Any], Any]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            added_bytes = 0
            for op, arg, fut in work:
                if op == "append":
                    seqs, nb = self._insert(db, arg)
                    added_bytes += nb
                    results.append((fut, seqs[0]))
                elif op == "append_many":
                    seqs, nb = self._insert(db, arg)
                    added_bytes += nb
                    results.append((fut, seqs))
                elif op == "ack":
                    name, seq = arg
                    db.execute(
                        "INSERT INTO cursors(name, seq, updated) VALUES (?, ?, ?) "
                        "ON CONFLICT(name) DO UPDATE SET seq=MAX(seq, excluded.seq), updated=excluded.updated",
                        (name, seq, self._clock()),
                    )
                    results.append((fut, None))
                elif op == "retention":
                    results.append((fut, _RETENTION))
            if added_bytes:
                db.execute("UPDATE meta SET value=value+? WHERE key='bytes'", (added_bytes,))
            self.bytes += added_bytes
            dropped = 0
            if self.bytes > self.quota_bytes or any(op == "retention" for op, _, _ in work):
                dropped = self._retention(db)
            db.execute("COMMIT")
        except BaseException as e:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._reload_counters(db)
            log.error("journal commit failed: %s", e)
            for _op, _arg, fut in work:
                if not fut.done():
                    fut.set_exception(e if isinstance(e, Exception) else RuntimeError(str(e)))
            return
        self.commits += 1
        for op, arg, _fut in work:
            if op == "ack":
                name, seq = arg
                self._cursors[name] = max(self._cursors.get(name, 0), seq)
        for fut, res in results:
            if fut.set_running_or_notify_cancel():
                fut.set_result(dropped if res is _RETENTION else res)
        self._notify()

    def _insert(self, db: sqlite3.Connection, items: Iterable[Batch | dict[str, Any]]) -> tuple[list[int], int]:
        seqs: list[int] = []
        nbytes = 0
        for it in items:
            if isinstance(it, Batch):
                kind, ts0, ts1, n, data, codec = self._encode_batch(it)
                if self.compress and len(data) > 512:
                    data = self._zc.compress(data)
                    codec = CODEC_ZSTD
            else:
                kind, ts0, ts1, n, data = event_record(it)
                codec = CODEC_RAW
            cur = db.execute(
                "INSERT INTO records(kind, ts_min, ts_max, n, nbytes, codec, data) VALUES (?,?,?,?,?,?,?)",
                (kind, ts0, ts1, n, len(data), codec, data),
            )
            seq = cur.lastrowid
            assert seq is not None
            seqs.append(seq)
            nbytes += len(data)
            self.last_seq = seq
            if self.first_seq > seq:
                self.first_seq = seq
        return seqs, nbytes

    def _reload_counters(self, db: sqlite3.Connection) -> None:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='records'").fetchone()
        self.last_seq = row[0] if row else 0
        first = db.execute("SELECT MIN(seq) FROM records").fetchone()[0]
        self.first_seq = first if first is not None else self.last_seq + 1
        self.bytes = db.execute("SELECT value FROM meta WHERE key='bytes'").fetchone()[0]

    def _retention(self, db: sqlite3.Connection) -> int:
        """Drop oldest records over quota or age; record a gap for unacknowledged ones."""
        cutoff = self._clock() - self.max_age_ns
        target = int(self.quota_bytes * 0.9) if self.bytes > self.quota_bytes else self.bytes
        dropped_upto = 0
        freed = 0
        rows_dropped = 0
        while True:
            rows = db.execute(
                "SELECT seq, ts_max, nbytes FROM records WHERE seq > ? ORDER BY seq LIMIT 512",
                (dropped_upto,),
            ).fetchall()
            if not rows:
                break
            stop = False
            for seq, ts_max, nb in rows:
                if self.bytes - freed > target or ts_max < cutoff:
                    dropped_upto = seq
                    freed += nb
                    rows_dropped += 1
                else:
                    stop = True
                    break
            if stop:
                break
        if not rows_dropped:
            return 0
        active = [self._cursors.get(c, 0) for c in self._active]
        low = min(active) if active else dropped_upto
        if low < dropped_upto:
            lost = db.execute(
                "SELECT MIN(seq), MAX(seq), COALESCE(SUM(CASE kind WHEN 1 THEN n ELSE 0 END), 0), "
                "SUM(CASE kind WHEN 2 THEN 1 ELSE 0 END), MIN(ts_min), MAX(ts_max) "
                "FROM records WHERE seq > ? AND seq <= ?",
                (low, dropped_upto),
            ).fetchone()
        else:
            lost = None
        db.execute("DELETE FROM records WHERE seq <= ?", (dropped_upto,))
        db.execute("UPDATE meta SET value=value-? WHERE key='bytes'", (freed,))
        self.bytes -= freed
        self.dropped_records += rows_dropped
        self.first_seq = dropped_upto + 1
        if lost is not None and lost[0] is not None:
            reason = "quota" if freed and self.bytes + freed > self.quota_bytes else "age"
            gap = {
                "type": "gap", "ts": self._clock(), "from_seq": lost[0], "to_seq": lost[1],
                "samples": lost[2], "events": lost[3], "ts_from": lost[4], "ts_to": lost[5],
                "reason": reason,
            }
            log.warning("journal %s: dropped unsent records %d..%d (%d samples) to stay within %s",
                        self.path.name, lost[0], lost[1], lost[2], reason)
            nb = self._insert(db, [gap])[1]
            db.execute("UPDATE meta SET value=value+? WHERE key='bytes'", (nb,))
            self.bytes += nb
        return rows_dropped

    # ------------------------------------------------------------------ waiting
    def _notify(self) -> None:
        for loop, ev in list(self._listeners):
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:  # loop closed
                self._listeners.remove((loop, ev))

    async def wait(self, after: int, timeout: float | None = None) -> bool:
        """Wait until a record with sequence > ``after`` is committed (or timeout)."""
        if self.last_seq > after:
            return True
        ev = asyncio.Event()
        entry = (asyncio.get_running_loop(), ev)
        self._listeners.append(entry)
        try:
            deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
            while self.last_seq <= after:
                ev.clear()
                if self.last_seq > after:
                    break
                remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
                if remaining is not None and remaining <= 0:
                    return False
                try:
                    await asyncio.wait_for(ev.wait(), remaining)
                except TimeoutError:
                    return self.last_seq > after
            return True
        finally:
            self._listeners.remove(entry)

    # ------------------------------------------------------------------ reading
    def _reader_db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._rlocal, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA query_only=1")
            self._rlocal.db = db
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
        dz = zstandard.ZstdDecompressor()
        for seq, kind, t0, t1, n, codec, data in db.execute(sql, args):
            if codec == CODEC_ZSTD:
                data = dz.decompress(data)
            out.append(Record(seq, kind, t0, t1, n, bytes(data)))
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
        Only active consumers hold retention to account with gap records.
        """
        self._active.add(name)
        if name not in self._cursors:
            seq = 0 if start == "oldest" else self.last_seq
            self.ack_sync(name, seq)
        return self._cursors[name]

    def cursor(self, name: str) -> int:
        return self._cursors.get(name, 0)

    def lag(self, name: str) -> int:
        return max(0, self.last_seq - self._cursors.get(name, 0))

    def stats(self) -> dict[str, Any]:
        try:
            file_bytes = self.path.stat().st_size
            wal = self.path.with_name(self.path.name + "-wal")
            file_bytes += wal.stat().st_size if wal.exists() else 0
        except OSError:
            file_bytes = 0
        return {
            "path": str(self.path),
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "payload_bytes": self.bytes,
            "file_bytes": file_bytes,
            "quota_bytes": self.quota_bytes,
            "commits": self.commits,
            "dropped_records": self.dropped_records,
            "consumers": {n: {"cursor": self.cursor(n), "lag": self.lag(n)} for n in sorted(self._active)},
        }

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._writer.join()
        self._reader.shutdown(wait=True)
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as e:
            log.warning("journal checkpoint on close failed: %s", e)
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
