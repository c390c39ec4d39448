"""Simulated Modbus devices: TCP servers, and RTU units on a pty pair made by socat.

The server is a small one of our own rather than pymodbus' (which costs 160-250
CPU-µs a request, cannot take pipelined requests, and logs a traceback for every
request to a unit it does not have): register tables are big-endian ``bytearray``s,
so a read reply is one slice. It serves function codes 1-4 (reads); other codes get
exception 1 (illegal function), reads outside a unit's table exception 2.

Faults come from the plant (simulators.scenario) at the time of the last tick:
``silent`` → no answer, ``exception`` → the scenario's exception code,
``disconnect`` → TCP: open connections are dropped and new ones reset until it
ends; RTU: the pty pair disappears (the USB adapter is pulled) until it ends. On an
RTU line a unit id nobody has is not answered, as on a real RS-485 bus.

RTU line speed: each unit listens at its own ``baudrate`` (default the line's). The
simulator reads the speed the gateway set on its end of the pty (tcgetattr: ptys keep
it) and passes every byte through simulators.uart, both ways, so a frame sent at the
wrong rate reaches a unit as garbage (a bad CRC) and its reply reaches the gateway as
garbage. ``stats`` (a control message ``{"to": NAME, "stats": true}``) counts requests,
write requests (function codes 5, 6, 15, 16, 22, 23: a scan must send none), TCP
connections accepted and, on RTU, requests that came sooner than 3.5 character times
after the unit's last reply.

RTU: ``socat pty,raw,echo=0,link=<link>.sim pty,raw,echo=0,link=<link>``; the
simulator opens ``<link>.sim``, the gateway ``<link>``. If socat dies (the test's way
of pulling the USB adapter), the server notices, waits ``replug_delay`` and makes a
new pair under the same names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import termios
import time
from pathlib import Path
from typing import Any

import numpy as np

from gateway.core.config import parse_modbus_address
from simulators.config import ModbusRtuSim, ModbusTcpSim, ModbusUnit
from simulators.pty import close_fd, open_pty_pair, stop_socat, write_fd
from simulators.scenario import Plant
from simulators.uart import resample
from simulators.wire import crc16_modbus, encode_registers

log = logging.getLogger(__name__)

_MBAP = struct.Struct(">HHHB")
_REQ = struct.Struct(">BHH")  # function, start, count
#: function codes that write (Modbus Application Protocol V1.1b3 §6.5, 6.6, 6.11, 6.12, 6.16, 6.17)
WRITE_FUNCTIONS = frozenset((5, 6, 15, 16, 22, 23))


# --------------------------------------------------------------------- register banks

class UnitBank:
    """The four tables of one unit id, and the points that feed them."""

    def __init__(self, spec: ModbusUnit):
        self.unit = spec.unit
        self.size = spec.size
        # registers as big-endian bytes (a reply is a slice); bits one byte each
        self.holding = bytearray(2 * spec.size)
        self.input = bytearray(2 * spec.size)
        self.coil = bytearray(spec.size)
        self.discrete = bytearray(spec.size)
        self.points = []
        for p in spec.points:
            func, reg, bit = parse_modbus_address(p.address)
            self.points.append((p, func, reg, bit))
            if p.value is not None:
                self.write_point(p, func, reg, bit, p.value)

    def write_point(self, p: Any, func: str, reg: int, bit: int | None, value: float) -> None:
        if func in ("coil", "discrete"):
            if reg < self.size:
                getattr(self, func)[reg] = 1 if value >= p.threshold else 0
            return
        table = getattr(self, func)
        if bit is not None:
            word = int.from_bytes(table[2 * reg:2 * reg + 2], "big")
            word = word | (1 << bit) if value >= p.threshold else word & ~(1 << bit)
            table[2 * reg:2 * reg + 2] = word.to_bytes(2, "big")
            return
        words = encode_registers(value, p.type, p.byte_order, p.scale, p.offset)
        if reg + len(words) <= self.size:
            table[2 * reg:2 * (reg + len(words))] = struct.pack(f">{len(words)}H", *words)

    def update(self, values: dict[str, float]) -> None:
        for p, func, reg, bit in self.points:
            if p.signal is not None:
                self.write_point(p, func, reg, bit, values[p.signal])

    def read(self, fc: int, start: int, count: int) -> bytes | int:
        """Reply data (byte count + data) for a read, or an exception code."""
        if fc not in (1, 2, 3, 4):
            return 1
        limit = 2000 if fc in (1, 2) else 125
        if count < 1 or count > limit:
            return 3
        if start + count > self.size:
            return 2
        if fc in (3, 4):
            table = self.holding if fc == 3 else self.input
            data = bytes(table[2 * start:2 * (start + count)])
        else:
            bits = self.coil if fc == 1 else self.discrete
            data = np.packbits(np.frombuffer(bits, np.uint8, count, start), bitorder="little").tobytes()
        return bytes((len(data),)) + data


class _Device:
    """Shared part of TCP and RTU servers: banks, values, faults."""

    def __init__(self, model: Any, plant: Plant):
        self.model = model
        self.name: str = model.name
        self.plant = plant
        self.banks = {u.unit: UnitBank(u) for u in model.units}
        self.t = 0.0
        self.requests = 0
        self.connections = 0  # TCP connections accepted (a client that reconnects counts again)
        self.writes = 0
        self.gap_violations = 0

    def control(self, msg: dict[str, Any]) -> dict[str, Any]:
        if msg.get("stats"):
            return {"requests": self.requests, "writes": self.writes, "gap_violations": self.gap_violations,
                    "connections": self.connections}
        return {"error": f"unknown control message for {self.name}: {sorted(msg)}"}

    def fault(self, unit: int | None) -> Any:
        return self.plant.device_fault(self.name, self.t, unit)

    def answer(self, unit: int, fc: int, start: int, count: int) -> bytes | int | None:
        """PDU reply bytes, an exception code, or None for silence."""
        self.requests += 1
        f = self.fault(unit)
        if f is not None:
            if f.kind == "exception":
                return int(f.code)
            return None  # silent (and disconnect, handled by the transport)
        bank = self.banks.get(unit)
        if bank is None:
            return None
        return bank.read(fc, start, count)

    async def update(self, t: float, values: dict[str, float]) -> None:
        self.t = t
        for bank in self.banks.values():
            bank.update(values)


# --------------------------------------------------------------------- TCP

class _TcpProtocol(asyncio.Protocol):
    def __init__(self, server: ModbusTcpServer):
        self.server = server
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.server.down:
            transport.abort()  # type: ignore[attr-defined]
            return
        self.server.conns.add(self)
        self.server.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos, end = 0, len(buf)
        out = []
        srv = self.server
        while end - pos >= 8:
            tid, proto, length, unit = _MBAP.unpack_from(buf, pos)
            if proto != 0 or length < 2 or length > 254:
                assert self.transport is not None
                self.transport.close()
                return
            if pos + 6 + length > end:
                break
            fc = buf[pos + 7]
            if fc in WRITE_FUNCTIONS:
                srv.writes += 1
            if length >= 6:
                _, start, count = _REQ.unpack_from(buf, pos + 7)
                ans = srv.answer(unit, fc, start, count) if srv.banks.get(unit) or srv.fault(unit) else 11
            else:
                ans = 3
            pos += 6 + length
            if ans is None:
                continue
            if isinstance(ans, int):
                out.append(_MBAP.pack(tid, 0, 3, unit) + bytes((fc | 0x80, ans)))
            else:
                out.append(_MBAP.pack(tid, 0, 2 + len(ans), unit) + bytes((fc,)) + ans)
        self.buf = buf[pos:]
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


class ModbusTcpServer(_Device):
    model: ModbusTcpSim

    def __init__(self, model: ModbusTcpSim, plant: Plant):
        super().__init__(model, plant)
        self.conns: set[_TcpProtocol] = set()
        self.server: asyncio.Server | None = None
        self.down = False
        self.port = model.port

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _TcpProtocol(self), self.model.host, self.port,
                                               reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def start(self) -> dict[str, Any]:
        await self._listen()
        return {"protocol": "modbus-tcp", "host": self.model.host, "port": self.port,
                "units": sorted(self.banks)}

    async def update(self, t: float, values: dict[str, float]) -> None:
        await super().update(t, values)
        f = self.fault(None)
        down = f is not None and f.kind == "disconnect"
        # the listener stays bound while down (new connections are reset at once): closing
        # it would free an ephemeral port that a client's connect may grab (TCP self-connect)
        if down and not self.down:
            log.info("%s: disconnect (dropping %d connections)", self.name, len(self.conns))
            for c in list(self.conns):
                if c.transport is not None:
                    c.transport.abort()
        elif self.down and not down:
            log.info("%s: accepting connections again", self.name)
        self.down = down

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for c in list(self.conns):
            if c.transport is not None:
                c.transport.abort()


# --------------------------------------------------------------------- RTU

#: termios speed constant → baud rate
_RATES = (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
_SPEEDS = {getattr(termios, f"B{b}"): b for b in _RATES if hasattr(termios, f"B{b}")}


def rtu_frame(pdu: bytes) -> bytes:
    return pdu + crc16_modbus(pdu).to_bytes(2, "little")


class ModbusRtuServer(_Device):
    """Several unit ids on one simulated RS-485 line (a pty pair)."""

    model: ModbusRtuSim

    def __init__(self, model: ModbusRtuSim, plant: Plant):
        super().__init__(model, plant)
        self.link = Path(model.link)
        self.sim_link = Path(str(model.link) + ".sim")
        self.proc: asyncio.subprocess.Process | None = None
        self.fd: int | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False
        self._targets: dict[Path, str] = {}
        self._ticked = asyncio.Event()
        self.replugs = 0
        #: baud rate → the units that listen at it, and what they have heard so far
        self._rates: dict[int, set[int]] = {}
        for u in model.units:
            self._rates.setdefault(u.baudrate or model.baudrate, set()).add(u.unit)
        self._bufs = dict.fromkeys(self._rates, b"")
        self._last_reply = 0.0

    async def _plug(self) -> None:
        self.proc, self.fd = await open_pty_pair(self.link, self.sim_link)
        self._targets = {p: os.readlink(p) for p in (self.link, self.sim_link)}
        asyncio.get_running_loop().add_reader(self.fd, self._readable)
        self._bufs = dict.fromkeys(self._rates, b"")

    def _unplug_fd(self) -> None:
        close_fd(self.fd)
        self.fd = None

    async def start(self) -> dict[str, Any]:
        await self._plug()
        self._watch = asyncio.create_task(self._supervise(), name=f"socat[{self.name}]")
        return self.endpoint()

    def endpoint(self) -> dict[str, Any]:
        return {"protocol": "modbus-rtu", "port": str(self.link), "sim_port": str(self.sim_link),
                "socat_pid": self.proc.pid if self.proc else None, "units": sorted(self.banks)}

    async def _supervise(self) -> None:
        """Re-create the pty pair when socat goes away (adapter pulled and plugged back)."""
        while not self._stopping:
            assert self.proc is not None
            await self.proc.wait()
            if self._stopping:
                return
            log.warning("%s: socat exited (%s); re-creating %s in %.1fs", self.name, self.proc.returncode,
                        self.link, self.model.replug_delay)
            self._unplug_fd()
            await asyncio.sleep(self.model.replug_delay)
            while self._pulled() and not self._stopping:  # a 'disconnect' fault keeps it out
                self._ticked.clear()
                await self._ticked.wait()
            while not self._stopping:
                try:
                    await self._plug()
                    self.replugs += 1
                    break
                except (OSError, RuntimeError) as e:
                    log.warning("%s: cannot re-create the pty pair: %s", self.name, e)
                    await asyncio.sleep(self.model.replug_delay)

    def _pulled(self) -> bool:
        f = self.fault(None)
        return f is not None and f.kind == "disconnect"

    async def update(self, t: float, values: dict[str, float]) -> None:
        await super().update(t, values)
        self._ticked.set()
        # a 'disconnect' fault pulls the adapter: socat goes, the supervisor plugs it back after
        if self._pulled() and self.proc is not None and self.proc.returncode is None:
            log.info("%s: disconnect (pty pair removed)", self.name)
            self.proc.terminate()

    def _gateway_baud(self) -> int:
        """The speed the gateway set on its end of the pty (the line's rate if unknown)."""
        try:
            fd = os.open(self.link, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            return self.model.baudrate
        try:
            speed = termios.tcgetattr(fd)[5]
        except termios.error:
            return self.model.baudrate
        finally:
            os.close(fd)
        return _SPEEDS.get(speed, self.model.baudrate)

    def _readable(self) -> None:
        assert self.fd is not None
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            # the other end went away (socat died): the supervisor re-plugs
            self._unplug_fd()
            return
        if not data:
            return
        now = time.monotonic()
        gw = self._gateway_baud()
        for baud, units in self._rates.items():
            # what the units listening at this rate hear of the gateway's characters
            self._bufs[baud] += resample(data, gw, baud)
            self._bufs[baud] = self._frames(self._bufs[baud], units, baud, gw, now)

    def _frames(self, buf: bytes, units: set[int], baud: int, gw: int, now: float) -> bytes:
        while len(buf) >= 8:
            fc = buf[1]
            if fc in (15, 16, 23):
                at = 10 if fc == 23 else 6
                if len(buf) < at + 1:
                    break
                n = at + 3 + buf[at]
            else:
                n = 10 if fc == 22 else 8
            if len(buf) < n:
                break
            frame, rest = buf[:n], buf[n:]
            if crc16_modbus(frame[:-2]) != int.from_bytes(frame[-2:], "little"):
                buf = buf[1:]  # lost sync (noise, partial frame, wrong rate): slide by one byte
                continue
            buf = rest
            unit = frame[0]
            if fc in WRITE_FUNCTIONS:
                self.writes += 1
            if unit == 0 or unit not in units:
                continue  # broadcast or another device on the line: stay quiet
            # MODBUS over Serial Line V1.02 §2.5.1.1: frames are separated by at least 3.5
            # character times of silence (1.75 ms above 19200 baud). The reply's own time on the
            # wire is not modelled by the pty, so the silence counts from when it was written.
            gap = 0.00175 if baud > 19200 else 3.5 * 11 / baud
            if now - self._last_reply < gap:
                self.gap_violations += 1
            start, count = struct.unpack_from(">HH", frame, 2)
            ans = self.answer(unit, fc, start, count)
            if ans is None:
                continue
            pdu = bytes((unit, fc | 0x80, ans)) if isinstance(ans, int) else bytes((unit, fc)) + ans
            self._write(resample(rtu_frame(pdu), baud, gw))
            self._last_reply = time.monotonic()
        return buf

    def _write(self, data: bytes) -> None:
        err = write_fd(self.fd, data)
        if err is not None:
            log.debug("%s: write failed: %s", self.name, err)

    async def stop(self) -> None:
        self._stopping = True
        self._ticked.set()
        self._unplug_fd()
        await stop_socat(self.proc)
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        # remove our links only (another simulator may have re-used the names since)
        for p, target in self._targets.items():
            with contextlib.suppress(OSError):
                if os.readlink(p) == target:
                    p.unlink()
