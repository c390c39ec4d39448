"""The channel-table document: what the gateway journals so central knows channels by name.

Samples travel upstream by channel *index* (the envelope carries no names). So the
gateway journals its channel table as an ordinary event record,

    {"type": "channel_table", "ts": ..., "table_version": "<16 hex>", "fingerprint": "<16 hex>",
     "gateway_id": "gw-1", "site_code": "...", "channels": [{"index": 0, "name": "GT-101",
     "kind": "gas", "unit": "%LEL", "device": "plc-1", "range": [0, 100], ...}, ...]}

``table_version`` is a SHA-256 over everything in the event except ``ts`` and itself;
``fingerprint`` is the numbering alone (names in order, ``ChannelTable.fingerprint``).
The top-level keys avoid ``gateway``, ``site`` and ``version``: the historian turns an
event's keys into InfluxDB fields, and those names are tags on every point (a field of
the same name breaks ``WHERE gateway = ...`` queries) or number fields of other events.

Pure functions, shared by both sides: ``tags`` gives the InfluxDB tags of one channel
of a table as the gateway's historian writes them, so central tags the points it
stores the same way. The service that journals the table is gateway/chanmap.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.core.record import EVENT, Record

if TYPE_CHECKING:
    from gateway.core.channels import ChannelTable

EVENT_TYPE = "channel_table"
REFRESH_S = 86400.0
PREFIX = b'{"type":"' + EVENT_TYPE.encode() + b'"'
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
    return r.kind == EVENT and bytes(r.data[:len(PREFIX)]) == PREFIX


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
