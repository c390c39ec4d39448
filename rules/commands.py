"""Operator commands on alarms (acknowledge, shelve, unshelve), checked once for every
way they arrive: the admin API, MQTT, and whatever comes next.

A command is a small JSON-like mapping. ``parse_command`` checks it against the policy
(which fields, their types and lengths, the shelve duration) and gives an
``AlarmCommand`` or raises ``CommandError`` naming the field and what is wrong;
``apply_command`` runs it on the rules engine. So an operator gets the same result,
and the same refusal, whichever way the command came:

- every command names the operator (``operator``) and a channel;
- ``"channel": "*"`` acknowledges every alarm; it is accepted for ``ack`` only, and only
  when written so (a missing channel is refused, never taken as "all");
- a shelve needs a reason and a duration, ``0 < duration <= max_shelve`` (7 days unless
  the config says otherwise); a duration is text with its unit (``30m``, ``8h``);
- free text (operator, reason, comment, rule, channel) is bounded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from gateway.core.units import parse_duration

Verb = Literal["ack", "shelve", "unshelve"]
VERBS: tuple[Verb, ...] = ("ack", "shelve", "unshelve")
ALL_CHANNELS = "*"

#: default longest shelve (ISA-18.2 wants shelving time-limited)
MAX_SHELVE_S = 7 * 86400.0


class CommandError(ValueError):
    """A command refused: ``field`` is the key at fault (None for the whole command)."""

    def __init__(self, field: str | None, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class CommandPolicy:
    max_shelve_s: float = MAX_SHELVE_S
    max_name: int = 128  # operator, channel, rule
    max_text: int = 1000  # reason, comment


@dataclass(frozen=True, slots=True)
class AlarmCommand:
    verb: Verb
    channel: str  # a channel name, or "*" (ack only)
    operator: str
    rule: str | None = None
    comment: str | None = None  # ack
    reason: str = ""  # shelve
    duration_s: float | None = None  # shelve

    @property
    def all_channels(self) -> bool:
        return self.channel == ALL_CHANNELS


class AlarmTarget(Protocol):
    """What a command acts on: the rules engine's operator actions."""

    def ack(self, channel: str | int | None, *, who: str, now_ns: int, rule: str | None = None,
            comment: str | None = None) -> list[dict[str, Any]]: ...

    def shelve(self, channel: str | int, *, who: str, reason: str, now_ns: int, duration_s: float | None,
               rule: str | None = None) -> list[dict[str, Any]]: ...

    def unshelve(self, channel: str | int, *, who: str, now_ns: int,
                 rule: str | None = None) -> list[dict[str, Any]]: ...


def _text(doc: Mapping[str, Any], key: str, limit: int, *, required: bool = False) -> str | None:
    v = doc.get(key)
    if v is None or (isinstance(v, str) and not v.strip() and not required):
        if required:
            raise CommandError(key, "is required")
        return None
    if not isinstance(v, str):
        raise CommandError(key, f"must be text, not {type(v).__name__}")
    v = v.strip()
    if required and not v:
        raise CommandError(key, "must not be empty")
    if len(v) > limit:
        raise CommandError(key, f"is {len(v)} characters long; at most {limit}")
    if any(ord(ch) < 0x20 or 0xD800 <= ord(ch) <= 0xDFFF for ch in v):
        raise CommandError(key, "holds control characters or lone surrogates")
    return v


def _duration(v: Any, policy: CommandPolicy) -> float:
    if v is None:
        raise CommandError("duration", "is required: how long to shelve, at most "
                                       f"{_fmt(policy.max_shelve_s)} (e.g. 30m, 8h)")
    if not isinstance(v, str):
        raise CommandError("duration", f"write it as text with its unit (e.g. \"30m\", \"8h\"), not {v!r}")
    if len(v) > 32:
        raise CommandError("duration", "is too long to be a duration")
    try:
        seconds = parse_duration(v)
    except ValueError as e:
        raise CommandError("duration", str(e)) from None
    if not 0 < seconds <= policy.max_shelve_s:
        raise CommandError("duration", f"shelve for more than 0 and at most {_fmt(policy.max_shelve_s)}")
    return seconds


def _fmt(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n and seconds % n == 0:
            return f"{seconds / n:g}{unit}"
    return f"{seconds:g}s"


def parse_command(verb: str, doc: Any, policy: CommandPolicy = CommandPolicy()) -> AlarmCommand:
    """A command as it arrived (``doc`` should be a JSON object) → a checked command."""
    if verb not in VERBS:
        raise CommandError(None, f"unknown command {verb!r}; known: {', '.join(VERBS)}")
    if not isinstance(doc, Mapping):
        raise CommandError(None, "the command must be a JSON object")
    # 'who' is the older name of 'operator', still accepted over MQTT
    operator = _text(doc, "who" if "who" in doc and "operator" not in doc else "operator",
                     policy.max_name, required=True)
    channel = doc.get("channel")
    if channel is None:
        raise CommandError("channel", "is required: a channel's name" +
                           (", or \"*\" for every alarm" if verb == "ack" else ""))
    if not isinstance(channel, str):
        raise CommandError("channel", f"must be a channel's name (text), not {channel!r}")
    channel = _text(doc, "channel", policy.max_name, required=True)
    assert channel is not None and operator is not None
    if channel == ALL_CHANNELS and verb != "ack":
        raise CommandError("channel", f"\"*\" (every alarm) is for ack only; {verb} names one channel")
    rule = _text(doc, "rule", policy.max_name)
    if verb == "ack":
        return AlarmCommand("ack", channel, operator, rule, comment=_text(doc, "comment", policy.max_text))
    if verb == "shelve":
        reason = _text(doc, "reason", policy.max_text, required=True)
        assert reason is not None
        return AlarmCommand("shelve", channel, operator, rule, reason=reason,
                            duration_s=_duration(doc.get("duration"), policy))
    return AlarmCommand("unshelve", channel, operator, rule)


def apply_command(target: AlarmTarget, cmd: AlarmCommand, now_ns: int) -> list[dict[str, Any]]:
    """Run a checked command; the events it made (to journal and publish).

    A channel the engine does not know raises ``KeyError``; a refusal of the engine's
    own (nothing to unshelve, ...) ``ValueError``."""
    if cmd.verb == "ack":
        return target.ack(None if cmd.all_channels else cmd.channel, who=cmd.operator, now_ns=now_ns,
                          rule=cmd.rule, comment=cmd.comment)
    if cmd.verb == "shelve":
        return target.shelve(cmd.channel, who=cmd.operator, reason=cmd.reason, now_ns=now_ns,
                             duration_s=cmd.duration_s, rule=cmd.rule)
    return target.unshelve(cmd.channel, who=cmd.operator, now_ns=now_ns, rule=cmd.rule)
