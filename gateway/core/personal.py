"""Personal fields of register records (ID card and phone numbers): masked or left out of
what leaves the gateway's own store (the uplink by ``registers.personal_upstream``, the
historian and central's event store always leave them out). Pure: used by the registers,
the historian and central alike, so it lives in the core."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

PersonalMode = Literal["full", "masked", "omitted"]


def mask(value: Any) -> str:
    """A personal value masked but for its last four characters (fewer for short ones):
    ``110101199003071234`` → ``**************1234``, enough to tell two records apart."""
    text = str(value)
    keep = min(4, len(text) // 3)
    return "*" * (len(text) - keep) + text[len(text) - keep:]


def redact(data: dict[str, Any], paths: Iterable[str], mode: PersonalMode) -> dict[str, Any]:
    """A copy of a record's data with its personal fields (``personal_fields`` paths) masked
    or left out; ``full`` returns the data as it is."""
    if mode == "full":
        return data
    out = dict(data)
    for path in paths:
        top, _, col = path.partition(".")
        if top not in out:
            continue
        if not col:
            if mode == "omitted":
                del out[top]
            else:
                out[top] = mask(out[top])
            continue
        rows = out[top]
        if isinstance(rows, list):
            out[top] = [redact(r, [col], mode) if isinstance(r, dict) else r for r in rows]
    return out
