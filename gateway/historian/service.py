"""The InfluxDB historian: the gateway's ``influxdb`` service, a journal consumer that
stores every sample, event and 5-minute statistic in InfluxDB, and catches up after
outages.

It reads the journal after its cursor, batches by size and time, formats the next
chunk (in a formatting thread) while the previous one is on the wire, and advances
its cursor only after the server acknowledged (204). Rejected lines become
``influx_rejected`` events in the journal. The writing itself is
gateway/historian/writer.py, the statistics gateway/historian/stats.py.

Line protocol writes are idempotent (same series and timestamp overwrite), so a chunk
re-sent after a crash or a timeout never duplicates points. Schema: docs/historian.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.consumer import JournalConsumer
from gateway.core import chantable
from gateway.core.batch import Batch
from gateway.core.config import InfluxSection
from gateway.core.record import EVENT, SAMPLES, Record
from gateway.core.secrets import SecretFileError
from gateway.historian.stats import IntervalStats
from gateway.historian.writer import InfluxWriter, Part, Rejected
from gateway.services import DaemonContext

log = logging.getLogger(__name__)

CONSUMER = "influxdb"
STATS_CONSUMER = "influxdb.stats"
REJECTED_EVENT = "influx_rejected"


@dataclass(slots=True)
class Chunk:
    upto: int  # last journal sequence in the chunk
    parts: list[Part]
    points: int
    records: int
    closed_upto: int | None  # statistics closed up to here (persist after delivery)
    stats_seq: int  # the statistics cursor may advance to here after delivery
    origin: str = "journal"


class HistorianService:
    """The gateway's ``influxdb`` service: journal → InfluxDB, cursor advanced on 204."""

    name = "influxdb"

    def __init__(self, ctx: DaemonContext, section: InfluxSection):
        self.ctx = ctx
        self.section = section
        self.journal = ctx.journal
        table = ctx.table
        gcfg = ctx.cfg.gateway
        base = {"gateway": gcfg.id, "site": gcfg.site}
        # the same tags central gives the points it writes from the channel_table event
        doc = chantable.table_doc(table, gcfg.id, gcfg.site, 0)

        def tags_for_channel(i: int) -> dict[str, Any]:
            return chantable.tags(doc, i)

        self.writer = InfluxWriter(section, tags_for_channel=tags_for_channel, base_tags=base,
                                   base_dir=ctx.cfg.base_dir)
        self.n_channels = len(table)
        self.stats_path = Path(ctx.state_dir) / "historian-stats.json"
        self.intervals: IntervalStats | None = None
        self._fmt = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="influx-format")
        # reads run ahead of the cursor (the next chunk is formatted while this one is
        # on the wire); acks follow the writes in order
        self.consumer = JournalConsumer(self.journal, CONSUMER)
        self.stats_consumer = JournalConsumer(self.journal, STATS_CONSUMER) if section.stats else None
        self._draining = False
        self._wake = asyncio.Event()
        self.chunks = 0
        self.ready = False
        self._ack_task: asyncio.Task[None] | None = None
        self.skipped_records = 0
        self._split_long = bool(section.long_retention_policy if section.api == "v1" else section.long_bucket)

    @property
    def cursor(self) -> int:
        """The last journal sequence InfluxDB acknowledged."""
        return self.consumer.cursor

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        # registered even when the writer cannot open yet: the journal keeps the data for it
        self.consumer.register()
        if self.stats_consumer is not None:
            self.stats_consumer.register()
        log.info("influxdb historian: %s, cursor %d, lag %d", self.writer._target(), self.cursor,
                 self.consumer.lag())

    async def stop(self) -> None:
        await self.writer.close()
        self._fmt.shutdown(wait=False, cancel_futures=True)

    async def drain(self) -> None:
        """Deliver what is journaled now (the caller bounds the time)."""
        target = self.journal.last_seq
        self._draining = True
        self._wake.set()
        await self.consumer.drain(target=target)

    def stats(self) -> dict[str, Any]:
        return {**self.writer.status(), "cursor": self.cursor, "lag": self.consumer.lag(),
                "delivered_records": self.consumer.delivered,
                "late_stat_samples": self.intervals.late_samples if self.intervals else 0,
                "skipped_records": self.skipped_records}

    # ------------------------------------------------------------------ the loop
    async def run(self) -> None:
        while True:
            try:
                await self._run_once()
            except (SecretFileError, OSError, RuntimeError, ValueError, TypeError, KeyError, IndexError) as e:
                # a bug or a broken record must not stop the gateway: say it, restart from the cursor
                log.exception("influxdb historian failed (%s); restarting from cursor %d", e, self.cursor)
                await asyncio.sleep(5.0)

    def _new_stats(self) -> None:
        if not self.section.stats:
            return
        closed = 0
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            closed = int(json.loads(self.stats_path.read_text())["closed_upto"])
        grace = max(10.0, 2 * self.section.flush_every)
        self.intervals = IntervalStats(self.section.stats_every, grace_s=grace, closed_upto_ns=closed,
                                       n=self.n_channels)

    async def _open_writer(self) -> None:
        """Open the writer; a fixable problem (secret file permissions) is reported and
        retried, so the gateway keeps monitoring and the journal keeps the data meanwhile."""
        while True:
            try:
                self.writer.open()
                return
            except SecretFileError as e:
                self.writer._set_state("config_error", f"{e}; not writing until fixed, the journal keeps "
                                       "everything")
                await asyncio.sleep(self.section.max_backoff)

    async def _run_once(self) -> None:
        await self._open_writer()
        self._new_stats()
        await self._replay_stats()
        self.ready = True
        pending: asyncio.Task[None] | None = None
        after = self.cursor
        try:
            while True:
                chunk = await self._next_chunk(after)
                if chunk is None:
                    continue
                after = chunk.upto
                if pending is not None:
                    await pending
                pending = asyncio.create_task(self._deliver(chunk), name="influxdb-write")
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pending
            if self._ack_task is not None:  # what was written gets acknowledged
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(self._ack_task)

    async def _replay_stats(self) -> None:
        """Rebuild the statistics of intervals still open at the last stop."""
        if self.intervals is None:
            return
        assert self.stats_consumer is not None
        s_cursor = self.stats_consumer.cursor
        if not self.stats_path.exists():
            # first start with statistics on (the file marks it); for a historian that ran
            # before without them, start from here rather than recompute the whole journal
            await asyncio.get_running_loop().run_in_executor(None, self._save_stats, 0)
            if self.cursor > 0:
                log.info("influxdb historian: statistics start at journal record %d", self.cursor)
                return
        loop = asyncio.get_running_loop()
        after = s_cursor
        while after < self.cursor:
            recs = await self.stats_consumer.read(after, max_samples=200_000)
            recs = [r for r in recs if r.seq <= self.cursor]
            if not recs:
                break
            await loop.run_in_executor(self._fmt, self._stats_only, recs)
            after = recs[-1].seq

    def _stats_only(self, recs: list[Record]) -> None:
        assert self.intervals is not None
        for r in recs:
            if r.kind == SAMPLES:
                self.intervals.add(r.batch(), r.seq)

    async def _next_chunk(self, after: int) -> Chunk | None:
        """Read records after ``after`` until a batch is full or ``flush_every`` passed
        since the first one arrived; format them (in the formatting thread)."""
        loop = asyncio.get_running_loop()
        limit_points = self.section.batch_points
        recs: list[Record] = []
        points = 0
        last = after
        deadline: float | None = None
        while True:
            got = await self.consumer.read(last, max_samples=max(1, limit_points - points))
            if got:
                recs.extend(got)
                last = got[-1].seq
                points += sum(r.n if r.kind == SAMPLES else 1 for r in got)
                if deadline is None:
                    deadline = loop.time() + self.section.flush_every
            if points >= limit_points or (recs and self._draining):
                break
            if self.journal.last_seq > last:
                continue
            now = loop.time()
            timeout: float | None
            if recs:
                assert deadline is not None
                if now >= deadline:
                    break
                timeout = deadline - now
            else:
                timeout = self._stats_timeout()
            self._wake.clear()
            await self.consumer.wait(last, timeout, wake=self._wake)
            if not recs and self._wake.is_set() and not self.journal.last_seq > last:
                # idle: close statistics intervals by the clock
                if self.intervals is not None and self.intervals.open:
                    return await loop.run_in_executor(self._fmt, self._format, [], last, True)
        caught_up = self.journal.last_seq <= last
        return await loop.run_in_executor(self._fmt, self._format, recs, last, caught_up)

    def _stats_timeout(self) -> float | None:
        if self.intervals is None or not self.intervals.open:
            return None
        end = min(self.intervals.open) + self.intervals.interval + self.intervals.grace
        return max(0.05, (end - time.time_ns()) / 1e9)

    def _format(self, recs: list[Record], upto: int, caught_up: bool) -> Chunk:
        parts: list[tuple[bytes, int]] = []  # raw samples, with their line counts
        long: list[tuple[bytes, int]] = []  # events, alarms, statistics: kept longer when so configured
        step = self.section.batch_points
        points = 0
        w = self.writer
        for r in recs:
            if r.kind == SAMPLES:
                try:
                    b = r.batch()
                except ValueError as e:  # a damaged record must not block the stream
                    log.error("journal record %d holds no readable batch (%s); skipped", r.seq, e)
                    self.skipped_records += 1
                    continue
                if len(b) and (int(b.ts.min()) < 0 or int(b.channel.min()) < 0):
                    ok = (b.ts >= 0) & (b.channel >= 0)
                    log.error("journal record %d: %d sample(s) with a time before 1970 or a negative "
                              "channel cannot be stored; skipped", r.seq, int((~ok).sum()))
                    b = b.select(ok)
                if not len(b):
                    continue
                series = w.series(max(self.n_channels, int(b.channel.max()) + 1))
                for lo in range(0, len(b), step):  # request-sized pieces: no need to find line ends
                    piece = b if len(b) <= step else Batch(b.channel[lo:lo + step], b.ts[lo:lo + step],
                                                           b.value[lo:lo + step], b.quality[lo:lo + step])
                    parts.append((w.format_batch(piece, series), len(piece)))
                points += len(b)
                if self.intervals is not None:
                    self.intervals.add(b, r.seq)
            elif r.kind == EVENT:
                ev: Any = None
                with contextlib.suppress(ValueError):
                    ev = r.event()
                if not isinstance(ev, dict):
                    log.error("journal record %d is not a JSON object event; skipped", r.seq)
                    self.skipped_records += 1
                    continue
                long.append((w.format_event(ev, seq=r.seq, ts_ns=r.ts_min), 1))
                points += 1
        closed_upto = None
        stats_seq = upto
        if self.intervals is not None:
            closed = self.intervals.close(time.time_ns() if caught_up else None)
            if closed:
                long.append((w.format_stats(closed), sum(len(c.channels) for c in closed)))
                points += sum(len(c.channels) for c in closed)
                closed_upto = self.intervals.closed_upto
            first_open = self.intervals.first_open_seq()
            if first_open is not None:
                stats_seq = min(upto, first_open - 1)
        prepared = w.prepare_segments(parts) + w.prepare_segments(long, long=self._split_long)
        return Chunk(upto, prepared, points, len(recs), closed_upto, stats_seq)

    async def _deliver(self, chunk: Chunk) -> None:
        if chunk.parts:
            rejected = await self.writer.write_prepared(chunk.parts)
            if rejected.count:
                self._report_rejected(rejected, chunk)
        # the acknowledgement (a journal commit, an fsync) need not hold up the next write:
        # chain it behind the previous one so cursors still advance in order
        self._ack_task = asyncio.create_task(self._ack(chunk, self._ack_task), name="influxdb-ack")

    async def _ack(self, chunk: Chunk, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await previous
        if chunk.closed_upto is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._save_stats, chunk.closed_upto)
        await self.consumer.ack(chunk.upto, records=chunk.records)
        if self.stats_consumer is not None and self.intervals is not None:
            await self.stats_consumer.ack(chunk.stats_seq)
        self.chunks += 1

    def _report_rejected(self, rejected: Rejected, chunk: Chunk) -> None:
        # an influx_rejected event that is itself rejected is only logged: no loop
        own = [ln for ln in rejected.lines if b"type=" + REJECTED_EVENT.encode() in ln]
        if own and len(own) == len(rejected.lines):
            log.error("influxdb refused the record of its own rejections: %s", rejected.messages)
            return
        log.error("influxdb refused %d point(s) of journal records up to %d: %s", rejected.count, chunk.upto,
                  "; ".join(rejected.messages))
        self.ctx.emit_events([{
            "type": REJECTED_EVENT, "ts": time.time_ns(), "count": rejected.count,
            "message": "; ".join(rejected.messages), "upto_seq": chunk.upto,
            "lines": [ln.decode(errors="replace") for ln in rejected.lines],
        }])

    def _save_stats(self, closed_upto: int) -> None:
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"closed_upto": closed_upto}))
        os.replace(tmp, self.stats_path)


def build_service(ctx: DaemonContext, section: InfluxSection) -> HistorianService:
    return HistorianService(ctx, section)
