"""Central's storage per origin: one journal each (``state_dir/journals/<origin>.db``,
records as the gateway journaled them) and, when configured, the loop that writes each
journal into InfluxDB after its own cursor, tagged by the origin's channel table.

``Journals`` opens an origin's journal the first time something is stored for it (or
at start, to resume InfluxDB after a restart) and closes them all at the end.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from central.config import StorageSection
from gateway.consumer import JournalConsumer
from gateway.core import chantable
from gateway.core.config import InfluxSection
from gateway.core.record import SAMPLES, Record
from gateway.store.journal import Journal
from gateway.store.queries import last_channel_table

log = logging.getLogger(__name__)

INFLUX_CURSOR = "influxdb"


class _TableHolder:
    """The channel table the InfluxDB writer of one origin tags by, and its series keys."""

    def __init__(self, origin: str):
        self.origin = origin
        self.doc: dict[str, Any] | None = None
        self._series: Any = None

    @property
    def version(self) -> str | None:
        return str(self.doc.get("table_version")) if self.doc else None

    def set(self, doc: dict[str, Any]) -> None:
        if self.doc is None or doc.get("table_version") != self.doc.get("table_version"):
            self._series = None
        self.doc = doc

    def tags(self, index: int) -> dict[str, Any]:
        return chantable.tags(self.doc, index)

    def series(self, writer: Any, n: int) -> Any:
        if self._series is None or len(self._series) < n:
            have = len(self.doc.get("channels") or []) if self.doc else 0
            self._series = writer.make_series(max(n, have, 2 * len(self._series or [])))
        return self._series


class OriginInflux(JournalConsumer):
    """One origin's journal into InfluxDB (the historian's writer), after its own cursor.

    Points are tagged like the gateway's own historian tags them (gateway=<origin>,
    site, device, channel=<name>, kind, unit, area, hazard_source; measurement per
    kind), using the origin's channel table in force at each record: the last
    ``channel_table`` event before it in this journal (stored in the origin's
    journal order). Before any table is known, ``channel=<index>``."""

    def __init__(self, origin: str, journal: Journal, influxdb: InfluxSection, base_dir: Path):
        super().__init__(journal, INFLUX_CURSOR, max_records=500, max_samples=50_000, idle_wait_s=30.0,
                         what=f"influxdb for {origin}", logger=log)
        from gateway.historian.writer import InfluxWriter

        self.origin = origin
        self.holder = _TableHolder(origin)
        self.tagged = False  # the table in force at the cursor is known
        self.writer = InfluxWriter(influxdb, base_tags={"gateway": origin},
                                   tags_for_channel=self.holder.tags, base_dir=base_dir)

    async def serve(self) -> None:
        """Open the writer, find the table in force at the cursor, then deliver forever."""
        j = self.journal
        self.writer.open()
        try:
            found = await j.run_read(lambda db: last_channel_table(db, self.cursor))
            if found is not None:
                self.holder.set(found[1])
            self.tagged = True
            await self.run()
        finally:
            await self.writer.close()

    async def deliver(self, records: list[Record]) -> None:
        writer, holder = self.writer, self.holder
        parts = []
        for r in records:
            if r.kind == SAMPLES:
                b = r.batch()
                if len(b):
                    series = holder.series(writer, int(b.channel.max()) + 1)
                    parts.append(writer.format_batch(b, series))
                continue
            ev = r.event()
            if chantable.is_table_event(ev):
                holder.set(ev)
                ev = chantable.summary(ev)
            parts.append(writer.format_event(ev, seq=r.seq))
        body = b"".join(p if p.endswith(b"\n") or not p else p + b"\n" for p in parts)
        if body:
            await writer.write(body)


class Journals:
    """The journals of the origins this node stores, and their InfluxDB writers."""

    def __init__(self, folder: Path, storage: StorageSection, influxdb: InfluxSection | None,
                 base_dir: Path):
        self.folder = folder
        self.storage = storage
        self.influxdb = influxdb
        self.base_dir = base_dir
        self._journals: dict[str, Journal] = {}
        self._influx: dict[str, OriginInflux] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def get(self, origin: str) -> Journal | None:
        """An origin's journal if it has one open (nothing is created)."""
        return self._journals.get(origin)

    def open(self, origin: str) -> Journal:
        """An origin's journal, opened (and its InfluxDB loop started) on first use."""
        j = self._journals.get(origin)
        if j is None:
            st = self.storage
            j = Journal(self.folder / f"{origin}.db", quota_bytes=st.journal_quota,
                        max_age_s=st.journal_max_age, sync=st.journal_sync)
            self._journals[origin] = j
            if self.influxdb is not None:
                consumer = OriginInflux(origin, j, self.influxdb, self.base_dir)
                consumer.register()
                self._influx[origin] = consumer
                self._tasks[origin] = asyncio.create_task(consumer.serve(), name=f"influx[{origin}]")
        return j

    def tagged_by(self, origin: str) -> str | None:
        """The channel table version the origin's InfluxDB points are tagged by now."""
        consumer = self._influx.get(origin)
        return consumer.holder.version if consumer is not None and consumer.tagged else None

    def influx_status(self) -> dict[str, Any]:
        """Per origin: the InfluxDB cursor, its lag in records and the writer's figures."""
        return {o: {"cursor": c.cursor, "lag": c.lag(), **c.writer.status()} for o, c in self._influx.items()}

    async def close(self) -> None:
        """Stop the InfluxDB loops (each closes its writer), then close the journals."""
        for t in self._tasks.values():
            t.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        for j in self._journals.values():
            j.close()
