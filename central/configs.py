"""Configuration from central: configs issued to gateways, their delivery, and the results.

An operator uploads a gateway's config (``safegw central -c central.yaml config push
--gateway ID FILE``, or ``POST /configs?gateway=ID`` with an admin token). Central checks
that it is YAML of bounded size, a mapping whose ``gateway.id`` is that gateway, gives it
the next version for that gateway and signs it with its node key (``uplink.configdoc``:
Ed25519, or SM2/SM3 for a source on the ``gm`` suite). The signed documents are kept in
``<state_dir>/configs.db`` (0600).

Delivery rides the sync link, the least that changes it:

- a *pull* source (central fetches from the gateway's listener): central posts the newest
  document to the gateway's ``POST /sync/v1/config`` (a signed request, like its pulls)
  until the gateway has answered for that version;
- a *push* source (the gateway posts to central): central's push answer names the newest
  version (``"config": N``); a gateway that has not handled N fetches it with a signed
  ``GET /sync/v1/config?have=M``.

The gateway journals what it did (a ``remote_config`` event: applied, refused or rolled
back, with the version, SHA-256 and reason); the event reaches central in the envelopes
like every other one, and ``on_stored`` records it here, so ``GET /status`` (``configs``)
shows per gateway the newest version issued, the one delivered and the last result.

Several workers on PostgreSQL: each node keeps its own ``configs.db``; issue configs on
the node whose workers deliver them (docs/central.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from central.config import SourceEntry
from gateway.core.aio import wait_event
from gateway.core.record import EVENT, Record
from gateway.core.yamlsrc import YamlError, load_text
from gateway.store.schema import private_db
from uplink import configdoc
from uplink.auth import AuthError, Verifier
from uplink.keys import NodeKeys
from uplink.sync import NET_ERRORS, Peer, Signer

log = logging.getLogger(__name__)

T = TypeVar("T")

#: how often the node looks for configs issued by the CLI (another process) for its pull sources
CHECK_S = 3.0
#: the largest upload body (the config text)
MAX_UPLOAD = configdoc.MAX_TEXT
#: what a result's reason may hold when stored and shown
MAX_REASON = 2000
RESULTS = ("applied", "refused", "rolled_back", "failed")

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS configs (
        gateway TEXT NOT NULL, version INTEGER NOT NULL, sha256 TEXT NOT NULL, issued_ns INTEGER NOT NULL,
        alg TEXT NOT NULL, by TEXT NOT NULL, doc BLOB NOT NULL, PRIMARY KEY (gateway, version))""",
    """CREATE TABLE IF NOT EXISTS delivered (
        gateway TEXT PRIMARY KEY, version INTEGER NOT NULL, ts INTEGER NOT NULL, answer TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS results (
        gateway TEXT PRIMARY KEY, version INTEGER NOT NULL, result TEXT NOT NULL, reason TEXT,
        sha256 TEXT, ts INTEGER NOT NULL, seq INTEGER NOT NULL)""",
]


class IssueError(ValueError):
    """An upload refused: ``str()`` says where and why."""


def check_text(text: str, gateway: str, file: str = "<upload>") -> None:
    """A config text central will sign: bounded YAML, a mapping, for this gateway."""
    if len(text.encode()) > configdoc.MAX_TEXT:
        raise IssueError(f"{file}: {len(text.encode())} bytes is more than {configdoc.MAX_TEXT} "
                         "for a config")
    try:
        src = load_text(text, file)
    except YamlError as e:
        raise IssueError(str(e)) from None
    if not isinstance(src.data, dict) or not isinstance(src.data.get("gateway"), dict):
        raise IssueError(f"{file}:1:1: a gateway config is a mapping with a 'gateway:' section")
    gid = src.data["gateway"].get("id")
    if gid != gateway:
        raise IssueError(f"{file}: gateway.id is {str(gid)[:100]!r}, but the config is issued to {gateway!r}")


class ConfigStore:
    """The signed documents, deliveries and results, in ``configs.db`` (SQLite, 0600),
    used from one thread of its own."""

    def __init__(self, path: Path):
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="central-configs")

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            private_db(self.path)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
            db.execute("PRAGMA journal_mode=WAL")
            for s in _SCHEMA:
                db.execute(s)
            self._db = db
        return self._db

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, lambda: fn(self._conn()))

    def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            self._pool.submit(db.close).result()
        self._pool.shutdown(wait=True)

    # -- synchronous calls (the CLI, and the thread of ``run``)
    def issue_sync(self, gateway: str, text: str, *, signer: NodeKeys, alg: str, by: str,
                   now_ns: int | None = None) -> tuple[int, str]:
        """Version, sign and store ``text`` for ``gateway``: (version, sha256)."""
        db = self._conn()
        issued = now_ns if now_ns is not None else time.time_ns()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT MAX(version) FROM configs WHERE gateway=?", (gateway,)).fetchone()
            version = int(row[0] or 0) + 1
            doc = configdoc.sign(text, gateway=gateway, version=version, issued_ns=issued, signer=signer,
                                 alg=alg)
            sha = configdoc.sha256_text(text)
            db.execute("INSERT INTO configs(gateway, version, sha256, issued_ns, alg, by, doc) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", (gateway, version, sha, issued, alg, by[:100], doc))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return version, sha

    def latest_sync(self, gateway: str) -> tuple[int, bytes] | None:
        row = self._conn().execute("SELECT version, doc FROM configs WHERE gateway=? ORDER BY version DESC "
                                   "LIMIT 1", (gateway,)).fetchone()
        return (int(row[0]), bytes(row[1])) if row else None

    def status_sync(self) -> dict[str, dict[str, Any]]:
        db = self._conn()
        out: dict[str, dict[str, Any]] = {}
        for g, v, sha, issued, alg, by in db.execute(
                "SELECT gateway, version, sha256, issued_ns, alg, by FROM configs c WHERE version = "
                "(SELECT MAX(version) FROM configs WHERE gateway=c.gateway)"):
            out[g] = {"issued": {"version": v, "sha256": sha, "issued_ns": issued, "alg": alg, "by": by},
                      "delivered": None, "last_result": None}
        for g, v, ts, answer in db.execute("SELECT gateway, version, ts, answer FROM delivered"):
            out.setdefault(g, {"issued": None, "delivered": None, "last_result": None})
            out[g]["delivered"] = {"version": v, "ts": ts, "answer": json.loads(answer)}
        for g, v, res, reason, sha, ts, seq in db.execute(
                "SELECT gateway, version, result, reason, sha256, ts, seq FROM results"):
            out.setdefault(g, {"issued": None, "delivered": None, "last_result": None})
            out[g]["last_result"] = {"version": v, "result": res, "reason": reason, "sha256": sha, "ts": ts,
                                     "seq": seq}
        return out


class Configs:
    """The running node's side: routes, delivery to pull sources, results from the journal."""

    def __init__(self, *, state_dir: Path, node_id: str, signer: NodeKeys, sources: dict[str, SourceEntry],
                 push_verifier: Verifier, by_kid: dict[str, SourceEntry],
                 resolve: Callable[[Path], Path], request_signer: Signer,
                 check_tokens: Callable[[Request, str], Any]):
        self.store = ConfigStore(state_dir / "configs.db")
        self.node_id = node_id
        self.signer = signer
        self.sources = sources
        self.push_verifier = push_verifier
        self.by_kid = by_kid
        self.resolve = resolve
        self.request_signer = request_signer
        self.check_tokens = check_tokens  # (request, role) -> a refusal Response, or None
        self.cache: dict[str, dict[str, Any]] = {}  # status_sync, refreshed after each change
        self.latest: dict[str, int] = {}  # newest version issued, per gateway
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def alg_for(self, gateway: str) -> str:
        src = self.sources.get(gateway)
        return "sm2-sm3" if src is not None and src.suite == "gm" else "ed25519"

    async def refresh(self) -> None:
        self.cache = await self.store.run(lambda _db: self.store.status_sync())
        self.latest = {g: int(d["issued"]["version"]) for g, d in self.cache.items() if d.get("issued")}

    def status(self) -> dict[str, Any]:
        return self.cache

    def offer(self, gateway: str) -> dict[str, Any]:
        """What a push answer carries for ``gateway``: the newest version issued to it."""
        v = self.latest.get(gateway)
        return {"config": v} if v else {}

    # ------------------------------------------------------------------ routes
    def routes(self) -> list[Route]:
        return [Route("/configs", self.h_upload, methods=["POST"]),
                Route("/configs", self.h_list, methods=["GET"]),
                Route("/sync/v1/config", self.h_fetch, methods=["GET"])]

    async def h_upload(self, request: Request) -> Response:
        refused = await self.check_tokens(request, "admin")
        if refused is not None:
            return refused
        gateway = request.query_params.get("gateway", "")
        if gateway not in self.sources:
            return JSONResponse({"error": f"gateway {gateway[:100]!r} is not a source of this node"},
                                status_code=404)
        body = await request.body()  # bounded by the listener's BodyLimit (MAX_UPLOAD)
        try:
            text = body.decode()
        except UnicodeDecodeError as e:
            return JSONResponse({"error": f"<upload>: not UTF-8 at byte {e.start}"}, status_code=400)
        try:
            check_text(text, gateway)
            version, sha = await self.store.run(lambda _db: self.store.issue_sync(
                gateway, text, signer=self.signer, alg=self.alg_for(gateway), by="api"))
        except ValueError as e:  # IssueError, ConfigDocError, an SM2 signature without an SM2 key
            return JSONResponse({"error": str(e)}, status_code=400)
        log.info("config v%d for %s issued (sha256 %s…, via the API)", version, gateway, sha[:12])
        await self.refresh()
        self._wake.set()
        return JSONResponse({"gateway": gateway, "version": version, "sha256": sha})

    async def h_list(self, request: Request) -> Response:
        refused = await self.check_tokens(request, "viewer")
        if refused is not None:
            return refused
        await self.refresh()
        return JSONResponse(self.cache)

    async def h_fetch(self, request: Request) -> Response:
        """A push gateway fetches its newest config (signed request, no body)."""
        body = await request.body()
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            kid = self.push_verifier.verify(request.method, target, body, request.headers)
        except AuthError as e:
            return JSONResponse({"error": e.reason}, status_code=401)
        gateway = self.by_kid[kid].id
        raw = request.query_params.get("have", "0")
        if not raw.isdigit() or len(raw) > 19:
            return JSONResponse({"error": "have must be a version number"}, status_code=400)
        got = await self.store.run(lambda _db: self.store.latest_sync(gateway))
        if got is None or got[0] <= int(raw):
            return JSONResponse({"config": got[0] if got else 0})
        await self._delivered(gateway, got[0], {"fetched": True})
        return Response(got[1], media_type="application/json")

    async def _delivered(self, gateway: str, version: int, answer: dict[str, Any]) -> None:
        text = json.dumps(answer)[:MAX_REASON]

        def put(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO delivered(gateway, version, ts, answer) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT(gateway) DO UPDATE SET version=excluded.version, ts=excluded.ts, "
                       "answer=excluded.answer", (gateway, version, time.time_ns(), text))

        await self.store.run(put)
        await self.refresh()

    # ------------------------------------------------------------------ delivery to pull sources
    async def deliver(self) -> None:
        """Post the newest config to each pull source that has not answered for it."""
        peers: dict[str, Peer] = {}
        try:
            while True:
                await self.refresh()
                for sid, src in self.sources.items():
                    if src.mode != "pull" or src.pull is None:
                        continue
                    latest = self.latest.get(sid, 0)
                    d = self.cache.get(sid, {}).get("delivered")
                    if not latest or (d is not None and d["version"] >= latest):
                        continue
                    if sid not in peers:
                        ca = self.resolve(src.pull.tls_cert) if src.pull.tls_cert else None
                        peers[sid] = Peer(src.pull.url, self.request_signer, recipient=sid, ca=ca,
                                          verify=src.pull.verify, timeout_s=src.pull.timeout)
                    await self._post(sid, peers[sid])
                self._wake.clear()
                await wait_event(self._wake, CHECK_S)
        finally:
            for p in peers.values():
                await p.close()

    async def _post(self, sid: str, peer: Peer) -> None:
        got = await self.store.run(lambda _db: self.store.latest_sync(sid))
        if got is None:
            return
        version, doc = got
        try:
            r = await peer.request("POST", "/sync/v1/config", None, doc)
            answer = dict(r.json())
        except NET_ERRORS as e:
            # the gateway is down or busy applying: the next round tries again
            log.info("config v%d for %s not delivered yet: %s", version, sid, e)
            return
        except ValueError as e:
            log.warning("config v%d for %s: the gateway's answer is not JSON: %s", version, sid, e)
            return
        log.info("config v%d delivered to %s: %s", version, sid, str(answer)[:200])
        await self._delivered(sid, version, answer)

    # ------------------------------------------------------------------ results (journal events)
    def on_stored(self, origin: str, records: list[Record]) -> None:
        """``Ingest.on_stored``: the gateways' ``remote_config`` events, as they are stored."""
        found = []
        for r in records:
            if r.kind != EVENT:
                continue
            try:
                ev = r.event()
            except ValueError:
                continue
            if isinstance(ev, dict) and ev.get("type") == "remote_config":
                found.append((r.seq, ev))
        if found:
            t = asyncio.get_running_loop().create_task(self._results(origin, found),
                                                       name=f"config-result[{origin}]")
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _results(self, origin: str, found: list[tuple[int, dict[str, Any]]]) -> None:
        def put(db: sqlite3.Connection) -> None:
            for seq, ev in found:
                res = str(ev.get("result"))
                if res not in RESULTS:
                    continue
                version = ev.get("version") if type(ev.get("version")) is int else 0
                db.execute("INSERT INTO results(gateway, version, result, reason, sha256, ts, seq) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(gateway) DO UPDATE SET "
                           "version=excluded.version, result=excluded.result, reason=excluded.reason, "
                           "sha256=excluded.sha256, ts=excluded.ts, seq=excluded.seq "
                           "WHERE results.seq < excluded.seq",
                           (origin, version, res, str(ev.get("reason") or "")[:MAX_REASON] or None,
                            str(ev.get("sha256") or "")[:64] or None, int(ev.get("ts") or 0), seq))
                log.info("gateway %s: config v%s %s%s", origin, version, res,
                         f": {str(ev.get('reason'))[:200]}" if ev.get("reason") else "")

        await self.store.run(put)
        await self.refresh()

    async def close(self) -> None:
        for t in list(self._tasks):
            await asyncio.gather(t, return_exceptions=True)
        self.store.close()
