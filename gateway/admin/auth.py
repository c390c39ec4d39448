"""Bearer tokens and roles for the admin API's routes: ``Viewer``, ``Operator`` and
``Admin`` are the principals a handler asks for (viewer reads; operator acknowledges and
shelves alarms and edits registers; admin manages users and reads the audit trail).

A failed check counts against the client's address (``FailureLimiter``): past the limit,
429 with Retry-After. The principal is kept in the request scope for the audit record.
"""

# no "from __future__ import annotations": FastAPI resolves the dependency's annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.admin.context import AdminContext
from gateway.core.tokens import RANK, Principal, check_token

bearer = HTTPBearer(auto_error=False, description="token from `safegw users add NAME --role ROLE`")


async def _checked(ctx: AdminContext, request: Request, token: str) -> Principal:
    client = request.client.host if request.client else "?"
    p, wait = await check_token(ctx.users, ctx.limiter, ctx.verify_slots, token, client)
    if wait > 0:
        raise HTTPException(429, f"too many failed token checks from {client}; retry in {wait:.0f} s",
                            headers={"Retry-After": str(max(1, round(wait)))})
    if p is None:
        raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})
    return p


def need(role: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the request's principal, who must have ``role`` or a higher one."""

    async def dep(
        request: Request, cred: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
    ) -> Principal:
        if cred is None or not cred.credentials:
            raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        ctx: AdminContext = request.app.state.admin
        p = await _checked(ctx, request, cred.credentials)
        request.scope.setdefault("state", {})["principal"] = p
        if RANK[p.role] < RANK[role]:
            raise HTTPException(403, f"this needs the {role} role; {p.name} is {p.role}")
        return p

    dep.__name__ = f"need_{role}"
    return dep


Viewer = Annotated[Principal, Depends(need("viewer"))]
Operator = Annotated[Principal, Depends(need("operator"))]
Admin = Annotated[Principal, Depends(need("admin"))]
