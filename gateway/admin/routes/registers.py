"""The safety management registers over HTTP: types, records, due dates, import and
export, workflow steps, history and attachments (gateway/admin/registers/)."""

# no "from __future__ import annotations": FastAPI resolves the handlers' annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from pydantic import Field

from gateway.admin.auth import Operator, Viewer
from gateway.admin.context import AdminContext, StrictBody
from gateway.admin.permits.live import permit_analysis
from gateway.admin.registers import Invalid, NotFound, Refused
from gateway.core.tokens import RANK, Principal

RType = Annotated[
    str,
    PathParam(description="register type, see GET /registers", max_length=64, pattern=r"^[a-z0-9_]+$"),
]
RId = Annotated[int, PathParam(ge=1, le=2**62, description="record id")]
XLSX_MEDIA = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


class TransitionBody(StrictBody):
    fields: dict[str, Any] = Field(default_factory=dict, description="fields to set with the transition")
    comment: str | None = Field(default=None, max_length=2000)


class CommentBody(StrictBody):
    comment: str | None = Field(default=None, max_length=2000)


def router(ctx: AdminContext) -> APIRouter:
    r = APIRouter()
    store = ctx.store

    @r.get("/registers", tags=["registers"], summary="register types with their record counts")
    async def register_types(_p: Viewer) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await ctx.call(store.summary)
        return result

    @r.get("/due", tags=["registers"], summary="due dates across all registers, soonest first")
    async def due(_p: Viewer, within_days: Annotated[int, Query(ge=0, le=3650)] = 30) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await ctx.call(store.due, within_days)
        return result

    @r.get("/registers/{rtype}/schema", tags=["registers"], summary="a register type's fields and workflow")
    async def register_schema(rtype: RType, _p: Viewer) -> dict[str, Any]:
        return store.spec(rtype).model_dump(by_alias=True, exclude_none=True)

    @r.get(
        "/registers/{rtype}",
        tags=["registers"],
        summary="list records; any field of the type is also a filter (?grade=major)",
    )
    async def register_list(
        rtype: RType,
        request: Request,
        _p: Viewer,
        q: Annotated[str | None, Query(max_length=200, description="text search")] = None,
        state: Annotated[str | None, Query(max_length=64)] = None,
        archived: Annotated[Literal["false", "true", "all"], Query()] = "false",
        overdue: Annotated[bool | None, Query()] = None,
        due_within: Annotated[int | None, Query(ge=0, le=3650, description="due within N days")] = None,
        sort: Annotated[str, Query(max_length=64)] = "id",
        desc: bool = False,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    ) -> dict[str, Any]:
        known = {"q", "state", "archived", "overdue", "due_within", "sort", "desc", "limit", "offset"}
        filters = {k: v for k, v in request.query_params.items() if k not in known}
        result: dict[str, Any] = await ctx.call(
            store.query,
            rtype,
            filters=filters,
            q=q,
            state=state,
            archived=archived,
            overdue=overdue,
            due_within=due_within,
            sort=sort,
            desc=desc,
            limit=limit,
            offset=offset,
        )
        return result

    @r.post("/registers/{rtype}", tags=["registers"], status_code=201, summary="create a record")
    async def register_create(
        rtype: RType,
        request: Request,
        p: Operator,
        data: Annotated[dict[str, Any], Body(description="the record's fields")],
    ) -> Any:
        store.spec(rtype)
        doc, events = await ctx.call(store.create, rtype, data, p.name)
        ctx.emit(events)
        ctx.audit(request, register=rtype, id=doc["id"], action="create", fields=sorted(data))
        return doc

    @r.get(
        "/registers/{rtype}/export",
        tags=["registers"],
        summary="the records the list shows with the same filters, search and sort, as CSV, XLSX or JSON",
    )
    async def register_export(
        rtype: RType,
        request: Request,
        _p: Viewer,
        format: Annotated[Literal["csv", "xlsx", "json"], Query()] = "json",
        q: Annotated[str | None, Query(max_length=200, description="text search")] = None,
        state: Annotated[str | None, Query(max_length=64)] = None,
        archived: Annotated[Literal["false", "true", "all"], Query()] = "false",
        overdue: Annotated[bool | None, Query()] = None,
        due_within: Annotated[int | None, Query(ge=0, le=3650)] = None,
        sort: Annotated[str, Query(max_length=64)] = "id",
        desc: bool = False,
    ) -> Response:
        store.spec(rtype)
        # the list's paging is ignored: the export has every record the view matches
        known = {"format", "q", "state", "archived", "overdue", "due_within", "sort", "desc",
                 "limit", "offset"}
        filters = {k: v for k, v in request.query_params.items() if k not in known}
        body = await ctx.call(store.export, rtype, format, archived, filters=filters, q=q, state=state,
                              overdue=overdue, due_within=due_within, sort=sort, desc=desc)
        media = {"csv": "text/csv; charset=utf-8", "json": "application/json", "xlsx": XLSX_MEDIA}[format]
        return Response(
            body,
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="{rtype}.{format}"'},
        )

    @r.post(
        "/registers/{rtype}/import",
        tags=["registers"],
        summary="import CSV, XLSX or JSON (all or nothing; dry_run=true previews the changes)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "text/csv": {"schema": {"type": "string"}},
                    XLSX_MEDIA: {"schema": {"type": "string", "format": "binary"}},
                    "application/json": {"schema": {"type": "object"}},
                },
            }
        },
    )
    async def register_import(
        rtype: RType,
        request: Request,
        p: Operator,
        format: Annotated[Literal["csv", "xlsx", "json"] | None, Query()] = None,
        dry_run: Annotated[bool, Query(description="list what would change; write nothing")] = False,
    ) -> dict[str, Any]:
        store.spec(rtype)
        ctype = request.headers.get("content-type", "")
        fmt = format or ("csv" if "csv" in ctype else "xlsx" if XLSX_MEDIA in ctype else "json")
        raw = await request.body()  # bounded by the API's BodyLimit (api.max_import)
        body: str | bytes = raw
        if fmt != "xlsx":
            try:
                body = raw.decode("utf-8-sig")
            except UnicodeDecodeError:
                raise Invalid([(("body",), "not UTF-8 text")]) from None
        result, events = await ctx.call(store.import_, rtype, body, fmt, p.name, dry_run=dry_run)
        ctx.emit(events)
        counts = {k: result[k] for k in ("created", "updated", "unchanged")}
        action = "import-preview" if dry_run else "import"
        ctx.audit(request, register=rtype, action=action, format=fmt, **counts)
        return dict(result)

    @r.get("/registers/{rtype}/{rid}", tags=["registers"], summary="one record with its attachments")
    async def register_get(rtype: RType, rid: RId, _p: Viewer) -> Any:
        return await ctx.call(store.get, rtype, rid)

    @r.patch("/registers/{rtype}/{rid}", tags=["registers"], summary="change fields (null clears one)")
    async def register_update(
        rtype: RType,
        rid: RId,
        request: Request,
        p: Operator,
        data: Annotated[dict[str, Any], Body(description="fields to change")],
        version: Annotated[
            int | None,
            Query(ge=1, le=2**62, description=("the version you edited; 409 if someone changed it since")),
        ] = None,
    ) -> Any:
        store.spec(rtype)
        doc, events = await ctx.call(store.update, rtype, rid, data, p.name, version=version)
        ctx.emit(events)
        ctx.audit(request, register=rtype, id=rid, action="update", changed=events[0].get("changed"))
        return doc

    async def _archive(
        rtype: str, rid: int, request: Request, p: Principal, archived: bool, comment: str | None
    ) -> Any:
        store.spec(rtype)
        doc, events = await ctx.call(store.archive, rtype, rid, p.name, archived=archived, comment=comment)
        ctx.emit(events)
        action = "archive" if archived else "restore"
        ctx.audit(request, register=rtype, id=rid, action=action, comment=comment)
        return doc

    @r.delete("/registers/{rtype}/{rid}", tags=["registers"], summary="archive (records are never deleted)")
    async def register_delete(rtype: RType, rid: RId, request: Request, p: Operator) -> Any:
        return await _archive(rtype, rid, request, p, True, None)

    @r.post("/registers/{rtype}/{rid}/archive", tags=["registers"], summary="archive a record")
    async def register_archive(
        rtype: RType,
        rid: RId,
        request: Request,
        p: Operator,
        body: Annotated[CommentBody | None, Body()] = None,
    ) -> Any:
        return await _archive(rtype, rid, request, p, True, body.comment if body else None)

    @r.post("/registers/{rtype}/{rid}/restore", tags=["registers"], summary="bring an archived record back")
    async def register_restore(
        rtype: RType,
        rid: RId,
        request: Request,
        p: Operator,
        body: Annotated[CommentBody | None, Body()] = None,
    ) -> Any:
        return await _archive(rtype, rid, request, p, False, body.comment if body else None)

    @r.post(
        "/registers/{rtype}/{rid}/transitions/{name}",
        tags=["registers"],
        summary="workflow step (hidden danger: assign, rectify, reject, verify; permits: analyse, approve, "
        "start, suspend, resume, close, cancel; a gas step is refused with 409 and the readings)",
    )
    async def register_transition(
        rtype: RType,
        rid: RId,
        name: Annotated[str, PathParam(max_length=64)],
        request: Request,
        p: Operator,
        body: Annotated[TransitionBody | None, Body()] = None,
    ) -> Any:
        spec = store.spec(rtype)
        body = body or TransitionBody()
        t = spec.workflow.transitions.get(name) if spec.workflow else None
        if t is None:
            raise NotFound(f"{rtype} has no transition {name!r}")
        if RANK[p.role] < RANK[t.role]:
            raise HTTPException(403, f"{name} on a {rtype} needs the {t.role} role; {p.name} is {p.role}")
        analysis = None
        if t.check == "gas" and spec.permit is not None:
            # judged on the loop (live values, alarms); the store re-checks the state in its transaction
            # on the permit as this step leaves it (a step may also set its area or channels)
            doc = await ctx.call(store.get, rtype, rid)
            doc["data"] = {**doc["data"], **body.fields}
            analysis = permit_analysis(ctx, doc, name)
        try:
            doc, events = await ctx.call(
                store.transition, rtype, rid, name, body.fields, p.name,
                comment=body.comment, analysis=analysis,
            )
        except Refused as e:
            ctx.emit(e.events)
            ctx.audit(request, register=rtype, id=rid, action=f"refused:{name}", reason=str(e)[:500])
            raise
        ctx.emit(events)
        ctx.audit(
            request,
            register=rtype,
            id=rid,
            action=f"transition:{name}",
            to=doc.get("state"),
            changed=events[0].get("changed"),
        )
        return doc

    @r.get(
        "/registers/{rtype}/{rid}/history",
        tags=["registers"],
        summary="every change: who, when, before/after",
    )
    async def register_history(rtype: RType, rid: RId, _p: Viewer) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await ctx.call(store.history, rtype, rid)
        return result

    @r.get("/registers/{rtype}/{rid}/attachments", tags=["registers"])
    async def attachment_list(rtype: RType, rid: RId, _p: Viewer) -> list[dict[str, Any]]:
        store.spec(rtype)
        await ctx.call(store.get, rtype, rid)
        result: list[dict[str, Any]] = await ctx.call(store.attachments, rtype, rid)
        return result

    @r.post(
        "/registers/{rtype}/{rid}/attachments",
        tags=["registers"],
        status_code=201,
        summary="attach a PDF, PNG or JPEG (raw body; type checked by content)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def attachment_add(
        rtype: RType,
        rid: RId,
        request: Request,
        p: Operator,
        filename: Annotated[str, Query(min_length=1, max_length=200)],
    ) -> Any:
        store.spec(rtype)
        raw = await request.body()  # bounded by the API's BodyLimit (registers.max_attachment)
        att, events = await ctx.call(store.attach, rtype, rid, filename, raw, p.name)
        ctx.emit(events)
        ctx.audit(request, register=rtype, id=rid, action="attach", attachment=att)
        return att

    @r.get(
        "/registers/{rtype}/{rid}/attachments/{aid}", tags=["registers"], summary="download an attachment"
    )
    async def attachment_get(
        rtype: RType, rid: RId, aid: Annotated[int, PathParam(ge=1, le=2**62)], _p: Viewer
    ) -> FileResponse:
        store.spec(rtype)
        meta, path = await ctx.call(store.attachment, rtype, rid, aid)
        if not path.exists():
            raise HTTPException(410, "the attachment's file is missing from the state directory")
        return FileResponse(path, media_type=meta["mime"], filename=meta["filename"])

    @r.delete(
        "/registers/{rtype}/{rid}/attachments/{aid}", tags=["registers"], summary="archive an attachment"
    )
    async def attachment_delete(
        rtype: RType, rid: RId, aid: Annotated[int, PathParam(ge=1, le=2**62)], request: Request, p: Operator
    ) -> Any:
        store.spec(rtype)
        doc, events = await ctx.call(store.detach, rtype, rid, aid, p.name)
        ctx.emit(events)
        ctx.audit(request, register=rtype, id=rid, action="detach", attachment=aid)
        return doc

    return r
