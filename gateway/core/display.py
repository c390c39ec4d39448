"""Numbers as a person reads them: a float32 register at its shortest float32 form, a
scaled integer at its scale's resolution. The journal keeps the exact value; only what
is shown (MQTT JSON, messages, the page, ``read``, the demo) goes through here.

How a channel's numbers are shown follows from what it is on the wire (``rendering_of``):

- a Modbus ``float32`` register: the shortest decimal that reads back as the same
  float32 (19.309999465942383 is the float32 nearest 19.31: shown 19.31); with a
  ``scale``/``offset``, the register's shortest form scaled, at 15 significant digits
  (a float32 193.1 × 0.1 is shown 19.31);
- a Modbus integer (``bool``, ``int16`` … ``uint32``) times ``scale`` plus ``offset``: at
  the decimals of the scale and the offset (222 × 0.1 = 22.200000000000003: shown 22.2;
  scale 0.25 keeps 2 decimals);
- anything whose wire type the config does not say (OPC UA: the server's Variant type;
  serial: text) and ``float64`` registers: a value that is exactly a float32 is shown at
  its shortest float32 form (an OPC UA ``Float`` arrives so), any other at 15 significant
  digits, which removes the last-bit noise of float64 arithmetic and keeps every decimal
  a 15-digit text had.

Rendered values are floats (JSON numbers), never strings, so consumers need not parse.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt

#: the most decimals a resolution asks for (a scale of 1e-12 is already below any sensor)
MAX_DECIMALS = 12
#: significant digits of a float64 shown as-is: 15 always reads back a 15-digit decimal
F64_DIGITS = 15
#: significant digits of a figure the rules derive from readings (a rate, an average):
#: the readings carry no more
DERIVED_DIGITS = 6
#: seconds (durations, thresholds) are shown to the millisecond
SECONDS_DECIMALS = 3
_INT_TYPES = ("bool", "int16", "uint16", "int32", "uint32")
#: alarm rules whose ``value`` is the channel's reading (the others' is a figure derived from it)
PROCESS_VALUE_RULES = ("limit", "range", "frozen", "mac", "peak", "impulse")
#: event fields in seconds
SECONDS_FIELDS = ("duration_s", "threshold_s", "time_to_limit_s", "horizon_s")


def decimals_of(step: float) -> int:
    """The decimals a step needs: 0.1 → 1, 0.25 → 2, 5 → 0, 1e-5 → 5 (at most MAX_DECIMALS)."""
    if not math.isfinite(step) or step == 0:
        return 0
    exp = Decimal(repr(abs(float(step)))).normalize().as_tuple().exponent
    return min(MAX_DECIMALS, max(0, -int(exp)))


def _pow10(d: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    return np.power(10.0, d.astype(np.float64))


def _round_decimals(x: npt.NDArray[np.float64], d: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """``x`` rounded to ``d`` decimals each (d may be negative: tens, hundreds). The integer
    is divided by an exact power of ten, so the result is the double nearest the decimal
    and prints as it (no 22.200000000000003)."""
    neg = d < 0
    # 10**22 is the largest power of ten a double holds exactly; beyond it (values far
    # below or above any reading) Python's round, correctly rounded, one by one
    far = np.abs(d) > 22
    pos = ~neg & ~far
    neg &= ~far
    out = np.empty_like(x)
    with np.errstate(over="ignore", invalid="ignore"):
        if pos.any():
            p = _pow10(d[pos])
            out[pos] = np.round(x[pos] * p) / p
        if neg.any():
            p = _pow10(-d[neg])
            out[neg] = np.round(x[neg] / p) * p
    if far.any():
        for i in np.flatnonzero(far).tolist():
            v = float(x[i])
            out[i] = round(v, int(d[i])) if math.isfinite(v) else v
    # a product beyond float64 (huge value, many decimals) is left as it was
    bad = ~np.isfinite(out)
    if bad.any():
        out[bad] = x[bad]
    return out


def _magnitude(x: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """floor(log10 |x|), 0 for zeros and non-finite values."""
    a = np.abs(x)
    ok = np.isfinite(a) & (a > 0)
    e = np.zeros(len(x), np.int64)
    if ok.any():
        e[ok] = np.floor(np.log10(a[ok])).astype(np.int64)
    return e


def significant(x: npt.NDArray[np.float64], digits: int) -> npt.NDArray[np.float64]:
    """``x`` at ``digits`` significant digits each."""
    x = np.asarray(x, dtype=np.float64)
    return _round_decimals(x, digits - 1 - _magnitude(x))


def float32_shortest(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """For each value, the double of the shortest decimal that reads back as the same float32
    as the value (at most 9 significant digits always do, IEEE 754-2008 §5.12.2)."""
    return _float32_digits(x)[0]


def _float32_digits(x: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """``float32_shortest`` and, for each value, the decimals of its shortest form (0 for
    zeros and non-finite values; negative: a multiple of ten)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        f = x.astype(np.float32)
    out = x.copy()
    dec = np.zeros(len(x), np.int64)
    todo = np.isfinite(f) & (f != 0)
    out[~todo & np.isfinite(x)] = f[~todo & np.isfinite(x)]  # zeros (keeps -0.0); overflow → inf
    e = _magnitude(x)
    for k in range(1, 10):
        if not todo.any():
            break
        i = np.flatnonzero(todo)
        d = k - 1 - e[i]
        cand = _round_decimals(x[i], d)
        with np.errstate(over="ignore"):  # a candidate above float32's largest is simply no hit
            hit = cand.astype(np.float32) == f[i]
        out[i[hit]] = cand[hit]
        dec[i[hit]] = d[hit]
        todo[i[hit]] = False
    return out, dec


@dataclass(frozen=True, slots=True)
class Rendering:
    """How one channel's readings are shown: ``float32`` (its wire type is a float32),
    ``decimals`` (a scaled integer: this many decimals), or neither (the type is not
    known or is a float64: see the module docstring)."""

    float32: bool = False
    decimals: int | None = None
    scale: float = 1.0  # a scaled float32: the register's value is (reading - offset) / scale
    offset: float = 0.0

    def value(self, v: float | None) -> float | None:
        """A reading as a person reads it (None and non-finite values: None)."""
        if v is None or not math.isfinite(v):
            return None
        return float(self.array(np.array([v], np.float64))[0])

    def array(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if self.decimals is not None:
            return _round_decimals(x, np.full(len(x), self.decimals, np.int64))
        if self.float32:
            return float32_scaled(x, self.scale, self.offset)
        return unknown_type(x)


def float32_scaled(x: npt.NDArray[np.float64], scale: Any = 1.0,
                   offset: Any = 0.0) -> npt.NDArray[np.float64]:
    """Readings of float32 registers times ``scale`` plus ``offset`` (numbers or arrays):
    the register's shortest form, scaled, at the decimals that decimal arithmetic on it
    gives (the register's decimals plus the scale's, at least the offset's). The register
    is recovered as the float32 nearest (reading - offset) / scale: the float64
    arithmetic that made the reading is far finer than a float32's step."""
    x = np.asarray(x, dtype=np.float64)
    sc = np.broadcast_to(np.asarray(scale, dtype=np.float64), x.shape)
    of = np.broadcast_to(np.asarray(offset, dtype=np.float64), x.shape)
    if not (sc != 1.0).any() and not (of != 0.0).any():
        return float32_shortest(x)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        reg, dreg = _float32_digits((x - of) / sc)
        scaled = reg * sc + of
    dsc = _decimals_each(sc)
    dof = _decimals_each(of)
    out = _round_decimals(scaled, np.minimum(np.maximum(dreg + dsc, dof), 2 * MAX_DECIMALS + 9))
    bad = ~np.isfinite(out) & np.isfinite(x)
    if bad.any():  # a scale of 0 or an overflow: the reading at 15 significant digits
        out[bad] = significant(x[bad], F64_DIGITS)
    return out


def _decimals_each(a: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    u, inv = np.unique(a, return_inverse=True)
    return np.array([decimals_of(float(v)) for v in u], np.int64)[inv.reshape(a.shape)]


def unknown_type(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Readings of a wire type the config does not say: exactly a float32 → its shortest
    float32 form, else 15 significant digits."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        is32 = x.astype(np.float32).astype(np.float64) == x
    out = significant(x, F64_DIGITS)
    if is32.any():
        out[is32] = float32_shortest(x[is32])
    return out


def rendering_of(spec: Any) -> Rendering:
    """The rendering of a channel from its config (a ``ChannelBase``: Modbus channels have
    ``type``; the others do not say)."""
    type_ = getattr(spec, "type", None)
    scale = float(getattr(spec, "scale", 1.0))
    offset = float(getattr(spec, "offset", 0.0))
    if type_ in _INT_TYPES:
        return Rendering(decimals=max(decimals_of(scale), decimals_of(offset)))
    if type_ == "float32":
        return Rendering(float32=True, scale=scale, offset=offset)
    return Rendering()


class DisplayTable:
    """The rendering of every channel of a channel table, as arrays, so a whole column of
    readings is rendered in a few numpy operations (the status page's /channels)."""

    def __init__(self, specs: list[Any], names: list[str] | None = None):
        self.renderings = [rendering_of(s) for s in specs]
        self.by_name = {n: i for i, n in enumerate(names or [])}
        self.f32 = np.array([r.float32 for r in self.renderings], dtype=bool)
        self.scale = np.array([r.scale for r in self.renderings], dtype=np.float64)
        self.offset = np.array([r.offset for r in self.renderings], dtype=np.float64)
        self.dec = np.array([-1 if r.decimals is None else r.decimals for r in self.renderings],
                            dtype=np.int64)

    @classmethod
    def of(cls, table: Any) -> DisplayTable:
        """From a ``ChannelTable`` (anything with ``channels`` having ``spec``)."""
        return cls([c.spec for c in table.channels], [c.name for c in table.channels])

    def __len__(self) -> int:
        return len(self.renderings)

    def __getitem__(self, i: int) -> Rendering:
        return self.renderings[i]

    def of_channel(self, name: Any) -> Rendering | None:
        i = self.by_name.get(name) if isinstance(name, str) else None
        return None if i is None else self.renderings[i]

    def event(self, ev: Mapping[str, Any]) -> dict[str, Any]:
        """An alarm event or active-alarm item rendered by its channel (``readable_event``)."""
        return readable_event(ev, self.of_channel(ev.get("channel")))

    def values(self, idx: npt.NDArray[np.intp], x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Readings ``x`` of channels ``idx`` rendered (non-finite values stay as they are)."""
        x = np.asarray(x, dtype=np.float64)
        out = x.copy()
        fin = np.isfinite(x)
        dec = self.dec[idx]
        m = fin & (dec >= 0)
        if m.any():
            out[m] = _round_decimals(x[m], dec[m])
        m32 = fin & (dec < 0) & self.f32[idx]
        if m32.any():
            i32 = idx[m32]
            out[m32] = float32_scaled(x[m32], self.scale[i32], self.offset[i32])
        mu = fin & (dec < 0) & ~self.f32[idx]
        if mu.any():
            out[mu] = unknown_type(x[mu])
        return out


def shortest(value: float, *, float32: bool = False, resolution: float | None = None) -> float:
    """The float that prints shortest and still stands for ``value``: rounded to the
    decimals of ``resolution`` (a scale of 0.1 gives 1 decimal, 0.25 gives 2), or the
    shortest representation of the float32 it came from, or of the float64 otherwise
    (at 15 significant digits: 22.200000000000003 → 22.2)."""
    if not math.isfinite(value):
        return value
    if resolution is not None and resolution > 0:
        return float(_round_decimals(np.array([value]), np.array([decimals_of(resolution)]))[0])
    if float32:
        return float(float32_shortest(np.array([value]))[0])
    return float(significant(np.array([value]), F64_DIGITS)[0])


def text(v: float | None) -> str:
    """A rendered number as text for a terminal: "-" for none, integers without ".0"."""
    if v is None or not math.isfinite(v):
        return "-"
    if v.is_integer() and abs(v) < 1e16:
        return str(int(v))
    return repr(float(v))


def figure(v: float | None, digits: int = DERIVED_DIGITS) -> float | None:
    """A figure derived from readings (a rate, an average, a limit), at ``digits`` significant digits."""
    if v is None or not isinstance(v, int | float) or not math.isfinite(v):
        return None if v is None or isinstance(v, int | float) else v
    return float(significant(np.array([float(v)]), digits)[0])


def seconds(v: Any) -> Any:
    """Seconds to the millisecond."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return v
    return round(float(v), SECONDS_DECIMALS)


def readable_event(ev: Mapping[str, Any], rendering: Rendering | None) -> dict[str, Any]:
    """An alarm event (or an active-alarm item) with its numbers as a person reads them:
    a reading (the ``value`` of the limit, range and frozen rules) by the channel's
    rendering, a derived figure (rate, trend, exposure) at 6 significant digits, limits
    at 15, seconds to the millisecond. Other keys are copied unchanged. ``rendering``
    None (a channel no longer configured): the generic rendering."""
    out = dict(ev)
    r = rendering or Rendering()
    v = ev.get("value")
    if isinstance(v, int | float) and not isinstance(v, bool):
        out["value"] = r.value(float(v)) if ev.get("rule") in PROCESS_VALUE_RULES else figure(v)
    lim = ev.get("limit")
    if isinstance(lim, int | float) and not isinstance(lim, bool):
        out["limit"] = figure(lim, F64_DIGITS)
    for k in SECONDS_FIELDS:
        if k in ev:
            out[k] = seconds(ev[k])
    return out
