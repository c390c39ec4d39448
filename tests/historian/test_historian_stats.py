"""Interval statistics (min, max, mean, count of good samples per channel and interval):
the vectorized accumulator against a brute-force reference, and the statistics that
reach a real influxd, including across a historian restart in the middle of an interval."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from gateway.core.batch import Batch, Quality
from gateway.historian.stats import IntervalStats
from tests.fixtures.historian import N_CH, Harness, make_config
from tests.fixtures.influxd import Influxd, unique_db

pytestmark = pytest.mark.timeout(120)

S = 10**9
T0 = 1_764_000_000 * S  # a multiple of 10 s
# an hour ahead, aligned: the clock never closes these intervals, only the data does
TF = (time.time_ns() // (10 * S) + 360) * 10 * S


def random_batches(k: int, seed: int = 3) -> list[Batch]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(k):
        n = int(rng.integers(1, 40))
        ch = rng.integers(0, 7, n)
        ts = T0 + (i * S) // 2 + rng.integers(0, 3 * S, n)  # overlapping, out of order inside a batch
        v = rng.normal(0, 10, n)
        q = rng.choice(np.array([0, 0, 0, Quality.CALIBRATING, Quality.TIMEOUT], np.uint8), n)
        v[q == Quality.TIMEOUT] = np.nan
        out.append(Batch.build(ch, ts, v, q))
    return out


Ref = dict[tuple[int, int], tuple[float, float, float, int, int]]


def reference(batches: list[Batch], interval: int) -> Ref:
    allb = Batch.concat(batches)
    ref = {}
    start = allb.ts - allb.ts % interval
    for b in np.unique(start):
        for c in np.unique(allb.channel[start == b]):
            m = (start == b) & (allb.channel == c)
            g = m & (allb.quality < Quality.UNCERTAIN) & np.isfinite(allb.value)
            v = allb.value[g]
            tot = int(m.sum())
            ref[(int(b), int(c))] = ((float(v.min()), float(v.max()), float(v.mean()), int(g.sum()), tot)
                                     if g.any() else (np.nan, np.nan, np.nan, 0, tot))
    return ref


def test_interval_stats_match_brute_force() -> None:
    batches = random_batches(60)
    # samples of a batch spread over 3 s: a 3 s grace closes each interval only once
    # no later batch can hold samples for it
    st = IntervalStats(interval_s=5.0, grace_s=3.0)
    got = {}
    closed = []
    for seq, b in enumerate(batches, 1):
        st.add(b, seq)
        closed += st.close()
    assert len(closed) >= 5  # most intervals closed by the data alone
    closed += st.close(now_ns=T0 + 10**6 * S)
    for c in closed:
        for j, ch in enumerate(c.channels):
            got[(c.start_ns, int(ch))] = (c.vmin[j], c.vmax[j], c.mean[j], int(c.count[j]), int(c.total[j]))
    ref = reference(batches, 5 * S)
    assert st.late_samples == 0
    assert set(got) == set(ref)
    for key, (mn, mx, mean, cnt, tot) in got.items():
        rmn, rmx, rmean, rcnt, rtot = ref[key]
        assert (cnt, tot) == (rcnt, rtot)
        if cnt:
            assert (mn, mx) == (rmn, rmx) and mean == pytest.approx(rmean, rel=1e-12)
        else:
            assert np.isnan(mean)


def test_interval_stats_in_order_data_is_exact_and_late_samples_are_dropped() -> None:
    rng = np.random.default_rng(9)
    batches = [Batch.build(np.arange(5), T0 + i * S, rng.normal(5, 1, 5),
                           np.where(np.arange(5) == i % 5, Quality.COMMS, 0)) for i in range(40)]
    st = IntervalStats(interval_s=10.0, grace_s=2.0)
    closed = []
    for seq, b in enumerate(batches, 1):
        st.add(b, seq)
        closed += st.close()
    assert [c.start_ns for c in closed] == [T0, T0 + 10 * S, T0 + 20 * S]  # [30, 40) needs data at 42 s
    ref = reference(batches, 10 * S)
    for c in closed:
        for j, ch in enumerate(c.channels):
            rmn, rmx, rmean, rcnt, rtot = ref[(c.start_ns, int(ch))]
            assert (c.vmin[j], c.vmax[j], int(c.count[j]), int(c.total[j])) == (rmn, rmx, rcnt, rtot)
            assert c.mean[j] == pytest.approx(rmean, rel=1e-12)
    assert st.first_open_seq() == 31  # the record that opened [30 s, 40 s)
    st.add(Batch.build([0, 1], T0 + 3 * S, [1.0, 2.0], 0), 99)  # interval already closed
    assert st.late_samples == 2
    assert st.close(now_ns=T0 + 50 * S)[0].start_ns == T0 + 30 * S


def polls(lo: int, hi: int) -> list[Batch]:
    out = []
    for i in range(lo, hi):
        rng = np.random.default_rng(i)
        v = np.round(rng.normal(20, 5, N_CH), 3)
        q = np.zeros(N_CH, np.uint8)
        q[(i + np.arange(N_CH)) % 5 == 0] = Quality.TIMEOUT
        v[q > 0] = np.nan
        out.append(Batch.build(np.arange(N_CH), TF + i * S + 1, v, q))
    return out


def check_stats(srv: Influxd, db: str, sent: list[Batch], intervals: list[int]) -> None:
    ref = reference(sent, 10 * S)
    got = srv.rows("SELECT * FROM stats_5m GROUP BY channel", db)
    assert sorted({r["time"] for r in got}) == intervals
    assert len(got) == len(intervals) * N_CH
    for r in got:
        ch = int(r["channel"][3:])
        mn, mx, mean, cnt, tot = ref[(r["time"], ch)]
        assert (r["min"], r["max"], r["count"], r["samples"]) == (mn, mx, cnt, tot)
        assert r["mean"] == pytest.approx(mean, rel=1e-12)


async def test_stats_reach_influx_and_survive_a_restart_mid_interval(
        influxd: Influxd, tmp_path: Path) -> None:
    db = unique_db("stats")
    cfg = make_config(tmp_path, influxd.url, db, extra="  stats_every: 10s")
    sent = polls(0, 46)
    h = Harness(cfg)
    await h.start()
    try:
        for b in sent[:15]:  # stop in the middle of [10 s, 20 s)
            await h.gw.journal.append_batch(b)
        await h.caught_up()
        assert not influxd.rows("SELECT * FROM stats_5m", db)  # nothing closed yet (grace 10 s)
    finally:
        await h.stop()
    h = Harness(make_config(tmp_path, influxd.url, db, extra="  stats_every: 10s"))
    await h.start()
    try:
        for b in sent[15:]:
            await h.gw.journal.append_batch(b)
        await h.caught_up()
    finally:
        await h.stop()
    # data up to 45 s closes [0,10), [10,20), [20,30) (each needs data 10 s past its end)
    check_stats(influxd, db, sent, [TF, TF + 10 * S, TF + 20 * S])


async def test_long_retention_policy_takes_statistics_and_events(influxd: Influxd, tmp_path: Path) -> None:
    db = unique_db("long")
    influxd.create_database(db)
    influxd.query(f'CREATE RETENTION POLICY "raw7d" ON "{db}" DURATION 7d REPLICATION 1', method="POST")
    influxd.query(f'CREATE RETENTION POLICY "y1" ON "{db}" DURATION 52w REPLICATION 1', method="POST")
    extra = "  stats_every: 10s\n  retention_policy: raw7d\n  long_retention_policy: y1"
    now = (time.time_ns() // (10 * S)) * 10 * S
    sent = [Batch.build(np.arange(N_CH), now - (30 - i) * S, np.full(N_CH, float(i)), 0) for i in range(30)]
    h = Harness(make_config(tmp_path, influxd.url, db, extra=extra))
    await h.start()
    try:
        for b in sent:
            await h.gw.journal.append_batch(b)
        await h.gw.journal.append_event({"type": "alarm", "ts": now - 5 * S, "channel": "CH-001", "index": 1,
                                         "level": "h", "value": 1.0})
        await h.caught_up()
    finally:
        await h.stop()
    assert influxd.rows('SELECT count(quality) FROM "raw7d"."gas"', db)[0]["count"] == 30 * 4
    assert not influxd.rows('SELECT * FROM "raw7d"."stats_5m"', db)
    assert len(influxd.rows('SELECT * FROM "y1"."stats_5m"', db)) >= 2 * N_CH
    assert len(influxd.rows('SELECT * FROM "y1"."alarms"', db)) == 1
    assert not influxd.rows('SELECT * FROM "y1"."gas"', db)
