"""A live reload's rules state (rules/carry.py): a channel kept by name goes on as if no
reload had happened; a moved one keeps its alarms, acknowledgements and shelving."""

from __future__ import annotations

import copy
import random
from typing import Any

import numpy as np
import pytest

from gateway.core.batch import Batch
from rules.carry import carry
from rules.engine import RulesEngine
from rules.settings import NS, ChannelRules
from tests.fixtures.rules import rand_rules

T0 = 1_700_000_000 * NS


def key(e: dict[str, Any]) -> tuple[Any, ...]:
    return (e["ts"], e["channel"], e["rule"], e["level"], e["transition"], e["state"])


def batches(seed: int, n: int, steps: int, t: int) -> list[tuple[str, Any]]:
    """Random batches over channels 0..n-1, with ticks between (as the daemon's timers)."""
    rng = random.Random(seed)
    nr = np.random.default_rng(seed)
    vals = nr.uniform(0, 100, n)
    out: list[tuple[str, Any]] = []
    for _ in range(steps):
        t += int(nr.uniform(0.2, 2.0) * NS)
        chs = np.flatnonzero(nr.random(n) < 0.8).astype(np.int32)
        k = len(chs)
        vals = np.clip(vals + nr.normal(0, 8, n), -10, 110)
        v = vals[chs].copy()
        q = np.zeros(k, np.uint8)
        r_ = nr.random(k)
        q[r_ < 0.05] = 0x81
        q[(r_ >= 0.07) & (r_ < 0.09)] = 0x41
        out.append(("process", Batch.build(chs, t + nr.integers(0, 100_000_000, k), v, q)))
        if rng.random() < 0.5:
            t += int(nr.integers(0, 3 * NS))
            out.append(("tick", t))
    return out


def run(eng: RulesEngine, steps: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    evs: list[dict[str, Any]] = []
    for what, arg in steps:
        evs += eng.process(arg) if what == "process" else eng.tick(arg)
    return evs


@pytest.mark.parametrize("seed", range(4))
def test_kept_channels_go_on_as_without_a_reload(seed: int) -> None:
    """Channels 0..34 kept (same index and settings), 35..39 removed, three added: the
    kept ones' transitions after the reload are those of an engine never reloaded, to the
    bit, with trend and exposure state carried (ceilings: MAC, peak, impulse too)."""
    rng = random.Random(seed)
    rules = rand_rules(rng, 40, ceilings=random.Random(seed + 7))
    ref = RulesEngine(None, rules=copy.deepcopy(rules))
    old = RulesEngine(None, rules=copy.deepcopy(rules))
    first = batches(seed, 40, 150, T0)
    assert [key(e) for e in run(ref, first)] == [key(e) for e in run(old, first)]
    added = [ChannelRules(f"new{i}", "gas", "ppm", h=50.0) for i in range(3)]
    new = RulesEngine(None, rules=copy.deepcopy(rules[:35]) + added)
    reset = carry(old, new, {r.name: (i, i) for i, r in enumerate(rules[:35])})
    assert reset == []
    assert new.counts() == {k: v - len([a for a in old.active() if a["index"] >= 35 and _counted(a, k)])
                            for k, v in old.counts().items()}
    last_t = max(int(arg) if what == "tick" else int(arg.ts.max()) for what, arg in first)
    then = batches(seed + 100, 35, 150, last_t)
    want = [key(e) for e in run(ref, then) if e["index"] < 35]
    got = [key(e) for e in run(new, then) if e["index"] < 35]
    assert got == want
    assert np.array_equal(new.I[:35], ref.I[:35])
    assert np.array_equal(new.ring_y[:, new.rpos[:35]], ref.ring_y[:, ref.rpos[:35]], equal_nan=True)


def _counted(a: dict[str, Any], k: str) -> bool:
    return a["state"] == k or (k == "shelved" and "shelved" in a)


def table_rules(names_limits: list[tuple[str, float]]) -> list[ChannelRules]:
    return [ChannelRules(n, "gas", "%LEL", h=h) for n, h in names_limits]


def test_moved_channels_keep_alarms_acks_and_shelving() -> None:
    old = RulesEngine(None, rules=table_rules([("X", 10.0), ("Y", 10.0), ("Z", 10.0), ("S", 10.0)]))
    t = T0
    evs = old.process(Batch.build(np.arange(4, dtype=np.int32), np.full(4, t), np.full(4, 30.0),
                                  np.zeros(4, np.uint8)))
    assert {e["channel"] for e in evs if e["transition"] == "raise"} == {"X", "Y", "Z", "S"}
    assert old.ack("X", who="li", now_ns=t + 1)
    assert old.shelve("S", who="li", reason="calibration", now_ns=t + 2, duration_s=3600)
    last_id = old.version
    # the new table: W added first (so X, Y and S move), Y's limit raised above its value, Z removed
    new = RulesEngine(None, rules=table_rules([("W", 10.0), ("X", 10.0), ("Y", 50.0), ("S", 10.0)]))
    carry(old, new, {"X": (0, 1), "Y": (1, 2), "S": (3, 3)})
    active = {a["channel"]: a for a in new.active()}
    assert active["X"]["state"] == "active_acked" and active["X"]["index"] == 1
    assert active["Y"]["state"] == "active_unacked" and active["Y"]["index"] == 2
    assert "shelved" in active["S"] and "Z" not in active and "W" not in active
    # the next readings: X still high (no new raise), Y below its new limit (cleared), W quiet
    t += NS
    readings = Batch.build(np.arange(4, dtype=np.int32), np.full(4, t), np.array([5.0, 30.0, 30.0, 30.0]),
                           np.zeros(4, np.uint8))
    evs = new.process(readings)
    by = {(e["channel"], e["transition"]) for e in evs}
    assert ("W", "clear") not in by and ("X", "raise") not in by and ("S", "raise") not in by
    assert ("Y", "clear") in by
    assert all(int(e["id"].rsplit("-", 1)[1]) >= last_id for e in evs)  # ids go on, never reused
    # without the carry the same readings would raise X again (what the reload must not do)
    fresh = RulesEngine(None, rules=table_rules([("W", 10.0), ("X", 10.0), ("Y", 50.0), ("S", 10.0)]))
    again = fresh.process(readings)
    assert ("X", "raise") in {(e["channel"], e["transition"]) for e in again}
