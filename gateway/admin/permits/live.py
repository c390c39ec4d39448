"""A permit's gas analysis from what the daemon sees now: the channel table, the live
values and the active alarms, handed to the pure ``analysis`` module."""

from __future__ import annotations

import math
from typing import Any

from gateway.admin.context import AdminContext
from gateway.admin.permits.analysis import Snapshot, analyse, select


def snapshots(ctx: AdminContext) -> list[Snapshot]:
    """Every channel as the gateway sees it now: value, quality, time, active alarm."""
    live = ctx.daemon.live
    alarms: dict[str, str] = {}
    for a in ctx.alarms.active_cached():
        if str(a.get("state", "")).startswith("active") and isinstance(a.get("channel"), str):
            alarms.setdefault(a["channel"], str(a.get("level")))
    return [
        Snapshot(
            c.name,
            c.kind,
            c.unit,
            c.spec.gas,
            c.spec.area,
            float(live.value[c.index]),
            int(live.quality[c.index]),
            int(live.ts[c.index]),
            alarms.get(c.name),
        )
        for c in ctx.daemon.table.channels
    ]


def permit_analysis(ctx: AdminContext, doc: dict[str, Any], step: str) -> dict[str, Any]:
    """The analysis of a permit record's channels, now. The data may hold a step's fields
    not validated yet (the store validates them next): values of the wrong type are ignored
    here, and the store then refuses them."""
    d = doc["data"]
    channels = d.get("channels")
    names = [n for n in channels if isinstance(n, str)] if isinstance(channels, list) else []
    area, medium, lel = d.get("area"), d.get("medium"), d.get("lel_percent")
    good_lel = isinstance(lel, int | float) and not isinstance(lel, bool) and math.isfinite(lel) and lel > 0
    chans = select(snapshots(ctx), names=names, area=area if isinstance(area, str) else None)
    return analyse(
        chans,
        ctx.daemon.clock(),
        stale_after_s=ctx.daemon.cfg.permits.stale_after,
        step=step,
        medium=medium if isinstance(medium, str) else None,
        lel=float(lel) if good_lel else None,
        enriched=d.get("oxygen_enriched") is True,
    )
