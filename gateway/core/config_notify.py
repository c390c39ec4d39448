"""The ``notify:`` section: who is told of which alarm, through which channel, how the
message reads, and who is told next when nobody acknowledges (docs/notify.md).

``check_config`` holds the checks across the section (a route naming a recipient,
channel or escalation chain that does not exist, a template with an unknown field),
reported by ``safegw check`` at the key's line and column.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator

from gateway.core.config_modem import ModemChannelSettings
from gateway.core.strict import Strict
from gateway.core.units import Duration

Locale = Literal["zh-CN", "en"]
NAME = r"^[A-Za-z0-9\u4e00-\u9fff][A-Za-z0-9\u4e00-\u9fff ._·-]{0,63}$"
#: recipients a route or a step may name besides the configured people
DYNAMIC = ("@on_duty", "@shift_leader", "@hazard_responsible")
LEVELS = ("hh", "h", "l", "ll", "stale", "bad", "range", "frozen", "roc", "trend", "predict", "twa", "stel")
PRIORITIES = ("high", "medium", "low")
#: the fields a template may use (gateway/notify/render.py fills them)
TEMPLATE_FIELDS = (
    "plant",
    "area",
    "hazard_source",
    "channel",
    "kind",
    "value",
    "unit",
    "limit",
    "level",
    "level_text",
    "rule",
    "priority",
    "time",
    "link",
    "code",
    "step",
    "gateway",
    "count",
    "alarms",
    "recipient",
    "what",
)
TEMPLATE_CHANNELS = ("sms", "robot", "email")
TEMPLATE_KINDS = ("alarm", "cleared", "escalation", "digest", "test")
MAX_TEMPLATE = 2000


def _https(v: str) -> str:
    if not re.match(r"^https://[^\s/?#]+(?:/[^\s]*)?$", v) or len(v) > 2000:
        raise ValueError(
            f"{v[:80]!r} is not an https:// address (robots and webhooks are reached over HTTPS only)"
        )
    return v


HttpsUrl = Annotated[str, AfterValidator(_https)]


class ChannelCommon(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    timeout: Duration = Field(default=10.0, gt=0, le=120, description="one attempt, connect to answer")


class RobotSettings(ChannelCommon):
    url: HttpsUrl = Field(
        description="the robot's webhook address, without its token when token_file is given"
    )
    token_file: Path | None = Field(
        default=None,
        description="file (mode 0600) with the webhook's key or "
        "access token, added to the url (keeps it out of the config)",
    )
    secret_file: Path | None = Field(default=None, description="file (mode 0600) with the signing secret")
    ca_file: Path | None = Field(
        default=None, description="trust this CA (a private relay); default: the system's"
    )


class WecomSettings(RobotSettings):
    type: Literal["wecom"]
    format: Literal["text", "markdown"] = "text"


class DingtalkSettings(RobotSettings):
    type: Literal["dingtalk"]


class FeishuSettings(RobotSettings):
    type: Literal["feishu"]


class WebhookSettings(RobotSettings):
    type: Literal["webhook"]
    signature_header: str = Field(
        default="X-Safegw-Signature",
        pattern=r"^[A-Za-z0-9-]{1,64}$",
        description="with secret_file: hex HMAC-SHA256 of "
        "'<timestamp>.<body>', timestamp in X-Safegw-Timestamp",
    )


class EmailSettings(ChannelCommon):
    type: Literal["email"]
    host: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:\[\]_-]+$")
    port: int | None = Field(
        default=None, ge=1, le=65535, description="default 587 (starttls), 465 (tls), 25"
    )
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = Field(default=None, max_length=254)
    password_file: Path | None = Field(default=None, description="file (mode 0600) with the password")
    sender: str = Field(pattern=r"^[^\s@<>]+@[^\s@<>]+$", max_length=254)
    ca_file: Path | None = None


ChannelSettings = Annotated[
    WecomSettings
    | DingtalkSettings
    | FeishuSettings
    | WebhookSettings
    | EmailSettings
    | ModemChannelSettings,
    Field(discriminator="type"),
]


class RateLimit(Strict):
    messages: int = Field(default=5, ge=1, le=1000, description="messages per recipient and channel")
    per: Duration = Field(default=60.0, gt=0, le=86400)


class Flood(Strict):
    """ISA-18.2 (ANSI/ISA-18.2-2016, alarm performance benchmarks: an alarm flood is more than
    10 alarms in 10 minutes per operator; the clause number not confirmed from the text)."""

    alarms: int = Field(default=10, ge=1, le=10000)
    window: Duration = Field(default=600.0, gt=0, le=86400)
    digest_every: Duration = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="during a flood or over the rate limit, one digest this often",
    )


def _hhmm(v: str) -> str:
    m = re.match(r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])$", v)
    if not m:
        raise ValueError(f'{v!r}: write a shift as HH:MM-HH:MM, in quotes (e.g. "08:00-20:00")')
    return v


Shift = Annotated[str, AfterValidator(_hhmm)]


class Roster(Strict):
    """How the duty roster's shifts map to times (the register stores day/night/all_day)."""

    timezone: str = Field(default="Asia/Shanghai", max_length=64)
    day: Shift = "08:00-20:00"
    night: Shift = "20:00-08:00"

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not a time zone (e.g. Asia/Shanghai)") from None
        return v


Person = Annotated[str, Field(min_length=1, max_length=64)]


class RecipientSettings(Strict):
    name: str = Field(pattern=NAME)
    phone: str | None = Field(default=None, pattern=r"^\+?[0-9]{5,20}$", description="digits, quoted")
    email: str | None = Field(default=None, pattern=r"^[^\s@<>]+@[^\s@<>]+$", max_length=254)
    wecom_id: Person | None = None
    dingtalk_id: Person | None = None
    feishu_id: Person | None = None
    can_ack: bool = Field(default=False, description="may acknowledge by replying to an SMS")
    channels: list[str] | None = Field(
        default=None, max_length=16, description="default: every channel that has an address of theirs"
    )

    @field_validator("phone", mode="before")
    @classmethod
    def _phone_text(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            raise ValueError(
                'write the phone number in quotes ("+8613800000000"), so a leading 0 or + survives'
            )
        return v


class Match(Strict):
    """An alarm matches when every list given holds its value (an empty list: any)."""

    levels: list[Literal[LEVELS]] = Field(default_factory=list)  # type: ignore[valid-type]
    priorities: list[Literal[PRIORITIES]] = Field(default_factory=list)  # type: ignore[valid-type]
    areas: list[str] = Field(default_factory=list, max_length=100)
    hazard_sources: list[str] = Field(default_factory=list, max_length=100)
    kinds: list[str] = Field(default_factory=list, max_length=50)
    channels: list[str] = Field(default_factory=list, max_length=500, description="names or globs (GT-*)")


class Step(Strict):
    after: Duration = Field(default=0.0, ge=0, le=7 * 86400, description="since the alarm was raised")
    to: list[str] = Field(min_length=1, max_length=20)
    via: list[str] | None = Field(
        default=None, max_length=10, description="channels (default: the recipient's)"
    )
    voice: bool = Field(default=False, description="also a voice call through the modem")


class Escalation(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    steps: list[Step] = Field(min_length=1, max_length=10)


class Route(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    match: Match = Match()
    to: list[str] = Field(default_factory=list, max_length=20)
    via: list[str] | None = Field(default=None, max_length=10)
    escalation: str | None = Field(
        default=None, description="an escalation chain's name: its steps follow until someone acknowledges"
    )
    cleared: bool = Field(default=True, description="send a message when the alarm returns to normal")


Templates = dict[Locale, dict[Literal[TEMPLATE_CHANNELS], dict[Literal[TEMPLATE_KINDS], str]]]  # type: ignore[valid-type]


class NotifySection(Strict):
    locale: Locale = Field(default="zh-CN", description="zh-CN for a Chinese site, en otherwise")
    plant: str | None = Field(
        default=None, max_length=64, description="named in every message (default: the gateway's name)"
    )
    status_url: HttpsUrl | None = Field(default=None, description="the status page, linked from messages")
    channels: list[ChannelSettings] = Field(default_factory=list, max_length=32)
    recipients: list[RecipientSettings] = Field(default_factory=list, max_length=500)
    routes: list[Route] = Field(default_factory=list, max_length=200)
    escalations: list[Escalation] = Field(default_factory=list, max_length=50)
    rate_limit: RateLimit = RateLimit()
    flood: Flood = Flood()
    roster: Roster = Roster()
    templates: Templates = Field(default_factory=dict)
    retries: int = Field(default=5, ge=0, le=100, description="further attempts of a failed message")
    retry_after: Duration = Field(default=20.0, gt=0, le=3600, description="first retry; it doubles")


def template_fields(text: str) -> list[str]:
    """The field names ``text`` uses; raises ValueError for a malformed template."""
    names = []
    for _lit, name, _spec, _conv in string.Formatter().parse(text):
        if name is not None:
            names.append(name)
    return names


#: a modem's settings that channels sharing its port must agree on (``ring``, ``mode`` and
#: ``max_parts`` are each channel's own)
MODEM_SHARED = ("baud", "pin_file", "timeout", "delivery_reports", "check_interval")


def check_config(cfg: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """The checks across ``notify:`` (names that must exist, unique names, templates)."""
    n: NotifySection | None = getattr(cfg, "notify", None)
    if n is None:
        return []
    errs: list[tuple[tuple[str | int, ...], str]] = []
    chans: dict[str, int] = {}
    for i, c in enumerate(n.channels):
        if c.name in chans:
            errs.append(
                (
                    ("notify", "channels", i, "name"),
                    f"channel name {c.name!r} is already used by notify.channels[{chans[c.name]}]",
                )
            )
        chans.setdefault(c.name, i)
    # two channels on one AT port share one modem, driven by the first one's settings
    # (gateway/notify/modem/channel.py): a second one that differs would be silently ignored
    ports: dict[str, int] = {}
    for i, c in enumerate(n.channels):
        if not isinstance(c, ModemChannelSettings):
            continue
        first = ports.setdefault(c.port, i)
        if first == i:
            continue
        f = n.channels[first]
        assert isinstance(f, ModemChannelSettings)
        for key in MODEM_SHARED:
            if getattr(c, key) != getattr(f, key):
                errs.append(
                    (
                        ("notify", "channels", i, key),
                        f"{key} differs from notify.channels[{first}] ({f.name!r}) on the same port "
                        f"{c.port}: both share one modem; give them the same {key}",
                    )
                )
    people: dict[str, int] = {}
    for i, r in enumerate(n.recipients):
        if r.name in people:
            errs.append(
                (
                    ("notify", "recipients", i, "name"),
                    f"recipient {r.name!r} is already defined at notify.recipients[{people[r.name]}]",
                )
            )
        people.setdefault(r.name, i)
        for j, cname in enumerate(r.channels or []):
            if cname not in chans:
                errs.append((("notify", "recipients", i, "channels", j), _unknown("channel", cname, chans)))
    chains = {e.name: i for i, e in enumerate(n.escalations)}

    def who(path: tuple[str | int, ...], names: list[str]) -> None:
        for j, w in enumerate(names):
            if w not in people and w not in DYNAMIC:
                errs.append(
                    ((*path, j), _unknown("recipient", w, people) + f", or one of {', '.join(DYNAMIC)}")
                )

    def via(path: tuple[str | int, ...], names: list[str] | None) -> None:
        for j, c in enumerate(names or []):
            if c not in chans:
                errs.append(((*path, j), _unknown("channel", c, chans)))

    for i, rt in enumerate(n.routes):
        p: tuple[str | int, ...] = ("notify", "routes", i)
        who((*p, "to"), rt.to)
        via((*p, "via"), rt.via)
        if rt.escalation is not None and rt.escalation not in chains:
            errs.append(((*p, "escalation"), _unknown("escalation chain", rt.escalation, chains)))
        if not rt.to and rt.escalation is None:
            errs.append((p, f"route {rt.name!r} tells nobody: give 'to:' or 'escalation:'"))
    for i, e in enumerate(n.escalations):
        last = -1.0
        for k, st in enumerate(e.steps):
            p = ("notify", "escalations", i, "steps", k)
            who((*p, "to"), st.to)
            via((*p, "via"), st.via)
            if st.after < last:
                errs.append(
                    (
                        (*p, "after"),
                        f"steps come in time order: {st.after:g}s is before the previous step's {last:g}s",
                    )
                )
            last = st.after
            if st.voice and not any(c.type == "modem" for c in n.channels):
                errs.append(((*p, "voice"), "a voice call needs a modem channel in notify.channels"))
    for loc, per_ch in n.templates.items():
        for chk, per_kind in per_ch.items():
            for kind, text in per_kind.items():
                p = ("notify", "templates", loc, chk, kind)
                if len(text) > MAX_TEMPLATE:
                    errs.append((p, f"a template is at most {MAX_TEMPLATE} characters"))
                    continue
                try:
                    names = template_fields(text)
                except ValueError as ex:
                    errs.append(
                        (
                            p,
                            f"not a template: {ex} (fields are written {{channel}}; a brace itself "
                            "is {{ or }})",
                        )
                    )
                    continue
                for name in names:
                    if name not in TEMPLATE_FIELDS:
                        errs.append((p, f"unknown field {{{name}}}; known: {', '.join(TEMPLATE_FIELDS)}"))
    return errs


def _unknown(what: str, name: str, known: dict[str, int]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    listed = ", ".join(list(known)[:10]) or "none defined"
    return f"no {what} named {name!r}{hint} (known: {listed})"
