"""Routes of the gateway itself: liveness (no token), who am I, status and Prometheus metrics."""

# no "from __future__ import annotations": FastAPI resolves the handlers' annotations

import asyncio
import math
from typing import Any

import numpy as np
from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from gateway import __version__
from gateway.admin.auth import Viewer
from gateway.admin.context import AdminContext
from gateway.admin.metrics import collect as collect_metrics
from gateway.core.batch import Quality
from gateway.core.units import iso_ns


def router(ctx: AdminContext) -> APIRouter:
    r = APIRouter()
    daemon = ctx.daemon

    @r.get("/health", tags=["gateway"], summary="liveness (no token)")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "gateway": daemon.cfg.gateway.id, "version": __version__}

    @r.get("/whoami", tags=["gateway"])
    async def whoami(p: Viewer) -> dict[str, Any]:
        return {"name": p.name, "role": p.role}

    @r.get("/status", tags=["gateway"], summary="gateway, devices, journal and consumer lags")
    async def status(_p: Viewer) -> dict[str, Any]:
        now = daemon.clock()
        js = daemon.journal.stats()
        js.pop("path", None)
        devices = []
        for d in daemon.devices.values():
            devices.append(
                {
                    "name": d.name,
                    "protocol": d.protocol,
                    "state": d.state,
                    "last_error": d.last_error,
                    "last_ok": iso_ns(d.last_ok_ns) if d.last_ok_ns else None,
                    "last_ok_age_s": round((now - d.last_ok_ns) / 1e9, 3) if d.last_ok_ns else None,
                    "polls": d.polls,
                    "errors": d.errors,
                    "overruns": d.overruns,
                    "samples": d.samples,
                    "last_poll_ms": round(d.last_poll_ms, 3),
                    "channels": len(daemon.table.by_device.get(d.name, [])),
                    "info": d.info,
                }
            )
        q = daemon.live.quality
        services = {svc.name: _jsonable(svc.stats()) for svc in daemon.services}
        active = ctx.alarms.active_cached()
        return {
            "gateway": {
                "id": daemon.cfg.gateway.id,
                "site": daemon.cfg.gateway.site,
                "name": daemon.cfg.gateway.name,
                "version": __version__,
                "started": iso_ns(daemon.started_ns),
                "uptime_s": round((now - daemon.started_ns) / 1e9, 3),
                "now": iso_ns(now),
                "ingested_batches": daemon.ingested_batches,
                "ingest_errors": daemon.ingest_errors,
            },
            "devices": devices,
            "channels": {
                "total": len(q),
                "good": int(np.count_nonzero(q < Quality.UNCERTAIN)),
                "uncertain": int(np.count_nonzero((q >= Quality.UNCERTAIN) & (q < Quality.BAD))),
                "bad": int(np.count_nonzero(q >= Quality.BAD)),
            },
            "journal": js,
            "consumers": js.get("consumers", {}),
            "alarms": {
                "active": sum(1 for a in active if str(a.get("state", "")).startswith("active")),
                "unacknowledged": sum(1 for a in active if "unacked" in str(a.get("state", ""))),
            },
            "services": services,
        }

    @r.get("/metrics", tags=["gateway"], summary="Prometheus text format", response_class=PlainTextResponse)
    async def metrics(_p: Viewer) -> PlainTextResponse:
        active = ctx.alarms.active_cached()
        n = sum(1 for a in active if str(a.get("state", "")).startswith("active"))
        api = {"requests": ctx.requests, "reminders": ctx.registers.reminders}
        # read the state on the loop; the text (most of the cost on a large plant: bench/metrics.py)
        # is written in a thread from the families, which nothing changes any more
        text = await asyncio.to_thread(collect_metrics(daemon, active_alarms=n, api=api).text)
        return PlainTextResponse(text, media_type=CONTENT_TYPE_PLAIN_0_0_4)

    return r


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    return str(v)
