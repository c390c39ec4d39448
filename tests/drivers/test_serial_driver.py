"""The serial driver against simulated instruments on real ptys (socat pairs).

Each test starts the serial simulator in-process (it owns the socat pair), then drives
the real driver (or the whole gateway) on the pty's other end.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from drivers.base import DeviceUnavailable, make_driver
from gateway.config import loads
from gateway.core.batch import Batch, Quality
from gateway.core.channels import ChannelTable
from simulators.config import loads as sim_loads
from simulators.runner import Simulator
from simulators.scenario import Fault
from tests.fixtures.helpers import async_wait_until

pytestmark = [pytest.mark.skipif(shutil.which("socat") is None, reason="socat not installed"),
              pytest.mark.timeout(60)]

SIGNALS = """
signals:
  LAeq: {base: 65.0}
  LCpk: {base: 98.0}
  PM10: {base: 0.125}
  DOSE: {base: 0.15}
"""


def sim_yaml(link: Path, body: str) -> str:
    return SIGNALS + f"""
devices:
  - name: inst
    protocol: serial
    link: {link}
{body}
"""


def gw_yaml(tmp: Path, link: Path | str, body: str, poll: str = "300ms", timeout: str = "300ms") -> str:
    return f"""
gateway: {{id: gw-test, site: "test", state_dir: {tmp / 'state'}}}
devices:
  - name: inst
    protocol: serial
    port: {link}
    poll: {poll}
    timeout: {timeout}
    retries: 0
{body}
"""


STREAM_SIM = """
    interval: 50ms
    template: "LAeq={0:05.1f},LCpk={1:05.1f}"
    signals: [LAeq, LCpk]
    checksum: xor
    checksum_separator: "*"
"""
STREAM_GW = """
    frame:
      terminator: "\\r\\n"
      checksum: xor
      checksum_separator: "*"
      pattern: 'LAeq=(?P<laeq>[0-9.]+),LCpk=(?P<lcpk>[0-9.]+)'
    channels:
      - {name: N-01.LAeq, kind: noise, unit: dB(A), group: laeq}
      - {name: N-01.LCpk, kind: noise, unit: dB(C), group: lcpk}
"""


@contextlib.asynccontextmanager
async def running(sim_text: str):
    sim = Simulator(sim_loads(sim_text))
    await sim.start()
    try:
        yield sim
    finally:
        await sim.close()


def driver_for(text: str):
    cfg = loads(text)
    table = ChannelTable.from_config(cfg)
    return make_driver(cfg.devices[0], table.by_device["inst"])


class Collector:
    def __init__(self) -> None:
        self.batches: list[Batch] = []

    def __call__(self, b: Batch) -> None:
        self.batches.append(b)

    def all(self) -> Batch:
        return Batch.concat(self.batches)

    def qualities(self) -> set[int]:
        return {int(q) for b in self.batches for q in b.quality}


@contextlib.asynccontextmanager
async def streaming(drv, sink):
    await drv.open()
    task = asyncio.create_task(drv.stream(sink))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, DeviceUnavailable):
            await task
        await drv.close()


async def test_streaming_terminator_xor(tmp_path):
    link = tmp_path / "tty0"
    async with running(sim_yaml(link, STREAM_SIM)):
        drv = driver_for(gw_yaml(tmp_path, link, STREAM_GW))
        assert type(drv).__name__ == "SerialStreamDriver"
        got = Collector()
        async with streaming(drv, got):
            await async_wait_until(lambda: drv.info["good_frames"] >= 5, 10, what="5 good frames")
        b = got.all().select(got.all().quality == Quality.GOOD)
        assert set(b.channel.tolist()) == {0, 1}
        assert np.allclose(b.value[b.channel == 0], 65.0) and np.allclose(b.value[b.channel == 1], 98.0)
        assert drv.info["checksum_errors"] == 0 and drv.info["parse_errors"] == 0


async def test_streaming_checksum_and_garbage_faults_then_recovery(tmp_path):
    link = tmp_path / "tty0"
    async with running(sim_yaml(link, STREAM_SIM)) as sim:
        drv = driver_for(gw_yaml(tmp_path, link, STREAM_GW))
        got = Collector()
        async with streaming(drv, got):
            await async_wait_until(lambda: drv.info["good_frames"] >= 2, 10, what="good frames")
            sim.plant.force_fault("inst", Fault("checksum"))
            await sim.tick()
            await async_wait_until(lambda: drv.info["checksum_errors"] >= 3, 10, what="checksum errors")
            assert Quality.CHECKSUM in got.qualities()
            sim.plant.force_fault("inst", Fault("garbage"))
            await sim.tick()
            await async_wait_until(lambda: drv.info["parse_errors"] >= 3, 10, what="parse errors")
            assert Quality.PARSE in got.qualities()
            sim.plant.force_fault("inst", None)
            await sim.tick()
            n = len(got.batches)
            await async_wait_until(
                lambda: any((b.quality == Quality.GOOD).all() for b in got.batches[n:]), 10, what="recovery")
        assert drv.info["last_bad_frame"] is not None


async def test_streaming_background_garbage_keeps_good_frames(tmp_path):
    link = tmp_path / "tty0"
    async with running(sim_yaml(link, STREAM_SIM + "    garbage_rate: 0.5\n")):
        drv = driver_for(gw_yaml(tmp_path, link, STREAM_GW))
        got = Collector()
        async with streaming(drv, got):
            await async_wait_until(lambda: drv.info["good_frames"] >= 10 and drv.info["parse_errors"] >= 2,
                                   15, what="good and garbage frames")
        good = got.all().select(got.all().quality == Quality.GOOD)
        assert np.allclose(good.value[good.channel == 0], 65.0)


async def test_silent_line_gives_timeout_and_partial_frames_are_counted(tmp_path):
    link = tmp_path / "tty0"
    async with running(sim_yaml(link, STREAM_SIM.replace("50ms", "150ms"))) as sim:
        # a frame whose bytes stop for 50 ms is partial (the simulator sends one every 150 ms)
        gw = STREAM_GW.replace("      checksum: xor", "      gap: 50ms\n      checksum: xor")
        drv = driver_for(gw_yaml(tmp_path, link, gw))
        got = Collector()
        async with streaming(drv, got):
            await async_wait_until(lambda: drv.info["good_frames"] >= 2, 10, what="good frames")
            sim.plant.force_fault("inst", Fault("silent"))
            await sim.tick()
            await async_wait_until(lambda: Quality.TIMEOUT in got.qualities(), 10, what="timeout quality")
            assert drv.info["timeouts"] >= 1
            sim.plant.force_fault("inst", Fault("partial"))
            await sim.tick()
            await async_wait_until(lambda: drv.info["partial_frames"] >= 3, 10, what="partial frames")
            sim.plant.force_fault("inst", None)
            await sim.tick()
            good_before = drv.info["good_frames"]
            await async_wait_until(lambda: drv.info["good_frames"] > good_before + 2, 10, what="recovery")


POLL_SIM = """
    request: "MEAS?\\r"
    terminator: null
    length: 24
    start: "\\x02"
    template: "PM10={0:06.3f}"
    signals: [PM10]
    checksum: crc16-modbus
    checksum_format: binary
    checksum_from: 1
"""
POLL_GW = """
    frame:
      length: 24
      start: "\\x02"
      request: "MEAS?\\r"
      checksum: crc16-modbus
      checksum_format: binary
      checksum_from: 1
    channels:
      - {name: D-01.PM10, kind: dust, unit: mg/m3, pattern: 'PM10=(?P<value>[0-9.]+)', scale: 1000}
"""


async def test_polled_fixed_length_crc16_binary(tmp_path):
    link = tmp_path / "tty0"
    async with running(sim_yaml(link, POLL_SIM)) as sim:
        drv = driver_for(gw_yaml(tmp_path, link, POLL_GW))
        assert type(drv).__name__ == "SerialPollDriver"
        await drv.open()
        try:
            b = await drv.poll()
            assert b.quality.tolist() == [Quality.GOOD]
            assert b.value[0] == pytest.approx(125.0)  # 0.125 mg/m3 × scale 1000
            sim.plant.force_fault("inst", Fault("checksum"))
            await sim.tick()
            b = await drv.poll()
            assert b.quality.tolist() == [Quality.CHECKSUM] and np.isnan(b.value[0])
            sim.plant.force_fault("inst", Fault("silent"))
            await sim.tick()
            b = await drv.poll()
            assert b.quality.tolist() == [Quality.TIMEOUT]
            sim.plant.force_fault("inst", None)
            await sim.tick()
            b = await drv.poll()
            assert b.quality.tolist() == [Quality.GOOD]
            assert drv.info["checksum_errors"] == 1 and drv.info["timeouts"] == 1
        finally:
            await drv.close()


POLL_SUM8_SIM = """
    request: "R\\r\\n"
    template: "{0:8.4f} uSv/h"
    signals: [DOSE]
    checksum: sum8
    checksum_separator: ","
"""
POLL_SUM8_GW = """
    frame:
      terminator: "\\r\\n"
      request: "R\\r\\n"
      checksum: sum8
      checksum_separator: ","
    channels:
      - {name: G-01, kind: radiation, unit: uSv/h, field: [0, 8], range: [0, 0.1]}
"""


async def test_polled_sum8_fixed_width_field_and_range(tmp_path):
    link = tmp_path / "tty0"
    async with running(sim_yaml(link, POLL_SUM8_SIM)) as sim:
        drv = driver_for(gw_yaml(tmp_path, link, POLL_SUM8_GW))
        await drv.open()
        try:
            b = await drv.poll()
            # 0.15 is beyond the configured span [0, 0.1]: kept, but flagged
            assert b.quality.tolist() == [Quality.OUT_OF_RANGE] and b.value[0] == pytest.approx(0.15)
            sim.plant.force_value("DOSE", 0.05)
            await sim.tick()
            b = await drv.poll()
            assert b.quality.tolist() == [Quality.GOOD] and b.value[0] == pytest.approx(0.05)
        finally:
            await drv.close()


async def test_missing_port_is_device_unavailable(tmp_path):
    drv = driver_for(gw_yaml(tmp_path, tmp_path / "nope", STREAM_GW))
    with pytest.raises(DeviceUnavailable) as ei:
        await drv.open()
    assert ei.value.cause == Quality.COMMS and "nope" in str(ei.value)


async def test_gateway_rides_out_unplugged_adapter(tmp_path):
    """The whole daemon: adapter pulled (pty pair gone) → COMMS; plugged back → good again."""
    from gateway.app import Gateway

    link = tmp_path / "tty0"
    async with running(sim_yaml(link, STREAM_SIM)) as sim:
        cfg = loads(gw_yaml(tmp_path, link, STREAM_GW, poll="200ms", timeout="200ms"))
        gw = Gateway(cfg)
        task = asyncio.create_task(gw.run(drain_s=1.0))
        try:
            await async_wait_until(lambda: (gw.live.quality == Quality.GOOD).all(), 10, what="good values")
            sim.plant.force_fault("inst", Fault("disconnect"))
            await sim.tick()
            assert not link.exists()
            await async_wait_until(lambda: (gw.live.quality == Quality.COMMS).all(), 10, what="COMMS quality")
            assert gw.devices["inst"].state == "failing"
            sim.plant.force_fault("inst", None)
            await sim.tick()
            assert link.exists()
            await async_wait_until(lambda: (gw.live.quality == Quality.GOOD).all(), 20, what="recovery")
            assert gw.devices["inst"].state == "ok"
            assert gw.drivers["inst"].info["opens"] >= 2
        finally:
            gw.stop()
            await asyncio.wait_for(task, 10)


async def test_serial_device_server_over_tcp(tmp_path):
    """A terminal server in TCP server mode (tcp://host:port): polled answers, then the link drops."""
    from drivers.serial.frames import checksum_text
    from tests.fixtures.helpers import free_port

    writers: list[asyncio.StreamWriter] = []

    async def instrument(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while True:
            req = await reader.readuntil(b"\r\n")
            if req == b"R\r\n":
                body = b"   0.0500 uSv/h"
                writer.write(body + b"," + checksum_text("sum8", "hex", body) + b"\r\n")

    port = free_port()
    server = await asyncio.start_server(instrument, "127.0.0.1", port)
    try:
        text = gw_yaml(tmp_path, f"tcp://127.0.0.1:{port}", POLL_SUM8_GW)
        drv = driver_for(text)
        await drv.open()
        try:
            b = await drv.poll()
            assert b.quality.tolist() == [Quality.GOOD] and b.value[0] == pytest.approx(0.05)
            writers[0].close()  # the device server drops us
            await async_wait_until(lambda: drv._error is not None, 5, what="link loss seen")
            with pytest.raises(DeviceUnavailable):
                await drv.poll()
            await drv.open()  # what the gateway's backoff does
            b = await drv.poll()
            assert b.quality.tolist() == [Quality.GOOD] and drv.info["opens"] == 2
        finally:
            await drv.close()
    finally:
        server.close()
        await server.wait_closed()
