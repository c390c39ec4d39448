"""The sync transport: a pull server and a push client over HTTPS, for gateways and central nodes.

What travels are sealed envelopes (``uplink.envelope``): each covers a contiguous
range of the origin's journal, is encrypted to every upper node listed in the
config, and is signed by the origin. This module moves them; it never opens them.

Lanes, and why "exactly once, in order" still holds
---------------------------------------------------
There are two lanes, each with its own journal cursor on the gateway:

- ``main`` (cursor ``uplink``): every record, samples and events, in sequence order.
  Central accepts a main envelope only when it continues its cursor for that origin
  (``first <= cursor + 1``); anything already held is skipped, a hole is refused
  and fetched again from the cursor. This lane alone is complete and ordered.
- ``alarms`` (cursor ``uplink.alarms``): only event records (alarm transitions, gap
  records, register changes): small, and sent ahead of the sample backlog. Central
  stores an event that arrives this way at once and remembers its sequence; when
  the main lane later reaches that sequence it skips it. So each (origin, sequence)
  is stored exactly once; samples and events are in order on the main lane, and
  events may be stored *earlier* than their place in it (that is the point).

Both lanes share one ``Link`` (bandwidth cap, priority to alarms, monthly budget).

Wire format (``application/x-safegw-frames``): a concatenation of frames
``lane u8 | stream_seq u64 LE | length u32 LE | envelope``. ``stream_seq`` is the
sender's position after this envelope: the journal sequence on a gateway, the
outbox id on a central node forwarding upward.

HTTP API (every request signed, see ``uplink.auth``)
---------------------------------------------------
Served by a gateway (pull mode) and by a central node to the next level up:

- ``GET /sync/v1/info``: node id, head position, lanes' cursors, link counters.
- ``GET /sync/v1/envelopes?lane=main|alarms&after=N&ack=A&max=K&max_bytes=B&wait=S``: frames
  after position N, at most K envelopes and about B bytes (long-polls up to S seconds
  when there is nothing); ``ack``
  acknowledges what the puller has stored (default: ``after``). A puller that
  prefetches the next range while it stores the current one asks ``after`` = what
  it received and ``ack`` = what it stored.
- ``POST /sync/v1/ack`` ``{"lane": "main", "seq": N}``: acknowledge explicitly.

Served by a central node (push mode): ``POST /sync/v1/push?head=H&first=F`` with
frames; answers ``{"cursors": {"main": N, "alarms": M}}`` in the sender's positions.
The pusher advances its cursors only to what central answered (and rewinds to it
when central reports a hole).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import struct
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.core.config import UplinkSection
from gateway.core.record import EVENT, SAMPLES, Record
from gateway.core.units import parse_listen
from gateway.services import DaemonContext
from gateway.store.journal import Journal
from uplink.auth import AuthError, Verifier, client_context, ensure_tls_cert, sign_headers
from uplink.link import Link

log = logging.getLogger(__name__)

LANES = ("main", "alarms")
LANE_CODE = {"main": 0, "alarms": 1}
LANE_NAME = {v: k for k, v in LANE_CODE.items()}
CURSORS = {"main": "uplink", "alarms": "uplink.alarms"}
FRAME = struct.Struct("<BQI")
MEDIA = "application/x-safegw-frames"
MAX_BODY = 64 * 2**20


# --------------------------------------------------------------------------- frames
@dataclass(slots=True)
class Item:
    lane: str
    seq: int
    data: bytes
    samples: int = 0
    records: int = 0


def pack_frames(items: list[Item]) -> bytes:
    parts: list[bytes] = []
    for it in items:
        parts.append(FRAME.pack(LANE_CODE[it.lane], it.seq, len(it.data)))
        parts.append(it.data)
    return b"".join(parts)


class FrameError(ValueError):
    pass


def unpack_frames(data: bytes) -> list[Item]:
    out: list[Item] = []
    mv = memoryview(data)
    pos = 0
    while pos < len(mv):
        if pos + FRAME.size > len(mv):
            raise FrameError("truncated frame header")
        lane, seq, n = FRAME.unpack_from(mv, pos)
        pos += FRAME.size
        if lane not in LANE_NAME or pos + n > len(mv):
            raise FrameError("bad lane or truncated envelope")
        out.append(Item(LANE_NAME[lane], seq, bytes(mv[pos:pos + n])))
        pos += n
    return out


# --------------------------------------------------------------------------- sources
class Source(Protocol):
    """What a pull server serves and a push client sends: positions and envelopes."""

    node_id: str

    async def read(self, lane: str, after: int, *, max_bytes: int, max_items: int = 0) -> list[Item]: ...

    async def ack(self, lane: str, seq: int) -> None: ...

    def position(self, lane: str) -> int: ...

    def head(self) -> int: ...

    def first(self) -> int: ...

    async def wait(self, after: int, wait_s: float) -> bool: ...


class JournalSource:
    """A gateway's journal as a source: reads records after a position and seals them."""

    def __init__(self, node_id: str, journal: Journal, seal: Callable[[list[Record]], bytes], *,
                 max_records: int = 200, max_samples: int = 50_000):
        self.node_id = node_id
        self.journal = journal
        self._seal = seal
        self.max_records = max_records
        self.max_samples = max_samples
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="uplink-seal")
        self.sealed_envelopes = 0
        self.sealed_samples = 0
        self.sealed_bytes = 0
        self._bytes_per_sample = 3.0  # running estimate, to size envelopes to a byte budget
        for name in CURSORS.values():
            journal.register(name)

    def _read_seal(self, lane: str, after: int, max_bytes: int, max_items: int) -> list[Item]:
        kinds = (EVENT,) if lane == "alarms" else None
        out: list[Item] = []
        total = 0
        while total < max_bytes and not (max_items and len(out) >= max_items):
            # on a capped link an envelope should fit the response budget, so that a
            # response never holds the link much longer than planned (alarms wait less)
            want = min(self.max_samples, max(256, int((max_bytes - total) / self._bytes_per_sample)))
            recs = self.journal.read_sync(after, self.max_records, max_samples=want, kinds=kinds)
            if not recs:
                break
            data = self._seal(recs)
            n = sum(r.n for r in recs if r.kind == SAMPLES)
            if n >= 1000:
                self._bytes_per_sample = 0.5 * self._bytes_per_sample + 0.5 * len(data) / n
            out.append(Item(lane, recs[-1].seq, data, n, len(recs)))
            total += len(data)
            after = recs[-1].seq
            self.sealed_envelopes += 1
            self.sealed_samples += n
            self.sealed_bytes += len(data)
        return out

    async def read(self, lane: str, after: int, *, max_bytes: int, max_items: int = 0) -> list[Item]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._read_seal, lane, after, max_bytes, max_items)

    async def ack(self, lane: str, seq: int) -> None:
        seq = min(seq, self.journal.last_seq)
        if seq > self.journal.cursor(CURSORS[lane]):
            await self.journal.ack(CURSORS[lane], seq)

    def position(self, lane: str) -> int:
        return self.journal.cursor(CURSORS[lane])

    def head(self) -> int:
        return self.journal.last_seq

    def first(self) -> int:
        return self.journal.first_seq

    async def wait(self, after: int, wait_s: float) -> bool:
        return await self.journal.wait(after, wait_s)

    def close(self) -> None:
        self._pool.shutdown(wait=False)


# --------------------------------------------------------------------------- pull server
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


# --------------------------------------------------------------------------- client side
class Signer:
    """Signs outgoing requests with this node's Ed25519 key."""

    def __init__(self, private_key: Any, key_id: str):
        self.key = private_key
        self.key_id = key_id

    def headers(self, method: str, target: str, body: bytes = b"") -> dict[str, str]:
        return sign_headers(self.key, self.key_id, method, target, body)


class PeerError(Exception):
    """The peer answered, but not with what the protocol expects."""


class Peer:
    """An HTTPS peer (a gateway to pull from, or central to push to)."""

    def __init__(self, base_url: str, signer: Signer, *, ca: Path | None = None, verify: bool = True,
                 timeout_s: float = 30.0):
        self.base = base_url.rstrip("/")
        self.signer = signer
        self.client = httpx.AsyncClient(verify=client_context(ca, verify=verify),
                                        timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
                                        limits=httpx.Limits(max_keepalive_connections=4))

    async def request(self, method: str, path: str, params: dict[str, Any] | None = None,
                      body: bytes = b"", *, timeout_s: float | None = None) -> httpx.Response:
        target = path + (f"?{urlencode(params)}" if params else "")
        headers = self.signer.headers(method, target, body)
        if body:
            headers["content-type"] = MEDIA if not body.startswith(b"{") else "application/json"
        kw: dict[str, Any] = {}
        if timeout_s is not None:
            kw["timeout"] = httpx.Timeout(timeout_s, connect=10.0)
        r = await self.client.request(method, self.base + target, content=body, headers=headers, **kw)
        if r.status_code != 200:
            raise PeerError(f"{method} {path}: HTTP {r.status_code} {r.text[:200]}")
        return r

    async def close(self) -> None:
        await self.client.aclose()


NET_ERRORS = (httpx.HTTPError, OSError, PeerError, FrameError, asyncio.TimeoutError)


class Backoff:
    def __init__(self, first: float = 0.2, cap: float = 30.0):
        self.first, self.cap = first, cap
        self.delay = first

    def next(self) -> float:
        d = self.delay * random.uniform(0.8, 1.2)
        self.delay = min(self.cap, self.delay * 2)
        return d

    def reset(self) -> None:
        self.delay = self.first


@dataclass
class PushStats:
    connected: bool = False
    last_ok_ns: int = 0
    last_error: str | None = None
    requests: int = 0
    failures: int = 0
    rewinds: int = 0
    sent_envelopes: int = 0
    sent_samples: int = 0
    cursors: dict[str, int] = field(default_factory=dict)


class PushClient:
    """Pushes a Source to central: alarms lane first, then one main chunk, repeat."""

    def __init__(self, source: Source, peer: Peer, link: Link, *, max_bytes: int = 8 * 2**20,
                 idle_wait_s: float = 5.0, retry_max_s: float = 30.0):
        self.source = source
        self.peer = peer
        self.link = link
        self.max_bytes = max_bytes
        self.idle_wait_s = idle_wait_s
        self.backoff = Backoff(0.2, retry_max_s)
        self.stats = PushStats()
        self.pos = {lane: source.position(lane) for lane in LANES}
        # what the last push that got no answer carried: (lane, after, items). A retry of
        # the same position sends the same sealed envelopes again instead of sealing anew
        # (central stores by sequence, so a copy that did arrive is a duplicate it ignores)
        self._unanswered: tuple[str, int, list[Item]] | None = None

    def _chunk(self) -> int:
        if self.link.rate:
            return max(16384, min(self.max_bytes, int(self.link.rate * 2)))
        return self.max_bytes

    def _after(self, lane: str) -> int:
        # events the main lane already delivered need not go again on the alarms lane
        return max(self.pos["alarms"], self.pos["main"]) if lane == "alarms" else self.pos["main"]

    async def push_once(self) -> bool:
        """Send what is pending on one lane (alarms first). True when something went."""
        for lane in ("alarms", "main"):
            if not self.link.allow(lane):
                continue
            after = self._after(lane)
            un = self._unanswered
            if un is not None and un[0] == lane and un[1] == after:
                items = un[2]
            else:
                items = await self.source.read(lane, after, max_bytes=self._chunk())
            if not items:
                continue
            body = pack_frames(items)
            await self.link.send(len(body), lane)
            params = {"head": self.source.head(), "first": self.source.first()}
            self._unanswered = (lane, after, items)
            r = await self.peer.request("POST", "/sync/v1/push", params, body)
            self._unanswered = None
            self.stats.requests += 1
            self.link.envelopes += len(items)
            try:
                cursors = {k: int(v) for k, v in r.json()["cursors"].items()}
            except (ValueError, KeyError, TypeError) as e:
                raise PeerError(f"push answer without cursors: {e}") from None
            self.stats.cursors = cursors
            refused = False
            for ln in LANES:
                c = cursors.get(ln, self.pos[ln])
                if ln == lane and c < items[-1].seq:
                    # central holds less than we sent: a hole on its side; resend from there
                    self.stats.rewinds += 1
                    refused = True
                    log.warning("central is at %d on lane %s, we sent up to %d: resending from %d",
                                c, ln, items[-1].seq, c)
                self.pos[ln] = c
                await self.source.ack(ln, c)
            if refused:
                # central refused part of it (a hole on its side, or an envelope it cannot
                # verify): do not hammer it, the next attempt resends from its cursor
                await asyncio.sleep(self.backoff.next())
                return True
            self.stats.sent_envelopes += len(items)
            sent = sum(i.samples for i in items)
            self.stats.sent_samples += sent
            self.link.samples += sent
            return True
        return False

    async def run(self) -> None:
        while True:
            try:
                sent = await self.push_once()
            except NET_ERRORS as e:
                self.stats.failures += 1
                msg = str(e) or type(e).__name__
                if self.stats.connected or self.stats.last_error is None:
                    log.error("uplink push to %s failed: %s", self.peer.base, msg)
                self.stats.connected, self.stats.last_error = False, msg
                await asyncio.sleep(self.backoff.next())
                continue
            if not self.stats.connected:
                log.info("uplink push to %s is working", self.peer.base)
            self.stats.connected, self.stats.last_error = True, None
            self.stats.last_ok_ns = time.time_ns()
            self.backoff.reset()
            if not sent:
                # nothing went: wait for new records (when the budget holds samples back,
                # for records newer than what is already waiting)
                after = max(self.pos.values())
                if self.link.budget_blocked:
                    after = max(after, self.source.head())
                await self.source.wait(after, self.idle_wait_s)

    async def drain(self) -> None:
        """Push until nothing is pending (bounded by the caller)."""
        while True:
            try:
                if not await self.push_once():
                    return
            except NET_ERRORS:
                await asyncio.sleep(self.backoff.next())


# --------------------------------------------------------------------------- gateway service
def _seal_with(env_mod: Any, node: Any, recipients: list[Any], cipher: str
               ) -> Callable[[list[Record]], bytes]:
    def seal(records: list[Record]) -> bytes:
        data: bytes = env_mod.seal(records, sender=node, recipients=recipients, cipher=cipher)
        return data

    return seal


class UplinkService:
    """The gateway's uplink: a pull server or a push client over its journal."""

    def __init__(self, ctx: DaemonContext, section: UplinkSection):
        from uplink import envelope, keys

        self.name = "uplink"
        self.ctx = ctx
        self.section = section
        gid = ctx.cfg.gateway.id
        state_dir = Path(ctx.state_dir)
        self.node = keys.load_or_none(state_dir) or keys.init(state_dir, gid)
        base = ctx.cfg.base_dir
        self.recipients = [pk for p in section.central_keys for pk in keys.load_public(_abs(base, p))]
        if not self.recipients:
            raise ValueError("uplink.central_keys lists no central public keys: nobody could read the data")
        self.link = Link(state_dir, rate=section.bandwidth, monthly_budget=section.monthly_budget)
        seal = _seal_with(envelope, self.node, self.recipients, section.cipher)
        self.source = JournalSource(gid, ctx.journal, seal, max_records=section.max_records,
                                    max_samples=section.max_samples)
        self.server: SyncServer | None = None
        self.listener: HttpsListener | None = None
        self.push: PushClient | None = None
        self.peer: Peer | None = None
        if section.mode == "pull":
            trusted = {rk.kid: rk.ed25519 for rk in self.recipients}
            self.verifier = Verifier(trusted, window_s=section.clock_window)
            self.server = SyncServer(self.source, self.verifier, self.link, max_bytes=section.max_bytes)
            if section.tls_cert and section.tls_key:
                cert, key = _abs(base, section.tls_cert), _abs(base, section.tls_key)
            else:
                host = parse_listen(section.listen or "0.0.0.0:8443")[0]
                cert, key = ensure_tls_cert(state_dir, gid, [host] if host not in ("0.0.0.0", "::") else [])
            self.listener = HttpsListener(self.server.app, section.listen or "0.0.0.0:8443", cert, key)
        else:
            if not section.central_url:
                raise ValueError("uplink.mode push needs uplink.central_url")
            signer = Signer(self.node.ed25519, self.node.kid)
            ca = _abs(base, section.ca) if section.ca else None
            self.peer = Peer(section.central_url, signer, ca=ca, timeout_s=section.timeout)
            self.push = PushClient(self.source, self.peer, self.link, max_bytes=section.max_bytes,
                                   retry_max_s=section.retry_max)

    async def start(self) -> None:
        if self.listener is not None:
            await self.listener.start()
            log.info("uplink: serving /sync/v1 on %s (pull mode)", self.section.listen)
        else:
            log.info("uplink: pushing to %s", self.section.central_url)

    async def run(self) -> None:
        try:
            if self.push is not None:
                await self.push.run()
            else:
                await asyncio.Event().wait()
        finally:
            self.link.save()

    async def drain(self) -> None:
        if self.push is not None:
            await self.push.drain()

    async def stop(self) -> None:
        if self.listener is not None:
            await self.listener.stop()
        if self.peer is not None:
            await self.peer.close()
        self.source.close()
        self.link.save()

    def stats(self) -> dict[str, Any]:
        j = self.ctx.journal
        out: dict[str, Any] = {
            "mode": self.section.mode,
            "cursors": {lane: j.cursor(CURSORS[lane]) for lane in LANES},
            "lag_records": j.lag(CURSORS["main"]),
            "sealed_envelopes": self.source.sealed_envelopes,
            "sealed_samples": self.source.sealed_samples,
            "sealed_bytes": self.source.sealed_bytes,
            "link": self.link.stats(),
        }
        if self.server is not None:
            out["requests"] = self.server.requests
            out["last_request_ns"] = self.server.last_request_ns
            out["refused"] = dict(self.server.verifier.rejected)
        if self.push is not None:
            s = self.push.stats
            out.update(connected=s.connected, last_ok_ns=s.last_ok_ns, last_error=s.last_error,
                       failures=s.failures, rewinds=s.rewinds)
        return out


def _abs(base: Path, p: Path) -> Path:
    return p if p.is_absolute() else base / p


def build_service(ctx: DaemonContext, section: UplinkSection) -> UplinkService:
    return UplinkService(ctx, section)


async def call_with_retry(fn: Callable[[], Awaitable[Any]], *, attempts: int = 3) -> Any:
    """Retry a network call a few times with backoff (tests, CLI tools)."""
    b = Backoff(0.1, 2.0)
    for i in range(attempts):
        try:
            return await fn()
        except NET_ERRORS:
            if i == attempts - 1:
                raise
            await asyncio.sleep(b.next())
    return None
