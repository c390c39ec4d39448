"""The historian against a real InfluxDB 1.x (Debian's influxd, started by tests/fixtures/influxd.py).

Samples and events go into the gateway's journal; the ``influxdb`` service writes them;
the tests read them back with InfluxQL and compare values bit for bit, timestamps to the
nanosecond, and tags. Faults: the server stopped in the middle of ingest and restarted,
a missing database, a field type conflict and points beyond retention in the middle of
a backlog, authentication (401).
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.core.batch import Batch, Quality
from gateway.historian.service import CONSUMER
from tests.fixtures.helpers import async_wait_until
from tests.fixtures.historian import KINDS, N_CH, T0, Harness, batch, harness, make_config
from tests.fixtures.influxd import Influxd, unique_db

pytestmark = pytest.mark.timeout(120)


def rows(srv: Influxd, db: str, q: str) -> list[dict[str, Any]]:
    return srv.rows(q, db)


# --------------------------------------------------------------------------- round trip

async def test_samples_round_trip_values_times_tags(influxd: Influxd, tmp_path: Path) -> None:
    db = unique_db()
    cfg = make_config(tmp_path, influxd.url, db)
    sent = [batch(i) for i in range(30)]
    async with harness(cfg) as h:
        for b in sent:
            await h.gw.journal.append_batch(b)
        await h.caught_up()
    allb = Batch.concat(sent)
    got = rows(influxd, db, 'SELECT value, quality FROM /gas|temperature|pressure/ GROUP BY *')
    assert len(got) == len(allb)
    by_key = {(r["channel"], r["time"]): r for r in got}
    for k in range(len(allb)):
        ch, ts, v, q = int(allb.channel[k]), int(allb.ts[k]), float(allb.value[k]), int(allb.quality[k])
        r = by_key[(f"CH-{ch:03d}", ts)]  # time to the nanosecond
        assert r["quality"] == q
        if q >= Quality.BAD:
            assert r["value"] is None  # bad samples: quality only
        else:
            assert np.float64(r["value"]).view(np.int64) == np.float64(v).view(np.int64), (r, v)
        assert r["_measurement"] == KINDS[ch % 3]
        assert r["gateway"] == "gw-test-1" and r["site"] == "91370100MA3C000000"
        assert r["device"] == "plc-1" and r["kind"] == KINDS[ch % 3]
        assert r["unit"] == f"u,{ch % 2}" and r["area"] == "Tank farm=1"
        assert (r["hazard_source"] or None) == (f"HS {ch % 2}" if ch % 4 == 0 else None)


async def test_exact_float_extremes_round_trip(influxd: Influxd, tmp_path: Path) -> None:
    db = unique_db()
    cfg = make_config(tmp_path, influxd.url, db)
    vals = np.array([0.1, -0.0, 1e-300, 5e-324, 1.7976931348623157e308, 123456789.12345678, -3.3,
                     np.float32(0.1).item(), 2.0**60, 1e22, 7.0, -1e-12])
    b = Batch.build(np.arange(12), T0, vals, 0)
    async with harness(cfg) as h:
        await h.gw.journal.append_batch(b)
        await h.caught_up()
    got = rows(influxd, db, 'SELECT value FROM /gas|temperature|pressure/ GROUP BY channel')
    back = {int(r["channel"][3:]): r["value"] for r in got}
    for i, v in enumerate(vals):
        # bit-identical; JSON output cannot tell -0.0 from 0
        same = np.float64(back[i]).view(np.int64) == np.float64(v).view(np.int64)
        assert same or (v == 0 and back[i] == 0), (i, v, back[i])


async def test_events_and_alarms_have_their_own_measurements(influxd: Influxd, tmp_path: Path) -> None:
    db = unique_db()
    cfg = make_config(tmp_path, influxd.url, db)
    async with harness(cfg) as h:
        await h.gw.journal.append_event({"type": "alarm", "ts": T0 + 5, "channel": 3, "level": "hh",
                                         "state": "active", "value": 11.5, "limit": 11,
                                         "message": 'say "hi", x=1'})
        # the shape rules/events.py gives alarm transitions: channel by name and index
        await h.gw.journal.append_event({
            "type": "alarm", "id": None, "ts": T0 + 7, "channel": "CH-004", "index": 4, "kind": "temperature",
            "unit": "u,0", "rule": "limit", "level": "h", "code": 2, "transition": "raise",
            "state": "active_unacked", "priority": "high", "value": 10.5, "limit": 10.0, "who": None})
        await h.gw.journal.append_event({"type": "register", "ts": T0 + 6, "register": "hidden_danger",
                                         "action": "reported", "details": {"a": [1, 2]}})
        await h.caught_up()
    al = rows(influxd, db, "SELECT * FROM alarms ORDER BY time")
    assert len(al) == 2
    a = al[0]
    assert a["time"] == T0 + 5 and a["channel"] == "CH-003" and a["level"] == "hh" and a["state"] == "active"
    assert a["value"] == 11.5 and a["limit"] == 11 and a["message"] == 'say "hi", x=1'
    assert a["device"] == "plc-1" and a["gateway"] == "gw-test-1"
    r = al[1]
    assert (r["time"], r["channel"], r["device"], r["kind"], r["level"], r["rule"], r["priority"]) == (
        T0 + 7, "CH-004", "plc-1", "temperature", "h", "limit", "high")
    assert r["area"] == "Tank farm=1" and r["hazard_source"] == "HS 0"  # from the channel table
    assert r["value"] == 10.5 and r["code"] == 2 and r["journal_seq"] == 2
    ev = rows(influxd, db, "SELECT * FROM events")
    assert len(ev) == 1 and ev[0]["type"] == "register" and ev[0]["details"] == '{"a":[1,2]}'


# --------------------------------------------------------------------------- faults

async def test_database_missing_is_created(influxd: Influxd, tmp_path: Path) -> None:
    db = unique_db("created")
    cfg = make_config(tmp_path, influxd.url, db)
    async with harness(cfg) as h:
        await h.gw.journal.append_batch(batch(0))
        await h.caught_up()
    assert rows(influxd, db, "SELECT count(quality) FROM gas")[0]["count"] == 4


async def test_database_missing_and_creation_off_says_what_to_create(
        influxd: Influxd, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = unique_db("absent")
    cfg = make_config(tmp_path, influxd.url, db, extra="  create_database: false")
    caplog.set_level(logging.ERROR, "gateway.historian")
    async with harness(cfg) as h:
        await h.gw.journal.append_batch(batch(0))
        await async_wait_until(lambda: h.svc.writer.state == "no_database", 10, what="no_database state")
        assert h.svc.cursor == 0 and h.gw.journal.cursor(CONSUMER) == 0  # nothing acknowledged
        assert f'CREATE DATABASE "{db}"' in caplog.text
        influxd.create_database(db)  # the operator follows the advice
        await h.caught_up()
    assert rows(influxd, db, "SELECT count(quality) FROM gas")[0]["count"] == 4


async def test_server_stopped_during_ingest_then_restarted_loses_and_duplicates_nothing(
        influxd_factory: Any, tmp_path: Path) -> None:
    srv: Influxd = influxd_factory()
    db = unique_db()
    cfg = make_config(tmp_path, srv.url, db, extra="  batch_points: 50")
    n_batches = 120
    async with harness(cfg) as h:
        for i in range(40):
            await h.gw.journal.append_batch(batch(i))
        await h.caught_up()
        srv.kill()  # abruptly, as a power cut would
        for i in range(40, 80):
            await h.gw.journal.append_batch(batch(i))
        await async_wait_until(lambda: h.svc.writer.state == "retrying", 10, what="retrying state")
        cursor_during = h.svc.cursor
        assert cursor_during < h.gw.journal.last_seq
        srv.start()
        for i in range(80, n_batches):
            await h.gw.journal.append_batch(batch(i))
        await h.caught_up(60)
    got = rows(srv, db, "SELECT value, quality FROM /gas|temperature|pressure/ GROUP BY channel")
    keys = [(r["channel"], r["time"]) for r in got]
    assert len(keys) == len(set(keys)) == n_batches * N_CH
    q = rows(srv, db, 'SELECT count(quality) FROM gas')
    assert q[0]["count"] == n_batches * 4


async def test_server_hanging_times_out_and_retries_without_duplicates(
        influxd_factory: Any, tmp_path: Path) -> None:
    srv: Influxd = influxd_factory()
    db = unique_db()
    srv.create_database(db)
    cfg = make_config(tmp_path, srv.url, db, extra="  timeout: 500ms")
    async with harness(cfg) as h:
        await h.gw.journal.append_batch(batch(0))
        await h.caught_up()
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGSTOP)  # the server hangs: accepts, never answers
        try:
            for i in range(1, 20):
                await h.gw.journal.append_batch(batch(i))
            await async_wait_until(lambda: h.svc.writer.state == "retrying"
                                   and "timeout" in (h.svc.writer.last_error or ""), 15)
            assert h.svc.cursor < h.gw.journal.last_seq
        finally:
            srv.proc.send_signal(signal.SIGCONT)
        await h.caught_up()
    got = rows(srv, db, "SELECT quality FROM /gas|temperature|pressure/ GROUP BY channel")
    keys = [(r["channel"], r["time"]) for r in got]
    assert len(keys) == len(set(keys)) == 20 * N_CH


async def test_type_conflict_and_retention_in_a_backlog_are_skipped_and_recorded(
        influxd: Influxd, tmp_path: Path) -> None:
    db = unique_db()
    influxd.create_database(db)
    # another system wrote 'pressure' with a string value in the same shard: a type conflict
    r = influxd.write(db, f'pressure,channel=other value="broken" {T0}\n')
    assert r.status_code == 204
    cfg = make_config(tmp_path, influxd.url, db, extra="  batch_points: 40")
    # the backlog exists before the historian starts
    h = Harness(cfg)
    for i in range(20):
        h.gw.journal.append_sync([batch(i)])
    await h.start()
    try:
        await h.caught_up()
        # the rejection event is journaled, then written itself
        await async_wait_until(lambda: h.svc.writer.state == "ok" and h.svc.cursor >= h.gw.journal.last_seq
                               and any(r.kind == 2 for r in h.gw.journal.read_sync(0, 10_000)), 10)
        evs = [r.event() for r in h.gw.journal.read_sync(0, 10_000) if r.kind == 2]
        await h.caught_up()
    finally:
        await h.stop()
    rej = [e for e in evs if e["type"] == "influx_rejected"]
    assert rej, evs
    n_rej = sum(e["count"] for e in rej)
    # every pressure point with a value field, nothing else (bad samples carry quality only)
    pressure_values = sum(int(((b.channel % 3 == 2) & (b.quality < Quality.BAD)).sum())
                          for b in (batch(i) for i in range(20)))
    assert n_rej == pressure_values
    assert "field type conflict" in rej[0]["message"]
    assert all("pressure," in ln for e in rej for ln in e["lines"])
    assert len(rows(influxd, db, "SELECT value FROM gas")) > 0
    assert rows(influxd, db, "SELECT count(quality) FROM gas")[0]["count"] == 20 * 4
    assert rows(influxd, db, "SELECT count(quality) FROM temperature")[0]["count"] == 20 * 4
    # the bad pressure samples (no value field) were written
    assert rows(influxd, db, "SELECT count(quality) FROM pressure")[0]["count"] == 20 * 4 - pressure_values
    stored = rows(influxd, db, "SELECT * FROM events WHERE type='influx_rejected'")
    assert stored and stored[0]["count"] == rej[0]["count"]


async def test_points_beyond_retention_are_rejected_the_rest_written(
        influxd: Influxd, tmp_path: Path) -> None:
    db = unique_db()
    influxd.create_database(db)
    influxd.query(f'CREATE RETENTION POLICY "short" ON "{db}" DURATION 1h REPLICATION 1', method="POST")
    cfg = make_config(tmp_path, influxd.url, db, extra="  retention_policy: short\n  stats: false")
    now = time.time_ns()
    old = batch(1, t0=now - 3 * 86400 * 10**9)
    fresh = [batch(i, t0=now - 60 * 10**9) for i in range(5)]
    async with harness(cfg) as h:
        await h.gw.journal.append_batch(fresh[0])
        await h.gw.journal.append_many([fresh[1], old, fresh[2]])
        await h.gw.journal.append_batch(fresh[3])
        await h.gw.journal.append_batch(fresh[4])
        await h.caught_up()
        await async_wait_until(lambda: any(r.kind == 2 for r in h.gw.journal.read_sync(0, 1000)), 10)
        ev = [r.event() for r in h.gw.journal.read_sync(0, 1000) if r.kind == 2]
        await h.caught_up()
    assert ev[0]["type"] == "influx_rejected" and ev[0]["count"] == N_CH
    assert "beyond retention" in ev[0]["message"]
    got = influxd.rows('SELECT count(quality) FROM "short"./gas|temperature|pressure/', db)
    assert sum(r["count"] for r in got) == 5 * N_CH


async def test_unauthorized_is_loud_keeps_everything_and_recovers(
        influxd_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    srv: Influxd = influxd_factory(auth=True)
    admin = ("admin", "admin-pass")
    srv.query("CREATE USER admin WITH PASSWORD 'admin-pass' WITH ALL PRIVILEGES", method="POST")
    db = unique_db()
    srv.create_database(db, auth=admin)
    pw = tmp_path / "influx.pw"
    pw.write_text("s3cret-writer\n")
    pw.chmod(0o600)
    cfg = make_config(tmp_path, srv.url, db, extra=f"  username: writer\n  password_file: {pw}")
    caplog.set_level(logging.INFO, "gateway.historian")
    async with harness(cfg) as h:
        for i in range(5):
            await h.gw.journal.append_batch(batch(i))
        await async_wait_until(lambda: h.svc.writer.state == "unauthorized", 10, what="unauthorized")
        assert h.gw.journal.cursor(CONSUMER) == 0
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert errors and "401" in errors[0].getMessage()
        assert "s3cret-writer" not in caplog.text
        # the operator creates the user; the historian gets in on its next slow retry
        srv.query("CREATE USER writer WITH PASSWORD 's3cret-writer'", auth=admin, method="POST")
        srv.query(f'GRANT WRITE ON "{db}" TO writer', auth=admin, method="POST")
        await h.caught_up()
    got = srv.rows("SELECT count(quality) FROM gas", db, auth=admin)
    assert got[0]["count"] == 5 * 4
    assert "s3cret-writer" not in caplog.text


async def test_password_file_readable_by_others_is_refused_until_fixed(
        influxd: Influxd, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pw = tmp_path / "influx.pw"
    pw.write_text("anything")  # auth is off on this server: any password does
    pw.chmod(0o644)
    db = unique_db()
    cfg = make_config(tmp_path, influxd.url, db, extra=f"  username: u\n  password_file: {pw}")
    caplog.set_level(logging.ERROR, "gateway.historian")
    async with harness(cfg) as h:
        await h.gw.journal.append_batch(batch(0))
        await async_wait_until(lambda: h.svc.writer.state == "config_error", 10)
        assert f"chmod 600 {pw}" in caplog.text
        assert h.gw.journal.cursor(CONSUMER) == 0
        pw.chmod(0o600)  # the operator fixes it; no restart needed
        await h.caught_up()
    assert rows(influxd, db, "SELECT count(quality) FROM gas")[0]["count"] == 4


def test_fixture_server_answers_ping(influxd: Influxd) -> None:
    assert httpx.get(influxd.url + "/ping").status_code == 204


async def test_damaged_records_are_skipped_not_blocking(influxd: Influxd, tmp_path: Path) -> None:
    db = unique_db()
    cfg = make_config(tmp_path, influxd.url, db)
    h = Harness(cfg)
    j = h.gw.journal
    j.append_sync([batch(0)])
    j.append_sync([Batch.build([0, 1], [-5, T0 + 3], [1.0, 2.0], 0)])  # one sample before 1970
    j.append_sync([{"type": "note", "ts": T0}])
    seq = j.append_sync([batch(1)])[0]
    # damage: a samples record whose payload is not a batch, an event that is not an object
    j.call_in_writer(lambda db_: db_.execute("UPDATE records SET data = x'0102', codec = 0 WHERE seq = ?",
                                             (seq,))).result()
    j.append_sync([{"type": "x", "ts": T0}])
    j.call_in_writer(lambda db_: db_.execute("UPDATE records SET data = x'5b312c325d' WHERE seq = ?",
                                             (j.last_seq,))).result()
    j.append_sync([batch(2)])
    await h.start()
    try:
        await h.caught_up()
        assert h.svc.stats()["skipped_records"] == 2
    finally:
        await h.stop()
    got = rows(influxd, db, "SELECT count(quality) FROM /gas|temperature|pressure/")
    assert sum(r["count"] for r in got) == 2 * N_CH + 1
    assert len(rows(influxd, db, "SELECT * FROM events")) == 1
