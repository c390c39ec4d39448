"""Central's durable state: positions per source, cursors per origin, the forwarding outbox,
and (PostgreSQL) the leases by which several workers share the sources.

Two backends with one SQL text: SQLite (default, one node) and PostgreSQL (several
workers). All calls run on one dedicated thread so the event loop never waits on
the database.

The cursor of an origin only moves by compare-and-set (``UPDATE ... WHERE main_seq =
expected``), so two workers that raced on the same envelope (a lease that expired
mid-request, or a push answered by one worker while another pulled) store it once:
the loser sees its update refused and treats the envelope as a duplicate.

Tables:
- ``sources(id, main_pos, alarms_pos, ...)``: the sender's stream positions (journal
  sequence of a gateway, outbox id of a relay).
- ``origins(id, main_seq, alarms_seq)``: per originating gateway, the last journal
  sequence stored contiguously (main) and the highest seen on the alarms lane.
- ``early(origin, seq)``: events stored ahead through the alarms lane, skipped when
  the main lane reaches them.
- ``outbox(id, lane, origin, first_seq, last_seq, samples, data)``: original envelopes
  to forward to the next level; ``upstream(lane, pos)`` what it acknowledged.
- ``channel_tables(origin, seq, version, ts, channels, doc)``: per origin, the latest
  channel table it journaled (its ``channel_table`` event, stored in journal order:
  the one in force at the origin's main cursor); replaced only by a higher sequence.
- ``leases(id, owner, expires)`` and ``workers(id, seen)`` (PostgreSQL only).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from gateway.store.schema import private_db
from gateway.store.versions import ensure_schema, refuse_newer

log = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS sources (
        id TEXT PRIMARY KEY, main_pos BIGINT NOT NULL DEFAULT 0, alarms_pos BIGINT NOT NULL DEFAULT 0,
        updated BIGINT NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS origins (
        id TEXT PRIMARY KEY, main_seq BIGINT NOT NULL DEFAULT 0, alarms_seq BIGINT NOT NULL DEFAULT 0,
        updated BIGINT NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS early (
        origin TEXT NOT NULL, seq BIGINT NOT NULL, PRIMARY KEY (origin, seq))""",
    """CREATE TABLE IF NOT EXISTS outbox (
        id {serial}, lane TEXT NOT NULL, origin TEXT NOT NULL, first_seq BIGINT NOT NULL,
        last_seq BIGINT NOT NULL, samples BIGINT NOT NULL, created BIGINT NOT NULL, data {blob} NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS upstream (lane TEXT PRIMARY KEY, pos BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS channel_tables (
        origin TEXT PRIMARY KEY, seq BIGINT NOT NULL, version TEXT NOT NULL, ts BIGINT NOT NULL,
        channels BIGINT NOT NULL, doc TEXT NOT NULL, updated BIGINT NOT NULL)""",
]
_PG_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS leases (
        id TEXT PRIMARY KEY, owner TEXT, expires TIMESTAMPTZ NOT NULL DEFAULT 'epoch')""",
    """CREATE TABLE IF NOT EXISTS workers (id TEXT PRIMARY KEY, seen TIMESTAMPTZ NOT NULL)""",
]


@dataclass
class OutboxRow:
    id: int
    lane: str
    origin: str
    first_seq: int
    last_seq: int
    samples: int
    data: bytes


@dataclass
class Commit:
    """One envelope's effect on the state, applied atomically by ``commit``."""

    source: str
    lane: str
    source_pos: int
    origin: str
    expect_main: int
    new_main: int
    alarms_seq: int
    early_add: list[int]
    outbox: tuple[str, int, int, int, bytes] | None = None  # lane, first, last, samples, data
    tables: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (origin seq, channel_table)


@dataclass
class TableRow:
    """The latest channel table of an origin."""

    origin: str
    seq: int
    version: str
    ts: int
    channels: int
    doc: dict[str, Any]
    updated: int


class State:
    """Backend-neutral state store; subclasses supply the connection and dialect."""

    placeholder = "?"
    serial = "INTEGER PRIMARY KEY AUTOINCREMENT"
    blob = "BLOB"

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="central-state")
        self.db: Any = None

    # -- plumbing
    def _q(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", "%s")

    def _x(self, sql: str, args: Iterable[Any] = ()) -> Any:
        return self.db.execute(self._q(sql), tuple(args))

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def _connect(self) -> Any:
        raise NotImplementedError

    def _tx(self) -> Any:
        raise NotImplementedError

    def _init_sync(self) -> None:
        self.db = self._connect()
        with self._tx():
            self._lock_ddl()
            for sql in _SCHEMA:
                self._x(sql.format(serial=self.serial, blob=self.blob))

    def _lock_ddl(self) -> None:
        """Serialise creating the schema with other processes (nothing to do for SQLite)."""

    async def open(self) -> None:
        await self._run(self._init_sync)

    async def close(self) -> None:
        def _close() -> None:
            if self.db is not None:
                self.db.close()
                self.db = None

        await self._run(_close)
        self._pool.shutdown(wait=True)

    # -- reads
    def _positions(self, source: str) -> dict[str, int]:
        row = self._x("SELECT main_pos, alarms_pos FROM sources WHERE id=?", (source,)).fetchone()
        return {"main": int(row[0]), "alarms": int(row[1])} if row else {"main": 0, "alarms": 0}

    async def positions(self, source: str) -> dict[str, int]:
        return await self._run(lambda: self._positions(source))

    def _origin(self, origin: str) -> tuple[int, int, set[int]]:
        row = self._x("SELECT main_seq, alarms_seq FROM origins WHERE id=?", (origin,)).fetchone()
        early = {int(r[0]) for r in self._x("SELECT seq FROM early WHERE origin=?", (origin,)).fetchall()}
        return (int(row[0]), int(row[1]), early) if row else (0, 0, early)

    async def origin(self, origin: str) -> tuple[int, int, set[int]]:
        """(main_seq, alarms_seq, early seqs) of an origin."""
        return await self._run(lambda: self._origin(origin))

    async def all_origins(self) -> dict[str, tuple[int, int]]:
        def q() -> dict[str, tuple[int, int]]:
            return {r[0]: (int(r[1]), int(r[2]))
                    for r in self._x("SELECT id, main_seq, alarms_seq FROM origins").fetchall()}

        return await self._run(q)

    # -- the one write path of ingest
    def _commit(self, c: Commit) -> bool:
        now = time.time_ns()
        with self._tx():
            self._x("INSERT INTO origins(id) VALUES (?) ON CONFLICT (id) DO NOTHING", (c.origin,))
            cur = self._x("UPDATE origins SET main_seq=?, alarms_seq=?, updated=? WHERE id=? AND main_seq=?",
                          (c.new_main, c.alarms_seq, now, c.origin, c.expect_main))
            if cur.rowcount != 1:
                raise _Conflict()
            for s in c.early_add:
                self._x("INSERT INTO early(origin, seq) VALUES (?, ?) ON CONFLICT DO NOTHING", (c.origin, s))
            if c.new_main > c.expect_main:
                self._x("DELETE FROM early WHERE origin=? AND seq<=?", (c.origin, c.new_main))
            if c.source:
                self._set_pos(c.source, c.lane, c.source_pos, now)
            for seq, doc in c.tables:
                self._put_table(c.origin, seq, doc, now)
            if c.outbox is not None:
                lane, first, last, samples, data = c.outbox
                self._x("INSERT INTO outbox(lane, origin, first_seq, last_seq, samples, created, data) "
                        "VALUES (?,?,?,?,?,?,?)", (lane, c.origin, first, last, samples, now, data))
        return True

    def _put_table(self, origin: str, seq: int, doc: dict[str, Any], now: int) -> None:
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
        self._x("INSERT INTO channel_tables(origin, seq, version, ts, channels, doc, updated) "
                "VALUES (?,?,?,?,?,?,?) ON CONFLICT (origin) DO UPDATE SET seq=excluded.seq, "
                "version=excluded.version, ts=excluded.ts, channels=excluded.channels, doc=excluded.doc, "
                "updated=excluded.updated WHERE channel_tables.seq < excluded.seq",
                (origin, seq, str(doc.get("table_version") or ""), int(doc.get("ts") or 0),
                 len(doc.get("channels") or []), text, now))

    def _tables(self, origin: str | None) -> dict[str, TableRow]:
        sql = "SELECT origin, seq, version, ts, channels, doc, updated FROM channel_tables"
        rows = self._x(sql + " WHERE origin=?", (origin,)) if origin else self._x(sql)
        out = {}
        for r in rows.fetchall():
            try:
                doc = json.loads(r[5])
            except ValueError:
                log.error("channel table of %s in the state store is unreadable; ignored", r[0])
                continue
            out[r[0]] = TableRow(r[0], int(r[1]), r[2], int(r[3]), int(r[4]), doc, int(r[6]))
        return out

    async def channel_tables(self) -> dict[str, TableRow]:
        """The latest channel table of every origin that sent one."""
        return await self._run(lambda: self._tables(None))

    async def channel_table(self, origin: str) -> TableRow | None:
        return (await self._run(lambda: self._tables(origin))).get(origin)

    def _set_pos(self, source: str, lane: str, pos: int, now: int) -> None:
        col = "main_pos" if lane == "main" else "alarms_pos"
        self._x("INSERT INTO sources(id) VALUES (?) ON CONFLICT (id) DO NOTHING", (source,))
        self._x(f"UPDATE sources SET {col}=?, updated=? WHERE id=? AND {col}<?", (pos, now, source, pos))

    async def commit(self, c: Commit) -> bool:
        """Apply an envelope; False when another worker moved the origin first."""

        def run() -> bool:
            try:
                return self._commit(c)
            except _Conflict:
                return False

        return await self._run(run)

    async def set_position(self, source: str, lane: str, pos: int) -> None:
        def run() -> None:
            with self._tx():
                self._set_pos(source, lane, pos, time.time_ns())

        await self._run(run)

    # -- outbox (forwarding to the next level)
    async def outbox_read(self, lane: str, after: int, max_bytes: int) -> list[OutboxRow]:
        def run() -> list[OutboxRow]:
            out: list[OutboxRow] = []
            total = 0
            rows = self._x("SELECT id, lane, origin, first_seq, last_seq, samples, data FROM outbox "
                           "WHERE lane=? AND id>? ORDER BY id LIMIT 1000", (lane, after)).fetchall()
            for r in rows:
                out.append(OutboxRow(int(r[0]), r[1], r[2], int(r[3]), int(r[4]), int(r[5]), bytes(r[6])))
                total += len(r[6])
                if total >= max_bytes:
                    break
            return out

        return await self._run(run)

    async def outbox_bounds(self) -> tuple[int, int]:
        def run() -> tuple[int, int]:
            row = self._x("SELECT MIN(id), MAX(id) FROM outbox").fetchone()
            return (int(row[0] or 0), int(row[1] or 0))

        return await self._run(run)

    async def upstream_positions(self) -> dict[str, int]:
        def run() -> dict[str, int]:
            d = {"main": 0, "alarms": 0}
            d.update({r[0]: int(r[1]) for r in self._x("SELECT lane, pos FROM upstream").fetchall()})
            return d

        return await self._run(run)

    async def upstream_ack(self, lane: str, pos: int) -> None:
        def run() -> None:
            with self._tx():
                self._x("INSERT INTO upstream(lane, pos) VALUES (?, ?) ON CONFLICT (lane) DO UPDATE SET "
                        "pos=excluded.pos WHERE upstream.pos < excluded.pos", (lane, pos))

        await self._run(run)

    async def outbox_prune(self, older_than_ns: int) -> int:
        """Drop forwarded envelopes the next level acknowledged on both lanes and that are old."""

        def run() -> int:
            with self._tx():
                pos = {r[0]: int(r[1]) for r in self._x("SELECT lane, pos FROM upstream").fetchall()}
                n = 0
                for lane in ("main", "alarms"):
                    cur = self._x("DELETE FROM outbox WHERE lane=? AND id<=? AND created<?",
                                  (lane, pos.get(lane, 0), older_than_ns))
                    n += max(cur.rowcount, 0)
                return n

        return await self._run(run)

    # -- leases (only meaningful with several workers)
    async def claim(self, worker: str, sources: list[str], lease_s: float) -> list[str]:
        return list(sources)

    async def release(self, worker: str, sources: list[str]) -> None:
        return None


class _Conflict(Exception):
    pass


class SqliteState(State):
    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        private_db(self.path)  # 0600 whatever the umask: the state names plants and positions
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        refuse_newer(db, self.path, name="central state", version=1)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        script = "".join(sql.format(serial=self.serial, blob=self.blob) + ";\n" for sql in _SCHEMA)
        try:
            # 0: a file from before versions; 1: _SCHEMA (gateway/store/versions.py)
            ensure_schema(db, self.path, name="central state", version=1, create=script, steps={1: script})
        except BaseException:
            db.close()
            raise
        return db

    def _tx(self) -> Any:
        return _SqliteTx(self.db)


class _SqliteTx:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, et: object, e: object, tb: object) -> None:
        self.db.execute("COMMIT" if et is None else "ROLLBACK")


class PgState(State):
    """PostgreSQL state shared by several workers; sources are shared by row leases."""

    placeholder = "%s"
    serial = "BIGSERIAL PRIMARY KEY"
    blob = "BYTEA"

    def __init__(self, dsn: str):
        super().__init__()
        self.dsn = dsn

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(self.dsn, autocommit=True)

    def _tx(self) -> Any:
        return self.db.transaction()

    def _lock_ddl(self) -> None:
        # several workers may start at once on an empty database: CREATE ... IF NOT EXISTS
        # racing in two sessions fails (pg_type's unique index), so serialise the DDL
        self._x("SELECT pg_advisory_xact_lock(727001)")

    def _init_sync(self) -> None:
        super()._init_sync()
        with self._tx():
            self._lock_ddl()
            for sql in _PG_SCHEMA:
                self._x(sql)

    async def claim(self, worker: str, sources: list[str], lease_s: float) -> list[str]:
        """Renew this worker's leases and take free or expired ones, up to a fair share.

        Fair share = ceil(sources / live workers), live = seen within one lease. Rows
        another worker is claiming right now are skipped (``FOR UPDATE SKIP LOCKED``),
        never waited for.
        """

        def run() -> list[str]:
            iv = f"{float(lease_s)} seconds"
            with self._tx():
                self._x("INSERT INTO workers(id, seen) VALUES (%s, now()) "
                        "ON CONFLICT (id) DO UPDATE SET seen=now()", (worker,))
                for s in sources:
                    self._x("INSERT INTO leases(id) VALUES (%s) ON CONFLICT DO NOTHING", (s,))
            with self._tx():
                live = int(self._x("SELECT count(*) FROM workers WHERE seen > now() - %s::interval",
                                   (iv,)).fetchone()[0])
                share = -(-len(sources) // max(1, live))
                mine = [r[0] for r in self._x(
                    "UPDATE leases SET expires = now() + %s::interval WHERE owner=%s AND id = ANY(%s) "
                    "RETURNING id", (iv, worker, sources)).fetchall()]
                if len(mine) > share:
                    # more workers came up: hand back the surplus
                    extra = sorted(mine)[share:]
                    self._x("UPDATE leases SET owner=NULL, expires='epoch' WHERE owner=%s AND id = ANY(%s)",
                            (worker, extra))
                    mine = sorted(mine)[:share]
                want = share - len(mine)
                if want > 0:
                    got = [r[0] for r in self._x(
                        "UPDATE leases SET owner=%s, expires=now() + %s::interval WHERE id IN ("
                        " SELECT id FROM leases WHERE id = ANY(%s) AND (owner IS NULL OR expires < now())"
                        " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id",
                        (worker, iv, sources, want)).fetchall()]
                    mine += got
            return sorted(mine)

        return await self._run(run)

    async def release(self, worker: str, sources: list[str]) -> None:
        def run() -> None:
            with self._tx():
                self._x("UPDATE leases SET owner=NULL, expires='epoch' WHERE owner=%s AND id = ANY(%s)",
                        (worker, sources))
                self._x("DELETE FROM workers WHERE id=%s", (worker,))

        await self._run(run)
