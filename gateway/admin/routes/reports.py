"""The shift report (``GET /reports/shift``): alarms with their acknowledgement times, the
faulty channels and the top alarm sources of a period, as JSON (the page), PDF or XLSX
(gateway/admin/report.py builds it, gateway/admin/reportdoc.py writes the files)."""

# no "from __future__ import annotations": FastAPI resolves the handlers' annotations

import asyncio
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response

from gateway.admin import reportdoc
from gateway.admin.alarmlog import LOOKBACK_NS, Scan, add_active, periods, scan_alarm_events
from gateway.admin.auth import Viewer
from gateway.admin.context import AdminContext
from gateway.admin.registers import Invalid
from gateway.admin.report import build
from gateway.admin.routes.timerange import FromQuery, ToQuery, time_range

#: the longest period one report covers
MAX_REPORT_NS = 31 * 86400 * 10**9
MEDIA = {
    "pdf": "application/pdf",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}


def site_zone(ctx: AdminContext, tz: str | None) -> ZoneInfo:
    """The zone asked for, else the site's (``gateway.timezone`` when the config has it), else UTC."""
    name = tz or getattr(ctx.daemon.cfg.gateway, "timezone", None) or "UTC"
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        msg = f"unknown time zone {name!r} (an IANA name: Asia/Shanghai)"
        raise Invalid([(("query", "tz"), msg)]) from None


def router(ctx: AdminContext) -> APIRouter:
    r = APIRouter()
    daemon = ctx.daemon
    # one file written at a time: a PDF costs CPU-seconds, and the API shares the daemon's host
    writing = asyncio.Semaphore(1)

    @r.get("/reports/shift", tags=["reports"],
           summary="shift report: alarms and acknowledgements, faulty channels, top alarm sources")
    async def shift(
        _p: Viewer,
        start: FromQuery = None,
        end: ToQuery = None,
        fmt: Annotated[Literal["json", "pdf", "xlsx"], Query(alias="format")] = "json",
        lang: Annotated[Literal["en", "zh-CN"], Query()] = "en",
        tz: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_+/-]+$")] = None,
    ) -> Any:
        zone = site_zone(ctx, tz)
        now = daemon.clock()
        t0, t1 = time_range(start, end, now, default_ns=8 * 3600 * 10**9, empty_ok=False)
        if t1 - t0 > MAX_REPORT_NS:
            raise Invalid([(("query", "from"), "a report covers at most 31 days")])

        def scan(db: Any) -> Scan:
            return scan_alarm_events(db, t0, t1, lookback_ns=LOOKBACK_NS)

        found = await daemon.journal.run_read(scan)
        ps = periods(ev for _, ev in found.events)
        add_active(ps, ctx.alarms.active())
        areas = {c.name: c.spec.area for c in daemon.table.channels}
        rep = build(ps, t0, t1, tz=zone, areas=areas, complete=found.complete, now_ns=now)
        if fmt == "json":
            return rep
        write = reportdoc.pdf if fmt == "pdf" else reportdoc.xlsx
        # the PDF embeds a CJK font subset (a second of CPU): off the event loop
        try:
            async with writing:
                body = await asyncio.to_thread(write, rep, lang)
        except reportdoc.FontMissing as e:
            raise HTTPException(503, str(e)) from None
        name = f"shift-report-{rep['from'][:10]}.{fmt}"
        return Response(body, media_type=MEDIA[fmt],
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    return r
