"""The shift report: for a chosen period, the alarms with their acknowledgement times, the
channels that were faulty and for how long, and the top alarm sources with chattering and
standing alarms marked (ISA-18.2 style), from the journal's alarm events
(gateway/admin/alarmlog.py). This module builds the report as a document (pure: periods
in, dict out); gateway/admin/reportdoc.py writes it as PDF and XLSX, the page prints it.

Times in the report are the site's wall clock (``tz``), as the page shows them.
"""

from __future__ import annotations

import datetime as dt
import statistics
from typing import Any
from zoneinfo import ZoneInfo

from gateway.admin.alarmlog import Period

#: ISA-18.2 style thresholds. Chattering: an alarm raised this many times within the
#: window (ISA-TR18.2.5-2012 §5.4 example "3 or more alarms in 1 minute"; clause and
#: value not confirmed against the text). Standing ("stale" in ISA-18.2-2016 §16.8): active
#: for longer than this (EEMUA 191 and ISA-18.2 use 24 h as the usual figure; unconfirmed).
CHATTER_RAISES = 3
CHATTER_WINDOW_S = 60.0
STANDING_S = 24 * 3600.0
#: top alarm sources listed (ISA-18.2-2016 §16.9 "most frequent alarms", top 10; unconfirmed clause)
TOP_N = 10
#: alarm rows a report lists at most (more: ``truncated``)
MAX_ROWS = 5000


def local(ns: int | None, tz: ZoneInfo) -> str | None:
    """A time as the page shows it: YYYY-MM-DD HH:MM:SS in the site's zone."""
    if ns is None:
        return None
    return dt.datetime.fromtimestamp(ns / 1e9, tz).strftime("%Y-%m-%d %H:%M:%S")


def _chattering(starts: list[int]) -> bool:
    starts = sorted(starts)
    k = CHATTER_RAISES - 1
    w = int(CHATTER_WINDOW_S * 1e9)
    return any(starts[i + k] - starts[i] <= w for i in range(len(starts) - k))


def build(ps: list[Period], t0: int, t1: int, *, tz: ZoneInfo, areas: dict[str, str | None],
          complete: bool, now_ns: int) -> dict[str, Any]:
    """The report over [t0, t1] from the alarm periods that overlap it."""
    ps = [p for p in ps if p.start_ns <= t1 and (p.end_ns is None or p.end_ns >= t0)]
    process = [p for p in ps if not p.health]
    health = [p for p in ps if p.health]
    hours = max((t1 - t0) / 3.6e12, 1e-9)
    end_ref = min(t1, now_ns)

    rows: list[dict[str, Any]] = []
    for p in process[:MAX_ROWS]:
        rows.append({
            "channel": p.channel, "area": areas.get(p.channel), "rule": p.rule, "level": p.level,
            "priority": p.priority, "limit": p.limit, "peak": p.peak, "unit": p.unit,
            "raised": local(p.start_ns, tz), "raised_ns": p.start_ns,
            "acknowledged": local(p.ack_ns, tz), "ack_by": p.ack_by,
            "ack_after_s": None if p.ack_ns is None else round((p.ack_ns - p.start_ns) / 1e9, 1),
            "cleared": local(p.end_ns, tz),
            "duration_s": round(((p.end_ns if p.end_ns is not None else end_ref) - p.start_ns) / 1e9, 1),
            "before_period": p.start_ns < t0,
        })

    faulty: dict[str, dict[str, Any]] = {}
    for p in health:
        f = faulty.setdefault(p.channel, {"channel": p.channel, "area": areas.get(p.channel), "rules": [],
                                          "count": 0, "faulty_s": 0.0, "first": p.start_ns, "still": False})
        if p.rule not in f["rules"]:
            f["rules"].append(p.rule)
        f["count"] += 1
        f["faulty_s"] += p.overlap_s(t0, end_ref)
        f["first"] = min(f["first"], p.start_ns)
        f["still"] = f["still"] or p.end_ns is None or p.end_ns > t1
    faulty_rows = [{"channel": f["channel"], "area": f["area"], "rules": ", ".join(f["rules"]),
                    "count": f["count"], "faulty_s": round(f["faulty_s"], 1),
                    "since": local(f["first"], tz), "still_faulty": f["still"]}
                   for f in sorted(faulty.values(), key=lambda f: -f["faulty_s"])]

    # raises inside the period, per source (channel) and per alarm (channel, rule)
    raised_in = [p for p in process if p.start_ns >= t0]
    by_src: dict[str, list[Period]] = {}
    for p in raised_in:
        by_src.setdefault(p.channel, []).append(p)
    standing = {p.channel for p in process
                if (p.end_ns is None or p.end_ns > t1) and (end_ref - p.start_ns) / 1e9 >= STANDING_S}
    chatter = set()
    for ch, lst in by_src.items():
        per_rule: dict[str, list[int]] = {}
        for p in lst:
            per_rule.setdefault(p.rule, []).append(p.start_ns)
        if any(_chattering(v) for v in per_rule.values()):
            chatter.add(ch)
    total = len(raised_in)
    top = sorted(by_src.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:TOP_N]
    top_rows = [{"channel": ch, "area": areas.get(ch), "count": len(lst),
                 "share": round(100.0 * len(lst) / total, 1) if total else 0.0,
                 "chattering": ch in chatter, "standing": ch in standing} for ch, lst in top]

    acks = [(p.ack_ns - p.start_ns) / 1e9 for p in process if p.ack_ns is not None and p.start_ns >= t0]
    return {
        "from": local(t0, tz), "to": local(t1, tz), "from_ns": t0, "to_ns": t1, "tz": tz.key,
        "generated": local(now_ns, tz), "complete": complete, "truncated": len(process) > MAX_ROWS,
        "summary": {
            "alarms": total, "per_hour": round(total / hours, 2),
            "acknowledged": sum(1 for r in rows if r["acknowledged"] and not r["before_period"]),
            "unacknowledged": sum(1 for r in rows if not r["acknowledged"]),
            "median_ack_s": round(statistics.median(acks), 1) if acks else None,
            "faulty_channels": len(faulty_rows), "chattering": len(chatter), "standing": len(standing),
        },
        "alarms": rows, "faulty": faulty_rows, "top": top_rows,
        "thresholds": {
            "chattering": f"{CHATTER_RAISES} raises within {CHATTER_WINDOW_S:g} s "
                          "(ISA-TR18.2.5-2012 §5.4, unconfirmed)",
            "standing": f"active for {STANDING_S / 3600:g} h or more (ISA-18.2-2016 §16.8, unconfirmed)",
            "top": f"top {TOP_N} sources by alarms raised (ISA-18.2-2016 §16.9, unconfirmed)",
        },
    }
