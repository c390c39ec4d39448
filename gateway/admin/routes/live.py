"""Live values: every channel with its quality, age and alarm colour (the page's feed),
and one channel with its configuration."""

# no "from __future__ import annotations": FastAPI resolves the handlers' annotations

from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import Response

from gateway.admin.auth import Viewer
from gateway.admin.context import AdminContext
from gateway.admin.views import QLABEL
from gateway.core.batch import Quality
from gateway.core.units import iso_ns


def router(ctx: AdminContext) -> APIRouter:
    r = APIRouter()
    daemon = ctx.daemon

    @r.get("/channels", tags=["live"], summary="live values with quality, age and alarm state")
    async def channels(
        _p: Viewer,
        q: Annotated[
            str | None, Query(max_length=200, description="name contains this (or a glob: GT-*)")
        ] = None,
        kind: Annotated[str | None, Query(max_length=64)] = None,
        device: Annotated[str | None, Query(max_length=64)] = None,
        hazard_source: Annotated[str | None, Query(max_length=128)] = None,
        area: Annotated[str | None, Query(max_length=128)] = None,
        state: Annotated[
            Literal["normal", "fault", "alarm"] | None,
            Query(description="normal, fault (quality not good) or alarm"),
        ] = None,
        quality: Annotated[Literal["good", "uncertain", "bad"] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 100_000,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    ) -> Response:
        view = ctx.channels
        now = daemon.clock()
        live = daemon.live
        mask = view.select(q=q, kind=kind, device=device, hazard_source=hazard_source, area=area)
        qual = live.quality
        if quality == "good":
            mask &= qual < Quality.UNCERTAIN
        elif quality == "uncertain":
            mask &= (qual >= Quality.UNCERTAIN) & (qual < Quality.BAD)
        elif quality == "bad":
            mask &= qual >= Quality.BAD
        # red: an annunciated process alarm; yellow: a sensor/comms fault (bad quality, or a
        # sensor-health alarm: stale, bad, out of range, frozen), as on gas detector panels
        alarm_mask, health, key, describe = daemon.rules.channel_summary()
        fault_mask = (qual >= Quality.UNCERTAIN) | health
        if state == "alarm":
            mask &= alarm_mask
        elif state == "fault":
            mask &= ~alarm_mask & fault_mask
        elif state == "normal":
            mask &= ~alarm_mask & ~fault_mask
        idx = np.flatnonzero(mask)
        total = len(idx)
        idx = idx[offset : offset + limit]
        colour = np.where(alarm_mask, 2, np.where(fault_mask, 1, 0)).astype(np.int8)
        items, count = view.render(live, now, idx, colour, key, describe)
        head = f'{{"ts":"{iso_ns(now)}","total":{total},"offset":{offset},"count":{count},"channels":['
        body = b"".join((head.encode(), items, b"]}"))
        return Response(body, media_type="application/json")

    @r.get("/channels/{name}", tags=["live"], summary="one channel with its configuration")
    async def channel(name: Annotated[str, PathParam(max_length=200)], _p: Viewer) -> dict[str, Any]:
        c = daemon.table.by_name.get(name)
        if c is None:
            raise HTTPException(404, f"no channel named {name!r}")
        i = c.index
        v = float(daemon.live.value[i])
        ts = int(daemon.live.ts[i])
        qq = int(daemon.live.quality[i])
        alarms = [a for a in ctx.alarms.active() if a.get("channel") == name]
        return {
            "index": i,
            "name": c.name,
            "kind": c.kind,
            "unit": c.unit,
            "device": c.device,
            "value": ctx.channels.display[i].value(v),
            "quality": QLABEL[qq],
            "q": qq,
            "ts": iso_ns(ts) if ts else None,
            "age_s": round((daemon.clock() - ts) / 1e9, 3) if ts else None,
            "alarms": alarms,
            "config": c.spec.model_dump(mode="json", exclude_none=True),
        }

    return r
