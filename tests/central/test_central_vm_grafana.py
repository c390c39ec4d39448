"""The province dashboard (docs/grafana/province-overview.json): well-formed, and every
query in it runs against a real VictoriaMetrics (PromQL) or PostgreSQL (SQL) holding
data stored by central's store, with the answers the data implies."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest

from central.config_vm import VictoriaMetricsSection
from central.store_vm import VmStore
from gateway.core import chantable
from gateway.core.batch import Batch, Quality
from gateway.core.record import Record
from gateway.store.journal import Journal
from tests.fixtures.victoria import VictoriaMetrics

pytestmark = pytest.mark.timeout(120)

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "province-overview.json"
VARS = {"$gateway": "gw-a", "$channel": "T00", "$area": "north", "$hazard_source": "HS-01",
        "$__interval": "1m"}


def _table(gid: str, ts: int) -> dict[str, Any]:
    chans = [{"index": i, "name": f"T{i:02d}", "kind": "gas", "unit": "%LEL", "device": "det",
              "area": "north" if i < 2 else "south", "hazard_source": "HS-01" if i == 0 else None}
             for i in range(4)]
    doc: dict[str, Any] = {"type": "channel_table", "ts": ts, "table_version": "", "fingerprint": "0" * 16,
                           "gateway_id": gid, "site_code": "S1", "channels": chans}
    doc["table_version"] = chantable.version_of(doc)
    return doc


async def _records(tmp: Path, gid: str, t0: int, bad: bool) -> list[Record]:
    ch = np.tile(np.arange(4, dtype=np.int32), 60)
    ts = t0 + np.repeat(np.arange(60, dtype=np.int64), 4) * 10**9
    val = np.round(np.linspace(1, 60, 240), 2)
    q = np.zeros(240, np.uint8)
    if bad:
        q[ch == 3] = int(Quality.TIMEOUT)
        val[ch == 3] = np.nan
    alarm = {"type": "alarm", "ts": t0 + 5 * 10**9, "index": 0, "channel": "T00", "level": "h", "value": 41.0}
    j = Journal(tmp / f"{gid}.db", sync="normal")
    try:
        await j.append_many([_table(gid, t0), Batch.build(ch, ts, val, q), alarm])
        return j.read_sync(0, 10)
    finally:
        j.close()


def _promql(d: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in d["panels"] for t in p["targets"] if "expr" in t]


def _sql(d: dict[str, Any]) -> list[str]:
    return [t["rawSql"] for p in d["panels"] for t in p["targets"] if "rawSql" in t]


def _fill(q: str, now: float) -> str:
    for k, v in VARS.items():
        q = q.replace(k, v)
    # Grafana's PostgreSQL macros
    q = q.replace("$__unixEpochFrom()", str(int(now - 6 * 3600)))
    return q.replace("$__unixEpochTo()", str(int(now)))


async def test_dashboard_queries_answer_on_stored_data(tmp_path: Path, pg_dsn: str,
                                                       victoria: VictoriaMetrics) -> None:
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] and d["panels"] and {v["name"] for v in d["templating"]["list"]} == {
        "gateway", "channel", "area", "hazard_source"}
    now = time.time()
    recent = (int(now) - 120) * 10**9
    store = VmStore(VictoriaMetricsSection(url=[victoria.url], events_dsn=pg_dsn, linger=0.0), pg_dsn)
    await store.open()
    try:
        two_hours_ago = recent - 7200 * 10**9
        for gid, t0, bad in (("gw-a", recent, False), ("gw-b", recent, True),
                             ("gw-late", two_hours_ago, False)):
            recs = await _records(tmp_path, gid, t0, bad)
            await store.put(gid, recs, None, main_lane=True)
    finally:
        await store.close()
    victoria.flush()

    answers: dict[str, list[dict[str, Any]]] = {}
    async with httpx.AsyncClient(base_url=victoria.url, timeout=30) as http:
        for expr in _promql(d):
            r = await http.get("/api/v1/query_range", params={
                "query": _fill(expr, now), "start": now - 3 * 3600, "end": now, "step": "60s"})
            assert r.status_code == 200, (expr, r.text)
            answers[expr] = r.json()["data"]["result"]
            assert answers[expr], f"no data for {expr}"
        for var in d["templating"]["list"]:
            label = var["query"]["query"].split(",")[-1].strip(" )")
            r = await http.get(f"/api/v1/label/{label}/values", params={"match[]": "safegw_value"})
            assert r.json()["data"], label

    def last(expr_start: str) -> dict[str, float]:
        (expr,) = [e for e in answers if e.startswith(expr_start)]
        return {s["metric"].get("gateway", ""): float(s["values"][-1][1]) for s in answers[expr]}

    assert last("count(count by (gateway)") == {"": 2.0}  # gw-late is not reporting
    share_bad = last("sum by (gateway) (count_gt_over_time")
    assert share_bad["gw-b"] == pytest.approx(0.25) and share_bad["gw-a"] == 0
    (hs,) = [e for e in answers if 'hazard_source="' in _fill(e, now) or "$hazard_source" in e]
    assert {s["metric"]["channel"] for s in answers[hs]} == {"T00"}
    with psycopg.connect(pg_dsn) as db:
        for sql in _sql(d):
            rows = db.execute(_fill(sql, now)).fetchall()
            if "FROM events" in sql:
                assert sorted(r[1] for r in rows) == ["gw-a", "gw-b", "gw-late"]  # all within 6 h
            else:
                late = {r[0]: float(r[1]) for r in rows}
                assert late["gw-late"] > 7000 and late["gw-a"] < 600


def _replay(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


async def test_five_minute_statistics_by_vmalert(tmp_path: Path, pg_dsn: str,
                                                 victoria: VictoriaMetrics) -> None:
    """config/vm/stats-5m.rules.yml run by vmalert (replay) from the raw store into a
    second VictoriaMetrics (the ≥ 1 year one): per 5 minutes, the channel's mean, min,
    max and count over (T - 5 min, T]."""
    import shutil

    vmalert = shutil.which("vmalert")
    if vmalert is None:
        pytest.skip("vmalert is not installed (Debian package victoria-metrics)")
    rules = DASHBOARD.parents[2] / "config" / "vm" / "stats-5m.rules.yml"
    year = VictoriaMetrics(tmp_path / "vm-1y", retention="400d")
    year.start()
    try:
        start = (int(time.time()) // 3600 - 2) * 3600  # a whole hour, two hours ago
        store = VmStore(VictoriaMetricsSection(url=[victoria.url], events_dsn=pg_dsn, linger=0.0), pg_dsn)
        await store.open()
        try:
            ch = np.zeros(1800, np.int32)
            ts = start * 10**9 + np.arange(1800, dtype=np.int64) * 10**9
            val = np.round(np.sin(np.arange(1800) / 100) * 10 + 20, 2)
            j = Journal(tmp_path / "s.db", sync="normal")
            await j.append_many([_table("gw-s", start * 10**9), Batch.build(ch, ts, val, 0)])
            recs = j.read_sync(0, 10)
            j.close()
            await store.put("gw-s", recs, None, main_lane=True)
        finally:
            await store.close()
        victoria.flush()
        iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start))
        iso_to = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start + 1800))
        r = _replay([vmalert, f"-rule={rules}", f"-datasource.url={victoria.url}",
                     f"-remoteWrite.url={year.url}", f"-replay.timeFrom={iso}", f"-replay.timeTo={iso_to}",
                     "-replay.disableProgressBar", "-replay.rulesDelay=0s", "-loggerLevel=ERROR"])
        assert r.returncode == 0, r.stderr[-2000:]
        year.flush()
        stats = year.export('{__name__=~"safegw_value:.*",gateway="gw-s"}')
        got = {e["metric"]["__name__"]: e for e in stats}
        assert set(got) == {"safegw_value:avg_5m", "safegw_value:min_5m", "safegw_value:max_5m",
                            "safegw_value:count_5m"}
        assert got["safegw_value:avg_5m"]["metric"]["channel"] == "T00"
        assert got["safegw_value:avg_5m"]["metric"]["hazard_source"] == "HS-01"
        sec = np.arange(1800) + start
        checked = 0
        for k, t_ms in enumerate(got["safegw_value:max_5m"]["timestamps"]):
            t = t_ms / 1000
            window = (sec > t - 300) & (sec <= t)
            if window.sum() < 300:
                continue  # an edge of the replay range
            assert got["safegw_value:max_5m"]["values"][k] == val[window].max()
            assert got["safegw_value:min_5m"]["values"][k] == val[window].min()
            assert got["safegw_value:count_5m"]["values"][k] == 300
            assert got["safegw_value:avg_5m"]["values"][k] == pytest.approx(val[window].mean(), rel=1e-9)
            checked += 1
        assert checked >= 4
    finally:
        year.stop()
