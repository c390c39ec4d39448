"""The pull side of the sync transport: the ``/sync/v1`` HTTP API over a ``Source``
(served by a gateway in pull mode and by a central node to the next level up), and
the HTTPS listener that serves it apart from the admin API. API: ``uplink.sync``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.core.units import parse_listen
from uplink.auth import AuthError, Verifier
from uplink.link import Link
from uplink.sync.source import LANES, MAX_BODY, MEDIA, Source, pack_frames

log = logging.getLogger(__name__)


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
        try:
            after = int(q.get("after", "0"))
            max_bytes = self._chunk(int(q.get("max_bytes", "0")))
            wait = min(float(q.get("wait", "0")), self.max_wait_s)
            max_items = max(0, int(q.get("max", "0")))
        except ValueError:
            return JSONResponse({"error": "bad query"}, status_code=400)
        if lane not in LANES or after < 0:
            return JSONResponse({"error": "bad lane or position"}, status_code=400)
        try:
            ack = int(q.get("ack", str(after)))
        except ValueError:
            return JSONResponse({"error": "bad ack"}, status_code=400)
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
            lane, seq = doc.get("lane", "main"), int(doc["seq"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "expected {lane, seq}"}, status_code=400)
        if lane not in LANES:
            return JSONResponse({"error": "bad lane"}, status_code=400)
        await self.source.ack(lane, seq)
        return JSONResponse({"cursor": self.source.position(lane)})


class HttpsListener:
    """uvicorn serving an ASGI app on its own listener (not the admin API's)."""

    def __init__(self, app: Any, listen: str, cert: Path, key: Path, *, name: str = "sync"):
        host, port = parse_listen(listen)
        self.config = uvicorn.Config(app, host=host, port=port, ssl_certfile=str(cert), ssl_keyfile=str(key),
                                     log_level="warning", access_log=False, lifespan="off",
                                     timeout_keep_alive=60, h11_max_incomplete_event_size=MAX_BODY)
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
            await asyncio.wait_for(asyncio.shield(self._task), grace_s)
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


