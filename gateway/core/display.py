"""Numbers as a person reads them: a float32 register at its shortest float32 form, a
scaled integer at its scale's resolution. The journal keeps the exact value; only what
is shown (MQTT JSON, messages, the page, ``read``) goes through here."""

from __future__ import annotations

import math

import numpy as np


def shortest(value: float, *, float32: bool = False, resolution: float | None = None) -> float:
    """The float that prints shortest and still stands for ``value``: rounded to the
    decimals of ``resolution`` (a scale of 0.1 gives 1 decimal), or the shortest
    representation of the float32 it came from, or of the float64 otherwise."""
    if not math.isfinite(value):
        return value
    if resolution is not None and resolution > 0:
        decimals = max(0, -math.floor(math.log10(resolution) + 1e-9))
        return round(value, decimals)
    if float32:
        return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))
    return float(repr(value))
