"""Permits to work over HTTP: the gas analysis of a permit's live readings, shown
(GET, nothing recorded) and taken (POST, recorded; during the work a failing one flags
the permit). The workflow steps themselves are the registers' transitions
(routes/registers.py), which call ``analyse`` here for a step with ``check: gas``."""

# no "from __future__ import annotations": FastAPI resolves the handlers' annotations

from typing import Any

from fastapi import APIRouter, Request

from gateway.admin.auth import Operator, Viewer
from gateway.admin.context import AdminContext
from gateway.admin.permits.live import permit_analysis
from gateway.admin.registers import NotFound
from gateway.admin.routes.registers import RId, RType


def router(ctx: AdminContext) -> APIRouter:
    r = APIRouter()
    store = ctx.store

    def _permit(rtype: str) -> None:
        if store.spec(rtype).permit is None:
            raise NotFound(f"{rtype} is not a permit to work")

    @r.get(
        "/registers/{rtype}/{rid}/analysis",
        tags=["permits"],
        summary="a permit's gas analysis on live readings now (shown, not recorded)",
    )
    async def analysis_show(rtype: RType, rid: RId, _p: Viewer) -> dict[str, Any]:
        _permit(rtype)
        doc = await ctx.call(store.get, rtype, rid)
        return permit_analysis(ctx, doc, "preview")

    @r.post(
        "/registers/{rtype}/{rid}/analysis",
        tags=["permits"],
        summary="take and record a gas analysis (periodic); a failing one during the work flags the permit",
    )
    async def analysis_take(rtype: RType, rid: RId, request: Request, p: Operator) -> Any:
        _permit(rtype)
        doc = await ctx.call(store.get, rtype, rid)
        result = permit_analysis(ctx, doc, "periodic")
        doc, events = await ctx.call(store.record_analysis, rtype, rid, result, p.name)
        ctx.emit(events)
        ctx.audit(request, register=rtype, id=rid, action="analysis", ok=result["ok"])
        return {"record": doc, "analysis": result}

    return r
