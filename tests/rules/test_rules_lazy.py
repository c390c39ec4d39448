"""The gateway's engine holds no per-channel ``ChannelRules``: ``TableRules`` resolves a
channel's settings when an event names it, and they must be the ones the engine's arrays
were built from (the same as ``resolve_table``), for every channel of a real plant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.config import load
from gateway.core.batch import Batch, Quality
from gateway.core.channels import ChannelTable
from rules.engine import RulesEngine
from rules.settings import NS, TableRules, resolve_table

DEMO = Path(__file__).resolve().parents[2] / "config" / "demo.yaml"
T0 = 1_700_000_000 * NS


def _plant() -> tuple[object, ChannelTable]:
    cfg = load(DEMO)
    return cfg, ChannelTable.from_config(cfg)


def test_table_rules_are_the_resolved_table_channel_by_channel() -> None:
    cfg, table = _plant()
    poll = {d.name: d.poll for d in cfg.devices}  # type: ignore[attr-defined]
    maint = {d.name: True for d in cfg.devices[:1]}  # type: ignore[attr-defined]
    lazy = TableRules(table, poll_s=poll, device_maintenance=maint, molar_volume=24.1, cache=4)
    held = resolve_table(table, poll_s=poll, device_maintenance=maint, molar_volume=24.1)
    assert len(lazy) == len(held) == len(table.channels) > 20
    assert [lazy[i] for i in range(len(lazy))] == held  # through the cache (4 kept, the rest again)
    assert list(lazy) == held
    assert lazy[-1] == held[-1] and lazy[2:5] == held[2:5]
    assert any(r.maintenance for r in held) and any(not r.maintenance for r in held)
    assert lazy[3] is lazy[3]  # kept while recent: an event's raise, ack and clear resolve once
    with pytest.raises(IndexError):
        lazy[len(held)]


def test_engine_events_name_the_channel_settings_it_checks() -> None:
    cfg, table = _plant()
    eng = RulesEngine.for_gateway(cfg, table)
    assert isinstance(eng.rules, TableRules)
    # names → indexes over the table's own dict (no second dict of every name)
    assert eng.by_name["AT-201"] == table.index("AT-201") and len(eng.by_name) == len(table)
    assert "nope" not in eng.by_name and eng.by_name.get("nope") is None
    assert list(eng.by_name) == table.names()
    # GT-101 (demo): h 20, hh 40 %LEL with a 2 s delay; raise it to hh and hold it there
    c = table.by_name["GT-101"].index
    ch = np.array([c], np.int32)
    events = []
    for k in range(6):
        events += eng.process(Batch(ch, np.array([T0 + k * NS], np.int64), np.array([45.0]),
                                    np.array([Quality.GOOD], np.uint8)))
    raised = [e for e in events if e.get("rule") == "limit"]
    assert raised, events
    assert {e["channel"] for e in raised} == {"GT-101"}
    assert raised[-1]["level"] == "hh" and raised[-1]["limit"] == eng.rules[c].hh == 40.0
    assert {a["channel"] for a in eng.active()} >= {"GT-101"}
