"""``safegw points import|export``: point tables in and out."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from gateway.core.cliutil import EXIT_CONFIG, EXIT_OK
from gateway.points.convert import ImportResult, rows_to_config
from gateway.points.tables import Limits, TableError, read_table
from gateway.points.vocab import HEADERS

MAX_MAPPING = 64 * 1024


def read_mapping(path: str) -> dict[str, str]:
    """A mapping file: ``columns: {"contractor's header": name | register | data type | ...}``."""
    p = Path(path)
    if p.stat().st_size > MAX_MAPPING:
        raise ValueError(
            f"{path}: larger than {MAX_MAPPING} bytes; a mapping file is a short list of headers"
        )
    data = yaml.safe_load(p.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("columns"), dict) or set(data) - {"columns"}:
        raise ValueError(f"{path}: write 'columns:' with one line per header: \"设备位号\": name")
    out: dict[str, str] = {}
    by_label = {k.replace("_", " "): k for k in HEADERS} | {a: k for k, al in HEADERS.items() for a in al}
    for header, target in data["columns"].items():
        key = by_label.get(str(target).strip().lower()) or by_label.get(str(target).strip())
        if key is None:
            raise ValueError(
                f"{path}: columns.{header}: {target!r} is not a column; known: "
                + ", ".join(k.replace("_", " ") for k in HEADERS)
            )
        out[str(header)] = key
    return out


def import_table(
    table: str,
    sheet: str | None = None,
    mapping: dict[str, str] | None = None,
    limits: Limits = Limits(),
    partial: bool = False,
) -> ImportResult:
    """Read and convert a table; then check the devices as ``safegw check`` would, each
    error brought back to the row it came from. With ``partial`` the rows those errors
    name are left out and the rest checked again, until what is left passes
    (``res.unresolved`` tells when an error names no row)."""
    sh = read_table(table, sheet, limits)
    res = rows_to_config(sh, mapping)
    for _ in range(10):
        if not res.config["devices"]:
            break
        found = _check_devices(res, sh)
        res.errors += [line for _, line in found]
        if not found:
            res.unresolved = False
            break
        res.unresolved = True
        drop = {name for name, _ in found if name is not None}
        if not partial or len(drop) < len(found):
            break
        _drop(res, drop)
    return res


def _drop(res: ImportResult, names: set[str]) -> None:
    for dev in res.config["devices"]:
        for holder in dev.get("units") or [dev]:
            holder["channels"] = [c for c in holder["channels"] if c["name"] not in names]
        if "units" in dev:
            dev["units"] = [u for u in dev["units"] if u["channels"]]
    res.config["devices"] = [d for d in res.config["devices"] if d.get("channels") or d.get("units")]
    res.bad_rows += sorted(res.row_of[n] for n in names)
    res.good_rows -= len(names)


def _check_devices(res: ImportResult, sheet: Any) -> list[tuple[str | None, str]]:
    """The models and every check of ``safegw check`` on the devices as built (the dict,
    not YAML text: composing 5,000 channels of YAML again would triple the import time)."""
    from pydantic import ValidationError

    from gateway.config import CHECKS
    from gateway.core.config import Config
    from gateway.core.configcheck import all_checks, explain, loc_path

    doc = {"gateway": {"id": "gw-check", "site": "CHECK"}, **res.config}
    try:
        cfg = Config.model_validate(doc)
    except ValidationError as e:
        return [_to_cell(res, sheet, loc_path(tuple(err["loc"])), explain(dict(err))) for err in e.errors()]
    return [_to_cell(res, sheet, path, msg) for path, msg in all_checks(cfg, CHECKS)]


_FIELD_COLUMN = {
    "address": "register",
    "type": "type",
    "byte_order": "byte_order",
    "range": "range_low",
    "unit": "engineering_unit",
    "scale": "scale",
    "offset": "offset",
    "kind": "kind",
    "host": "host",
    "port": "port",
    "baudrate": "baudrate",
    "parity": "parity",
    "poll": "poll",
    "timeout": "timeout",
}
_DEVICE_FIELD = {"unit": "unit_id"}


def _to_cell(res: ImportResult, sheet: Any, path: tuple[Any, ...], msg: str) -> tuple[str | None, str]:
    """A ``safegw check`` error on the devices built → the cell it came from."""
    from gateway.points.vocab import LABEL

    parts = [p for p in path if p not in ("modbus-tcp", "modbus-rtu")]
    if len(parts) < 2 or parts[0] != "devices" or not isinstance(parts[1], int):
        return None, f"{sheet.file}: {'.'.join(map(str, parts))}: {msg} (as config)"
    dev = res.config["devices"][parts[1]]
    rest = parts[2:]
    if rest[:1] == ["units"] and len(rest) >= 4:
        chans, rest = dev["units"][rest[1]]["channels"], rest[2:]
    else:
        chans = dev.get("channels") or dev["units"][0]["channels"]
    if rest[:1] == ["channels"] and len(rest) >= 2:
        name, field, key_map = chans[rest[1]]["name"], rest[2] if len(rest) > 2 else "name", _FIELD_COLUMN
    else:  # a device setting: shown on the device's first row
        name = min(
            (c["name"] for u in dev.get("units", [{"channels": chans}]) for c in u["channels"]),
            key=lambda n: res.row_of[n],
        )
        field = rest[0] if rest else "device"
        key_map = {**_FIELD_COLUMN, **_DEVICE_FIELD, "name": "device"}
    key = key_map.get(str(field), "name")
    if key not in res.column_of:
        key = "name"
    line = f"{sheet.cell(res.row_of[name], res.column_of[key])}: column '{LABEL[key]}': {msg} (as config)"
    return (name if rest[:1] == ["channels"] and len(rest) >= 2 else None), line


def render(config: dict[str, Any], gateway_id: str, site: str) -> str:
    doc = {"gateway": {"id": gateway_id, "site": site}, **config}
    head = (
        "# written by `safegw points import`; keep the devices, put your own gateway section\n"
        "# (or copy the devices into your config): then `safegw check -c FILE`\n"
    )
    return head + yaml.dump(doc, Dumper=yaml.CSafeDumper, allow_unicode=True, sort_keys=False, width=200)


def write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def cmd_import(args: argparse.Namespace) -> int:
    try:
        mapping = read_mapping(args.map) if args.map else None
        res = import_table(args.table, args.sheet, mapping, partial=args.partial)
    except (TableError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    for line in res.errors:
        print(line, file=sys.stderr)
    if res.ignored_columns:
        print(
            f"note: columns not used: {', '.join(res.ignored_columns)} (map them with --map)", file=sys.stderr
        )
    if res.errors and not args.partial:
        print(
            f"nothing written: {len(res.errors)} error(s); fix them, or --partial to write the "
            f"{res.good_rows} good rows",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if res.unresolved:
        print("nothing written: the devices as a whole do not pass check (see above)", file=sys.stderr)
        return EXIT_CONFIG
    write_private(args.output, render(res.config, args.gateway_id, args.site))
    chans = res.good_rows
    print(
        f"wrote {args.output}: {len(res.config['devices'])} devices, {chans} channels"
        + (
            f"; {len(res.bad_rows)} rows left out: {', '.join(map(str, res.bad_rows))}"
            if res.bad_rows
            else ""
        )
    )
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from gateway.config import load_or_exit
    from gateway.points.convert import config_to_rows
    from gateway.points.tables import write_table

    cfg = load_or_exit(args.config)
    header, rows, skipped = config_to_rows(cfg)
    try:
        write_table(args.output, header, rows)
    except (TableError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if skipped:
        print(f"note: not Modbus, not exported: {', '.join(skipped)}", file=sys.stderr)
    print(f"wrote {args.output}: {len(rows)} points")
    return EXIT_OK


def add_command(sub: Any) -> None:
    p = sub.add_parser("points", help="point tables (Excel/CSV) in and out")
    ps = p.add_subparsers(dest="points_command", metavar="SUBCOMMAND")
    ps.required = True
    i = ps.add_parser("import", help="a point table → a config file of devices")
    i.add_argument("table", help="TABLE.xlsx or TABLE.csv")
    i.add_argument("--sheet", help="the sheet (default: the first)")
    i.add_argument("--map", help="YAML mapping a contractor's headers to columns")
    i.add_argument("--partial", action="store_true", help="write the good rows and list the bad ones")
    i.add_argument("--gateway-id", default="gw-1", help="gateway.id written in the stub section")
    i.add_argument("--site", default="CHANGE-ME", help="gateway.site written in the stub section")
    i.add_argument("-o", "--output", required=True)
    i.set_defaults(func=cmd_import)
    e = ps.add_parser("export", help="the config's Modbus channels → a point table")
    e.add_argument("-c", "--config", required=True)
    e.add_argument("-o", "--output", required=True, help="TABLE.xlsx or TABLE.csv")
    e.set_defaults(func=cmd_export)
