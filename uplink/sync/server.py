"""The pull side of the sync transport: the ``/sync/v1`` HTTP API over a ``Source``
(served by a gateway in pull mode and by a central node to the next level up), and
the HTTPS listener that serves it apart from the admin API. API: ``uplink.sync``.

Every number a request carries is bounded before it is used: a query position or
count outside 0..2^63-1 (what SQLite stores), a ``wait`` that is not a finite number,
an acknowledged ``seq`` out of range, are refused with 400 naming the parameter. The
listener takes the limits every safegw listener has (``gateway.core.httplimits``:
16 KiB heads, a head timeout, proxy headers only from trusted proxies); its app is
wrapped in ``BodyLimit`` by whoever serves it (``pull_body_limit`` for a gateway).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.core.aio import within
from gateway.core.httplimits import HEADER_TIMEOUT_S, BodyLimit, uvicorn_limits
from gateway.core.units import parse_listen
from uplink.auth import AuthError, Verifier
from uplink.link import Link
from uplink.sync.source import LANES, MEDIA, Source, pack_frames

log = logging.getLogger(__name__)

#: the largest position, count or byte size a request may name (SQLite's INTEGER)
MAX_NUMBER = 2**63 - 1
#: the body of ``POST /sync/v1/ack`` (``{"lane": "alarms", "seq": N}`` is under 50 bytes)
MAX_ACK_BODY = 1024


def pull_body_limit(app: Any, extra: Sequence[tuple[str, str, int]] = ()) -> BodyLimit:
    """The pull API's body limits, for a listener that serves nothing else (a gateway):
    an ack's few bytes, ``extra`` routes' own (a config from central), and no body at all
    on the GETs, refused with 413 as they arrive (before the signature is checked)."""
    return BodyLimit(app, default=0, routes=[("POST", "/sync/v1/ack", MAX_ACK_BODY), *extra])


class BadNumber(ValueError):
    """A request number that is not one, or out of its range; ``args[0]`` says which."""


def _int(raw: str | None, name: str, default: int, *, lo: int = 0, hi: int = MAX_NUMBER) -> int:
    if raw is None:
        return default
    # int() of a few thousand digits costs time before it fails; 20 characters hold any int64
    if len(raw) > 20:
        raise BadNumber(f"{name} is out of range")
    try:
        v = int(raw)
    except ValueError:
        raise BadNumber(f"{name} is not an integer") from None
    if not lo <= v <= hi:
        raise BadNumber(f"{name} is out of range ({lo}..{hi})")
    return v


class SyncServer:
    """The ``/sync/v1`` HTTP API over a Source; ``extra_routes`` lets central add its own."""

    def __init__(self, source: Source, verifier: Verifier, link: Link, *,
                 max_bytes: int = 8 * 2**20, max_wait_s: float = 20.0,
                 extra_routes: list[Route] | None = None, info: Callable[[], dict[str, Any]] | None = None):
        self.source = source
        self.verifier = verifier
        self.link = link
        self.max_bytes = max_bytes
        self.max_wait_s = max_wait_s
        self._info = info
        self.requests = 0
        self.last_request_ns = 0
        routes = [
            Route("/sync/v1/info", self.h_info, methods=["GET"]),
            Route("/sync/v1/envelopes", self.h_envelopes, methods=["GET"]),
            Route("/sync/v1/ack", self.h_ack, methods=["POST"]),
            *(extra_routes or []),
        ]
        self.app = Starlette(routes=routes)

    async def authenticate(self, request: Request) -> tuple[str, bytes]:
        body = await request.body()
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        key_id = self.verifier.verify(request.method, target, body, request.headers)
        self.requests += 1
        self.last_request_ns = time.time_ns()
        return key_id, body

    @staticmethod
    def refuse(e: AuthError) -> Response:
        log.warning("refused a sync request: %s", e)
        return JSONResponse({"error": e.reason}, status_code=401)

    def _chunk(self, requested: int) -> int:
        cap = self.max_bytes
        if self.link.rate:
            # a response should not hold the link for more than ~2 s, so alarms get through
            cap = min(cap, max(16384, int(self.link.rate * 2)))
        return max(1024, min(requested or cap, cap))

    def _wait(self, raw: str | None) -> float:
        if raw is None:
            return 0.0
        try:
            wait = float(raw) if len(raw) <= 32 else math.nan
        except ValueError:
            raise BadNumber("wait is not a number of seconds") from None
        if not math.isfinite(wait):
            raise BadNumber("wait is not a finite number of seconds")
        return max(0.0, min(wait, self.max_wait_s))

    async def h_info(self, request: Request) -> Response:
        try:
            await self.authenticate(request)
        except AuthError as e:
            return self.refuse(e)
        doc: dict[str, Any] = {
            "id": self.source.node_id, "head": self.source.head(), "first": self.source.first(),
            "cursors": {lane: self.source.position(lane) for lane in LANES}, "link": self.link.stats(),
        }
        if self._info is not None:
            doc.update(self._info())
        return JSONResponse(doc)

    async def h_envelopes(self, request: Request) -> Response:
        try:
            await self.authenticate(request)
        except AuthError as e:
            return self.refuse(e)
        q = request.query_params
        lane = q.get("lane", "main")
        if lane not in LANES:
            return JSONResponse({"error": f"lane must be one of {', '.join(LANES)}"}, status_code=400)
        try:
            after = _int(q.get("after"), "after", 0)
            max_bytes = self._chunk(_int(q.get("max_bytes"), "max_bytes", 0, lo=-MAX_NUMBER))
            max_items = max(0, _int(q.get("max"), "max", 0, lo=-MAX_NUMBER))
            ack = _int(q.get("ack"), "ack", after, lo=-MAX_NUMBER)
            wait = self._wait(q.get("wait"))
        except BadNumber as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        if ack > 0:
            await self.source.ack(lane, min(ack, after))
        headers = {"x-safegw-head": str(self.source.head()), "x-safegw-first": str(self.source.first())}
        if not self.link.allow(lane):
            # hold the request like an empty long poll, so the puller does not spin
            headers["x-safegw-budget"] = "exhausted"
            await self.source.wait(self.source.head(), wait)
            return Response(b"", media_type=MEDIA, headers=headers)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        items = await self.source.read(lane, after, max_bytes=max_bytes, max_items=max_items)
        while not items and (left := deadline - loop.time()) > 0:
            if not await self.source.wait(max(after, self.source.head()), left):
                break
            items = await self.source.read(lane, after, max_bytes=max_bytes, max_items=max_items)
        body = pack_frames(items)
        if body:
            await self.link.send(len(body), lane)
            self.link.envelopes += len(items)
            self.link.samples += sum(i.samples for i in items)
        headers["x-safegw-head"] = str(self.source.head())
        return Response(body, media_type=MEDIA, headers=headers)

    async def h_ack(self, request: Request) -> Response:
        try:
            _key, body = await self.authenticate(request)
        except AuthError as e:
            return self.refuse(e)
        try:
            doc = json.loads(body)
            lane, seq = doc.get("lane", "main"), doc["seq"]
        except (ValueError, KeyError, TypeError, AttributeError):
            return JSONResponse({"error": "expected {lane, seq}"}, status_code=400)
        if lane not in LANES:
            return JSONResponse({"error": f"lane must be one of {', '.join(LANES)}"}, status_code=400)
        if type(seq) is not int or not 0 <= seq <= MAX_NUMBER:
            return JSONResponse({"error": f"seq must be an integer in 0..{MAX_NUMBER}"}, status_code=400)
        await self.source.ack(lane, seq)
        return JSONResponse({"cursor": self.source.position(lane)})


class HttpsListener:
    """uvicorn serving an ASGI app on its own listener (not the admin API's), with the
    limits of every safegw listener (``uvicorn_limits``): 16 KiB heads sent within
    ``header_timeout_s``, X-Forwarded-For only from ``trusted_proxies``. Keep-alive is
    long (60 s): a puller's requests follow each other closely."""

    def __init__(self, app: Any, listen: str, cert: Path, key: Path, *, name: str = "sync",
                 trusted_proxies: Sequence[str] = (), header_timeout_s: float = HEADER_TIMEOUT_S):
        host, port = parse_listen(listen)
        limits = uvicorn_limits(trusted_proxies=trusted_proxies, keep_alive_s=60,
                                header_timeout_s=header_timeout_s)
        self.config = uvicorn.Config(app, host=host, port=port, ssl_certfile=str(cert), ssl_keyfile=str(key),
                                     log_level="warning", access_log=False, lifespan="off", **limits)
        self.server = uvicorn.Server(self.config)
        self.name = name
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._serve(), name=f"https[{self.name}]")
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise OSError(f"{self.name} listener stopped during start")
            await asyncio.sleep(0.01)

    async def _serve(self) -> None:
        try:
            await self.server.serve()
        except SystemExit:
            # uvicorn exits the process when it cannot bind; here that is an error to report
            raise OSError(f"{self.name}: cannot listen on {self.config.host}:{self.config.port} "
                          "(address in use or not available?)") from None

    @property
    def port(self) -> int:
        for s in self.server.servers:
            for sock in s.sockets:
                return int(sock.getsockname()[1])
        return self.config.port

    async def stop(self, grace_s: float = 1.0) -> None:
        self.server.should_exit = True
        if self._task is None:
            return
        try:
            await within(asyncio.shield(self._task), grace_s)
        except TimeoutError:
            # an idle TLS keep-alive connection waits up to 30 s for the peer's close_notify
            # (asyncio's ssl_shutdown_timeout): cut the stragglers instead
            for conn in list(self.server.server_state.connections):
                transport = getattr(conn, "transport", None)
                if transport is not None:
                    transport.abort()
            self.server.force_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


