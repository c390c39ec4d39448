"""Point-table rows ↔ Modbus devices and channels.

Headers are matched in Chinese or English (``HEADERS``); a mapping file adds a
contractor's own. Each row becomes one channel; rows with the same device name make one
device, whose connection cells (protocol, host, port, unit id, ...) must agree. Every
bad cell is reported as ``TABLE.xlsx:Sheet!C17: column 'data type': 'flaot' is not a
type; did you mean 'float32'?``.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from typing import Any, get_args

from pydantic import ValidationError

from gateway.core.config import (
    ID_PATTERN,
    ByteOrder,
    Config,
    Kind,
    ModbusChannel,
    parse_modbus_address,
)
from gateway.points.tables import Sheet
from gateway.points.vocab import (
    COMMON_TYPES,
    DEVICE_KEYS,
    EXPORT_COLUMNS,
    EXPORT_HEADER,
    FUNCTION_CODE,
    FUNCTIONS,
    HEADER_INDEX,
    HEADERS,
    KINDS,
    LABEL,
    MODICON,
    ORDERS,
    PROTOCOLS,
    TYPES,
    norm_header,
)


class RowError(Exception):
    def __init__(self, col: str, message: str):
        super().__init__(message)
        self.col = col


@dataclass
class ImportResult:
    config: dict[str, Any]  # {"devices": [...]}
    errors: list[str] = field(default_factory=list)
    good_rows: int = 0
    bad_rows: list[int] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)
    row_of: dict[str, int] = field(default_factory=dict)  # channel name → its row
    column_of: dict[str, int] = field(default_factory=dict)  # column key → its index
    unresolved: bool = False  # the devices as a whole still fail a check


def _suggest(value: str, choices: list[str]) -> str:
    """``; did you mean 'float32'?`` for the closest choice (the first of equals: the lists
    put the common ones first), else the list."""
    best, score = "", 0.0
    for c in choices:
        r = difflib.SequenceMatcher(None, value.lower(), c.lower()).ratio()
        if r > score:
            best, score = c, r
    return f"; did you mean {best!r}?" if score >= 0.6 else f"; one of: {', '.join(choices)}"


def find_header(sheet: Sheet, mapping: dict[str, str]) -> tuple[int, dict[int, str], list[str]]:
    """The header row (the first of the first ten naming at least two known columns):
    its index in ``sheet.rows``, column index → key, and the headers not recognised."""
    known = {norm_header(k): v for k, v in mapping.items()}
    for idx, (_, cells) in enumerate(sheet.rows[:10]):
        cols: dict[int, str] = {}
        unknown = []
        for c, h in enumerate(cells):
            if not h:
                continue
            key = known.get(norm_header(h)) or HEADER_INDEX.get(norm_header(h))
            if key is None:
                unknown.append(h)
            elif key in cols.values():
                raise ValueError(
                    f"{sheet.cell(sheet.rows[idx][0], c)}: column {h!r} repeats column '{LABEL[key]}'"
                )
            else:
                cols[c] = key
        if len(cols) >= 2:
            for need in ("name", "register"):
                if need not in cols.values():
                    raise ValueError(
                        f"{sheet.cell(sheet.rows[idx][0], 0)}: the header row has no "
                        f"'{LABEL[need]}' column (known as: {', '.join(HEADERS[need][:8])}; "
                        "or map yours with --map)"
                    )
            return idx, cols, unknown
    raise ValueError(
        f"{sheet.file}: no header row in the first ten rows (known headers include "
        "位号, 寄存器地址, 数据类型, name, register, data type; map others with --map)"
    )


def parse_address(register: str, function: str, bit: str) -> str:
    """The table's address cells → ``holding:100`` / ``holding:20.3``.

    Accepted: ``40001``-style (leading digit 0/1/3/4 and a 1-based register, 5 or 6 digits),
    a 0-based register with a function code (1-4 or coil/discrete/holding/input), hexadecimal
    (``0x64``, ``64H``) with a function code, and the config's own ``holding:100``."""
    reg = register.strip()
    if not reg:
        raise RowError("register", "empty; give the register (40001-style, or 0-based with a function code)")
    if ":" in reg:
        f, n, b = parse_modbus_address(reg)
        return f"{f}:{n}" + (f".{b}" if b is not None else "")
    func: str | None = None
    if function.strip():
        func = FUNCTIONS.get(function.strip().lower())
        if func is None:
            raise RowError(
                "function",
                f"{function!r} is not a function code; give 1 (coil), 2 (discrete), 3 (holding) or 4 (input)",
            )
    bit_n: int | None = None
    m = re.fullmatch(r"(\w+)\.(\d+)", reg)
    if m:
        reg, bit_n = m.group(1), int(m.group(2))
    if bit.strip():
        if not bit.strip().isdigit():
            raise RowError("bit", f"{bit!r} is not a bit number 0-15")
        bit_n = int(bit.strip())
    hexm = re.fullmatch(r"0[xX]([0-9a-fA-F]+)|([0-9a-fA-F]+)[hH]", reg)
    if hexm:
        if func is None:
            raise RowError("register", f"{register!r} is hexadecimal: give its function code too")
        n = int(hexm.group(1) or hexm.group(2), 16)
    elif reg.isdigit():
        n = int(reg)
        if func is None:
            digits = len(reg)
            lead = int(reg[0]) if digits in (5, 6) else -1
            if lead not in MODICON:
                raise RowError(
                    "register",
                    f"{register!r} has no function: give a function code, or write it "
                    "40001-style (4xxxx holding, 3xxxx input, 1xxxx discrete, 0xxxx coil)",
                )
            func, n = MODICON[lead], int(reg[1:]) - 1
            if n < 0:
                raise RowError(
                    "register", f"{register!r}: 40001-style numbers start at 1 (40001 is holding:0)"
                )
    else:
        raise RowError(
            "register",
            f"{register!r} is not a register address (40001, 100 with a function code, 0x64 or holding:100)",
        )
    if n > 65535:
        raise RowError("register", f"{register!r}: register {n} is beyond 65535")
    if bit_n is not None and (func in ("coil", "discrete") or bit_n > 15):
        raise RowError("bit", f"bit {bit_n}: a bit .0-.15 applies to holding/input registers only")
    return f"{func}:{n}" + (f".{bit_n}" if bit_n is not None else "")


def _number(col: str, v: str) -> float | int:
    try:
        f = float(v.replace(",", ""))
    except ValueError:
        raise RowError(col, f"{v!r} is not a number") from None
    if f != f or f in (float("inf"), float("-inf")):
        raise RowError(col, f"{v!r} is not a finite number")
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def _row_channel(get: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """One row → (device cells, channel dict). ``get(key)`` is the cell's text ('' if none)."""
    ch: dict[str, Any] = {"name": get("name")}
    if not ch["name"]:
        raise RowError("name", "empty; every point needs a name (位号)")
    ch["address"] = parse_address(get("register"), get("function"), get("bit"))
    kind = get("kind")
    if kind:
        k = KINDS.get(kind.lower()) or KINDS.get(kind)
        if k is None:
            raise RowError("kind", f"{kind!r} is not a kind{_suggest(kind, list(get_args(Kind)))}")
        ch["kind"] = k
        if kind in ("可燃气体",) and not get("gas"):
            ch["gas"] = "combustible"
    else:
        raise RowError(
            "kind", "empty; give the quantity (gas, temperature, pressure, ... or 可燃气体, 温度, 压力)"
        )
    t = get("type")
    if t:
        tt = TYPES.get(t.lower()) or TYPES.get(t)
        if tt is None:
            raise RowError("type", f"{t!r} is not a type{_suggest(t, COMMON_TYPES)}")
        ch["type"] = tt
    bo = get("byte_order")
    if bo:
        o = ORDERS.get(bo.lower())
        if o is None:
            raise RowError(
                "byte_order", f"{bo!r} is not a byte order{_suggest(bo, list(get_args(ByteOrder)))}"
            )
        ch["byte_order"] = o
    for key, out in (
        ("engineering_unit", "unit"),
        ("gas", "gas"),
        ("area", "area"),
        ("hazard_source", "hazard_source"),
        ("description", "description"),
    ):
        if get(key):
            ch[out] = get(key)
    for key in ("scale", "offset"):
        if get(key):
            ch[key] = _number(key, get(key))
    lo, hi = get("range_low"), get("range_high")
    if get("range"):
        m = re.fullmatch(
            r"\s*(-?[\d.]+(?:[eE][-+]?\d+)?)\s*(?:~|～|-|—|to|,|～)\s*(-?[\d.]+(?:[eE][-+]?\d+)?)\s*\S*",
            get("range"),
        )
        if not m:
            raise RowError("range", f"{get('range')!r} is not a range; write low~high, e.g. 0~100")
        lo, hi = m.group(1), m.group(2)
    if lo or hi:
        if not (lo and hi):
            raise RowError("range_high" if lo else "range_low", "give both ends of the range")
        ch["range"] = [_number("range_low", lo), _number("range_high", hi)]
    alarms: dict[str, Any] = {}
    has_alarms = False
    for key in ("hh", "h", "l", "ll", "deadband"):
        if get(key):
            alarms[key] = _number(key, get(key))
    if get("delay"):
        alarms["delay"] = get("delay")
    extra = get("extra")
    if extra:
        try:
            more = json.loads(extra)
        except ValueError as e:
            raise RowError("extra", f"not JSON: {e}") from None
        if not isinstance(more, dict):
            raise RowError("extra", "give a JSON object of further channel settings")
        if isinstance(more.get("alarms"), dict):
            alarms = {**more.pop("alarms"), **alarms}
            has_alarms = True
        ch.update({k: v for k, v in more.items() if k not in ch})
    if alarms or has_alarms:
        ch["alarms"] = alarms
    try:
        ModbusChannel.model_validate(ch)
    except ValidationError as e:
        err = e.errors()[0]
        loc = err["loc"]
        col = {
            "name": "name",
            "address": "register",
            "type": "type",
            "byte_order": "byte_order",
            "unit": "engineering_unit",
            "range": "range",
            "scale": "scale",
            "offset": "offset",
            "kind": "kind",
            "gas": "gas",
            "area": "area",
            "hazard_source": "hazard_source",
            "description": "description",
        }.get(str(loc[0]))
        if loc[0] == "alarms" and len(loc) > 1 and str(loc[1]) in LABEL:
            col = str(loc[1])
        raise RowError(col or "extra", err["msg"].removeprefix("Value error, ")) from None
    dev = {k: get(k) for k in DEVICE_KEYS}
    return dev, ch


def rows_to_config(sheet: Sheet, mapping: dict[str, str] | None = None) -> ImportResult:
    """Every row of a point table → ``{"devices": [...]}``, with an error per bad cell."""
    try:
        hidx, cols, unknown = find_header(sheet, mapping or {})
    except ValueError as e:
        return ImportResult({"devices": []}, [str(e)])
    where = {key: c for c, key in cols.items()}
    devices: dict[str, dict[str, Any]] = {}
    dev_first: dict[str, tuple[int, dict[str, str]]] = {}
    names: dict[str, int] = {}
    res = ImportResult({"devices": []}, ignored_columns=unknown, row_of=names, column_of=where)
    by_unit: dict[tuple[str, int], list[dict[str, Any]]] = {}

    alternates = {
        "range": ("range", "range_low"),
        "range_low": ("range_low", "range"),
        "range_high": ("range_high", "range"),
    }

    def column(key: str) -> str:
        return next((k for k in alternates.get(key, (key,)) if k in where), key)

    def cell(row: int, key: str) -> str:
        return sheet.cell(row, where.get(key, 0))

    for rownum, cells in sheet.rows[hidx + 1 :]:
        if not any(cells):
            continue

        def get(key: str, cells: list[str] = cells) -> str:
            c = where.get(key)
            return cells[c] if c is not None and c < len(cells) else ""

        try:
            dev, ch = _row_channel(get)
            devname = get("device") or "modbus-1"
            if not re.fullmatch(ID_PATTERN, devname):
                raise RowError(
                    "device",
                    f"{devname!r} is not a device name: letters, digits and . _ -, "
                    "at most 64 (put a Chinese name in the description)",
                )
            if ch["name"] in names:
                raise RowError("name", f"{ch['name']!r} is already the name of row {names[ch['name']]}")
            first = dev_first.get(devname)
            if first is None:
                d = _new_device(devname, dev)
                dev_first[devname] = (rownum, dev)
                devices[devname] = d
            else:
                for k in DEVICE_KEYS:
                    if k == "unit_id" and devices[devname]["protocol"] == "modbus-rtu":
                        continue
                    if dev[k] and dev[k] != first[1][k]:
                        raise RowError(
                            k, f"{dev[k]!r} differs from row {first[0]} ({first[1][k]!r}) of device {devname}"
                        )
                d = devices[devname]
                if d["protocol"] == "modbus-rtu":
                    _unit_of(dev["unit_id"] or "1")
        except RowError as e:
            col = column(e.col)
            res.errors.append(f"{cell(rownum, col)}: column '{LABEL.get(col, col)}': {e}")
            res.bad_rows.append(rownum)
            continue
        names[ch["name"]] = rownum
        unit = _unit_of(dev["unit_id"] or "1")
        if d["protocol"] == "modbus-rtu":
            by_unit.setdefault((devname, unit), []).append(ch)
        else:
            d["channels"].append(ch)
        res.good_rows += 1
    for (devname, unit), chans in by_unit.items():
        devices[devname]["units"].append({"unit": unit, "channels": chans})
    res.config["devices"] = [d for d in devices.values() if d.get("channels") or d.get("units")]
    return res


def _unit_of(v: str) -> int:
    if not v.isdigit() or not 0 <= int(v) <= 255:
        raise RowError("unit_id", f"{v!r} is not a unit id (0-255; RTU 1-247)")
    return int(v)


def _new_device(name: str, dev: dict[str, str]) -> dict[str, Any]:
    proto = dev["protocol"].lower() or (
        "modbus-rtu" if dev["port"] and not dev["port"].isdigit() else "modbus-tcp"
    )
    if proto in ("tcp", "modbus tcp", "modbustcp"):
        proto = "modbus-tcp"
    if proto in ("rtu", "modbus rtu", "modbusrtu"):
        proto = "modbus-rtu"
    if proto not in PROTOCOLS:
        raise RowError(
            "protocol", f"{dev['protocol']!r} is not a protocol here{_suggest(proto, list(PROTOCOLS))}"
        )
    d: dict[str, Any] = {"name": name, "protocol": proto}
    if proto == "modbus-tcp":
        if not dev["host"]:
            raise RowError("host", f"empty; device {name} (Modbus TCP) needs the IP address on its first row")
        d["host"] = dev["host"]
        if dev["port"]:
            d["port"] = _number("port", dev["port"])
        d["unit"] = _unit_of(dev["unit_id"] or "1")
    else:
        if not dev["port"]:
            raise RowError("port", f"empty; device {name} (Modbus RTU) needs its serial port (/dev/ttyUSB0)")
        d["port"] = dev["port"]
        if dev["baudrate"]:
            d["baudrate"] = _number("baudrate", dev["baudrate"])
        if dev["parity"]:
            d["parity"] = dev["parity"].upper()[:1]
    for k in ("poll", "timeout"):
        if dev[k]:
            d[k] = dev[k] if not re.fullmatch(r"[\d.]+", dev[k]) else f"{dev[k]}s"
    d["channels" if proto == "modbus-tcp" else "units"] = []
    return d


# --------------------------------------------------------------------------- export


def _fmt(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer():
        return repr(v)  # keep 1.0 a float on the way back (the "." is what import reads)
    return v


def config_to_rows(cfg: Config) -> tuple[list[str], list[list[Any]], list[str]]:
    """The config's Modbus channels as (header, rows, skipped devices)."""
    from gateway.core.config import ModbusRtuDevice, ModbusTcpDevice

    header = [EXPORT_HEADER[k] for k in EXPORT_COLUMNS]
    rows: list[list[Any]] = []
    skipped: list[str] = []
    for dev in cfg.devices:
        if isinstance(dev, ModbusTcpDevice):
            units = [(dev.unit, dev.channels)]
            base = {"protocol": dev.protocol, "host": dev.host, "port": dev.port}
        elif isinstance(dev, ModbusRtuDevice):
            units = [(u.unit, u.channels) for u in dev.units]
            base = {
                "protocol": dev.protocol,
                "port": dev.port,
                "baudrate": dev.baudrate,
                "parity": dev.parity,
            }
        else:
            skipped.append(dev.name)
            continue
        base |= {"device": dev.name, "poll": f"{dev.poll!r}s", "timeout": f"{dev.timeout!r}s"}
        for unit, chans in units:
            for ch in chans:
                func, reg, bit = parse_modbus_address(ch.address)
                data = ch.model_dump(exclude_defaults=True, exclude={"name", "address", "kind"})
                alarms = data.pop("alarms", {}) or {}
                row = dict(base) | {
                    "name": ch.name,
                    "unit_id": unit,
                    "function": FUNCTION_CODE[func],
                    "register": reg,
                    "bit": bit,
                    "type": ch.type,
                    "byte_order": ch.byte_order,
                    "kind": ch.kind,
                    "scale": _fmt(ch.scale),
                    "offset": _fmt(ch.offset),
                    "range_low": _fmt(ch.range[0]) if ch.range else None,
                    "range_high": _fmt(ch.range[1]) if ch.range else None,
                    "engineering_unit": ch.unit or None,
                    "gas": ch.gas,
                    "area": ch.area,
                    "hazard_source": ch.hazard_source,
                    "description": ch.description,
                }
                for k in (
                    "type",
                    "byte_order",
                    "scale",
                    "offset",
                    "range",
                    "unit",
                    "gas",
                    "area",
                    "hazard_source",
                    "description",
                ):
                    data.pop(k, None)
                for k in ("hh", "h", "l", "ll", "deadband"):
                    if k in alarms:
                        row[k] = _fmt(alarms.pop(k))
                if ch.alarms is not None and "delay" in alarms:
                    row["delay"] = f"{alarms.pop('delay')!r}s"
                if alarms or (
                    ch.alarms is not None
                    and not any(k in row for k in ("hh", "h", "l", "ll", "deadband", "delay"))
                ):
                    data["alarms"] = alarms  # an alarms section of defaults only must come back too
                if data:
                    row["extra"] = json.dumps(data, ensure_ascii=False, default=list)
                rows.append([row.get(k) for k in EXPORT_COLUMNS])
    return header, rows, skipped
