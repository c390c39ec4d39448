"""Central into VictoriaMetrics (samples) and PostgreSQL (events): real servers.

- every value, time (VictoriaMetrics keeps milliseconds), tag and quality back as sent,
  written as JSON lines (the default) or line protocol, and the queries (HTTP API)
  answer with what was stored;
- a worker (a ``safegw central`` process) SIGKILLed while it stores a backlog: another
  worker takes the gateway over; nothing is lost or doubled in either store;
- the store stopped while the gateway keeps journaling, then restarted: ingest waits
  (the cursor does not pass what the store acknowledged), then catches up exactly.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest

from central.query import late_query, samples_query
from gateway.core import chantable
from gateway.core.batch import Batch, Quality
from tests.fixtures.central import CentralSide, GatewaySide, central_config, central_pub
from tests.fixtures.helpers import async_wait_until
from tests.fixtures.victoria import VictoriaMetrics

pytestmark = pytest.mark.timeout(180)

N_CH = 8
KINDS = ["gas", "temperature", "pressure", "level"]


def table(gid: str, ts: int) -> dict[str, Any]:
    units = ["%LEL", "C", "MPa", "m"]
    chans = [{"index": i, "name": f"T{i:02d}", "kind": KINDS[i % 4], "unit": units[i % 4],
              "device": f"plc-{i // 4}", "range": [0.0, 100.0], "area": f"area-{i % 2}",
              "hazard_source": "HS-01" if i < 4 else None} for i in range(N_CH)]
    doc: dict[str, Any] = {"type": "channel_table", "ts": ts, "table_version": "", "fingerprint": "f" * 16,
                           "gateway_id": gid, "site_code": "91370100MA3C000000", "channels": chans}
    doc["table_version"] = chantable.version_of(doc)
    return doc


def readings(i: int, t0: int, n_ticks: int = 10) -> Batch:
    """n_ticks polls of all channels, 1 s apart, at sub-millisecond times; values as plants give them:
    at the instrument's resolution, float32 registers widened to float64, and a bad reading."""
    ch = np.tile(np.arange(N_CH, dtype=np.int32), n_ticks)
    tick = np.repeat(np.arange(n_ticks, dtype=np.int64), N_CH)
    ts = t0 + (i * n_ticks + tick) * 10**9 + ch.astype(np.int64) * 1_000_000 + 250_000
    rng = np.random.default_rng(i)
    val = np.round(rng.normal(20, 3, len(ch)), 2)
    f32 = ch % 4 == 1
    val[f32] = rng.normal(300, 5, int(f32.sum())).astype(np.float32).astype(np.float64)
    q = np.zeros(len(ch), np.uint8)
    q[(ch == 7) & (tick == 3)] = int(Quality.TIMEOUT)
    val[q != 0] = np.nan
    return Batch.build(ch, ts, val, q)


def _vm_cfg(vm: VictoriaMetrics, pg: str, **kw: Any) -> dict[str, Any]:
    return {"url": [vm.url], "events_dsn": pg, "linger": "20ms", **kw}


async def _gateway(tmp_path: Path, gid: str, cpub: Path) -> GatewaySide:
    return await GatewaySide(tmp_path, gid, tmp_path / "pub", [cpub]).start()


def _source(g: GatewaySide) -> dict[str, Any]:
    return {"id": g.id, "keys": str(g.pub), "mode": "pull",
            "pull": {"url": f"https://127.0.0.1:{g.port}", "tls_cert": str(g.cert), "wait": "500ms"}}


def _vm_count(vm: VictoriaMetrics, gid: str, name: str = "safegw_value") -> int:
    vm.flush()
    return sum(len(e["values"]) for e in vm.export(f'{name}{{gateway="{gid}"}}'))


@pytest.mark.parametrize("fmt", ["json", "influx"])
async def test_round_trip_tags_quality_and_queries(tmp_path: Path, pg_dsn: str, victoria: VictoriaMetrics,
                                                   fmt: str) -> None:
    (tmp_path / "pub").mkdir()
    cpub = central_pub(tmp_path, "prov", tmp_path / "pub")
    g = await _gateway(tmp_path, "gw-rt", cpub)
    cfg = central_config(tmp_path, "prov", [_source(g)],
                         victoriametrics=_vm_cfg(victoria, pg_dsn, format=fmt))
    c = await CentralSide(cfg).start()
    try:
        t0 = (time.time_ns() // 10**9 - 1800) * 10**9
        batches = [readings(i, t0) for i in range(6)]
        alarm = {"type": "alarm", "ts": t0 + 15 * 10**9, "index": 2, "channel": "T02", "level": "hh",
                 "value": 1.9, "transition": "raise"}
        # the table first (an alarm overtaking its table on the alarms lane would be tagged
        # by the table known then: docs/central.md, Channel names)
        await g.journal.append_many([table("gw-rt", t0), batches[0], batches[1]])
        await async_wait_until(lambda: "gw-rt" in c.node.tables, 30, what="the channel table stored")
        await g.journal.append_many([alarm, *batches[2:]])
        ts = np.concatenate([b.ts for b in batches])
        ch = np.concatenate([b.channel for b in batches])
        val = np.concatenate([b.value for b in batches])
        q = np.concatenate([b.quality for b in batches])
        good = q == 0
        await async_wait_until(lambda: _vm_count(victoria, "gw-rt") == int(good.sum())
                               and _vm_count(victoria, "gw-rt", "safegw_quality") == len(ts), 30,
                               what="every sample in VictoriaMetrics")
        got = {}
        for e in victoria.export('{__name__=~"safegw_(value|quality)",gateway="gw-rt"}'):
            m = e["metric"]
            got[(m["__name__"], m["channel"])] = (m, e["timestamps"], e["values"])
        tbl = table("gw-rt", t0)["channels"]
        for i in range(N_CH):
            c_ = tbl[i]
            sel = ch == i
            m, tms, vals = got[("safegw_quality", c_["name"])]
            want_tags = {"gateway": "gw-rt", "site": "91370100MA3C000000", "device": c_["device"],
                         "channel": c_["name"], "kind": c_["kind"], "unit": c_["unit"], "area": c_["area"]}
            if c_["hazard_source"]:
                want_tags["hazard_source"] = c_["hazard_source"]
            assert {k: v for k, v in m.items() if k != "__name__"} == want_tags
            # VictoriaMetrics keeps milliseconds
            assert tms == (ts[sel] // 10**6).tolist()
            assert [int(v) for v in vals] == q[sel].tolist()
            m, tms, vals = got[("safegw_value", c_["name"])]
            gs = sel & good
            assert tms == (ts[gs] // 10**6).tolist()
            v = np.array(vals, dtype=np.float64)
            if c_["kind"] == "temperature":
                # float32 readings: 12 significant digits give back the very float32
                assert np.array_equal(v.astype(np.float32), val[gs].astype(np.float32))
            else:
                assert np.array_equal(v, val[gs])  # instrument resolution: bit-identical

        # events in PostgreSQL, tagged with the channel's place
        with psycopg.connect(pg_dsn) as db:
            rows = db.execute("SELECT seq, type, level, channel, device, area, hazard_source, site "
                              "FROM events WHERE origin='gw-rt' ORDER BY seq").fetchall()
        assert [r[1] for r in rows] == ["channel_table", "alarm"]
        assert rows[1][2:] == ("hh", "T02", "plc-0", "area-0", "HS-01", "91370100MA3C000000")

        # the HTTP API answers with what was stored
        token = c.node.tokens.add("ops", "viewer", by="test")
        h = {"Authorization": f"Bearer {token}"}
        tls = ssl.create_default_context(cafile=str(c.cert))
        async with httpx.AsyncClient(verify=tls, timeout=30) as http:
            r = await http.get(c.url + "/query/v1/samples", headers={})
            assert r.status_code == 401
            start = t0 / 1e9
            r = await http.get(c.url + "/query/v1/samples", headers=h, params={
                "gateway": "gw-rt", "channel": "T00", "from": str(start), "to": str(start + 60),
                "every": "10s", "agg": "max"})
            assert r.status_code == 200, r.text
            pts = r.json()["points"]
            sel = (ch == 0) & good
            want = [[start + 10 * k, float(val[sel][(ts[sel] >= t0 + k * 10**10)
                                                          & (ts[sel] < t0 + (k + 1) * 10**10)].max())]
                    for k in range(6)]
            assert pts == want
            r = await http.get(c.url + "/query/v1/samples", headers=h, params={
                "gateway": "gw-rt", "channel": "T00", "from": "0", "to": "now", "every": "1ms"})
            assert r.status_code == 400 and r.json()["param"] == "every"
            for key, name in (("gateway", "gw-rt"), ("area", "area-0"), ("hazard_source", "HS-01")):
                r = await http.get(c.url + "/query/v1/alarms", headers=h,
                                   params={key: name, "from": str(start), "to": str(start + 100)})
                assert r.status_code == 200, r.text
                assert [(a["gateway"], a["level"], a["channel"]) for a in r.json()["alarms"]] == [
                    ("gw-rt", "hh", "T02")]
            r = await http.get(c.url + "/query/v1/alarms", headers=h, params={"area": "area-1"})
            assert r.json()["alarms"] == []
            # its newest sample is ~30 min old: late after 10 min, not after 1 h
            r = await http.get(c.url + "/query/v1/late", headers=h, params={"after": "10m"})
            assert [x["gateway"] for x in r.json()["late"]] == ["gw-rt"]
            r = await http.get(c.url + "/query/v1/late", headers=h, params={"after": "1h"})
            assert r.json()["late"] == []
        # and so does the command line, for any gateway
        cli = _write_cfg(tmp_path / "prov.yaml", {
            "node": {"id": "prov", "state_dir": str(tmp_path / "prov")}, "sources": [_source(g)],
            "victoriametrics": _vm_cfg(victoria, pg_dsn)})
        out = _cli(cli, "history", "gw-rt", "T00", "--from", str(start), "--to", str(start + 60),
                   "--every", "10s", "--agg", "max")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["points"] == want
        out = _cli(cli, "alarms", "--hazard-source", "HS-01", "--from", str(start), "--to", "now")
        assert [a["channel"] for a in json.loads(out.stdout)] == ["T02"]
        out = _cli(cli, "history", "gw-rt", "T00", "--every", "soon")
        assert out.returncode == 2 and "every" in out.stderr
        # the Prometheus form of "late" on VictoriaMetrics agrees
        res = victoria.query(late_query("safegw"))
        assert [x["metric"]["gateway"] for x in res] == ["gw-rt"]
        assert 1700 < float(res[0]["value"][1]) < 3600
        assert "max_over_time" in samples_query("safegw", "gw-rt", "T00", "max", 10)
    finally:
        await c.stop()
        await g.stop()


def _write_cfg(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


def _spawn(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    """A central worker as its own process (``safegw central -c FILE``)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    exe = str(Path(sys.executable).parent / "safegw")
    with log.open("wb") as err:
        return subprocess.Popen([exe, "central", "-c", str(cfg)], env=env, stdout=subprocess.DEVNULL,
                                stderr=err)


def _cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).parent / "safegw")
    return subprocess.run([exe, "central", "-c", str(cfg), *args], capture_output=True, text=True, timeout=60)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


def _pg_cursor(dsn: str, origin: str) -> int:
    with psycopg.connect(dsn) as db:
        try:
            row = db.execute("SELECT main_seq FROM origins WHERE id=%s", (origin,)).fetchone()
        except psycopg.errors.UndefinedTable:  # the worker has not made its tables yet
            return 0
    return int(row[0]) if row else 0


async def test_worker_sigkilled_mid_batch_loses_and_doubles_nothing(tmp_path: Path, pg_dsn: str,
                                                                     victoria: VictoriaMetrics) -> None:
    (tmp_path / "pub").mkdir()
    cpub = central_pub(tmp_path, "w1", tmp_path / "pub")
    import shutil

    (tmp_path / "w2").mkdir()
    shutil.copytree(tmp_path / "w1" / "keys", tmp_path / "w2" / "keys")
    g = await _gateway(tmp_path, "gw-k", cpub)
    t0 = (time.time_ns() // 10**9 - 5 * 3600) * 10**9  # the backlog spans 3 h 20 min, all past
    n_batches, ticks = 120, 100  # 96,000 samples, 800 a record: a backlog that takes a while
    await g.journal.append_many([table("gw-k", t0)] + [readings(i, t0, ticks) for i in range(n_batches)]
                                + [{"type": "alarm", "ts": t0 + 5, "index": 1, "level": "h", "value": 2.0}])
    head = n_batches + 2

    def cfg(w: str) -> Path:
        return _write_cfg(tmp_path / f"{w}.yaml", {
            "node": {"id": w, "state_dir": str(tmp_path / w)}, "listen": {"address": "127.0.0.1:0"},
            "state": {"backend": "postgres", "dsn": pg_dsn, "worker": w, "lease": "2s"},
            "sources": [_source(g) | {"pull": {"url": f"https://127.0.0.1:{g.port}", "tls_cert": str(g.cert),
                                                "wait": "500ms", "max_bytes": "64KB"}}],
            # small writes, one at a time: the kill lands between acknowledged writes
            "victoriametrics": _vm_cfg(victoria, pg_dsn, batch_bytes=65536, linger="0s", concurrency=1)})

    w1 = _spawn(cfg("w1"), tmp_path / "w1.log")
    try:
        # kill it once some, not all, of the backlog is stored
        await async_wait_until(lambda: w1.poll() is not None or 10 < _pg_cursor(pg_dsn, "gw-k") < head - 20,
                               60, what="worker 1 midway through the backlog")
        assert w1.poll() is None, _tail(tmp_path / "w1.log")
        w1.send_signal(signal.SIGKILL)
        w1.wait(10)
        at_kill = _pg_cursor(pg_dsn, "gw-k")
        assert at_kill < head
        w2 = _spawn(cfg("w2"), tmp_path / "w2.log")
        try:
            await async_wait_until(lambda: _pg_cursor(pg_dsn, "gw-k") == head, 90,
                                   what="worker 2 to finish")
        finally:
            w2.terminate()
            w2.wait(20)
        batches = [readings(i, t0, ticks) for i in range(n_batches)]
        q = np.concatenate([b.quality for b in batches])
        assert _vm_count(victoria, "gw-k", "safegw_quality") == len(q)
        assert _vm_count(victoria, "gw-k") == int((q == 0).sum())
        # per series: strictly increasing times, none twice
        for e in victoria.export('{__name__=~"safegw_.*",gateway="gw-k"}'):
            assert np.all(np.diff(e["timestamps"]) > 0)
        with psycopg.connect(pg_dsn) as db:
            assert db.execute("SELECT type, count(*) FROM events WHERE origin='gw-k' GROUP BY type "
                              "ORDER BY type").fetchall() == [("alarm", 1), ("channel_table", 1)]
    finally:
        if w1.poll() is None:
            w1.kill()
            w1.wait()
        await g.stop()


async def test_store_stopped_and_restarted(tmp_path: Path, pg_dsn: str, victoria: VictoriaMetrics) -> None:
    (tmp_path / "pub").mkdir()
    cpub = central_pub(tmp_path, "prov", tmp_path / "pub")
    g = await _gateway(tmp_path, "gw-s", cpub)
    cfg = central_config(tmp_path, "prov", [_source(g)], state={"backend": "postgres", "dsn": pg_dsn},
                         victoriametrics=_vm_cfg(victoria, pg_dsn, retry_max="1s"))
    c = await CentralSide(cfg).start()
    t0 = (time.time_ns() // 10**9 - 3600) * 10**9
    try:
        await g.journal.append_many([table("gw-s", t0)] + [readings(i, t0) for i in range(5)])
        await async_wait_until(lambda: _pg_cursor(pg_dsn, "gw-s") == 6, 30, what="the first part stored")
        victoria.stop()
        await g.journal.append_many([readings(i, t0) for i in range(5, 40)])
        st = c.node.store
        assert st is not None
        await async_wait_until(lambda: st.writer.state == "failing", 30, what="the store to fail")
        held = _pg_cursor(pg_dsn, "gw-s")
        # the gateway keeps journaling; central's cursor waits for the store
        await g.journal.append_many([readings(i, t0) for i in range(40, 60)])
        await async_wait_until(lambda: st.writer.failures >= 3, 30, what="a few failed writes")
        # the alarms lane still talks to the gateway: central sees its head move on, its
        # own cursor stays where the store last acknowledged (ingest is one envelope at a
        # time per source: the one that failed was never committed)
        await async_wait_until(lambda: c.node.status["gw-s"].head == 61, 30, what="the head seen")
        assert _pg_cursor(pg_dsn, "gw-s") == held
        assert c.node.status["gw-s"].as_dict()["lag"] == 61 - held
        victoria.start()
        await async_wait_until(lambda: _pg_cursor(pg_dsn, "gw-s") == 61, 60, what="the backlog stored")
        await async_wait_until(lambda: c.node.status["gw-s"].as_dict()["lag"] == 0, 30, what="lag back to 0")
        q = np.concatenate([readings(i, t0).quality for i in range(60)])
        assert _vm_count(victoria, "gw-s", "safegw_quality") == len(q)
        assert _vm_count(victoria, "gw-s") == int((q == 0).sum())
        assert st.writer.state == "ok"
    finally:
        await c.stop()
        await g.stop()


def test_store_urls_logged_without_credentials() -> None:
    from central.store_vm import without_credentials

    assert without_credentials("write failed: http://ops:s3cret@vm:8428/write") == "write failed: http://***@vm:8428/write"
    assert without_credentials("http://vm:8428/write") == "http://vm:8428/write"


def test_config_example_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    root = Path(__file__).resolve().parents[2]
    assert main(["central", "--check", "-c", str(root / "config" / "central-province-vm.yaml")]) == 0
    assert capsys.readouterr().out.startswith("ok: central node province-37")
    f = tmp_path / "c.yaml"
    f.write_text("node: {id: prov}\nvictoriametrics:\n  url: [ftp://vm:8428]\n  metrix: x\n")
    assert main(["central", "--check", "-c", str(f)]) == 2
    out = capsys.readouterr().out
    assert f"{f}:3:8: victoriametrics.url" in out and "/insert/<tenant>/influx/write" in out, out
    assert f"{f}:4:3: victoriametrics.metrix:" in out, out
    f.write_text("node: {id: prov}\nvictoriametrics:\n  url: ['http://vm:8480/insert/0/influx/write']\n")
    assert main(["central", "--check", "-c", str(f)]) == 2
    out = capsys.readouterr().out
    assert "victoriametrics.events_dsn: events go to PostgreSQL" in out, out
    assert "victoriametrics.query_url" in out, out
    f.write_text("node: {id: prov}\nvictoriametrics: {url: ['http://vm:8428'], events_dsn: 'postgresql://x/y'}\n"
                 "influxdb: {url: 'http://influx:8086', database: d}\n")
    assert main(["central", "--check", "-c", str(f)]) == 2
    out = capsys.readouterr().out
    assert "victoriametrics.journal: InfluxDB is written from the per-origin journal" in out, out


async def test_writer_fails_over_between_urls(tmp_path: Path, pg_dsn: str, victoria: VictoriaMetrics) -> None:
    """Several write URLs (a cluster's vminserts): a dead one is skipped, the data arrives.

    Debian ships the single node only, which answers 400 to the cluster's
    ``/insert/<tenant>/influx/write`` and ``/insert/<tenant>/prometheus/api/v1/import``:
    those shapes are checked in the config (here and tests/central/test_central_vm_import.py),
    the writing itself is tested on the single node's ``/api/v1/import``."""
    from central.config_vm import VictoriaMetricsSection
    from central.store_vm import VmStore
    from gateway.store.journal import Journal
    from tests.fixtures.helpers import free_port

    sec = VictoriaMetricsSection(url=[f"http://127.0.0.1:{free_port()}", victoria.url], events_dsn=pg_dsn,
                                 linger=0.0, retry_max="500ms")
    assert sec.write_urls()[1] == victoria.url + "/api/v1/import"
    cluster = VictoriaMetricsSection(url=["http://vminsert:8480/insert/7/influx/write"],
                                     query_url="http://vmselect:8481/select/7/prometheus", format="influx")
    assert cluster.write_urls() == ["http://vminsert:8480/insert/7/influx/write"]
    assert cluster.prometheus_url() == "http://vmselect:8481/select/7/prometheus"
    cluster = VictoriaMetricsSection(url=["http://vminsert:8480/insert/7/influx/write"],
                                     query_url="http://vmselect:8481/select/7/prometheus")
    assert cluster.write_urls() == ["http://vminsert:8480/insert/7/prometheus/api/v1/import"]
    t0 = (time.time_ns() // 10**9 - 600) * 10**9
    j = Journal(tmp_path / "j.db", sync="normal")
    await j.append_many([table("gw-f", t0), readings(0, t0)])
    recs = j.read_sync(0, 10)
    j.close()
    store = VmStore(sec, pg_dsn)
    await store.open()
    try:
        await store.put("gw-f", recs, None, main_lane=True)
        assert store.writer.failures >= 1 and store.writer.state == "ok"
    finally:
        await store.close()
    assert _vm_count(victoria, "gw-f", "safegw_quality") == len(readings(0, t0))


async def test_events_older_than_events_keep_are_pruned_at_start(tmp_path: Path, pg_dsn: str,
                                                                 victoria: VictoriaMetrics) -> None:
    """Central's housekeeping deletes events older than ``victoriametrics.events_keep`` (at
    start, then hourly); younger ones, and the other tables, stay."""
    from central.events_pg import EventStore, event_row

    day = 86400 * 10**9
    now = time.time_ns()
    ev = EventStore(pg_dsn)
    await ev.open()  # the schema, as a worker that ran earlier left it
    try:
        rows = [event_row("gw-old", seq, {"type": "alarm", "ts": now - age, "channel": "T00", "level": "h",
                                          "value": 1.0, "transition": "raise"}, None)
                for seq, age in ((1, 800 * day), (2, 367 * day), (3, 365 * day), (4, day))]
        await ev.put(rows, {"gw-old": (now - day, 4)})
    finally:
        await ev.close()
    (tmp_path / "pub").mkdir()
    central_pub(tmp_path, "prov", tmp_path / "pub")
    cfg = central_config(tmp_path, "prov", [], victoriametrics=_vm_cfg(victoria, pg_dsn, events_keep="366d"))
    c = await CentralSide(cfg).start()

    def seqs() -> list[int]:
        with psycopg.connect(pg_dsn) as db:
            return [r[0] for r in db.execute("SELECT seq FROM events WHERE origin='gw-old' ORDER BY seq")]

    try:
        await async_wait_until(lambda: seqs() == [3, 4], 30, what="the events older than 366 days pruned")
        assert await c.node.prune_events() == 0  # again: nothing more to prune
        with psycopg.connect(pg_dsn) as db:
            assert db.execute("SELECT last_seq FROM origin_data WHERE origin='gw-old'").fetchone() == (4,)
    finally:
        await c.stop()
    with pytest.raises(ValueError, match="events_keep"):
        central_config(tmp_path, "prov2", [], victoriametrics=_vm_cfg(victoria, pg_dsn, events_keep="30d"))
