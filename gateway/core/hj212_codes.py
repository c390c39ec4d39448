"""HJ 212-2017's pollutant / monitoring-factor code table, for ``safegw check``.

The table (``hj212_codes.json`` next to this module) is not from the printed standard,
which was not at hand: it is the codes two independent public implementations reproduce
(their files and commits are named in the JSON's ``_sources``). A code both list is
marked ``confirmed``; one only one lists is kept, unconfirmed. Codes written with ``xx``
in the sources (a number the platform assigns) are matched as patterns.

An unknown code is a **warning**, not an error: provinces and platforms add local codes
(the sources themselves disagree at the edges), and this table is unconfirmed against the
standard, so refusing a config over it could stop a plant from reporting a code its
platform issued. The warning names the code and says where to check it.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from gateway.core.yamlsrc import Path_

TABLE = Path(__file__).with_name("hj212_codes.json")


@cache
def _table() -> tuple[dict[str, dict[str, Any]], list[tuple[re.Pattern[str], dict[str, Any]]]]:
    doc = json.loads(TABLE.read_text(encoding="utf-8"))
    pats = [(re.compile(rf"^{rx}$"), v) for rx, v in doc["patterns"].items()]
    return doc["codes"], pats


def lookup(code: str) -> dict[str, Any] | None:
    """The table's entry for ``code`` (``name``, ``sources``, ``confirmed``), or None."""
    codes, pats = _table()
    if code in codes:
        return codes[code]
    return next((v for rx, v in pats if rx.match(code)), None)


def config_warnings(cfg: Any) -> list[tuple[Path_, str]]:
    """HJ 212 points whose code is not in the table (``safegw check`` prints them, exit 0)."""
    out: list[tuple[Path_, str]] = []
    for i, reg in enumerate(getattr(cfg, "regulators", None) or []):
        if getattr(reg, "type", None) != "hj212":
            continue
        for j, p in enumerate(reg.points):
            if lookup(p.code) is None:
                out.append((("regulators", i, "points", j, "code"),
                            f"code {p.code!r} is not in HJ 212-2017's code table as public implementations "
                            "reproduce it (gateway/core/hj212_codes.json, unconfirmed against the printed "
                            "standard): check it against the platform's documents"))
    return out
