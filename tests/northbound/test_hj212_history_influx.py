"""HJ 212 history requests for a range the journal no longer holds: answered from InfluxDB.

A real influxd (tests/fixtures/influxd.py), the daemon with an ``influxdb:`` section, a
Modbus plant simulator and the HJ 212 platform simulator, each in its own process, over
real sockets:

1. An hour three days old is in the journal; the daemon's historian writes it to InfluxDB
   (waited for by querying InfluxDB itself).
2. The daemon restarts with ``journal.max_age: 1d``: retention drops that hour from the
   journal (waited for). The platform asks for it (2061, then 2051): the answer comes from
   InfluxDB, figures computed here from the samples, and the log says InfluxDB answered.
   A recent hour the journal still holds is answered from the journal.
3. InfluxDB is killed: the old hour is answered from the journal, which has nothing
   there (ExeRtn=100), and the log says InfluxDB did not answer.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.core.batch import Batch, Quality
from gateway.store.journal import Journal
from gateway.store.queries import oldest_sample_ts, open_readonly
from tests.fixtures.daemon import Daemon
from tests.fixtures.helpers import jsonl_records, wait_until
from tests.fixtures.hj212 import NS, beijing_hour, cp_values, dt, dt_ns, hj212_platform
from tests.fixtures.influxd import unique_db
from tests.fixtures.sims import plc_device, tcp_plant

#: the gateway's channels of the plant
CHANNELS = ('{name: GT-1, kind: gas, unit: "%LEL", address: input:0, type: int16, scale: 0.1}',
            '{name: TT-1, kind: temperature, unit: "°C", address: holding:10, type: float32}')
MN = "88888880000002"
PW = "654321"

PLANT = tcp_plant(
    ("GT-1", 2.5, "input:0", "int16", 0.1),
    ("TT-1", 21.75, "holding:10", "float32", None),
    seed=5,
)


def gateway_yaml(plc: tuple[str, int], platform_port: int, state: Path, influx_url: str, db: str,
                 max_age: str) -> str:
    return f"""
gateway: {{id: gw-hist, site: "91370100MA3C000001", state_dir: "{state}"}}
journal: {{max_age: {max_age}}}
{plc_device(plc, *CHANNELS, poll="500ms", timeout="300ms")}
influxdb: {{url: "{influx_url}", database: {db}, flush_every: 200ms, stats: false}}
regulators:
  - type: hj212
    name: epb
    host: 127.0.0.1
    port: {platform_port}
    mn: "{MN}"
    password: "{PW}"
    st: "22"
    rtd_interval: 1s
    minute_interval: 1m
    hourly: true
    late: 300ms
    ack_timeout: 1s
    reconnect_max: 500ms
    points:
      - {{channel: GT-1, code: a21026, scale: 10, decimals: 2}}
      - {{channel: TT-1, code: a01012, decimals: 2}}
"""


def records(path: Path) -> list[dict[str, Any]]:
    return jsonl_records(path)


def old_hour(start_ns: int) -> list[tuple[int, float, float]]:
    """An hour, 10 s apart: GT-1 = (i % 7) / 2 %LEL, TT-1 = 20 + i % 5 °C, all good."""
    return [(start_ns + i * 10 * NS, (i % 7) / 2, 20.0 + i % 5) for i in range(360)]


def prefill(state: Path, rows: list[tuple[int, float, float]]) -> None:
    state.mkdir(parents=True, exist_ok=True)
    with Journal(state / "journal.db") as j:
        for k in range(0, len(rows), 30):
            ch, ts, val = [], [], []
            for t, gt, tt in rows[k:k + 30]:
                ch += [0, 1]
                ts += [t, t]
                val += [gt, tt]
            j.submit_batch(Batch.build(ch, ts, val, [Quality.GOOD] * len(ch))).result(10)


def ask(platform: Any, record: Path, cn: str, begin: int, end: int) -> list[dict[str, Any]]:
    """Send a history request; the platform's records of its answer (9011 ... 9012)."""
    n0 = len(records(record))
    qn = platform.control(to="platform", command=cn, mn=MN, pw=PW,
                          cp=f"BeginTime={dt(begin)};EndTime={dt(end)}")["qn"]
    wait_until(lambda: any(m["cn"] == "9012" and m["qn"] == qn for m in records(record)[n0:]), 30,
               what=f"the execution result of history request {cn}")
    return [m for m in records(record)[n0:] if m["qn"] == qn]


def test_history_the_journal_dropped_comes_from_influxdb(sim_factory: Any, influxd_factory: Any,
                                                          tmp_path: Path, caplog: Any) -> None:
    influx = influxd_factory()
    db = unique_db("hj")
    influx.create_database(db)
    plant = sim_factory(PLANT)
    record = tmp_path / "platform.jsonl"
    platform = hj212_platform(sim_factory, record)
    port = platform.tcp("platform")[1]
    state = tmp_path / "state"
    now = time.time_ns()
    hour0 = beijing_hour(now, 72)  # a whole Beijing hour, 3 days ago
    rows = old_hour(hour0)
    recent0 = hour0 + 70 * 3600 * NS  # and an hour 2 h ago, which the journal keeps
    prefill(state, rows + old_hour(recent0))

    # 1. the historian writes the old hour to InfluxDB
    d = Daemon(gateway_yaml(plant.tcp("plc"), port, state, influx.url, db, "30d")).start()
    try:
        def in_influx() -> int:
            got = influx.rows(f"SELECT count(value) FROM gas WHERE channel = 'GT-1' AND time >= {hour0} "
                              f"AND time < {hour0 + 3600 * NS}", db)
            return int(got[0]["count"]) if got else 0
        wait_until(lambda: in_influx() == 360, 60, what="the historian writing the old hour to InfluxDB")
    finally:
        d.stop()

    # 2. a shorter retention drops it from the journal; the platform asks for it
    seen = len(records(record))
    d = Daemon(gateway_yaml(plant.tcp("plc"), port, state, influx.url, db, "1d")).start()
    try:
        assert d.gw is not None
        gw = d.gw

        def journal_oldest() -> int:
            gw.journal.enforce_retention_sync()
            ro = open_readonly(state / "journal.db")
            try:
                return int(oldest_sample_ts(ro) or 0)
            finally:
                ro.close()
        wait_until(lambda: journal_oldest() > hour0 + 3600 * NS, 30, what="retention dropping the old hour")
        # real-time data from this run (not the first run's): its connection is the live one
        wait_until(lambda: any(m["cn"] == "2011" for m in records(record)[seen:]), 30,
                   what="the restarted adapter connected")

        caplog.set_level(logging.INFO, logger="northbound.hj212")
        answer = ask(platform, record, "2061", hour0, hour0 + 3599 * NS)
        assert [m["cn"] for m in answer] == ["9011", "2061", "9012"]
        assert answer[2]["cp"] == "ExeRtn=1"
        when, got = cp_values(answer[1]["cp"])
        assert when == dt(hour0)
        gt = [r[1] * 10 for r in rows]  # the point's unit conversion (×10)
        tt = [r[2] for r in rows]
        assert got["a21026-Flag"] == "N" and got["a01012-Flag"] == "N"
        assert float(got["a21026-Avg"]) == pytest.approx(sum(gt) / len(gt), abs=0.006)
        assert float(got["a21026-Min"]) == pytest.approx(min(gt), abs=0.006)
        assert float(got["a21026-Max"]) == pytest.approx(max(gt), abs=0.006)
        assert float(got["a01012-Avg"]) == pytest.approx(sum(tt) / len(tt), abs=0.006)
        assert any("answered from InfluxDB with 1 period" in r.getMessage() for r in caplog.records)

        mins = [cp_values(m["cp"]) for m in ask(platform, record, "2051", hour0, hour0 + 3599 * NS)
                if m["cn"] == "2051"]
        assert [dt_ns(w) for w, _ in mins] == [hour0 + k * 60 * NS for k in range(60)]
        for w, v in mins:
            inside = [r[1] * 10 for r in rows if dt_ns(w) <= r[0] < dt_ns(w) + 60 * NS]
            assert float(v["a21026-Avg"]) == pytest.approx(sum(inside) / len(inside), abs=0.006), w

        # a range the journal holds is answered from it, InfluxDB up or not (it is complete)
        caplog.clear()
        answer = ask(platform, record, "2061", recent0, recent0 + 3599 * NS)
        assert answer[-1]["cp"] == "ExeRtn=1"
        assert cp_values(answer[1]["cp"]) == (dt(recent0), got)  # the same figures: the same samples
        assert any("answered from the journal with 1 period" in r.getMessage() for r in caplog.records)

        # 3. InfluxDB down: the journal answers, with what it has (nothing there)
        influx.kill()
        caplog.clear()
        answer = ask(platform, record, "2061", hour0, hour0 + 3599 * NS)
        assert [m["cn"] for m in answer] == ["9011", "9012"] and answer[1]["cp"] == "ExeRtn=100"
        assert any("InfluxDB did not answer" in r.getMessage() for r in caplog.records)
        assert any("answered from the journal (InfluxDB unavailable)" in r.getMessage()
                   for r in caplog.records)

    finally:
        d.stop()
