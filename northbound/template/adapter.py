"""One provincial platform fed by the template publisher, over MQTT (TLS) or HTTP(S).

What goes out (built in northbound/template/messages.py, each kind through its own
template, sealed by northbound/template/render.py into the ``envelope``, to its own
topic or URL): the base data first (enterprise, hazard sources, point list: only the
kinds whose hash differs from the last acknowledged one), then the journal's readings
(``mode: batch``, at most ``batch_points`` a message; or ``mode: interval``, a snapshot
of each point's latest value every ``interval`` of the data's time) with the alarm
messages between them in journal order, and heartbeats on the side.

Delivery: the cursor ``regulator.<name>`` moves past a chunk once every message of it
is acknowledged (PUBACK at QoS 1; written to the socket at QoS 0; an HTTP answer the
platform accepts). While the broker is away paho keeps the unacknowledged messages and
sends them again after it reconnects; nothing later is read until they are through, so
the backlog stays in the journal and goes out in order. A crash before the cursor moved
sends that chunk again (at least once across a crash). In interval mode the cursor stays
before the open window; the state file ``STATE_DIR/regulators/NAME.template.json`` (0600)
says which windows and alarms went out, and holds the base-data hashes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.consumer import Backoff, JournalConsumer
from gateway.core.aio import wait_event
from gateway.core.channels import ChannelInfo, ChannelTable
from gateway.core.config_regulators import TemplateAdapter as TemplateConfig
from gateway.core.config_regulators import TemplateRoute
from gateway.core.record import EVENT, SAMPLES, Record
from gateway.store.journal import Journal
from northbound.base import AdapterStats, PlatformRefused, PointMap, post_json
from northbound.template.messages import Messages, Out, Window
from northbound.template.render import Sealer, compile_template, item_renderer

log = logging.getLogger(__name__)

MAX_CHUNK_SAMPLES = 200_000
#: the state file holds hashes, two counters and one latest value a point: far below this
MAX_STATE = 8 * 1024 * 1024


def _tz(text: str) -> timezone:
    sign = -1 if text[0] == "-" else 1
    return timezone(sign * timedelta(hours=int(text[1:3]), minutes=int(text[4:6])))


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class TemplatePublisher:
    """The adapter for one platform (a ``regulators:`` entry of type template)."""

    def __init__(self, cfg: TemplateConfig, journal: Journal, points: PointMap, channel_names: list[str],
                 *, sealer: Sealer, password: str | None = None, table: ChannelTable | None = None,
                 state_dir: Path | None = None, gateway_id: str = "",
                 limits: dict[str, dict[str, float]] | None = None):
        self.cfg = cfg
        self.name = cfg.name
        self.journal = journal
        self.points = points
        self.channel_names = channel_names
        self.sealer = sealer
        self.password = password
        self.gateway_id = gateway_id
        self.c = JournalConsumer(journal, f"regulator.{cfg.name}", start=cfg.start, max_records=1000,
                                 max_samples=MAX_CHUNK_SAMPLES, kinds=(SAMPLES, EVENT),
                                 what=f"regulator {cfg.name} ({self.target(cfg)})", logger=log,
                                 backoff=Backoff(0.2, cfg.http.backoff_max if cfg.http else 30.0))
        self.health = self.c.health
        self.stats_ = AdapterStats()
        self.idle = asyncio.Event()
        self.tz = _tz(cfg.utc_offset)
        self.item = item_renderer(cfg.item)
        self.envelope = compile_template(cfg.envelope) if cfg.envelope is not None else None
        b = cfg.base
        self._routes: dict[str, TemplateRoute | None] = {
            "alarm": cfg.alarms, "heartbeat": cfg.heartbeat, "base.enterprise": b.enterprise,
            "base.hazard_sources": b.hazard_sources, "base.points": b.points}
        tpls = {"data": cfg.message, "snapshot": cfg.message,
                "alarm": cfg.alarms.message if cfg.alarms else None,
                "heartbeat": cfg.heartbeat.message if cfg.heartbeat else None,
                "base.enterprise": b.enterprise.message if b.enterprise else None,
                "base.hazard_sources": b.hazard_sources.message if b.hazard_sources else None,
                "base.points": b.points.message if b.points else None}
        self._templates = {k: compile_template(t) for k, t in tpls.items() if t is not None}
        channels = table.channels if table is not None else [
            ChannelInfo(i, n, "", "", "", None) for i, n in enumerate(channel_names)]  # type: ignore[arg-type]
        self.msgs = Messages(cfg, points, channels, self.tz, self.route, limits)
        self.state_path = state_dir / "regulators" / f"{cfg.name}.template.json" if state_dir else None
        state = self._load_state()
        self._base_sent: dict[str, str] = {}
        try:
            self._base_sent = {str(k): str(v) for k, v in (state.get("base") or {}).items()}
            self.msgs.load_window(state)
        except (ValueError, TypeError, AttributeError) as e:
            log.error("%s: state file %s not understood (%s): base data is sent again and interval "
                      "snapshots start from the journal's cursor", self.name, self.state_path, e)
            self._base_sent, self.msgs.window = {}, Window()
        self._headers = {"Content-Type": "application/json", **(cfg.http.headers if cfg.http else {})}
        self._t0 = time.monotonic()
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
    def route(self, kind: str) -> str:
        """The topic (MQTT) or URL (HTTP) of a kind of message."""
        r = self._routes.get(kind)
        if self.cfg.transport == "http":
            assert self.cfg.http is not None
            return (r.url if r is not None else None) or self.cfg.http.url
        assert self.cfg.mqtt is not None
        return (r.topic if r is not None else None) or self.cfg.mqtt.topic

    def build(self, records: list[Record]) -> tuple[list[bytes], int]:
        """The messages for ``records`` in journal order, and how many readings they carry."""
        outs, npoints, gaps = self.msgs.batch(records)
        self.stats_.gaps += gaps
        return [self.body(o) for o in outs], npoints

    def render(self, items: list[dict[str, Any]]) -> bytes:
        """A data message of already rendered readings (the benchmark's reference)."""
        return self.body(Out("data", self.route("data"), {"items": items, "count": len(items)}))

    def body(self, out: Out) -> bytes:
        """The message's bytes: its template over its fields, sealed in the envelope."""
        now = time.time()
        common = {"enterprise": self.cfg.enterprise_code, "hazard": self.cfg.hazard_code,
                  "now": datetime.fromtimestamp(now, self.tz).strftime(self.cfg.time_format),
                  "now_ms": int(now * 1000), "msg_id": uuid.uuid4().hex, "gateway": self.gateway_id}
        msg = self._templates[out.kind]({**common, **out.fields})
        text = json.dumps(msg, ensure_ascii=False, separators=(",", ":")).encode()
        if self.envelope is None:
            return text
        data = self.sealer.data(text)
        env = self.envelope({**common, "data": data, "sign": self.sealer.sign(data)})
        return json.dumps(env, ensure_ascii=False, separators=(",", ":")).encode()

    # ------------------------------------------------------------------ state file
    def _load_state(self) -> dict[str, Any]:
        if self.state_path is None:
            return {}
        try:
            if self.state_path.stat().st_size > MAX_STATE:
                raise ValueError(f"larger than {MAX_STATE} bytes")
            doc = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.error("%s: state file %s unreadable (%s): base data is sent again",
                      self.name, self.state_path, e)
            return {}
        return doc if isinstance(doc, dict) else {}

    def _save_state(self) -> None:
        if self.state_path is None:
            return
        doc = {"base": self._base_sent, **self.msgs.window_state()}
        self.state_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.state_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)

    # ------------------------------------------------------------------ sending
    def _publish(self, payload: bytes, topic: str | None = None) -> asyncio.Future[None]:
        assert self._client is not None and self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        m = self.cfg.mqtt
        assert m is not None
        # not under self._lock: paho calls on_publish (which takes self._lock) while holding
        # its own lock, which publish() needs too; holding ours across publish() deadlocked
        # the event loop against paho's thread when a PUBACK came back at that moment
        info = self._client.publish(topic or m.topic, payload, qos=m.qos)
        with self._lock:  # a PUBACK may have come before the future was registered
            if info.mid in self._early:
                self._early.discard(info.mid)
                fut.set_result(None)
            else:
                self._waiting[info.mid] = fut
        return fut

    async def send(self, outs: list[Out]) -> None:
        """Deliver ``outs`` in order; returns once every one is acknowledged."""
        if not outs:
            return
        if self._http is not None:
            for o in outs:
                await self._post_until_accepted(self.body(o), o.route)
            return
        while not self._connected.is_set():
            await wait_event(self._connected, None)
        pending = {self._publish(self.body(o), o.route) for o in outs}
        while pending:
            _, pending = await asyncio.wait(pending, timeout=self.cfg.ack_timeout)
            if pending:
                self.health.failed(f"{len(pending)} message(s) not acknowledged after "
                                   f"{self.cfg.ack_timeout:g} s; paho sends them again on reconnect")
        self.stats_.messages_sent += len(outs)
        self.stats_.acked += len(outs)

    async def send_base(self) -> int:
        """Send each base-data kind whose hash differs from the last acknowledged one;
        how many kinds were sent. Called at start; call again after the config or the
        channel table changed (a new ``Messages``)."""
        sent = 0
        for kind, (digest, outs) in self.msgs.base().items():
            if self._base_sent.get(kind) == digest:
                continue
            await self.send(outs)
            self._base_sent[kind] = digest
            await asyncio.to_thread(self._save_state)
            self.stats_.extra["base_sent"] = self.stats_.extra.get("base_sent", 0) + len(outs)
            log.info("%s: %s sent (%d message(s))", self.name, kind, len(outs))
            sent += 1
        return sent

    async def _heartbeats(self) -> None:
        hb = self.cfg.heartbeat
        assert hb is not None
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            due += hb.interval
            if loop.time() > due:  # late (a long stall): the next one is due from now
                due = loop.time() + hb.interval
            if self._http is None and not self._connected.is_set():
                continue  # a stale heartbeat is worth nothing: never queued
            out = Out("heartbeat", self.route("heartbeat"),
                      {"points": len(self.points), "uptime_s": int(time.monotonic() - self._t0)})
            ex = self.stats_.extra
            if self._http is not None:
                assert self.cfg.http is not None
                try:
                    await post_json(self._http, out.route, self.body(out), self._headers,
                                    self.cfg.http.ok_codes)
                except (OSError, TimeoutError, httpx.HTTPError, PlatformRefused) as e:
                    ex["heartbeat_failures"] = ex.get("heartbeat_failures", 0) + 1
                    log.debug("%s: heartbeat not taken: %s", self.name, e)
                    continue
            else:
                m = self.cfg.mqtt
                assert self._client is not None and m is not None
                self._client.publish(out.route, self.body(out), qos=0)
            ex["heartbeats"] = ex.get("heartbeats", 0) + 1

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            await self.send_base()  # the platform knows the enterprise before anything else
            if self.cfg.heartbeat is not None:
                tg.create_task(self._heartbeats(), name=f"heartbeat[{self.name}]")
            if self.cfg.mode == "interval":
                await self._run_interval()
            else:
                await self._run_batch()

    async def _run_batch(self) -> None:
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
            outs, npoints, gaps = self.msgs.batch(records)
            self.stats_.gaps += gaps
            await self.send(outs)
            self.stats_.points_sent += npoints
            if self.msgs.base_dirty:  # a register changed a major hazard source
                await self.send_base()
            await self.c.ack(records[-1].seq, records=len(records))

    async def _run_interval(self) -> None:
        """Snapshots and alarms; the cursor stays before the open window's first record,
        the state file says which windows and alarms went out (so none is sent twice)."""
        w = self.msgs.window
        read_after = self.c.cursor
        while True:
            records = await self.c.read(after=read_after)
            if not records:
                self.idle.set()
                await self.c.wait(after=read_after)
                continue
            self.idle.clear()
            outs, gaps = self.msgs.interval(records)
            self.stats_.gaps += gaps
            await self.send(outs)
            for o in outs:
                if o.kind == "snapshot":
                    w.sent_until = max(w.sent_until, o.end_ns)
                    self.stats_.points_sent += o.fields["count"]
                else:
                    w.alarms_upto = max(w.alarms_upto, o.seq)
            if self.msgs.base_dirty:  # a register changed a major hazard source
                await self.send_base()
            if outs:
                await asyncio.to_thread(self._save_state)
            read_after = records[-1].seq
            upto = read_after if w.first_seq is None else min(read_after, w.first_seq - 1)
            await self.c.ack(upto)

    async def _post_until_accepted(self, body: bytes, url: str) -> None:
        """POST one message; retried (the same body) with backoff until the platform accepts it."""
        h = self.cfg.http
        assert h is not None and self._http is not None
        while True:
            try:
                await post_json(self._http, url, body, self._headers, h.ok_codes)
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

    async def drain(self) -> None:
        """Until what the journal holds now is acknowledged (batch mode) or the adapter is
        idle (interval mode: the open window waits for newer samples). ``idle`` alone may
        still be set from before the last records came in."""
        if self.cfg.mode == "interval":
            await self.idle.wait()
        else:
            await self.c.drain(target=self.journal.last_seq)

    def stats(self) -> dict[str, Any]:
        d = self.stats_.as_dict()
        d.update(self.c.stats())
        d.update(type="template", platform=self.target(self.cfg), unmapped_channels=len(self.points.unmapped))
        return d
