"""Alarms: the active ones with their recent transitions (from the journal, the one
durable record of them), and the operator's acknowledge, shelve and unshelve."""

# no "from __future__ import annotations": FastAPI resolves the handlers' annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, Request
from fastapi import Path as PathParam
from pydantic import Field

from gateway.admin.auth import Operator, Viewer
from gateway.admin.context import AdminContext, StrictBody
from gateway.core.tokens import Principal
from gateway.core.units import iso_ns
from gateway.services import DaemonContext
from gateway.store.queries import events_backwards
from rules.commands import ALL_CHANNELS


class AckBody(StrictBody):
    rule: str | None = Field(
        default=None, max_length=64, description="which alarm of the channel (all if omitted)"
    )
    comment: str | None = Field(default=None, max_length=1000)


class ShelveBody(StrictBody):
    duration: str = Field(description="how long, with a unit: 30m, 2h, 1d (at most alarms.max_shelve, "
                          "7d by default)", max_length=32)
    reason: str = Field(min_length=1, max_length=1000)
    rule: str | None = Field(default=None, max_length=64)


class UnshelveBody(StrictBody):
    rule: str | None = Field(default=None, max_length=64)


def router(ctx: AdminContext) -> APIRouter:
    r = APIRouter()
    daemon = ctx.daemon

    @r.get("/alarms", tags=["alarms"], summary="active alarms and recent transitions")
    async def alarms(
        _p: Viewer,
        history: Annotated[int, Query(ge=0, le=5000, description="how many past transitions")] = 100,
        channel: Annotated[str | None, Query(max_length=200)] = None,
    ) -> dict[str, Any]:
        active = ctx.alarms.active()
        if channel:
            active = [a for a in active if a.get("channel") == channel]
        hist = await _alarm_history(daemon, history, channel) if history else []
        hist = [ctx.alarms.display.event(ev) for ev in hist]  # exact in the journal, read by people here
        return {"active": active, "history": hist}

    def _check_channel(name: str) -> None:
        if name not in daemon.table.by_name:
            raise HTTPException(404, f"no channel named {name!r}")

    def _alarm_command(verb: str, channel: str, request: Request, p: Principal,
                       body: StrictBody | None) -> dict[str, Any]:
        if channel != ALL_CHANNELS:
            _check_channel(channel)
        fields = body.model_dump(exclude_none=True) if body is not None else {}
        ctx.audit(request, channel=channel, **fields)
        events = ctx.alarms.command(verb, {**fields, "channel": channel, "operator": p.name}, daemon.clock())
        ctx.emit(events)  # exact into the journal; the operator reads them rendered
        return {"channel": channel, "events": [ctx.alarms.display.event(e) for e in events]}

    @r.post("/alarms/{channel}/ack", tags=["alarms"],
              summary="acknowledge a channel's alarm(s); channel '*' acknowledges every alarm")
    async def ack(
        channel: Annotated[str, PathParam(max_length=200)],
        request: Request,
        p: Operator,
        body: Annotated[AckBody | None, Body()] = None,
    ) -> dict[str, Any]:
        return _alarm_command("ack", channel, request, p, body)

    @r.post("/alarms/{channel}/shelve", tags=["alarms"], summary="shelve a channel's alarm(s) for a while")
    async def shelve(
        channel: Annotated[str, PathParam(max_length=200)], body: ShelveBody, request: Request, p: Operator
    ) -> dict[str, Any]:
        return _alarm_command("shelve", channel, request, p, body)

    @r.post("/alarms/{channel}/unshelve", tags=["alarms"], summary="end a shelve early")
    async def unshelve(
        channel: Annotated[str, PathParam(max_length=200)],
        request: Request,
        p: Operator,
        body: Annotated[UnshelveBody | None, Body()] = None,
    ) -> dict[str, Any]:
        return _alarm_command("unshelve", channel, request, p, body)

    return r


async def _alarm_history(daemon: DaemonContext, limit: int, channel: str | None) -> list[dict[str, Any]]:
    """The newest alarm transitions from the journal (the one durable record of them)."""

    def scan(db: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for seq, ev in events_backwards(db, prefix=b'{"type":"alarm"'):
            if channel and ev.get("channel") != channel:
                continue
            ev.setdefault("seq", seq)
            if isinstance(ev.get("ts"), int):
                ev["time"] = iso_ns(ev["ts"])
            out.append(ev)
            if len(out) >= limit:
                break
        return out

    result: list[dict[str, Any]] = await daemon.journal.run_read(scan)
    return result
