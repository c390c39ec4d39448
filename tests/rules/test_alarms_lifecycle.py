"""Alarm lifecycle (ISA-18.2): acknowledge, clear, shelve, suppress by maintenance, and
restore after a restart without re-raising what still holds."""

from __future__ import annotations

import asyncio
import re
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.app import Gateway
from gateway.config import loads
from gateway.core.batch import Batch
from rules.engine import RulesEngine
from rules.settings import NS, ChannelRules
from tests.fixtures.helpers import async_wait_until

T0 = 1_750_000_000 * NS


def eng2() -> RulesEngine:
    return RulesEngine(None, rules=[ChannelRules("GT-1", h=10.0, hh=20.0, stale_ns=3 * NS, frozen_ns=60 * NS),
                                    ChannelRules("GT-2", h=10.0)], gateway_id="gw1")


def feed(e: RulesEngine, ch: int, v: float, t_s: float, q: int = 0) -> list[dict[str, Any]]:
    return e.process(Batch.build([ch], [T0 + round(t_s * NS)], [v], [q]))


def states(e: RulesEngine) -> list[tuple[str, str, str, str]]:
    return [(a["channel"], a["rule"], a["level"], a["state"]) for a in e.active()]


def test_ack_and_clear_states() -> None:
    e = eng2()
    [raise_] = feed(e, 0, 15, 0)
    assert raise_["state"] == "active_unacked" and raise_["id"] == "gw1-1" and raise_["who"] is None
    [ack] = e.ack("GT-1", who="Wang Wu", now_ns=T0 + NS)
    assert (ack["transition"], ack["state"], ack["who"], ack["level"]) == (
        "ack", "active_acked", "Wang Wu", "h")
    [esc] = feed(e, 0, 25, 2)  # a worse level needs a new acknowledgement
    assert (esc["transition"], esc["state"]) == ("escalate", "active_unacked")
    [clr] = feed(e, 0, 5, 3)
    assert (clr["transition"], clr["state"]) == ("clear", "cleared_unacked")
    assert states(e) == [("GT-1", "limit", "hh", "cleared_unacked")]
    [ack2] = e.ack("GT-1", who="Wang Wu", now_ns=T0 + 4 * NS)
    assert ack2["state"] == "normal" and states(e) == []
    assert e.ack("GT-1", who="Wang Wu", now_ns=T0 + 5 * NS) == []  # nothing left to acknowledge
    ids = [x["id"] for x in (raise_, ack, esc, clr, ack2)]
    assert len(set(ids)) == 5
    with pytest.raises(KeyError):
        e.ack("nope", who="x", now_ns=T0)


def test_shelve_expires_and_reannunciates() -> None:
    e = eng2()
    feed(e, 1, 15, 0)
    e.ack("GT-2", who="a", now_ns=T0)
    with pytest.raises(ValueError):
        e.shelve("GT-2", who="", reason="", now_ns=T0, duration_s=60)
    [sh] = e.shelve("GT-2", rule="limit", who="Li", reason="detector replaced", now_ns=T0 + NS, duration_s=60)
    assert sh["transition"] == "shelve" and sh["until"] == T0 + 61 * NS
    [a] = e.active()
    assert a["shelved"]["who"] == "Li" and a["shelved"]["reason"] == "detector replaced"
    # transitions while shelved are still journaled, marked shelved
    [clr] = feed(e, 1, 5, 2)
    assert clr["shelved"] is True
    [rr] = feed(e, 1, 15, 3)
    assert rr["shelved"] is True
    assert e.tick(T0 + 60 * NS) == []
    [un] = e.tick(T0 + 61 * NS)
    assert (un["transition"], un["who"], un["state"]) == ("unshelve", "system", "active_unacked")
    assert e.active()[0].get("shelved") is None


def test_maintenance_suppresses_and_reports() -> None:
    e = eng2()
    feed(e, 0, 15, 0)
    evs = e.set_maintenance(channel="GT-1", on=True, who="Zhao", now_ns=T0 + NS, reason="calibration")
    assert [(x["rule"], x["transition"], x["state"]) for x in evs] == [
        ("maintenance", "suppress", "suppressed"), ("limit", "suppress", "suppressed")]
    assert evs[0]["who"] == "Zhao" and evs[0]["reason"] == "calibration"
    assert feed(e, 0, 99, 2) == []  # no process alarm while in maintenance
    assert e.tick(T0 + 100 * NS) == []  # nor stale
    assert [a["state"] for a in e.active()] == ["suppressed"]
    evs = e.set_maintenance(channel="GT-1", on=False, who="Zhao", now_ns=T0 + 101 * NS)
    assert [(x["rule"], x["transition"]) for x in evs] == [("maintenance", "unsuppress")]
    [r] = feed(e, 0, 99, 102)
    assert (r["rule"], r["level"], r["transition"]) == ("limit", "hh", "raise")


def test_config_maintenance_starts_suppressed() -> None:
    e = RulesEngine(None, rules=[ChannelRules("a", h=1.0, maintenance=True)])
    assert feed(e, 0, 5, 0) == []
    assert e.active()[0]["state"] == "suppressed"


def test_restore_does_not_reraise() -> None:
    e = eng2()
    journal = feed(e, 0, 15, 0) + e.ack("GT-1", who="W", now_ns=T0 + NS) + feed(e, 1, 15, 1)
    journal += e.shelve("GT-2", who="L", reason="r", now_ns=T0 + 2 * NS, duration_s=None)
    journal += e.tick(T0 + 10 * NS)  # GT-1 stale (and GT-2 has no stale rule)
    assert any(x["rule"] == "stale" for x in journal)
    e2 = eng2()
    assert e2.restore(journal) == len(journal)
    assert states(e2) == states(e)
    [sh] = [a for a in e2.active() if a["channel"] == "GT-2" and a["rule"] == "limit"]
    assert sh["shelved"]["who"] == "L"
    # conditions still holding: no new events, not even at the first tick
    assert e2.tick(T0 + 11 * NS) == []
    out = feed(e2, 0, 15, 12) + feed(e2, 1, 15, 12)
    assert [(x["rule"], x["transition"]) for x in out] == [("stale", "clear")]
    assert int(out[0]["id"].rsplit("-", 1)[1]) > max(int(x["id"].rsplit("-", 1)[1]) for x in journal)
    # and a condition that went away clears normally
    [c] = feed(e2, 0, 1, 13)
    assert (c["rule"], c["transition"], c["state"]) == ("limit", "clear", "normal")


def _cfg(state: Path, gw_id: str = "gw-r", channels: str = """\
      - {name: GT-1, kind: gas, gas: h2s, unit: mg/m3, address: 'holding:0', preset: gbt50493}
      - {name: O2-1, kind: oxygen, unit: '%VOL', address: 'holding:1', preset: o2}
""") -> str:
    """A gateway whose one Modbus device is disabled: the tests feed its channels themselves."""
    return textwrap.dedent(f"""\
        gateway: {{id: {gw_id}, site: "S", state_dir: {state}}}
        devices:
          - name: plc
            protocol: modbus-tcp
            host: 127.0.0.1
            enabled: false
            channels:
        """) + channels


async def test_gateway_restart_keeps_alarm_state(tmp_path: Path) -> None:
    cfg = loads(_cfg(tmp_path / "st"))
    gw = Gateway(cfg)
    t = gw.clock()
    gw.ingest(Batch.build([0, 1], [t, t], [25.0, 18.0], [0, 0]))  # H2S > 20 (level 2), O2 < 19.5
    gw.emit_events(gw.rules.ack("O2-1", who="op", now_ns=t + 1))
    await gw.flush()
    before = [(a["channel"], a["level"], a["state"]) for a in gw.rules.active()]
    assert before == [("GT-1", "hh", "active_unacked"), ("O2-1", "l", "active_acked")]
    gw.journal.close()
    gw2 = Gateway(loads(_cfg(tmp_path / "st")))
    try:
        assert [(a["channel"], a["level"], a["state"]) for a in gw2.rules.active()] == before
        assert gw2.rules.process(Batch.build([0, 1], [t + NS] * 2, [26.0, 18.5], [0, 0])) == []
        evs = gw2.rules.process(Batch.build([0, 1], [t + 2 * NS] * 2, [5.0, 20.9], [0, 0]))
        assert [(x["channel"], x["transition"], x["state"]) for x in evs] == [
            ("GT-1", "clear", "cleared_unacked"), ("O2-1", "clear", "normal")]
    finally:
        gw2.journal.close()
    await asyncio.sleep(0)


def _cfg_exposure(state: Path) -> str:
    return _cfg(state, "gw-w", """\
      - {name: CO-1, kind: gas, gas: co, unit: mg/m3, address: 'holding:0', exposure: gbz2.1,
          alarms: {trend: {window: 2m, slope: 5}}}
""")


async def test_gateway_restart_rebuilds_exposure_and_trend(tmp_path: Path) -> None:
    """A restarted gateway continues the exposure integral and trend buckets from the journal."""
    gw = Gateway(loads(_cfg_exposure(tmp_path / "st")))
    t0 = gw.clock() - 3600 * NS
    for k in range(240):  # an hour of CO at 15 s steps
        gw.ingest(Batch.build([0], [t0 + k * 15 * NS], [10.0 + (k % 7)], [0]))
    await gw.flush()
    integral, ring = float(gw.rules.I[0]), gw.rules.ring_y.copy()
    assert integral > 0
    gw.journal.close()
    gw2 = Gateway(loads(_cfg_exposure(tmp_path / "st")))
    try:
        assert float(gw2.rules.I[0]) == integral
        assert np.array_equal(gw2.rules.ring_y, ring, equal_nan=True)
        assert gw2.rules.pv[0] == 10.0 + 239 % 7
    finally:
        gw2.journal.close()
    await asyncio.sleep(0)


async def test_gateway_restart_replays_at_most_a_sample_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A large plant's restart is not held up for minutes: the newest samples only, said so."""
    import gateway.app as app

    gw = Gateway(loads(_cfg_exposure(tmp_path / "st")))
    t0 = gw.clock() - 3600 * NS
    for k in range(240):  # an hour of CO at 15 s steps, one sample a record
        gw.ingest(Batch.build([0], [t0 + k * 15 * NS], [10.0], [0]))
    await gw.flush()
    full = float(gw.rules.I[0])
    gw.journal.close()
    monkeypatch.setattr(app, "WARM_MAX_SAMPLES", 60)  # the last 15 minutes
    gw2 = Gateway(loads(_cfg_exposure(tmp_path / "st")))
    try:
        part = float(gw2.rules.I[0])
        # 59 intervals of 15 s at 10 mg/m3 (the first replayed sample has no previous one)
        assert part == pytest.approx(10.0 * 15 * 59 * NS)  # value·ns
        assert 0 < part < full
        assert gw2.rules.pv[0] == 10.0
        assert any(re.search(r"from 60 journaled samples .* newest 0\.[23] h of the 8-h window", m)
                   for m in caplog.messages), caplog.messages
    finally:
        gw2.journal.close()
    await asyncio.sleep(0)


async def test_gateway_follows_a_clock_step_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """NTP steps the gateway's clock back 30 s: the timers see it, say so, and the live
    values and the rules take the samples stamped after the step (not only once the clock
    has caught up)."""
    now = [0]
    gw = Gateway(loads(_cfg_exposure(tmp_path / "st")), clock=lambda: now[0])
    t0 = 1_760_000_000 * NS
    now[0] = t0 + 100 * NS
    gw.ingest(Batch.build([0], [t0 + 100 * NS], [10.0], [0]))
    timers = asyncio.create_task(gw._timers())
    try:
        await async_wait_until(lambda: gw.rules._last_tick == t0 + 100 * NS, what="a first tick")
        now[0] = t0 + 70 * NS  # the step
        await async_wait_until(lambda: gw.rules._last_tick == t0 + 70 * NS, timeout=5, what="the next tick")
        assert any("clock went back 30.000 s" in m for m in caplog.messages), caplog.messages
        gw.ingest(Batch.build([0], [t0 + 71 * NS], [12.5], [0]))
        assert gw.live.value[0] == 12.5 and gw.live.ts[0] == t0 + 71 * NS
        assert gw.rules.stats["ignored_old"] == 0 and gw.rules.pv[0] == 12.5
    finally:
        gw._stop.set()
        await timers
        await gw.flush()
        gw.journal.close()
