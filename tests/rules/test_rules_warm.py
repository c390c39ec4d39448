"""Restart: ``restore(events)`` then ``warm(sample batches)`` continues as an unbroken run.

Exposure (TWA 8 h / STEL 15 min), trend buckets and the previous value live in
accumulators, not in the journaled alarm events; warm() rebuilds them from the journaled
samples without producing events, so the alarms after a restart are those of a run
that never stopped."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gateway.core.batch import Batch
from gateway.store.journal import Journal
from rules.engine import RulesEngine
from rules.settings import NS, ChannelRules

T0 = 1_750_000_000 * NS
STEP = 20 * NS


def make_rules(n: int) -> list[ChannelRules]:
    out = []
    for i in range(n):
        r = ChannelRules(f"g{i}", "gas", "mg/m3", h=60.0, hh=90.0, deadband=1.0, range_lo=0.0, range_hi=200.0,
                         roc=2.0, trend_ns=160 * NS, trend_slope=4.0, predict_ns=120 * NS, predict_limit=60.0,
                         frozen_ns=200 * NS, hold_ns=60 * NS)
        if i % 4 == 3:
            r.exposure, r.twa = "noise", 70.0
        else:
            r.exposure, r.twa, r.stel = "concentration", 20.0 + i % 3 * 5, 35.0 + i % 2 * 10
        out.append(r)
    return out


def make_batches(n: int, steps: int, seed: int = 7) -> list[Batch]:
    rng = np.random.default_rng(seed)
    base = rng.uniform(5, 40, n)
    out = []
    for k in range(steps):
        # slow swings (trend, predict, exposure building up and decaying) and some frozen spells
        v = base + 25 * np.sin(k / 40 + np.arange(n)) + rng.normal(0, 1.5, n)
        v[(np.arange(n) + k // 30) % 7 == 0] = 33.0
        q = np.zeros(n, np.uint8)
        q[rng.random(n) < 0.02] = 0x81
        t = T0 + k * STEP + rng.integers(0, NS, n)
        out.append(Batch.build(np.arange(n, dtype=np.int32), t, np.round(v, 1), q))
    return out


def key(e: dict[str, Any]) -> tuple[Any, ...]:
    return (e["ts"], e["index"], e["rule"], e["level"], e["transition"], e["state"])


def run(eng: RulesEngine, batches: list[Batch], k0: int) -> list[dict[str, Any]]:
    out = []
    for k, b in enumerate(batches, start=k0):
        out += eng.process(b)
        out += eng.tick(T0 + k * STEP + 2 * NS)
    return out


def test_split_run_equals_unbroken() -> None:
    n, steps, cut = 24, 1500, 1100  # ~8.3 h of 20 s steps; restart after ~6.1 h
    rules = make_rules(n)
    batches = make_batches(n, steps)
    whole = run(RulesEngine(None, rules=rules), batches, 0)
    first = RulesEngine(None, rules=rules)
    before = run(first, batches[:cut], 0)
    assert [key(e) for e in before] == [key(e) for e in whole[:len(before)]]
    after_ref = whole[len(before):]
    seen = {e["rule"] for e in after_ref}
    assert {"twa", "stel", "trend", "predict", "limit", "frozen"} <= seen, seen
    now = T0 + cut * STEP  # the restart, before the next batch

    second = RulesEngine(None, rules=rules)
    second.restore(before)
    applied = second.warm(iter(batches[:cut]), now)
    assert applied == n * cut  # all within the 8 h window
    assert [key(e) for e in run(second, batches[cut:], cut)] == [key(e) for e in after_ref]

    # without warm() the restart loses the accumulators and the alarms differ
    cold = RulesEngine(None, rules=rules)
    cold.restore(before)
    assert [key(e) for e in run(cold, batches[cut:], cut)] != [key(e) for e in after_ref]


def test_split_run_with_delays_equals_unbroken() -> None:
    """A condition inside its on- or off-delay at the restart is rebuilt by the replay with
    the time it began, so the alarm comes (or clears) when it would have without the restart."""
    n, steps = 24, 200
    rules = make_rules(n)
    for r in rules:
        r.on_ns, r.off_ns = 50 * NS, 70 * NS  # 2–4 steps of 20 s
    batches = make_batches(n, steps)
    whole = run(RulesEngine(None, rules=rules), batches, 0)
    first = RulesEngine(None, rules=rules)
    checked = 0
    for cut in range(1, steps - 10):
        run(first, batches[cut - 1:cut], cut - 1)
        if not ((first.cand != first.act) & (np.array(first.on_ns) > 0)).any():
            continue  # restart where some delay is running
        now = T0 + cut * STEP
        second = RulesEngine(None, rules=rules)
        second.restore(e for e in whole if e["ts"] < now)
        second.warm(iter(batches[:cut]), now)
        after = run(second, batches[cut:cut + 10], cut)
        expect = [e for e in whole if now <= e["ts"] < now + 10 * STEP]
        assert [key(e) for e in after] == [key(e) for e in expect], cut
        checked += 1
        if checked == 8:
            break
    assert checked == 8


def test_warm_emits_nothing_and_keeps_states() -> None:
    n = 8
    rules = make_rules(n)
    batches = make_batches(n, 300)
    first = RulesEngine(None, rules=rules, gateway_id="gw")
    events = run(first, batches, 0)
    assert events
    active = [(a["channel"], a["rule"], a["level"], a["state"]) for a in first.active()]
    second = RulesEngine(None, rules=rules, gateway_id="gw")
    second.restore(events)
    next_id = second._next_id
    second.warm(batches, T0 + 300 * STEP)
    assert second._next_id == next_id and second.history(limit=10**6) == list(reversed(events))[:1000]
    assert [(a["channel"], a["rule"], a["level"], a["state"]) for a in second.active()] == active
    # the rebuilt integral is the unbroken run's, exactly
    assert np.array_equal(second.I, first.I) and np.array_equal(second.pv, first.pv, equal_nan=True)
    assert np.array_equal(second.ring_y, first.ring_y, equal_nan=True)


def test_warm_window_bounds_the_replay() -> None:
    n = 4
    rules = make_rules(n)
    batches = make_batches(n, 100)
    e = RulesEngine(None, rules=rules)
    now = T0 + 100 * STEP
    applied = e.warm(batches, now, window_ns=10 * STEP)
    # samples of the last 10 steps (step k's times are in [k·STEP, k·STEP + 1 s))
    expect = sum(int(((b.ts >= now - 10 * STEP) & (b.ts <= now)).sum()) for b in batches)
    assert applied == expect and 0 < applied < n * 100
    assert e.stats["samples"] == 0
    assert not math.isnan(float(e.pv[0]))


def restart_from_journal(journal: Journal, eng: RulesEngine, now: int) -> int:
    """What the gateway does at start (gateway/app.py after its restore loop)."""
    after = 0
    while recs := journal.read_sync(after, 5000, kinds=(2,)):
        eng.restore(r.event() for r in recs)
        after = recs[-1].seq
    cut = now - eng.warm_window_ns

    def journal_batches() -> Iterator[Batch]:
        after = 0
        while recs := journal.read_sync(after, 500, kinds=(1,)):
            for r in recs:
                if r.ts_max >= cut:
                    yield r.batch()
            after = recs[-1].seq

    return eng.warm(journal_batches(), now)


def test_restart_from_a_real_journal(tmp_path: Path) -> None:
    n, steps, cut = 12, 700, 500
    rules = make_rules(n)
    batches = make_batches(n, steps, seed=3)
    whole = run(RulesEngine(None, rules=rules), batches, 0)
    j = Journal(tmp_path / "journal.db", sync="normal")
    try:
        first = RulesEngine(None, rules=rules)
        for k, b in enumerate(batches[:cut]):
            j.append_sync([b, *first.process(b)])
            if timers := first.tick(T0 + k * STEP + 2 * NS):
                j.append_sync(list(timers))
    finally:
        j.close()
    j = Journal(tmp_path / "journal.db", sync="normal")
    try:
        second = RulesEngine(None, rules=rules)
        assert restart_from_journal(j, second, T0 + cut * STEP) == n * cut
    finally:
        j.close()
    after = run(second, batches[cut:], cut)
    n_before = len(whole) - len(after)
    assert after and [key(e) for e in after] == [key(e) for e in whole[n_before:]]
