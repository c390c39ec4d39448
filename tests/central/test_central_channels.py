"""Channel names at central: the gateway journals its channel table (gateway/chanmap.py),
central keeps the latest per origin and tags InfluxDB points by name from the table's
place in the origin's journal on.

- the real gateway daemon (Modbus simulators) → central → influxd: central's series are
  exactly the gateway's own historian's series, and the same number of points;
- gateway → county → province (real HTTPS, pull): the province names the points too;
- a table change mid-stream retags from the change on; samples before any table keep
  ``channel=<index>``; a table that overtakes its backlog on the alarms lane does not
  retag the samples journaled before it;
- the state store keeps the latest table per origin (SQLite and PostgreSQL);
- the gateway journals its table at start only when it changed, and again every day.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from central.state import Commit, PgState, SqliteState, State
from gateway import chanmap
from gateway.core import chantable
from gateway.core.record import EVENT, SAMPLES, Record
from gateway.store.journal import Journal
from tests.fixtures.central import (
    T0,
    CentralSide,
    GatewaySide,
    batch,
    central_config,
    central_pub,
    events_of,
    make_keys,
    stored,
)
from tests.fixtures.helpers import async_wait_until
from uplink import envelope, keys
from uplink.sync import Item

pytestmark = pytest.mark.timeout(120)

KINDS = ("gas", "temperature", "pressure", "level", "status")


def table_event(prefix: str, ts: int, n: int = 50, *, site: str = "S-1") -> dict[str, Any]:
    """A channel_table event as the gateway journals it (50 channels, like harness batches)."""
    doc: dict[str, Any] = {"type": chantable.EVENT_TYPE, "ts": ts, "table_version": "",
                           "fingerprint": prefix, "gateway_id": "gw-1", "site_code": site,
                           "channels": [{"index": i, "name": f"{prefix}-{i}", "kind": KINDS[i % 5],
                                         "unit": "u", "device": f"dev-{i // 25}"} for i in range(n)]}
    doc["table_version"] = chantable.version_of(doc)
    return doc


def influx_points(influxd: Any, db: str, measurement: str = "/.*/") -> list[dict[str, Any]]:
    try:
        rows = influxd.rows(f'SELECT "value", "channel", "device", "site" FROM {measurement} '
                            "WHERE \"gateway\"='gw-1'", db)
    except RuntimeError:
        return []
    return [r for r in rows if r["_measurement"] not in ("alarms", "events", "stats_5m")]


def expected_channel(ts: int, regions: list[tuple[int, str | None]]) -> Any:
    """The tag a sample at ``ts`` must have: regions are (first batch, name prefix or None)."""
    i = (ts - T0) // 10**9
    prefix = None
    for first, p in regions:
        if i >= first:
            prefix = p
    return prefix


def check_tags(rows: list[dict[str, Any]], regions: list[tuple[int, str | None]]) -> None:
    assert rows
    for r in rows:
        prefix = expected_channel(r["time"], regions)
        ch = r["channel"]
        if prefix is None:
            assert ch.isdigit() and r["device"] is None, r
        else:
            assert ch.startswith(prefix + "-"), (r, prefix)
            idx = int(ch.rsplit("-", 1)[1])
            assert r["device"] == f"dev-{idx // 25}" and r["site"] == "S-1", r
            assert r["_measurement"] == KINDS[idx % 5], r


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
async def test_names_reach_influxdb_like_the_gateways_own_historian(
        tmp_path: Path, modbus_plant: Any, influxd: Any) -> None:
    """Simulators → the gateway daemon (its historian into one database) → central
    (pull, HTTPS) → another database: same series (measurement and every tag), same counts."""
    from gateway.app import Gateway
    from gateway.config import loads
    from tests.fixtures.influxd import unique_db
    from tests.fixtures.sims import gateway_yaml

    db_gw, db_c = unique_db("gw"), unique_db("central")
    pubs = tmp_path / "pub"
    pubs.mkdir()
    cpub = central_pub(tmp_path, "county", pubs)
    gw_dir = tmp_path / "gw-test"
    gpub = make_keys(gw_dir, "gw-test", pubs)
    influx = {"url": influxd.url, "measurement": "per_kind", "flush_every": "100ms", "stats": False}
    text = gateway_yaml(modbus_plant, gw_dir, poll="200ms")
    text += f"uplink: {{mode: pull, listen: '127.0.0.1:0', central_keys: ['{cpub}']}}\n"
    text += f"influxdb: {{url: '{influxd.url}', database: {db_gw}, measurement: per_kind, " \
            f"flush_every: 100ms, stats: false}}\n"
    gw = Gateway(loads(text))
    run = asyncio.create_task(gw.run(drain_s=10.0))
    c: CentralSide | None = None
    try:
        await async_wait_until(lambda: any(s.name == "uplink" for s in gw.services), 20, what="uplink")
        svc = next(s for s in gw.services if s.name == "uplink")
        await async_wait_until(lambda: svc.listener.server.started, 10)  # type: ignore[attr-defined]
        src = {"id": "gw-test", "keys": str(gpub), "mode": "pull",
               "pull": {"url": f"https://127.0.0.1:{svc.listener.port}",  # type: ignore[attr-defined]
                        "tls_cert": str(gw_dir / "tls.crt"), "wait": "1s"}}
        c = await CentralSide(central_config(tmp_path, "county", [src],
                                             influxdb={**influx, "database": db_c})).start()
        node = c.node
        await async_wait_until(lambda: node.origins.get("gw-test") and node.origins["gw-test"].stored_samples
                               > 50, 30, what="samples at central")
        gw.stop()
        await asyncio.wait_for(run, 30)
        last = gw.journal.last_seq
        await async_wait_until(lambda: node.origins["gw-test"].main >= last, 30, what="central caught up")
        await async_wait_until(lambda: node.status_doc()["influxdb"]["gw-test"]["lag"] == 0, 30,
                               interval=0.1, what="central's InfluxDB writer caught up")
        measurements = ",".join(f'"{k}"' for k in ("gas", "temperature", "status", "pressure", "level"))

        def series(db: str) -> dict[tuple[str, tuple[tuple[str, Any], ...]], Any]:
            rows = influxd.rows(f"SELECT count(\"quality\") FROM {measurements} GROUP BY *", db)
            skip = ("time", "count", "_measurement")
            return {(r["_measurement"], tuple(sorted((k, v) for k, v in r.items() if k not in skip))):
                    r["count"] for r in rows}

        got, want = series(db_c), series(db_gw)
        assert len(want) == 5, want  # five channels, each its own series
        assert got == want, f"central's series differ from the gateway's historian:\n{got}\n{want}"
        names = {dict(k[1])["channel"] for k in got}
        # the table event's own keys collide with no tag: selecting by gateway across all
        # measurements still works in both databases
        for db in (db_gw, db_c):
            rows = influxd.rows("SELECT count(\"value\") FROM /.*/ WHERE \"gateway\" = 'gw-test'", db)
            assert sum(r["count"] for r in rows) > 0, db
        assert names == {"GT-1", "TT-1", "SW-1", "PT-1", "LT-1"}
        st = node.status_doc()
        assert st["origins"]["gw-test"]["channel_table"]["channels"] == 5
        assert st["sources"]["gw-test"]["channel_table"]["devices"] == 2
        o = st["origins"]["gw-test"]
        assert o["influx_tagged_by"] == o["channel_table"]["version"]
        # the table event itself is a small point in the events measurement, not the whole list
        ev = influxd.rows("SELECT * FROM \"events\" WHERE \"type\"='channel_table'", db_c)
        assert len(ev) == 1 and ev[0]["channel_count"] == 5
    finally:
        if not run.done():
            gw.stop()
            await asyncio.gather(run, return_exceptions=True)
        if c is not None:
            await c.stop()


async def test_names_through_county_to_province(tmp_path: Path, influxd: Any) -> None:
    """gateway → county → province over HTTPS (pull): the province, which gets the plant's
    own signed envelopes, names the points too and keeps the table in its state."""
    from tests.fixtures.influxd import unique_db

    db_county, db_prov = unique_db("county"), unique_db("prov")
    pubs = tmp_path / "pub"
    pubs.mkdir()
    county_pub = central_pub(tmp_path, "county", pubs)
    prov_pub = central_pub(tmp_path, "province", pubs)
    gw = GatewaySide(tmp_path, "gw-1", pubs, [county_pub, prov_pub])
    await gw.start()
    influx = {"url": influxd.url, "measurement": "per_kind", "flush_every": "100ms"}
    gsrc = {"id": "gw-1", "keys": str(gw.pub), "mode": "pull",
            "pull": {"url": f"https://127.0.0.1:{gw.port}", "tls_cert": str(gw.cert), "wait": "1s"}}
    county = await CentralSide(central_config(
        tmp_path, "county", [gsrc], upstream={"mode": "pull", "keys": [str(prov_pub)]},
        influxdb={**influx, "database": db_county})).start()
    province = await CentralSide(central_config(tmp_path, "province", [
        {"id": "county", "keys": str(county_pub), "relay": True, "mode": "pull",
         "pull": {"url": county.url, "tls_cert": str(county.cert), "wait": "1s"}}],
        trust=[str(gw.pub)], influxdb={**influx, "database": db_prov})).start()
    try:
        await gw.journal.append_event(table_event("A", T0))
        await gw.journal.append_many([batch(i) for i in range(10)])
        await async_wait_until(lambda: "gw-1" in province.node.tables, 30, what="the table at the province")
        # an alarm that names its channel by index only: tagged from the table (an event
        # that overtakes the table on the alarms lane is tagged by the table known then)
        await gw.journal.append_event({"type": "alarm", "ts": T0 + 5 * 10**9, "index": 7, "level": "h",
                                       "value": 1.5})
        last = gw.journal.last_seq
        await async_wait_until(lambda: province.node.origins.get("gw-1")
                               and province.node.origins["gw-1"].main >= last, 30, what="the province")
        await async_wait_until(lambda: len(influx_points(influxd, db_prov)) == 1000, 30, interval=0.1,
                               what="1000 points at the province's InfluxDB")
        for db in (db_county, db_prov):
            check_tags(influx_points(influxd, db), [(0, "A")])
        want = table_event("A", T0)["table_version"]
        for node in (county.node, province.node):
            assert node.tables["gw-1"].version == want
            assert node.status_doc()["origins"]["gw-1"]["channel_table"]["channels"] == 50
        # the relay carries the table inside the plant's envelopes: the province's row is
        # the plant's own event, and its state store has it
        row = await province.node.state.channel_table("gw-1")
        assert row is not None and row.doc == table_event("A", T0) and row.seq == 1
        assert province.node.status_doc()["sources"]["county"]["relay"] is True
        # the alarm event is tagged with the channel's place from the table too
        al = await async_wait_until(lambda: influxd.rows('SELECT * FROM "alarms"', db_prov), 30, interval=0.1,
                                    what="the alarm at the province's InfluxDB")
        assert isinstance(al, list) and len(al) == 1
        assert (al[0]["channel"], al[0]["device"], al[0]["kind"]) == ("A-7", "dev-0", "pressure")
    finally:
        await province.stop()
        await county.stop()
        await gw.stop()


# --------------------------------------------------------------------------- table changes


def _seal(recs: list[Record], sender: keys.NodeKeys, recipients: list[keys.PublicKeys]) -> bytes:
    return envelope.seal(recs, sender=sender, recipients=recipients)


async def test_table_change_retags_from_then_on_even_when_it_overtakes(tmp_path: Path, influxd: Any) -> None:
    """Journal: 5 batches (no table yet) · table A · 5 batches · table B · 5 batches.
    The alarms lane brings both tables ahead of the whole sample backlog; the points must
    still be tagged by index, then A, then B, each from its place in the journal on."""
    from tests.fixtures.influxd import unique_db

    db = unique_db("retag")
    pubs = tmp_path / "pub"
    pubs.mkdir()
    cpub = central_pub(tmp_path, "county", pubs)
    gpub = make_keys(tmp_path / "gw-1", "gw-1", pubs)
    gk = keys.load(tmp_path / "gw-1")
    recipients = list(keys.load_public(cpub))
    j = Journal(tmp_path / "gw-1" / "journal.db", sync="normal")
    try:
        await j.append_many([batch(i) for i in range(5)])
        await j.append_event(table_event("A", T0 + 5 * 10**9 - 1))
        await j.append_many([batch(i) for i in range(5, 10)])
        await j.append_event(table_event("B", T0 + 10 * 10**9 - 1))
        await j.append_many([batch(i) for i in range(10, 15)])
        recs = j.read_sync(0, 1000)
    finally:
        j.close()
    assert [r.seq for r in recs if r.kind == EVENT] == [6, 12]
    c = await CentralSide(central_config(
        tmp_path, "county", [{"id": "gw-1", "keys": str(gpub), "mode": "push"}],
        influxdb={"url": influxd.url, "database": db, "measurement": "per_kind",
                  "flush_every": "100ms"})).start()
    try:
        node = c.node
        src = node.sources["gw-1"]
        events = [r for r in recs if r.kind == EVENT]
        # alarms lane first: both tables (and an ordinary event would be stored at once)
        assert await node.ingest(src, [Item("alarms", 12, _seal(events, gk, recipients))]) == ["accepted"]
        assert stored(node, "gw-1") == [], "a table was stored ahead of the samples it follows"
        assert "gw-1" not in node.tables
        # then the main lane, in three envelopes
        for lo, hi in ((1, 4), (5, 9), (10, 17)):
            chunk = [r for r in recs if lo <= r.seq <= hi]
            assert await node.ingest(src, [Item("main", hi, _seal(chunk, gk, recipients))]) == ["accepted"]
            if hi == 4:
                assert "gw-1" not in node.tables
            if hi == 9:
                assert node.tables["gw-1"].seq == 6
        assert node.tables["gw-1"].seq == 12
        assert node.tables["gw-1"].version == table_event("B", T0 + 10 * 10**9 - 1)["table_version"]
        # central's journal holds each table once, at its place among the samples
        got = stored(node, "gw-1")
        kinds = [k for k, _ in got]
        assert kinds == [r.kind for r in recs]
        assert [e["fingerprint"] for e in events_of(got)] == ["A", "B"]
        await async_wait_until(lambda: len(influx_points(influxd, db)) == 1500, 30, interval=0.1,
                               what="1500 points in InfluxDB")
        check_tags(influx_points(influxd, db), [(0, None), (5, "A"), (10, "B")])
        st = node.status_doc()
        assert st["origins"]["gw-1"]["channel_table"]["seq"] == 12
        assert st["origins"]["gw-1"]["channel_table"]["channels"] == 50
        assert st["sources"]["gw-1"]["rejected_total"] == 0

        # a restart: the writer resumes from its cursor with the table in force there
        await c.stop()
        db2 = unique_db("retag2")
        cfg2 = central_config(tmp_path, "county", [{"id": "gw-1", "keys": str(gpub), "mode": "push"}],
                              influxdb={"url": influxd.url, "database": db2, "measurement": "per_kind",
                                        "flush_every": "100ms"})
        c = await CentralSide(cfg2).start()
        assert c.node.tables["gw-1"].seq == 12  # from the state store
        more = Journal(tmp_path / "gw-1" / "journal.db", sync="normal")
        try:
            await more.append_many([batch(i) for i in range(15, 18)])
            tail = more.read_sync(17, 100)
        finally:
            more.close()
        node = c.node
        assert await node.ingest(node.sources["gw-1"], [Item("main", 20, _seal(tail, gk, recipients))]) \
            == ["accepted"]
        # the writer's cursor is in central's journal: the new database gets only the new
        # batches, tagged by the table in force at the cursor (found in the journal)
        await async_wait_until(lambda: len(influx_points(influxd, db2)) == 300, 30, interval=0.1,
                               what="300 points in the second database")
        rows = influx_points(influxd, db2)
        assert {(r["time"] - T0) // 10**9 for r in rows} == {15, 16, 17}
        check_tags(rows, [(0, None), (5, "A"), (10, "B")])
    finally:
        await c.stop()


async def test_table_only_on_the_alarms_lane_is_accepted_and_forwarded(tmp_path: Path) -> None:
    """An alarms-lane envelope holding nothing but a table: accepted (not a duplicate),
    nothing stored yet, forwarded upward unchanged; the main lane then stores it once."""
    pubs = tmp_path / "pub"
    pubs.mkdir()
    cpub = central_pub(tmp_path, "county", pubs)
    ppub = central_pub(tmp_path, "province", pubs)
    gpub = make_keys(tmp_path / "gw-1", "gw-1", pubs)
    gk = keys.load(tmp_path / "gw-1")
    recipients = [*keys.load_public(cpub), *keys.load_public(ppub)]
    c = await CentralSide(central_config(
        tmp_path, "county", [{"id": "gw-1", "keys": str(gpub), "mode": "push"}],
        upstream={"mode": "pull", "keys": [str(ppub)]})).start()
    try:
        node = c.node
        src = node.sources["gw-1"]
        ev = table_event("A", T0)
        from gateway.core.record import event_record

        k, t0, t1, n, data = event_record(ev)
        rec = Record(1, k, t0, t1, n, data)
        env = _seal([rec], gk, recipients)
        assert await node.ingest(src, [Item("alarms", 1, env)]) == ["accepted"]
        assert stored(node, "gw-1") == [] and node.status["gw-1"].duplicates == 0
        b = batch(0)
        rec2 = Record(2, SAMPLES, b.ts_min, b.ts_max, len(b), b.to_bytes())
        env_main = _seal([rec, rec2], gk, recipients)
        assert await node.ingest(src, [Item("main", 2, env_main)]) == ["accepted"]
        got = stored(node, "gw-1")
        assert [k for k, _ in got] == [EVENT, SAMPLES] and got[0][1] == ev
        # both envelopes went into the outbox byte for byte
        rows = [*await node.state.outbox_read("alarms", 0, 10**9),
                *await node.state.outbox_read("main", 0, 10**9)]
        assert sorted(r.data for r in rows) == sorted([env, env_main])
    finally:
        await c.stop()


# --------------------------------------------------------------------------- state store


async def _state_roundtrip(st: State) -> None:
    await st.open()
    try:
        a, b = table_event("A", T0), table_event("B", T0 + 1)
        assert await st.commit(Commit("gw-1", "main", 10, "gw-1", 0, 10, 0, [], None, [(6, a)]))
        row = await st.channel_table("gw-1")
        assert row is not None
        assert (row.seq, row.version, row.channels, row.doc) == (6, a["table_version"], 50, a)
        assert await st.commit(Commit("gw-1", "main", 20, "gw-1", 10, 20, 0, [], None, [(12, b)]))
        # an older table never replaces a newer one
        assert await st.commit(Commit("gw-1", "main", 30, "gw-1", 20, 30, 0, [], None, [(3, a)]))
        rows = await st.channel_tables()
        assert set(rows) == {"gw-1"} and rows["gw-1"].seq == 12 and rows["gw-1"].doc == b
        assert await st.channel_table("gw-2") is None
        # a refused commit (another worker moved the origin) stores no table either
        assert not await st.commit(Commit("gw-1", "main", 40, "gw-1", 0, 40, 0, [], None, [(35, a)]))
        assert (await st.channel_table("gw-1")).seq == 12  # type: ignore[union-attr]
    finally:
        await st.close()


async def test_state_keeps_latest_table_sqlite(tmp_path: Path) -> None:
    await _state_roundtrip(SqliteState(tmp_path / "central.db"))


async def test_state_keeps_latest_table_postgres(pg_dsn: str) -> None:
    await _state_roundtrip(PgState(pg_dsn))


# --------------------------------------------------------------------------- gateway side

_GW_YAML = """
gateway: {{id: gw-1, site: "S-1", state_dir: "{state}"}}
devices:
  - name: plc-1
    protocol: modbus-tcp
    host: 127.0.0.1
    port: 1502
    channels:
      - {{name: GT-101, kind: gas, unit: "%LEL", address: "input:0", range: [0, 100], area: tank-farm}}
      - {{name: {tt}, kind: temperature, unit: "°C", address: "holding:10", type: float32}}
"""


def _gateway(state: Path, tt: str = "TT-1") -> Any:
    from gateway.app import Gateway
    from gateway.config import loads

    return Gateway(loads(_GW_YAML.format(state=state, tt=tt)))


def _tables(j: Journal) -> list[tuple[int, dict[str, Any]]]:
    return [(r.seq, r.event()) for r in j.read_sync(0, 10_000) if chantable.is_table_record(r)]


async def test_gateway_journals_its_table_when_it_changes(tmp_path: Path) -> None:
    gw = _gateway(tmp_path)
    gw.build_services()  # what Gateway.run does first: the table service is among them
    svc = next(s for s in gw.services if s.name == "channel_table")
    await svc.start()
    [(seq, ev)] = _tables(gw.journal)
    assert ev["channels"] == [
        {"index": 0, "name": "GT-101", "kind": "gas", "unit": "%LEL", "device": "plc-1",
         "range": [0.0, 100.0], "area": "tank-farm"},
        {"index": 1, "name": "TT-1", "kind": "temperature", "unit": "°C", "device": "plc-1"}]
    assert (ev["gateway_id"], ev["site_code"], ev["fingerprint"]) == ("gw-1", "S-1", gw.table.fingerprint())
    assert ev["table_version"] == chantable.version_of(ev) and svc.stats()["seq"] == seq  # type: ignore[attr-defined]
    gw.journal.close()
    # same config again: nothing new journaled
    gw = _gateway(tmp_path)
    await chanmap.ChannelTableService(gw).start()
    assert len(_tables(gw.journal)) == 1
    gw.journal.close()
    # a renamed channel: a new table
    gw = _gateway(tmp_path, tt="TT-9")
    await chanmap.ChannelTableService(gw).start()
    got = _tables(gw.journal)
    assert len(got) == 2 and got[1][1]["channels"][1]["name"] == "TT-9"
    assert got[1][1]["table_version"] != got[0][1]["table_version"]
    gw.journal.close()


async def test_gateway_journals_its_table_again_every_period(tmp_path: Path) -> None:
    gw = _gateway(tmp_path)
    svc = chanmap.ChannelTableService(gw, every_s=0.2)
    await svc.start()
    task = asyncio.create_task(svc.run())
    try:
        await async_wait_until(lambda: len(_tables(gw.journal)) >= 3, 10, what="the table journaled again")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    got = _tables(gw.journal)
    assert len({ev["table_version"] for _, ev in got}) == 1
    assert [ev["ts"] for _, ev in got] == sorted(ev["ts"] for _, ev in got)
    gw.journal.close()
    # at start, a table older than the period is journaled again even though unchanged
    gw = _gateway(tmp_path)
    n = len(_tables(gw.journal))
    svc = chanmap.ChannelTableService(gw, every_s=0.2)
    await async_wait_until(lambda: (gw.clock() - got[-1][1]["ts"]) / 1e9 > 0.2, 5, what="the period to pass")
    await svc.start()
    assert len(_tables(gw.journal)) == n + 1
    gw.journal.close()


async def test_worker_taking_over_tags_by_name(tmp_path: Path, pg_dsn: str, influxd: Any) -> None:
    """Two workers on PostgreSQL, one gateway: the worker that takes the gateway over
    mid-stream has no table in its own journal; it journals a copy of the one in force
    (from the shared state) first, so its InfluxDB points are named too."""
    import shutil

    from tests.fixtures.influxd import unique_db

    db = unique_db("workers")
    pubs = tmp_path / "pub"
    pubs.mkdir()
    cpub = central_pub(tmp_path, "county-a", pubs)
    (tmp_path / "county-b").mkdir()
    shutil.copytree(tmp_path / "county-a" / "keys", tmp_path / "county-b" / "keys")
    gw = GatewaySide(tmp_path, "gw-1", pubs, [cpub])
    await gw.start()
    src = {"id": "gw-1", "keys": str(gw.pub), "mode": "pull",
           "pull": {"url": f"https://127.0.0.1:{gw.port}", "tls_cert": str(gw.cert), "wait": "500ms"}}

    def cfg(worker: str) -> Any:
        return central_config(tmp_path, f"county-{worker}", [src],
                              state={"backend": "postgres", "dsn": pg_dsn, "worker": worker, "lease": "2s"},
                              influxdb={"url": influxd.url, "database": db, "measurement": "per_kind",
                                        "flush_every": "100ms"})

    a = await CentralSide(cfg("a")).start()
    b = await CentralSide(cfg("b")).start()
    try:
        await gw.journal.append_event(table_event("A", T0))
        await gw.journal.append_many([batch(i) for i in range(5)])
        def held(w: CentralSide, seq: int) -> bool:
            return bool(w.node.origins.get("gw-1")) and w.node.origins["gw-1"].main >= seq

        holder = await async_wait_until(lambda: next((w for w in (a, b) if held(w, 6)), None), 20,
                                        what="one worker to store the first range")
        assert isinstance(holder, CentralSide)
        other = b if holder is a else a
        # the holder dies without releasing its lease
        for t in holder.node.puller.tasks.values():
            t.cancel()
        holder.node.puller.tasks.clear()
        holder.task.cancel()  # type: ignore[union-attr]
        await asyncio.gather(holder.task, return_exceptions=True)  # type: ignore[arg-type]
        await gw.journal.append_many([batch(i) for i in range(5, 10)])
        last = gw.journal.last_seq
        await async_wait_until(lambda: held(other, last), 30, what="the other worker to take over")
        got = stored(other.node, "gw-1")
        assert got[0][0] == EVENT and got[0][1] == table_event("A", T0), "no table copy before the samples"
        assert sum(1 for k, _ in got if k == SAMPLES) == 5
        await async_wait_until(lambda: len(influx_points(influxd, db)) == 1000, 30, interval=0.1,
                               what="1000 points in InfluxDB")
        check_tags(influx_points(influxd, db), [(0, "A")])
    finally:
        for w in (a, b):
            if w.task is not None and w.task.done():
                await w.node.close()
            else:
                await w.stop()
        await gw.stop()


# --------------------------------------------------------------------------- status


async def test_status_per_gateway_over_https_with_a_token(tmp_path: Path) -> None:
    """GET /status (real HTTPS): 401 without / with a wrong token; with a good one, per
    gateway: last contact, lag in records and seconds, rejected by reason, the table."""
    import httpx

    from gateway.core.tokens import UserStore
    from uplink.auth import client_context
    from uplink.sync import Peer, Signer, pack_frames

    pubs = tmp_path / "pub"
    pubs.mkdir()
    cpub = central_pub(tmp_path, "county", pubs)
    gpub = make_keys(tmp_path / "gw-1", "gw-1", pubs)
    gk = keys.load(tmp_path / "gw-1")
    recipients = list(keys.load_public(cpub))
    c = await CentralSide(central_config(
        tmp_path, "county", [{"id": "gw-1", "keys": str(gpub), "mode": "push"}])).start()
    token = UserStore(tmp_path / "county" / "tokens.json", scrypt_n=2**14).add("ops", "viewer")
    from gateway.core.record import event_record

    k, t0, t1, n, data = event_record(table_event("A", T0))
    recs = [Record(1, k, t0, t1, n, data)]
    for i in range(3):
        b = batch(i)
        recs.append(Record(2 + i, SAMPLES, b.ts_min, b.ts_max, len(b), b.to_bytes()))
    peer = Peer(c.url, Signer(gk.ed25519, gk.kid), recipient="county", ca=c.cert)
    http = httpx.AsyncClient(verify=client_context(c.cert), timeout=10)
    try:
        body = pack_frames([Item("main", 4, _seal(recs, gk, recipients))])
        # the gateway says its journal goes on to 54: 50 records still to come
        r = await peer.request("POST", "/sync/v1/push", {"head": 54, "first": 1}, body)
        assert r.json()["cursors"]["main"] == 4
        # an envelope of another gateway through gw-1's push: rejected, by reason
        other = keys.init(tmp_path / "gw-x", "gw-x")
        bad = pack_frames([Item("main", 5, _seal(recs[:1], other, recipients))])
        await peer.request("POST", "/sync/v1/push", {"head": 54, "first": 1}, bad)
        url = c.url + "/status"
        r = await http.get(url)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        r = await http.get(url, headers={"Authorization": "Bearer sgw_000000000000_" + "x" * 40})
        assert r.status_code == 401 and r.json()["detail"] == "invalid or revoked token"
        r = await http.get(url, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        g = r.json()["sources"]["gw-1"]
        assert g["last_contact"].endswith("Z") and 0 <= g["since_contact_s"] < 60
        assert g["lag_records"] == 50
        # the newest sample stored is from T0 + 2 s (2025): that is how far behind it is
        assert g["lag_s"] > 3600
        assert g["rejected"] == {"UnknownSender": 1} and g["rejected_total"] == 1
        assert g["channel_table"]["version"] == table_event("A", T0)["table_version"]
        assert (g["channel_table"]["channels"], g["channel_table"]["devices"]) == (50, 2)
        o = r.json()["origins"]["gw-1"]
        assert o["main_seq"] == 4 and o["channel_table"]["seq"] == 1
        # caught up: lag 0 records, 0 s
        r = await peer.request("POST", "/sync/v1/push", {"head": 4, "first": 1}, b"")
        g = (await http.get(url, headers={"Authorization": f"Bearer {token}"})).json()["sources"]["gw-1"]
        assert (g["lag_records"], g["lag_s"]) == (0, 0.0)
    finally:
        await http.aclose()
        await peer.close()
        await c.stop()


async def test_status_lockout_is_configurable(tmp_path: Path) -> None:
    """listen.max_failures bad tokens from one address lock it out (429), even for a good
    token not seen before; a token verified before keeps working."""
    import httpx

    from gateway.core.tokens import UserStore
    from uplink.auth import client_context

    pubs = tmp_path / "pub"
    pubs.mkdir()
    central_pub(tmp_path, "county", pubs)
    gpub = make_keys(tmp_path / "gw-1", "gw-1", pubs)
    store = UserStore(tmp_path / "county" / "tokens.json", scrypt_n=2**14)
    early, late = store.add("ops", "viewer"), store.add("ops-2", "viewer")
    c = await CentralSide(central_config(
        tmp_path, "county", [{"id": "gw-1", "keys": str(gpub), "mode": "push"}],
        listen={"address": "127.0.0.1:0", "max_failures": 2, "lockout": "10m"})).start()
    http = httpx.AsyncClient(verify=client_context(c.cert), timeout=10)
    url = c.url + "/status"
    try:
        assert (await http.get(url, headers={"Authorization": f"Bearer {early}"})).status_code == 200
        for i in range(2):
            r = await http.get(url, headers={"Authorization": f"Bearer sgw_000000000000_{'x' * 40}{i}"})
            assert r.status_code == 401
        r = await http.get(url, headers={"Authorization": f"Bearer {late}"})
        assert r.status_code == 429 and r.json()["error"] == "locked_out"
        assert 500 <= int(r.headers["Retry-After"]) <= 600
        assert (await http.get(url, headers={"Authorization": f"Bearer {early}"})).status_code == 200
    finally:
        await http.aclose()
        await c.stop()
