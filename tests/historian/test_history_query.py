"""``safegw history`` and query_history: times, the journal source, and InfluxDB (real influxd)
agreeing with the journal on raw samples and on per-interval aggregates."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from gateway.app import Gateway
from gateway.cli import main
from gateway.config import load
from gateway.core.batch import Batch, Quality
from gateway.historian.history import HistoryError, aggregate, fmt_ns, parse_time, query_api, query_history
from gateway.historian.service import build_service
from gateway.store.journal import Journal
from tests.fixtures.helpers import async_wait_until
from tests.fixtures.influxd import Influxd, unique_db

pytestmark = pytest.mark.timeout(120)

NOW = 1_764_320_000_000_000_000  # 2025-11-28T08:53:20Z
T0 = 1_764_000_000_000_000_000


def write_config(tmp: Path, influx: str = "") -> Path:
    p = tmp / "gw.yaml"
    p.write_text(f"""
gateway:
  id: gw-hist
  site: "S1"
  state_dir: {tmp / "state"}
journal:
  max_age: 7d
devices:
  - name: plc
    protocol: modbus-tcp
    host: 127.0.0.1
    enabled: false
    channels:
      - {{name: GT-1, kind: gas, unit: "%LEL", address: "holding:0"}}
      - {{name: TT-1, kind: temperature, unit: C, address: "holding:1"}}
{influx}""")
    return p


def samples(n: int = 600) -> Batch:
    """Two channels, one sample a second each, some bad, some uncertain."""
    rng = np.random.default_rng(5)
    ts = T0 + np.repeat(np.arange(n), 2) * 10**9 + 7
    ch = np.tile([0, 1], n)
    v = np.round(rng.normal(10, 2, 2 * n), 3)
    q = np.zeros(2 * n, np.uint8)
    q[::13] = Quality.COMMS
    v[q >= Quality.BAD] = np.nan
    q[::17] = np.where(q[::17] == 0, Quality.CALIBRATING, q[::17])
    return Batch.build(ch, ts, v, q)


def fill_journal(state: Path, b: Batch, per: int = 40) -> None:
    with Journal(state / "journal.db") as j:
        for k in range(0, len(b), per):
            j.append_sync([b.select(np.arange(len(b)) // per == k // per)])


# --------------------------------------------------------------------------- times

@pytest.mark.parametrize("text, expect", [
    ("now", NOW),
    ("-1h", NOW - 3600 * 10**9),
    ("now-30m", NOW - 1800 * 10**9),
    ("now+2s", NOW + 2 * 10**9),
    ("-500ms", NOW - 500_000_000),
    ("2025-11-28T08:00:00Z", 1764316800 * 10**9),
    ("2025-11-28T16:00:00+08:00", 1764316800 * 10**9),
    ("2025-11-28 08:00:00", 1764316800 * 10**9),  # naive = UTC
    ("2025-11-28T08:00:00.123456789Z", 1764316800 * 10**9 + 123456789),
    ("1764316800", 1764316800 * 10**9),
    ("1764316800123456789", 1764316800123456789),
])
def test_parse_time(text: str, expect: int) -> None:
    assert parse_time(text, NOW) == expect


def test_parse_time_refuses_nonsense() -> None:
    with pytest.raises(HistoryError, match="not a time"):
        parse_time("yesterday-ish", NOW)


def test_fmt_ns_keeps_nanoseconds() -> None:
    assert fmt_ns(1764316800 * 10**9 + 5) == "2025-11-28T08:00:00.000000005Z"


def test_aggregate_by_hand() -> None:
    b = Batch.build([0] * 5, [0, 10**9, 59 * 10**9, 60 * 10**9, 61 * 10**9], [1.0, 3.0, np.nan, 10.0, 20.0],
                    [0, 0x41, 0x81, 0, 0])
    assert aggregate(b, 0, 60.0) == [[0, 2.0, 1.0, 3.0, 2], [60 * 10**9, 15.0, 10.0, 20.0, 2]]


# --------------------------------------------------------------------------- journal source

def test_history_from_journal_json_states_retention(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = write_config(tmp_path)
    b = samples()
    fill_journal(tmp_path / "state", b)
    code = main(["history", "-c", str(cfg_path), "TT-1", "--from", fmt_ns(T0),
                 "--to", fmt_ns(T0 + 100 * 10**9), "--format", "json"])
    out, err = capsys.readouterr()
    assert code == 0
    doc = json.loads(out)
    assert doc["source"] == "journal" and "7 days" in doc["note"] and "7 days" in err
    mine = b.select((b.channel == 1) & (b.ts < T0 + 100 * 10**9))
    assert [r["ts"] for r in doc["rows"]] == mine.ts.tolist()
    for r, v, q in zip(doc["rows"], mine.value.tolist(), mine.quality.tolist(), strict=True):
        assert r["quality"] == q
        assert (r["value"] is None) if q >= Quality.BAD else r["value"] == v


def test_history_table_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = write_config(tmp_path)
    fill_journal(tmp_path / "state", samples())
    assert main(["history", "-c", str(cfg_path), "GT-1", "--from", fmt_ns(T0),
                 "--to", fmt_ns(T0 + 3 * 10**9)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["time", "(UTC)", "value", "quality"]
    assert len(out) == 4 and out[1].startswith("2025-11-24T16:00:00.000000007Z")
    assert "bad(0x82)" in out[1] or "comms" in out[1]  # sample 0 of GT-1 is bad (COMMS)
    assert main(["history", "-c", str(cfg_path), "GT-1", "--from", fmt_ns(T0),
                 "--to", fmt_ns(T0 + 120 * 10**9), "--every", "1m", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "time,mean,min,max,count"
    assert len(lines) == 1 + 2


def test_history_unknown_channel_and_no_journal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = write_config(tmp_path)
    assert main(["history", "-c", str(cfg_path), "GT-9"]) == 1
    assert "no channel 'GT-9'" in capsys.readouterr().err
    assert main(["history", "-c", str(cfg_path), "GT-1"]) == 1
    assert "no journal" in capsys.readouterr().err


# --------------------------------------------------------------------------- InfluxDB source

async def test_influx_and_journal_agree(influxd: Influxd, tmp_path: Path) -> None:
    db = unique_db("hist")
    cfg_path = write_config(tmp_path,
                            f"influxdb: {{url: {influxd.url}, database: {db}, flush_every: 50ms}}\n")
    cfg = load(cfg_path)
    b = samples()
    gw = Gateway(cfg)
    assert cfg.influxdb is not None
    svc = build_service(gw, cfg.influxdb)
    await svc.start()
    task = asyncio.create_task(svc.run())
    try:
        for k in range(0, len(b), 100):
            await gw.journal.append_batch(b.select((np.arange(len(b)) // 100) == k // 100))
        await async_wait_until(lambda: svc.cursor >= gw.journal.last_seq, 30)
        t0, t1 = T0, T0 + 600 * 10**9
        for ch in ("GT-1", "TT-1"):
            fi = await query_history(cfg, ch, t0, t1)
            fj = await query_history(cfg, ch, t0, t1, source="journal", run_read=gw.journal.run_read)
            assert fi.source == "influxdb" and fj.source == "journal"
            assert fi.rows == fj.rows and len(fi.rows) == 600
            ai = await query_history(cfg, ch, t0, t1, 60.0)
            aj = await query_history(cfg, ch, t0, t1, 60.0, source="journal", run_read=gw.journal.run_read)
            assert [r[0] for r in ai.rows] == [r[0] for r in aj.rows]
            for ri, rj in zip(ai.rows, aj.rows, strict=True):
                assert ri[2:] == rj[2:]  # min, max, count exactly
                assert ri[1] == pytest.approx(rj[1], rel=1e-12)  # mean: summation order differs
        lim = await query_history(cfg, "GT-1", t0, t1, limit=10)
        assert len(lim.rows) == 10 and lim.truncated
        new_i = await query_history(cfg, "GT-1", t0, t1, limit=10, newest=True)
        new_j = await query_history(cfg, "GT-1", t0, t1, limit=10, newest=True, source="journal",
                                    run_read=gw.journal.run_read)
        assert new_i.rows == new_j.rows and new_i.rows[-1][0] == T0 + 599 * 10**9 + 7
        api = await query_api(SimpleNamespace(cfg=cfg, journal=gw.journal), "TT-1", t0, T0 + 599 * 10**9 + 7,
                              limit=5)
        assert api["source"] == "influxdb" and api["truncated"] and len(api["points"]) == 5
        assert api["points"][-1]["ts"] == fmt_ns(T0 + 599 * 10**9 + 7)  # 'to' is inclusive here
        agg = await query_api(SimpleNamespace(cfg=cfg, journal=gw.journal), "TT-1", t0, t1, every=60.0)
        assert len(agg["points"]) == 10 and set(agg["points"][0]) == {"ts", "mean", "min", "max", "n"}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await svc.stop()
        gw.journal.close()


async def test_influx_unreachable_is_a_clear_error(tmp_path: Path) -> None:
    from tests.fixtures.helpers import free_port

    cfg = load(write_config(tmp_path, f"influxdb: {{url: 'http://127.0.0.1:{free_port()}', timeout: 1s}}\n"))
    with pytest.raises(HistoryError, match=r"did not answer.*--source journal"):
        await query_history(cfg, "GT-1", T0, T0 + 10**9)


async def test_single_measurement_and_retention_policy(influxd: Influxd, tmp_path: Path) -> None:
    db = unique_db("hist1")
    influxd.create_database(db)
    influxd.query(f'CREATE RETENTION POLICY "r 1" ON "{db}" DURATION 3650d REPLICATION 1', method="POST")
    cfg = load(write_config(tmp_path, f"influxdb: {{url: {influxd.url}, database: {db}, flush_every: 50ms,"
                                      " measurement: single, measurement_name: plant,"
                                      " retention_policy: 'r 1', stats: false}\n"))
    b = samples(50)
    gw = Gateway(cfg)
    assert cfg.influxdb is not None
    svc = build_service(gw, cfg.influxdb)
    await svc.start()
    task = asyncio.create_task(svc.run())
    try:
        await gw.journal.append_batch(b)
        await async_wait_until(lambda: svc.cursor >= gw.journal.last_seq, 30)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await svc.stop()
        gw.journal.close()
    assert influxd.rows('SELECT count(quality) FROM "r 1"."plant"', db)[0]["count"] == 100
    h = await query_history(cfg, "TT-1", T0, T0 + 100 * 10**9)
    mine = b.select(b.channel == 1)
    assert [r[0] for r in h.rows] == mine.ts.tolist() and h.source == "influxdb"
