"""Alarm periods from alarm events (gateway/admin/alarmlog.py), the trend's interval choice
(gateway/admin/trend.py) and the shift report's figures (gateway/admin/report.py), by tables
of hand-written events: no daemon, no clock."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.admin.alarmlog import Filter, Period, periods
from gateway.admin.report import build
from gateway.admin.trend import step_for

S = 10**9


def ev(
    ts_s: float,
    transition: str,
    code: int,
    *,
    ch: str = "GT-1",
    rule: str = "limit",
    level: str = "h",
    who: str | None = None,
    value: float | None = None,
    limit: float | None = None,
) -> dict[str, Any]:
    return {
        "type": "alarm",
        "ts": int(ts_s * S),
        "channel": ch,
        "rule": rule,
        "level": level,
        "code": code,
        "transition": transition,
        "priority": "high" if level in ("hh", "ll") else "medium",
        "who": who,
        "value": value,
        "limit": limit,
        "unit": "%LEL",
    }


def test_raise_escalate_ack_clear_is_one_period() -> None:
    ps = periods(
        [
            ev(10, "raise", 1, value=26, limit=25),
            ev(12, "escalate", 2, level="hh", value=51, limit=50),
            ev(20, "ack", 2, level="hh", who="op"),
            ev(30, "deescalate", 1, value=30, limit=25),
            ev(40, "clear", 0),
        ]
    )
    assert len(ps) == 1
    p = ps[0]
    assert (p.start_ns, p.end_ns, p.ack_ns, p.ack_by) == (10 * S, 40 * S, 20 * S, "op")
    assert (p.level, p.priority, p.limit, p.peak) == ("hh", "high", 50.0, 51.0)


def test_ack_after_clear_belongs_to_the_cleared_period_and_channels_are_apart() -> None:
    ps = periods(
        [
            ev(1, "raise", 1),
            ev(2, "raise", 1, ch="GT-2"),
            ev(3, "clear", 0),
            ev(5, "ack", 0, who="a"),
            ev(6, "raise", 1),
            ev(7, "clear", 0, ch="GT-2"),
        ]
    )
    got = [(p.channel, p.start_ns // S, None if p.end_ns is None else p.end_ns // S, p.ack_by) for p in ps]
    assert got == [("GT-1", 1, 3, "a"), ("GT-2", 2, 7, None), ("GT-1", 6, None, None)]


def test_rules_are_apart_and_maintenance_is_no_alarm() -> None:
    ps = periods(
        [
            ev(1, "raise", 1, rule="stale", level="stale"),
            ev(2, "raise", 1),
            ev(3, "suppress", 0, rule="maintenance", level="maintenance"),
            ev(4, "clear", 0, rule="stale"),
            ev(5, "suppress", 0),
        ]
    )
    assert [(p.rule, p.start_ns // S, (p.end_ns or 0) // S, p.health) for p in ps] == [
        ("stale", 1, 4, True),
        ("limit", 2, 5, False),
    ]


def test_overlap_seconds() -> None:
    p = Period("GT-1", "limit", "h", "medium", 10 * S, 20 * S)
    assert (p.overlap_s(0, 15 * S), p.overlap_s(12 * S, 30 * S), p.overlap_s(21 * S, 30 * S)) == (
        5.0,
        8.0,
        0.0,
    )
    assert Period("GT-1", "limit", "h", "medium", 10 * S).overlap_s(0, 30 * S) == 20.0


@pytest.mark.parametrize(
    "span,points,step",
    [
        (3600, 1000, 5.0),
        (3600, 3600, 1.0),
        (8 * 3600, 1000, 30.0),
        (7 * 86400, 1000, 900.0),
        (31 * 86400, 10, 267840.0),
    ],
)
def test_trend_interval(span: int, points: int, step: float) -> None:
    assert step_for(span, points) == step
    assert span / step <= points


def test_filter() -> None:
    e = ev(1, "raise", 2, level="hh")
    e["state"] = "active_unacked"
    assert Filter().match(e)
    assert Filter(
        channels=frozenset({"GT-1"}),
        levels=frozenset({"hh"}),
        states=frozenset({"active_unacked"}),
        transitions=frozenset({"raise"}),
    ).match(e)
    assert not Filter(channels=frozenset({"GT-2"})).match(e)
    assert not Filter(transitions=frozenset({"clear"})).match(e)


def test_shift_report_figures() -> None:
    tz = ZoneInfo("Asia/Shanghai")
    t0, t1 = 1000 * S, 1000 * S + 8 * 3600 * S
    evs = [
        ev(900, "raise", 1, ch="OLD"),  # active before the shift, cleared in it
        ev(1100, "clear", 0, ch="OLD"),
    ]
    # GT-1 chatters: raised 3 times within a minute
    for k in range(3):
        evs += [ev(2000 + 20 * k, "raise", 1), ev(2005 + 20 * k, "clear", 0)]
    evs += [ev(2010, "ack", 0, who="op")]
    evs += [
        ev(3000, "raise", 1, ch="PT-9", rule="bad", level="bad"),
        ev(3600, "clear", 0, ch="PT-9", rule="bad"),
    ]
    evs.sort(key=lambda e: e["ts"])
    rep = build(periods(evs), t0, t1, tz=tz, areas={"GT-1": "tank-farm"}, complete=True, now_ns=t1)
    assert rep["summary"]["alarms"] == 3  # raised in the shift; OLD was raised before it
    assert rep["summary"]["per_hour"] == 0.38
    assert rep["summary"]["chattering"] == 1 and rep["summary"]["standing"] == 0
    assert rep["top"] == [
        {
            "channel": "GT-1",
            "area": "tank-farm",
            "count": 3,
            "share": 100.0,
            "chattering": True,
            "standing": False,
        }
    ]
    assert rep["faulty"] == [
        {
            "channel": "PT-9",
            "area": None,
            "rules": "bad",
            "count": 1,
            "faulty_s": 600.0,
            "since": "1970-01-01 08:50:00",
            "still_faulty": False,
        }
    ]
    first = next(a for a in rep["alarms"] if a["channel"] == "GT-1")
    assert (first["raised"], first["acknowledged"], first["ack_after_s"]) == (
        "1970-01-01 08:33:20",
        "1970-01-01 08:33:30",
        10.0,
    )
    old = next(a for a in rep["alarms"] if a["channel"] == "OLD")
    assert old["before_period"] is True and old["duration_s"] == 200.0
    assert rep["summary"]["unacknowledged"] == 3  # OLD and the two later GT-1 raises
    assert rep["summary"]["median_ack_s"] == 10.0


def test_standing_alarm() -> None:
    tz = ZoneInfo("UTC")
    day = 86400 * S
    ps = periods([ev(0, "raise", 1)])
    rep = build(ps, 2 * day, 2 * day + 8 * 3600 * S, tz=tz, areas={}, complete=True, now_ns=3 * day)
    assert rep["summary"]["standing"] == 1 and rep["alarms"][0]["cleared"] is None


def test_pdf_lists_at_most_its_row_bound_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    import pypdf

    from gateway.admin import reportdoc

    monkeypatch.setattr(reportdoc, "PDF_MAX_ROWS", 5)
    evs = []
    for k in range(8):
        evs += [ev(100 + 10 * k, "raise", 1, ch=f"GT-{k}"), ev(105 + 10 * k, "clear", 0, ch=f"GT-{k}")]
    rep = build(periods(evs), 0, 3600 * S, tz=ZoneInfo("UTC"), areas={}, complete=True, now_ns=3600 * S)
    text = "".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(reportdoc.pdf(rep, "en"))).pages)
    text = text.replace("\x00", "")  # pypdf reads fpdf2's two-byte codes with a NUL each
    assert "The first 5 of 8 rows" in text
    # rows past the bound are left out of every table (the top sources are cut to 5 here too)
    assert "GT-4" in text and "GT-5" not in text and "GT-7" not in text
