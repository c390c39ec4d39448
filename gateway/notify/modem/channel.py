"""The modem as a notification channel: ``mode: sms`` sends an SMS, ``mode: voice`` calls.

Both modes may be configured on one AT port (an SMS channel for every step and a voice
channel for the last escalation step): they share one :class:`Modem`, so the port is
opened once. The port's first channel's settings (baud, PIN, timeout, delivery reports,
check interval) drive the modem, and ``safegw check`` refuses channels on one port that
differ in them (gateway/core/config_notify.py); ``ring`` and ``max_parts`` are each
channel's own. Delivery reports go to the handler set last on the port: the notify service
reads the sending channel from the message key.

Sending twice after a crash: an SMS whose ``+CMGS`` answer was lost (timeout, port gone
after the PDU went out) may have been sent, so the result says ``ambiguous`` and the
service decides; nothing else here resends by itself.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.core.config_modem import ModemChannelSettings
from gateway.notify.base import InboundHandler, Message, Recipient, SendResult
from gateway.notify.modem.device import Modem

_PHONE = re.compile(r"^\+?[0-9]{3,20}$")
#: one Modem per AT port in this process, shared by the channels on it
_MODEMS: dict[str, Modem] = {}


class ModemChannel:
    """SMS (``mode: sms``) or voice calls (``mode: voice``) through the 4G modem."""

    type = "modem"

    def __init__(self, settings: ModemChannelSettings, base_dir: Path):
        self.settings = settings
        self.name = settings.name
        self.mode = settings.mode
        modem = _MODEMS.get(settings.port)
        if modem is None:
            modem = _MODEMS[settings.port] = Modem(settings, base_dir)
        self.modem: Modem = modem
        self._started = False
        self.sent = 0
        self.failed = 0

    def accepts(self, to: Recipient) -> bool:
        return bool(to.phone and _PHONE.match(to.phone))

    def set_inbound(self, handler: InboundHandler) -> None:
        """Replies by SMS go to ``handler(sender, text)``; the voice channel takes none."""
        if self.mode == "sms":
            self.modem.inbox.handler = handler

    async def start(self) -> None:
        if not self._started:
            self._started = True
            await self.modem.start()

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self.modem.stop()
            if _MODEMS.get(self.settings.port) is self.modem and not self.modem._tasks:
                del _MODEMS[self.settings.port]

    async def send(self, msg: Message, to: Recipient) -> SendResult:
        if not to.phone or not _PHONE.match(to.phone):
            self.failed += 1
            return SendResult(False, f"{to.name} has no usable phone number")
        if self.mode == "voice":
            res = await self.modem.call(to.phone, self.settings.ring)
        else:
            res = await self.modem.send_sms(msg.key, to.phone, msg.short or msg.text,
                                            self.settings.max_parts)
            if res.ok and msg.fields.get("voice") is True:
                res = await self._and_call(res, to.phone)
        if res.ok:
            self.sent += 1
        else:
            self.failed += 1
        return res

    async def _and_call(self, sms: SendResult, phone: str) -> SendResult:
        """An escalation step that asks for a voice call too (``fields["voice"]``): the SMS
        first, so the phone shows why it rings, then the call. The SMS decides the result (a
        retry would send it twice); the call's outcome is added to the detail."""
        call = await self.modem.call(phone, self.settings.ring)
        outcome = f"call: {call.detail}" if call.ok else f"call failed: {call.detail}"
        return SendResult(True, f"{sms.detail}; {outcome}", sms.latency_s + call.latency_s)

    def set_delivery_handler(self, handler: Callable[[str, bool, str], Awaitable[None] | None]) -> None:
        """``handler(key, delivered, detail)`` once the delivery reports of a message sent with
        ``key`` settled it (every part delivered, or one failed for good). Optional: the
        service may instead ask :meth:`delivery`."""
        self.modem.inbox.on_delivery = handler

    def delivery(self, key: str) -> str:
        """The delivery report's verdict for a message sent with ``key`` (SMS only)."""
        return self.modem.inbox.delivery(key)

    def stats(self) -> dict[str, Any]:
        return {"type": self.type, "mode": self.mode, "sent": self.sent, "failed": self.failed,
                **self.modem.stats()}


def build_channel(settings: ModemChannelSettings, ctx: Any) -> ModemChannel:
    """The factory CHANNEL_TYPES names: ``ctx`` is the DaemonContext (for the config's folder)."""
    cfg = getattr(ctx, "cfg", None)
    base_dir = getattr(cfg, "base_dir", None) or Path(".")
    return ModemChannel(settings, base_dir)
