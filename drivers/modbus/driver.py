"""Modbus TCP and RTU drivers (drivers.base.Driver).

Both share the poll shape: the request plan (drivers.modbus.plan) lists the reads;
each reply's data bytes land in one poll buffer at a fixed offset; the buffer is
decoded once (drivers.modbus.codec) and a Batch covering every channel comes back.

Faults are per request and per unit: an exception reply marks the channels of that
read DEVICE_EXCEPTION; a unit that does not answer marks its channels TIMEOUT and its
remaining reads in this cycle are skipped (they would time out too), so one dead
detector on an RS-485 line costs its own timeout, not one per read. A whole-link
failure (connection refused or dropped, serial port gone) raises DeviceUnavailable
and the gateway reconnects with backoff.

A merged read that fails with "illegal data address" is split: its channels get a
read each from the next cycle on, so only the channel whose register does not exist
stays bad and the error names its address. ``replanned`` says the last poll did so
(``safegw read`` polls once more to name the address).

A value whose scaling overflows float64 is a SENSOR_FAULT; the driver counts them
(``info["scale_overflows"]``) and names the channels of the last poll
(``info["channel_errors"]``), rather than numpy warning on stderr. Bad samples carry
NaN (docs/modbus.md); ``last_values`` keeps the last poll's decoded values, so that
``safegw read`` can show the reading that was out of range.

- TCP uses the lean client in drivers.modbus.tcp (several devices poll concurrently,
  each with ``pipeline`` reads in flight).
- RTU uses pymodbus' serial client on one port, one lock per bus, units polled in
  turn with ``inter_frame_gap`` between frames.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np

from drivers.base import DeviceUnavailable, Driver, stamp
from drivers.modbus.plan import BIT_FUNCTIONS, Plan, Point, Request, plan
from drivers.modbus.tcp import EXCEPTION_NAMES, ModbusExceptionReply, ProtocolError, TcpClient
from gateway.core.batch import Batch, Quality
from gateway.core.channels import ChannelInfo
from gateway.core.config import ModbusChannel

log = logging.getLogger(__name__)

ILLEGAL_DATA_ADDRESS = 2


class _UnitTimeout(Exception):
    pass


class ModbusDriver(Driver):
    """The shared poll cycle; subclasses implement open/close and ``_read``."""

    def __init__(self, device: Any, channels: list[ChannelInfo]):
        super().__init__(device, channels)
        self._split: set[int] = set()
        self.plan = self._make_plan()
        #: per request description → error text, from the last poll (commissioning, status)
        self.errors: dict[str, str] = {}
        self._unit_state: dict[int, str] = {}
        self.info: dict[str, Any] = {"requests": len(self.plan.requests), "channels": len(channels),
                                     "scale_overflows": 0}
        #: the last poll split a merged read refused with "illegal data address"
        self.replanned = False
        #: the last poll's decoded values (channel order), before bad ones became NaN
        self.last_values = np.full(len(channels), np.nan)

    def _points(self) -> list[Point]:
        """What the planner needs of each channel. Built again for each (re)plan and not
        kept: at 1,000 channels a device they are ~0.3 KB a channel that a poll never reads."""
        default_unit = getattr(self.device, "unit", 1)
        points: list[Point] = []
        for c in self.channels:
            spec = c.spec
            assert isinstance(spec, ModbusChannel)
            unit = c.unit_id if c.unit_id is not None else default_unit
            points.append(Point.from_address(unit, spec.address, spec.type, spec.byte_order, spec.scale,
                                             spec.offset, spec.range))
        return points

    def _make_plan(self) -> Plan:
        d = self.device
        return plan(self._points(), max_registers=d.max_registers, max_bits=d.max_bits, max_gap=d.max_gap,
                    split=frozenset(self._split))

    async def _read(self, req: Request, dest: memoryview) -> None:
        raise NotImplementedError

    async def _read_unit(self, reqs: list[int], buf: memoryview, req_q: np.ndarray) -> None:
        """Read one unit's requests in order (TCP overrides this to pipeline)."""
        for k, ri in enumerate(reqs):
            r = self.plan.requests[ri]
            try:
                await self._read(r, buf[r.buf_offset:r.buf_offset + r.nbytes])
            except _UnitTimeout as e:
                for rj in reqs[k:]:
                    req_q[rj] = Quality.TIMEOUT
                    why = str(e) if rj == ri else "skipped: unit timed out"
                    self.errors[self.plan.requests[rj].describe()] = why
                return
            except ModbusExceptionReply as e:
                self._exception(ri, e, req_q)
            except ProtocolError as e:
                req_q[ri] = Quality.COMMS
                self.errors[r.describe()] = str(e)

    def _exception(self, ri: int, e: ModbusExceptionReply, req_q: np.ndarray) -> None:
        r = self.plan.requests[ri]
        req_q[ri] = Quality.CONFIG if e.code == ILLEGAL_DATA_ADDRESS and len(r.points) == 1 \
            else Quality.DEVICE_EXCEPTION
        self.errors[r.describe()] = str(e)
        if e.code == ILLEGAL_DATA_ADDRESS and len(r.points) > 1:
            self._split.update(r.points)
            self.replanned = True

    def _note_units(self, req_q: np.ndarray) -> None:
        """Log each unit's state changes once (ERROR when it fails, INFO when it recovers)."""
        if len(self._units) < 2:
            return  # a single-unit device is the gateway's to report
        for unit, reqs in self._units.items():
            bad = [ri for ri in reqs if req_q[ri] >= Quality.BAD]
            state = "ok" if not bad else ("failing" if len(bad) == len(reqs) else "partial")
            old = self._unit_state.get(unit, "ok")
            if state != old:
                if state == "ok":
                    log.info("%s: unit %d recovered", self.name, unit)
                else:
                    err = self.errors.get(self.plan.requests[bad[0]].describe(), "")
                    log.error("%s: unit %d %s: %s", self.name, unit,
                              "not answering" if state == "failing" else "partly failing", err)
                self._unit_state[unit] = state

    def _note_overflows(self, overflowed: np.ndarray) -> None:
        """Count the values whose scaling overflowed and name their channels (last poll)."""
        self.info.pop("channel_errors", None)
        if overflowed.any():
            self.info["scale_overflows"] += int(overflowed.sum())
            self.info["channel_errors"] = {
                self.channels[i].name: f"raw × scale {self.channels[i].spec.scale:g} overflows float64"
                for i in np.flatnonzero(overflowed).tolist()}

    async def poll(self) -> Batch:
        self.replanned = False
        self._units = self.plan.requests_by_unit()
        buf = np.zeros(self.plan.nbytes, dtype=np.uint8)
        mv = memoryview(buf)  # type: ignore[arg-type]
        req_q = np.zeros(len(self.plan.requests), dtype=np.uint8)
        self.errors = {}
        for reqs in self._units.values():
            await self._read_unit(reqs, mv, req_q)
        ts = stamp()
        layout = self.plan.layout
        values = layout.decode(buf)
        quality = layout.quality(values, req_q[self.plan.point_request])
        self._note_overflows(layout.overflowed & (quality == Quality.SENSOR_FAULT))
        self.last_values = values.copy()
        values[quality >= Quality.BAD] = np.nan
        self._note_units(req_q)
        if self.replanned:
            old = len(self.plan.requests)
            self.plan = self._make_plan()
            self.info["requests"] = len(self.plan.requests)
            log.warning("%s: a merged read hit an address the device does not have; split into single "
                        "reads (%d → %d requests)", self.name, old, len(self.plan.requests))
        # the layout's slots are in point order, which is the channel order of self.indexes
        return Batch(self.indexes, np.full(len(values), ts, dtype=np.int64), values, quality)


class ModbusTcpDriver(ModbusDriver):
    def __init__(self, device: Any, channels: list[ChannelInfo]):
        super().__init__(device, channels)
        self.client = TcpClient(device.host, device.port)
        self.pipeline: int = getattr(device, "pipeline", 1)
        self.info["endpoint"] = f"{device.host}:{device.port}"

    async def open(self) -> None:
        self.client.close()
        try:
            # a connect is rare and may meet a busy peer: give it at least a second
            await self.client.connect(max(self.device.timeout, 1.0))
        except TimeoutError:
            raise DeviceUnavailable(f"connect to {self.device.host}:{self.device.port} timed out",
                                    Quality.TIMEOUT) from None
        except OSError as e:
            raise DeviceUnavailable(f"cannot connect to {self.device.host}:{self.device.port}: "
                                    f"{e.strerror or e}", Quality.COMMS) from None

    async def close(self) -> None:
        self.client.close()

    async def _read_unit(self, reqs: list[int], buf: memoryview, req_q: np.ndarray) -> None:
        dev = self.device
        loop = asyncio.get_running_loop()
        todo = list(reqs)
        tries: dict[int, int] = {}
        while todo:
            window, todo = todo[:self.pipeline], todo[self.pipeline:]
            window_reqs = [self.plan.requests[ri] for ri in window]
            try:
                reads = [(r.unit, r.fc, r.start, r.count, buf[r.buf_offset:r.buf_offset + r.nbytes])
                         for r in window_reqs]
                futs = self.client.send_many(reads)
                sent = list(zip(window, futs, strict=True))
            except ConnectionResetError as e:
                raise DeviceUnavailable(f"connection to {dev.host}:{dev.port} lost: {e}") from None
            timer = loop.call_later(dev.timeout, _expire, [f for _, f in sent])
            retry: list[int] = []
            try:
                for ri, fut in sent:
                    try:
                        await fut
                    except TimeoutError:
                        retry.append(ri)
                    except ModbusExceptionReply as e:
                        self._exception(ri, e, req_q)
                    except ProtocolError as e:
                        req_q[ri] = Quality.COMMS
                        self.errors[self.plan.requests[ri].describe()] = str(e)
                    except ConnectionResetError as e:
                        raise DeviceUnavailable(f"connection to {dev.host}:{dev.port} lost: {e}") from None
            finally:
                timer.cancel()
                for _, f in sent:  # after an early raise: do not leave exceptions unretrieved
                    if f.done() and not f.cancelled():
                        f.exception()
            if retry:
                self.client.forget([f for ri, f in sent if ri in retry])
                again = [ri for ri in retry if tries.get(ri, 0) < dev.retries]
                if len(again) < len(retry):
                    # out of retries: the device is not answering; skip the rest of this cycle
                    for ri in [*retry, *todo]:
                        req_q[ri] = Quality.TIMEOUT
                        self.errors[self.plan.requests[ri].describe()] = \
                            f"no answer within {dev.timeout:g}s ({dev.retries} retries)"
                    return
                for ri in again:
                    tries[ri] = tries.get(ri, 0) + 1
                todo = again + todo


def _expire(futs: list[asyncio.Future[None]]) -> None:
    for f in futs:
        if not f.done():
            f.set_exception(TimeoutError())


class ModbusRtuDriver(ModbusDriver):
    """One RS-485 line: one serial port, one lock, units polled in turn."""

    def __init__(self, device: Any, channels: list[ChannelInfo]):
        super().__init__(device, channels)
        self.client: Any = None
        self.lock = asyncio.Lock()
        self._last_frame = 0.0
        self.info["port"] = device.port

    @property
    def poll_budget_s(self) -> float:
        """Longest a healthy poll may take: every unit can cost its own timeout and retries,
        and every frame its gap. The gateway uses it to bound poll()."""
        d = self.device
        units = len({r.unit for r in self.plan.requests})
        frames = len(self.plan.requests)
        return units * d.timeout * (d.retries + 1) + frames * (d.inter_frame_gap + d.timeout) + d.poll

    async def open(self) -> None:
        from pymodbus.client import AsyncModbusSerialClient

        await self.close()
        d = self.device
        client = AsyncModbusSerialClient(
            d.port, baudrate=d.baudrate, bytesize=d.bytesize, parity=d.parity, stopbits=d.stopbits,
            timeout=d.timeout, retries=d.retries,
            # the gateway owns reconnects (with backoff and a bad-quality record)
            reconnect_delay=0, reconnect_delay_max=0)
        try:
            ok = await client.connect()
        except OSError as e:  # pragma: no cover - pymodbus reports failures as False
            ok = False
            log.debug("serial open failed: %s", e)
        if not ok:
            client.close()
            raise DeviceUnavailable(f"cannot open serial port {d.port}", Quality.COMMS)
        self.client = client

    async def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    async def poll(self) -> Batch:
        async with self.lock:
            return await super().poll()

    async def _read(self, req: Request, dest: memoryview) -> None:
        from pymodbus.exceptions import ConnectionException, ModbusIOException

        client = self.client
        if client is None or not client.connected:
            raise DeviceUnavailable(f"serial port {self.device.port} is closed", Quality.COMMS)
        gap = self.device.inter_frame_gap
        if gap > 0:
            wait = self._last_frame + gap - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        fn = {1: client.read_coils, 2: client.read_discrete_inputs, 3: client.read_holding_registers,
              4: client.read_input_registers}[req.fc]
        try:
            rr = await fn(req.start, count=req.count, device_id=req.unit)
        except ModbusIOException as e:
            if not client.connected:
                raise DeviceUnavailable(f"serial port {self.device.port} lost: {e}", Quality.COMMS) from None
            raise _UnitTimeout(f"unit {req.unit}: no answer within {self.device.timeout:g}s "
                               f"({self.device.retries} retries)") from None
        except ConnectionException as e:
            raise DeviceUnavailable(f"serial port {self.device.port}: {e}", Quality.COMMS) from None
        finally:
            self._last_frame = time.monotonic()
        if rr.isError():
            code = int(getattr(rr, "exception_code", 4))
            raise ModbusExceptionReply(code, req.describe())
        if req.fc in BIT_FUNCTIONS:
            packed = np.packbits(np.asarray(rr.bits[:req.count], dtype=np.uint8), bitorder="little")
            dest[:] = packed.tobytes()[:len(dest)]
        else:
            if len(rr.registers) != req.count:
                raise ProtocolError(f"{len(rr.registers)} registers in reply, asked {req.count}")
            dest[:] = np.asarray(rr.registers, dtype=">u2").tobytes()


__all__ = ["EXCEPTION_NAMES", "ModbusDriver", "ModbusRtuDriver", "ModbusTcpDriver"]
