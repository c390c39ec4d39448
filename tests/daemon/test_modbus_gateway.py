"""The Gateway polling the Modbus simulators end to end: values land in the journal,
faults become bad samples with their cause, and devices recover on their own."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest

from gateway.app import Gateway
from gateway.config import loads
from gateway.core.batch import Quality
from gateway.core.record import SAMPLES
from gateway.store.journal import Journal
from tests.fixtures.helpers import async_wait_until
from tests.fixtures.sims import MODBUS_EXPECTED, SimProcess, gateway_yaml


def _journal_samples(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    chans, vals, quals = [], [], []
    with Journal(path) as j:
        after = 0
        while recs := j.read_sync(after, 1000, kinds=(SAMPLES,)):
            for r in recs:
                b = r.batch()
                chans.append(b.channel)
                vals.append(b.value)
                quals.append(b.quality)
            after = recs[-1].seq
    return np.concatenate(chans), np.concatenate(vals), np.concatenate(quals)


async def test_gateway_journals_values_and_faults(modbus_plant: SimProcess, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    cfg = loads(gateway_yaml(modbus_plant, tmp_path / "state", poll="200ms"))
    gw = Gateway(cfg)
    run = asyncio.create_task(gw.run(drain_s=1.0))
    idx = {name: gw.table.index(name) for name in MODBUS_EXPECTED}
    try:
        def all_good() -> bool:
            return all(gw.live.quality[i] == Quality.GOOD for i in idx.values())

        await async_wait_until(all_good, timeout=15, what="every channel good")
        for name, i in idx.items():
            assert gw.live.value[i] == MODBUS_EXPECTED[name]

        # one unit on the RS-485 line goes silent: only its channel turns bad
        modbus_plant.control(fault="rtu-bus", unit=2, kind="silent")
        await async_wait_until(lambda: gw.live.quality[idx["LT-1"]] == Quality.TIMEOUT, timeout=10,
                               what="LT-1 timing out")
        assert gw.live.quality[idx["PT-1"]] == Quality.GOOD
        modbus_plant.control(clear="rtu-bus", unit=2)
        await async_wait_until(lambda: gw.live.quality[idx["LT-1"]] == Quality.GOOD, timeout=10,
                               what="LT-1 back")

        # the TCP device drops its connections and refuses new ones for a while
        mark = len(caplog.records)
        modbus_plant.control(fault="tcp-dev", kind="disconnect")
        await async_wait_until(lambda: gw.devices["tcp-dev"].state == "failing", timeout=10,
                               what="tcp-dev failing")
        assert gw.live.quality[idx["GT-1"]] == Quality.COMMS
        assert gw.live.quality[idx["PT-1"]] == Quality.GOOD  # the neighbours carry on
        modbus_plant.control(clear="tcp-dev")
        # the gateway backs off (about one poll, doubling) and reconnects by itself
        await async_wait_until(lambda: gw.devices["tcp-dev"].state == "ok" and all_good(), timeout=15,
                               what="tcp-dev recovered")
    finally:
        gw.stop()
        await asyncio.wait_for(run, 15)

    ch, val, q = _journal_samples(tmp_path / "state" / "journal.db")
    for name, i in idx.items():
        mine = ch == i
        good = mine & (q == Quality.GOOD)
        assert good.sum() >= 3, name
        assert (val[good] == MODBUS_EXPECTED[name]).all(), name  # every good sample carries the value
        assert np.isnan(val[mine & (q >= Quality.BAD)]).all()
    assert (q[ch == idx["LT-1"]] == Quality.TIMEOUT).any()
    assert (q[ch == idx["GT-1"]] == Quality.COMMS).any()
    assert not (q[ch == idx["PT-1"]] >= Quality.BAD).any()
    # log once when failing, once when recovering
    later = caplog.records[mark:]
    fails = [r for r in later if r.levelno == logging.ERROR and "device tcp-dev failed" in r.message]
    recs = [r for r in later if "device tcp-dev recovered" in r.message]
    assert len(fails) == 1 and len(recs) == 1
    unit_logs = [r.message for r in caplog.records if "unit 2" in r.message]
    assert any("not answering" in m for m in unit_logs) and any("recovered" in m for m in unit_logs)


@pytest.mark.slow
async def test_gateway_rides_out_an_unplugged_adapter(modbus_plant: SimProcess, tmp_path: Path) -> None:
    import os
    import signal

    cfg = loads(gateway_yaml(modbus_plant, tmp_path / "state", poll="200ms"))
    gw = Gateway(cfg)
    run = asyncio.create_task(gw.run(drain_s=1.0))
    pt, gt = gw.table.index("PT-1"), gw.table.index("GT-1")
    try:
        await async_wait_until(lambda: gw.live.quality[pt] == Quality.GOOD, timeout=15, what="PT-1 good")
        os.kill(modbus_plant.endpoints["rtu-bus"]["socat_pid"], signal.SIGKILL)
        await async_wait_until(lambda: gw.live.quality[pt] == Quality.COMMS, timeout=10, what="PT-1 bad")
        assert gw.devices["rtu-bus"].state == "failing"
        assert gw.live.quality[gt] == Quality.GOOD  # TCP unaffected
        # the simulator re-creates the pty pair; the gateway reopens it with backoff
        await async_wait_until(lambda: gw.live.quality[pt] == Quality.GOOD, timeout=20, what="PT-1 back")
        assert gw.live.value[pt] == MODBUS_EXPECTED["PT-1"]
        assert gw.devices["rtu-bus"].state == "ok"
    finally:
        gw.stop()
        await asyncio.wait_for(run, 15)


async def test_silent_units_do_not_take_the_bus_down(modbus_plant: SimProcess, tmp_path: Path) -> None:
    """Three of four units on the line are absent: each costs its timeout, more than one
    device timeout in total, yet the unit that answers stays good."""
    link = modbus_plant.endpoints["rtu-bus"]["port"]
    cfg = loads(f"""
gateway: {{id: gw-test, site: "TEST", state_dir: "{tmp_path / 'state'}"}}
devices:
  - name: rtu-bus
    protocol: modbus-rtu
    port: "{link}"
    poll: 300ms
    timeout: 150ms
    retries: 1
    units:
      - {{unit: 1, channels: [{{name: PT-1, kind: pressure, address: holding:0, type: float32}}]}}
      - {{unit: 3, channels: [{{name: X-3, kind: other, address: holding:0}}]}}
      - {{unit: 4, channels: [{{name: X-4, kind: other, address: holding:0}}]}}
      - {{unit: 5, channels: [{{name: X-5, kind: other, address: holding:0}}]}}
""")
    gw = Gateway(cfg)
    run = asyncio.create_task(gw.run(drain_s=1.0))
    pt, x3 = gw.table.index("PT-1"), gw.table.index("X-3")
    try:
        await async_wait_until(lambda: gw.devices["rtu-bus"].polls >= 2, timeout=20, what="two polls")
        assert gw.live.quality[pt] == Quality.GOOD and gw.live.value[pt] == 1.25
        assert gw.live.quality[x3] == Quality.TIMEOUT
        assert gw.devices["rtu-bus"].errors == 0  # never failed as a whole
    finally:
        gw.stop()
        await asyncio.wait_for(run, 15)
