"""Central's events in PostgreSQL: alarms, gaps, register changes, channel tables, config
changes and set-aside markers, one row per (origin, sequence), beside the samples in
VictoriaMetrics (central/store_vm.py).

Idempotent by construction: the primary key is (origin, seq) and rows are inserted
``ON CONFLICT DO NOTHING``, so an envelope stored again after a worker died before its
cursor commit adds nothing. ``origin_data`` keeps, per gateway, the newest sample time
and sequence stored (the "late gateways" query; ``GREATEST`` so a replay never moves it
back). Rows carry the channel's place in the plant (channel name, device, area, hazard
source, site) from the channel table in force, so "the alarms of an area" is one index
scan. Personal fields of register records (``personal`` paths) are left out, as the
gateway's historian leaves them out of InfluxDB.

Retention (docs/central.md, *Retention*): rows are kept ≥ 1 year; ``prune(before_ns)``
deletes older ones, called hourly by every worker with ``victoriametrics.events_keep``
(central/node.py, ``prune_events``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from gateway.core.personal import redact

log = logging.getLogger(__name__)

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS events (
        origin TEXT NOT NULL,
        seq BIGINT NOT NULL,
        ts BIGINT NOT NULL,
        type TEXT NOT NULL,
        level TEXT,
        channel TEXT,
        device TEXT,
        area TEXT,
        hazard_source TEXT,
        site TEXT,
        doc JSONB NOT NULL,
        stored TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (origin, seq))""",
    # the queries: one gateway's events by time; an area's / a hazard source's alarms by
    # time; everything by type and time (gaps, config changes), and the pruning by time
    "CREATE INDEX IF NOT EXISTS events_origin_ts ON events (origin, ts)",
    "CREATE INDEX IF NOT EXISTS events_area_ts ON events (area, ts) WHERE area IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS events_hazard_ts ON events (hazard_source, ts) "
    "WHERE hazard_source IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS events_type_ts ON events (type, ts)",
    """CREATE TABLE IF NOT EXISTS origin_data (
        origin TEXT PRIMARY KEY,
        last_ts BIGINT NOT NULL,
        last_seq BIGINT NOT NULL,
        updated TIMESTAMPTZ NOT NULL DEFAULT now())""",
    "CREATE INDEX IF NOT EXISTS origin_data_last_ts ON origin_data (last_ts)",
]

MAX_DOC = 1 << 20  # a JSON document larger than this is stored as its summary


@dataclass
class EventRow:
    origin: str
    seq: int
    ts: int
    type: str
    level: str | None
    channel: str | None
    device: str | None
    area: str | None
    hazard_source: str | None
    site: str | None
    doc: dict[str, Any]


def _s(v: Any, n: int = 200) -> str | None:
    return v[:n] if isinstance(v, str) and v else None


def event_row(origin: str, seq: int, ev: Mapping[str, Any], ctags: Mapping[str, Any] | None) -> EventRow:
    """One journal event as a row; ``ctags`` are its channel's tags when it names one."""
    doc = dict(ev)
    personal = doc.get("personal")
    if doc.get("type") == "register" and isinstance(personal, list) and isinstance(doc.get("data"), dict):
        doc["data"] = redact(doc["data"], [p for p in personal if isinstance(p, str)], "omitted")
    ts = doc.get("ts")
    ts = int(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) else 0
    ct = dict(ctags or {})
    channel = _s(doc.get("channel")) or _s(ct.get("channel"))
    if ct.get("channel") not in (None, channel):
        ct = {}  # the event names another channel than the index's: keep only its own name
    text = json.dumps(doc, default=str, ensure_ascii=False)
    if len(text) > MAX_DOC:
        doc = {k: doc[k] for k in ("type", "ts", "table_version", "fingerprint") if k in doc}
        doc["truncated_bytes"] = len(text)
    return EventRow(origin, seq, ts, _s(doc.get("type"), 64) or "event", _s(doc.get("level"), 32), channel,
                    _s(doc.get("device")) or _s(ct.get("device")), _s(doc.get("area")) or _s(ct.get("area")),
                    _s(doc.get("hazard_source")) or _s(ct.get("hazard_source")), _s(ct.get("site")), doc)


class EventStore:
    """Events into PostgreSQL on one thread of its own (psycopg is blocking)."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.db: Any = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="central-events")
        self.rows_written = 0

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _connect(self) -> None:
        import psycopg

        if self.db is None or self.db.closed:
            self.db = psycopg.connect(self.dsn, autocommit=True)

    async def open(self) -> None:
        def run() -> None:
            self._connect()
            with self.db.transaction():
                self.db.execute("SELECT pg_advisory_xact_lock(727002)")  # workers start at once
                for sql in SCHEMA:
                    self.db.execute(sql)

        await self._run(run)

    async def close(self) -> None:
        def run() -> None:
            if self.db is not None:
                self.db.close()

        await self._run(run)
        self._pool.shutdown(wait=False)

    async def put(self, rows: list[EventRow], progress: Mapping[str, tuple[int, int]]) -> None:
        """Insert the rows (duplicates ignored) and move ``origin_data`` forward:
        ``progress`` is origin → (newest sample ts, last seq) of what was stored."""

        def run() -> None:
            self._connect()
            with self.db.transaction(), self.db.cursor() as c:
                if rows:
                    c.executemany(
                        "INSERT INTO events (origin, seq, ts, type, level, channel, device, area, "
                        "hazard_source, site, doc) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s::jsonb) "
                        "ON CONFLICT (origin, seq) DO NOTHING",
                        [(r.origin, r.seq, r.ts, r.type, r.level, r.channel, r.device, r.area,
                          r.hazard_source, r.site, json.dumps(r.doc, default=str, ensure_ascii=False))
                         for r in rows])
                if progress:
                    c.executemany(
                        "INSERT INTO origin_data (origin, last_ts, last_seq) VALUES (%s,%s,%s) "
                        "ON CONFLICT (origin) DO UPDATE SET last_ts=GREATEST(origin_data.last_ts, "
                        "EXCLUDED.last_ts), last_seq=GREATEST(origin_data.last_seq, EXCLUDED.last_seq), "
                        "updated=now()", [(o, t, s) for o, (t, s) in sorted(progress.items())])
            self.rows_written += len(rows)

        await self._run(run)

    async def query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            self._connect()
            return list(self.db.execute(sql, params).fetchall())

        return await self._run(run)

    async def prune(self, before_ns: int) -> int:
        """Delete events older than ``before_ns`` (keep ≥ 1 year: docs/central.md)."""

        def run() -> int:
            self._connect()
            return int(self.db.execute("DELETE FROM events WHERE ts < %s", (before_ns,)).rowcount)

        return int(await self._run(run))
