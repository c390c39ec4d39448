"""One provincial platform fed by the template publisher over MQTT.

A journal chunk becomes messages of at most ``batch_points`` readings each: every
reading rendered through the ``item`` template, the list placed by ``${items}`` in the
``message`` template; with a cipher or a signature the message's JSON is sealed
(northbound/template/render.py) and placed as ``${data}`` (and ``${sign}``) in the
``envelope`` template. Messages are published in journal order at the configured QoS.

Delivery: the cursor ``regulator.<name>`` moves past a chunk once every message of it
is acknowledged (PUBACK at QoS 1; written to the socket at QoS 0). While the broker is
away paho keeps the unacknowledged messages and sends them again after it reconnects;
nothing later is read until they are through, so the backlog stays in the journal and
goes out in order. A crash before the cursor moved sends that chunk again (at least
once across a crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import ssl
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.consumer import Backoff, JournalConsumer
from gateway.core.aio import wait_event
from gateway.core.config_regulators import TemplateAdapter as TemplateConfig
from gateway.core.record import EVENT, SAMPLES, Record
from gateway.store.journal import Journal
from northbound.base import AdapterStats, PlatformRefused, PointMap, post_json
from northbound.memiot.adapter import quality_flag
from northbound.template.render import Sealer, compile_template, item_renderer

log = logging.getLogger(__name__)

MAX_CHUNK_SAMPLES = 200_000


def _tz(text: str) -> timezone:
    sign = -1 if text[0] == "-" else 1
    return timezone(sign * timedelta(hours=int(text[1:3]), minutes=int(text[4:6])))


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class TemplatePublisher:
    """The adapter for one platform (a ``regulators:`` entry of type template)."""

    def __init__(self, cfg: TemplateConfig, journal: Journal, points: PointMap, channel_names: list[str],
                 *, sealer: Sealer, password: str | None = None):
        self.cfg = cfg
        self.name = cfg.name
        self.journal = journal
        self.points = points
        self.channel_names = channel_names
        self.sealer = sealer
        self.password = password
        self.c = JournalConsumer(journal, f"regulator.{cfg.name}", start=cfg.start, max_records=1000,
                                 max_samples=MAX_CHUNK_SAMPLES, kinds=(SAMPLES, EVENT),
                                 what=f"regulator {cfg.name} ({self.target(cfg)})", logger=log,
                                 backoff=Backoff(0.2, cfg.http.backoff_max if cfg.http else 30.0))
        self.health = self.c.health
        self.stats_ = AdapterStats()
        self.idle = asyncio.Event()
        self.tz = _tz(cfg.utc_offset)
        self.item = item_renderer(cfg.item)
        self.message = compile_template(cfg.message)
        self.envelope = compile_template(cfg.envelope) if cfg.envelope is not None else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: paho.Client | None = None
        self._lock = threading.Lock()
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._early: set[int] = set()
        self._connected = asyncio.Event()
        self._stopping = False
        self._http: httpx.AsyncClient | None = None

    # ------------------------------------------------------------------ MQTT (paho's thread)
    def _call(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self._call(self.health.failed, f"broker refused the connection: {rc}")
            return
        self._call(self._up, True)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._call(self._up, False, str(rc))

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self._lock:
            fut = self._waiting.pop(mid, None)
            if fut is None:
                self._early.add(mid)
        if fut is not None:
            self._call(_resolve, fut)

    def _up(self, up: bool, why: str = "") -> None:
        self.stats_.connected = up
        if self._stopping:
            return
        if up:
            self.stats_.connects += 1
            self._connected.set()
            self.health.succeeded()
        else:
            self._connected.clear()
            self.health.failed(f"disconnected from the broker ({why})")

    @staticmethod
    def target(cfg: TemplateConfig) -> str:
        if cfg.http is not None and cfg.transport == "http":
            return cfg.http.url
        assert cfg.mqtt is not None
        return f"mqtt://{cfg.mqtt.host}:{cfg.mqtt.port}/{cfg.mqtt.topic}"

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.c.register()
        h = self.cfg.http
        if self.cfg.transport == "http" and h is not None:
            verify: ssl.SSLContext | bool = True
            if h.ca_file is not None:
                verify = ssl.create_default_context(cafile=str(h.ca_file))
            self._http = httpx.AsyncClient(verify=verify, timeout=h.timeout, follow_redirects=False)
            self._connected.set()
            return
        m = self.cfg.mqtt
        assert m is not None
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=m.client_id, clean_session=True,
                        protocol=paho.MQTTv311)
        if m.username is not None:
            c.username_pw_set(m.username, self.password)
        if m.tls:
            c.tls_set(ca_certs=str(m.ca_file) if m.ca_file else None, cert_reqs=ssl.CERT_REQUIRED)
        c.max_inflight_messages_set(100)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(min_delay=1, max_delay=5)
        c.on_connect, c.on_disconnect, c.on_publish = self._on_connect, self._on_disconnect, self._on_publish
        c.connect_async(m.host, m.port, keepalive=30)
        c.loop_start()
        self._client = c

    async def stop(self) -> None:
        self._stopping = True
        if self._http is not None:
            await self._http.aclose()
        c, self._client = self._client, None
        if c is not None:
            await asyncio.to_thread(c.disconnect)
            await asyncio.to_thread(c.loop_stop)

    # ------------------------------------------------------------------ building
    def build(self, records: list[Record]) -> tuple[list[bytes], int]:
        """The messages for ``records`` in journal order, and how many readings they carry."""
        cfg = self.cfg
        fields: list[dict[str, Any]] = []
        cache: dict[int, tuple[str, int]] = {}
        for r in records:
            if r.kind == EVENT:
                if r.is_gap:
                    self.stats_.gaps += 1
                continue
            slot, b = self.points.select(r.batch())
            order = np.argsort(b.ts, kind="stable")
            for i in order.tolist():
                s = int(slot[i])
                ts = int(b.ts[i])
                sec = ts // 1_000_000_000
                t = cache.get(sec)
                if t is None:
                    t = cache[sec] = (datetime.fromtimestamp(sec, self.tz).strftime(cfg.time_format), sec)
                v = float(b.value[i])
                flag = quality_flag(int(b.quality[i]))
                fields.append({"code": self.points.codes[s],
                               "value": round(v, self.points.decimals[s]) if math.isfinite(v) else None,
                               "time": t[0], "ts_ms": ts // 1_000_000, "flag": flag,
                               "valid": 1 if flag == "N" else 0,
                               "quality": int(b.quality[i]), "channel": self.channel_names[int(b.channel[i])],
                               "enterprise": cfg.enterprise_code, "hazard": cfg.hazard_code})
        out: list[bytes] = []
        for k in range(0, len(fields), cfg.batch_points):
            out.append(self.render([self.item(f) for f in fields[k:k + cfg.batch_points]]))
        return out, len(fields)

    def render(self, items: list[dict[str, Any]]) -> bytes:
        now = time.time()
        common = {"enterprise": self.cfg.enterprise_code, "hazard": self.cfg.hazard_code,
                  "now": datetime.fromtimestamp(now, self.tz).strftime(self.cfg.time_format),
                  "now_ms": int(now * 1000), "msg_id": uuid.uuid4().hex}
        msg = self.message({**common, "items": items, "count": len(items)})
        text = json.dumps(msg, ensure_ascii=False, separators=(",", ":")).encode()
        if self.envelope is None:
            return text
        data = self.sealer.data(text)
        env = self.envelope({**common, "data": data, "sign": self.sealer.sign(data)})
        return json.dumps(env, ensure_ascii=False, separators=(",", ":")).encode()

    # ------------------------------------------------------------------ sending
    def _publish(self, payload: bytes) -> asyncio.Future[None]:
        assert self._client is not None and self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        m = self.cfg.mqtt
        assert m is not None
        # not under self._lock: paho calls on_publish (which takes self._lock) while holding
        # its own lock, which publish() needs too; holding ours across publish() deadlocked
        # the event loop against paho's thread when a PUBACK came back at that moment
        info = self._client.publish(m.topic, payload, qos=m.qos)
        with self._lock:  # a PUBACK may have come before the future was registered
            if info.mid in self._early:
                self._early.discard(info.mid)
                fut.set_result(None)
            else:
                self._waiting[info.mid] = fut
        return fut

    async def run(self) -> None:
        while True:
            end = self.journal.last_seq
            records = await self.c.read()
            if not records:
                if end > self.c.cursor:
                    await self.c.ack(end, records=0)
                self.idle.set()
                await self.c.wait(after=max(end, self.c.cursor))
                continue
            self.idle.clear()
            msgs, npoints = self.build(records)
            if self._http is not None:
                for m in msgs:
                    await self._post_until_accepted(m)
                self.stats_.points_sent += npoints
                await self.c.ack(records[-1].seq, records=len(records))
                continue
            while not self._connected.is_set():
                await wait_event(self._connected, None)
            futs = [self._publish(m) for m in msgs]
            pending = set(futs)
            while pending:
                _, pending = await asyncio.wait(pending, timeout=self.cfg.ack_timeout)
                if pending:
                    self.health.failed(f"{len(pending)} message(s) not acknowledged after "
                                       f"{self.cfg.ack_timeout:g} s; paho sends them again on reconnect")
            self.stats_.messages_sent += len(msgs)
            self.stats_.acked += len(msgs)
            self.stats_.points_sent += npoints
            await self.c.ack(records[-1].seq, records=len(records))

    async def _post_until_accepted(self, body: bytes) -> None:
        """POST one message; retried (the same body) with backoff until the platform accepts it."""
        h = self.cfg.http
        assert h is not None and self._http is not None
        headers = {"Content-Type": "application/json", **h.headers}
        while True:
            try:
                await post_json(self._http, h.url, body, headers, h.ok_codes)
            except (OSError, TimeoutError, httpx.HTTPError, PlatformRefused) as e:
                self.stats_.connected = False
                self.stats_.resends += 1
                self.health.failed(str(e) or f"{type(e).__name__} after {h.timeout:g} s")
                await self.c.backoff.sleep()
                continue
            self.stats_.connected = True
            self.stats_.messages_sent += 1
            self.stats_.acked += 1
            self.health.succeeded()
            self.c.backoff.reset()
            return

    def stats(self) -> dict[str, Any]:
        d = self.stats_.as_dict()
        d.update(self.c.stats())
        d.update(type="template", platform=self.target(self.cfg), unmapped_channels=len(self.points.unmapped))
        return d
