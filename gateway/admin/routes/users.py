"""Administration: the audit trail of every write, and the API's users and their tokens."""

# no "from __future__ import annotations": FastAPI resolves the handlers' annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as PathParam
from pydantic import Field

from gateway.admin.auth import Admin
from gateway.admin.context import AdminContext, StrictBody
from gateway.core.tokens import UserError


class UserBody(StrictBody):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
    role: Literal["viewer", "operator", "admin"]
    rotate: bool = False


def router(ctx: AdminContext) -> APIRouter:
    r = APIRouter()
    store, users = ctx.store, ctx.users

    @r.get("/audit", tags=["admin"], summary="the audit trail of every write, newest first")
    async def audit_trail(
        _p: Admin,
        actor: Annotated[str | None, Query(max_length=64)] = None,
        method: Annotated[Literal["POST", "PUT", "PATCH", "DELETE", "CLI"] | None, Query()] = None,
        path: Annotated[str | None, Query(max_length=200, description="path prefix")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    ) -> dict[str, Any]:
        result: dict[str, Any] = await ctx.call(
            store.audit_list, actor=actor, method=method, path_prefix=path, limit=limit, offset=offset
        )
        return result

    @r.get("/users", tags=["admin"])
    async def users_list(_p: Admin) -> list[dict[str, Any]]:
        return users.users()

    @r.post("/users", tags=["admin"], status_code=201, summary="create a user; the token is shown once")
    async def users_add(body: UserBody, request: Request, p: Admin) -> dict[str, Any]:
        ctx.audit(request, user=body.name, role=body.role, rotate=body.rotate)
        try:
            token = await asyncio.get_running_loop().run_in_executor(
                None, lambda: users.add(body.name, body.role, by=p.name, rotate=body.rotate)
            )
        except UserError as e:
            raise HTTPException(409, str(e)) from None
        return {"name": body.name, "role": body.role, "token": token}

    @r.delete("/users/{name}", tags=["admin"], summary="revoke a user's token")
    async def users_revoke(
        name: Annotated[str, PathParam(max_length=64)], request: Request, p: Admin
    ) -> dict[str, Any]:
        ctx.audit(request, user=name)
        try:
            users.revoke(name, by=p.name)
        except UserError as e:
            raise HTTPException(404, str(e)) from None
        return {"name": name, "revoked": True}

    return r
