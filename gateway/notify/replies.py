"""Acknowledgement by SMS reply: the modem channel hands each received SMS to
``on_sms``; a reply holding an open alarm's short code, from a recipient allowed to
acknowledge, acknowledges it through the rules engine's command path, audited like any
other acknowledgement (docs/notify.md)."""

from __future__ import annotations

import logging
import re
from typing import Any

from gateway.core.config_notify import RecipientSettings
from gateway.services import DaemonContext
from rules.commands import CommandError, apply_command, parse_command

log = logging.getLogger(__name__)

#: the longest SMS reply looked at
MAX_REPLY = 480


def _digits(phone: str) -> str:
    d = re.sub(r"[^0-9]", "", phone)
    if d.startswith("86") and len(d) == 13:  # +86 138...: a Chinese mobile number without the country code
        d = d[2:]
    return d


def mask_phone(phone: str) -> str:
    d = re.sub(r"[^0-9+]", "", phone)
    return d[:-8] + "****" + d[-4:] if len(d) >= 8 else "****"



class SmsReplies:
    """Part of the notify service (gateway/notify/service.py)."""

    ctx: DaemonContext
    people: dict[str, RecipientSettings]
    state: dict[str, Any]
    counts: dict[str, int]
    _store: Any

    async def save(self) -> bool:
        raise NotImplementedError
    async def on_sms(self, sender: str, text: str) -> None:
        """An SMS reply: acknowledges the alarm whose short code it holds, when the sender
        is a recipient allowed to acknowledge. Audited either way."""
        text = text[:MAX_REPLY]
        who = next((r for r in self.people.values() if r.phone and _digits(r.phone) == _digits(sender)), None)
        codes = [
            c
            for c in re.findall(r"(?<![0-9A-Z])[0-9A-Z]{4}(?![0-9A-Z])", text.upper())
            if c in self.state["alarms"]
        ]
        masked = mask_phone(sender)
        if who is None or not who.can_ack:
            self.counts["sms_refused"] += 1
            await self._audit(
                who.name if who else "-",
                "-",
                403,
                masked,
                {"via": "sms", "codes": codes, "refused": "sender may not acknowledge"},
            )
            log.warning("notify: SMS from %s refused: not a recipient allowed to acknowledge", masked)
            return
        if not codes:
            await self._audit(who.name, "-", 404, masked, {"via": "sms", "refused": "no open alarm's code"})
            return
        for code in dict.fromkeys(codes):
            a = self.state["alarms"][code]
            try:
                cmd = parse_command(
                    "ack",
                    {
                        "channel": a["channel"],
                        "rule": a["rule"],
                        "operator": who.name,
                        "comment": f"SMS reply ({code})",
                    },
                )
                events = apply_command(self.ctx.rules, cmd, self.ctx.clock())
            except (CommandError, KeyError, ValueError) as e:
                await self._audit(
                    who.name, a["channel"], 409, masked, {"via": "sms", "code": code, "error": str(e)[:200]}
                )
                continue
            self.ctx.emit_events(events)
            self.counts["acks_by_sms"] += 1
            a["due_ns"], a["acked"] = None, True  # the ack event, once read, closes it
            await self._audit(
                who.name,
                a["channel"],
                200,
                masked,
                {"via": "sms", "code": code, "rule": a["rule"], "events": len(events)},
            )
            log.info("notify: alarm %s/%s acknowledged by %s by SMS reply", a["channel"], a["rule"], who.name)
        await self.save()

    async def _audit(
        self, actor: str, channel: str, status: int, remote: str, detail: dict[str, Any]
    ) -> None:
        if self._store is None:
            return
        try:
            await self._store.call(
                self._store.audit,
                actor,
                "sms",
                "POST",
                f"/alarms/{channel}/ack",
                status,
                f"sms:{remote}",
                detail,
            )
        except Exception as e:  # the audit must not lose the acknowledgement
            log.error("notify: audit of an SMS acknowledgement failed: %s", e)

