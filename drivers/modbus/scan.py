"""Scanning a Modbus bus: which unit ids answer, at which baud rate and parity.

Read-only by construction: the only requests sent are reads (function codes 1-4),
through the same clients the drivers use (pymodbus' serial client for RTU, the lean
client in drivers.modbus.tcp for TCP). A unit counts as present when it answers at
all, with data or with a Modbus exception (it heard a well-formed frame for its id);
over TCP exceptions 10 and 11 come from a gateway in front of the unit, not the unit,
and count as absent.

RTU timing: between frames the line stays silent for 3.5 character times (11 bits a
character), or 1.75 ms above 19200 baud, as MODBUS over Serial Line, Specification and
Implementation Guide V1.02 (modbus.org, 2006), §2.5.1.1 "MODBUS Message RTU Framing"
requires. The scan is bounded: ``budget_s`` stops it (what was found so far is kept
and the report says where it stopped); ``estimate_s`` is the worst case (nobody
answers) printed up front.

Template suggestions: each device template (``config/templates/``) gives a signature,
the raw bounds of its 16-bit points that carry a ``range``; a read whose registers all
fit one says "looks like template NAME", never more (the engineer confirms it in the
manual).
"""

from __future__ import annotations

import asyncio
import logging
import termios
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drivers.modbus.tcp import ModbusExceptionReply, ProtocolError, TcpClient
from gateway.core.aio import within

log = logging.getLogger(__name__)

#: rates tried by ``--baud auto``, the common ones first
AUTO_BAUDS = (9600, 19200, 4800, 38400, 2400, 57600, 115200, 1200)
AUTO_PARITIES = ("N", "E", "O")
TABLES = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
#: exceptions a Modbus-TCP gateway gives for a unit behind it that is not there
#: (Modbus Application Protocol V1.1b3 §7, codes 0A and 0B)
ABSENT_EXCEPTIONS = frozenset((10, 11))
MAX_UNITS_TEXT = 200
MAX_COUNT = {1: 2000, 2: 2000, 3: 125, 4: 125}  # per request, V1.1b3 §6.1-6.4


# ----------------------------------------------------------------- arguments

def parse_units(text: str) -> list[int]:
    """``1-247``, ``1,2,10-12`` → sorted unit ids (1..247, V1.02 §2.2)."""
    if len(text) > MAX_UNITS_TEXT:
        raise ValueError(f"--units: longer than {MAX_UNITS_TEXT} characters")
    out: set[int] = set()
    for part in text.split(","):
        a, sep, b = part.strip().partition("-")
        try:
            lo, hi = int(a), int(b) if sep else int(a)
        except ValueError:
            raise ValueError(f"--units: {part.strip()!r} is not a unit id or a range like 1-247") from None
        if not 1 <= lo <= hi <= 247:
            raise ValueError(f"--units: {part.strip()!r} must lie within 1-247 (MODBUS over Serial Line "
                             "V1.02 §2.2: 0 is broadcast, 248-255 reserved)")
        out.update(range(lo, hi + 1))
    return sorted(out)


def parse_registers(text: str) -> tuple[int, int, int]:
    """``holding:0-9`` → (function code, start, count)."""
    table, sep, rng = text.partition(":")
    if table not in TABLES or not sep:
        raise ValueError(f"--registers: {text[:40]!r} must be TABLE:START-END with TABLE one of "
                         f"{', '.join(TABLES)}")
    a, dash, b = rng.partition("-")
    try:
        start, end = int(a), int(b) if dash else int(a)
    except ValueError:
        raise ValueError(f"--registers: {rng[:20]!r} is not START-END (0-based numbers)") from None
    fc = TABLES[table]
    count = end - start + 1
    if start < 0 or end > 65535 or count < 1 or count > MAX_COUNT[fc]:
        raise ValueError(f"--registers: {table}:{start}-{end} must be 0-65535, at most {MAX_COUNT[fc]} "
                         "in one read (Modbus Application Protocol V1.1b3 §6.1-6.4)")
    return fc, start, count


def parse_choices(text: str, auto: tuple[Any, ...], conv: Callable[[str], Any], what: str) -> list[Any]:
    if text == "auto":
        return list(auto)
    out = []
    for part in text.split(",")[:16]:
        try:
            out.append(conv(part.strip()))
        except ValueError:
            raise ValueError(f"--{what}: {part.strip()[:20]!r} is not valid (auto, or a list like "
                             f"{','.join(map(str, auto[:2]))})") from None
    return out


def parse_baud(s: str) -> int:
    b = int(s)
    if not 300 <= b <= 921600:
        raise ValueError(s)
    return b


def parse_parity(s: str) -> str:
    if s.upper() not in AUTO_PARITIES:
        raise ValueError(s)
    return s.upper()


# ----------------------------------------------------------------- timing

def char_bits(parity: str, stopbits: int = 1) -> int:
    """Bits of one RTU character: start, 8 data, parity, stop (V1.02 §2.5.1 gives 11 with
    parity or with 2 stop bits; 10 for the common no-parity one-stop-bit setting)."""
    return 1 + 8 + (parity != "N") + stopbits


def silent_interval_s(baud: int) -> float:
    """t3.5 (V1.02 §2.5.1.1): 3.5 character times, or a fixed 1.750 ms above 19200 baud.

    A character is counted as the spec's 11 bits (§2.5.1: start, 8 data, parity or a
    second stop bit, stop) whatever the port's setting: on an 8N1 line (10 bits) that is a
    little longer than needed, never shorter."""
    if baud > 19200:
        return 0.00175
    return 3.5 * 11 / baud


def frame_s(nbytes: int, baud: int, parity: str) -> float:
    return nbytes * char_bits(parity) / baud


def estimate_rtu_s(bauds: list[int], parities: list[str], units: list[int], timeout: float) -> float:
    """Worst case: no unit answers, every probe waits its timeout plus the gap."""
    total = 0.0
    for b in bauds:
        for p in parities:
            total += len(units) * (timeout + silent_interval_s(b) + frame_s(8, b, p))
    return total


def estimate_tcp_s(units: list[int], timeout: float) -> float:
    return len(units) * timeout


# ----------------------------------------------------------------- results

@dataclass
class Found:
    unit: int
    baud: int | None = None
    parity: str | None = None
    values: list[int] | None = None  # registers (or bits) read, None after an exception
    exception: int | None = None
    suggestion: str | None = None

    def line(self, fc: int, start: int) -> str:
        where = f" at {self.baud} baud, parity {self.parity}" if self.baud else ""
        table = next(t for t, f in TABLES.items() if f == fc)
        if self.exception is not None:
            what = f"answers with exception {self.exception} for {table}:{start}"
        else:
            assert self.values is not None
            what = f"{table}:{start}-{start + len(self.values) - 1} = {' '.join(map(str, self.values))}"
        tail = f"  (looks like: {self.suggestion})" if self.suggestion else ""
        return f"unit {self.unit}{where}: {what}{tail}"


@dataclass
class ScanResult:
    found: list[Found] = field(default_factory=list)
    probes: int = 0
    stopped: str | None = None  # why the scan ended early (budget), None when complete
    errors: list[str] = field(default_factory=list)


# ----------------------------------------------------------------- template signatures

@dataclass(frozen=True)
class Signature:
    """A device class recognised by plausible values in registers it fills.

    ``checks``: (function code, register, low, high) for registers read as unsigned
    16-bit; a negative low means the register is read as int16."""

    name: str
    checks: tuple[tuple[int, int, int, int], ...]
    note: str = ""


_RAW_BOUNDS = {"uint16": (0, 0xFFFF), "int16": (-0x8000, 0x7FFF)}


def signature_of(name: str, description: str, points: Iterable[dict[str, Any]]) -> Signature | None:
    """A template's signature: every 16-bit holding or input point with a ``range``,
    its engineering range turned back into raw register bounds (value = raw × scale +
    offset). None when no point qualifies (bits, floats and unranged points say nothing)."""
    from gateway.core.config import parse_modbus_address

    checks = []
    for pt in points:
        typ, rng = pt.get("type", "uint16"), pt.get("range")
        if typ not in _RAW_BOUNDS or not rng or pt.get("bits"):
            continue
        try:
            table, reg, bit = parse_modbus_address(str(pt.get("address", "")))
        except ValueError:
            continue
        if table not in ("holding", "input") or bit is not None:
            continue
        scale, offset = float(pt.get("scale", 1.0)), float(pt.get("offset", 0.0))
        if scale == 0:
            continue
        a, b = sorted(((float(rng[0]) - offset) / scale, (float(rng[1]) - offset) / scale))
        lo_t, hi_t = _RAW_BOUNDS[typ]
        # an int16 with a negative low bound is read signed (the convention of ``checks``);
        # with a low bound ≥ 0 a negative reading fails as a large unsigned one, as it should
        lo, hi = max(lo_t, int(np.ceil(a - 1e-9))), min(hi_t, int(np.floor(b + 1e-9)))
        checks.append((TABLES[table], reg, lo, hi))
    if not checks:
        return None
    return Signature(f"template {name} ({description})", tuple(checks))


_TEMPLATE_SIGNATURES: tuple[Signature, ...] | None = None


def template_signatures() -> tuple[Signature, ...]:
    """The signatures of the templates shipped in ``config/templates/`` (read once), the
    most specific (most checks) first. A template that fails to load is skipped: the
    scan must not fail on a broken template file (``safegw templates show`` reports it)."""
    global _TEMPLATE_SIGNATURES
    if _TEMPLATE_SIGNATURES is None:
        from gateway.core.templates import TemplateError, available, load_template

        sigs = []
        for path in available():
            try:
                t = load_template(path)
            except TemplateError as e:
                log.warning("template %s skipped for suggestions: %s", path.name, e)
                continue
            sig = signature_of(t.model.template, t.model.description,
                               [pt.model_dump(exclude_none=True) | dict(pt.model_extra or {})
                                for pt in t.model.points])
            if sig is not None:
                sigs.append(sig)
        _TEMPLATE_SIGNATURES = tuple(sorted(sigs, key=lambda s: -len(s.checks)))
    return _TEMPLATE_SIGNATURES


def _fits(sig: Signature, fc: int, start: int, values: list[int]) -> bool:
    for sfc, reg, lo, hi in sig.checks:
        i = reg - start
        if sfc != fc or not 0 <= i < len(values):
            return False
        v = values[i]
        if lo < 0 and v >= 0x8000:
            v -= 0x10000
        if not lo <= v <= hi:
            return False
    return True


def suggest(fc: int, start: int, values: list[int] | None,
            signatures: Iterable[Signature] | None = None) -> str | None:
    """The signatures (the templates', most specific first) every check of which is
    covered by the read and within range: the first in full, the others by name, since
    a few plausible values can fit more than one device class."""
    if values is None or fc not in (3, 4):
        return None
    fits = [sig.name for sig in (template_signatures() if signatures is None else signatures)
            if _fits(sig, fc, start, values)]
    if not fits:
        return None
    others = [n.split(" (", 1)[0].removeprefix("template ") for n in fits[1:]]
    return fits[0] + (f", or {', '.join(others)}" if others else "")


# ----------------------------------------------------------------- progress

class Progress:
    """A one-line bar on a TTY, plain lines (every 10 %) otherwise."""

    def __init__(self, total: int, out: Any, tty: bool):
        self.total, self.out, self.tty = max(total, 1), out, tty
        self.done = 0
        self._last_decile = -1

    def step(self, what: str) -> None:
        self.done += 1
        frac = self.done / self.total
        if self.tty:
            n = int(frac * 30)
            self.out.write(f"\r[{'#' * n}{'.' * (30 - n)}] {self.done}/{self.total} {what[:30]:<30}")
            self.out.flush()
        elif int(frac * 10) != self._last_decile:
            self._last_decile = int(frac * 10)
            self.out.write(f"progress {self.done}/{self.total} ({frac:.0%}) {what}\n")

    def end(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


class _NoProgress(Progress):
    def __init__(self) -> None:
        super().__init__(1, None, False)

    def step(self, what: str) -> None:
        pass

    def end(self) -> None:
        pass


# ----------------------------------------------------------------- RTU

async def scan_rtu(port: str, *, bauds: list[int], parities: list[str], units: list[int],
                   registers: tuple[int, int, int] = (3, 0, 1), reply_s: float = 0.2,
                   budget_s: float = 600.0, progress: Progress | None = None) -> ScanResult:
    """Probe every unit at every (baud, parity) until it answers; a unit found is not probed
    at the other settings (one device has one setting). Never writes.

    Raises OSError only when the port cannot be opened at all; a port lost mid-scan ends
    the scan with ``stopped`` set and what was found kept. Quieting pymodbus' logger
    (it logs every garbled reply at ERROR) is the caller's: the CLI's setup_logging does."""
    fc, start, count = registers
    prog = progress or _NoProgress()
    res = ScanResult()
    try:
        await _scan_rtu(port, bauds, parities, units, fc, start, count, reply_s, budget_s, prog, res)
    finally:
        prog.end()
        res.found.sort(key=lambda f: f.unit)
    return res


async def _scan_rtu(port: str, bauds: list[int], parities: list[str], units: list[int], fc: int, start: int,
                    count: int, reply_s: float, budget_s: float, prog: Progress, res: ScanResult) -> None:
    from pymodbus.client import AsyncModbusSerialClient
    from pymodbus.exceptions import ConnectionException, ModbusIOException

    deadline = time.monotonic() + budget_s
    found: dict[int, Found] = {}
    for baud in bauds:
        for parity in parities:
            gap = silent_interval_s(baud)
            client = AsyncModbusSerialClient(port, baudrate=baud, parity=parity, bytesize=8, stopbits=1,
                                             timeout=reply_s, retries=0, reconnect_delay=0,
                                             reconnect_delay_max=0)
            try:
                ok = await client.connect()
            except termios.error as e:
                # a port that refuses this setting (seen on ptys for parity E) is not the bus gone
                client.close()
                res.errors.append(f"{port} refused {baud} baud, parity {parity}: {e}")
                continue
            if not ok:
                client.close()
                if res.probes == 0:
                    raise OSError(f"cannot open serial port {port}")
                res.stopped = f"serial port {port} could not be reopened at {baud} baud, parity {parity}"
                return
            read = {1: client.read_coils, 2: client.read_discrete_inputs, 3: client.read_holding_registers,
                    4: client.read_input_registers}[fc]
            last = time.monotonic()
            try:
                for unit in units:
                    if unit in found:
                        continue
                    if time.monotonic() + reply_s > deadline:
                        res.stopped = (f"time budget of {budget_s:g}s spent at {baud} baud, parity {parity}, "
                                       f"unit {unit}")
                        return
                    wait = last + gap - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)  # the bus's silent interval, not a settle
                    res.probes += 1
                    rr, lost = None, False
                    try:
                        rr = await read(start, count=count, device_id=unit)
                    except ModbusIOException:  # no answer (or garbage: a wrong rate)
                        lost = not client.connected
                    except ConnectionException:
                        lost = True
                    finally:
                        last = time.monotonic()
                    if rr is None and lost:
                        # the adapter went away: keep what was found, say where it stopped
                        res.stopped = f"serial port {port} lost at {baud} baud, parity {parity}, unit {unit}"
                        return
                    prog.step(f"{baud} {parity} unit {unit}")
                    if rr is None:
                        continue
                    f = Found(unit, baud, parity)
                    if rr.isError():
                        f.exception = int(getattr(rr, "exception_code", 0))
                    else:
                        f.values = [int(v) for v in (rr.bits[:count] if fc in (1, 2) else rr.registers)]
                        f.suggestion = suggest(fc, start, f.values)
                    found[unit] = f
                    res.found.append(f)
            finally:
                client.close()


# ----------------------------------------------------------------- TCP

async def scan_tcp(host: str, port: int = 502, *, units: list[int],
                   registers: tuple[int, int, int] = (3, 0, 1),
                   reply_s: float = 1.0, budget_s: float = 600.0,
                   progress: Progress | None = None) -> ScanResult:
    """Probe each unit id behind one Modbus-TCP address, one request at a time. Never writes."""
    fc, start, count = registers
    prog = progress or _NoProgress()
    res = ScanResult()
    deadline = time.monotonic() + budget_s
    client = TcpClient(host, port)
    await client.connect(reply_s)
    nbytes = (count + 7) // 8 if fc in (1, 2) else 2 * count
    losses = 0  # connections lost in a row
    try:
        for unit in units:
            if time.monotonic() + reply_s > deadline:
                res.stopped = f"time budget of {budget_s:g}s spent at unit {unit}"
                break
            if not client.connected:
                try:
                    await client.connect(reply_s)
                except (OSError, TimeoutError) as e:
                    res.errors.append(f"unit {unit}: cannot reconnect to {host}:{port}: {e}")
                    res.stopped = f"the device at {host}:{port} went away at unit {unit}"
                    break
            buf = bytearray(nbytes)
            res.probes += 1
            f, present = Found(unit), True
            fut: asyncio.Future[None] | None = None
            try:
                fut = client.send(unit, fc, start, count, memoryview(buf))
                await within(fut, reply_s)
                if fc in (1, 2):
                    bits = np.unpackbits(np.frombuffer(bytes(buf), np.uint8), bitorder="little")[:count]
                    f.values = [int(b) for b in bits]
                else:
                    f.values = [int(v) for v in np.frombuffer(bytes(buf), ">u2")]
                f.suggestion = suggest(fc, start, f.values)
            except ModbusExceptionReply as e:
                present = e.code not in ABSENT_EXCEPTIONS
                f.exception = e.code
            except TimeoutError:
                client.forget([fut])
                present = False
            except ProtocolError as e:
                res.errors.append(f"unit {unit}: {e}")
                present = False
            except ConnectionResetError as e:
                res.errors.append(f"unit {unit}: connection lost: {e}")
                present = False
                losses += 1
                if losses >= 2:  # reconnecting did not help: the device is gone, not one unit
                    res.stopped = f"the device at {host}:{port} went away at unit {unit}"
                    break
            if client.connected:
                losses = 0
            prog.step(f"unit {unit}")
            if present:
                res.found.append(f)
    finally:
        client.close()
        prog.end()
    return res


def report_lines(res: ScanResult, fc: int, start: int) -> list[str]:
    lines = [f.line(fc, start) for f in res.found] or ["no unit answered"]
    lines.append(f"{len(res.found)} unit(s) found in {res.probes} probe(s)")
    lines.extend(f"error: {e}" for e in res.errors)
    if res.stopped:
        lines.append(f"stopped early: {res.stopped} (raise --budget to scan the rest)")
    return lines
