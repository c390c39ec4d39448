"""The channel table as a journal event, so central knows channels by name.

Samples travel upstream by channel *index* (the envelope carries no names). So the
gateway journals its channel table as an ordinary event record,

    {"type": "channel_table", "ts": ..., "table_version": "<16 hex>", "fingerprint": "<16 hex>",
     "gateway_id": "gw-1", "site_code": "...", "channels": [{"index": 0, "name": "GT-101",
     "kind": "gas", "unit": "%LEL", "device": "plc-1", "range": [0, 100], ...}, ...]}

at start when the table differs from the last one in the journal, and again every
``REFRESH_S`` (a day) while it runs, so journal retention or a lost range never
leaves central without one. It travels like every event (main lane, in journal
order, inside the signed envelopes, forwarded unchanged level by level); from its
sequence on, central tags the samples' points with the names (see docs/central.md).

``table_version`` is a SHA-256 over everything in the event except ``ts`` and itself;
``fingerprint`` is the numbering alone (names in order, ``ChannelTable.fingerprint``).
The top-level keys avoid ``gateway``, ``site`` and ``version``: the historian turns an
event's keys into InfluxDB fields, and those names are tags on every point (a field of
the same name breaks ``WHERE gateway = ...`` queries) or number fields of other events.

Both sides share the helpers here: ``tags`` gives the InfluxDB tags of one channel of
a table, as the gateway's historian writes them (gateway/historian.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sqlite3
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.core.record import EVENT, Record, decode_data

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.core.channels import ChannelTable

log = logging.getLogger(__name__)

EVENT_TYPE = "channel_table"
REFRESH_S = 86400.0
_PREFIX = b'{"type":"' + EVENT_TYPE.encode() + b'"'
#: the per-channel keys a table entry may carry besides index, name, kind, unit, device
_OPTIONAL = ("range", "area", "hazard_source", "gas", "description")


def table_doc(table: ChannelTable, gateway_id: str, site: str | None, ts_ns: int) -> dict[str, Any]:
    """The channel_table event for a channel table (``ts`` = when it is journaled)."""
    chans = []
    for c in table.channels:
        e: dict[str, Any] = {"index": c.index, "name": c.name, "kind": c.kind, "unit": c.unit or "",
                             "device": c.device}
        for k in _OPTIONAL:
            v = getattr(c.spec, k, None)
            if v is not None:
                e[k] = list(v) if isinstance(v, tuple) else v
        chans.append(e)
    doc: dict[str, Any] = {"type": EVENT_TYPE, "ts": int(ts_ns), "table_version": "",
                           "fingerprint": table.fingerprint(), "gateway_id": gateway_id, "site_code": site,
                           "channels": chans}
    doc["table_version"] = version_of(doc)
    return doc


def version_of(doc: Mapping[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k not in ("ts", "table_version")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=False).encode()).hexdigest()[:16]


def is_table_record(r: Record) -> bool:
    """Whether a journal record is a channel_table event (cheap: a prefix check)."""
    return r.kind == EVENT and bytes(r.data[:len(_PREFIX)]) == _PREFIX


def is_table_event(ev: Mapping[str, Any]) -> bool:
    return ev.get("type") == EVENT_TYPE and isinstance(ev.get("channels"), list)


def tags(doc: Mapping[str, Any] | None, index: int) -> dict[str, Any]:
    """InfluxDB tags of channel ``index`` under a table event (``doc``), like the gateway's
    historian: device, channel (name), kind, unit, area, hazard_source, site. Without a
    table, or for an index the table does not have: ``channel=<index>``."""
    chans = doc.get("channels") if doc else None
    if not chans or not 0 <= index < len(chans):
        return {"channel": str(index)}
    c = chans[index]
    if not isinstance(c, Mapping) or c.get("index", index) != index or not c.get("name"):
        return {"channel": str(index)}
    return {"device": c.get("device") or None, "channel": c["name"], "kind": c.get("kind") or None,
            "unit": c.get("unit") or None, "area": c.get("area"), "hazard_source": c.get("hazard_source"),
            "site": doc.get("site_code") if doc else None}


def summary(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A small form of a table event (for status pages and the events measurement)."""
    chans = doc.get("channels") or []
    return {"type": EVENT_TYPE, "ts": doc.get("ts"), "table_version": doc.get("table_version"),
            "fingerprint": doc.get("fingerprint"), "channel_count": len(chans),
            "device_count": len({c.get("device") for c in chans if isinstance(c, Mapping)})}


def last_table(db: sqlite3.Connection, before: int | None = None) -> tuple[int, dict[str, Any]] | None:
    """The newest channel_table event in a journal (at or before sequence ``before``):
    (seq, event), scanning events backwards. Run it on the journal's reader thread."""
    sql = "SELECT seq, codec, data FROM records WHERE kind = ?"
    args: list[Any] = [EVENT]
    if before is not None:
        sql += " AND seq <= ?"
        args.append(before)
    for seq, codec, data in db.execute(sql + " ORDER BY seq DESC", args):
        raw = decode_data(codec, data)
        if raw.startswith(_PREFIX):
            with contextlib.suppress(ValueError):
                ev = json.loads(raw)
                if is_table_event(ev):
                    return int(seq), ev
    return None


class ChannelTableService:
    """Journals the channel table at start (when it changed) and every ``every_s``."""

    name = "channel_table"

    def __init__(self, gw: Gateway, every_s: float = REFRESH_S):
        self.gw = gw
        self.every_s = every_s
        self.seq = 0
        self.version = ""
        self.last_ts = 0
        self.emitted = 0

    def current(self) -> dict[str, Any]:
        g = self.gw.cfg.gateway
        return table_doc(self.gw.table, g.id, g.site, self.gw.clock())

    async def emit(self, doc: dict[str, Any]) -> None:
        self.seq = await self.gw.journal.append_event(doc)
        self.version, self.last_ts = doc["table_version"], doc["ts"]
        self.emitted += 1

    async def start(self) -> None:
        doc = self.current()
        last = await self.gw.journal.run_read(last_table)
        if last is not None:
            seq, ev = last
            age = (doc["ts"] - int(ev.get("ts") or 0)) / 1e9
            if ev.get("table_version") == doc["table_version"] and 0 <= age < self.every_s:
                self.seq, self.version, self.last_ts = seq, doc["table_version"], int(ev["ts"])
                return
        await self.emit(doc)
        was = "" if last is None else f" (was {last[1].get('table_version')})"
        log.info("channel table %s (%d channels) journaled at seq %d%s", doc["table_version"],
                 len(doc["channels"]), self.seq, was)

    async def run(self) -> None:
        while True:
            left = self.every_s - (self.gw.clock() - self.last_ts) / 1e9
            if left > 0:
                await asyncio.sleep(min(left, self.every_s))
                continue
            await self.emit(self.current())

    async def drain(self) -> None:
        """Nothing to deliver: the table is journaled at start."""

    async def stop(self) -> None:
        return None

    def stats(self) -> dict[str, Any]:
        return {"version": self.version, "seq": self.seq, "channels": len(self.gw.table),
                "journaled": self.emitted}


def install(gw: Gateway) -> None:
    """Add the channel-table service to a gateway (called once from Gateway.__init__)."""
    gw.services.append(ChannelTableService(gw))
