"""A channel's trend for the page's charts (``GET /trend/{channel}``): its values over a
window with a bounded number of points (raw samples when they fit, else min/mean/max per
interval, from InfluxDB when configured, else the journal: gateway/historian/history.py),
the alarm limits the rules engine applies (presets resolved) and the alarm periods from
the journal's alarm events (gateway/admin/alarmlog.py), for the shaded spans."""

from __future__ import annotations

import math
import sqlite3
from typing import Any

from gateway.admin.alarmlog import LOOKBACK_NS, Scan, add_active, overlapping, periods, scan_alarm_events
from gateway.admin.context import AdminContext
from gateway.core.batch import quality_label
from gateway.core.channels import ChannelInfo
from gateway.historian.history import fmt_ns, query_history

#: the page's range buttons, in seconds
RANGES = {"1h": 3600, "8h": 8 * 3600, "24h": 86400, "7d": 7 * 86400}
#: aggregation intervals a trend may use (seconds), so bucket edges fall on round times
STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
#: the limits a chart draws as lines, most severe first
LIMITS = ("hh", "h", "l", "ll")


def step_for(span_s: float, max_points: int) -> float:
    """The smallest round interval that keeps a span within ``max_points`` buckets."""
    for s in STEPS:
        if span_s / s <= max_points:
            return float(s)
    return float(math.ceil(span_s / max_points))


def _poll_s(ctx: AdminContext, c: ChannelInfo) -> float | None:
    for d in ctx.daemon.cfg.devices:
        if d.name == c.device:
            if getattr(d, "mode", None) == "subscribe":
                return None  # on change: no period to judge the sample count by
            p = getattr(d, "poll", None)
            return float(p) if p else None
    return None


def limits_of(ctx: AdminContext, c: ChannelInfo) -> dict[str, float | None]:
    """The channel's limit-rule thresholds as the engine applies them (NaN: not set)."""
    cr = ctx.daemon.rules.rules[c.index]
    out = {}
    for k in LIMITS:
        v = float(getattr(cr, k))
        if math.isfinite(v):
            out[k] = ctx.channels.display[c.index].value(v)
    return out


async def trend(ctx: AdminContext, c: ChannelInfo, t0: int, t1: int, *, max_points: int) -> dict[str, Any]:
    daemon = ctx.daemon
    span_s = (t1 - t0) / 1e9
    step = step_for(span_s, max_points)
    poll = _poll_s(ctx, c)
    # raw samples when a poll period says they fit; else (or when they did not) aggregated
    every: float | None = None if poll is not None and poll >= step else step
    h = await query_history(daemon.cfg, c.name, t0, t1 + 1, every, limit=max_points,
                            run_read=daemon.journal.run_read, newest=True)
    if every is None and h.truncated:
        every = step
        h = await query_history(daemon.cfg, c.name, t0, t1 + 1, every, limit=max_points,
                                run_read=daemon.journal.run_read, newest=True)
    shown = ctx.channels.display[c.index]
    pts: list[dict[str, Any]] = []
    if every:
        for t, mean, lo, hi, n in h.rows:
            pts.append({"t": t / 1e9, "ts": fmt_ns(t), "mean": mean, "min": lo, "max": hi, "n": n})
    else:
        for t, v, q in h.rows:
            pts.append({"t": t / 1e9, "ts": fmt_ns(t), "value": None if v is None else shown.value(v),
                        "quality": None if q is None else quality_label(q)})

    def scan(db: sqlite3.Connection) -> Scan:
        return scan_alarm_events(db, t0, t1, lookback_ns=LOOKBACK_NS, channels={c.name})

    found = await daemon.journal.run_read(scan)
    ps = periods(ev for _, ev in found.events)
    add_active(ps, [a for a in ctx.alarms.active() if a.get("channel") == c.name])
    spans = [{"rule": p.rule, "level": p.level, "priority": p.priority,
              "start": fmt_ns(p.start_ns), "start_t": p.start_ns / 1e9,
              "end": None if p.end_ns is None else fmt_ns(p.end_ns),
              "end_t": None if p.end_ns is None else p.end_ns / 1e9,
              "acknowledged": None if p.ack_ns is None else fmt_ns(p.ack_ns)}
             for p in overlapping(ps, t0, t1)]
    out: dict[str, Any] = {
        "channel": c.name, "unit": c.unit, "kind": c.kind, "area": c.spec.area, "device": c.device,
        "from": fmt_ns(t0), "to": fmt_ns(t1), "from_t": t0 / 1e9, "to_t": t1 / 1e9,
        "source": h.source, "every_s": every, "truncated": h.truncated,
        "limits": limits_of(ctx, c), "alarms": spans, "alarms_complete": found.complete, "points": pts,
    }
    if h.note:
        out["note"] = h.note
    return out
