"""Central's province-scale store: samples into VictoriaMetrics, events into PostgreSQL.

``VmStore.put(origin, records, table)`` is called by ingest (central/ingest.py) for the
records of an envelope *before* the origin's cursor is committed, and returns only once
VictoriaMetrics answered 204 for every sample line and PostgreSQL committed every
event row. So a worker killed at any moment loses nothing (its cursor did not move:
the envelope is fetched again) and doubles nothing:

- samples: the same (origin, sequence) gives the same series (tags from the channel
  table in force at the cursor, in the shared state) with the same millisecond
  timestamps and values; VictoriaMetrics runs with ``-dedup.minScrapeInterval=1ms``
  and keeps one sample per series and millisecond (a replay overwrites itself);
- events: PostgreSQL's primary key (origin, seq), ``ON CONFLICT DO NOTHING``.

Schema (docs/central.md): ``<metric>_value`` and ``<metric>_quality`` (the numeric
quality code, docs/historian.md) with the historian's tags: gateway, site, device,
channel, kind, unit, area, hazard_source. A sample without a usable value (bad, NaN)
has a quality point only. Written as VictoriaMetrics' JSON lines (``format: json``,
central/vmimport.py: a series' labels once per envelope) or InfluxDB line protocol
(``format: influx``, gateway/historian/lineproto.py): the same series, times and values
either way, so a replay deduplicates across a change of format.

Large batches and back-pressure: lines from all gateways are gathered into one write
(up to ``batch_bytes``, waiting at most ``linger``), ``concurrency`` writes in flight;
at most ``max_pending`` bytes wait for the store. Past that, ``put`` waits, so ingest
stops: pulls stop fetching, pushes are answered late, and the data stays in the
gateways' journals. A failing store is retried with backoff for ever (ERROR once,
INFO on recovery), failing over between the configured URLs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Mapping
from typing import Any

import httpx

from central import vmimport
from central.config_vm import VictoriaMetricsSection
from central.events_pg import EventRow, EventStore, event_row
from gateway.core import chantable
from gateway.core.aio import wait_event
from gateway.core.batch import Batch
from gateway.core.record import SAMPLES, Record
from gateway.historian import lineproto

log = logging.getLogger(__name__)


_USERINFO = re.compile(r"//[^/@\s]*@")


def without_credentials(text: str) -> str:
    """A URL (or a message holding one) with any ``user:password@`` masked, for logs and status."""
    return _USERINFO.sub("//***@", text)


class _Group:
    """Line protocol of several puts, written in one request."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class VmWriter:
    """Group commit of sample bodies into VictoriaMetrics, bounded, retried until acknowledged."""

    def __init__(self, sec: VictoriaMetricsSection):
        self.sec = sec
        self.urls = sec.write_urls()
        self._url = 0
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(sec.timeout, connect=min(10.0, sec.timeout)),
                                        limits=httpx.Limits(max_keepalive_connections=sec.concurrency + 1))
        self._cur: _Group | None = None
        self._queue: asyncio.Queue[_Group] = asyncio.Queue()
        self._kick = asyncio.Event()
        self._full = asyncio.Event()
        self._room = asyncio.Condition()
        self.pending = 0  # bytes accepted by write() and not yet acknowledged by the store
        self._tasks: list[asyncio.Task[None]] = []
        self.state = "idle"  # idle | ok | failing
        self.last_error: str | None = None
        self.writes = 0
        self.failures = 0
        self.bytes_sent = 0
        self.waits = 0  # puts that had to wait for room (back-pressure engaged)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._collect(), name="vm[collect]")]
        self._tasks += [asyncio.create_task(self._send(), name=f"vm[send{i}]")
                        for i in range(self.sec.concurrency)]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose()

    async def write(self, body: bytes) -> None:
        """Returns once the store acknowledged ``body`` (with whatever was written with it)."""
        if not body:
            return
        async with self._room:
            if self.pending and self.pending + len(body) > self.sec.max_pending:
                self.waits += 1
                await self._room.wait_for(lambda: self.pending == 0
                                          or self.pending + len(body) <= self.sec.max_pending)
            self.pending += len(body)
        g = self._cur
        if g is None:
            g = self._cur = _Group()
        g.parts.append(body)
        g.size += len(body)
        if g.size >= self.sec.batch_bytes:
            self._full.set()
        self._kick.set()
        # shielded: a caller cancelled while its lines are on the wire leaves the group intact
        await asyncio.shield(g.done)

    async def _collect(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            if self._cur is not None and self._cur.size < self.sec.batch_bytes and self.sec.linger > 0:
                await wait_event(self._full, self.sec.linger)
            self._full.clear()
            g, self._cur = self._cur, None
            if g is not None:
                self._queue.put_nowait(g)

    async def _send(self) -> None:
        while True:
            g = await self._queue.get()
            try:
                await self._post_until_acknowledged(b"".join(g.parts))
            except BaseException as e:
                if not g.done.done():
                    g.done.set_exception(ConnectionError(f"victoriametrics writer stopped: {e!r}"))
                raise
            finally:
                async with self._room:
                    self.pending -= g.size
                    self._room.notify_all()
            g.done.set_result(None)

    async def _post_until_acknowledged(self, body: bytes) -> None:
        delay = 0.2
        while True:
            url = self.urls[self._url % len(self.urls)]
            try:
                r = await self.client.post(url, content=body)
                if r.status_code in (200, 204):
                    self.writes += 1
                    self.bytes_sent += len(body)
                    if self.state != "ok":
                        if self.state == "failing":
                            log.info("victoriametrics %s: writing again", without_credentials(url))
                        self.state, self.last_error = "ok", None
                    return
                err = f"HTTP {r.status_code}: {r.text[:300]}"
            except (httpx.HTTPError, OSError) as e:
                err = f"{type(e).__name__}: {e}"
            self.failures += 1
            err = without_credentials(err)
            if self.state != "failing":
                log.error("victoriametrics %s: write failed (%s); retrying, ingest waits meanwhile",
                          without_credentials(url), err)
            self.state, self.last_error = "failing", err
            self._url += 1
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # backoff between retries, jittered
            delay = min(self.sec.retry_max, delay * 2)

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "last_error": self.last_error, "pending_bytes": self.pending,
                "writes": self.writes, "failures": self.failures, "bytes_sent": self.bytes_sent,
                "backpressure_waits": self.waits}


class VmStore:
    """Samples of any origin into VictoriaMetrics, events into PostgreSQL (see the module doc)."""

    def __init__(self, sec: VictoriaMetricsSection, events_dsn: str):
        self.sec = sec
        self.writer = VmWriter(sec)
        self.events = EventStore(events_dsn)
        self._series: dict[tuple[str, str | None], lineproto.SeriesTable | vmimport.ImportSeries] = {}
        self.samples = 0

    async def open(self) -> None:
        await self.events.open()
        self.writer.start()

    async def close(self) -> None:
        await self.writer.close()
        await self.events.close()

    def series(self, origin: str, doc: Mapping[str, Any] | None,
               n: int) -> lineproto.SeriesTable | vmimport.ImportSeries:
        """Per-channel series prefixes (line protocol) or line heads (JSON import) of an
        origin under a channel table (cached per version)."""
        key = (origin, str(doc.get("table_version")) if doc else None)
        t = self._series.get(key)
        if t is None or len(t) < n:
            have = len(doc.get("channels") or []) if doc else 0
            size = max(n, have, 2 * len(t) if t is not None else 0)
            metric = self.sec.metric
            tags = ({"gateway": origin, **chantable.tags(doc, i)} for i in range(size))
            if self.sec.format == "json":
                t = vmimport.ImportSeries(metric, tags)
            else:
                t = lineproto.SeriesTable(lineproto.series_key(metric, tg) for tg in tags)
            if len(self._series) > 4096:  # bounded: an origin's old tables drop out
                self._series.clear()
            self._series[key] = t
        return t

    def format(self, origin: str, records: list[Record], doc: Mapping[str, Any] | None,
               *, tables_in_order: bool) -> tuple[bytes, list[EventRow], int]:
        """The samples' body (JSON lines or line protocol, ``format``), rows of the events,
        and the newest sample time.

        ``doc`` is the channel table in force before the first record; with
        ``tables_in_order`` a table among the records takes effect from there on."""
        parts: list[bytes] = []
        rows: list[EventRow] = []
        last_ts = 0
        n = 0
        run: list[Batch] = []  # consecutive sample records under one table: formatted at once

        def flush() -> None:
            if run:
                b = Batch.concat(run)
                run.clear()
                t = self.series(origin, doc, int(b.channel.max()) + 1)
                parts.append(vmimport.format_import(b, t) if isinstance(t, vmimport.ImportSeries)
                             else lineproto.format_samples(b, t))

        for r in records:
            if r.kind == SAMPLES:
                b = r.batch()
                if len(b):
                    run.append(b)
                    n += len(b)
                    last_ts = max(last_ts, r.ts_max)
                continue
            flush()
            try:
                ev = r.event()
            except ValueError as e:  # an event that does not parse is still kept, as what it is
                ev = {"type": "undecodable_event", "ts": r.ts_min, "error": str(e)[:200]}
            if chantable.is_table_event(ev):
                if tables_in_order:
                    doc = ev
            index = ev.get("index", ev.get("channel"))
            ctags = None
            if isinstance(index, int) and not isinstance(index, bool):
                ctags = chantable.tags(doc, index)
            if ctags is None and isinstance(ev.get("channel"), str) and doc:
                names = {c.get("name"): i for i, c in enumerate(doc.get("channels") or [])
                         if isinstance(c, Mapping)}
                if ev["channel"] in names:
                    ctags = chantable.tags(doc, names[ev["channel"]])
            if ctags is None and doc:
                ctags = {"site": doc.get("site_code")}
            rows.append(event_row(origin, r.seq, ev, ctags))
        flush()
        self.samples += n
        return b"".join(p if p.endswith(b"\n") or not p else p + b"\n" for p in parts), rows, last_ts

    async def put(self, origin: str, records: list[Record], doc: Mapping[str, Any] | None, *,
                  main_lane: bool) -> None:
        """Store an envelope's new records; returns when both stores acknowledged them."""
        body, rows, last_ts = self.format(origin, records, doc, tables_in_order=main_lane)
        progress = {origin: (last_ts, records[-1].seq)} if main_lane and last_ts and records else {}
        if rows or progress:
            await asyncio.gather(self.writer.write(body), self.events.put(rows, progress))
        else:
            await self.writer.write(body)

    def status(self) -> dict[str, Any]:
        return {**self.writer.status(), "samples": self.samples, "event_rows": self.events.rows_written}


def store_for(cfg: Any) -> VmStore | None:
    """The store a central config asks for (``victoriametrics:``), or None."""
    vm = cfg.victoriametrics
    if vm is None:
        return None
    dsn = vm.events_dsn or cfg.state.dsn
    assert dsn, "checked by central.config (_vm_check)"
    return VmStore(vm, dsn)
