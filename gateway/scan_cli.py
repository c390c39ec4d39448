"""``safegw scan modbus-rtu|modbus-tcp``: find the units on a bus (commissioning).

The scanning itself is drivers.modbus.scan (reads only). This module parses the
arguments, prints the worst-case time up front, shows progress (a bar on a TTY,
plain lines otherwise) on stderr and the findings on stdout.

Exit codes: 0 at least one unit answered, 1 none did, 2 bad arguments, 3 the port
or host could not be opened.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import termios
from typing import Any

from gateway.core.cliutil import EXIT_CONFIG, EXIT_OK, setup_logging

EXIT_NONE_FOUND = 1
EXIT_UNREACHABLE = 3
MAX_BUDGET_S = 24 * 3600.0


def _duration(text: str) -> float:
    from gateway.core.units import parse_duration

    try:
        v = float(parse_duration(text))
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a duration (like 500ms, 30s, 10min): {e}") \
            from None
    if not 0 < v <= MAX_BUDGET_S:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} must be more than 0 and at most 24h")
    return v


def _tcp_port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a TCP port (1-65535)")
    return int(text)


def _host(text: str) -> str:
    if not 0 < len(text) <= 253:  # RFC 1035 §2.3.4: a name is at most 255 octets on the wire
        raise argparse.ArgumentTypeError("a host name or address of 1-253 characters")
    return text


def _fmt_s(s: float) -> str:
    return f"{s:.1f}s" if s < 120 else f"{s / 60:.1f} min"


def cmd_scan(args: argparse.Namespace) -> int:
    from drivers.modbus import scan

    setup_logging("WARNING")
    try:
        units = scan.parse_units(args.units)
        fc, start, count = scan.parse_registers(args.registers)
        if args.scan_command == "modbus-rtu":
            bauds = scan.parse_choices(args.baud, scan.AUTO_BAUDS, scan.parse_baud, "baud")
            parities = scan.parse_choices(args.parity, scan.AUTO_PARITIES, scan.parse_parity, "parity")
    except ValueError as e:
        print(f"safegw scan: {e}", file=sys.stderr)
        return EXIT_CONFIG
    err = sys.stderr
    tty = err.isatty()
    if args.scan_command == "modbus-rtu":
        est = scan.estimate_rtu_s(bauds, parities, units, args.timeout)
        total = len(bauds) * len(parities) * len(units)
        where = (f"{args.port}: {len(units)} unit(s) × {len(bauds)} baud rate(s) × {len(parities)} "
                 f"parit{'y' if len(parities) == 1 else 'ies'}")
    else:
        est = scan.estimate_tcp_s(units, args.timeout)
        total = len(units)
        where = f"{args.host}:{args.port}: {len(units)} unit(s)"
    print(f"scanning {where}; at most {_fmt_s(min(est, args.budget))} "
          f"(worst case {_fmt_s(est)}, budget {_fmt_s(args.budget)}); reads only", file=err)
    prog = scan.Progress(total, err, tty)
    try:
        if args.scan_command == "modbus-rtu":
            res = asyncio.run(scan.scan_rtu(args.port, bauds=bauds, parities=parities, units=units,
                                            registers=(fc, start, count), reply_s=args.timeout,
                                            budget_s=args.budget, progress=prog))
        else:
            res = asyncio.run(scan.scan_tcp(args.host, args.port, units=units, registers=(fc, start, count),
                                            reply_s=args.timeout, budget_s=args.budget, progress=prog))
    except (OSError, TimeoutError, termios.error, UnicodeError) as e:  # UnicodeError: a bad host label
        what = args.port if args.scan_command == "modbus-rtu" else f"{args.host}:{args.port}"
        print(f"safegw scan: cannot reach {what}: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    for line in scan.report_lines(res, fc, start):
        print(line)
    return EXIT_OK if res.found else EXIT_NONE_FOUND


def add_command(sub: Any) -> None:
    p = sub.add_parser("scan", help="find the units on a Modbus bus (reads only)")
    ss = p.add_subparsers(dest="scan_command", metavar="BUS")
    ss.required = True
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--units", default="1-247", help="unit ids to try: 1-247, or a list like 1,5,10-20")
    common.add_argument("--registers", default="holding:0-9",
                        help="what to read from each unit: TABLE:START-END, 0-based (default holding:0-9)")
    common.add_argument("--budget", type=_duration, default=600.0,
                        help="stop after this long, keeping what was found (default 10min)")
    r = ss.add_parser("modbus-rtu", parents=[common], help="an RS-485 line: unit ids, baud rate, parity")
    r.add_argument("--port", required=True, help="the serial port, like /dev/ttyUSB0")
    r.add_argument("--baud", default="auto", help=f"auto ({','.join(map(str, _auto_bauds()))}) or a list")
    r.add_argument("--parity", default="auto", help="auto (N,E,O) or a list like N,E")
    r.add_argument("--timeout", type=_duration, default=0.2,
                   help="wait this long for each answer (default 200ms)")
    r.set_defaults(func=cmd_scan)
    t = ss.add_parser("modbus-tcp", parents=[common], help="unit ids behind one Modbus-TCP address")
    t.add_argument("host", type=_host)
    t.add_argument("--port", type=_tcp_port, default=502)
    t.add_argument("--timeout", type=_duration, default=1.0,
                   help="wait this long for each answer (default 1s)")
    t.set_defaults(func=cmd_scan)


def _auto_bauds() -> tuple[int, ...]:
    from drivers.modbus.scan import AUTO_BAUDS

    return AUTO_BAUDS
