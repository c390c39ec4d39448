"""The period a query covers, ``from`` and ``to``, read one way by the alarm history
(``/alarms/history``) and the shift report (``/reports/shift``): the two query parameters
(bounded) and the parsing of them into nanoseconds, with the callers' error messages."""

# no "from __future__ import annotations": FastAPI resolves the handlers' annotations

from typing import Annotated

from fastapi import Query

from gateway.admin.registers import Invalid
from gateway.admin.routes.history import parse_when

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
