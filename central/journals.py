"""Central's storage per origin: one journal each (``state_dir/journals/<origin>.db``,
records as the gateway journaled them) and, when configured, the loop that writes each
journal into InfluxDB after its own cursor, tagged by the origin's channel table.

``Journals`` opens an origin's journal the first time something is stored for it (or
at start, to resume InfluxDB after a restart) and closes them all at the end.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from central.config import StorageSection
from gateway.core import chantable
from gateway.core.config import InfluxSection
from gateway.core.record import SAMPLES
from gateway.store.journal import Journal
from gateway.store.queries import last_channel_table

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


class Journals:
    """The journals of the origins this node stores, and their InfluxDB writers."""

    def __init__(self, folder: Path, storage: StorageSection, influxdb: InfluxSection | None,
                 base_dir: Path):
        self.folder = folder
        self.storage = storage
        self.influxdb = influxdb
        self.base_dir = base_dir
        self._journals: dict[str, Journal] = {}
        self._influx: dict[str, asyncio.Task[None]] = {}
        self._writers: dict[str, Any] = {}
        self._tagged: dict[str, _TableHolder] = {}

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
                j.register(INFLUX_CURSOR)
                self._influx[origin] = asyncio.create_task(self._influx_loop(origin, j),
                                                           name=f"influx[{origin}]")
        return j

    def tagged_by(self, origin: str) -> str | None:
        """The channel table version the origin's InfluxDB points are tagged by now."""
        holder = self._tagged.get(origin)
        return holder.version if holder is not None else None

    def influx_status(self) -> dict[str, Any]:
        """Per origin: the InfluxDB cursor, its lag in records and the writer's figures."""
        return {o: {"cursor": self._journals[o].cursor(INFLUX_CURSOR),
                    "lag": self._journals[o].lag(INFLUX_CURSOR), **w.status()}
                for o, w in self._writers.items()}

    async def _influx_loop(self, origin: str, j: Journal) -> None:
        """Store an origin's journal into InfluxDB (the historian's writer), after its cursor.

        Points are tagged like the gateway's own historian tags them (gateway=<origin>,
        site, device, channel=<name>, kind, unit, area, hazard_source; measurement per
        kind), using the origin's channel table in force at each record: the last
        ``channel_table`` event before it in this journal (stored in the origin's
        journal order). Before any table is known, ``channel=<index>``."""
        from gateway.historian.service import InfluxWriter

        assert self.influxdb is not None
        holder = _TableHolder(origin)
        writer = InfluxWriter(self.influxdb, base_tags={"gateway": origin},
                              tags_for_channel=holder.tags, base_dir=self.base_dir)
        self._writers[origin] = writer
        writer.open()
        try:
            found = await j.run_read(lambda db: last_channel_table(db, j.cursor(INFLUX_CURSOR)))
            if found is not None:
                holder.set(found[1])
            self._tagged[origin] = holder
            while True:
                after = j.cursor(INFLUX_CURSOR)
                recs = await j.read(after, 500, max_samples=50_000)
                if not recs:
                    await j.wait(after, 30.0)
                    continue
                parts = []
                for r in recs:
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
                await j.ack(INFLUX_CURSOR, recs[-1].seq)
        finally:
            await writer.close()

    async def close(self) -> None:
        """Stop the InfluxDB loops (each closes its writer), then close the journals."""
        for t in self._influx.values():
            t.cancel()
        await asyncio.gather(*self._influx.values(), return_exceptions=True)
        for j in self._journals.values():
            j.close()
