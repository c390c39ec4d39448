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
  (docs/mqtt.md). Every payload gets a result on ``cmd/result``: a payload over
  ``MAX_COMMAND_BYTES`` is refused unparsed, ``request_id`` is echoed only as text of at
  most ``MAX_REQUEST_ID`` characters, and log lines quote a payload's strings clipped.

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
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.consumer import AckWindow, Health, JournalConsumer, Slot
from gateway.core.batch import quality_label
from gateway.core.config import MqttSection
from gateway.core.display import DisplayTable
from gateway.core.record import EVENT
from gateway.core.secrets import read_secret
from gateway.services import DaemonContext
from rules.commands import CommandPolicy, apply_command, parse_command

log = logging.getLogger(__name__)

CONSUMER = "mqtt"
WINDOW = 1000  # events published and not yet acknowledged, at most
PUBLISHED_TYPES = ("alarm", "reminder")
#: the largest command payload parsed: the longest valid command (1,000-character reason
#: and comment, escaped) is a few KiB
MAX_COMMAND_BYTES = 16 * 1024
#: the longest ``request_id`` echoed in a command's result
MAX_REQUEST_ID = 128
#: how much of a string from a payload a log line or a result's error quotes
MAX_QUOTE = 200


def _clip(text: str, n: int = MAX_QUOTE) -> str:
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} characters)"


def topic_prefix(ctx: DaemonContext, section: MqttSection) -> str:
    return (section.topic_prefix or f"safegw/{ctx.cfg.gateway.site}/{ctx.cfg.gateway.id}").rstrip("/")


class MqttService:
    name = "mqtt"

    def __init__(self, ctx: DaemonContext, section: MqttSection):
        self.ctx = ctx
        self.section = section
        self.prefix = topic_prefix(ctx, section)
        self.client_id = section.client_id or f"safegw-{ctx.cfg.gateway.id}"
        # the cursor follows the PUBACKs in journal order, whatever order they come in
        self.consumer = JournalConsumer(ctx.journal, CONSUMER, kinds=(EVENT,), max_records=500)
        self.health = Health(f"mqtt connection to {section.host}:{section.port} as {self.client_id}",
                             logger=log)
        self.policy = CommandPolicy(max_shelve_s=ctx.cfg.alarms.max_shelve)
        self.published = 0
        self.acked = 0
        self.commands = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._window = AckWindow()
        self._by_mid: dict[int, Slot] = {}  # publishes awaiting their PUBACK
        self._read_after = 0
        self._wake = asyncio.Event()
        self._active_dirty = True
        self._stopping = False
        self._client = self._make_client()
        self.display = DisplayTable.of(ctx.table)

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
        # what the loop needs to refuse an oversized payload is its size: a byte more than
        # the limit, not a copy of all of it
        self._call(self._command, msg.topic, bytes(msg.payload[:MAX_COMMAND_BYTES + 1]), len(msg.payload))

    # asyncio thread -----------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.health.ok

    def _connected(self) -> None:
        self.health.succeeded()
        self._active_dirty = True
        self._wake.set()

    def _connect_failed(self, reason: str) -> None:
        self.health.failed(f"refused: {reason}")

    def _disconnected(self, reason: str) -> None:
        if self._stopping:
            self.health.state = "stopped"  # we said goodbye: not a failure
            return
        self.health.failed(f"disconnected: {reason}; {len(self._by_mid)} alarm events await PUBACK")

    def _puback(self, mid: int) -> None:
        slot = self._by_mid.pop(mid, None)
        if slot is None:
            return  # status, active document, values, command results
        slot.done = True
        self.acked += 1
        self._wake.set()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._read_after = self.consumer.register()
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
        while self.consumer.cursor < target and self.connected:
            self._wake.set()
            # returns when the cursor gets there; the timeout only re-checks the connection
            await self.consumer.drain(1.0, target=target)

    # ------------------------------------------------------------------ alarms
    async def _publish_loop(self) -> None:
        while True:
            await self._advance()
            if self._active_dirty and self.connected:
                self._publish_active()
            room = WINDOW - len(self._by_mid)
            if room > 0:
                horizon = self.ctx.journal.last_seq
                recs = await self.consumer.read(self._read_after, max_records=min(room, 500))
                for rec in recs:
                    self._take(rec.seq, rec.event())
                if len(recs) < min(room, 500) and horizon > self._read_after:
                    # every event up to the horizon has been read: the cursor may pass
                    # the sample records in between once the events before are acked
                    self._window.add(horizon, done=True)
                    self._read_after = horizon
                if recs:
                    await self._advance()
                    continue
            self._wake.clear()
            await self.consumer.wait(self._read_after, 1.0, wake=self._wake)

    def _take(self, seq: int, ev: dict[str, Any]) -> None:
        self._read_after = seq
        kind = ev.get("type")
        if kind not in PUBLISHED_TYPES:
            self._window.add(seq, done=True)  # nothing to wait for
            return
        if kind == "alarm":
            topic = f"{self.prefix}/alarms/{ev.get('channel') or 'gateway'}"
            self._active_dirty = True
        else:
            topic = f"{self.prefix}/reminders"
        # people read these: numbers as the channel shows them (the journal keeps them exact)
        doc = self.display.event(ev) if kind == "alarm" else dict(ev)
        doc.setdefault("gateway", self.ctx.cfg.gateway.id)
        doc["seq"] = seq
        payload = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
        info = self._client.publish(topic, payload, qos=self.section.qos)
        self.published += 1
        if self.section.qos == 0:
            self._window.add(seq, done=True)
            return
        self._by_mid[info.mid] = self._window.add(seq)

    async def _advance(self) -> None:
        upto = self._window.advance()
        if upto is not None:
            await self.consumer.ack(upto)

    def _publish_active(self) -> None:
        self._active_dirty = False
        alarms = [self.display.event(a) for a in self.ctx.rules.active()]
        doc = {"gateway": self.ctx.cfg.gateway.id, "ts": self.ctx.clock(), "alarms": alarms}
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
            vals = self.display.values(np.arange(len(names)), live.value)
            qual = live.quality
            doc = {
                "gateway": self.ctx.cfg.gateway.id,
                "ts": self.ctx.clock(),
                "values": {n: [None if np.isnan(vals[i]) else float(vals[i]), quality_label(int(qual[i])),
                               int(live.ts[i])] for i, n in enumerate(names)},
            }
            self._client.publish(f"{self.prefix}/values", json.dumps(doc, separators=(",", ":")), qos=0)

    # ------------------------------------------------------------------ commands
    def _command(self, topic: str, payload: bytes, size: int) -> None:
        verb = topic.rsplit("/", 1)[-1]
        if size > MAX_COMMAND_BYTES:
            error = f"payload is {size} bytes; a command is at most {MAX_COMMAND_BYTES}"
            log.warning("mqtt command %s refused: %s", verb, error)
            self._result(verb, None, ok=False, error=error)
            return
        req: Any = {}
        try:
            req = json.loads(payload or b"{}")
            cmd = parse_command(verb, req, self.policy)
            events = apply_command(self.ctx.rules, cmd, self.ctx.clock())
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            msg = _clip(str(e.args[0] if isinstance(e, KeyError) and e.args else e))
            log.warning("mqtt command %s refused: %s", verb, msg)
            self._result(verb, req, ok=False, error=msg)
            return
        self.commands += 1
        self.ctx.emit_events(events)
        self._active_dirty = True
        self._wake.set()
        log.info("mqtt command %s by %s: %d event(s)", verb, _clip(cmd.operator), len(events))
        self._result(verb, req, ok=True, events=[e["id"] for e in events])

    def _result(self, verb: str, req: Any, **kw: Any) -> None:
        """Publish a command's result. It runs in a loop callback, where an exception would
        only be logged and the console would wait for an answer in vain: whatever the
        payload held, this cannot raise."""
        doc: dict[str, Any] = {"command": verb, "request_id": None, "ts": self.ctx.clock(), **kw}
        rid = req.get("request_id") if isinstance(req, dict) else None
        if isinstance(rid, str) and len(rid) <= MAX_REQUEST_ID:
            doc["request_id"] = rid
        elif rid is not None:
            doc["request_id_error"] = f"request_id must be text of at most {MAX_REQUEST_ID} characters"
        try:
            self._client.publish(f"{self.prefix}/cmd/result", json.dumps(doc), qos=1)
        except (ValueError, RuntimeError, OSError) as e:  # paho refuses a publish it cannot queue
            log.error("mqtt command %s: result not published: %s", verb, e)

    def stats(self) -> dict[str, Any]:
        return {"connected": self.connected, "published": self.published, "acked": self.acked,
                "awaiting_puback": len(self._by_mid), "cursor": self.consumer.cursor,
                "commands": self.commands, "prefix": self.prefix, "failures": self.health.failures,
                "last_error": self.health.last_error}


def build_service(ctx: DaemonContext, section: MqttSection) -> MqttService:
    return MqttService(ctx, section)
