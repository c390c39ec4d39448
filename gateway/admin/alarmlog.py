"""The alarm journal read for people: alarm events in a time window (filtered, paged), the
alarm periods they make (raise → acknowledge → clear, per channel and rule), for the trend
charts' shaded periods, the alarm history and the shift report (gateway/admin/report.py).

The journal is the one durable record of alarms (rules/events.py writes them); this module
only reads it, through ``gateway/store/queries.events_backwards`` (bounded scans), and its
period logic is pure (events in, periods out) so it is tested with tables.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.core.record import EVENT
from gateway.store.queries import SCAN_EVENTS_MAX, events_backwards
from rules.settings import HEALTH_RULES as _HEALTH
from rules.settings import LIMIT_LEVELS, MAINTENANCE, RULES

ALARM_PREFIX = b'{"type":"alarm"'
#: how far before a window's start the scan looks for the raise of an alarm still active
#: at the start (alarms active longer are taken from the engine's active list)
LOOKBACK_NS = 24 * 3600 * 10**9
#: the health rules (rules/settings.py HEALTH_RULES): a channel in one of them is faulty,
#: not in process alarm
HEALTH_RULES = tuple(RULES[r] for r in _HEALTH)
#: events of these rules are not alarms of their own (maintenance is a suppression state)
NOT_ALARMS = (MAINTENANCE,)
#: level order for "worst level of a period": |code| of the limit rule, 1 for the others
_LEVEL_RANK = {"hh": 2, "ll": 2, "h": 1, "l": 1}


@dataclass
class Scan:
    """Alarm events (oldest first) read from the journal, and whether the scan saw the
    whole window (False: the scan bound cut it; the answer says so)."""

    events: list[tuple[int, dict[str, Any]]]
    complete: bool


def scan_alarm_events(db: sqlite3.Connection, t0: int, t1: int, *, lookback_ns: int = 0,
                      channels: set[str] | None = None, max_records: int = SCAN_EVENTS_MAX) -> Scan:
    """Alarm events with ``t0 - lookback_ns <= ts <= t1`` (of ``channels`` when given),
    oldest first, as (seq, event). The scan goes backwards from the newest record and
    stops at the first event older than the window, or after ``max_records`` records."""
    lo = t0 - lookback_ns
    out: list[tuple[int, dict[str, Any]]] = []
    complete = False
    for seq, ev in events_backwards(db, prefix=ALARM_PREFIX, max_records=max_records):
        ts = ev.get("ts")
        if not isinstance(ts, int):
            continue
        if ts < lo:
            complete = True
            break
        if ts > t1:
            continue
        if channels is not None and ev.get("channel") not in channels:
            continue
        out.append((seq, ev))
    else:
        # the scan ran out: either the journal's start (complete) or the bound (not)
        complete = _whole_journal_seen(db, max_records)
    out.reverse()
    return Scan(out, complete)


def _whole_journal_seen(db: sqlite3.Connection, max_records: int, before: int | None = None) -> bool:
    """Whether a backwards scan bounded to ``max_records`` event records reached the start."""
    sql, args = "SELECT COUNT(*) FROM records WHERE kind = ?", [EVENT]
    if before is not None:
        sql += " AND seq <= ?"
        args.append(before)
    row = db.execute(sql, args).fetchone()
    return row is None or int(row[0]) <= max_records


@dataclass
class Period:
    """One alarm of one channel and rule, from its raise to its clear (None: still active)."""

    channel: str
    rule: str
    level: str
    priority: str
    start_ns: int
    end_ns: int | None = None
    ack_ns: int | None = None
    ack_by: str | None = None
    raises: int = 1
    limit: float | None = None
    peak: float | None = None
    unit: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def health(self) -> bool:
        return self.rule in HEALTH_RULES

    def overlap_s(self, t0: int, t1: int) -> float:
        """Seconds of [t0, t1] this period covers."""
        end = t1 if self.end_ns is None else min(self.end_ns, t1)
        return max(0, end - max(self.start_ns, t0)) / 1e9


def _rank(level: str) -> int:
    return _LEVEL_RANK.get(level, 1)


def periods(events: Iterable[dict[str, Any]]) -> list[Period]:
    """Alarm periods from alarm events oldest first (pure). A period opens when a
    (channel, rule) becomes active (``code`` non-zero), takes the worst level it
    reaches, the first acknowledgement (also one after the clear) and closes at the clear
    (or a suppression)."""
    open_: dict[tuple[str, str], Period] = {}
    last: dict[tuple[str, str], Period] = {}
    out: list[Period] = []
    for ev in events:
        rule = ev.get("rule")
        ch = ev.get("channel")
        ts = ev.get("ts")
        if not (isinstance(rule, str) and isinstance(ch, str) and isinstance(ts, int)) or rule in NOT_ALARMS:
            continue
        key = (ch, rule)
        active = bool(ev.get("code"))
        p = open_.get(key)
        tr = ev.get("transition")
        if active and p is None:
            p = Period(ch, rule, str(ev.get("level") or rule), str(ev.get("priority") or "low"), ts,
                       unit=str(ev.get("unit") or ""))
            open_[key] = last[key] = p
            out.append(p)
        if p is not None and active:
            level = str(ev.get("level") or rule)
            if tr in ("raise", "escalate") and _rank(level) > _rank(p.level):
                p.level, p.priority = level, str(ev.get("priority") or p.priority)
            if tr in ("raise", "escalate", "deescalate") and isinstance(ev.get("limit"), int | float):
                if p.limit is None or tr != "deescalate":
                    p.limit = float(ev["limit"])
            v = ev.get("value")
            if isinstance(v, int | float) and rule not in HEALTH_RULES:
                p.peak = float(v) if p.peak is None else max(p.peak, float(v))
        if tr == "ack":
            q = p or last.get(key)
            if q is not None and q.ack_ns is None:
                q.ack_ns, q.ack_by = ts, ev.get("who")
        if not active and p is not None:
            p.end_ns = ts
            del open_[key]
    return out


def add_active(found: list[Period], active: list[dict[str, Any]]) -> None:
    """Periods for alarms the engine holds active whose raise the scan did not reach."""
    have = {(p.channel, p.rule) for p in found if p.end_ns is None}
    for a in active:
        since = a.get("since_ns")
        key = (a.get("channel"), a.get("rule"))
        if not isinstance(since, int) or key in have or a.get("rule") in NOT_ALARMS:
            continue
        if not a.get("state", "").startswith("active"):
            continue
        found.append(Period(str(a["channel"]), str(a["rule"]), str(a.get("level") or a["rule"]),
                            str(a.get("priority") or "low"), since, unit=str(a.get("unit") or "")))
    found.sort(key=lambda p: p.start_ns)


def overlapping(ps: list[Period], t0: int, t1: int) -> list[Period]:
    return [p for p in ps if p.start_ns <= t1 and (p.end_ns is None or p.end_ns >= t0)]


# --------------------------------------------------------------------------- history filters

#: the filters of GET /alarms/history and what each may hold
LEVELS = (*LIMIT_LEVELS.values(), *(r for r in RULES if r != "limit"), "normal", MAINTENANCE)
STATES = ("active_unacked", "active_acked", "cleared_unacked", "normal", "suppressed")
TRANSITIONS = ("raise", "clear", "escalate", "deescalate", "ack", "shelve", "unshelve", "suppress",
               "unsuppress")


@dataclass(frozen=True)
class Filter:
    channels: frozenset[str] | None = None  # from channel and/or area
    levels: frozenset[str] | None = None
    states: frozenset[str] | None = None
    transitions: frozenset[str] | None = None
    rules: frozenset[str] | None = None

    def match(self, ev: dict[str, Any]) -> bool:
        return ((self.channels is None or ev.get("channel") in self.channels)
                and (self.levels is None or ev.get("level") in self.levels)
                and (self.states is None or ev.get("state") in self.states)
                and (self.transitions is None or ev.get("transition") in self.transitions)
                and (self.rules is None or ev.get("rule") in self.rules))


def history_page(db: sqlite3.Connection, t0: int, t1: int, flt: Filter, *, limit: int,
                 before: int | None, max_records: int = SCAN_EVENTS_MAX) -> dict[str, Any]:
    """One page of alarm events newest first: those in [t0, t1] matching ``flt`` at or
    before sequence ``before``; ``next_before`` continues (None: no more); ``complete``
    False when the scan bound stopped the search before the window's start."""
    out: list[dict[str, Any]] = []
    next_before: int | None = None
    complete = False
    for seq, ev in events_backwards(db, before=before, prefix=ALARM_PREFIX, max_records=max_records):
        ts = ev.get("ts")
        if not isinstance(ts, int) or ts > t1:
            continue
        if ts < t0:
            complete = True
            break
        if not flt.match(ev):
            continue
        if len(out) == limit:
            next_before = seq
            complete = True
            break
        ev["seq"] = seq
        out.append(ev)
    else:
        complete = _whole_journal_seen(db, max_records, before)
    return {"events": out, "next_before": next_before, "complete": complete}
