"""End to end: Modbus simulators → gateway (polling, rules, journal) → historian → a real
influxd that is killed and restarted while the plant keeps running. Afterwards every
sample the journal holds is in InfluxDB exactly once, with its value and time."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.app import Gateway
from gateway.config import loads
from gateway.core.batch import Batch, Quality
from gateway.core.record import SAMPLES
from gateway.historian.service import HistorianService
from tests.fixtures.helpers import async_wait_until
from tests.fixtures.influxd import Influxd, unique_db
from tests.fixtures.sims import MODBUS_EXPECTED, SimProcess, gateway_yaml

pytestmark = pytest.mark.timeout(120)


def historian(gw: Gateway) -> HistorianService:
    svc = next(s for s in gw.services if s.name == "influxdb")
    assert isinstance(svc, HistorianService)
    return svc


async def test_plant_to_influx_through_an_outage(modbus_plant: SimProcess, influxd_factory: Any,
                                                 tmp_path: Path) -> None:
    srv: Influxd = influxd_factory()
    db = unique_db("e2e")
    text = gateway_yaml(modbus_plant, tmp_path / "state", poll="200ms") + (
        f"influxdb: {{url: {srv.url}, database: {db}, flush_every: 200ms, max_backoff: 500ms,"
        " timeout: 2s}\n")
    cfg = loads(text)
    gw = Gateway(cfg)
    run = asyncio.create_task(gw.run(drain_s=20))
    try:
        await async_wait_until(lambda: gw.services and historian(gw).cursor > 5, 30,
                               what="first samples in InfluxDB")
        svc = historian(gw)
        srv.kill()
        await async_wait_until(lambda: svc.writer.state == "retrying", 15)
        lag_during = gw.journal.lag("influxdb")
        await async_wait_until(lambda: gw.journal.lag("influxdb") > lag_during + 5, 15,
                               what="a backlog while the server is down")
        srv.start()
        await async_wait_until(lambda: svc.writer.state == "ok", 30)
    finally:
        gw.stop()
        await asyncio.wait_for(run, 60)
    # the journal is closed by run(); read it again
    from gateway.store.journal import Journal

    with Journal(tmp_path / "state" / "journal.db") as j:
        assert j.cursor("influxdb") == j.last_seq  # drained on stop
        recs = [r for r in j.read_sync(0, 100_000) if r.kind == SAMPLES]
    sent = Batch.concat([r.batch() for r in recs])
    assert len(sent) >= 20
    names = gw.table.names()
    got = srv.rows("SELECT value, quality FROM /.*/ WHERE gateway = 'gw-test' GROUP BY channel", db)
    got = [r for r in got if r["_measurement"] not in ("stats_5m", "alarms", "events")]
    keys = [(r["channel"], r["time"]) for r in got]
    assert len(keys) == len(set(keys)) == len(sent)  # all there, none twice
    by_key = {(r["channel"], r["time"]): r for r in got}
    good = 0
    for ch, ts, v, q in zip(sent.channel.tolist(), sent.ts.tolist(), sent.value.tolist(),
                            sent.quality.tolist(), strict=True):
        r = by_key[(names[ch], ts)]
        assert r["quality"] == q
        if q < Quality.BAD:
            assert r["value"] == v
            good += 1
    assert good > 0
    gt = np.array([r["value"] for r in got if r["channel"] == "GT-1" and r["value"] is not None])
    assert np.allclose(gt, MODBUS_EXPECTED["GT-1"], atol=5)
