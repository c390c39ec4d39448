"""The local page: its HTML and the static files under ``gateway/admin/static/`` (no token;
the page asks for one), and the site's settings the page needs before sign-in (language,
time zone). Only files of the listed kinds below that folder are served: the path is
resolved and must stay inside it."""

import os
import zoneinfo
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC = Path(__file__).parent.with_name("static")

#: what the page is made of: scripts (ES modules), styles, strings, images, fonts
SERVED_SUFFIXES = {".js", ".css", ".json", ".svg", ".png", ".woff2"}
#: longest static path asked for; anything longer is refused before the filesystem is touched
MAX_STATIC_PATH = 200

_PAGE_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data: blob:; "
                                # attachments are previewed from blob: URLs (images, PDFs)
                                "frame-src 'self' blob:; object-src 'none'; base-uri 'none'; "
                                "frame-ancestors 'none'"),
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


def machine_zone() -> str:
    """The machine's own IANA time zone name (TZ, /etc/timezone, /etc/localtime's link), else UTC."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        candidates.append(Path("/etc/timezone").read_text(encoding="utf-8").strip())
    except OSError:
        pass
    try:
        link = os.readlink("/etc/localtime")
        candidates.append(link.split("zoneinfo/", 1)[1] if "zoneinfo/" in link else "")
    except OSError:
        pass
    for name in candidates:
        if not name or len(name) > 64:
            continue
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            continue
        return name
    return "UTC"


def router(settings: dict[str, Any] | None = None) -> APIRouter:
    """The page's routes; ``settings`` is what the page reads before sign-in (language,
    timezone, gateway), nothing secret."""
    r = APIRouter()
    shown = {"language": "en", "timezone": machine_zone(), "gateway": ""}
    shown.update({k: v for k, v in (settings or {}).items() if v is not None})

    @r.get("/page/settings", tags=["gateway"], summary="the page's language and time zone (no token)")
    async def page_settings() -> dict[str, Any]:
        return shown

    @r.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=_PAGE_HEADERS)

    @r.get("/static/{name:path}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        return FileResponse(static_file(name), headers=_PAGE_HEADERS)

    return r
