"""The period a query covers, ``from`` and ``to``, read one way by a channel's history and
trend (``/history``, ``/trend``), the alarm history (``/alarms/history``) and the shift
report (``/reports/shift``): the two query parameters (bounded) and the parsing of them
into nanoseconds, with the callers' error messages."""

# no "from __future__ import annotations": FastAPI resolves the handlers' annotations

import datetime as dt
from typing import Annotated

from fastapi import Query

from gateway.admin.registers import Invalid
from gateway.core.units import parse_duration

#: ``from``: an ISO time or a duration back from now
FromQuery = Annotated[str | None, Query(alias="from", max_length=40,
                                        description="ISO time or a duration back from now (8h)")]
#: ``to``: likewise; now when absent
ToQuery = Annotated[str | None, Query(alias="to", max_length=40)]


def time_range(start: str | None, end: str | None, now_ns: int, *, default_ns: int,
               empty_ok: bool) -> tuple[int, int]:
    """(t0, t1) in ns: ``end`` (else now) and ``start`` (else ``default_ns`` before the end),
    each an ISO time or a duration back from now. ``empty_ok``: ``from`` may equal ``to``
    (else it must be before it). A bad value or order is a 422 naming ``from`` or ``to``."""
    t1 = parse_when(end, now_ns, "to") if end else now_ns
    t0 = parse_when(start, now_ns, "from") if start else t1 - default_ns
    if empty_ok and t0 > t1:
        raise Invalid([(("query", "from"), "'from' is after 'to'")])
    if not empty_ok and t0 >= t1:
        raise Invalid([(("query", "from"), "'from' must be before 'to'")])
    return t0, t1


#: the latest time a query asks for (2116-02-20): the journal and InfluxDB keep signed
#: 64-bit ns since 1970 (up to 2262), and the query adds to its ends
MAX_NS = 2**62


def parse_when(s: str, now_ns: int, name: str) -> int:
    """An ISO 8601 time, or a duration back from now (``1h`` = one hour ago)."""
    try:
        return now_ns - int(parse_duration(s.lstrip("-")) * 1e9)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(
            [
                (
                    ("query", name),
                    f"expected an ISO time (2026-05-01T08:00:00Z) or a duration back "
                    f"from now (1h), got {s!r}",
                )
            ]
        ) from None
    if t.tzinfo is None:
        t = t.astimezone()
    # a time beyond what the journal holds (year 1, year 9999) asks for everything up to that end
    return min(max(int(t.timestamp() * 1e9), 0), MAX_NS)
