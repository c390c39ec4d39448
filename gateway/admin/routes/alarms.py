"""Alarms: the active ones with their recent transitions (from the journal, the one
durable record of them), the alarm history filtered by time, area, channel, level, state
and transition, a page at a time, and the operator's acknowledge, shelve and unshelve."""

# no "from __future__ import annotations": FastAPI resolves the handlers' annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, Request
from fastapi import Path as PathParam
from pydantic import Field

from gateway.admin.alarmlog import LEVELS, STATES, TRANSITIONS, Filter, history_page
from gateway.admin.auth import Operator, Viewer
from gateway.admin.context import AdminContext, StrictBody
from gateway.admin.registers import Invalid
from gateway.admin.routes.timerange import FromQuery, ToQuery, time_range
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

    @r.get("/alarms/history", tags=["alarms"],
           summary="the alarm journal, newest first, filtered; page on with next_before")
    async def alarm_history(
        _p: Viewer,
        start: FromQuery = None,
        end: ToQuery = None,
        channel: Annotated[list[str] | None, Query(max_length=200, description="repeat for several")] = None,
        area: Annotated[str | None, Query(max_length=128)] = None,
        level: Annotated[list[str] | None, Query(max_length=16)] = None,
        state: Annotated[list[str] | None, Query(max_length=32)] = None,
        transition: Annotated[list[str] | None, Query(max_length=16)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
        before: Annotated[int | None, Query(ge=0, le=2**62, description="next_before of a page")] = None,
    ) -> dict[str, Any]:
        t0, t1 = time_range(start, end, daemon.clock(), default_ns=24 * 3600 * 10**9, empty_ok=True)
        errs: list[tuple[tuple[str | int, ...], str]] = []
        for name, vals in (("channel", channel), ("level", level), ("state", state),
                           ("transition", transition)):
            if vals is not None and len(vals) > MAX_FILTER_VALUES:
                errs.append((("query", name), f"at most {MAX_FILTER_VALUES} values"))
        # FastAPI bounds a list parameter's count, not its items: each item is checked here
        for name, vals, longest in (("channel", channel, 200), ("level", level, 16), ("state", state, 32),
                                    ("transition", transition, 16)):
            for v in vals or ():
                if len(v) > longest:
                    errs.append((("query", name), f"at most {longest} characters, got {len(v)}"))
        if errs:
            raise Invalid(errs)
        for v in level or ():
            if v not in LEVELS:
                errs.append((("query", "level"), f"expected one of {', '.join(LEVELS)}, got {v!r}"))
        for v in state or ():
            if v not in STATES:
                errs.append((("query", "state"), f"expected one of {', '.join(STATES)}, got {v!r}"))
        for v in transition or ():
            if v not in TRANSITIONS:
                errs.append((("query", "transition"), f"expected one of {', '.join(TRANSITIONS)}, got {v!r}"))
        for v in channel or ():
            if v not in daemon.table.by_name:
                errs.append((("query", "channel"), f"no channel named {v!r}"))
        if errs:
            raise Invalid(errs)
        names: set[str] | None = set(channel) if channel else None
        if area:
            in_area = {ch.name for ch in daemon.table.channels if (ch.spec.area or "") == area}
            names = in_area if names is None else names & in_area
        flt = Filter(channels=None if names is None else frozenset(names),
                     levels=frozenset(level) if level else None, states=frozenset(state) if state else None,
                     transitions=frozenset(transition) if transition else None)

        def scan(db: Any) -> dict[str, Any]:
            return history_page(db, t0, t1, flt, limit=limit, before=before)

        page: dict[str, Any] = await daemon.journal.run_read(scan)
        shown = []
        for ev in page["events"]:
            ev = ctx.alarms.display.event(ev)
            ev["time"] = iso_ns(ev["ts"])
            ev["area"] = _area(ev.get("channel"))
            shown.append(ev)
        page["events"] = shown
        page["from"], page["to"] = iso_ns(t0), iso_ns(t1)
        return page

    def _area(name: Any) -> str | None:
        c = daemon.table.by_name.get(name) if isinstance(name, str) else None
        return c.spec.area if c is not None else None

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


#: values one filter of /alarms/history may list
MAX_FILTER_VALUES = 50


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
