"""What the template publisher sends, built from journal records and the channel table
(pure: no I/O; the wall clock only for a message's ``${now}``).

- readings (batch mode): every reading of a mapped channel through the ``item`` template,
  ``batch_points`` to a message;
- snapshots (interval mode): every ``interval`` seconds of the data's own time, the latest
  value of each mapped point (carried forward from earlier windows);
- alarm messages: one per alarm event of a mapped channel (rules/events.py), in journal
  order between the readings;
- base data: the enterprise record, the hazard sources and the point list, each with a
  hash of what it says (the data and the template) so an unchanged set is not resent.

Every message is ``Out``: its route (topic or URL), its body (sealed by the adapter's
``render``) and what it is. Interval mode keeps ``Window`` state, which the adapter
saves after each acknowledged snapshot so a restart neither resends nor loses one.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from gateway.core.channels import ChannelInfo
from gateway.core.config_regulators import ALARM_EVENTS
from gateway.core.config_regulators import TemplateAdapter as TemplateConfig
from gateway.core.record import EVENT, Record
from northbound.base import PointMap
from northbound.memiot.adapter import quality_flag
from northbound.template.render import compile_template, item_renderer

NS = 1_000_000_000
#: the register type of major hazard sources (gateway/admin/registers/register_types.yaml)
HAZARD_REGISTER = "major_hazard_source"
#: the HJ 212-2017 data flag of every quality byte
_FLAGS = [quality_flag(q) for q in range(256)]


@dataclass(slots=True)
class Out:
    """One message: ``kind`` is data, snapshot, alarm, heartbeat or base.<what>."""

    kind: str
    route: str
    fields: dict[str, Any]  # the message template's own fields (items, count, ...)
    seq: int = 0  # an alarm's record
    end_ns: int = 0  # a snapshot's window end


@dataclass(slots=True)
class Window:
    """Interval mode: the open window and what was sent (saved in the adapter's state)."""

    end_ns: int | None = None
    #: the first record that fed the open window: the cursor stays before it
    first_seq: int | None = None
    sent_until: int = 0
    alarms_upto: int = 0
    #: slot → (ts_ns, value sent, quality)
    latest: dict[int, tuple[int, float, int]] = field(default_factory=dict)


def _conv(p: Any, v: float | None) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return round(float(v) * p.scale + p.offset, p.decimals)


class Messages:
    """The messages of one adapter. ``route`` maps a kind to its topic or URL."""

    def __init__(self, cfg: TemplateConfig, points: PointMap, channels: list[ChannelInfo],
                 tz: timezone, route: Callable[[str], str],
                 limits: dict[str, dict[str, float]] | None = None):
        self.cfg, self.points, self.channels, self.tz, self.route = cfg, points, channels, tz, route
        #: channel → its resolved alarm limits (hh, h, l, ll; NaN: none), presets included,
        #: as the rules engine holds them; None: the channel's own ``alarms:`` only
        self.limits = limits
        self.item = item_renderer(cfg.item)
        self.window = Window()
        by_name = {c.name: c for c in channels}
        self.info: list[ChannelInfo | None] = [by_name.get(p.channel) for p in cfg.points]
        self.hazard_of = [self._hazard(i) for i in self.info]
        self.slot_by_name = {p.channel: i for i, p in enumerate(cfg.points) if self.info[i] is not None}
        self._time: dict[int, str] = {}
        a = cfg.alarms
        self.alarm_tpl = compile_template(a.message) if a is not None else None
        self.alarm_events = {k for k, v in ALARM_EVENTS.items() if a is not None and v in a.events}
        #: register record id → the major hazard source it describes (from the journal)
        self.registered: dict[str, dict[str, str | None]] = {}
        #: the registered hazard sources changed since the last ``base()``
        self.base_dirty = False

    # ------------------------------------------------------------------ helpers
    def _hazard(self, ch: ChannelInfo | None) -> str | None:
        """A point's hazard source code: the configured source its channel names (by code
        or name), else the channel's own text, else the adapter's hazard_code."""
        hs = getattr(getattr(ch, "spec", None), "hazard_source", None)
        if hs is None:
            return self.cfg.hazard_code
        for h in self.cfg.hazard_sources:
            if hs in (h.code, h.name):
                return h.code
        return str(hs)

    def time(self, ts_ns: int) -> str:
        sec = ts_ns // NS
        t = self._time.get(sec)
        if t is None:
            if len(self._time) > 100_000:
                self._time.clear()
            t = self._time[sec] = datetime.fromtimestamp(sec, self.tz).strftime(self.cfg.time_format)
        return t

    def _reading(self, s: int, ts: int, v: float, q: int, channel: str) -> dict[str, Any]:
        flag = quality_flag(q)
        return {"code": self.points.codes[s], "value": round(v, self.points.decimals[s]) if math.isfinite(v)
                else None, "time": self.time(ts), "ts_ms": ts // 1_000_000, "flag": flag,
                "valid": 1 if flag == "N" else 0, "quality": q, "channel": channel,
                "enterprise": self.cfg.enterprise_code, "hazard": self.hazard_of[s]}

    def _lists(self, kind: str, items: list[dict[str, Any]]) -> list[Out]:
        n = self.cfg.batch_points
        return [Out(kind, self.route(kind), {"items": items[k:k + n], "count": len(items[k:k + n])})
                for k in range(0, len(items), n)]

    def event(self, r: Record) -> Out | None:
        """An event record: a register change of a major hazard source is taken in (see
        ``hazards``); an alarm of a mapped channel becomes its message."""
        ev = r.event()
        if ev.get("type") == "register" and ev.get("register") == HAZARD_REGISTER:
            self.register_hazard(ev)
            return None
        return self.alarm(ev)

    def register_hazard(self, ev: dict[str, Any]) -> None:
        """Keep the registers' major hazard sources (journal events of the admin side's
        registers, in journal order): archived ones leave the list."""
        rid, data = str(ev.get("id")), ev.get("data")
        if ev.get("archived") or not isinstance(data, dict):
            changed = self.registered.pop(rid, None) is not None
        else:
            rec = {k: (None if data.get(k) is None else str(data[k])[:200])
                   for k in ("code", "name", "grade", "location")}
            changed = self.registered.get(rid) != rec and bool(rec["code"])
            if changed:
                self.registered[rid] = rec
        self.base_dirty |= changed

    def alarm(self, ev: dict[str, Any]) -> Out | None:
        """The alarm message of an alarm event, or None when it is not one to send."""
        if self.alarm_tpl is None:
            return None
        if ev.get("type") != "alarm" or ev.get("transition") not in self.alarm_events:
            return None
        s = self.slot_by_name.get(str(ev.get("channel")))
        if s is None:
            return None
        p = self.cfg.points[s]
        ts = int(ev.get("ts", 0))
        info = self.info[s]
        unit = p.unit if p.unit is not None else (info.unit if info else "")
        f = {"event": ALARM_EVENTS[ev["transition"]], "code": p.code, "channel": p.channel,
             "level": ev.get("level"), "value": _conv(p, ev.get("value")), "limit": _conv(p, ev.get("limit")),
             "time": self.time(ts), "ts_ms": ts // 1_000_000, "rule": ev.get("rule"),
             "state": ev.get("state"), "priority": ev.get("priority"), "unit": unit,
             "who": ev.get("who"), "hazard": self.hazard_of[s]}
        return Out("alarm", self.route("alarm"), f)

    # ------------------------------------------------------------------ batch mode
    def batch(self, records: list[Record]) -> tuple[list[Out], int, int]:
        """Readings and alarms of ``records`` in journal order: (messages, readings, gaps).
        The hot path of the publisher: the per-reading loop works on plain lists."""
        outs: list[Out] = []
        items: list[dict[str, Any]] = []
        gaps = npoints = 0
        names = [c.name for c in self.channels]
        codes, decs, hazard, item = self.points.codes, self.points.decimals, self.hazard_of, self.item
        ent, times, isfinite = self.cfg.enterprise_code, self._time, math.isfinite
        for r in records:
            if r.kind == EVENT:
                gaps += r.is_gap
                a = None if r.is_gap else self.event(r)
                if a is not None:
                    outs += self._lists("data", items)
                    npoints += len(items)
                    items = []
                    outs.append(a)
                continue
            slot, b = self.points.select(r.batch())
            if not len(slot):
                continue
            order = np.argsort(b.ts, kind="stable")
            for s, ts, v, q, c in zip(slot[order].tolist(), b.ts[order].tolist(), b.value[order].tolist(),
                                      b.quality[order].tolist(), b.channel[order].tolist(), strict=True):
                t = times.get(ts // NS)
                if t is None:
                    t = self.time(ts)
                flag = _FLAGS[q]
                items.append(item({"code": codes[s], "value": round(v, decs[s]) if isfinite(v) else None,
                                   "time": t, "ts_ms": ts // 1_000_000, "flag": flag,
                                   "valid": 1 if flag == "N" else 0, "quality": q, "channel": names[c],
                                   "enterprise": ent, "hazard": hazard[s]}))
        npoints += len(items)
        outs += self._lists("data", items)
        return outs, npoints, gaps

    # ------------------------------------------------------------------ interval mode
    def interval(self, records: list[Record]) -> tuple[list[Out], int]:
        """Snapshots of the windows these records close, and their alarms, in order.
        Windows already sent (before a restart) and alarms already sent are skipped."""
        w, n = self.window, int(self.cfg.interval * NS)
        outs: list[Out] = []
        gaps = 0
        for r in records:
            if r.kind == EVENT:
                gaps += r.is_gap
                if not r.is_gap:
                    a = self.event(r)
                    if a is not None and r.seq > w.alarms_upto:
                        a.seq = r.seq
                        outs.append(a)
                continue
            slot, b = self.points.select(r.batch())
            if not len(slot):
                continue
            order = np.argsort(b.ts, kind="stable")
            for i in order.tolist():
                ts = int(b.ts[i])
                if w.end_ns is None:
                    w.end_ns, w.first_seq = ts // n * n + n, r.seq
                if ts >= w.end_ns:
                    snap = self.snapshot(w.end_ns)
                    if snap is not None:
                        outs.append(snap)
                    w.end_ns, w.first_seq = ts // n * n + n, r.seq
                s = int(slot[i])
                old = w.latest.get(s)
                if old is None or ts >= old[0]:
                    w.latest[s] = (ts, float(b.value[i]), int(b.quality[i]))
        return outs, gaps

    def snapshot(self, end_ns: int) -> Out | None:
        """The snapshot of the window ending at ``end_ns``; None when already sent or empty."""
        w = self.window
        if end_ns <= w.sent_until or not w.latest:
            return None
        names = [p.channel for p in self.cfg.points]
        items = [self.item(self._reading(s, ts, v, q, names[s]))
                 for s, (ts, v, q) in sorted(w.latest.items())]
        return Out("snapshot", self.route("data"), {"items": items, "count": len(items)}, end_ns=end_ns)

    def window_state(self) -> dict[str, Any]:
        w = self.window
        return {"sent_until": w.sent_until, "alarms_upto": w.alarms_upto,
                "latest": {self.points.codes[s]: list(v) for s, v in w.latest.items()},
                "registered_hazards": self.registered}

    def load_window(self, doc: dict[str, Any]) -> None:
        w = self.window
        w.sent_until = int(doc.get("sent_until", 0))
        w.alarms_upto = int(doc.get("alarms_upto", 0))
        reg = doc.get("registered_hazards") or {}
        self.registered = {str(k): {f: (None if v.get(f) is None else str(v[f])) for f in
                                    ("code", "name", "grade", "location")} for k, v in reg.items()}
        slot = {c: i for i, c in enumerate(self.points.codes)}
        for code, (ts, v, q) in (doc.get("latest") or {}).items():
            if code in slot:
                w.latest[slot[code]] = (int(ts), float(v), int(q))

    # ------------------------------------------------------------------ base data
    def base(self) -> dict[str, tuple[str, list[Out]]]:
        """Each configured base-data kind: (hash of its data and template, its messages)."""
        cfg, b, out = self.cfg, self.cfg.base, {}
        self.base_dirty = False
        if b.enterprise is not None:
            f = {**cfg.enterprise.model_dump()}
            out["base.enterprise"] = (_hash(f, b.enterprise.message),
                                      [Out("base.enterprise", self.route("base.enterprise"), f)])
        if b.hazard_sources is not None:
            items = [compile_template(b.hazard_sources.item)(h) for h in self.hazards()]
            out["base.hazard_sources"] = (_hash(items, b.hazard_sources.message),
                                          self._lists("base.hazard_sources", items))
        if b.points is not None:
            items = [compile_template(b.points.item)(p) for p in self.point_list()]
            out["base.points"] = (_hash(items, b.points.message), self._lists("base.points", items))
        return out

    def hazards(self) -> list[dict[str, Any]]:
        """The configured hazard sources, then those the registers hold (by code, as their
        change events passed in the journal), then any other one a mapped channel names."""
        count: dict[str | None, int] = {}
        for i, h in enumerate(self.hazard_of):
            if self.info[i] is not None:
                count[h] = count.get(h, 0) + 1
        out = [{"code": h.code, "name": h.name, "grade": h.grade, "location": h.location,
                "points": count.get(h.code, 0), "enterprise": self.cfg.enterprise_code}
               for h in self.cfg.hazard_sources]
        known: set[str | None] = {h.code for h in self.cfg.hazard_sources}
        for rec in sorted(self.registered.values(), key=lambda x: str(x["code"])):
            if rec["code"] not in known:
                known.add(rec["code"])
                out.append({**rec, "points": count.get(rec["code"], 0),
                            "enterprise": self.cfg.enterprise_code})
        for code in sorted(c for c in count if c is not None and c not in known):
            out.append({"code": code, "name": code, "grade": None, "location": None, "points": count[code],
                        "enterprise": self.cfg.enterprise_code})
        return out

    def point_list(self) -> list[dict[str, Any]]:
        """Each mapped channel that exists: its code, unit and limits in the sent unit."""
        out = []
        for i, p in enumerate(self.cfg.points):
            info = self.info[i]
            if info is None:
                continue
            spec = info.spec
            al = getattr(spec, "alarms", None)
            lim = (self.limits.get(p.channel, {}) if self.limits is not None
                   else {k: getattr(al, k, None) for k in ("hh", "h", "l", "ll")})
            rng = getattr(spec, "range", None)
            out.append({"code": p.code, "channel": p.channel,
                        "description": getattr(spec, "description", None),
                        "kind": info.kind, "unit": p.unit if p.unit is not None else info.unit,
                        "hazard": self.hazard_of[i],
                        **{k: _conv(p, lim.get(k)) for k in ("hh", "h", "l", "ll")},
                        "range_lo": _conv(p, rng[0]) if rng else None,
                        "range_hi": _conv(p, rng[1]) if rng else None,
                        "decimals": p.decimals, "enterprise": self.cfg.enterprise_code})
        return out


def _hash(data: Any, template: Any) -> str:
    doc = json.dumps([data, template], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()
