"""The admin API's audit middleware: every write (any method other than GET, HEAD and
OPTIONS, allowed or not) becomes a row of the audit trail with who, what and the outcome.

Two things are kept out of the trail: credentials given in a query string (a
``token=`` or ``access_token=`` parameter is dropped from the path recorded), and the
flood of an unauthenticated client: its first write in a minute is recorded as it
comes, the others of that minute are counted and recorded as one row with the count
when its next minute begins, or when the API stops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from gateway.admin.context import AdminContext
from gateway.core.tokens import Principal

log = logging.getLogger(__name__)

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
#: query parameters that carry credentials: never written to the trail
SECRET_PARAMS = {"token", "access_token", "api_key", "apikey", "password"}
#: seconds over which an address's unauthenticated writes are counted into one row
WINDOW_S = 60.0
#: addresses tracked at once; past it every pending count is written and tracking restarts
MAX_TRACKED = 4096


def audited_path(scope: dict[str, Any]) -> str:
    """The request's path and query, without credentials, at most 1000 characters."""
    path: str = scope["path"]
    qs = scope.get("query_string") or b""
    if qs:
        pairs = parse_qsl(qs.decode("latin-1"), keep_blank_values=True)
        kept = [(k, v) for k, v in pairs if k.lower() not in SECRET_PARAMS]
        if kept:
            path += "?" + urlencode(kept)
    return path[:1000]


@dataclass
class _Pending:
    since: float
    count: int = 0
    method: str = ""
    path: str = ""
    status: int = 0
    remote: str | None = None


class AuditMiddleware:
    """Pure ASGI (no body buffering): records every write with its outcome."""

    def __init__(self, app: Any, ctx: AdminContext, clock: Callable[[], float] = time.monotonic):
        self.app = app
        self.ctx = ctx
        self.clock = clock
        self.pending: dict[str, _Pending] = {}
        ctx.flush_audit = self.flush

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        status = 500

        async def send_(msg: dict[str, Any]) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
                headers = list(msg.get("headers", []))
                if not any(k.lower() == b"x-content-type-options" for k, _ in headers):
                    headers.append((b"x-content-type-options", b"nosniff"))
                msg = {**msg, "headers": headers}
            await send(msg)

        try:
            await self.app(scope, receive, send_)
        finally:
            cls = f"{status // 100}xx"
            self.ctx.requests[cls] = self.ctx.requests.get(cls, 0) + 1
            if scope["method"] in WRITE_METHODS:
                await self._record(scope, state, status)

    async def _record(self, scope: dict[str, Any], state: dict[str, Any], status: int) -> None:
        p: Principal | None = state.get("principal")
        client = scope.get("client")
        remote = f"{client[0]}:{client[1]}" if client else None
        path = audited_path(scope)
        if p is None:
            host = client[0] if client else "-"
            now = self.clock()
            pend = self.pending.get(host)
            if pend is not None and now - pend.since < WINDOW_S:
                pend.count += 1
                pend.method, pend.path, pend.status, pend.remote = scope["method"], path, status, remote
                return
            if pend is not None:
                await self._write_pending(pend)
            elif len(self.pending) >= MAX_TRACKED:
                await self.flush()
            self.pending[host] = _Pending(since=now)
        await self._write(p, scope["method"], path, status, remote, state.get("audit"))

    async def flush(self) -> None:
        """Writes the counts of unauthenticated writes not yet recorded."""
        pending, self.pending = self.pending, {}
        for pend in pending.values():
            await self._write_pending(pend)

    async def _write_pending(self, pend: _Pending) -> None:
        if pend.count:
            await self._write(None, pend.method, pend.path, pend.status, pend.remote,
                              {"count": pend.count, "unauthenticated": "writes counted, not each recorded",
                               "window_s": WINDOW_S})

    async def _write(self, p: Principal | None, method: str, path: str, status: int, remote: str | None,
                     detail: dict[str, Any] | None) -> None:
        try:
            await self.ctx.store.call(self.ctx.store.audit, p.name if p else "-", p.role if p else None,
                                      method, path, status, remote, detail)
        except Exception as e:  # the audit must never turn a done write into a 500
            log.error("audit record failed: %s", e)
