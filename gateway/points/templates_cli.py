"""``safegw templates list|show``: the device templates shipped (config/templates/)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.core.cliutil import EXIT_CONFIG, EXIT_OK, display_width, fit
from gateway.core.configcheck import explain
from gateway.core.templates import TemplateError, available, load_template, template_path


def cmd_list(args: argparse.Namespace) -> int:
    for p in available():
        try:
            t = load_template(p, explain)
        except TemplateError as e:
            print(f"{p.stem}: INVALID: {e.lines[0]}")
            continue
        print(f"{p.stem:<24} {len(t.channels):>3} points  {t.model.description}")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    p = template_path(args.name, Path.cwd())
    if not p.is_file():
        print(f"error: no template {args.name!r}; shipped: {', '.join(t.stem for t in available())}",
              file=sys.stderr)
        return EXIT_CONFIG
    try:
        t = load_template(p, explain)
    except TemplateError as e:
        for line in e.lines:
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    print(f"{t.model.template}: {t.model.description}\nfile: {p}\nsource: {t.model.source}\n"
          f"confirmed: {t.model.confirmed}\n")
    rows = [("point", "address", "type", "order", "kind", "unit", "scale", "range", "alarms/preset")]
    for suffix, s, _ in t.channels:
        rng = s.get("range")
        rows.append((args.prefix + suffix, str(s.get("address", "")), str(s.get("type", "uint16")),
                     str(s.get("byte_order", "ABCD")), str(s.get("kind", "")), str(s.get("unit", "")),
                     str(s.get("scale", 1)), f"{rng[0]}..{rng[1]}" if rng else "",
                     str(s.get("preset") or s.get("alarms") or "")))
    widths = [max(display_width(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(fit(c, w) for c, w in zip(r, widths, strict=True)).rstrip())
    return EXIT_OK


def add_command(sub: Any) -> None:
    p = sub.add_parser("templates", help="device templates: list, show")
    ts = p.add_subparsers(dest="templates_command", metavar="SUBCOMMAND")
    ts.required = True
    ts.add_parser("list", help="the templates shipped").set_defaults(func=cmd_list)
    s = ts.add_parser("show", help="a template's points, source and what was confirmed")
    s.add_argument("name", help="a shipped template's name, or a path to a template file")
    s.add_argument("--prefix", default="", help="show channel names with this prefix")
    s.set_defaults(func=cmd_show)
