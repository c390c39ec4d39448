"""Request merging: which reads cover a device's channels, and where each answer goes.

Channels of one unit and one function are sorted by address and coalesced greedily:
the next channel joins the current read when the hole before it is at most
``max_gap`` registers (``16 × max_gap`` bits for coils/discretes) and the read stays
within ``max_registers`` / ``max_bits``. Every response of a poll is copied into one
byte buffer at a fixed offset, so the whole poll decodes in one pass (codec.Layout).
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from drivers.modbus.codec import WIDTH, ChannelSlot, Layout
from gateway.core.config import Config, ModbusRtuDevice, parse_modbus_address
from gateway.core.yamlsrc import Path_

#: function name → Modbus function code
FUNCTION_CODES = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
BIT_FUNCTIONS = (1, 2)


@dataclass(frozen=True)
class Point:
    """What the planner needs of a channel."""

    unit: int
    function: str  # holding | input | coil | discrete
    register: int
    type: str = "uint16"
    byte_order: str = "ABCD"
    bit: int | None = None
    scale: float = 1.0
    offset: float = 0.0
    range: tuple[float, float] | None = None

    @classmethod
    def from_address(cls, unit: int, address: str, type_: str = "uint16", byte_order: str = "ABCD",
                     scale: float = 1.0, offset: float = 0.0,
                     range_: tuple[float, float] | None = None) -> Point:
        func, reg, bit = parse_modbus_address(address)
        return cls(unit, func, reg, type_, byte_order, bit, scale, offset, range_)

    @property
    def fc(self) -> int:
        return FUNCTION_CODES[self.function]

    @property
    def width(self) -> int:
        """Registers (or bits) this point occupies."""
        return 1 if self.fc in BIT_FUNCTIONS else WIDTH[self.type]


@dataclass
class Request:
    unit: int
    fc: int
    start: int
    count: int
    buf_offset: int  # where its data goes in the poll buffer
    points: list[int] = field(default_factory=list)  # positions in the plan's point list

    @property
    def nbytes(self) -> int:
        return (self.count + 7) // 8 if self.fc in BIT_FUNCTIONS else 2 * self.count

    def describe(self) -> str:
        name = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}[self.fc]
        end = self.start + self.count - 1
        span = f"{self.start}" if self.count == 1 else f"{self.start}-{end}"
        return f"unit {self.unit} {name}:{span}"


@dataclass
class Plan:
    requests: list[Request]
    nbytes: int
    layout: Layout
    #: for each point, the index of the request that carries it
    point_request: npt.NDArray[np.intp]

    def requests_by_unit(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for i, r in enumerate(self.requests):
            out.setdefault(r.unit, []).append(i)
        return out


def plan(points: Sequence[Point], *, max_registers: int = 125, max_bits: int = 2000,
         max_gap: int = 8, split: frozenset[int] = frozenset()) -> Plan:
    """Merge ``points`` into requests. Points whose position is in ``split`` get a request
    of their own (used after a merged read failed with "illegal data address")."""
    keys = [(p.unit, p.fc, p.register, p.width) for p in points]
    order = sorted(range(len(points)), key=lambda i: (keys[i][0], keys[i][1], keys[i][2], -keys[i][3]))
    requests: list[Request] = []
    cur: Request | None = None
    cur_end = 0
    for i in order:
        unit, fc, reg, width = keys[i]
        bits = fc in BIT_FUNCTIONS
        limit = max_bits if bits else max_registers
        gap = max_gap * 16 if bits else max_gap
        end = reg + width
        if width > limit:
            raise ValueError(f"{points[i].type} needs {width} registers but max_registers is {limit}")
        if (cur is not None and cur.unit == unit and cur.fc == fc
                and reg - cur_end <= gap and max(end, cur_end) - cur.start <= limit
                and not (split and (i in split or cur.points[-1] in split))):
            cur_end = max(cur_end, end)
            cur.count = cur_end - cur.start
            cur.points.append(i)
            continue
        cur = Request(unit, fc, reg, width, 0, [i])
        cur_end = end
        requests.append(cur)
    offset = 0
    point_request = np.zeros(len(points), dtype=np.intp)
    slots: list[ChannelSlot | None] = [None] * len(points)
    for ri, r in enumerate(requests):
        r.buf_offset = offset
        bits = r.fc in BIT_FUNCTIONS
        for i in r.points:
            p = points[i]
            point_request[i] = ri
            rel = p.register - r.start
            if bits:
                slots[i] = ChannelSlot(offset + rel // 8, "bool", bit=rel % 8, scale=p.scale, offset=p.offset,
                                       range=p.range)
            elif p.type == "bool":
                b = p.bit or 0
                # register bit k: the high byte (first on the wire) holds bits 8-15;
                # BADC/DCBA devices send the low byte first
                hi_first = p.byte_order in ("ABCD", "CDAB")
                byte = (1 - b // 8) if hi_first else b // 8
                slots[i] = ChannelSlot(offset + 2 * rel + byte, "bool", bit=b % 8, scale=p.scale,
                                       offset=p.offset, range=p.range)
            else:
                slots[i] = ChannelSlot(offset + 2 * rel, p.type, p.byte_order, scale=p.scale, offset=p.offset,
                                       range=p.range)
        offset += r.nbytes
    layout = Layout([s for s in slots if s is not None])
    return Plan(requests, offset, layout, point_request)


def rtu_cycle_s(dev: ModbusRtuDevice) -> float | None:
    """Least time one poll cycle of an RTU bus takes when every unit answers at once:
    each merged request's frame (8 bytes) and answer (5 + data bytes) on the wire, the
    3.5-character silences around each, and the configured inter-frame gap. None when
    the addresses do not plan (that error is reported per channel)."""
    try:
        points = [Point.from_address(u.unit, ch.address, ch.type, ch.byte_order)
                  for u in dev.units for ch in u.channels]
        reqs = plan(points, max_registers=dev.max_registers, max_bits=dev.max_bits,
                    max_gap=dev.max_gap).requests
    except ValueError:
        return None
    char_s = (1 + dev.bytesize + (dev.parity != "N") + dev.stopbits) / dev.baudrate
    chars = sum(8 + 5 + r.nbytes + 7 for r in reqs)
    return chars * char_s + len(reqs) * dev.inter_frame_gap


def check_config(cfg: Config) -> list[tuple[Path_, str]]:
    """For ``safegw check``: an RTU bus whose poll is shorter than one cycle can take."""
    errs: list[tuple[Path_, str]] = []
    for di, dev in enumerate(cfg.devices):
        if not isinstance(dev, ModbusRtuDevice):
            continue
        need = rtu_cycle_s(dev)
        if need is not None and need > dev.poll:
            msg = (f"at {dev.baudrate} baud this bus needs {need * 1000:.0f} ms per cycle even when "
                   f"every unit answers ({len(dev.units)} units); poll is {dev.poll * 1000:g} ms: "
                   "raise poll or baudrate, or split the units over more lines")
            errs.append((("devices", di, "poll"), msg))
    return errs
