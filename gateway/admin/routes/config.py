"""The running config: ``POST /config/reload`` (admins) applies the config file live.

The daemon re-reads its config file and validates it as at start; a valid file is applied
by its difference (gateway/reload.py), an invalid one is refused as a whole with 422 and
its ``FILE:LINE:COL: message`` lines, the running config kept. Reloads are serialized.
"""

# no "from __future__ import annotations": FastAPI resolves the handlers' annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.admin.auth import Admin
from gateway.admin.context import AdminContext


def router(ctx: AdminContext) -> APIRouter:
    r = APIRouter()
    daemon = ctx.daemon

    @r.post("/config/reload", tags=["gateway"],
            summary="re-read the config file and apply what changed (422: refused, nothing changed)")
    async def reload(p: Admin) -> JSONResponse:
        res = await daemon.reload_config(source=f"api:{p.name}")
        body = {"ok": res.ok, "sha256": res.sha256, "diff": res.diff, "error": res.error}
        return JSONResponse(body, status_code=200 if res.ok else 422)

    @r.get("/config", tags=["gateway"], summary="the hash of the config in force and when it was applied")
    async def current(_p: Admin) -> dict[str, object]:
        return {"sha256": daemon.config_sha256, "loaded_ns": daemon.config_loaded_ns}

    return r
