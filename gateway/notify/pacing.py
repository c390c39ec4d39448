"""Floods and rate limits: per recipient, past ``rate_limit`` or during an ISA-18.2 flood
(more than ``flood.alarms`` in ``flood.window``), messages are held in a digest that goes
out every ``flood.digest_every``. The held digests are part of the saved state."""

from __future__ import annotations

from collections import deque
from typing import Any

from gateway.core.config_notify import NotifySection
from gateway.notify.base import Channel, Message, Recipient
from gateway.notify.render import CHANNEL_KIND, Renderer

NS = 1_000_000_000
#: alarms a digest lists at most (the count is always exact)
MAX_DIGEST_ITEMS = 5000


def _rdict(p: Recipient) -> dict[str, Any]:
    return {k: getattr(p, k) for k in ("name", "phone", "email", "wecom_id", "dingtalk_id", "feishu_id",
                                        "can_ack", "source")}


class Pacing:
    """Part of the notify service (gateway/notify/service.py)."""

    s: NotifySection
    state: dict[str, Any]
    render: Renderer
    channels: dict[str, Channel]
    counts: dict[str, int]
    _flood: dict[str, deque[int]]
    _rate: dict[str, deque[int]]

    def _channels_for(self, p: Recipient, via: list[str] | None) -> list[str]:
        raise NotImplementedError

    def _enqueue(self, msg: Message, p: Recipient, via: str, ev: dict[str, Any]) -> None:
        raise NotImplementedError
    def _window(self, d: dict[str, deque[int]], name: str, span_s: float, now: int) -> deque[int]:
        q = d.setdefault(name, deque())
        while q and q[0] <= now - int(span_s * NS):
            q.popleft()
        return q

    def _held(self, name: str, now: int) -> bool:
        """Whether this recipient's next message goes into a digest: a flood (more than
        ``flood.alarms`` in ``flood.window``) or the rate limit reached."""
        fl, rl = self.s.flood, self.s.rate_limit
        flood = self._window(self._flood, name, fl.window, now)
        flood.append(now)
        if len(flood) > fl.alarms:
            return True
        if name in self.state["digests"]:
            return True  # a digest is pending: keep the order, add to it
        return len(self._window(self._rate, name, rl.per, now)) >= rl.messages

    def _count(self, name: str, now: int) -> None:
        self._window(self._rate, name, self.s.rate_limit.per, now).append(now)

    def _add_digest(
        self, p: Recipient, via: list[str] | None, kind: str, ev: dict[str, Any], code: str, now: int
    ) -> None:
        d = self.state["digests"].setdefault(
            p.name, {"r": _rdict(p), "via": [], "items": [], "count": 0, "since_ns": now, "last_ns": 0}
        )
        for c in via or []:
            if c not in d["via"]:
                d["via"].append(c)
        d["count"] += 1
        if len(d["items"]) < MAX_DIGEST_ITEMS:
            d["items"].append(
                {
                    "channel": ev.get("channel"),
                    "rule": ev.get("rule"),
                    "level": ev.get("level"),
                    "value": self.render.number(str(ev.get("channel")), ev.get("value")),
                    "unit": ev.get("unit") or "",
                    "time": self.render.time(int(ev.get("ts") or now)),
                    "ts": ev.get("ts"),
                    "code": code,
                    "kind": kind,
                }
            )

    async def _flush_digests(self, now: int) -> bool:
        every = int(self.s.flood.digest_every * NS)
        done = False
        last_sent: dict[str, int] = self.state.setdefault("digest_last", {})
        for name, d in list(self.state["digests"].items()):
            if now < max(d["since_ns"], last_sent.get(name, 0)) + every:
                continue
            del self.state["digests"][name]
            last_sent[name] = now
            p = Recipient(**d["r"])
            chans = self._channels_for(p, d["via"] or None)
            self.counts["digests"] += 1
            self._count(name, now)
            f = {**self.render.fields({"ts": now}), "count": d["count"], "recipient": name}
            for c in chans:
                ck = CHANNEL_KIND.get(self.channels[c].type, "robot")
                f["alarms"] = self.render.digest_lines(d["items"], ck)
                key = f"digest/{name}/{d['since_ns']}/{c}"
                msg = self.render.message(key, "digest", ck, f, {"count": d["count"], "alarms": d["items"]})
                self._enqueue(msg, p, c, {})
            done = True
        return done

