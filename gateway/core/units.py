"""Durations, sizes and times: how the config writes them and how people read them.

A duration is written with its unit (``500ms``, ``1s``, ``5m``, ``2h``, ``30d``), a size
with its (``512MB``, ``2GiB``). Times shown to people are ISO 8601 in UTC with a ``Z``.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_DUR = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ns|us|µs|ms|s|m|min|h|d)\s*$")
_DUR_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0,
              "h": 3600.0, "d": 86400.0}


#: the longest duration a config may write (ten years): beyond it, a typo
MAX_DURATION_S = 3660 * 86400.0
#: the largest size a config may write (1 PiB)
MAX_SIZE = 2**50


def parse_duration(v: Any) -> float:
    """``'500ms'`` → 0.5 (seconds). Bare numbers are refused: the unit must be written.
    At most ``MAX_DURATION_S``."""
    if isinstance(v, bool):
        raise ValueError("a duration needs a number and a unit, e.g. 500ms, 1s, 5m, 2h, 30d")
    if isinstance(v, int | float):
        if v == 0:
            return 0.0
        raise ValueError(f"write the unit: {v}s or {v}ms? (durations look like 500ms, 1s, 5m, 2h, 30d)")
    if isinstance(v, str):
        m = _DUR.match(v) if len(v) <= 40 else None
        if m:
            seconds = float(m.group(1)) * _DUR_UNITS[m.group(2)]
            if seconds > MAX_DURATION_S:
                raise ValueError(f"{v!r} is longer than {MAX_DURATION_S / 86400:g}d, surely a mistake")
            return seconds
    raise ValueError(f"{v!r} is not a duration; write a number and a unit: 500ms, 1s, 5m, 2h, 30d")


_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.I)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(v: Any) -> int:
    """``'512MB'`` → 512000000 (bytes); a bare integer is bytes. 0 to ``MAX_SIZE``."""
    n: int | None = None
    if isinstance(v, int) and not isinstance(v, bool):
        n = v
    elif isinstance(v, str) and len(v) <= 40:
        m = _SIZE.match(v)
        if m:
            n = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    if n is None:
        raise ValueError(f"{v!r} is not a size; write e.g. 512MB, 2GB, 100KiB")
    if not 0 <= n <= MAX_SIZE:
        raise ValueError(f"a size must be between 0 and 1PiB, not {v!r}")
    return n


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


def _no_bool_number(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"expected a finite number, got {v}")
    return v


Number = Annotated[float, BeforeValidator(_no_bool_number)]




# --------------------------------------------------------------------------- times

#: the first and last instants ``datetime`` can show, as ns since the epoch
_ISO_MIN_NS = int((dt.datetime(1, 1, 1, tzinfo=dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC))
                  .total_seconds()) * 10**9
_ISO_MAX_NS = int((dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
                   - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)).total_seconds()) * 10**9 + 999_000_000


def iso_ns(ns: int) -> str:
    """ns since the epoch → ``2026-12-07T15:04:05.123Z`` (milliseconds, UTC). Never raises:
    a time beyond what a calendar date can show (year 1 to 9999) is shown as that bound."""
    ns = min(max(ns, _ISO_MIN_NS), _ISO_MAX_NS)
    t = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=ns // 1000)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_now() -> str:
    """The current time as ``2026-12-07T15:04:05Z`` (seconds, UTC): for records written by people."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- addresses

#: a host name, an IPv4 address or an IPv6 address (bracketed or not): no spaces, no
#: control characters, nothing a URL or a log line would take for something else
HOST = re.compile(r"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})|\[?[0-9A-Fa-f:.]+(?:%[A-Za-z0-9]+)?\]?)$")


def check_host(v: str) -> str:
    if not HOST.fullmatch(v):
        raise ValueError(f"{v[:80]!r} is not a host name or an IP address")
    return v


def check_listen(v: str) -> str:
    parse_listen(v)
    return v


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); the port is 0-65535 (0: any free
    port, which tests use)."""
    host, sep, port_s = listen.rpartition(":")
    if not sep or not host or not port_s.isdigit() or len(port_s) > 5 or not HOST.fullmatch(host):
        raise ValueError(f"listen {listen!r} is not host:port (e.g. 127.0.0.1:8080 or [::1]:8080)")
    port = int(port_s)
    if not 0 <= port <= 65535:
        raise ValueError(f"listen {listen!r}: port {port} is not in 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port
