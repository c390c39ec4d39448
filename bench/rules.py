"""Benchmark: one rules tick over 1k / 10k / 100k channels, vectorized core vs per-channel reference.

Every channel has every rule type: four limits with deadband and on/off delays, range
(sensor fault), rate of change, trend slope and time-to-limit prediction, stale, bad-for,
frozen, and exposure (TWA/STEL for gases, Leq,8h for one channel in ten, noise). A tick
is what the gateway does each poll cycle: ``process(batch)`` of one sample per channel
(a slowly wandering value, a few channels crossing limits, a few bad), then
``tick(now)``. Both implementations run on the same data in the same run; at 100k the
per-channel reference is timed on a subset and scaled (said so in the JSON).

    .venv/bin/python bench/rules.py [--sizes 1000,10000,100000] [--ticks 60] [--no-compare]

The JSON also carries the thread CPU time of a tick (``tick_cpu_ms_*``, less sensitive to
other processes than the wall time) and the load average before and after the run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.core.batch import Batch
from rules.engine import RulesEngine
from rules.reference import ReferenceEngine
from rules.settings import NS, ChannelRules

T0 = 1_750_000_000 * NS
POLL = NS  # one poll a second


def make_rules(n: int, *, ceilings: bool = True) -> list[ChannelRules]:
    """``ceilings``: the rules of issue 17 on: two gas channels in ten have a MAC ceiling
    (GBZ 2.1-2019), two others peak exposure (a PC-TWA without PC-STEL) at a level the
    hot channels pass."""
    out = []
    for i in range(n):
        noise = i % 10 == 9
        r = ChannelRules(f"ch{i}", "noise" if noise else "gas", "dB(A)" if noise else "mg/m3",
                         hh=90.0, h=80.0, l=20.0, ll=10.0, deadband=1.0, on_ns=2 * NS, off_ns=2 * NS,
                         range_lo=0.0, range_hi=140.0, roc=15.0, trend_ns=120 * NS, trend_slope=10.0,
                         predict_ns=60 * NS, predict_limit=80.0, stale_ns=3 * NS, bad_ns=3 * NS,
                         frozen_ns=300 * NS, hold_ns=3 * NS)
        if noise:
            r.exposure, r.twa = "noise", 85.0
        else:
            r.exposure, r.twa, r.stel = "concentration", 60.0, 75.0
            if ceilings and i % 10 in (3, 4):
                r.mac = 95.0
            elif ceilings and i % 10 in (5, 6):
                r.twa, r.stel, r.peak = 25.0, float("nan"), True  # excursions above 75, ceiling 125
        out.append(r)
    return out


def make_ticks(n: int, ticks: int, seed: int = 1) -> list[tuple[Batch, int]]:
    rng = np.random.default_rng(seed)
    base = rng.uniform(30, 70, n)
    out = []
    for k in range(ticks):
        v = base + rng.normal(0, 0.5, n)  # a steady plant: readings scatter around their level
        hot = rng.random(n) < 0.0002  # a few channels jump over a limit (20 a second at 100k)
        v[hot] += 40
        q = np.zeros(n, np.uint8)
        q[rng.random(n) < 0.0005] = 0x81
        t = T0 + k * POLL + rng.integers(0, 50_000_000, n)
        out.append((Batch.build(np.arange(n, dtype=np.int32), t, v, q), T0 + k * POLL + POLL // 2))
    return out


def time_engine(n: int, ticks: int, warm: int) -> dict[str, float]:
    eng = RulesEngine(None, rules=make_rules(n))
    data = make_ticks(n, ticks + warm)
    proc, tick, total, cpu = [], [], [], []
    events = 0
    for i, (b, now) in enumerate(data):
        c0 = time.thread_time()
        t0 = time.perf_counter()
        events += len(eng.process(b))
        t1 = time.perf_counter()
        events += len(eng.tick(now))
        t2 = time.perf_counter()
        c1 = time.thread_time()
        if i >= warm:
            proc.append(t1 - t0)
            tick.append(t2 - t1)
            total.append(t2 - t0)
            cpu.append(c1 - c0)
    return {"tick": statistics.median(total) * 1e3, "process": statistics.median(proc) * 1e3,
            "timers": statistics.median(tick) * 1e3, "cpu": statistics.median(cpu) * 1e3,
            "p90": sorted(total)[int(len(total) * 0.9)] * 1e3, "events": events}


def time_pair(n: int, ticks: int, warm: int) -> dict[str, float]:
    """The engine with the MAC / peak-exposure rules and without, on the same data, tick by
    tick in turn (so a neighbour's load hits both alike): median wall and thread CPU ms."""
    engs = {"with": RulesEngine(None, rules=make_rules(n)),
            "without": RulesEngine(None, rules=make_rules(n, ceilings=False))}
    data = make_ticks(n, ticks + warm)
    wall: dict[str, list[float]] = {k: [] for k in engs}
    cpu: dict[str, list[float]] = {k: [] for k in engs}
    for i, (b, now) in enumerate(data):
        for k in (("with", "without") if i % 2 else ("without", "with")):
            c0, t0 = time.thread_time(), time.perf_counter()
            engs[k].process(b)
            engs[k].tick(now)
            t1, c1 = time.perf_counter(), time.thread_time()
            if i >= warm:
                wall[k].append(t1 - t0)
                cpu[k].append(c1 - c0)
    return {f"{m}_{k}": statistics.median(v[k]) * 1e3
            for m, v in (("wall", wall), ("cpu", cpu)) for k in engs}


def time_reference(n: int, ticks: int, warm: int) -> float:
    ref = ReferenceEngine(make_rules(n))
    data = make_ticks(n, ticks + warm)
    total = []
    for i, (b, now) in enumerate(data):
        t0 = time.perf_counter()
        ref.process(b.channel, b.ts, b.value, b.quality)
        ref.tick(now)
        if i >= warm:
            total.append(time.perf_counter() - t0)
    return statistics.median(total) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--ticks", type=int, default=60)
    ap.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the engine without the MAC / peak-exposure rules (same run)")
    ap.add_argument("--ref-subset", type=int, default=10000,
                    help="largest channel count the reference runs at; larger sizes are scaled")
    args = ap.parse_args()
    fig: dict[str, object] = {"load_avg_1m_start": round(os.getloadavg()[0], 2)}
    for n in [int(s) for s in args.sizes.split(",")]:
        warm = 135  # past the first trend buckets, so trend evaluation is in the timed ticks
        r = time_engine(n, args.ticks, warm)
        tot, proc, tick, events = r["tick"], r["process"], r["timers"], int(r["events"])
        m = min(n, args.ref_subset)
        ref_ms = time_reference(m, max(5, args.ticks // 6), 3) * (n / m)
        label = f"{n // 1000}k"
        fig[f"tick_ms_{label}"] = round(tot, 3)
        fig[f"process_ms_{label}"] = round(proc, 3)
        fig[f"timers_ms_{label}"] = round(tick, 3)
        fig[f"tick_cpu_ms_{label}"] = round(r["cpu"], 3)
        fig[f"tick_p90_ms_{label}"] = round(r["p90"], 3)
        fig[f"ref_ms_{label}"] = round(ref_ms, 1)
        fig[f"speedup_{label}"] = round(ref_ms / tot, 1)
        if args.compare:
            # the reference mix: the same channels without the MAC and peak rules, same run
            p = time_pair(n, args.ticks, warm)
            for k, v in p.items():
                fig[f"pair_{k}_ms_{label}"] = round(v, 3)
            fig[f"ceilings_cost_cpu_{label}"] = round(p["cpu_with"] / p["cpu_without"], 3)
            fig[f"ceilings_cost_wall_{label}"] = round(p["wall_with"] / p["wall_without"], 3)
            print(f"{n:>7} channels, interleaved: with MAC/peak {p['wall_with']:.3f} ms "
                  f"(CPU {p['cpu_with']:.3f}), without {p['wall_without']:.3f} ms "
                  f"(CPU {p['cpu_without']:.3f}): "
                  f"{p['cpu_with'] / p['cpu_without']:.2f}× CPU", flush=True)
        if m != n:
            fig[f"ref_scaled_{label}"] = f"reference measured on {m} channels, scaled by {n / m:g}"
        print(f"{n:>7} channels: tick {tot:.3f} ms (process {proc:.3f}, timers {tick:.3f}, "
              f"thread CPU {r['cpu']:.3f}, p90 {r['p90']:.3f}); "
              f"reference {ref_ms:.1f} ms{' (scaled)' if m != n else ''}; speedup {ref_ms / tot:.0f}x; "
              f"{events} events", flush=True)
    fig["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    fig["rules"] = ("limits+deadband+delays, range, roc, trend+predict, stale, bad, frozen, twa/stel/noise, "
                    "mac (2 in 10), peak exposure (2 in 10)")
    fig["median_of_ticks"] = args.ticks
    print(json.dumps(fig))


if __name__ == "__main__":
    main()
