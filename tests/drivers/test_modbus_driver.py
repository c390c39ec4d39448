"""Modbus TCP/RTU drivers against the simulators over real TCP sockets and real ptys."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drivers.base import DeviceUnavailable, make_driver
from drivers.modbus.driver import ModbusRtuDriver, ModbusTcpDriver
from gateway.config import loads
from gateway.core.batch import Batch, Quality
from gateway.core.channels import ChannelTable
from gateway.core.config import Config
from tests.fixtures.helpers import async_wait_until, free_port
from tests.fixtures.sims import MODBUS_EXPECTED, SimProcess, gateway_yaml


def _drivers(cfg: Config) -> dict[str, Any]:
    table = ChannelTable.from_config(cfg)
    return {d.name: make_driver(d, table.by_device[d.name]) for d in cfg.devices}


def _values(drv: Any, batch: Batch) -> dict[str, tuple[float, int]]:
    names = {c.index: c.name for c in drv.channels}
    return {names[int(c)]: (float(v), int(q)) for c, v, q in zip(batch.channel, batch.value, batch.quality,
                                                                    strict=True)}


async def test_tcp_and_rtu_poll_values(modbus_plant: SimProcess, tmp_path: Path) -> None:
    drivers = _drivers(loads(gateway_yaml(modbus_plant, tmp_path)))
    got: dict[str, tuple[float, int]] = {}
    for drv in drivers.values():
        await drv.open()
        try:
            got.update(_values(drv, await drv.poll()))
        finally:
            await drv.close()
    assert got == {k: (v, Quality.GOOD) for k, v in MODBUS_EXPECTED.items()}
    assert isinstance(drivers["tcp-dev"], ModbusTcpDriver)
    assert isinstance(drivers["rtu-bus"], ModbusRtuDriver)


async def test_values_follow_the_simulator(modbus_plant: SimProcess, tmp_path: Path) -> None:
    drv = _drivers(loads(gateway_yaml(modbus_plant, tmp_path)))["tcp-dev"]
    await drv.open()
    try:
        modbus_plant.control(set="TT-1", value=-3.5)
        assert _values(drv, await drv.poll())["TT-1"] == (-3.5, Quality.GOOD)
        modbus_plant.control(set="GT-1", value=-12.3)  # int16 with scale 0.1
        assert _values(drv, await drv.poll())["GT-1"][0] == pytest.approx(-12.3)
    finally:
        await drv.close()


async def test_rtu_silent_unit_marks_only_its_channels(modbus_plant: SimProcess, tmp_path: Path) -> None:
    drv = _drivers(loads(gateway_yaml(modbus_plant, tmp_path)))["rtu-bus"]
    await drv.open()
    try:
        modbus_plant.control(fault="rtu-bus", unit=2, kind="silent")
        v = _values(drv, await drv.poll())
        assert v["PT-1"] == (1.25, Quality.GOOD)
        assert v["LT-1"][1] == Quality.TIMEOUT and np.isnan(v["LT-1"][0])
        assert any("no answer" in e for e in drv.errors.values())
        modbus_plant.control(clear="rtu-bus", unit=2)
        v = _values(drv, await drv.poll())
        assert v["LT-1"] == (6.5, Quality.GOOD)
    finally:
        await drv.close()


async def test_exception_replies_are_device_exception(modbus_plant: SimProcess, tmp_path: Path) -> None:
    drivers = _drivers(loads(gateway_yaml(modbus_plant, tmp_path)))
    tcp, rtu = drivers["tcp-dev"], drivers["rtu-bus"]
    await tcp.open()
    await rtu.open()
    try:
        modbus_plant.control(fault="tcp-dev", kind="exception", code=4)
        modbus_plant.control(fault="rtu-bus", unit=1, kind="exception", code=6)
        v = _values(tcp, await tcp.poll())
        assert {q for _, q in v.values()} == {Quality.DEVICE_EXCEPTION}
        assert any("exception 4 (server device failure)" in e for e in tcp.errors.values())
        v = _values(rtu, await rtu.poll())
        assert v["PT-1"][1] == Quality.DEVICE_EXCEPTION and v["LT-1"] == (6.5, Quality.GOOD)
        assert any("exception 6" in e for e in rtu.errors.values())
    finally:
        await tcp.close()
        await rtu.close()


async def test_missing_register_is_split_out_and_named(modbus_plant: SimProcess, tmp_path: Path) -> None:
    host, port = modbus_plant.tcp("tcp-dev")
    cfg = loads(f"""
gateway: {{id: g, site: "S", state_dir: "{tmp_path}"}}
devices:
  - name: tcp-dev
    protocol: modbus-tcp
    host: {host}
    port: {port}
    timeout: 500ms
    channels:
      - {{name: a, kind: other, address: holding:999}}
      - {{name: b, kind: other, address: holding:1000}}
""")
    drv = _drivers(cfg)["tcp-dev"]
    await drv.open()
    try:
        # the simulated unit has registers 0-999: the merged read 999-1000 is refused
        assert len(drv.plan.requests) == 1
        first = _values(drv, await drv.poll())  # the merged read fails with exception 2
        assert {q for _, q in first.values()} == {Quality.DEVICE_EXCEPTION}
        assert len(drv.plan.requests) == 2  # split for the next cycle
        second = _values(drv, await drv.poll())
        assert second["a"][1] == Quality.GOOD
        assert second["b"][1] == Quality.CONFIG
        assert any("holding:1000" in k and "illegal data address" in e for k, e in drv.errors.items())
    finally:
        await drv.close()


async def test_tcp_refused_and_dropped_connection(modbus_plant: SimProcess, tmp_path: Path) -> None:
    cfg = loads(gateway_yaml(modbus_plant, tmp_path))
    dead = cfg.devices[0].model_copy(update={"port": free_port()})
    table = ChannelTable.from_config(cfg)
    refused = make_driver(dead, table.by_device["tcp-dev"])
    with pytest.raises(DeviceUnavailable, match="cannot connect") as ei:
        await refused.open()
    assert ei.value.cause == Quality.COMMS

    drv = _drivers(cfg)["tcp-dev"]
    await drv.open()
    try:
        assert len(await drv.poll()) == 3
        modbus_plant.control(fault="tcp-dev", kind="disconnect")
        with pytest.raises(DeviceUnavailable, match="lost"):
            for _ in range(50):  # the drop reaches us within a poll or two
                await drv.poll()
                await asyncio.sleep(0.02)
        with pytest.raises(DeviceUnavailable):
            await drv.open()  # connects are reset while the device is down
            for _ in range(50):
                await drv.poll()
                await asyncio.sleep(0.02)
        modbus_plant.control(clear="tcp-dev")

        async def reopened() -> bool:
            try:
                await drv.open()
                await drv.poll()
            except DeviceUnavailable:
                return False
            return True

        await async_wait_until(reopened, timeout=10, interval=0.1, what="device accepting again")
        assert _values(drv, await drv.poll())["GT-1"] == (12.5, Quality.GOOD)
    finally:
        await drv.close()


async def test_tcp_silent_device_times_out_within_bounds(modbus_plant: SimProcess, tmp_path: Path) -> None:
    cfg = loads(gateway_yaml(modbus_plant, tmp_path))
    drv = _drivers(cfg)["tcp-dev"]
    await drv.open()
    try:
        modbus_plant.control(fault="tcp-dev", kind="silent")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        v = _values(drv, await drv.poll())
        took = loop.time() - t0
        assert {q for _, q in v.values()} == {Quality.TIMEOUT}
        # three reads (holding, input, coil) but one timeout: the rest are skipped
        assert took < 3 * cfg.devices[0].timeout
        modbus_plant.control(clear="tcp-dev")
        # late replies to abandoned requests must not confuse the next poll
        assert _values(drv, await drv.poll())["TT-1"] == (21.75, Quality.GOOD)
    finally:
        await drv.close()


async def test_pipelined_reads(sim_factory: Callable[..., SimProcess], tmp_path: Path) -> None:
    n = 400
    points = "\n".join(f"          - {{value: {i + 0.5}, address: input:{2 * i}, type: float32}}"
                       for i in range(n))
    sim = sim_factory(f"""
signals: {{}}
devices:
  - name: big
    protocol: modbus-tcp
    port: 0
    units:
      - unit: 1
        size: 1000
        points:
{points}
""")
    host, port = sim.tcp("big")
    chans = "\n".join(f"      - {{name: c{i}, kind: other, address: input:{2 * i}, type: float32}}"
                      for i in range(n))
    cfg = loads(f"""
gateway: {{id: g, site: "S", state_dir: "{tmp_path}"}}
devices:
  - name: big
    protocol: modbus-tcp
    host: {host}
    port: {port}
    pipeline: 4
    channels:
{chans}
""")
    drv = _drivers(cfg)["big"]
    assert len(drv.plan.requests) == 7  # 800 registers in reads of <= 124 (whole float32s)
    await drv.open()
    try:
        b = await drv.poll()
        assert (b.quality == 0).all()
        assert b.value.tolist() == [i + 0.5 for i in range(n)]
    finally:
        await drv.close()


async def test_lean_tcp_client_against_pymodbus_server(tmp_path: Path) -> None:
    """Cross-check our client with an independent server implementation (pymodbus')."""
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    port = free_port()
    hr = [0] * 200
    hr[10:12] = [0x0000, 0x4120]  # holding 10-11: 10.0 CDAB
    hr[20] = 0xFF38  # holding 20: -200
    ir = [0] * 200
    ir[0:4] = [0x405E, 0xDD2F, 0x1A9F, 0xBE77]  # input 0-3: float64 123.456
    co = [False] * 64
    co[3] = True
    dev = SimDevice(id=1, simdata=(
        [SimData(0, values=co, datatype=DataType.BITS)],
        [SimData(0, values=[False] * 64, datatype=DataType.BITS)],
        [SimData(0, values=hr, datatype=DataType.REGISTERS)],
        [SimData(0, values=ir, datatype=DataType.REGISTERS)]))
    server = ModbusTcpServer([dev], address=("127.0.0.1", port))
    task = asyncio.create_task(server.serve_forever())
    try:
        cfg = loads(f"""
gateway: {{id: g, site: "S", state_dir: "{tmp_path}"}}
devices:
  - name: pm
    protocol: modbus-tcp
    host: 127.0.0.1
    port: {port}
    channels:
      - {{name: f, kind: other, address: holding:10, type: float32, byte_order: CDAB}}
      - {{name: i, kind: other, address: holding:20, type: int16}}
      - {{name: d, kind: other, address: input:0, type: float64}}
      - {{name: c, kind: other, address: coil:3, type: bool}}
      - {{name: c2, kind: other, address: coil:4, type: bool}}
""")
        drv = _drivers(cfg)["pm"]

        async def connected() -> bool:
            try:
                await drv.open()
                return True
            except DeviceUnavailable:
                return False

        await async_wait_until(connected, timeout=10, what="pymodbus server")
        v = _values(drv, await drv.poll())
        assert v == {"f": (10.0, 0), "i": (-200.0, 0), "d": (123.456, 0), "c": (1.0, 0), "c2": (0.0, 0)}
        await drv.close()
    finally:
        await server.shutdown()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.slow
async def test_serial_adapter_unplugged_and_back(modbus_plant: SimProcess, tmp_path: Path) -> None:
    """socat killed = USB adapter pulled: DeviceUnavailable, then the pty pair comes back."""
    drv = _drivers(loads(gateway_yaml(modbus_plant, tmp_path)))["rtu-bus"]
    await drv.open()
    try:
        assert _values(drv, await drv.poll())["PT-1"] == (1.25, Quality.GOOD)
        link = Path(modbus_plant.endpoints["rtu-bus"]["port"])
        assert os.path.islink(link)  # noqa: ASYNC240 - a one-off check, not I/O on the loop's path
        os.kill(modbus_plant.endpoints["rtu-bus"]["socat_pid"], signal.SIGKILL)
        with pytest.raises(DeviceUnavailable):
            for _ in range(50):
                await drv.poll()
                await asyncio.sleep(0.05)
        await drv.close()

        async def replugged() -> bool:
            # the new pair may get the same /dev/pts numbers: wait for a good reading instead
            try:
                await drv.open()
                return _values(drv, await drv.poll())["PT-1"] == (1.25, Quality.GOOD)
            except (DeviceUnavailable, OSError):
                await drv.close()
                return False

        await async_wait_until(replugged, timeout=15, interval=0.1, what="pty pair re-created")
    finally:
        await drv.close()


async def test_serial_link_removed_and_restored(modbus_plant: SimProcess, tmp_path: Path) -> None:
    """The device node disappears (udev removed it): reopening fails until it is back."""
    drv = _drivers(loads(gateway_yaml(modbus_plant, tmp_path)))["rtu-bus"]
    link = modbus_plant.endpoints["rtu-bus"]["port"]
    target = os.readlink(link)
    await drv.open()
    try:
        assert _values(drv, await drv.poll())["LT-1"] == (6.5, Quality.GOOD)
        os.unlink(link)
        await drv.close()
        with pytest.raises(DeviceUnavailable, match="cannot open serial port"):
            await drv.open()
        os.symlink(target, link)
        await drv.open()
        assert _values(drv, await drv.poll())["LT-1"] == (6.5, Quality.GOOD)
    finally:
        await drv.close()


async def test_rtu_port_missing_is_device_unavailable(tmp_path: Path) -> None:
    cfg = loads(f"""
gateway: {{id: g, site: "S", state_dir: "{tmp_path}"}}
devices:
  - name: bus
    protocol: modbus-rtu
    port: {tmp_path}/no-such-tty
    units: [{{unit: 1, channels: [{{name: x, kind: other, address: holding:0}}]}}]
""")
    drv = _drivers(cfg)["bus"]
    with pytest.raises(DeviceUnavailable, match="cannot open serial port") as ei:
        await drv.open()
    assert ei.value.cause == Quality.COMMS


TYPES = [("int16", -1234.0), ("uint16", 54321.0), ("int32", -123456789.0), ("uint32", 3000000000.0),
         ("float32", -0.15625), ("float64", 123456.789012)]
ORDERS = ["ABCD", "CDAB", "BADC", "DCBA"]


async def test_every_type_and_byte_order_over_the_wire(sim_factory: Callable[..., SimProcess],
                                                       tmp_path: Path) -> None:
    """The simulator encodes, the driver decodes, over a real socket: every combination."""
    combos = [(t, o, v) for t, v in TYPES for o in ORDERS
              if not (t in ("int16", "uint16") and o in ("CDAB", "DCBA"))]
    points, chans, reg = [], [], 0
    for i, (t, o, v) in enumerate(combos):
        points.append(f"          - {{value: {v}, address: 'holding:{reg}', type: {t}, byte_order: {o}}}")
        chans.append(f"      - {{name: c{i}, kind: other, address: 'holding:{reg}', type: {t}, "
                     f"byte_order: {o}}}")
        reg += 4
    points.append("          - {value: 1, address: 'input:7.13', type: bool}")
    chans.append("      - {name: bit, kind: status, address: 'input:7.13', type: bool}")
    chans.append("      - {name: bit12, kind: status, address: 'input:7.12', type: bool}")
    sim = sim_factory("signals: {}\ndevices:\n  - name: d\n    protocol: modbus-tcp\n    port: 0\n"
                      "    units:\n      - unit: 1\n        points:\n" + "\n".join(points) + "\n")
    host, port = sim.tcp("d")
    cfg = loads(f"gateway: {{id: g, site: 'S', state_dir: '{tmp_path}'}}\ndevices:\n  - name: d\n"
                f"    protocol: modbus-tcp\n    host: {host}\n    port: {port}\n    channels:\n"
                + "\n".join(chans) + "\n")
    drv = _drivers(cfg)["d"]
    assert len(drv.plan.requests) == 2  # all holding registers in one read, the bit in another
    await drv.open()
    try:
        got = _values(drv, await drv.poll())
    finally:
        await drv.close()
    for i, (t, o, v) in enumerate(combos):
        want = float(np.float32(v)) if t == "float32" else v
        assert got[f"c{i}"] == (want, Quality.GOOD), (t, o)
    assert got["bit"] == (1.0, Quality.GOOD) and got["bit12"] == (0.0, Quality.GOOD)


async def test_rtu_disconnect_fault_pulls_the_adapter(modbus_plant: SimProcess, tmp_path: Path) -> None:
    drv = _drivers(loads(gateway_yaml(modbus_plant, tmp_path)))["rtu-bus"]
    await drv.open()
    try:
        assert _values(drv, await drv.poll())["PT-1"] == (1.25, Quality.GOOD)
        modbus_plant.control(fault="rtu-bus", kind="disconnect")
        with pytest.raises(DeviceUnavailable):
            for _ in range(50):
                await drv.poll()
                await asyncio.sleep(0.05)
        await drv.close()
        with pytest.raises(DeviceUnavailable):
            await drv.open()  # stays unplugged while the fault lasts
        modbus_plant.control(clear="rtu-bus")

        async def back() -> bool:
            try:
                await drv.open()
                return _values(drv, await drv.poll())["PT-1"] == (1.25, Quality.GOOD)
            except (DeviceUnavailable, OSError):
                await drv.close()
                return False

        await async_wait_until(back, timeout=15, interval=0.1, what="adapter plugged back")
    finally:
        await drv.close()
