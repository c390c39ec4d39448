"""The vectorized core's shortcuts, each against the per-channel reference or an exact
expectation: the sparse delay machine (only channels with a condition, a candidate or a
level are looked at), the stale-deadline bound in tick(), held (bad / out-of-range)
samples restoring their channel's accumulators, phase blocks."""

from __future__ import annotations

from typing import Any

import numpy as np

from gateway.core.batch import Batch
from rules.engine import RulesEngine
from rules.reference import ReferenceEngine
from rules.settings import NS, PHASE_BLOCK, ChannelRules, phase_ns

T0 = 1_760_000_000 * NS


def key(e: dict[str, Any]) -> tuple[Any, ...]:
    return (e["ts"], e["index"], e["rule"], e["level"], e["transition"], e["state"])


def both(rules: list[ChannelRules]) -> tuple[RulesEngine, ReferenceEngine]:
    return RulesEngine(None, rules=rules), ReferenceEngine(rules)


def step(eng: RulesEngine, ref: ReferenceEngine, ch: Any, t: Any, v: Any,
         q: Any = 0) -> list[tuple[Any, ...]]:
    ch = np.asarray(ch, np.int32)
    b = Batch.build(ch, t, v, q)
    e1 = [key(e) for e in eng.process(b)]
    e2 = [key(e) for e in ref.process(b.channel, b.ts, b.value, b.quality)]
    assert e1 == e2
    return e1


def tick(eng: RulesEngine, ref: ReferenceEngine, now: int) -> list[tuple[Any, ...]]:
    e1 = [key(e) for e in eng.tick(now)]
    assert e1 == [key(e) for e in ref.tick(now)]
    return e1


def test_pending_candidate_among_quiet_channels() -> None:
    n = 300
    rules = [ChannelRules(f"c{i}", h=50.0, hh=80.0, deadband=2.0, on_ns=3 * NS, off_ns=2 * NS)
             for i in range(n)]
    eng, ref = both(rules)
    v = np.full(n, 20.0)
    allc = np.arange(n)
    step(eng, ref, allc, T0, v)
    v[137] = 60.0  # candidate h, pending for 3 s
    assert step(eng, ref, allc, T0 + NS, v) == []
    assert eng.cand[4, 137] == 1 and eng.act[4, 137] == 0
    assert list(eng._nzidx(4)) == [137]
    # the other channels stay quiet; the pending one fires by sample or by tick
    assert step(eng, ref, allc, T0 + 2 * NS, v) == []
    assert tick(eng, ref, T0 + 4 * NS) == [(T0 + 4 * NS, 137, "limit", "h", "raise", "active_unacked")]
    # in the deadband: still h; below it: clear after the off-delay, by sample
    v[137] = 48.5
    assert step(eng, ref, allc, T0 + 5 * NS, v) == []
    v[137] = 47.0
    assert step(eng, ref, allc, T0 + 6 * NS, v) == []
    assert step(eng, ref, allc, T0 + 8 * NS, v) == [(T0 + 8 * NS, 137, "limit", "h", "clear",
                                                     "cleared_unacked")]
    assert len(eng._nzidx(4)) == 0
    # a subset batch (not contiguous) takes the same sparse path
    v[[5, 9]] = 90.0
    got = step(eng, ref, [5, 9, 200], T0 + 9 * NS, v[[5, 9, 200]])
    assert got == []
    got = step(eng, ref, [9, 5], T0 + 12 * NS, v[[9, 5]])
    assert [g[1:3] for g in got] == [(5, "limit"), (9, "limit")] and got[0][3] == "hh"


def test_stale_bound_after_restore_and_late_samples() -> None:
    rules = [ChannelRules(f"s{i}", stale_ns=3 * NS) for i in range(40)]
    eng, ref = both(rules)
    allc = np.arange(40)
    step(eng, ref, allc, T0, 1.0)
    assert tick(eng, ref, T0 + NS) == []
    # channel 7 stops; it is stale only once its deadline passes
    rest = np.delete(allc, 7)
    step(eng, ref, rest, T0 + 2 * NS, 1.0)
    assert tick(eng, ref, T0 + 3 * NS) == []
    raised = (7, "stale", "stale", "raise", "active_unacked")
    assert tick(eng, ref, T0 + 3 * NS + 1) == [(T0 + 3 * NS + 1, *raised)]
    # a late sample (older than now) clears it; its next deadline comes from that sample
    step(eng, ref, [7], T0 + 3 * NS, 1.0)
    step(eng, ref, rest, T0 + 4 * NS, 1.0)
    assert tick(eng, ref, T0 + 5 * NS) == []
    assert tick(eng, ref, T0 + 6 * NS + 1) == [(T0 + 6 * NS + 1, *raised)]
    events = eng.history(limit=100)[::-1]
    # restart: the stale alarm is not raised again, and the bound is rebuilt
    again = RulesEngine(None, rules=rules)
    again.restore(events)
    assert again.tick(T0 + 7 * NS) == []
    assert again.process(Batch.build([7], T0 + 7 * NS, 1.0, 0)) != []  # clears
    assert again.tick(T0 + 8 * NS) == []
    # the others' last times are unknown after the restart: counted from the first tick (7 s),
    # like channel 7's sample at 7 s; nothing is stale before 10 s, all are just after
    assert again.tick(T0 + 10 * NS) == []
    evs = again.tick(T0 + 10 * NS + 1)
    assert sorted(e["index"] for e in evs if e["transition"] == "raise") == list(range(40))


def test_held_samples_leave_accumulators_alone() -> None:
    n = 64
    rules = []
    for i in range(n):
        r = ChannelRules(f"x{i}", h=70.0, range_lo=0.0, range_hi=100.0, roc=5.0, trend_ns=80 * NS,
                         trend_slope=3.0, frozen_ns=30 * NS, exposure="concentration", twa=20.0, stel=30.0,
                         hold_ns=10 * NS)
        rules.append(r)
    rng = np.random.default_rng(5)
    a, b = RulesEngine(None, rules=rules), RulesEngine(None, rules=rules)
    ref = ReferenceEngine(rules)
    allc = np.arange(n, dtype=np.int32)
    for k in range(120):
        t = T0 + k * NS + rng.integers(0, NS // 10, n)
        v = 30 + 10 * np.sin(k / 9 + allc) + rng.normal(0, 0.3, n)
        q = np.zeros(n, np.uint8)
        held = rng.random(n) < 0.1
        q[held & (allc % 2 == 0)] = 0x81  # bad
        v[held & (allc % 2 == 1)] = 150.0  # out of range
        e1 = [key(e) for e in a.process(Batch.build(allc, t, v, q))]
        e2 = [key(e) for e in ref.process(allc, t, v, q)]
        assert e1 == e2, k
        # b sees only the valid samples: every accumulator must match a's
        ok = ~held
        b.process(Batch.build(allc[ok], t[ok], v[ok], q[ok]))
        for name in ("I", "tb_n", "tb_sv", "pv", "ring_y", "snap_twa"):
            assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), (k, name)
        assert np.array_equal(a.valid_ts(), b.valid_ts()), k
        assert np.array_equal(a.frozen_since(), b.frozen_since()), k


def test_phase_blocks() -> None:
    bw = 15 * NS
    assert phase_ns(0, bw) == phase_ns(PHASE_BLOCK - 1, bw) == 0
    assert phase_ns(PHASE_BLOCK, bw) == bw // 97
    assert len({phase_ns(i, bw) for i in range(100_000)}) == 97
    # the trend ring keeps channels of one phase side by side
    rules = [ChannelRules(f"t{i}", trend_ns=120 * NS, trend_slope=5.0) for i in range(200)]
    e = RulesEngine(None, rules=rules)
    same = [i for i in range(200) if phase_ns(i, 15 * NS) == phase_ns(0, 15 * NS)]
    assert sorted(e.rpos[same].tolist()) == list(range(len(same)))


def test_candidate_index_stays_exact() -> None:
    """The per-rule index of channels with a candidate or level, kept up to date step by
    step, equals the one rebuilt from the arrays, through random traffic."""
    import random

    from tests.fixtures.rules import rand_rules

    rng = random.Random(11)
    nr = np.random.default_rng(11)
    n = 120
    rules = rand_rules(rng, n)
    eng, ref = both(rules)
    vals = nr.uniform(0, 100, n)
    t = T0
    for k in range(300):
        t += int(nr.uniform(0.2, 2.0) * NS)
        chs = np.flatnonzero(nr.random(n) < 0.7).astype(np.int32)
        vals = np.clip(vals + nr.normal(0, 10, n), -10, 110)
        q = np.where(nr.random(len(chs)) < 0.05, 0x81, 0).astype(np.uint8)
        step(eng, ref, chs, t + nr.integers(0, 10**8, len(chs)), vals[chs], q)
        if k % 3 == 0:
            tick(eng, ref, t + NS)
        for r in range(10):
            kept = eng._nz[r]
            if kept is not None:
                assert np.array_equal(kept, np.flatnonzero((eng.cand[r] | eng.act[r]) != 0)), (k, r)


def test_stale_when_the_clock_steps_back() -> None:
    rules = [ChannelRules(f"s{i}", stale_ns=3 * NS) for i in range(20)]
    eng, ref = both(rules)
    step(eng, ref, np.arange(20), T0, 1.0)
    assert len(tick(eng, ref, T0 + 10 * NS)) == 20  # all stale
    step(eng, ref, np.arange(10), T0 + 11 * NS, 1.0)  # half come back
    assert tick(eng, ref, T0 + 12 * NS) == []
    # the clock steps back (NTP): the other half is fresh again by the reference's rule
    back = tick(eng, ref, T0 + 2 * NS)
    assert sorted(e[1] for e in back) == list(range(10, 20))


def test_sorted_union_matches_numpy() -> None:
    from rules.indexing import union
    rng = np.random.default_rng(7)
    for _ in range(200):
        a = np.unique(rng.integers(0, 50, rng.integers(0, 20))).astype(np.intp)
        b = np.unique(rng.integers(0, 50, rng.integers(0, 20))).astype(np.intp)
        u = union(a, b)
        assert u.dtype == np.intp
        assert np.array_equal(u, np.union1d(a, b))
