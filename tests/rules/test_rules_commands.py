"""Operator commands on alarms (rules/commands.py): every refusal of ``parse_command``,
table-driven, with the field it names; what it accepts; and ``apply_command`` on a real
``RulesEngine`` (ack of one channel, of every alarm, shelve then unshelve)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.core.batch import Batch
from rules.commands import AlarmCommand, CommandError, CommandPolicy, apply_command, parse_command
from rules.engine import RulesEngine
from rules.settings import NS, ChannelRules

T0 = 1_750_000_000 * NS
OK_SHELVE = {"operator": "Li Si", "channel": "GT-1", "reason": "sensor swap", "duration": "30m"}


def shelve_with(**kw: Any) -> dict[str, Any]:
    doc = dict(OK_SHELVE)
    doc.update(kw)
    return {k: v for k, v in doc.items() if v is not None}


REFUSALS: list[tuple[str, str, Any, str | None, str]] = [
    # (case, verb, doc, field named, part of the message)
    ("unknown verb", "silence", {"operator": "Li", "channel": "GT-1"}, None, "unknown command 'silence'"),
    ("payload a list", "ack", [1, 2], None, "must be a JSON object"),
    ("payload a string", "ack", "x", None, "must be a JSON object"),
    ("payload null", "shelve", None, None, "must be a JSON object"),
    ("no operator", "ack", {"channel": "GT-1"}, "operator", "is required"),
    ("operator a number", "ack", {"operator": 5, "channel": "GT-1"}, "operator", "must be text, not int"),
    ("operator a list", "ack", {"operator": ["Li"], "channel": "GT-1"}, "operator", "must be text, not list"),
    ("operator blank", "ack", {"operator": "   ", "channel": "GT-1"}, "operator", "must not be empty"),
    ("operator too long", "ack", {"operator": "L" * 129, "channel": "GT-1"}, "operator",
     "129 characters long; at most 128"),
    ("operator with NUL", "ack", {"operator": "Li\x00", "channel": "GT-1"}, "operator", "control characters"),
    ("operator with newline", "ack", {"operator": "Li\nSi", "channel": "GT-1"}, "operator",
     "control characters"),
    ("ack without channel", "ack", {"operator": "Li"}, "channel", "or \"*\" for every alarm"),
    ("shelve without channel", "shelve", shelve_with(channel=None), "channel",
     "is required: a channel's name"),
    ("unshelve without channel", "unshelve", {"operator": "Li"}, "channel", "is required"),
    ("channel a number", "ack", {"operator": "Li", "channel": 3}, "channel", "must be a channel's name"),
    ("channel too long", "ack", {"operator": "Li", "channel": "C" * 129}, "channel", "at most 128"),
    ("channel with escape", "ack", {"operator": "Li", "channel": "GT\x1b[31m"}, "channel",
     "control characters"),
    ("* for shelve", "shelve", shelve_with(channel="*"), "channel", "is for ack only"),
    ("* for unshelve", "unshelve", {"operator": "Li", "channel": "*"}, "channel", "is for ack only"),
    ("rule a number", "ack", {"operator": "Li", "channel": "GT-1", "rule": 4}, "rule", "must be text"),
    ("comment too long", "ack", {"operator": "Li", "channel": "GT-1", "comment": "c" * 1001}, "comment",
     "1001 characters long; at most 1000"),
    ("comment with BEL", "ack", {"operator": "Li", "channel": "GT-1", "comment": "ok\x07"}, "comment",
     "control characters"),
    ("comment a lone surrogate", "ack", {"operator": "Li", "channel": "GT-1", "comment": "\ud800"}, "comment",
     "lone surrogates"),
    ("shelve without reason", "shelve", shelve_with(reason=None), "reason", "is required"),
    ("reason blank", "shelve", shelve_with(reason=" "), "reason", "must not be empty"),
    ("reason too long", "shelve", shelve_with(reason="r" * 1001), "reason", "at most 1000"),
    ("duration missing", "shelve", shelve_with(duration=None), "duration", "is required"),
    ("duration zero", "shelve", shelve_with(duration="0s"), "duration", "more than 0 and at most 7d"),
    ("duration negative", "shelve", shelve_with(duration="-5m"), "duration", "is not a duration"),
    ("duration over the max", "shelve", shelve_with(duration="8d"), "duration", "at most 7d"),
    ("duration 30d", "shelve", shelve_with(duration="30d"), "duration", "at most 7d"),
    ("duration just over 7d", "shelve", shelve_with(duration="168.01h"), "duration", "at most 7d"),
    ("duration a number", "shelve", shelve_with(duration=1800), "duration", "write it as text with its unit"),
    ("duration a float", "shelve", shelve_with(duration=0.5), "duration", "write it as text with its unit"),
    ("duration true", "shelve", shelve_with(duration=True), "duration", "write it as text with its unit"),
    ("duration without unit", "shelve", shelve_with(duration="30"), "duration", "is not a duration"),
    ("duration unknown unit", "shelve", shelve_with(duration="3 weeks"), "duration", "is not a duration"),
    ("duration too long", "shelve", shelve_with(duration="1" * 40 + "s"), "duration", "too long"),
]


@pytest.mark.parametrize(("verb", "doc", "field", "message"), [r[1:] for r in REFUSALS],
                         ids=[r[0] for r in REFUSALS])
def test_parse_command_refuses(verb: str, doc: Any, field: str | None, message: str) -> None:
    with pytest.raises(CommandError) as err:
        parse_command(verb, doc)
    assert err.value.field == field
    assert message in err.value.message
    assert str(err.value) == (f"{field}: {err.value.message}" if field else err.value.message)


def test_parse_command_policy_sets_the_max() -> None:
    short = CommandPolicy(max_shelve_s=3600.0)
    with pytest.raises(CommandError, match="at most 1h") as err:
        parse_command("shelve", shelve_with(duration="61m"), short)
    assert err.value.field == "duration"
    assert parse_command("shelve", shelve_with(duration="1h"), short).duration_s == 3600.0
    with pytest.raises(CommandError, match="at most 8"):
        parse_command("ack", {"operator": "Zhang Sanfeng", "channel": "GT-1"}, CommandPolicy(max_name=8))


ACCEPTED: list[tuple[str, str, dict[str, Any], AlarmCommand]] = [
    ("ack one", "ack", {"operator": "Li Si", "channel": "GT-1"}, AlarmCommand("ack", "GT-1", "Li Si")),
    ("ack all", "ack", {"operator": "Li Si", "channel": "*"}, AlarmCommand("ack", "*", "Li Si")),
    ("ack with rule and comment, trimmed", "ack",
     {"operator": " Li Si ", "channel": "GT-1", "rule": "limit", "comment": " seen "},
     AlarmCommand("ack", "GT-1", "Li Si", "limit", comment="seen")),
    ("blank comment: none", "ack", {"operator": "Li", "channel": "GT-1", "comment": "  "},
     AlarmCommand("ack", "GT-1", "Li")),
    ("'who', the older name of operator", "ack", {"who": "Wang Wu", "channel": "GT-1"},
     AlarmCommand("ack", "GT-1", "Wang Wu")),
    ("operator wins over who", "ack", {"who": "Wang Wu", "operator": "Li", "channel": "GT-1"},
     AlarmCommand("ack", "GT-1", "Li")),
    ("shelve 30m", "shelve", OK_SHELVE, AlarmCommand("shelve", "GT-1", "Li Si", reason="sensor swap",
                                                     duration_s=1800.0)),
    ("shelve exactly the max", "shelve", shelve_with(duration="7d", rule="stale"),
     AlarmCommand("shelve", "GT-1", "Li Si", "stale", reason="sensor swap", duration_s=7 * 86400.0)),
    ("unshelve", "unshelve", {"operator": "Li", "channel": "GT-1", "duration": "ignored"},
     AlarmCommand("unshelve", "GT-1", "Li")),
]


@pytest.mark.parametrize(("verb", "doc", "want"), [r[1:] for r in ACCEPTED], ids=[r[0] for r in ACCEPTED])
def test_parse_command_accepts(verb: str, doc: dict[str, Any], want: AlarmCommand) -> None:
    cmd = parse_command(verb, doc)
    assert cmd == want
    assert cmd.all_channels == (want.channel == "*")


# ---- apply_command on a real engine

def engine_with_two_alarms() -> RulesEngine:
    """GT-1 and GT-2 both over their high limit (active, unacknowledged)."""
    e = RulesEngine(None, rules=[ChannelRules("GT-1", h=10.0), ChannelRules("GT-2", h=10.0),
                                 ChannelRules("GT-3", h=10.0)], gateway_id="gw1")
    raised = e.process(Batch.build([0, 1, 2], [T0] * 3, [15.0, 12.0, 5.0], [0, 0, 0]))
    assert [(ev["channel"], ev["state"]) for ev in raised] == [("GT-1", "active_unacked"),
                                                               ("GT-2", "active_unacked")]
    return e


def states(e: RulesEngine) -> dict[str, str]:
    return {a["channel"]: a["state"] for a in e.active()}


def test_apply_ack_one_channel() -> None:
    e = engine_with_two_alarms()
    cmd = parse_command("ack", {"operator": "Li Si", "channel": "GT-1", "comment": "checking"})
    [ev] = apply_command(e, cmd, T0 + NS)
    assert (ev["channel"], ev["transition"], ev["state"], ev["who"], ev["comment"]) == (
        "GT-1", "ack", "active_acked", "Li Si", "checking")
    assert states(e) == {"GT-1": "active_acked", "GT-2": "active_unacked"}


def test_apply_ack_every_alarm() -> None:
    e = engine_with_two_alarms()
    events = apply_command(e, parse_command("ack", {"operator": "Li Si", "channel": "*"}), T0 + NS)
    assert [(ev["channel"], ev["transition"], ev["who"]) for ev in events] == [
        ("GT-1", "ack", "Li Si"), ("GT-2", "ack", "Li Si")]
    assert states(e) == {"GT-1": "active_acked", "GT-2": "active_acked"}
    # nothing left to acknowledge
    assert apply_command(e, parse_command("ack", {"operator": "Li Si", "channel": "*"}), T0 + 2 * NS) == []


def test_apply_ack_unknown_channel_is_a_key_error() -> None:
    e = engine_with_two_alarms()
    with pytest.raises(KeyError):
        apply_command(e, parse_command("ack", {"operator": "Li", "channel": "nope"}), T0)


def test_apply_shelve_then_unshelve() -> None:
    e = engine_with_two_alarms()
    shelve = parse_command("shelve", shelve_with(rule="limit", duration="1h"))
    [ev] = apply_command(e, shelve, T0 + NS)
    assert (ev["channel"], ev["rule"], ev["transition"], ev["who"], ev["reason"], ev["until"]) == (
        "GT-1", "limit", "shelve", "Li Si", "sensor swap", T0 + NS + 3600 * NS)
    [item] = [a for a in e.active() if a["channel"] == "GT-1"]
    assert item["shelved"]["who"] == "Li Si" and item["shelved"]["until"] == T0 + NS + 3600 * NS
    [back] = apply_command(e, parse_command("unshelve", {"operator": "Wang Wu", "channel": "GT-1"}),
                           T0 + 2 * NS)
    assert (back["channel"], back["transition"], back["who"], back["state"]) == (
        "GT-1", "unshelve", "Wang Wu", "active_unacked")  # still active: annunciated again
    assert all("shelved" not in a for a in e.active())
    # nothing shelved any more: unshelving again makes no event
    assert apply_command(e, parse_command("unshelve", {"operator": "Wang Wu", "channel": "GT-1"}),
                         T0 + 3 * NS) == []
