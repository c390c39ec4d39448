"""What every notification channel offers the notify service, and what it is given.

A channel (SMS or voice through the 4G modem, a WeChat Work, DingTalk or Feishu robot, a
generic webhook, e-mail) turns one :class:`Message` for one :class:`Recipient` into one
delivery attempt and says how it went in a :class:`SendResult`. Routing, escalation,
rate limits, digests and the journal's cursor are the service's (gateway/notify/service.py);
a channel never retries by itself, so the service sees, journals and paces every attempt.

Channels are built from the config by type, through :data:`CHANNEL_TYPES`
("module:factory", imported only when configured), like the drivers' registry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

MessageKind = Literal["alarm", "cleared", "escalation", "digest", "test", "permit"]


@dataclass(frozen=True)
class Recipient:
    """A person, resolved at send time (a fixed person, whoever is on duty now, or the
    responsible person of a hazard source). Channels use the addresses they need and
    decline a recipient without one (:meth:`Channel.accepts`)."""
    name: str
    phone: str | None = None  # E.164 or a national number, digits only after an optional '+'
    email: str | None = None
    wecom_id: str | None = None  # WeChat Work user id (mentioned in the group message)
    dingtalk_id: str | None = None  # DingTalk user id or mobile for @-mentions
    feishu_id: str | None = None  # Feishu/Lark open_id for @-mentions
    can_ack: bool = False  # may acknowledge by replying to an SMS
    source: str = "config"  # "config", "duty_roster", "hazard_source": for the journal


@dataclass(frozen=True)
class Message:
    """One message, already rendered in the site's language."""
    key: str  # stable per (alarm transition, escalation step, recipient): the idempotency key
    kind: MessageKind
    subject: str  # one line: e-mail subject, robot title
    text: str  # the full text
    short: str  # fits one SMS where possible (70 UCS-2 characters); may be longer
    locale: str = "zh-CN"
    code: str | None = None  # the alarm's short code: an SMS reply with it acknowledges
    link: str | None = None  # the status page's address for this alarm, if known
    fields: dict[str, Any] = field(default_factory=dict)  # the event's fields, for webhooks


@dataclass(frozen=True)
class SendResult:
    ok: bool
    detail: str = ""  # what the far end said: message reference, HTTP status, SMTP reply
    latency_s: float = 0.0
    retry: bool = False  # a failure worth retrying later (timeout, 429, 5xx, no network)
    ambiguous: bool = False  # it may have been delivered although it failed (a timeout after sending)


InboundHandler = Callable[[str, str], Awaitable[None]]  # (sender number, text)


@runtime_checkable
class Channel(Protocol):
    """One configured channel. ``type`` is the config's type; ``name`` its name."""
    type: str
    name: str

    def accepts(self, to: Recipient) -> bool:
        """Whether this channel can reach ``to`` (has the address it needs)."""
        ...

    async def start(self) -> None:
        """Open what the channel needs (a serial port, an HTTP client). A channel whose
        far end is missing starts anyway and reports it in :meth:`stats` and by failing sends."""
        ...

    async def send(self, msg: Message, to: Recipient) -> SendResult:
        """One attempt, bounded in time by the channel's timeout. Never raises for a
        delivery failure: that is a SendResult with ok=False."""
        ...

    async def stop(self) -> None:
        ...

    def stats(self) -> dict[str, Any]:
        """Flat numbers and strings for /status and /metrics (sent, failed, state, ...)."""
        ...


@runtime_checkable
class InboundChannel(Channel, Protocol):
    """A channel that receives replies (SMS): the service sets the handler before start."""

    def set_inbound(self, handler: InboundHandler) -> None:
        ...


ChannelFactory = Callable[[Any, Any], Channel]  # (settings model, DaemonContext) -> Channel

# config type -> "module:factory"; the factory takes (settings, DaemonContext)
CHANNEL_TYPES: dict[str, str] = {
    "modem": "gateway.notify.modem:build_channel",  # SMS and voice through the 4G modem
    "wecom": "gateway.notify.robots:build_channel",  # WeChat Work group robot
    "dingtalk": "gateway.notify.robots:build_channel",
    "feishu": "gateway.notify.robots:build_channel",
    "webhook": "gateway.notify.robots:build_channel",
    "email": "gateway.notify.email:build_channel",
}
