"""The admin API and the local status page (FastAPI, served by uvicorn inside the daemon).

uvicorn runs in the gateway's own event loop as one of its services: ``start()`` binds
the listening socket (127.0.0.1:8080 by default, TLS when ``tls_cert``/``tls_key`` are
set), ``run()`` checks register due dates until cancelled, ``stop()`` closes the server.
uvicorn's own signal handling and logging setup are left out: the daemon owns both.

``/health`` and the page's static files are open; everything else needs a bearer token
(see gateway/users.py) with a role: viewer reads, operator acknowledges and shelves
alarms and edits registers, admin manages users and reads the audit trail. Every write
(any method other than GET/HEAD/OPTIONS, allowed or not) is recorded in the audit trail
with who, what, and the outcome. Bad input gets a 4xx naming the field and the reason.
"""

# no "from __future__ import annotations": FastAPI resolves the handlers' annotations, and
# the role and path aliases below are local to create_app

import asyncio
import contextlib
import datetime as dt
import importlib
import json
import logging
import math
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import zstandard
from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from gateway import __version__
from gateway.admin.metrics import render as render_metrics
from gateway.admin.registers import Conflict, Invalid, NotFound, RegisterStore
from gateway.admin.reminders import check_reminders, open_store
from gateway.core.batch import Quality, quality_label
from gateway.core.config import ApiSection, RegistersSection
from gateway.core.tokens import RANK, FailureLimiter, Principal, UserError, UserStore, check_token
from gateway.core.units import parse_duration
from rules.commands import ALL_CHANNELS, CommandError, CommandPolicy, apply_command, parse_command

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}

# --------------------------------------------------------------------------- live values

_QLABEL = [quality_label(i) for i in range(256)]


class ChannelView:
    """Pre-encoded JSON fragments of the channel table, so /channels with 10,000
    channels is a few numpy reductions and one string join, not 10,000 dicts."""

    def __init__(self, table: Any):
        self.table = table
        n = len(table)
        self.names = [c.name for c in table.channels]
        self.lower = np.array([c.name.lower() for c in table.channels], dtype=object)
        self.kind = np.array([c.kind for c in table.channels], dtype=object)
        self.device = np.array([c.device for c in table.channels], dtype=object)
        self.hazard = np.array([c.spec.hazard_source or "" for c in table.channels], dtype=object)
        self.area = np.array([c.spec.area or "" for c in table.channels], dtype=object)
        self.prefix = [
            json.dumps(
                {"index": c.index, "name": c.name, "kind": c.kind, "unit": c.unit, "device": c.device},
                ensure_ascii=False,
            )[:-1]
            + ","
            for c in table.channels
        ]
        self.n = n
        # incremental caches: the value part of each channel's JSON is rebuilt only when
        # its sample changed, the state/alarm part only when its colour or alarm changed;
        # ages are formatted once per distinct timestamp (one per poll, not per channel)
        self.heads = [b""] * n  # bytes: the body is joined as bytes, never re-encoded
        self._ts = np.full(n, -1, dtype=np.int64)
        self._q = np.zeros(n, dtype=np.uint8)
        self._v = np.zeros(n, dtype=np.int64)
        self.tails = [b',"state":"normal","alarm":null},'] * n  # with the separator
        self._tstate = np.zeros(n, dtype=np.int8)
        self._tkey = np.full(n, -1, dtype=np.int64)

    def _refresh_heads(self, live: Any) -> None:
        vbits = live.value.view(np.int64)
        changed = np.flatnonzero((live.ts != self._ts) | (live.quality != self._q) | (vbits != self._v))
        if not len(changed):
            return
        heads, prefix = self.heads, self.prefix
        vals = live.value[changed]
        # the C JSON encoder formats floats (shortest repr) ~2x faster than repr() one by one
        texts = json.dumps(vals.tolist())[1:-1].split(", ")
        bad = ~np.isfinite(vals)
        if bad.any():
            for k in np.flatnonzero(bad).tolist():
                texts[k] = "null"
        for i, v, q in zip(changed.tolist(), texts, live.quality[changed].tolist(), strict=True):
            heads[i] = f'{prefix[i]}"value":{v},"quality":"{_QLABEL[q]}","q":{q},"age_s":'.encode()
        self._ts[changed] = live.ts[changed]
        self._q[changed] = live.quality[changed]
        self._v[changed] = vbits[changed]

    def _refresh_tails(self, state: np.ndarray, key: np.ndarray, describe: Callable[[int], str]) -> None:
        """``key`` identifies each channel's alarm (-1: none): a tail is rebuilt only when
        its colour or its key changed."""
        redo = np.flatnonzero((state != self._tstate) | (key != self._tkey))
        names = ("normal", "fault", "alarm")
        tails = self.tails
        for i, st, k in zip(redo.tolist(), state[redo].tolist(), key[redo].tolist(), strict=True):
            tails[i] = f',"state":"{names[st]}","alarm":{describe(i) if k >= 0 else "null"}}},'.encode()
        self._tstate = state
        self._tkey = key

    def render(
        self,
        live: Any,
        now: int,
        idx: np.ndarray,
        state: np.ndarray,
        key: np.ndarray,
        describe: Callable[[int], str],
    ) -> tuple[bytes, int]:
        """The JSON array items (comma-separated) of channels ``idx`` and their count;
        ``state`` 0 normal, 1 fault, 2 alarm per channel; ``describe(i)`` the JSON of
        channel i's most urgent alarm (key >= 0)."""
        self._refresh_heads(live)
        self._refresh_tails(state, key, describe)
        m = len(idx)
        if not m:
            return b"", 0
        ts = live.ts[idx]
        uniq, inv = np.unique(ts, return_inverse=True)
        ages = np.array(
            [b"null" if t <= 0 else repr(round((now - t) / 1e9, 3)).encode() for t in uniq.tolist()],
            dtype=object,
        )
        # interleave head, age, tail by slice assignment and join once: no per-channel
        # string concatenation in Python
        flat: list[bytes] = [b""] * (3 * m)
        if m == self.n:
            flat[0::3] = self.heads
            flat[2::3] = self.tails
        else:
            pick = idx.tolist()
            flat[0::3] = [self.heads[i] for i in pick]
            flat[2::3] = [self.tails[i] for i in pick]
        flat[1::3] = ages[inv].tolist()
        return b"".join(flat)[:-1], m

    def select(
        self,
        *,
        q: str | None,
        kind: str | None,
        device: str | None,
        hazard_source: str | None,
        area: str | None,
    ) -> np.ndarray:
        mask = np.ones(self.n, dtype=bool)
        if kind:
            mask &= self.kind == kind
        if device:
            mask &= self.device == device
        if hazard_source:
            mask &= self.hazard == hazard_source
        if area:
            mask &= self.area == area
        if q:
            ql = q.lower()
            if any(ch in ql for ch in "*?["):
                mask &= np.fromiter((fnmatchcase(s, ql) for s in self.lower), dtype=bool, count=self.n)
            else:
                mask &= np.fromiter((ql in s for s in self.lower), dtype=bool, count=self.n)
        return mask


def _fmt(v: float) -> str:
    return "null" if v != v or v in (math.inf, -math.inf) else repr(v)


# --------------------------------------------------------------------------- alarms


class AlarmsView:
    """What the API needs from the rules engine (gw.rules), in one place.

    The rules engine keeps the alarm states; until a method exists there, the API
    answers with empty lists (viewing) or 501 (acting)."""

    def __init__(self, gw: Any):
        self.gw = gw
        self.policy = CommandPolicy(max_shelve_s=gw.cfg.alarms.max_shelve)
        self._version: Any = object()
        self._cache: list[dict[str, Any]] = []

    @property
    def rules(self) -> Any:
        return self.gw.rules

    def active(self) -> list[dict[str, Any]]:
        """Alarms an operator must see (rules engine ``active()``), times as ISO text too."""
        fn = getattr(self.rules, "active", None)
        if fn is None:
            return []
        out = []
        for a in fn():
            a = dict(a)
            if isinstance(a.get("since"), int) and a["since"] > 0:
                a["since_ns"] = a["since"]
                a["since"] = _iso(a["since"])
            sh = a.get("shelved")
            if isinstance(sh, dict):
                a["shelved"] = {
                    k: (_iso(v) if k in ("until", "since") and isinstance(v, int) else v)
                    for k, v in sh.items()
                }
            out.append(a)
        return out

    def active_cached(self) -> list[dict[str, Any]]:
        """``active()`` reused until the engine raises its next event (any raise, clear, ack,
        shelve or level change makes one); each item carries its compact JSON for /channels.
        Without that counter (another rules engine), computed every time."""
        version = getattr(self.rules, "_next_id", None)
        if version is None or version != self._version:
            items = self.active()
            for a in items:
                a["_json"] = json.dumps(
                    {k: a.get(k) for k in ("rule", "level", "state", "limit", "priority")}, ensure_ascii=False
                )
            self._cache = items
            self._version = version
        return self._cache

    def channel_summary(
        self, n: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Callable[[int], str]] | None:
        """Per channel, from the engine's state arrays (no per-alarm Python objects, so a
        flood of stale alarms after a network cut costs the same as a quiet plant):
        process-alarm mask (red), health-alarm mask (yellow), a key for the most urgent
        visible alarm (-1: none) and a function giving that alarm as JSON."""
        r = self.rules
        act, unacked, last = (getattr(r, a, None) for a in ("act", "unacked", "last_code"))
        if act is None or unacked is None or last is None or act.ndim != 2 or act.shape[1] != n:
            return None
        from rules.events import level_name, state_name
        from rules.settings import HEALTH_RULES, PRIORITY, PROCESS_RULES, RULES

        active = act != 0
        shelved = np.zeros(act.shape, dtype=bool)
        for c, ri in getattr(r, "shelved", {}):
            shelved[ri, c] = True
        ann = active & ~shelved
        process = np.zeros(act.shape[0], dtype=bool)
        process[list(PROCESS_RULES)] = True
        red = ann[process].any(axis=0)
        supp = np.asarray(getattr(r, "supp", np.zeros(n, dtype=bool)), dtype=bool)
        yellow = ann[list(HEALTH_RULES)].any(axis=0) | supp
        visible = active | unacked
        score = (
            visible.astype(np.int32) * 1000 + ann * 100 + process[:, None] * 10 + np.abs(act).astype(np.int32)
        )
        best = score.argmax(axis=0)
        cols = np.arange(n)
        code = np.where(active[best, cols], act[best, cols], last[best, cols]).astype(np.int64)
        key = best.astype(np.int64) * 1024 + (code + 128) * 4 + unacked[best, cols] * 2 + shelved[best, cols]
        key[~visible.any(axis=0)] = -1
        key[supp & (key < 0)] = 999_999

        def describe(c: int) -> str:
            if key[c] == 999_999:
                return '{"rule":"maintenance","level":"maintenance","state":"suppressed","priority":null}'
            ri = int(best[c])
            lvl = level_name(ri, int(code[c]))
            doc: dict[str, Any] = {
                "rule": RULES[ri],
                "level": lvl,
                "state": state_name(int(act[ri, c]), bool(unacked[ri, c])),
                "priority": PRIORITY.get(lvl, "low"),
            }
            if shelved[ri, c]:
                doc["shelved"] = True
            return json.dumps(doc)

        return red, yellow, key, describe

    @staticmethod
    def annunciated(a: dict[str, Any]) -> bool:
        """Active and not shelved: what colours a channel red."""
        return str(a.get("state", "")).startswith("active") and not a.get("shelved")

    def history(self, limit: int, channel: str | None) -> list[dict[str, Any]] | None:
        fn = getattr(self.rules, "history", None)
        return None if fn is None else [dict(e) for e in fn(limit=limit, channel=channel)]

    def by_channel(self, active: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The most urgent active alarm of each channel."""
        out: dict[str, dict[str, Any]] = {}
        for a in active:
            ch = a.get("channel")
            if ch is None:
                continue
            if ch not in out or _alarm_rank(a) > _alarm_rank(out[ch]):
                out[ch] = a
        return out

    def command(self, verb: str, doc: dict[str, Any], now_ns: int) -> list[dict[str, Any]]:
        """An operator command (rules/commands.py: the same checks as over MQTT)."""
        try:
            cmd = parse_command(verb, doc, self.policy)
        except CommandError as e:
            loc = ("path", "channel") if e.field == "channel" else ("body", e.field or "")
            raise Invalid([(loc, e.message)]) from None
        try:
            events = apply_command(self.rules, cmd, now_ns)
        except KeyError as e:
            raise HTTPException(404, f"no such alarm: {e.args[0] if e.args else e}") from None
        except ValueError as e:
            raise HTTPException(409, str(e)) from None
        return list(events or [])


#: sensor-health rules: they make a channel yellow (fault), not red (alarm)
FAULT_RULES = {"stale", "bad", "range", "frozen", "maintenance"}

_PRIORITY = {"low": 1, "medium": 2, "high": 3, "critical": 4}


def _alarm_rank(a: dict[str, Any]) -> tuple[int, int, int]:
    p = a.get("priority")
    rank = _PRIORITY.get(p, 0) if isinstance(p, str) else int(p or 0)
    return (1 if AlarmsView.annunciated(a) else 0, 0 if a.get("rule") in FAULT_RULES else 1, rank)


# --------------------------------------------------------------------------- request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AckBody(_Body):
    rule: str | None = Field(
        default=None, max_length=64, description="which alarm of the channel (all if omitted)"
    )
    comment: str | None = Field(default=None, max_length=1000)


class ShelveBody(_Body):
    duration: str = Field(description="how long, with a unit: 30m, 2h, 1d (at most alarms.max_shelve, "
                          "7d by default)", max_length=32)
    reason: str = Field(min_length=1, max_length=1000)
    rule: str | None = Field(default=None, max_length=64)


class UnshelveBody(_Body):
    rule: str | None = Field(default=None, max_length=64)


class TransitionBody(_Body):
    fields: dict[str, Any] = Field(default_factory=dict, description="fields to set with the transition")
    comment: str | None = Field(default=None, max_length=2000)


class CommentBody(_Body):
    comment: str | None = Field(default=None, max_length=2000)


class UserBody(_Body):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
    role: Literal["viewer", "operator", "admin"]
    rotate: bool = False


# --------------------------------------------------------------------------- context


@dataclass
class ApiContext:
    gw: Any
    store: RegisterStore
    users: UserStore
    channels: ChannelView
    alarms: AlarmsView
    max_body: int
    requests: dict[str, int] = field(default_factory=dict)
    reminders: int = 0
    _verify_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))
    limiter: FailureLimiter = field(default_factory=lambda: FailureLimiter(10, 300.0, 300.0))

    def emit(self, events: list[dict[str, Any]]) -> None:
        if events:
            self.gw.emit_events(events)


class AuditMiddleware:
    """Pure ASGI (no body buffering): records every write with its outcome."""

    def __init__(self, app: Any, ctx: ApiContext):
        self.app = app
        self.ctx = ctx

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
                p: Principal | None = state.get("principal")
                client = scope.get("client")
                remote = f"{client[0]}:{client[1]}" if client else None
                path = scope["path"] + (
                    ("?" + scope["query_string"].decode("latin-1")) if scope.get("query_string") else ""
                )
                try:
                    await self.ctx.store.call(
                        self.ctx.store.audit,
                        p.name if p else "-",
                        p.role if p else None,
                        scope["method"],
                        path[:1000],
                        status,
                        remote,
                        state.get("audit"),
                    )
                except Exception as e:  # the audit must never turn a done write into a 500
                    log.error("audit record failed: %s", e)


# --------------------------------------------------------------------------- app


def _errors(errs: list[tuple[tuple[str | int, ...], str]]) -> list[dict[str, Any]]:
    return [{"loc": list(loc), "msg": msg, "type": "value_error"} for loc, msg in errs]


def _offline_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from files shipped with the package: a plant network is often
    offline, and FastAPI's default page loads its scripts from a CDN."""
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def _docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title="safegw admin API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
        )


def create_app(ctx: ApiContext, *, docs: bool = True) -> FastAPI:
    gw, store, users = ctx.gw, ctx.store, ctx.users
    app = FastAPI(
        title="safegw admin API",
        version=__version__,
        description="Live values, alarms, history and the safety management registers (台账) of one gateway.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    if docs:
        _offline_docs(app)
    app.add_middleware(AuditMiddleware, ctx=ctx)  # type: ignore[arg-type]
    bearer = HTTPBearer(auto_error=False, description="token from `safegw users add NAME --role ROLE`")

    # ---------------------------------------------------------------- errors
    @app.exception_handler(Invalid)
    async def _invalid(_r: Request, e: Invalid) -> JSONResponse:
        return JSONResponse({"detail": _errors(e.errors)}, status_code=422)

    @app.exception_handler(NotFound)
    async def _nf(_r: Request, e: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=404)

    @app.exception_handler(Conflict)
    async def _conflict(_r: Request, e: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=409)

    @app.exception_handler(RequestValidationError)
    async def _rve(_r: Request, e: RequestValidationError) -> JSONResponse:
        # FastAPI's default, without echoing the input back (it could be large or private)
        return JSONResponse(
            {
                "detail": [
                    {
                        "loc": list(x.get("loc", ())),
                        "msg": x.get("msg", ""),
                        "type": x.get("type", "value_error"),
                    }
                    for x in e.errors()
                ]
            },
            status_code=422,
        )

    # ---------------------------------------------------------------- auth
    async def checked(request: Request, token: str) -> Principal:
        client = request.client.host if request.client else "?"
        p, wait = await check_token(users, ctx.limiter, ctx._verify_slots, token, client)
        if wait > 0:
            raise HTTPException(429, f"too many failed token checks from {client}; retry in {wait:.0f} s",
                                headers={"Retry-After": str(max(1, round(wait)))})
        if p is None:
            raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})
        return p

    def need(role: str) -> Callable[..., Awaitable[Principal]]:
        async def dep(
            request: Request, cred: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
        ) -> Principal:
            if cred is None or not cred.credentials:
                raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
            token = cred.credentials
            p = await checked(request, token)
            request.scope.setdefault("state", {})["principal"] = p
            if RANK[p.role] < RANK[role]:
                raise HTTPException(403, f"this needs the {role} role; {p.name} is {p.role}")
            return p

        dep.__name__ = f"need_{role}"
        return dep

    Viewer = Annotated[Principal, Depends(need("viewer"))]
    Operator = Annotated[Principal, Depends(need("operator"))]
    Admin = Annotated[Principal, Depends(need("admin"))]

    def audit(request: Request, **detail: Any) -> None:
        request.scope.setdefault("state", {}).setdefault("audit", {}).update(detail)

    async def call(fn: Callable[..., Any], *a: Any, **kw: Any) -> Any:
        return await store.call(fn, *a, **kw)

    async def body_bytes(request: Request, limit: int) -> bytes:
        cl = request.headers.get("content-length")
        if cl is not None and cl.isdigit() and int(cl) > limit:
            raise HTTPException(413, f"body is {cl} bytes; the limit is {limit}")
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise HTTPException(413, f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    RType = Annotated[
        str,
        PathParam(description="register type, see GET /registers", max_length=64, pattern=r"^[a-z0-9_]+$"),
    ]
    RId = Annotated[int, PathParam(ge=1, le=2**62, description="record id")]

    # ---------------------------------------------------------------- open
    @app.get("/health", tags=["gateway"], summary="liveness (no token)")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "gateway": gw.cfg.gateway.id, "version": __version__}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=_PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        if name not in ("app.js", "style.css"):
            raise HTTPException(404, "no such file")
        return FileResponse(STATIC / name, headers=_PAGE_HEADERS)

    # ---------------------------------------------------------------- gateway
    @app.get("/whoami", tags=["gateway"])
    async def whoami(p: Viewer) -> dict[str, Any]:
        return {"name": p.name, "role": p.role}

    @app.get("/status", tags=["gateway"], summary="gateway, devices, journal and consumer lags")
    async def status(_p: Viewer) -> dict[str, Any]:
        now = gw.clock()
        js = gw.journal.stats()
        js.pop("path", None)
        devices = []
        for d in gw.devices.values():
            devices.append(
                {
                    "name": d.name,
                    "protocol": d.protocol,
                    "state": d.state,
                    "last_error": d.last_error,
                    "last_ok": _iso(d.last_ok_ns) if d.last_ok_ns else None,
                    "last_ok_age_s": round((now - d.last_ok_ns) / 1e9, 3) if d.last_ok_ns else None,
                    "polls": d.polls,
                    "errors": d.errors,
                    "overruns": d.overruns,
                    "samples": d.samples,
                    "last_poll_ms": round(d.last_poll_ms, 3),
                    "channels": len(gw.table.by_device.get(d.name, [])),
                    "info": d.info,
                }
            )
        q = gw.live.quality
        services = {}
        for svc in gw.services:
            st = getattr(svc, "stats", None)
            services[svc.name] = _jsonable(st()) if st is not None and svc.name != "api" else {}
        active = ctx.alarms.active_cached()
        return {
            "gateway": {
                "id": gw.cfg.gateway.id,
                "site": gw.cfg.gateway.site,
                "name": gw.cfg.gateway.name,
                "version": __version__,
                "started": _iso(gw.started_ns),
                "uptime_s": round((now - gw.started_ns) / 1e9, 3),
                "now": _iso(now),
                "ingested_batches": gw.ingested_batches,
                "ingest_errors": gw.ingest_errors,
            },
            "devices": devices,
            "channels": {
                "total": len(q),
                "good": int(np.count_nonzero(q < Quality.UNCERTAIN)),
                "uncertain": int(np.count_nonzero((q >= Quality.UNCERTAIN) & (q < Quality.BAD))),
                "bad": int(np.count_nonzero(q >= Quality.BAD)),
            },
            "journal": js,
            "consumers": js.get("consumers", {}),
            "alarms": {
                "active": sum(1 for a in active if str(a.get("state", "")).startswith("active")),
                "unacknowledged": sum(1 for a in active if "unacked" in str(a.get("state", ""))),
            },
            "services": services,
        }

    @app.get("/metrics", tags=["gateway"], summary="Prometheus text format", response_class=PlainTextResponse)
    async def metrics(_p: Viewer) -> PlainTextResponse:
        active = ctx.alarms.active_cached()
        n = sum(1 for a in active if str(a.get("state", "")).startswith("active"))
        text = render_metrics(gw, active_alarms=n, api={"requests": ctx.requests, "reminders": ctx.reminders})
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    # ---------------------------------------------------------------- channels
    @app.get("/channels", tags=["live"], summary="live values with quality, age and alarm state")
    async def channels(
        _p: Viewer,
        q: Annotated[
            str | None, Query(max_length=200, description="name contains this (or a glob: GT-*)")
        ] = None,
        kind: Annotated[str | None, Query(max_length=64)] = None,
        device: Annotated[str | None, Query(max_length=64)] = None,
        hazard_source: Annotated[str | None, Query(max_length=128)] = None,
        area: Annotated[str | None, Query(max_length=128)] = None,
        state: Annotated[
            Literal["normal", "fault", "alarm"] | None,
            Query(description="normal, fault (quality not good) or alarm"),
        ] = None,
        quality: Annotated[Literal["good", "uncertain", "bad"] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 100_000,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    ) -> Response:
        view = ctx.channels
        now = gw.clock()
        live = gw.live
        mask = view.select(q=q, kind=kind, device=device, hazard_source=hazard_source, area=area)
        qual = live.quality
        if quality == "good":
            mask &= qual < Quality.UNCERTAIN
        elif quality == "uncertain":
            mask &= (qual >= Quality.UNCERTAIN) & (qual < Quality.BAD)
        elif quality == "bad":
            mask &= qual >= Quality.BAD
        # red: an annunciated process alarm; yellow: a sensor/comms fault (bad quality, or a
        # sensor-health alarm: stale, bad, out of range, frozen), as on gas detector panels
        summary = ctx.alarms.channel_summary(view.n)
        if summary is not None:
            alarm_mask, health, key, describe = summary
            fault_mask = (qual >= Quality.UNCERTAIN) | health
        else:  # another rules engine: from its list of active alarms
            by_ch = ctx.alarms.by_channel(ctx.alarms.active_cached())
            alarm_mask = np.zeros(view.n, dtype=bool)
            fault_mask = qual >= Quality.UNCERTAIN
            key = np.full(view.n, -1, dtype=np.int64)
            texts: dict[int, str] = {}
            for name, a in by_ch.items():
                c = gw.table.by_name.get(name)
                if c is None:
                    continue
                texts[c.index] = a["_json"]
                key[c.index] = hash(a["_json"]) & 0x7FFF_FFFF_FFFF
                if a.get("rule") in FAULT_RULES:
                    fault_mask[c.index] |= AlarmsView.annunciated(a) or a.get("state") == "suppressed"
                elif AlarmsView.annunciated(a):
                    alarm_mask[c.index] = True
            describe = texts.__getitem__
        if state == "alarm":
            mask &= alarm_mask
        elif state == "fault":
            mask &= ~alarm_mask & fault_mask
        elif state == "normal":
            mask &= ~alarm_mask & ~fault_mask
        idx = np.flatnonzero(mask)
        total = len(idx)
        idx = idx[offset : offset + limit]
        colour = np.where(alarm_mask, 2, np.where(fault_mask, 1, 0)).astype(np.int8)
        items, count = view.render(live, now, idx, colour, key, describe)
        head = f'{{"ts":"{_iso(now)}","total":{total},"offset":{offset},"count":{count},"channels":['
        body = b"".join((head.encode(), items, b"]}"))
        return Response(body, media_type="application/json")

    @app.get("/channels/{name}", tags=["live"], summary="one channel with its configuration")
    async def channel(name: Annotated[str, PathParam(max_length=200)], _p: Viewer) -> dict[str, Any]:
        c = gw.table.by_name.get(name)
        if c is None:
            raise HTTPException(404, f"no channel named {name!r}")
        i = c.index
        v = float(gw.live.value[i])
        ts = int(gw.live.ts[i])
        qq = int(gw.live.quality[i])
        alarms = [a for a in ctx.alarms.active() if a.get("channel") == name]
        return {
            "index": i,
            "name": c.name,
            "kind": c.kind,
            "unit": c.unit,
            "device": c.device,
            "value": v if math.isfinite(v) else None,
            "quality": _QLABEL[qq],
            "q": qq,
            "ts": _iso(ts) if ts else None,
            "age_s": round((gw.clock() - ts) / 1e9, 3) if ts else None,
            "alarms": alarms,
            "config": c.spec.model_dump(mode="json", exclude_none=True),
        }

    # ---------------------------------------------------------------- alarms
    @app.get("/alarms", tags=["alarms"], summary="active alarms and recent transitions")
    async def alarms(
        _p: Viewer,
        history: Annotated[int, Query(ge=0, le=5000, description="how many past transitions")] = 100,
        channel: Annotated[str | None, Query(max_length=200)] = None,
    ) -> dict[str, Any]:
        active = ctx.alarms.active()
        if channel:
            active = [a for a in active if a.get("channel") == channel]
        hist = await _alarm_history(gw, history, channel) if history else []
        return {"active": active, "history": hist}

    def _check_channel(name: str) -> None:
        if name not in gw.table.by_name:
            raise HTTPException(404, f"no channel named {name!r}")

    def _alarm_command(verb: str, channel: str, request: Request, p: Principal,
                       body: _Body | None) -> dict[str, Any]:
        if channel != ALL_CHANNELS:
            _check_channel(channel)
        fields = body.model_dump(exclude_none=True) if body is not None else {}
        audit(request, channel=channel, **fields)
        events = ctx.alarms.command(verb, {**fields, "channel": channel, "operator": p.name}, gw.clock())
        ctx.emit(events)
        return {"channel": channel, "events": events}

    @app.post("/alarms/{channel}/ack", tags=["alarms"],
              summary="acknowledge a channel's alarm(s); channel '*' acknowledges every alarm")
    async def ack(
        channel: Annotated[str, PathParam(max_length=200)],
        request: Request,
        p: Operator,
        body: Annotated[AckBody | None, Body()] = None,
    ) -> dict[str, Any]:
        return _alarm_command("ack", channel, request, p, body)

    @app.post("/alarms/{channel}/shelve", tags=["alarms"], summary="shelve a channel's alarm(s) for a while")
    async def shelve(
        channel: Annotated[str, PathParam(max_length=200)], body: ShelveBody, request: Request, p: Operator
    ) -> dict[str, Any]:
        return _alarm_command("shelve", channel, request, p, body)

    @app.post("/alarms/{channel}/unshelve", tags=["alarms"], summary="end a shelve early")
    async def unshelve(
        channel: Annotated[str, PathParam(max_length=200)],
        request: Request,
        p: Operator,
        body: Annotated[UnshelveBody | None, Body()] = None,
    ) -> dict[str, Any]:
        return _alarm_command("unshelve", channel, request, p, body)

    # ---------------------------------------------------------------- history
    @app.get("/history/{channel}", tags=["history"], summary="a channel's stored values")
    async def history(
        channel: Annotated[str, PathParam(max_length=200)],
        _p: Viewer,
        start: Annotated[
            str | None,
            Query(alias="from", max_length=40, description="ISO time or a duration back from now (1h)"),
        ] = None,
        end: Annotated[str | None, Query(alias="to", max_length=40)] = None,
        every: Annotated[
            str | None, Query(max_length=16, description="aggregate to this interval (1m)")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
    ) -> dict[str, Any]:
        c = gw.table.by_name.get(channel)
        if c is None:
            raise HTTPException(404, f"no channel named {channel!r}")
        now = gw.clock()
        t1 = _when(end, now, "to") if end else now
        t0 = _when(start, now, "from") if start else t1 - 3600 * 10**9
        if t0 > t1:
            raise Invalid([(("query", "from"), "'from' is after 'to'")])
        step = None
        if every:
            try:
                step = parse_duration(every)
            except ValueError as e:
                raise Invalid([(("query", "every"), str(e))]) from None
            if step <= 0:
                raise Invalid([(("query", "every"), "must be > 0")])
        return await _history(gw, c.index, c.name, t0, t1, step, limit)

    # ---------------------------------------------------------------- registers
    @app.get("/registers", tags=["registers"], summary="register types with their record counts")
    async def register_types(_p: Viewer) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await call(store.summary)
        return result

    @app.get("/due", tags=["registers"], summary="due dates across all registers, soonest first")
    async def due(_p: Viewer, within_days: Annotated[int, Query(ge=0, le=3650)] = 30) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await call(store.due, within_days)
        return result

    @app.get("/registers/{rtype}/schema", tags=["registers"], summary="a register type's fields and workflow")
    async def register_schema(rtype: RType, _p: Viewer) -> dict[str, Any]:
        return store.spec(rtype).model_dump(by_alias=True, exclude_none=True)

    @app.get(
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
        result: dict[str, Any] = await call(
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

    @app.post("/registers/{rtype}", tags=["registers"], status_code=201, summary="create a record")
    async def register_create(
        rtype: RType,
        request: Request,
        p: Operator,
        data: Annotated[dict[str, Any], Body(description="the record's fields")],
    ) -> Any:
        store.spec(rtype)
        doc, events = await call(store.create, rtype, data, p.name)
        ctx.emit(events)
        audit(request, register=rtype, id=doc["id"], action="create", fields=sorted(data))
        return doc

    @app.get("/registers/{rtype}/export", tags=["registers"], summary="all records as CSV or JSON")
    async def register_export(
        rtype: RType,
        _p: Viewer,
        format: Annotated[Literal["csv", "json"], Query()] = "json",
        archived: Annotated[Literal["false", "true", "all"], Query()] = "false",
    ) -> Response:
        store.spec(rtype)
        text = await call(store.export, rtype, format, archived)
        media = "text/csv; charset=utf-8" if format == "csv" else "application/json"
        return Response(
            text,
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="{rtype}.{format}"'},
        )

    @app.post(
        "/registers/{rtype}/import",
        tags=["registers"],
        summary="import CSV or JSON (all or nothing)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "text/csv": {"schema": {"type": "string"}},
                    "application/json": {"schema": {"type": "object"}},
                },
            }
        },
    )
    async def register_import(
        rtype: RType,
        request: Request,
        p: Operator,
        format: Annotated[Literal["csv", "json"] | None, Query()] = None,
    ) -> dict[str, Any]:
        store.spec(rtype)
        fmt = format or ("csv" if "csv" in request.headers.get("content-type", "") else "json")
        raw = await body_bytes(request, ctx.max_body)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise Invalid([(("body",), "not UTF-8 text")]) from None
        result, events = await call(store.import_, rtype, text, fmt, p.name)
        ctx.emit(events)
        audit(request, register=rtype, action="import", format=fmt, **result)
        return dict(result)

    @app.get("/registers/{rtype}/{rid}", tags=["registers"], summary="one record with its attachments")
    async def register_get(rtype: RType, rid: RId, _p: Viewer) -> Any:
        return await call(store.get, rtype, rid)

    @app.patch("/registers/{rtype}/{rid}", tags=["registers"], summary="change fields (null clears one)")
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
        doc, events = await call(store.update, rtype, rid, data, p.name, version=version)
        ctx.emit(events)
        audit(request, register=rtype, id=rid, action="update", changed=events[0].get("changed"))
        return doc

    async def _archive(
        rtype: str, rid: int, request: Request, p: Principal, archived: bool, comment: str | None
    ) -> Any:
        store.spec(rtype)
        doc, events = await call(store.archive, rtype, rid, p.name, archived=archived, comment=comment)
        ctx.emit(events)
        audit(request, register=rtype, id=rid, action="archive" if archived else "restore", comment=comment)
        return doc

    @app.delete("/registers/{rtype}/{rid}", tags=["registers"], summary="archive (records are never deleted)")
    async def register_delete(rtype: RType, rid: RId, request: Request, p: Operator) -> Any:
        return await _archive(rtype, rid, request, p, True, None)

    @app.post("/registers/{rtype}/{rid}/archive", tags=["registers"], summary="archive a record")
    async def register_archive(
        rtype: RType,
        rid: RId,
        request: Request,
        p: Operator,
        body: Annotated[CommentBody | None, Body()] = None,
    ) -> Any:
        return await _archive(rtype, rid, request, p, True, body.comment if body else None)

    @app.post("/registers/{rtype}/{rid}/restore", tags=["registers"], summary="bring an archived record back")
    async def register_restore(
        rtype: RType,
        rid: RId,
        request: Request,
        p: Operator,
        body: Annotated[CommentBody | None, Body()] = None,
    ) -> Any:
        return await _archive(rtype, rid, request, p, False, body.comment if body else None)

    @app.post(
        "/registers/{rtype}/{rid}/transitions/{name}",
        tags=["registers"],
        summary="workflow step (hidden danger: assign, rectify, reject, verify)",
    )
    async def register_transition(
        rtype: RType,
        rid: RId,
        name: Annotated[str, PathParam(max_length=64)],
        request: Request,
        p: Operator,
        body: Annotated[TransitionBody | None, Body()] = None,
    ) -> Any:
        store.spec(rtype)
        body = body or TransitionBody()
        doc, events = await call(
            store.transition, rtype, rid, name, body.fields, p.name, comment=body.comment
        )
        ctx.emit(events)
        audit(
            request,
            register=rtype,
            id=rid,
            action=f"transition:{name}",
            to=doc.get("state"),
            changed=events[0].get("changed"),
        )
        return doc

    @app.get(
        "/registers/{rtype}/{rid}/history",
        tags=["registers"],
        summary="every change: who, when, before/after",
    )
    async def register_history(rtype: RType, rid: RId, _p: Viewer) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await call(store.history, rtype, rid)
        return result

    @app.get("/registers/{rtype}/{rid}/attachments", tags=["registers"])
    async def attachment_list(rtype: RType, rid: RId, _p: Viewer) -> list[dict[str, Any]]:
        store.spec(rtype)
        await call(store.get, rtype, rid)
        result: list[dict[str, Any]] = await call(store.attachments, rtype, rid)
        return result

    @app.post(
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
        raw = await body_bytes(request, store.max_attachment)
        att, events = await call(store.attach, rtype, rid, filename, raw, p.name)
        ctx.emit(events)
        audit(request, register=rtype, id=rid, action="attach", attachment=att)
        return att

    @app.get(
        "/registers/{rtype}/{rid}/attachments/{aid}", tags=["registers"], summary="download an attachment"
    )
    async def attachment_get(
        rtype: RType, rid: RId, aid: Annotated[int, PathParam(ge=1, le=2**62)], _p: Viewer
    ) -> FileResponse:
        store.spec(rtype)
        meta, path = await call(store.attachment, rtype, rid, aid)
        if not path.exists():
            raise HTTPException(410, "the attachment's file is missing from the state directory")
        return FileResponse(path, media_type=meta["mime"], filename=meta["filename"])

    @app.delete(
        "/registers/{rtype}/{rid}/attachments/{aid}", tags=["registers"], summary="archive an attachment"
    )
    async def attachment_delete(
        rtype: RType, rid: RId, aid: Annotated[int, PathParam(ge=1, le=2**62)], request: Request, p: Operator
    ) -> Any:
        store.spec(rtype)
        doc, events = await call(store.detach, rtype, rid, aid, p.name)
        ctx.emit(events)
        audit(request, register=rtype, id=rid, action="detach", attachment=aid)
        return doc

    # ---------------------------------------------------------------- audit and users
    @app.get("/audit", tags=["admin"], summary="the audit trail of every write, newest first")
    async def audit_trail(
        _p: Admin,
        actor: Annotated[str | None, Query(max_length=64)] = None,
        method: Annotated[Literal["POST", "PUT", "PATCH", "DELETE", "CLI"] | None, Query()] = None,
        path: Annotated[str | None, Query(max_length=200, description="path prefix")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    ) -> dict[str, Any]:
        result: dict[str, Any] = await call(
            store.audit_list, actor=actor, method=method, path_prefix=path, limit=limit, offset=offset
        )
        return result

    @app.get("/users", tags=["admin"])
    async def users_list(_p: Admin) -> list[dict[str, Any]]:
        return users.users()

    @app.post("/users", tags=["admin"], status_code=201, summary="create a user; the token is shown once")
    async def users_add(body: UserBody, request: Request, p: Admin) -> dict[str, Any]:
        audit(request, user=body.name, role=body.role, rotate=body.rotate)
        try:
            token = await asyncio.get_running_loop().run_in_executor(
                None, lambda: users.add(body.name, body.role, by=p.name, rotate=body.rotate)
            )
        except UserError as e:
            raise HTTPException(409, str(e)) from None
        return {"name": body.name, "role": body.role, "token": token}

    @app.delete("/users/{name}", tags=["admin"], summary="revoke a user's token")
    async def users_revoke(
        name: Annotated[str, PathParam(max_length=64)], request: Request, p: Admin
    ) -> dict[str, Any]:
        audit(request, user=name)
        try:
            users.revoke(name, by=p.name)
        except UserError as e:
            raise HTTPException(404, str(e)) from None
        return {"name": name, "revoked": True}

    return app


_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


# --------------------------------------------------------------------------- helpers


def _iso(ns: int) -> str:
    return (
        dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def _when(s: str, now_ns: int, name: str) -> int:
    """An ISO 8601 time, or a duration back from now (``1h`` = one hour ago)."""
    try:
        return now_ns - int(parse_duration(s.lstrip("-")) * 1e9)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(
            [
                (
                    ("query", name),
                    f"expected an ISO time (2026-05-01T08:00:00Z) or a duration back "
                    f"from now (1h), got {s!r}",
                )
            ]
        ) from None
    if t.tzinfo is None:
        t = t.astimezone()
    return int(t.timestamp() * 1e9)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    return str(v)


async def _alarm_history(gw: Any, limit: int, channel: str | None) -> list[dict[str, Any]]:
    """The newest alarm transitions from the journal (the one durable record of them)."""

    def scan(db: Any) -> list[dict[str, Any]]:
        dz = zstandard.ZstdDecompressor()
        out: list[dict[str, Any]] = []
        before = None
        for _ in range(20):  # bounded: at most 20 × 2000 event records looked at
            sql = "SELECT seq, codec, data FROM records WHERE kind=2"
            args: list[Any] = []
            if before is not None:
                sql += " AND seq < ?"
                args.append(before)
            rows = db.execute(sql + " ORDER BY seq DESC LIMIT 2000", args).fetchall()
            if not rows:
                break
            for seq, codec, data in rows:
                before = seq
                raw = dz.decompress(data) if codec == 1 else data
                try:
                    ev = json.loads(raw)
                except ValueError:
                    continue
                if ev.get("type") != "alarm" or (channel and ev.get("channel") != channel):
                    continue
                ev.setdefault("seq", seq)
                if isinstance(ev.get("ts"), int):
                    ev["time"] = _iso(ev["ts"])
                out.append(ev)
                if len(out) >= limit:
                    return out
        return out

    result: list[dict[str, Any]] = await gw.journal.run_read(scan)
    return result


async def _history(
    gw: Any, index: int, name: str, t0: int, t1: int, step: float | None, limit: int
) -> dict[str, Any]:
    """From the historian's query when it is there, else from the journal."""
    try:
        hist_mod: Any = importlib.import_module("gateway.historian.history")
    except ModuleNotFoundError:
        hist_mod = None
    query = getattr(hist_mod, "query_api", None) if hist_mod is not None else None
    if query is not None:
        try:
            result: dict[str, Any] = await query(gw, name, t0, t1, every=step, limit=limit)
        except hist_mod.HistoryError as e:
            msg = str(e)
            if "InfluxDB" in msg:  # the historian's server is down or refused: not the caller's fault
                raise HTTPException(503, msg) from None
            raise Invalid([(("query",), msg)]) from None
        return result
    from gateway.core.batch import Batch

    def scan(db: Any) -> tuple[list[int], list[float], list[int], bool]:
        dz = zstandard.ZstdDecompressor()
        ts_l: list[np.ndarray] = []
        v_l: list[np.ndarray] = []
        q_l: list[np.ndarray] = []
        n = 0
        truncated = False
        for _seq, codec, data in db.execute(
            "SELECT seq, codec, data FROM records WHERE kind=1 AND ts_max >= ? AND ts_min <= ? ORDER BY seq",
            (t0, t1),
        ):
            b = Batch.from_bytes(dz.decompress(data) if codec == 1 else data)
            m = (b.channel == index) & (b.ts >= t0) & (b.ts <= t1)
            if m.any():
                ts_l.append(b.ts[m])
                v_l.append(b.value[m])
                q_l.append(b.quality[m])
                n += int(m.sum())
            if n >= limit * 4 and step is None:
                truncated = True
                break
        if not ts_l:
            return [], [], [], False
        ts = np.concatenate(ts_l)
        v = np.concatenate(v_l)
        q = np.concatenate(q_l)
        order = np.argsort(ts, kind="stable")
        return ts[order].tolist(), v[order].tolist(), q[order].tolist(), truncated

    ts, vals, qs, truncated = await gw.journal.run_read(scan)
    points: list[dict[str, Any]] = []
    if step:
        step_ns = int(step * 1e9)
        buckets: dict[int, list[float]] = {}
        for t, v, q in zip(ts, vals, qs, strict=True):
            if q < Quality.BAD and math.isfinite(v):
                buckets.setdefault((t - t0) // step_ns, []).append(v)
        for k in sorted(buckets)[:limit]:
            xs = buckets[k]
            points.append(
                {
                    "ts": _iso(t0 + k * step_ns),
                    "mean": sum(xs) / len(xs),
                    "min": min(xs),
                    "max": max(xs),
                    "n": len(xs),
                }
            )
    else:
        for t, v, q in list(zip(ts, vals, qs, strict=True))[-limit:]:
            points.append({"ts": _iso(t), "value": v if math.isfinite(v) else None, "quality": _QLABEL[q]})
        truncated = truncated or len(ts) > limit
    return {
        "channel": name,
        "from": _iso(t0),
        "to": _iso(t1),
        "source": "journal",
        "every_s": step,
        "truncated": truncated,
        "points": points,
    }


# --------------------------------------------------------------------------- the service


def parse_listen(listen: str) -> tuple[str, int]:
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\]:(\d+)$", listen) or re.match(r"^([^:]+):(\d+)$", listen)
    if m is None:
        raise ValueError(f"api.listen: expected host:port, got {listen!r}")
    port = int(m.group(2))
    if port > 65535:
        raise ValueError(f"api.listen: port {port} is beyond 65535")
    return m.group(1), port


class ApiService:
    """uvicorn in the daemon's loop, plus the register reminder timer."""

    name = "api"

    def __init__(self, gw: Any, section: ApiSection, registers: RegistersSection):
        self.gw = gw
        self.section = section
        self.reg = registers
        base = gw.cfg.base_dir
        self.store = open_store(gw, registers)
        state = Path(gw.cfg.gateway.state_dir)
        users_file = section.users_file or state / "users.json"
        if not users_file.is_absolute():
            users_file = base / users_file
        self.users = UserStore(users_file)
        if (section.tls_cert is None) != (section.tls_key is None):
            raise RuntimeError("api: give both tls_cert and tls_key for TLS, or neither")
        self.ctx = ApiContext(
            gw=gw,
            store=self.store,
            users=self.users,
            channels=ChannelView(gw.table),
            alarms=AlarmsView(gw),
            max_body=max(registers.max_attachment, 10 * 2**20),
            limiter=FailureLimiter(section.max_failures, section.failure_window, section.lockout),
        )
        self.app = create_app(self.ctx, docs=section.docs)
        self.server: Any = None
        self.port: int | None = None
        self.url: str | None = None
        self._sock: socket.socket | None = None

    async def start(self) -> None:
        import uvicorn

        host, port = parse_listen(self.section.listen)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
            family, _t, proto, _c, addr = infos[0]
            # proto must be IPPROTO_TCP (socket.create_server leaves 0): asyncio only sets
            # TCP_NODELAY on accepted sockets whose proto says TCP, and without it every
            # keep-alive response waits ~40 ms for a delayed ACK
            sock = socket.socket(family, socket.SOCK_STREAM, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                sock.bind(addr)
                sock.listen(256)
            except OSError:
                sock.close()
                raise
        except OSError as e:
            raise RuntimeError(f"api: cannot listen on {self.section.listen}: {e.strerror or e}") from None
        sock.set_inheritable(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        base = self.gw.cfg.base_dir

        def p(x: Path | None) -> str | None:
            return None if x is None else str(x if x.is_absolute() else base / x)

        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            ssl_certfile=p(self.section.tls_cert),
            ssl_keyfile=p(self.section.tls_key),
            server_header=False,
            date_header=True,
            timeout_graceful_shutdown=2,
        )
        config.load()
        self.server = uvicorn.Server(config)
        self.server.lifespan = config.lifespan_class(config)
        await self.server.startup(sockets=[sock])
        await self.server.on_tick(0)  # sets the default headers
        scheme = "https" if self.section.tls_cert else "http"
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{scheme}://{shown}:{self.port}"
        log.info("admin API on %s (%d register types)", self.url, len(self.store.types))

    async def run(self) -> None:
        """Checks due dates now and then every ``check_every``; the server runs meanwhile."""
        while True:
            await self.check_reminders()
            await asyncio.sleep(self.reg.check_every)

    async def check_reminders(self) -> list[dict[str, Any]]:
        events = await check_reminders(self.gw, self.store)
        self.ctx.reminders += len(events)
        return events

    async def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            with contextlib.suppress(OSError, RuntimeError):
                await self.server.shutdown(sockets=[self._sock] if self._sock else None)
            self.server = None
        self.store.close()
        log.info("admin API stopped")

    def stats(self) -> dict[str, Any]:
        return {"url": self.url, "requests": dict(self.ctx.requests), "reminders": self.ctx.reminders}


def build_service(gw: Any, section: ApiSection) -> ApiService:
    return ApiService(gw, section, getattr(gw.cfg, "registers", None) or RegistersSection())
