"""Alarms over MQTT: a journal consumer that publishes alarm events with QoS 1.

Topics under the prefix (default ``safegw/<site>/<gateway>``):

- ``alarms/<channel>``: every alarm transition (JSON, QoS 1, in journal order). The
  consumer's cursor advances only once the broker's PUBACK for every earlier event has
  come back, so alarms raised while the broker is down are delivered, in order, when
  it is back; after a gateway restart the unacknowledged tail is sent again (consumers
  de-duplicate by the event ``id``).
- ``reminders``: reminder events from the registers (due dates), same guarantees.
- ``alarms/active`` (retained): every alarm an operator must see right now.
- ``status`` (retained): ``online``; the broker publishes ``offline`` (the last will)
  when the gateway disappears without saying goodbye.
- ``values`` (optional, ``values_every``): live values, QoS 0.
- ``cmd/ack``, ``cmd/shelve``, ``cmd/unshelve`` (subscribed): operator commands as
  JSON with the operator's name; who may publish there is the broker ACL's business
  (docs/mqtt.md). Results go to ``cmd/result``.

paho-mqtt runs its network loop in its own thread (``loop_start``); every callback is
handed to the asyncio loop with ``call_soon_threadsafe``. PUBACKs are tracked by
message id in ``on_publish``: a publish made while disconnected is queued by paho and
sent after the reconnect, but its ``MQTTMessageInfo`` never reports success.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.core.batch import quality_label
from gateway.core.config import MqttSection
from gateway.core.record import EVENT
from gateway.core.secrets import read_secret
from gateway.services import DaemonContext
from rules.commands import CommandPolicy, apply_command, parse_command

log = logging.getLogger(__name__)

CONSUMER = "mqtt"
WINDOW = 1000  # events published and not yet acknowledged, at most
PUBLISHED_TYPES = ("alarm", "reminder")


@dataclass(slots=True)
class _Pending:
    seq: int
    mid: int | None  # None: nothing to wait for (an event not published, or the horizon)
    done: bool


def topic_prefix(ctx: DaemonContext, section: MqttSection) -> str:
    return (section.topic_prefix or f"safegw/{ctx.cfg.gateway.site}/{ctx.cfg.gateway.id}").rstrip("/")


class MqttService:
    name = "mqtt"

    def __init__(self, ctx: DaemonContext, section: MqttSection):
        self.ctx = ctx
        self.section = section
        self.prefix = topic_prefix(ctx, section)
        self.client_id = section.client_id or f"safegw-{ctx.cfg.gateway.id}"
        self.connected = False
        self.policy = CommandPolicy(max_shelve_s=ctx.cfg.alarms.max_shelve)
        self.published = 0
        self.acked = 0
        self.commands = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: deque[_Pending] = deque()
        self._by_mid: dict[int, _Pending] = {}
        self._read_after = 0
        self._acked_seq = 0
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._active_dirty = True
        self._stopping = False
        self._client = self._make_client()

    # ------------------------------------------------------------------ client
    def _make_client(self) -> paho.Client:
        s = self.section
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True,
                        protocol=paho.MQTTv311)
        if s.username is not None:
            password = s.password
            if s.password_file is not None:
                # relative to the config file's folder; refused when others may read it
                password = read_secret(s.password_file, self.ctx.cfg.base_dir)
            c.username_pw_set(s.username, password)
        if s.tls is not None:
            t = s.tls
            c.tls_set(ca_certs=str(t.ca) if t.ca else None, certfile=str(t.cert) if t.cert else None,
                      keyfile=str(t.key) if t.key else None,
                      cert_reqs=ssl.CERT_REQUIRED if t.verify else ssl.CERT_NONE)
            if not t.verify:
                c.tls_insecure_set(True)
        c.will_set(f"{self.prefix}/status", "offline", qos=1, retain=True)
        c.max_inflight_messages_set(s.max_inflight)
        c.max_queued_messages_set(0)  # unbounded in paho; WINDOW bounds what we hand it
        c.reconnect_delay_set(min_delay=1, max_delay=5)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        return c

    def _call(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn, *args)

    # paho thread ------------------------------------------------------------
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self._call(self._connect_failed, str(rc))
            return
        client.publish(f"{self.prefix}/status", "online", qos=1, retain=True)
        if self.section.commands:
            client.subscribe([(f"{self.prefix}/cmd/{c}", 1) for c in ("ack", "shelve", "unshelve")])
        self._call(self._connected)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._call(self._disconnected, str(rc))

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        self._call(self._puback, mid)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self._call(self._command, msg.topic, bytes(msg.payload))

    # asyncio thread -----------------------------------------------------------
    def _connected(self) -> None:
        if not self.connected:
            log.info("mqtt connected to %s:%d as %s", self.section.host, self.section.port, self.client_id)
        self.connected = True
        self._active_dirty = True
        self._wake.set()

    def _connect_failed(self, reason: str) -> None:
        if self.connected or not getattr(self, "_failed_logged", False):
            log.error("mqtt connection to %s:%d refused: %s", self.section.host, self.section.port, reason)
            self._failed_logged = True
        self.connected = False

    def _disconnected(self, reason: str) -> None:
        if self.connected and not self._stopping:
            log.error("mqtt disconnected from %s:%d: %s; %d alarm events await PUBACK",
                      self.section.host, self.section.port, reason, len(self._by_mid))
        self.connected = False

    def _puback(self, mid: int) -> None:
        p = self._by_mid.pop(mid, None)
        if p is None:
            return  # status, active document, values, command results
        p.done = True
        self.acked += 1
        self._wake.set()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._read_after = self._acked_seq = self.ctx.journal.register(CONSUMER)
        s = self.section
        self._client.connect_async(s.host, s.port, keepalive=max(5, int(s.keepalive)))
        self._client.loop_start()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._publish_loop(), name="mqtt-alarms")
            if self.section.values_every:
                tg.create_task(self._values_loop(self.section.values_every), name="mqtt-values")

    async def stop(self) -> None:
        self._stopping = True
        c = self._client
        if self.connected:
            info = c.publish(f"{self.prefix}/status", "offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                await asyncio.to_thread(info.wait_for_publish, 2.0)
        c.disconnect()
        await asyncio.to_thread(c.loop_stop)
        await self._advance()

    async def drain(self) -> None:
        """Deliver what is journaled now (bounded by the caller's timeout)."""
        target = self.ctx.journal.last_seq
        while self._acked_seq < target and self.connected:
            self._wake.set()
            self._progress.clear()
            # woken by the cursor moving; the timeout only re-checks the connection
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), 1.0)

    # ------------------------------------------------------------------ alarms
    async def _publish_loop(self) -> None:
        j = self.ctx.journal
        while True:
            await self._advance()
            if self._active_dirty and self.connected:
                self._publish_active()
            room = WINDOW - len(self._by_mid)
            if room > 0:
                horizon = j.last_seq
                recs = await j.read(self._read_after, min(room, 500), kinds=(EVENT,))
                for rec in recs:
                    self._take(rec.seq, rec.event())
                if len(recs) < min(room, 500) and horizon > self._read_after:
                    # every event up to the horizon has been read: the cursor may pass
                    # the sample records in between once the events before are acked
                    self._pending.append(_Pending(horizon, None, True))
                    self._read_after = horizon
                if recs:
                    await self._advance()
                    continue
            self._wake.clear()
            waiter = asyncio.ensure_future(j.wait(self._read_after, timeout=1.0))
            woke = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({waiter, woke}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for f in (waiter, woke):
                    f.cancel()
                await asyncio.gather(waiter, woke, return_exceptions=True)

    def _take(self, seq: int, ev: dict[str, Any]) -> None:
        self._read_after = seq
        kind = ev.get("type")
        if kind not in PUBLISHED_TYPES:
            self._pending.append(_Pending(seq, None, True))
            return
        if kind == "alarm":
            topic = f"{self.prefix}/alarms/{ev.get('channel') or 'gateway'}"
            self._active_dirty = True
        else:
            topic = f"{self.prefix}/reminders"
        doc = dict(ev)
        doc.setdefault("gateway", self.ctx.cfg.gateway.id)
        doc["seq"] = seq
        payload = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
        info = self._client.publish(topic, payload, qos=self.section.qos)
        self.published += 1
        if self.section.qos == 0:
            self._pending.append(_Pending(seq, None, True))
            return
        p = _Pending(seq, info.mid, False)
        self._pending.append(p)
        self._by_mid[info.mid] = p

    async def _advance(self) -> None:
        upto = self._acked_seq
        while self._pending and self._pending[0].done:
            upto = self._pending.popleft().seq
        if upto > self._acked_seq:
            self._acked_seq = upto
            await self.ctx.journal.ack(CONSUMER, upto)
            self._progress.set()

    def _publish_active(self) -> None:
        self._active_dirty = False
        doc = {"gateway": self.ctx.cfg.gateway.id, "ts": self.ctx.clock(), "alarms": self.ctx.rules.active()}
        payload = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
        self._client.publish(f"{self.prefix}/alarms/active", payload, qos=1, retain=True)

    # ------------------------------------------------------------------ values
    async def _values_loop(self, every: float) -> None:
        names = self.ctx.table.names()
        live = self.ctx.live
        while True:
            await asyncio.sleep(every)
            if not self.connected:
                continue
            vals = live.value
            qual = live.quality
            doc = {
                "gateway": self.ctx.cfg.gateway.id,
                "ts": self.ctx.clock(),
                "values": {n: [None if np.isnan(vals[i]) else float(vals[i]), quality_label(int(qual[i])),
                               int(live.ts[i])] for i, n in enumerate(names)},
            }
            self._client.publish(f"{self.prefix}/values", json.dumps(doc, separators=(",", ":")), qos=0)

    # ------------------------------------------------------------------ commands
    def _command(self, topic: str, payload: bytes) -> None:
        verb = topic.rsplit("/", 1)[-1]
        req: Any = {}
        try:
            req = json.loads(payload or b"{}")
            cmd = parse_command(verb, req, self.policy)
            events = apply_command(self.ctx.rules, cmd, self.ctx.clock())
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            log.warning("mqtt command %s refused: %s", verb, msg)
            self._result(req if isinstance(req, dict) else {}, verb, ok=False, error=str(msg))
            return
        who = cmd.operator
        self.commands += 1
        self.ctx.emit_events(events)
        self._active_dirty = True
        self._wake.set()
        log.info("mqtt command %s by %s: %d event(s)", verb, who, len(events))
        self._result(req, verb, ok=True, events=[e["id"] for e in events])

    def _result(self, req: dict[str, Any], verb: str, **kw: Any) -> None:
        doc = {"command": verb, "request_id": req.get("request_id"), "ts": self.ctx.clock(), **kw}
        self._client.publish(f"{self.prefix}/cmd/result", json.dumps(doc), qos=1)

    def stats(self) -> dict[str, Any]:
        return {"connected": self.connected, "published": self.published, "acked": self.acked,
                "awaiting_puback": len(self._by_mid), "cursor": self._acked_seq, "commands": self.commands,
                "prefix": self.prefix}


def build_service(ctx: DaemonContext, section: MqttSection) -> MqttService:
    return MqttService(ctx, section)
