"""One mem-iot platform: HTTP(S) POSTs of encrypted JSON from the journal.

Each POST carries ``{"appid": APPID, "data": HEX}`` where HEX is the lower-case hex of
SM4-CBC(key, iv, PKCS#7(JSON)) and the app secret travels in the ``secret_header``
header. The inner JSON is ``{enterprise: ..., device: ..., items: [{code, value, time,
quality}, ...]}`` under the configured field names (``MemIotFields``), at most
``batch_points`` readings per POST; a reading's quality is the HJ 212-2017 data flag
of its safegw quality (N, C, M, S, D, T, B) and a value that is not a number is null.

Delivery: a chunk of journal records becomes a list of POST bodies, built once and kept
in memory until every one is accepted. A POST is accepted on a 2xx answer whose JSON
``code`` (when it has one) is in ``ok_codes``. Anything else (a refused connection, a
timeout, a 4xx or 5xx, a platform error code such as a decryption failure after a wrong
key) is retried, the same body, with exponential backoff up to ``backoff_max``: no body
is skipped, so a wrong key or a platform outage holds the backlog in the journal and it
goes out in order once the cause is gone. The cursor ``regulator.<name>`` moves after
each accepted POST to the last record the accepted bodies cover completely, never past
a record with a reading not yet accepted. After a crash between an accepted POST and
the cursor's move, that one POST is sent again (at least once across a crash; exactly
once otherwise).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import numpy as np

from gateway.consumer import Backoff, JournalConsumer
from gateway.core.batch import Quality
from gateway.core.config_regulators import MemIotAdapter as MemIotConfig
from gateway.core.gmcrypto import sm4_cbc_encrypt
from gateway.core.record import EVENT, SAMPLES, Record
from gateway.store.journal import Journal
from northbound.base import AdapterStats, PlatformRefused, PointMap, post_json
from northbound.hj212.uploads import FLAG_OF_QUALITY

log = logging.getLogger(__name__)

#: samples one journal chunk holds at most
MAX_CHUNK_SAMPLES = 200_000


def quality_flag(q: int) -> str:
    """The HJ 212-2017 data flag of a safegw quality byte (unknown codes: by class)."""
    f = FLAG_OF_QUALITY.get(q)
    if f is not None:
        return f
    return "D" if q >= Quality.BAD else "N"


def parse_offset(text: str) -> timezone:
    sign = -1 if text[0] == "-" else 1
    h, m = int(text[1:3]), int(text[4:6])
    return timezone(sign * timedelta(hours=h, minutes=m))


def hex_bytes(text: str, what: str) -> bytes:
    """16 bytes given as 32 hex digits (how platforms issue SM4 keys and IVs)."""
    t = text.strip()
    try:
        raw = bytes.fromhex(t)
    except ValueError:
        raise ValueError(f"{what}: not hex digits") from None
    if len(raw) != 16:
        raise ValueError(f"{what}: {len(raw)} bytes, SM4 needs 16 (32 hex digits)")
    return raw


class _Body:
    __slots__ = ("body", "points", "upto")

    def __init__(self, body: bytes, points: int, upto: int | None):
        self.body, self.points, self.upto = body, points, upto


class MemIotPlatform:
    """The adapter for one platform (a ``regulators:`` entry of type mem-iot)."""

    errors = (OSError, asyncio.TimeoutError, httpx.HTTPError, PlatformRefused)

    def __init__(self, cfg: MemIotConfig, journal: Journal, points: PointMap, *, secret: str, key: bytes,
                 iv: bytes, verify: ssl.SSLContext | bool = True):
        self.c = JournalConsumer(journal, f"regulator.{cfg.name}", start=cfg.start, max_records=1000,
                                 max_samples=MAX_CHUNK_SAMPLES, kinds=(SAMPLES, EVENT),
                                 what=f"regulator {cfg.name} ({cfg.url})", logger=log,
                                 backoff=Backoff(0.2, cfg.backoff_max))
        self.name = cfg.name
        self.journal = journal
        self.health = self.c.health
        self.backoff = self.c.backoff
        self.cfg = cfg
        self.points = points
        self.secret, self.key, self.iv = secret, key, iv
        self.verify = verify
        self.tz = parse_offset(cfg.utc_offset)
        self.stats_ = AdapterStats()
        self.idle = asyncio.Event()
        self.client: httpx.AsyncClient | None = None
        self._stop = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.c.register()
        self.client = httpx.AsyncClient(verify=self.verify, timeout=self.cfg.timeout, follow_redirects=False)

    async def stop(self) -> None:
        self._stop.set()
        if self.client is not None:
            await self.client.aclose()

    # ------------------------------------------------------------------ building
    def _time(self, ts_ns: int, cache: dict[int, str]) -> str:
        s = ts_ns // 1_000_000_000
        t = cache.get(s)
        if t is None:
            t = cache[s] = datetime.fromtimestamp(s, self.tz).strftime(self.cfg.time_format)
        return t

    def build(self, records: list[Record]) -> list[_Body]:
        """The POST bodies for ``records``, in journal order; each names the last record
        it completes (``upto``), where the cursor may move once it and all before it
        are accepted."""
        f = self.cfg.fields
        items: list[tuple[dict[str, Any], int | None]] = []
        cache: dict[int, str] = {}
        for r in records:
            if r.kind == EVENT:
                if r.is_gap:
                    self.stats_.gaps += 1
                items.append(({}, r.seq))
                continue
            slot, b = self.points.select(r.batch())
            order = np.argsort(b.ts, kind="stable")
            n = len(order)
            for k, i in enumerate(order.tolist()):
                v = float(b.value[i])
                s = int(slot[i])
                item = {f.code: self.points.codes[s],
                        f.value: round(v, self.points.decimals[s]) if math.isfinite(v) else None,
                        f.time: self._time(int(b.ts[i]), cache),
                        f.quality: quality_flag(int(b.quality[i]))}
                items.append((item, r.seq if k == n - 1 else None))
            if n == 0:
                items.append(({}, r.seq))
        bodies: list[_Body] = []
        cur: list[dict[str, Any]] = []
        upto: int | None = None
        for item, seq in items:
            if item:
                cur.append(item)
            if seq is not None:
                upto = seq
            if len(cur) >= self.cfg.batch_points:
                bodies.append(self._body(cur, upto))
                cur, upto = [], None
        if cur or upto is not None:
            bodies.append(self._body(cur, upto))
        return bodies

    def _body(self, items: list[dict[str, Any]], upto: int | None) -> _Body:
        if not items:
            return _Body(b"", 0, upto)  # nothing to send: only moves the cursor
        f = self.cfg.fields
        inner: dict[str, Any] = {f.enterprise: self.cfg.enterprise_code}
        if f.device and self.cfg.device_code:
            inner[f.device] = self.cfg.device_code
        inner[f.items] = items
        plain = json.dumps(inner, ensure_ascii=False, separators=(",", ":")).encode()
        data = sm4_cbc_encrypt(self.key, self.iv, plain).hex()
        body = json.dumps({"appid": self.cfg.appid, "data": data}, separators=(",", ":")).encode()
        return _Body(body, len(items), upto)

    # ------------------------------------------------------------------ sending
    async def post(self, body: bytes) -> None:
        """One POST; returns once the platform accepted it, else raises."""
        assert self.client is not None
        headers = {"Content-Type": "application/json", self.cfg.secret_header: self.secret}
        await post_json(self.client, self.cfg.url, body, headers, self.cfg.ok_codes)

    async def run(self) -> None:
        while not self._stop.is_set():
            end = self.journal.last_seq
            records = await self.c.read()
            if not records:
                if end > self.c.cursor:
                    await self.c.ack(end, records=0)
                self.idle.set()
                await self.c.wait(after=max(end, self.c.cursor))
                continue
            self.idle.clear()
            for out in self.build(records):
                while out.points:
                    try:
                        await self.post(out.body)
                    except self.errors as e:
                        self.stats_.connected = False
                        self.stats_.resends += 1
                        why = str(e) or f"{type(e).__name__} after {self.cfg.timeout:g} s"
                        self.health.failed(why)
                        await self.backoff.sleep()
                        continue
                    if not self.stats_.connected:
                        self.stats_.connects += 1
                    self.stats_.connected = True
                    self.stats_.messages_sent += 1
                    self.stats_.points_sent += out.points
                    self.stats_.acked += 1
                    self.health.succeeded()
                    self.backoff.reset()
                    break
                if out.upto is not None:
                    await self.c.ack(out.upto)

    def stats(self) -> dict[str, Any]:
        d = self.stats_.as_dict()
        d.update(self.c.stats())
        d.update(type="mem-iot", platform=self.cfg.url, unmapped_channels=len(self.points.unmapped))
        return d
