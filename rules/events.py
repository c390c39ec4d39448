"""Alarm transition events: the JSON documents the journal stores and MQTT publishes.

An event is one transition of one alarm (a channel and a rule) through the ISA-18.2
lifecycle: ``active_unacked``, ``active_acked``, ``cleared_unacked``, ``normal``, with
``shelved`` and ``suppressed`` flags. Both rule implementations build their events
here, so only the logic differs between them, never the wording.
"""

from __future__ import annotations

import math
from typing import Any

from rules.settings import (
    LIMIT_LEVELS,
    NS,
    PRIORITY,
    R_BAD,
    R_FROZEN,
    R_LIMIT,
    R_MAC,
    R_PEAK,
    R_PREDICT,
    R_RANGE,
    R_ROC,
    R_STALE,
    R_STEL,
    R_TREND,
    R_TWA,
    RULES,
    STEL_WINDOW_NS,
    TWA_WINDOW_NS,
    ChannelRules,
)

ACTIVE_UNACKED = "active_unacked"
ACTIVE_ACKED = "active_acked"
CLEARED_UNACKED = "cleared_unacked"
NORMAL = "normal"


def level_name(rule: int, code: int) -> str:
    if rule == R_LIMIT:
        return LIMIT_LEVELS.get(code, "normal") if code else "normal"
    return RULES[rule] if code else "normal"


def state_name(active: int, unacked: bool) -> str:
    if active:
        return ACTIVE_UNACKED if unacked else ACTIVE_ACKED
    return CLEARED_UNACKED if unacked else NORMAL


def transition_name(old: int, new: int) -> str:
    if new == 0:
        return "clear"
    if old == 0 or (old > 0) != (new > 0):
        return "raise"
    return "escalate" if abs(new) > abs(old) else "deescalate"


def escalates(old: int, new: int) -> bool:
    """Whether old→new needs the on-delay (a raise or a worse level) rather than the off-delay."""
    return new != 0 and (old == 0 or (old > 0) != (new > 0) or abs(new) > abs(old))


def _f(x: float | None) -> float | None:
    if x is None or math.isnan(x) or math.isinf(x):
        return None
    return float(x)


def display_value(cr: ChannelRules, rule: int, metric: float) -> float | None:
    """The figure an operator reads for a rule, from the core's raw metric (the rule's
    ``value``, or for the rules measured in seconds, their ``duration_s`` / ``time_to_limit_s``)."""
    if rule == R_TWA:
        avg = metric / TWA_WINDOW_NS
        if cr.exposure == "noise":
            return _f(cr.noise_k() * math.log10(avg)) if avg > 0 else None
        return _f(avg)
    if rule == R_STEL:
        return _f(metric / STEL_WINDOW_NS)
    return _f(metric)


def _seconds(ns: int | None) -> float | None:
    return None if ns is None else ns / NS


def rule_limit(cr: ChannelRules, rule: int, code: int, value: float | None) -> float | None:
    """The limit in the channel's unit (per second for roc, per minute for trend); None
    for the rules whose threshold is a time (stale, bad, frozen: ``threshold_s``)."""
    if rule == R_LIMIT:
        return _f(getattr(cr, LIMIT_LEVELS[code])) if code in LIMIT_LEVELS else None
    if rule == R_ROC:
        return _f(cr.roc)
    if rule == R_TREND:
        return _f(cr.trend_slope)
    if rule == R_PREDICT:
        return _f(cr.predict_limit)
    if rule == R_TWA:
        return _f(cr.twa)
    if rule == R_STEL:
        return _f(cr.stel)
    if rule == R_MAC:
        return _f(cr.mac)
    if rule == R_PEAK:
        p3, p5 = cr.peak_levels()
        return _f(p5 if value is not None and value > p5 else p3)
    if rule == R_RANGE:
        if value is not None and value < cr.range_lo:
            return _f(cr.range_lo)
        return _f(cr.range_hi)
    return None


def figures(cr: ChannelRules, rule: int, code: int, metric: float) -> dict[str, Any]:
    """The numbers of an alarm, each in its own unit (docs/mqtt.md, "Alarm events"):

    - ``value`` (the channel's unit): the reading for limit, range and frozen; the rate
      for roc (per second) and trend (per minute); the average for twa and stel. None
      where no reading is meant: stale (none came), bad (none valid), predict.
    - ``limit`` (the channel's unit): the limit crossed or, for predict, the limit the
      trend is heading to; None for the rules whose threshold is a time.
    - ``duration_s``: how long the channel has been stale or bad (seconds).
    - ``threshold_s``: the time after which stale, bad and frozen alarm (seconds).
    - ``time_to_limit_s`` and ``horizon_s``: predict's forecast and its horizon (seconds).
    """
    shown = display_value(cr, rule, metric)
    if rule in (R_STALE, R_BAD):
        return {"value": None, "limit": None, "duration_s": shown,
                "threshold_s": _seconds(cr.stale_ns if rule == R_STALE else cr.bad_ns)}
    if rule == R_FROZEN:
        return {"value": shown, "limit": None, "threshold_s": _seconds(cr.frozen_ns)}
    if rule == R_PREDICT:
        return {"value": None, "limit": rule_limit(cr, rule, code, None), "time_to_limit_s": shown,
                "horizon_s": cr.predict_ns / NS}
    return {"value": shown, "limit": rule_limit(cr, rule, code, shown)}


def alarm_event(cr: ChannelRules, index: int, rule: int, old: int, new: int, unacked: bool, ts: int,
                metric: float, *, transition: str | None = None, who: str | None = None,
                shelved: bool = False, event_id: str | None = None) -> dict[str, Any]:
    code = new if new else old
    lvl = level_name(rule, code)
    ev: dict[str, Any] = {
        "type": "alarm",
        "id": event_id,
        "ts": int(ts),
        "channel": cr.name,
        "index": index,
        "kind": cr.kind,
        "unit": cr.unit,
        "rule": RULES[rule],
        "level": lvl,
        "code": int(new),
        "transition": transition or transition_name(old, new),
        "state": state_name(new, unacked),
        "priority": PRIORITY.get(lvl, "low"),
    }
    ev.update(figures(cr, rule, code, metric))
    ev["who"] = who
    if shelved:
        ev["shelved"] = True
    return ev


def maintenance_event(cr: ChannelRules, index: int, on: bool, ts: int, *, who: str | None = None,
                      reason: str | None = None) -> dict[str, Any]:
    """The channel entered (or left) maintenance: its alarms are suppressed meanwhile."""
    ev: dict[str, Any] = {
        "type": "alarm", "id": None, "ts": int(ts), "channel": cr.name, "index": index, "kind": cr.kind,
        "unit": cr.unit, "rule": "maintenance", "level": "maintenance", "code": int(on),
        "transition": "suppress" if on else "unsuppress", "state": "suppressed" if on else NORMAL,
        "priority": "low", "value": None, "limit": None, "who": who,
    }
    if reason:
        ev["reason"] = reason
    return ev


def suppress_event(cr: ChannelRules, index: int, rule: int, active: int, last_code: int, ts: int,
                   metric: float) -> dict[str, Any]:
    """An alarm that was active (or unacknowledged) when its channel went into maintenance."""
    ev = alarm_event(cr, index, rule, active or last_code, 0, False, ts, metric, transition="suppress")
    ev["state"] = "suppressed"
    return ev
