"""The push side of the sync transport: signed HTTPS requests to a peer, and the push
client that sends a ``Source`` to central (alarms lane first), advancing its cursors
only to what central answered. An envelope central refuses for good (422) is narrowed
until the refused record is alone, which is then set aside (``SetsAside``). Used by a
gateway in push mode and by a central node forwarding its outbox upward. API: ``uplink.sync``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from gateway.consumer import Backoff, Health
from uplink.auth import client_context, sign_headers
from uplink.link import Link
from uplink.sync.source import LANES, MEDIA, FrameError, Item, SetsAside, Source, pack_frames

log = logging.getLogger(__name__)


class Signer:
    """Signs outgoing requests with this node's Ed25519 key."""

    def __init__(self, private_key: Any, key_id: str):
        self.key = private_key
        self.key_id = key_id

    def headers(self, method: str, target: str, body: bytes = b"", *, to: str) -> dict[str, str]:
        return sign_headers(self.key, self.key_id, method, target, body, to=to)


class PeerError(Exception):
    """The peer answered, but not with what the protocol expects."""


class PeerRefused(PeerError):
    """The peer refused for a reason that will not change (HTTP 422): ``doc`` says why."""

    def __init__(self, msg: str, doc: dict[str, Any]):
        super().__init__(msg)
        self.doc = doc


class Peer:
    """An HTTPS peer (a gateway to pull from, or central to push to); ``recipient`` is its
    node id, which every request's signature names."""

    def __init__(self, base_url: str, signer: Signer, *, recipient: str, ca: Path | None = None,
                 verify: bool = True, timeout_s: float = 30.0):
        self.base = base_url.rstrip("/")
        self.signer = signer
        self.recipient = recipient
        self.client = httpx.AsyncClient(verify=client_context(ca, verify=verify),
                                        timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
                                        limits=httpx.Limits(max_keepalive_connections=4))

    async def request(self, method: str, path: str, params: dict[str, Any] | None = None,
                      body: bytes = b"", *, timeout_s: float | None = None) -> httpx.Response:
        target = path + (f"?{urlencode(params)}" if params else "")
        headers = self.signer.headers(method, target, body, to=self.recipient)
        if body:
            headers["content-type"] = MEDIA if not body.startswith(b"{") else "application/json"
        kw: dict[str, Any] = {}
        if timeout_s is not None:
            kw["timeout"] = httpx.Timeout(timeout_s, connect=10.0)
        r = await self.client.request(method, self.base + target, content=body, headers=headers, **kw)
        if r.status_code == 422:
            try:
                doc = dict(r.json())
            except ValueError:
                doc = {}
            raise PeerRefused(f"{method} {path}: refused for good: {str(doc.get('reason'))[:200]}", doc)
        if r.status_code != 200:
            raise PeerError(f"{method} {path}: HTTP {r.status_code} {r.text[:200]}")
        return r

    async def close(self) -> None:
        await self.client.aclose()


NET_ERRORS = (httpx.HTTPError, OSError, PeerError, FrameError, asyncio.TimeoutError)

class PushStats(Health):
    """The push client's health (state, failures, last error) and its counters."""

    def __init__(self, what: str):
        super().__init__(what, logger=log)
        self.requests = 0
        self.rewinds = 0
        self.narrowed = 0
        self.set_aside = 0
        self.sent_envelopes = 0
        self.sent_samples = 0
        self.cursors: dict[str, int] = {}


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
        self.stats = PushStats(f"uplink push to {peer.base}")
        self.pos = {lane: source.position(lane) for lane in LANES}
        # what the last push that got no answer carried: (lane, after, items). A retry of
        # the same position sends the same sealed envelopes again instead of sealing anew
        # (central stores by sequence, so a copy that did arrive is a duplicate it ignores)
        self._unanswered: tuple[str, int, list[Item]] | None = None
        #: sees each push answer (central names its newest config for us there)
        self.on_answer: Callable[[dict[str, Any]], None] | None = None

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
            try:
                r = await self.peer.request("POST", "/sync/v1/push", params, body)
            except PeerRefused as e:
                self._unanswered = None
                await self._refused(lane, items, e)
                return True
            self._unanswered = None
            self.stats.requests += 1
            self.link.envelopes += len(items)
            cursors = _cursors(r)
            self.stats.cursors = cursors
            if self.on_answer is not None:
                self.on_answer(r.json())
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
                await self.backoff.sleep()
                return True
            self.stats.sent_envelopes += len(items)
            sent = sum(i.samples for i in items)
            self.stats.sent_samples += sent
            self.link.samples += sent
            return True
        return False

    async def _refused(self, lane: str, items: list[Item], e: PeerRefused) -> None:
        """Central refused an envelope for good: take its cursors, then narrow the envelope
        after them (half its records) or, when it held one record, set that record aside."""
        if not isinstance(self.source, SetsAside):
            raise e  # an outbox cannot re-seal: retry like any failure
        cursors = _cursors(e.doc)
        for ln in LANES:
            self.pos[ln] = cursors.get(ln, self.pos[ln])
            await self.source.ack(ln, self.pos[ln])
        bad = next((it for it in items if it.seq > self.pos[lane]), None)
        if bad is None:
            return
        if bad.records > 1:
            self.stats.narrowed += 1
            self.source.narrow(lane, self._after(lane), bad.records // 2)
        else:
            self.stats.set_aside += 1
            await self.source.set_aside(lane, bad.seq, str(e.doc.get("reason") or e))

    async def run(self) -> None:
        while True:
            try:
                sent = await self.push_once()
            except NET_ERRORS as e:
                self.stats.failed(e)
                await self.backoff.sleep()
                continue
            self.stats.succeeded()
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
                await self.backoff.sleep()




def _cursors(answer: httpx.Response | dict[str, Any]) -> dict[str, int]:
    """Central's cursors from a push answer (or a refusal's document)."""
    try:
        doc = answer.json() if isinstance(answer, httpx.Response) else answer
        return {k: int(v) for k, v in doc["cursors"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise PeerError(f"push answer without cursors: {e}") from None


async def call_with_retry(fn: Callable[[], Awaitable[Any]], *, attempts: int = 3) -> Any:
    """Retry a network call a few times with backoff (tests, CLI tools)."""
    b = Backoff(0.1, 2.0)
    for i in range(attempts):
        try:
            return await fn()
        except NET_ERRORS:
            if i == attempts - 1:
                raise
            await b.sleep()
    return None
