"""A permit's gas analysis from live readings: which channels it covers (the ones it
names, and the gas channels of its area), and each reading judged against GB 30871-2022's
criteria (``criteria``). Pure: the caller hands in a snapshot of the channels (value,
quality, time, active alarm) and the time; nothing here reads a clock or the daemon.

A reading passes only when it is good, fresh, not in alarm and within its criterion;
anything else (no data, bad or uncertain quality, older than ``stale_after_s``, an active
alarm, a gas or unit the criteria cannot judge) fails the analysis, each with a reason
a person can act on. The result is what the permit records and what the API shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gateway.admin.permits import criteria
from gateway.core.batch import Quality, quality_label
from gateway.core.units import iso_ns

#: the most channels one analysis takes (an area is a handful of detectors; this bounds a
#: permit that names a whole plant)
MAX_CHANNELS = 64


@dataclass(frozen=True)
class Snapshot:
    """One channel as the gateway sees it at the analysis."""

    name: str
    kind: str
    unit: str
    gas: str | None
    area: str | None
    value: float
    quality: int
    ts: int  # ns since the epoch; <= 0: never read
    alarm: str | None = None  # the active alarm's level, if any


def select(channels: list[Snapshot], *, names: list[str], area: str | None) -> list[Snapshot]:
    """The permit's channels: those it names (any kind), then the gas channels of its area."""
    by_name = {c.name: c for c in channels}
    out = [by_name[n] for n in names if n in by_name]
    seen = {c.name for c in out}
    if area:
        out += [c for c in channels if c.area == area and c.kind == "gas" and c.name not in seen]
    return out


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def judge(
    c: Snapshot, now_ns: int, *, stale_after_s: float, medium: str | None, lel: float | None, enriched: bool
) -> dict[str, Any]:
    """One reading with its criterion and verdict (pass, fail, alarm, bad, stale, no_data,
    unjudged) and, unless it passed, the reason."""
    value = c.value if math.isfinite(c.value) else None
    age = None if c.ts <= 0 else round((now_ns - c.ts) / 1e9, 3)
    r: dict[str, Any] = {
        "channel": c.name,
        "value": value,
        "unit": c.unit,
        "quality": quality_label(c.quality),
        "ts": iso_ns(c.ts) if c.ts > 0 else None,
        "age_s": age,
        "criterion": None,
        "clause": None,
        "verdict": "pass",
        "reason": None,
    }
    try:
        crit = criteria.criterion(c.unit, c.gas, medium=medium, lel=lel, enriched=enriched)
    except criteria.NoCriterion as e:
        crit = None
        r.update(verdict="unjudged", reason=f"{c.name}: {e}")
    if crit is not None:
        r["criterion"], r["clause"] = crit.text, crit.clause
    if crit is None:
        pass
    elif c.ts <= 0 or c.quality == Quality.NO_DATA or value is None:
        r.update(verdict="no_data", reason=f"{c.name} has no reading")
    elif c.quality >= Quality.UNCERTAIN:
        r.update(
            verdict="bad",
            reason=f"{c.name}'s reading is {quality_label(c.quality)}: not usable for an analysis",
        )
    elif age is not None and age > stale_after_s:
        r.update(
            verdict="stale",
            reason=f"{c.name}'s last reading is {age:.0f} s old (older than {stale_after_s:g} s)",
        )
    elif (crit.lo is not None and value < crit.lo) or (crit.hi is not None and value > crit.hi):
        r.update(
            verdict="fail",
            reason=f"{c.name} reads {_fmt(value)} {crit.unit}; {crit.clause} requires {crit.text}",
        )
    elif c.alarm:
        r.update(verdict="alarm", reason=f"{c.name} is in alarm ({c.alarm})")
    return r


def analyse(
    channels: list[Snapshot],
    now_ns: int,
    *,
    stale_after_s: float,
    step: str,
    medium: str | None = None,
    lel: float | None = None,
    enriched: bool = False,
) -> dict[str, Any]:
    """The analysis of a permit's channels (``select``): ok only when there is at least one
    gas reading and every reading passes. ``message`` says why not, for the page."""
    if not channels:
        return {
            "ok": False,
            "at": iso_ns(now_ns),
            "step": step,
            "readings": [],
            "message": "no gas detector for this permit: name its 'area' (with gas channels) or its "
            "'channels' so the analysis can use live readings",
        }
    if len(channels) > MAX_CHANNELS:
        return {
            "ok": False,
            "at": iso_ns(now_ns),
            "step": step,
            "readings": [],
            "message": f"{len(channels)} channels; an analysis takes at most {MAX_CHANNELS}",
        }
    readings = [
        judge(c, now_ns, stale_after_s=stale_after_s, medium=medium, lel=lel, enriched=enriched)
        for c in channels
    ]
    failed = [r for r in readings if r["verdict"] != "pass"]
    ok = not failed
    if ok:
        message = f"{len(readings)} reading(s) within {criteria.STANDARD}'s criteria"
    else:
        message = "refused: " + "; ".join(r["reason"] for r in failed)
    return {"ok": ok, "at": iso_ns(now_ns), "step": step, "readings": readings, "message": message}
