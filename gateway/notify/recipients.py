"""Who a route's names stand for, resolved when a message is sent: configured people,
whoever is on duty now (the ``duty_roster`` register), the responsible person of the
alarm's hazard source (``major_hazard_source``); and which channels reach each."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from gateway.core.config_notify import NotifySection, RecipientSettings
from gateway.notify.base import Channel, Recipient
from gateway.notify.render import Renderer
from gateway.services import DaemonContext

log = logging.getLogger(__name__)
NS = 1_000_000_000


class Recipients:
    """Part of the notify service (gateway/notify/service.py)."""

    ctx: DaemonContext
    s: NotifySection
    render: Renderer
    people: dict[str, RecipientSettings]
    channels: dict[str, Channel]
    _store: Any
    async def resolve(self, names: list[str], ev: dict[str, Any]) -> list[Recipient]:
        out: list[Recipient] = []
        for n in names:
            if n in self.people:
                out.append(self._person(self.people[n]))
            elif n in ("@on_duty", "@shift_leader"):
                out.extend(await self._roster(leader_only=n == "@shift_leader"))
            elif n == "@hazard_responsible":
                out.extend(await self._hazard(ev))
        seen: set[str] = set()
        return [p for p in out if not (p.name in seen or seen.add(p.name))]  # type: ignore[func-returns-value]

    def _person(self, r: RecipientSettings, source: str = "config", phone: str | None = None) -> Recipient:
        return Recipient(
            name=r.name,
            phone=r.phone or phone,
            email=r.email,
            wecom_id=r.wecom_id,
            dingtalk_id=r.dingtalk_id,
            feishu_id=r.feishu_id,
            can_ack=r.can_ack,
            source=source,
        )

    def _named(self, name: str, source: str, phone: str | None = None) -> Recipient:
        r = self.people.get(name)
        return self._person(r, source, phone) if r else Recipient(name=name, phone=phone, source=source)

    async def _query(self, rtype: str, filters: dict[str, str]) -> list[dict[str, Any]]:
        if self._store is None:
            return []
        try:
            res = await self._store.call(self._store.query, rtype, filters=filters, limit=50)
        except Exception as e:  # sqlite or schema trouble: nobody found, said loudly
            log.error("notify: reading register %s failed: %s", rtype, e)
            return []
        return [d["data"] for d in res["items"]]

    def on_shift(self, now_ns: int) -> list[tuple[str, str]]:
        """(date, shift) pairs of the roster that cover ``now_ns``."""
        ro = self.s.roster
        local = dt.datetime.fromtimestamp(now_ns / NS, self.render.tz)
        today, yesterday = local.date(), local.date() - dt.timedelta(days=1)
        hm = local.strftime("%H:%M")
        out = [(today.isoformat(), "all_day")]
        for shift, span in (("day", ro.day), ("night", ro.night)):
            a, b = span.split("-")
            if a <= b:
                if a <= hm < b:
                    out.append((today.isoformat(), shift))
            elif hm >= a:
                out.append((today.isoformat(), shift))
            elif hm < b:
                out.append((yesterday.isoformat(), shift))
        return out

    async def _roster(self, *, leader_only: bool) -> list[Recipient]:
        out: list[Recipient] = []
        for date, shift in self.on_shift(self.ctx.clock()):
            for rec in await self._query("duty_roster", {"date": date, "shift": shift}):
                leader = str(rec.get("leader") or "")
                if leader_only or not rec.get("members"):
                    if leader:
                        out.append(self._named(leader, "duty_roster", rec.get("phone")))
                    continue
                out.extend(self._named(str(m), "duty_roster") for m in rec.get("members") or [])
        return out

    async def _hazard(self, ev: dict[str, Any]) -> list[Recipient]:
        info = self.render.channels.get(str(ev.get("channel") or ""))
        if info is None or not info.hazard_source:
            return []
        recs = await self._query("major_hazard_source", {"code": info.hazard_source}) or await self._query(
            "major_hazard_source", {"name": info.hazard_source}
        )
        return [self._named(str(r["responsible"]), "hazard_source") for r in recs if r.get("responsible")]

    def _channels_for(self, p: Recipient, via: list[str] | None) -> list[str]:
        conf = self.people.get(p.name)
        allowed = list(via) if via else list(self.channels)
        if conf is not None and conf.channels is not None:
            allowed = [c for c in allowed if c in conf.channels]
        return [c for c in allowed if c in self.channels and self.channels[c].accepts(p)]

