"""A channel's stored values: from InfluxDB when the historian has it, else from the
journal, through the same query as ``safegw history`` (gateway/historian/history.py); and
a channel's trend for the page's charts (``/trend``): a bounded number of points (raw, or
min/mean/max per interval for long ranges), the channel's alarm limits and its alarm
periods from the journal's alarm events (gateway/admin/trend.py)."""

# no "from __future__ import annotations": FastAPI resolves the handlers' annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi import Path as PathParam

from gateway.admin.auth import Viewer
from gateway.admin.context import AdminContext
from gateway.admin.registers import Invalid
from gateway.admin.routes.timerange import time_range
from gateway.admin.trend import RANGES, trend
from gateway.core.units import parse_duration
from gateway.historian.history import HistoryError, query_api


def router(ctx: AdminContext) -> APIRouter:
    r = APIRouter()
    daemon = ctx.daemon

    @r.get("/history/{channel}", tags=["history"], summary="a channel's stored values")
    async def history(
        channel: Annotated[str, PathParam(max_length=200)],
        _p: Viewer,
        start: Annotated[
            str | None,
            Query(alias="from", max_length=40, description="ISO time or a duration back from now (1h)"),
        ] = None,
        end: Annotated[str | None, Query(alias="to", max_length=40)] = None,
        every: Annotated[
            str | None, Query(max_length=16, description="aggregate to this interval (1m)")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
    ) -> dict[str, Any]:
        c = daemon.table.by_name.get(channel)
        if c is None:
            raise HTTPException(404, f"no channel named {channel!r}")
        t0, t1 = time_range(start, end, daemon.clock(), default_ns=3600 * 10**9, empty_ok=True)
        step = None
        if every:
            try:
                step = parse_duration(every)
            except ValueError as e:
                raise Invalid([(("query", "every"), str(e))]) from None
            if step <= 0:
                raise Invalid([(("query", "every"), "must be > 0")])
        try:
            result: dict[str, Any] = await query_api(daemon, c.name, t0, t1, every=step, limit=limit)
        except HistoryError as e:
            msg = str(e)
            if "InfluxDB" in msg:  # the historian's server is down or refused: not the caller's fault
                raise HTTPException(503, msg) from None
            raise Invalid([(("query",), msg)]) from None
        return result

    @r.get("/trend/{channel}", tags=["history"],
           summary="a channel's trend: points (aggregated for long ranges), limits, alarm periods")
    async def trend_of(
        channel: Annotated[str, PathParam(max_length=200)],
        _p: Viewer,
        range_: Annotated[
            str | None,
            Query(alias="range", max_length=8, description="the last 1h, 8h, 24h or 7d (instead of from/to)"),
        ] = None,
        start: Annotated[str | None, Query(alias="from", max_length=40, description="ISO time")] = None,
        end: Annotated[str | None, Query(alias="to", max_length=40)] = None,
        points: Annotated[int, Query(ge=10, le=5000, description="at most this many points")] = 1000,
    ) -> dict[str, Any]:
        c = daemon.table.by_name.get(channel)
        if c is None:
            raise HTTPException(404, f"no channel named {channel!r}")
        now = daemon.clock()
        if range_ is not None:
            if range_ not in RANGES:
                raise Invalid([(("query", "range"), f"expected one of {', '.join(RANGES)}, got {range_!r}")])
            if start or end:
                raise Invalid([(("query", "range"), "give either range or from/to, not both")])
            t1, t0 = now, now - RANGES[range_] * 10**9
        else:
            t0, t1 = time_range(start, end, now, default_ns=3600 * 10**9, empty_ok=False)
        if t1 - t0 > MAX_TREND_NS:
            raise Invalid([(("query", "from"), "a trend spans at most 31 days")])
        try:
            return await trend(ctx, c, t0, t1, max_points=points)
        except HistoryError as e:
            msg = str(e)
            if "InfluxDB" in msg:
                raise HTTPException(503, msg) from None
            raise Invalid([(("query",), msg)]) from None

    return r


#: the longest trend asked for (the journal keeps 30 days by default)
MAX_TREND_NS = 31 * 86400 * 10**9
