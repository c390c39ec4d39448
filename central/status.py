"""Central's own HTTP endpoints, next to the ``/sync/v1`` API of its outbox: the push
endpoint (``POST /sync/v1/push``, signed by a push source) and the operators'
``GET /status`` (bearer tokens, with a lockout after repeated failures), and the
status document it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from central.config import SourceEntry
from central.ingest import REFUSED, IngestFn, OriginCursor, SourceStatus
from central.journals import Journals
from central.state import PgState, State, TableRow
from gateway.core.tokens import FailureLimiter, UserStore, check_token
from gateway.core.units import iso_ns
from uplink.auth import AuthError, Verifier
from uplink.sync import SyncServer, unpack_frames


class Operators:
    """Checks an operator endpoint's bearer token. Tokens are made by
    ``safegw central -c FILE tokens add NAME`` and never logged."""

    def __init__(self, tokens: UserStore, limiter: FailureLimiter):
        self.tokens = tokens
        self.limiter = limiter
        self._verify_slots = asyncio.Semaphore(2)

    async def refusal(self, request: Request, role: str = "viewer") -> Response | None:
        """None when the request may go on, else the refusal (401 with a JSON error, 429
        while the address is locked out, 403 when the token's role is below ``role``)."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        hdr = {"WWW-Authenticate": 'Bearer realm="safegw-central"'}
        if scheme.lower() != "bearer" or not token:
            return JSONResponse({"error": "unauthorized",
                                 "detail": "a bearer token is required (Authorization: Bearer TOKEN; "
                                           "'safegw central -c FILE tokens add NAME' makes one)"},
                                status_code=401, headers=hdr)
        client = request.client.host if request.client else "?"
        p, wait = await check_token(self.tokens, self.limiter, self._verify_slots, token, client)
        if wait > 0:
            detail = f"too many failed token checks; retry in {wait:.0f} s"
            return JSONResponse({"error": "locked_out", "detail": detail}, status_code=429,
                                headers={"Retry-After": str(max(1, round(wait)))})
        if p is None:
            return JSONResponse({"error": "unauthorized", "detail": "invalid or revoked token"},
                                status_code=401, headers=hdr)
        if not p.can(role):
            return JSONResponse({"error": "forbidden", "detail": f"this needs the {role} role"},
                                status_code=403)
        return None


class PositionGuard:
    """Pure ASGI: refuses (400) a request whose numeric query parameters (``after``,
    ``ack``, ``head``, ``max``, ``max_bytes``) do not fit in 64 bits, before the handler
    hands them to the state store (SQLite cannot compare with them: a 500)."""

    NAMES = frozenset({"after", "ack", "head", "max", "max_bytes"})

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("query_string"):
            for name, value in parse_qsl(scope["query_string"].decode("latin-1")):
                if name in self.NAMES and len(value.strip().lstrip("+-")) > 18:
                    await JSONResponse({"error": f"{name} is out of range"}, status_code=400)(
                        scope, receive, send)
                    return
        await self.app(scope, receive, send)


class CentralRoutes:
    """``POST /sync/v1/push`` and ``GET /status``.

    A push is verified against the push sources' keys (``verifier``, ``by_kid``) and
    ingested; ``pulling`` (the sources this worker pulls) and ``state`` tell whether
    another worker may have moved the source's positions (PostgreSQL, nothing pulled
    here). ``status_doc`` builds the answer of ``GET /status``; ``operators`` is None
    when the status endpoint is disabled."""

    def __init__(self, *, verifier: Verifier, by_kid: dict[str, SourceEntry],
                 status: dict[str, SourceStatus], ingest: IngestFn, state: State, pulling: Collection[str],
                 operators: Operators | None, status_doc: Callable[[], dict[str, Any]],
                 offer: Callable[[str], dict[str, Any]] = lambda _gw: {}):
        self.verifier = verifier
        self.by_kid = by_kid
        self.status = status
        self.ingest = ingest
        self.state = state
        self.pulling = pulling
        self.operators = operators
        self.status_doc = status_doc
        self.offer = offer  # what a push answer tells the gateway besides cursors (its newest config)

    def routes(self) -> list[Route]:
        return [Route("/sync/v1/push", self.push, methods=["POST"]),
                Route("/status", self.get_status, methods=["GET"])]

    async def push(self, request: Request) -> Response:
        body = await request.body()  # bounded by the listener's BodyLimit (listen.max_push)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            kid = self.verifier.verify(request.method, target, body, request.headers)
        except AuthError as e:
            return SyncServer.refuse(e)
        src = self.by_kid[kid]
        st = self.status[src.id]
        if src.mode != "push":
            return JSONResponse({"error": f"{src.id} is configured to be pulled"}, status_code=403)
        try:
            items = unpack_frames(body)
        except ValueError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        st.last_contact_ns = time.time_ns()
        st.state = "ok"
        with contextlib.suppress(ValueError):
            st.head = int(request.query_params.get("head", "0"))
        if len(self.pulling) == 0 and isinstance(self.state, PgState):
            # another worker may have moved this source: read positions fresh
            st.positions = await self.state.positions(src.id)
        if REFUSED in await self.ingest(src, items):
            # an envelope it will never accept: 422 (not 5xx), so the gateway narrows it
            # and sets the refused record aside instead of retrying it for ever
            return JSONResponse({"error": "refused", "reason": st.refusal, "cursors": st.positions},
                                status_code=422)
        return JSONResponse({"cursors": st.positions, **self.offer(src.id)})

    async def get_status(self, request: Request) -> Response:
        if self.operators is None:
            return JSONResponse({"error": "status disabled"}, status_code=404)
        refused = await self.operators.refusal(request)
        if refused is not None:
            return refused
        return JSONResponse(self.status_doc())


def status_doc(*, node: str, worker: str, backend: str, started_ns: int,
               sources: dict[str, SourceStatus], origins: dict[str, OriginCursor],
               tables: dict[str, TableRow], journals: Journals, pulling: Collection[str],
               upstream: dict[str, Any] | None) -> dict[str, Any]:
    """The document of ``GET /status``: per source, per origin, InfluxDB and upstream."""
    now = time.time_ns()

    def age(ts: int) -> float | None:
        return round((now - ts) / 1e9, 3) if ts else None

    def table(origin: str) -> dict[str, Any] | None:
        row = tables.get(origin)
        if row is None:
            return None
        return {"version": row.version, "channels": row.channels, "seq": row.seq, "ts": row.ts,
                "devices": len({c.get("device") for c in row.doc.get("channels") or []
                                if isinstance(c, dict)})}

    by_source = {}
    for sid, st in sources.items():
        d = st.as_dict()
        d["last_contact"] = iso_ns(st.last_contact_ns) if st.last_contact_ns else None
        d["since_contact_s"] = age(st.last_contact_ns)
        d["lag_records"] = d["lag"]
        # lag in seconds: how old the newest data stored from this source is, while it
        # has more (0 when caught up; None before anything is known)
        cur = None if st.relay else origins.get(sid)
        if d["lag"] == 0:
            d["lag_s"] = 0.0
        elif d["lag"] and cur is not None and cur.main_ts:
            d["lag_s"] = round(max(0.0, (now - cur.main_ts) / 1e9), 3)
        else:
            d["lag_s"] = None
        if not st.relay:
            d["channel_table"] = table(sid)
        by_source[sid] = d
    by_origin = {o: {"main_seq": c.main, "alarms_seq": c.alarms, "early": len(c.early),
                     "stored_records": c.stored_records, "stored_samples": c.stored_samples,
                     "last_ts": c.last_ts, "data_age_s": age(c.main_ts),
                     "channel_table": table(o), "influx_tagged_by": journals.tagged_by(o)}
                 for o, c in origins.items()}
    doc: dict[str, Any] = {"node": node, "worker": worker, "backend": backend,
                           "uptime_s": round((now - started_ns) / 1e9, 1),
                           "sources": by_source, "origins": by_origin, "pulling": sorted(pulling)}
    influx = journals.influx_status()
    if influx:
        doc["influxdb"] = influx
    if upstream is not None:
        doc["upstream"] = upstream
    return doc
