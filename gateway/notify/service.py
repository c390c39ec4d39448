"""The notify service: alarms from the journal to people (docs/notify.md).

A journal consumer with its own cursor (``notify``) reads alarm events and:

- matches them against the routes (level, priority, area, hazard source, kind, channel);
- resolves the recipients *at send time*: fixed people from the config, whoever is on
  duty now (the ``duty_roster`` register), the responsible person of the alarm's hazard
  source (the ``major_hazard_source`` register);
- renders each message in the site's language for the channel's kind and puts it in
  the outbox; a sender sends it, journals every attempt (``{"type": "notify", ...}``),
  retries what is worth retrying with a doubling delay;
- escalates an alarm nobody acknowledged along its chain's steps; an acknowledgement by
  any path (API, status page, MQTT, SMS reply: all are ``ack`` events in the journal)
  stops it, as do a shelve and maintenance (suppression);
- sends "cleared" where the route asks for it;
- holds a recipient's messages in a digest during a flood (ISA-18.2: more than 10 alarms
  in 10 minutes per operator) or over the rate limit, one digest every ``digest_every``;
- never sends shelved or suppressed alarms.

State that must survive a crash (open alarms and their escalation step and due time,
the outbox, pending digests, keys already delivered) is in ``notify-state.json`` in the
state directory (mode 0600, written atomically) and saved *before* the cursor moves, so a
SIGKILL loses nothing: on restart the outbox is sent again and escalations resume where
they were. A message whose attempt was under way at the kill may be sent twice: every
channel here may do so (an HTTP POST or an SMTP DATA cut short cannot tell whether the
far end took it); the ``key`` in the webhook's JSON and the ``X-Safegw-Key`` mail header
let a receiver drop the duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import importlib
import json
import logging
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from gateway.consumer import JournalConsumer
from gateway.core.config_notify import NotifySection, RecipientSettings, Route, Step
from gateway.core.record import EVENT
from gateway.notify.base import CHANNEL_TYPES, Channel, InboundChannel, Message, Recipient, SendResult
from gateway.notify.pacing import Pacing, _rdict
from gateway.notify.recipients import Recipients
from gateway.notify.render import CHANNEL_KIND, Renderer, short_code
from gateway.notify.replies import SmsReplies
from gateway.notify.state import load_state, write_state
from gateway.services import DaemonContext

log = logging.getLogger(__name__)

CONSUMER = "notify"
STATE_FILE = "notify-state.json"
#: delivered keys remembered (a replay after a crash does not send them again)
MAX_SENT_KEYS = 5_000
#: attempts under way at once, per channel
PER_CHANNEL = 4
NS = 1_000_000_000
STOP_TRANSITIONS = {"ack", "shelve", "suppress"}


class NotifyService(Recipients, Pacing, SmsReplies):
    name = "notify"

    def __init__(
        self, ctx: DaemonContext, section: NotifySection, *, channels: dict[str, Channel] | None = None
    ):
        self.ctx = ctx
        self.s = section
        self.render = Renderer(ctx.cfg, section)
        self.consumer = JournalConsumer(
            ctx.journal, CONSUMER, start="end", kinds=(EVENT,), max_records=500, what="notify", logger=log
        )
        self.people: dict[str, RecipientSettings] = {r.name: r for r in section.recipients}
        self.routes = section.routes
        self.chains = {e.name: e for e in section.escalations}
        self.channels: dict[str, Channel] = channels if channels is not None else self._build_channels()
        self.path = Path(ctx.state_dir) / STATE_FILE
        self.state: dict[str, Any] = load_state(self.path)
        self._store: Any = None
        self._wake = asyncio.Event()
        self._save_lock = asyncio.Lock()
        self._sems = {n: asyncio.Semaphore(PER_CHANNEL) for n in self.channels}
        self._inflight: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.rounds = 0  # rounds of the timer loop (escalations and digests due)
        # who and what a message sent was about, for its delivery report (bounded; after a
        # restart the key itself says: see _meta_from_key)
        self._sent_meta: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._flood: dict[str, deque[int]] = {}
        self._rate: dict[str, deque[int]] = {}
        self.counts = {
            "sent": 0,
            "failed": 0,
            "retried": 0,
            "digests": 0,
            "escalations": 0,
            "acks_by_sms": 0,
            "sms_refused": 0,
            "suppressed": 0,
            "delivered": 0,
            "delivery_failed": 0,
        }

    # ------------------------------------------------------------------ building
    def _build_channels(self) -> dict[str, Channel]:
        out: dict[str, Channel] = {}
        for cs in self.s.channels:
            module, _, fn = CHANNEL_TYPES[cs.type].partition(":")
            try:
                mod = importlib.import_module(module)
            except ModuleNotFoundError as e:
                if e.name != module:
                    raise
                # a channel type whose module this build lacks: the others still work
                log.error("notify: channel %s (type %s) is not available in this build (%s is missing); "
                          "messages for it fail", cs.name, cs.type, module)
                continue
            out[cs.name] = getattr(mod, fn)(cs, self.ctx)
        return out

    # ------------------------------------------------------------------ state
    async def save(self) -> bool:
        """Write the state; False (logged once per failure streak) when the disk refuses."""
        async with self._save_lock:
            sent = self.state["sent"]
            if len(sent) > MAX_SENT_KEYS:
                del sent[: len(sent) - MAX_SENT_KEYS]
            text = json.dumps(self.state, ensure_ascii=False, separators=(",", ":"))
            try:
                await asyncio.to_thread(write_state, self.path, text)
            except OSError as e:
                self.consumer.health.failed(f"saving {self.path}: {e}")
                return False
            return True

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.consumer.register()
        try:
            from gateway.admin.reminders import open_store

            self._store = open_store(self.ctx, self.ctx.cfg.registers)
        except (RuntimeError, OSError) as e:
            log.error(
                "notify: the registers cannot be read (%s): on-duty and hazard-source recipients "
                "will find nobody",
                e,
            )
        for name, ch in self.channels.items():
            if isinstance(ch, InboundChannel):
                ch.set_inbound(self.on_sms)
            setter = getattr(ch, "set_delivery_handler", None)
            if setter is not None:  # the modem's SMS: the network's delivery report, later
                setter(functools.partial(self._on_delivery, name))
            await ch.start()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._read_loop(), name="notify-read")
            tg.create_task(self._timer_loop(), name="notify-timers")
            tg.create_task(self._send_loop(), name="notify-send")

    async def drain(self) -> None:
        """Process what is journaled now and send what is due (bounded by the caller)."""
        target = self.ctx.journal.last_seq
        await self.consumer.drain(None, target=target)
        while any(it["next_ns"] <= self.ctx.clock() for it in self.state["outbox"]) or self._inflight:
            self._wake.set()
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(OSError):
            await self.save()
        for ch in self.channels.values():
            with contextlib.suppress(OSError, RuntimeError):
                await ch.stop()
        if self._store is not None:
            self._store.close()

    # ------------------------------------------------------------------ reading
    async def _read_loop(self) -> None:
        while True:
            recs = await self.consumer.read()
            if not recs:
                await self.consumer.wait(timeout=5.0)
                continue
            for rec in recs:
                ev = rec.event()
                if isinstance(ev, dict) and ev.get("type") == "alarm":
                    try:
                        await self.handle(rec.seq, ev)
                    except (KeyError, TypeError, ValueError) as e:  # one odd event must not stop the stream
                        log.error("notify: alarm event %d skipped: %s", rec.seq, e)
            self._wake.set()
            # the cursor moves only once the outbox and escalations that these records asked
            # for are on disk; until then the same records are read again (handling is idempotent)
            if not await self.save():
                await self.consumer.backoff.sleep()
                continue
            self.consumer.health.succeeded()
            self.consumer.backoff.reset()
            await self.consumer.ack(recs[-1].seq, records=len(recs))

    async def handle(self, seq: int, ev: dict[str, Any]) -> None:
        tr = ev.get("transition")
        ch, rule = ev.get("channel"), ev.get("rule")
        alarms: dict[str, Any] = self.state["alarms"]
        open_codes = [c for c, a in alarms.items() if a["channel"] == ch and a["rule"] == rule]
        if tr in STOP_TRANSITIONS or ev.get("state") in ("active_acked", "suppressed"):
            for c in open_codes:
                a = alarms[c]
                a["due_ns"] = None  # escalation stops
                if tr != "ack" or ev.get("state") == "normal" or not a.get("active", True):
                    alarms.pop(c, None)
                else:
                    a["acked"] = True
            if tr == "ack":
                self._drop_unsent(open_codes)
            return
        if tr == "clear":
            for c in open_codes:
                a = alarms[c]
                a["due_ns"], a["active"] = None, False
                if a.get("cleared"):
                    await self._tell(a["told"], "cleared", ev, c, via_override=None, alarm=a)
                if ev.get("state") == "normal" or a.get("acked"):
                    alarms.pop(c, None)
            return
        # an alarm still active when its shelve ends is annunciated again (ISA-18.2): told again
        if tr not in ("raise", "escalate", "unshelve") or ev.get("state") != "active_unacked":
            return
        if ev.get("shelved") or rule == "maintenance":
            self.counts["suppressed"] += 1
            return
        code = short_code(seq)
        if code in alarms:
            return  # replayed after a crash: already handled
        routes = [r for r in self.routes if self.matches(r, ev)]
        if not routes:
            return
        for c in open_codes:  # a worse level replaces the alarm's earlier notification
            alarms.pop(c, None)
        steps: list[tuple[Route, Step]] = []
        for r in routes:
            if r.to:
                steps.append((r, Step(after=0, to=r.to, via=r.via)))
            if r.escalation:
                steps.extend((r, st) for st in self.chains[r.escalation].steps)
        steps.sort(key=lambda rs: rs[1].after)
        raised = int(ev.get("ts") or self.ctx.clock())
        a = {
            "channel": ch,
            "rule": rule,
            "seq": seq,
            "raised_ns": raised,
            "event": _slim(ev),
            "steps": [{"route": r.name, **st.model_dump(mode="json")} for r, st in steps],
            "next": 0,
            "due_ns": raised,
            "told": [],
            "cleared": any(r.cleared for r in routes),
            "acked": False,
            "active": True,
        }
        alarms[code] = a
        await self._escalate(code, a, now=self.ctx.clock())

    def matches(self, r: Route, ev: dict[str, Any]) -> bool:
        m = r.match
        ch = str(ev.get("channel") or "")
        info = self.render.channels.get(ch)
        if m.levels and ev.get("level") not in m.levels:
            return False
        if m.priorities and ev.get("priority") not in m.priorities:
            return False
        if m.kinds and ev.get("kind") not in m.kinds:
            return False
        if m.areas and (info is None or info.area not in m.areas):
            return False
        if m.hazard_sources and (info is None or info.hazard_source not in m.hazard_sources):
            return False
        return not m.channels or any(fnmatch.fnmatchcase(ch, p) for p in m.channels)

    # ------------------------------------------------------------------ escalation
    async def _escalate(self, code: str, a: dict[str, Any], *, now: int) -> None:
        """Run every step of ``a`` that is due; set when the next one is."""
        steps = a["steps"]
        while a["next"] < len(steps):
            st = steps[a["next"]]
            due = a["raised_ns"] + int(st["after"] * NS)
            if due > now:
                a["due_ns"] = due
                return
            a["next"] += 1
            kind = "alarm" if st["after"] == 0 else "escalation"
            if kind == "escalation":
                self.counts["escalations"] += 1
            who = await self.resolve(st["to"], a["event"])
            await self._tell(
                [{"name": p.name, "via": st.get("via"), "r": _rdict(p)} for p in who],
                kind,
                a["event"],
                code,
                via_override=None,
                alarm=a,
                step=a["next"],
                voice=st.get("voice"),
            )
        a["due_ns"] = None

    async def _timer_loop(self) -> None:
        while True:
            now = self.ctx.clock()
            changed = False
            for code, a in list(self.state["alarms"].items()):
                if a.get("due_ns") is not None and a["due_ns"] <= now and not a.get("acked"):
                    await self._escalate(code, a, now=now)
                    changed = True
            changed |= await self._flush_digests(now)
            if changed:
                await self.save()
                self._wake.set()
            self.rounds += 1
            await asyncio.sleep(0.5)

    # ------------------------------------------------------------------ telling
    async def _tell(
        self,
        who: list[dict[str, Any]],
        kind: str,
        ev: dict[str, Any],
        code: str,
        *,
        via_override: list[str] | None,
        alarm: dict[str, Any],
        step: int = 0,
        voice: bool | None = None,
    ) -> None:
        now = self.ctx.clock()
        seen: set[str] = set()
        for w in who:
            p = Recipient(**w["r"])
            via = via_override or w.get("via")
            if p.name in seen or (kind == "alarm" and any(t["name"] == p.name for t in alarm["told"])):
                continue  # one message per person: two routes to the same person, a person at two steps
            seen.add(p.name)
            if kind in ("alarm", "escalation"):
                alarm["told"].append(w)
            if kind != "test" and self._held(p.name, now):
                self._add_digest(p, via, kind, ev, code, now)
                continue
            self._count(p.name, now)
            chans = self._channels_for(p, via)
            if not chans:
                await self._journal_attempt(
                    {
                        "key": f"{code}/{kind}/{step}/{p.name}",
                        "via": None,
                        "recipient": p.name,
                        "source": p.source,
                        "kind": kind,
                        "code": code,
                        "channel": ev.get("channel"),
                        "rule": ev.get("rule"),
                    },
                    SendResult(
                        False, "no channel reaches this recipient (no address for any configured channel)"
                    ),
                    0,
                )
                continue
            f = self.render.fields(ev, code=code, step=step)
            for c in chans:
                key = f"{code}/{kind}/{step}/{p.name}/{c}"
                extra = {"alarm": _slim(ev), "voice": bool(voice) and self.channels[c].type == "modem"}
                msg = self.render.message(
                    key,
                    kind,  # type: ignore[arg-type]
                    CHANNEL_KIND.get(self.channels[c].type, "robot"),
                    f,
                    extra,
                )
                self._enqueue(msg, p, c, ev)

    def _enqueue(self, msg: Message, p: Recipient, via: str, ev: dict[str, Any]) -> None:
        if msg.key in self.state["sent"] or any(it["key"] == msg.key for it in self.state["outbox"]):
            return
        self.state["outbox"].append(
            {
                "key": msg.key,
                "via": via,
                "r": _rdict(p),
                "m": _mdict(msg),
                "attempts": 0,
                "next_ns": 0,
                "first_ns": self.ctx.clock(),
                "channel": ev.get("channel"),
                "rule": ev.get("rule"),
            }
        )
        self._wake.set()

    def _drop_unsent(self, codes: list[str]) -> None:
        """An acknowledged alarm's escalation messages not yet attempted are no longer news."""
        if codes:
            self.state["outbox"] = [
                it
                for it in self.state["outbox"]
                if not (it["attempts"] == 0 and it["m"]["kind"] == "escalation" and it["m"]["code"] in codes)
            ]

    # ------------------------------------------------------------------ sending
    async def _send_loop(self) -> None:
        while True:
            self._wake.clear()
            now = self.ctx.clock()
            nxt: int | None = None
            for it in list(self.state["outbox"]):
                if it["key"] in self._inflight:
                    continue
                if it["next_ns"] > now:
                    nxt = it["next_ns"] if nxt is None else min(nxt, it["next_ns"])
                    continue
                self._inflight.add(it["key"])
                t = asyncio.create_task(self._attempt(it), name=f"notify-send[{it['via']}]")
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)
            wait = 5.0 if nxt is None else max(0.01, (nxt - now) / NS)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(wait, 5.0)):
                    await self._wake.wait()

    async def _attempt(self, it: dict[str, Any]) -> None:
        ch = self.channels.get(it["via"])
        try:
            if ch is None:
                res = SendResult(False, f"channel {it['via']} is no longer configured")
            else:
                async with self._sems[it["via"]]:
                    # no cap here: each channel bounds its own attempt (a robot by its timeout;
                    # the modem each AT command, so a multi-part SMS or a call may take longer)
                    try:
                        res = await ch.send(Message(**it["m"]), Recipient(**it["r"]))
                    except Exception as e:  # a channel must not raise; if one does, it is a failed attempt
                        log.exception("notify: channel %s raised", it["via"])
                        res = SendResult(False, f"channel error: {type(e).__name__}: {e}"[:300], retry=True)
            it["attempts"] += 1
            last = not res.retry or it["attempts"] > self.s.retries
            if res.ok:
                self.counts["sent"] += 1
            else:
                self.counts["failed" if last else "retried"] += 1
            await self._journal_attempt(
                {
                    "key": it["key"],
                    "via": it["via"],
                    "recipient": it["r"]["name"],
                    "source": it["r"].get("source"),
                    "kind": it["m"]["kind"],
                    "code": it["m"].get("code"),
                    "channel": it.get("channel"),
                    "rule": it.get("rule"),
                },
                res,
                it["attempts"],
            )
            if res.ok or last:
                self.state["outbox"] = [x for x in self.state["outbox"] if x is not it]
                if res.ok:
                    self.state["sent"].append(it["key"])
                    self._sent_meta[it["key"]] = {
                        "via": it["via"],
                        "recipient": it["r"]["name"],
                        "source": it["r"].get("source"),
                        "kind": it["m"]["kind"],
                        "code": it["m"].get("code"),
                        "channel": it.get("channel"),
                        "rule": it.get("rule"),
                    }
                    while len(self._sent_meta) > MAX_SENT_KEYS:
                        self._sent_meta.popitem(last=False)
            else:
                delay = self.s.retry_after * 2 ** (it["attempts"] - 1)
                it["next_ns"] = self.ctx.clock() + int(min(delay, 3600) * NS)
            await self.save()
        finally:
            self._inflight.discard(it["key"])
            self._wake.set()

    async def _on_delivery(self, via: str, key: str, delivered: bool, detail: str) -> None:
        """A delivery report settled a message sent earlier (every part delivered, or one
        failed for good): journaled as a ``notify`` event of kind ``delivery`` for the audit.
        The attempt itself was journaled when the modem took the message; this says whether
        the phone got it. No retry follows a failed report: the network gave up already."""
        meta = self._sent_meta.get(key) or _meta_from_key(key)
        ev = {
            "type": "notify",
            "id": None,
            "ts": self.ctx.clock(),
            **meta,
            "key": key,
            # channels on one AT port share one modem and its reports: the key names the
            # channel that sent the message (the handler's ``via`` is only the last one set)
            "via": meta.get("via") or via,
            "kind": "delivery",
            "of": meta.get("kind"),
            "ok": delivered,
            "delivered": delivered,
            "detail": detail[:300],
        }
        self.counts["delivered" if delivered else "delivery_failed"] += 1
        (log.info if delivered else log.warning)(
            "notify: %s via %s to %s %s (%s)", key, meta.get("via") or via, meta.get("recipient"),
            "delivered" if delivered else "NOT delivered", detail[:200])
        self.ctx.emit_events([ev])

    async def _journal_attempt(self, what: dict[str, Any], res: SendResult, attempt: int) -> None:
        ev = {
            "type": "notify",
            "id": None,
            "ts": self.ctx.clock(),
            **what,
            "attempt": attempt,
            "ok": res.ok,
            "detail": res.detail[:300],
            "latency_ms": round(res.latency_s * 1000, 1),
            "retry": res.retry,
            "ambiguous": res.ambiguous,
        }
        (log.info if res.ok else log.warning)(
            "notify %s via %s to %s: %s",
            what.get("kind"),
            what.get("via"),
            what.get("recipient"),
            res.detail[:200],
        )
        self.ctx.emit_events([ev])

    # ------------------------------------------------------------------ status
    def stats(self) -> dict[str, Any]:
        alarms = self.state["alarms"]
        return {
            "cursor": self.consumer.cursor,
            "lag": self.consumer.lag(),
            "open_alarms": len(alarms),
            "escalating": sum(1 for a in alarms.values() if a.get("due_ns") is not None),
            "outbox": len(self.state["outbox"]),
            "digests_pending": len(self.state["digests"]),
            **self.counts,
            "channels": {n: c.stats() for n, c in self.channels.items()},
        }


def _meta_from_key(key: str) -> dict[str, Any]:
    """What a message key (``code/kind/step/person/channel``, built in ``_tell``) says, for a
    delivery report of a message sent before a restart."""
    parts = key.split("/")
    if parts[0] == "digest" and len(parts) >= 4:
        return {"kind": "digest", "recipient": "/".join(parts[1:-2]), "via": parts[-1]}
    if len(parts) >= 5:
        return {"code": parts[0], "kind": parts[1], "recipient": "/".join(parts[3:-1]), "via": parts[-1]}
    return {}


def _slim(ev: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "channel",
        "rule",
        "level",
        "kind",
        "unit",
        "value",
        "limit",
        "priority",
        "ts",
        "state",
        "transition",
    )
    return {k: ev.get(k) for k in keep}


def _mdict(m: Message) -> dict[str, Any]:
    return {
        k: getattr(m, k)
        for k in ("key", "kind", "subject", "text", "short", "locale", "code", "link", "fields")
    }


def build_service(ctx: DaemonContext, section: NotifySection) -> NotifyService | None:
    if not section.channels:
        log.warning("notify: no channels configured; nobody will be told of alarms")
        return None
    return NotifyService(ctx, section)
