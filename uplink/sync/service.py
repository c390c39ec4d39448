"""The gateway's ``uplink`` service: its journal served in pull mode (``SyncServer``
behind an ``HttpsListener``) or pushed to central (``PushClient``), sealed to the
central keys of the config, over one ``Link`` (bandwidth cap, monthly budget).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.core.config import UplinkSection, resolve_path
from gateway.core.record import Record
from gateway.core.units import parse_listen
from gateway.services import DaemonContext
from uplink import configdoc
from uplink.auth import AuthError, Verifier, ensure_tls_cert
from uplink.link import Link
from uplink.sync.client import Peer, PeerError, PushClient, Signer
from uplink.sync.remote_config import RemoteConfig
from uplink.sync.server import HttpsListener, SyncServer, pull_body_limit
from uplink.sync.source import LANES, JournalSource

log = logging.getLogger(__name__)


def _seal_with(env_mod: Any, node: Any, recipients: list[Any], cipher: str, suite: str
               ) -> Callable[[list[Record]], bytes]:
    def seal(records: list[Record]) -> bytes:
        data: bytes = env_mod.seal(records, sender=node, recipients=recipients, cipher=cipher, suite=suite)
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
        self.recipients = [pk for p in section.central_keys for pk in keys.load_public(resolve_path(p, base))]
        if not self.recipients:
            raise ValueError("uplink.central_keys lists no central public keys: nobody could read the data")
        # configs from central are verified against every central key set (uplink/sync/remote_config.py)
        self.remote = RemoteConfig(ctx, section, list(self.recipients))
        if section.suite == "gm":  # refuse at start, not at the first envelope
            from gateway.core import gmcrypto

            if not gmcrypto.sm2_available():
                raise ValueError("uplink.suite gm: the SM2 library gmssl-pyx is not installed "
                                 "(pip install 'safegw[gm]')")
            if self.node.sm2 is None:
                raise ValueError(f"uplink.suite gm: this node's key set {self.node.kid} has no SM2 key; run "
                                 "'safegw keys rotate' and give central the new public bundle")
            # sealed to the key sets that have SM2 (a node's older sets may predate it); every
            # node needs one
            lacking = sorted({r.id for r in self.recipients} - {r.id for r in self.recipients if r.sm2})
            if lacking:
                raise ValueError(f"uplink.suite gm: central key bundle(s) without an SM2 key: "
                                 f"{', '.join(lacking)} (the central node must run 'safegw keys rotate' "
                                 "and hand out its new bundle)")
            self.recipients = [r for r in self.recipients if r.sm2 is not None]
        self.link = Link(state_dir, rate=section.bandwidth, monthly_budget=section.monthly_budget)
        seal = _seal_with(envelope, self.node, self.recipients, section.cipher, section.suite)
        self.source = JournalSource(gid, ctx.journal, seal, max_records=section.max_records,
                                    max_samples=section.max_samples)
        self.server: SyncServer | None = None
        self.listener: HttpsListener | None = None
        self.push: PushClient | None = None
        self.peer: Peer | None = None
        if section.mode == "pull":
            trusted = {rk.kid: rk.ed25519 for rk in self.recipients}
            self.verifier = Verifier(trusted, node_id=gid, window_s=section.clock_window)
            self.server = SyncServer(self.source, self.verifier, self.link, max_bytes=section.max_bytes,
                                     extra_routes=[Route("/sync/v1/config", self.h_config, methods=["POST"])])
            if section.tls_cert and section.tls_key:
                cert, key = resolve_path(section.tls_cert, base), resolve_path(section.tls_key, base)
            else:
                host = parse_listen(section.listen or "0.0.0.0:8443")[0]
                cert, key = ensure_tls_cert(state_dir, gid, [host] if host not in ("0.0.0.0", "::") else [])
            # bodies bounded as they arrive, before the signature is checked: nothing here takes more
            # than an ack's few bytes, but a config from central
            limits = pull_body_limit(self.server.app, [("POST", "/sync/v1/config", configdoc.MAX_DOC)])
            self.listener = HttpsListener(limits, section.listen or "0.0.0.0:8443", cert, key)
        else:
            if not section.central_url:
                raise ValueError("uplink.mode push needs uplink.central_url")
            signer = Signer(self.node.ed25519, self.node.kid)
            ca = resolve_path(section.ca, base) if section.ca else None
            # the requests name the node they are for (the node at central_url; by default the
            # first in central_keys, the others getting the envelopes forwarded)
            to = section.central_id or self.recipients[0].id
            self.peer = Peer(section.central_url, signer, recipient=to, ca=ca, timeout_s=section.timeout)
            self.push = PushClient(self.source, self.peer, self.link, max_bytes=section.max_bytes,
                                   retry_max_s=section.retry_max)
            self.push.on_answer = lambda answer: self.remote.offered(answer, self._fetch_config)

    async def h_config(self, request: Request) -> Response:
        """``POST /sync/v1/config`` (pull mode): central delivers a signed config."""
        assert self.server is not None
        try:
            _key, body = await self.server.authenticate(request)
        except AuthError as e:
            return self.server.refuse(e)
        answer = await self.remote.offer(body)
        return JSONResponse(answer, status_code=503 if answer["status"] == "busy" else 200)

    async def _fetch_config(self, have: int) -> bytes | None:
        """Push mode: central's newest config for us, or None when it has none newer."""
        assert self.peer is not None
        peer = self.peer
        target = f"/sync/v1/config?{urlencode({'have': have})}"
        headers = peer.signer.headers("GET", target, b"", to=peer.recipient)
        body = bytearray()
        # read as it arrives, at most a config document's bound
        async with peer.client.stream("GET", peer.base + target, headers=headers) as r:
            if r.status_code != 200:
                raise PeerError(f"GET /sync/v1/config: HTTP {r.status_code}")
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > configdoc.MAX_DOC:
                    raise ValueError(f"central's config answer is over {configdoc.MAX_DOC} bytes")
        return bytes(body) if body.startswith(b'{"format"') else None

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
        await self.remote.close()
        if self.peer is not None:
            await self.peer.close()
        self.source.close()
        self.link.save()

    def stats(self) -> dict[str, Any]:
        lanes = self.source.lanes
        out: dict[str, Any] = {
            "mode": self.section.mode,
            "suite": self.section.suite,
            "cursors": {lane: lanes[lane].cursor for lane in LANES},
            "lag_records": lanes["main"].lag(),
            "sealed_envelopes": self.source.sealed_envelopes,
            "sealed_samples": self.source.sealed_samples,
            "sealed_bytes": self.source.sealed_bytes,
            "set_aside_records": self.source.set_aside_records,
            "link": self.link.stats(),
            "remote_config": self.remote.stats(),
        }
        if self.server is not None:
            out["requests"] = self.server.requests
            out["last_request_ns"] = self.server.last_request_ns
            out["refused"] = dict(self.server.verifier.rejected)
        if self.push is not None:
            s = self.push.stats
            out.update(connected=s.ok, last_ok_ns=s.last_ok_ns, last_error=s.last_error,
                       failures=s.failures, rewinds=s.rewinds, narrowed=s.narrowed)
        return out


def build_service(ctx: DaemonContext, section: UplinkSection) -> UplinkService:
    return UplinkService(ctx, section)


