"""Durations, sizes and times: how the config writes them and how people read them.

A duration is written with its unit (``500ms``, ``1s``, ``5m``, ``2h``, ``30d``), a size
with its (``512MB``, ``2GiB``). Times shown to people are ISO 8601 in UTC with a ``Z``.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_DUR = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ns|us|µs|ms|s|m|min|h|d)\s*$")
_DUR_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0,
              "h": 3600.0, "d": 86400.0}


def parse_duration(v: Any) -> float:
    """``'500ms'`` → 0.5 (seconds). Bare numbers are refused: the unit must be written."""
    if isinstance(v, bool):
        raise ValueError("a duration needs a number and a unit, e.g. 500ms, 1s, 5m, 2h, 30d")
    if isinstance(v, int | float):
        if v == 0:
            return 0.0
        raise ValueError(f"write the unit: {v}s or {v}ms? (durations look like 500ms, 1s, 5m, 2h, 30d)")
    if isinstance(v, str):
        m = _DUR.match(v)
        if m:
            return float(m.group(1)) * _DUR_UNITS[m.group(2)]
    raise ValueError(f"{v!r} is not a duration; write a number and a unit: 500ms, 1s, 5m, 2h, 30d")


_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.I)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        m = _SIZE.match(v)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise ValueError(f"{v!r} is not a size; write e.g. 512MB, 2GB, 100KiB")


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


def _no_bool_number(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError("expected a number, got a boolean")
    return v


Number = Annotated[float, BeforeValidator(_no_bool_number)]




# --------------------------------------------------------------------------- times

def iso_ns(ns: int) -> str:
    """ns since the epoch → ``2026-12-07T15:04:05.123Z`` (milliseconds, UTC)."""
    return (dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"))


def iso_now() -> str:
    """The current time as ``2026-12-07T15:04:05Z`` (seconds, UTC): for records written by people."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- addresses

def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); the port must be 0-65535 (0: a free
    port chosen when binding, as tests and benchmarks ask)."""
    host, sep, port_s = listen.rpartition(":")
    if not sep or not host or not port_s.isdigit():
        raise ValueError(f"listen {listen!r} is not host:port (e.g. 127.0.0.1:8080 or [::1]:8080)")
    port = int(port_s)
    if not 0 <= port <= 65535:
        raise ValueError(f"listen {listen!r}: port {port} is not in 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port
