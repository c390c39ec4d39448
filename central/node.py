"""The central sync service: pulls (or receives) envelopes from gateways, stores, forwards.

One ``CentralNode`` wires the parts and runs their lifecycle:

- ``central.puller``: a pull loop per source it holds (two lanes each: alarms
  long-polled, main drained at full speed), with per-source positions and backoff;
  with ``state.backend: postgres``, several workers share the pull sources through
  row leases (``central.state.PgState.claim``);
- an HTTPS listener with the ``/sync/v1`` API of its outbox for the next level up
  (``central.outbox``) and this node's own endpoints (``central.status``: the push
  endpoint ``POST /sync/v1/push`` and ``GET /status``);
- ``central.ingest``: open (verify the origin's signature, decrypt), then store each
  (origin, sequence) exactly once into one journal per origin (``central.journals``,
  which also writes them into InfluxDB when configured);
- forwarding: each envelope stored is also put unchanged in the outbox, which the
  next level pulls (or this node pushes), so the top can verify every plant's
  signature itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from central.config import CentralConfig, SourceEntry, tokens_path
from central.configs import MAX_UPLOAD, Configs
from central.ingest import Ingest, OriginCursor, SourceStatus
from central.journals import Journals
from central.outbox import OutboxSource
from central.puller import Puller
from central.state import PgState, SqliteState, State, TableRow
from central.status import CentralRoutes, Operators, PositionGuard, status_doc
from central.store_vm import store_for
from gateway.core import gmcrypto
from gateway.core.httplimits import BodyLimit
from gateway.core.record import Record
from gateway.core.tokens import FailureLimiter, UserStore
from gateway.core.units import iso_ns
from uplink import keys
from uplink.auth import Verifier, ensure_tls_cert
from uplink.link import Link
from uplink.sync import LANES, HttpsListener, Peer, PushClient, Signer, SyncServer

log = logging.getLogger(__name__)


class CentralNode:
    """One central node (or worker): its keys, sources and state, and the parts that share
    them; ``start``, ``run`` until ``stop``, then ``close``."""

    def __init__(self, cfg: CentralConfig):
        self.cfg = cfg
        self.id = cfg.node.id
        self.state_dir = Path(cfg.node.state_dir)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # keys, state, journals
        all_keys = keys.load_all(self.state_dir)
        if not all_keys:
            all_keys = [keys.init(self.state_dir, self.id)]
        self.keys = all_keys
        self.signer = Signer(all_keys[0].ed25519, all_keys[0].kid)
        self.worker = cfg.state.worker or f"{socket.gethostname()}-{os.getpid()}"
        # whom we trust: each source's own keys, plus origins behind relays
        self.trust = keys.TrustStore()
        self.sources: dict[str, SourceEntry] = {}
        self.by_kid: dict[str, SourceEntry] = {}
        push_keys = {}
        for s in cfg.sources:
            if not s.enabled:
                continue
            if s.suite == "gm" and not gmcrypto.sm2_available():
                raise ValueError(f"sources {s.id}: suite gm needs the SM2 library gmssl-pyx, not "
                                 "installed here (pip install 'safegw[gm]')")
            self.sources[s.id] = s
            for pk in keys.load_public(cfg.path(s.keys)):
                if pk.id != s.id:
                    raise ValueError(f"sources {s.id}: key bundle {s.keys} is for node {pk.id!r}")
                self.trust.add(pk)
                self.by_kid[pk.kid] = s
                push_keys[pk.kid] = pk.ed25519
        for p in cfg.trust:
            for pk in keys.load_public(cfg.path(p)):
                self.trust.add(pk)
        # what the parts below share: status per source, cursor per origin, latest
        # channel table per origin (a mirror of the state store's channel_tables)
        self.status = {s.id: SourceStatus(s.id, s.mode, s.relay, suite=s.suite)
                       for s in self.sources.values()}
        self.origins: dict[str, OriginCursor] = {}
        self.tables: dict[str, TableRow] = {}
        self.on_stored: list[Callable[[str, list[Record]], None]] = []
        if cfg.state.backend == "postgres":
            assert cfg.state.dsn
            self.state: State = PgState(cfg.state.dsn)
        else:
            self.state = SqliteState(self.state_dir / "central.db")
        self.outbox = OutboxSource(self.id, self.state)
        self.forward = cfg.upstream is not None
        self.journals = Journals(self.state_dir / "journals", cfg.storage, cfg.influxdb, cfg.base_dir)
        self.store = store_for(cfg)
        self.ingester = Ingest(state=self.state, journals=self.journals, recipient=self.keys,
                               trust=self.trust, status=self.status, origins=self.origins,
                               tables=self.tables, shared=isinstance(self.state, PgState),
                               forwarded=self.outbox.added if self.forward else None,
                               on_stored=self.on_stored, store=self.store,
                               journal=cfg.victoriametrics is None or cfg.victoriametrics.journal)
        # the one way in for frames, pulled or pushed
        self.ingest = self.ingester.ingest
        self.puller = Puller(sources=self.sources, state=self.state, signer=self.signer,
                             status=self.status, ingest=self.ingest, worker=self.worker,
                             lease_s=cfg.state.lease, resolve=cfg.path)
        up = cfg.upstream
        up_trust = {}
        self.up_id = ""  # the upper node pushed to: the first in upstream.keys
        if up is not None:
            for p in up.keys:
                for pk in keys.load_public(cfg.path(p)):
                    up_trust[pk.kid] = pk.ed25519
                    self.up_id = self.up_id or pk.id
        self.up_link = Link(self.state_dir, rate=up.bandwidth if up else None,
                            monthly_budget=up.monthly_budget if up else None)
        window = cfg.listen.clock_window
        self.push_verifier = Verifier(push_keys, node_id=self.id, window_s=window)
        # bearer tokens for the operator endpoints (GET /status): scrypt hashes, file 0600
        self.tokens = UserStore(tokens_path(cfg))
        ls = cfg.listen
        operators = Operators(self.tokens, FailureLimiter(ls.max_failures, ls.failure_window, ls.lockout))
        # configs issued to gateways, delivered over the sync link (central/configs.py)
        self.configs = Configs(state_dir=self.state_dir, node_id=self.id, signer=all_keys[0],
                               sources=self.sources, push_verifier=self.push_verifier, by_kid=self.by_kid,
                               resolve=cfg.path, request_signer=self.signer, check_tokens=operators.refusal)
        self.on_stored.append(self.configs.on_stored)
        routes = CentralRoutes(verifier=self.push_verifier, by_kid=self.by_kid, status=self.status,
                               ingest=self.ingest, state=self.state, pulling=self.puller.tasks,
                               operators=operators if ls.status else None, status_doc=self.status_doc,
                               offer=self.configs.offer)
        self.sync_server = SyncServer(
            self.outbox, Verifier(up_trust, node_id=self.id, window_s=window), self.up_link,
            max_bytes=up.max_bytes if up else 8 * 2**20,
            extra_routes=routes.routes() + self.configs.routes() + self._query_routes(operators),
            info=lambda: {"kind": "central"})
        self.listener: HttpsListener | None = None
        self.pusher: PushClient | None = None
        self.up_peer: Peer | None = None
        self._stop = asyncio.Event()
        self.started_ns = time.time_ns()

    def _query_routes(self, operators: Operators) -> list[Any]:
        if self.store is None or self.cfg.victoriametrics is None:
            return []
        from central import query

        q = query.Queries(self.cfg.victoriametrics, self.store.events)
        return query.routes(q, operators if self.cfg.listen.status else None)

    def status_doc(self) -> dict[str, Any]:
        upstream = None
        if self.forward:
            upstream = {"mode": self.cfg.upstream.mode if self.cfg.upstream else None,
                        "head": self.outbox.head(),
                        "cursors": {ln: self.outbox.position(ln) for ln in LANES},
                        "link": self.up_link.stats()}
        doc = status_doc(node=self.id, worker=self.worker, backend=self.cfg.state.backend,
                         started_ns=self.started_ns, sources=self.status, origins=self.origins,
                         tables=self.tables, journals=self.journals, pulling=self.puller.tasks,
                         upstream=upstream)
        doc["configs"] = self.configs.status()
        if self.store is not None:
            doc["victoriametrics"] = self.store.status()
        return doc

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.state.open()
        if self.store is not None:
            await self.store.open()
        await self.outbox.load()
        self.tables.update(await self.state.channel_tables())
        if self.cfg.listen.status and not self.tokens.users():
            log.warning("no operator tokens in %s: GET /status answers 401 to everyone; make one with "
                        "'safegw central -c FILE tokens add NAME'", self.tokens.path)
        for sid in self.sources:
            self.status[sid].positions = await self.state.positions(sid)
        for o, (m, a) in (await self.state.all_origins()).items():
            cur = await self.ingester.cursor(o)
            cur.main, cur.alarms = m, a
            if self.cfg.influxdb is not None:
                self.journals.open(o)  # resume storing into InfluxDB after a restart
        await self.ingester.recover_intents()
        await self.configs.refresh()
        lc = self.cfg.listen
        if lc.tls_cert and lc.tls_key:
            cert, key = self.cfg.path(lc.tls_cert), self.cfg.path(lc.tls_key)
        else:
            cert, key = ensure_tls_cert(self.state_dir, self.id)
        # bodies bounded as they arrive (before any signature or token is checked), positions
        # checked before they reach the state store
        app = BodyLimit(PositionGuard(self.sync_server.app), default=64 * 1024,
                        routes=[("POST", "/sync/v1/push", lc.max_push), ("POST", "/configs", MAX_UPLOAD)])
        self.listener = HttpsListener(app, lc.address, cert, key, name="central",
                                      trusted_proxies=lc.trusted_proxies, header_timeout_s=lc.header_timeout)
        await self.listener.start()
        up = self.cfg.upstream
        if up is not None and up.mode == "push":
            assert up.url
            self.up_peer = Peer(up.url, self.signer, recipient=up.id or self.up_id,
                                ca=self.cfg.path(up.ca) if up.ca else None, timeout_s=up.timeout)
            self.pusher = PushClient(self.outbox, self.up_peer, self.up_link, max_bytes=up.max_bytes,
                                     retry_max_s=up.retry_max)
        log.info("central %s listening on %s (%d sources, state %s, worker %s)", self.id, lc.address,
                 len(self.sources), self.cfg.state.backend, self.worker)

    @property
    def port(self) -> int:
        assert self.listener is not None
        return self.listener.port

    async def _housekeeping(self) -> None:
        up = self.cfg.upstream
        next_prune = time.monotonic()  # events' retention: at start, then hourly
        while True:
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + 3600
                await self.prune_events()
            await asyncio.sleep(60)
            self.up_link.save()
            if up is not None:
                try:
                    n = await self.state.outbox_prune(time.time_ns() - int(up.keep * 1e9))
                except Exception as e:  # database errors: report, keep running
                    log.error("outbox prune failed: %s", e)
                else:
                    if n:
                        log.info("outbox: pruned %d forwarded envelopes", n)

    async def prune_events(self) -> int:
        """Delete PostgreSQL's events older than ``victoriametrics.events_keep``. Every worker
        runs it; the DELETE is idempotent, so sharing needs no lease."""
        if self.store is None or self.cfg.victoriametrics is None:
            return 0
        cut = time.time_ns() - int(self.cfg.victoriametrics.events_keep * 1e9)
        try:
            n = await self.store.events.prune(cut)
        except Exception as e:  # database errors: report, keep running
            log.error("events: pruning older than %s failed: %s", iso_ns(cut, 0), e)
            return 0
        if n:
            log.info("events: pruned %d older than %s", n, iso_ns(cut, 0))
        return n

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.puller.leases(), name="leases")
                tg.create_task(self._housekeeping(), name="housekeeping")
                tg.create_task(self.configs.deliver(), name="configs")
                if self.pusher is not None:
                    tg.create_task(self.pusher.run(), name="push[upstream]")
                stop = tg.create_task(self._stop.wait(), name="stop")
                await stop
                raise _Stop
        except* _Stop:
            pass
        finally:
            await self.puller.stop()

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        if self.listener is not None:
            await self.listener.stop()
        if self.up_peer is not None:
            await self.up_peer.close()
        with contextlib.suppress(Exception):
            await self.state.release(self.worker, list(self.sources))
        await self.journals.close()
        await self.configs.close()
        if self.store is not None:
            await self.store.close()
        await self.state.close()
        self.ingester.close()
        self.up_link.save()


class _Stop(Exception):
    pass
