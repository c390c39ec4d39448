"""The local page: its HTML and the static files under ``gateway/admin/static/`` (no token;
the page asks for one). Only files of the listed kinds below that folder are served: the
path is resolved and must stay inside it."""

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC = Path(__file__).parent.with_name("static")

#: what the page is made of: scripts (ES modules), styles, strings, images, fonts
SERVED_SUFFIXES = {".js", ".css", ".json", ".svg", ".png", ".woff2"}
#: longest static path asked for; anything longer is refused before the filesystem is touched
MAX_STATIC_PATH = 200

_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def static_file(name: str) -> Path:
    """The file under STATIC that `name` names, or HTTPException 404."""
    if len(name) > MAX_STATIC_PATH or "\\" in name or "\0" in name:
        raise HTTPException(404, "no such file")
    root = STATIC.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or path.suffix not in SERVED_SUFFIXES or not path.is_file():
        raise HTTPException(404, "no such file")
    return path


def router() -> APIRouter:
    r = APIRouter()

    @r.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=_PAGE_HEADERS)

    @r.get("/static/{name:path}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        return FileResponse(static_file(name), headers=_PAGE_HEADERS)

    return r
