"""InfluxDB line protocol, formatted in bulk from the Batch's numpy arrays.

Building one ``Point`` per sample (influxdb-client) costs microseconds a point; the
historian must keep up with hundreds of thousands of points a second. So every line
is assembled in a byte matrix, one row per sample, one column block per piece:

    <series prefix> value=<v>,quality=<q>i <ts>\\n

- the series prefix (``measurement,tag=...,tag=... ``) is precomputed per channel
  (:class:`SeriesTable`) and gathered by channel index;
- numbers are written digit by digit with vectorized integer arithmetic, right-aligned
  in their block with NUL padding;
- the NULs are squeezed out in one boolean compaction at the end (no NUL can occur in
  a line: tag values are cleaned of them).

Floats must come back bit-identical. A value is written as ``<m>e-<k>`` where ``m/10**k``
is the value: first the shortest ``k`` (0..6) for which the division of two exact
doubles — correctly rounded, as the server's parser rounds — gives back the value
(0..6; typical sensor readings: ``19429e-3``). Otherwise 18 significant digits computed in
x87 extended precision (64-bit mantissa: the rounding error stays far below half an
ulp of the double, so the server parses back the same double). Magnitudes outside
1e-11..1e27 (rare in a plant) fall back to ``repr``.

Samples with no usable value (quality bad, or NaN/inf, which line protocol cannot
carry) are written with the quality field only: the point says "we had no value
at this time, and why" without inventing one.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.core.batch import Batch, Quality

# --------------------------------------------------------------------------- escaping

# line protocol has no escape for line breaks: control characters become (escaped) spaces
_CTRL = str.maketrans({"\n": " ", "\r": " ", "\t": " ", "\0": ""})
_MEAS_ESC = str.maketrans({",": r"\,", " ": r"\ "})
_TAG_ESC = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})


def escape_measurement(s: str) -> str:
    s = s.translate(_CTRL)
    if s.endswith("\\"):
        s = s + " "  # a trailing backslash would escape the separator
    return s.translate(_MEAS_ESC)


def escape_tag(s: str) -> str:
    """Tag keys and values: escape comma, equals and space; newlines become spaces."""
    s = s.translate(_CTRL).translate(_TAG_ESC)
    if s.endswith("\\"):
        s = s[:-1] + "\\\\"
    return s


def escape_field_string(s: str) -> str:
    """A string field value, quoted: backslash and double quote escaped."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def series_key(measurement: str, tags: Mapping[str, Any]) -> str:
    """``measurement,k=v,...`` with tags sorted by key (what the server sorts anyway) and
    empty values left out (the server rejects empty tag values)."""
    parts = [escape_measurement(measurement)]
    for k in sorted(tags):
        v = tags[k]
        if v is None:
            continue
        sv = escape_tag(str(v))
        if sv:
            parts.append(f"{escape_tag(k)}={sv}")
    return ",".join(parts)


# --------------------------------------------------------------------------- series table

class SeriesTable:
    """Per-channel series prefixes (``measurement,tags `` with the trailing space)."""

    def __init__(self, keys: Iterable[str]):
        enc = [(k + " ").encode() for k in keys]
        self.keys = enc
        self.width = max((len(k) for k in enc), default=1)
        self.matrix = np.zeros((max(len(enc), 1), self.width), np.uint8)
        for i, k in enumerate(enc):
            self.matrix[i, : len(k)] = np.frombuffer(k, np.uint8)
        self.lengths = np.array([len(k) for k in enc] or [0], np.int64)

    def __len__(self) -> int:
        return len(self.keys)


# --------------------------------------------------------------------------- numbers

_POW10 = np.array([10.0**k for k in range(23)])
_POW10_LD = np.array([np.longdouble(10) ** k for k in range(28)], dtype=np.longdouble)
_POW10_I = np.array([10**k for k in range(19)], np.int64)
_NICE_MAX_K = 6
_TWO53 = float(2**53)


def _digits(x: npt.NDArray[np.int64], width: int) -> npt.NDArray[np.uint8]:
    """Non-negative integers → ASCII, right-aligned in ``width`` columns, NUL-padded left."""
    n = len(x)
    out = np.empty((n, width), np.uint8)
    if n == 0:
        return out
    # runs of equal values (a poll's samples share one timestamp): format each run once
    if n > 16:
        starts = np.flatnonzero(np.concatenate(([True], x[1:] != x[:-1])))
        if len(starts) * 4 < n:
            counts = np.diff(np.append(starts, n))
            return np.repeat(_digits(x[starts], width), counts, axis=0)
    # scalar divisions (numpy uses libdivide for them); int32 where it fits: faster
    if width > 19:  # int64 has at most 19 digits
        out[:, : width - 19] = 0
        out[:, width - 19:] = _digits(x, 19)
        return out
    # a digit is written only while something is left of the number (else it is a
    # leading zero: NUL); zero itself gets its one '0' at the end
    if int(x.max()) < 2**31:
        q: npt.NDArray[np.signedinteger[Any]] = x.astype(np.int32)
        for j in range(width - 1, -1, -1):
            nq = q // 10
            out[:, j] = (q - nq * 10 + 48) * (q > 0)
            q = nq
    else:
        # int32 arithmetic is much cheaper than int64 division: cut into 9-digit pieces
        hi, lo = np.divmod(x, 10**9)
        top, mid = np.divmod(hi, 10**9)
        cols = width
        for piece, above, w in ((lo, hi, 9), (mid, top, 9), (top, None, 1)):
            q = piece.astype(np.int32)
            more = None if above is None else above > 0
            for _ in range(min(w, cols)):
                cols -= 1
                nq = q // 10
                live = q > 0 if more is None else (q > 0) | more
                out[:, cols] = (q - nq * 10 + 48) * live
                q = nq
            if cols == 0:
                break
        out[:, :cols] = 0
    out[x == 0, width - 1] = 48
    return out


def _ndigits(x: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Number of decimal digits of non-negative integers (0 has one)."""
    return np.maximum(np.searchsorted(_POW10_I, x, side="right"), 1).astype(np.int64)


_VAL_W = 26  # '-' + 18 digits + 'e-' / 'e+' + 2..3 digits, with room to spare


def format_floats(v: npt.NDArray[np.float64]) -> npt.NDArray[np.uint8]:
    """Finite floats → ASCII that parses back to the same double; (n, _VAL_W) NUL-padded."""
    n = len(v)
    out = np.zeros((n, _VAL_W), np.uint8)
    if n == 0:
        return out
    a = np.abs(v)
    neg = np.signbit(v) & (a != 0)
    mant = np.zeros(n, np.int64)
    exp10 = np.zeros(n, np.int64)  # value = mant * 10**exp10
    done = a == 0
    # 1. shortest k with rint(a*10^k)/10^k == a exactly (both operands exact doubles);
    #    each round works only on the values still without a representation
    todo_idx = np.flatnonzero(~done)
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(_NICE_MAX_K + 1):
            if not len(todo_idx):
                break
            at = a[todo_idx]
            m = np.rint(at * _POW10[k])
            ok = (m < _TWO53) & (m / _POW10[k] == at)
            hit = todo_idx[ok]
            mant[hit] = m[ok].astype(np.int64)
            exp10[hit] = -k
            done[hit] = True
            todo_idx = todo_idx[~ok]
    # 2. 18 significant digits in extended precision
    todo = ~done
    fallback = np.zeros(n, bool)
    if todo.any():
        idx = np.nonzero(todo)[0]
        at = a[idx]
        with np.errstate(all="ignore"):  # non-finite input is not expected; it falls back below
            e = np.nan_to_num(np.floor(np.log10(at)), nan=0.0, posinf=0.0, neginf=0.0).astype(np.int64)
        p = 17 - e  # scale so the integer has 18 digits
        inrange = (p >= -27) & (p <= 27)
        ld = at.astype(np.longdouble)
        with np.errstate(all="ignore"):
            scale = _POW10_LD[np.clip(np.abs(p), 0, 27)]  # exact: 5**27 < 2**64
            scaled = np.where(p >= 0, ld * scale, ld / scale)
            m = np.rint(scaled)
        # log10 can be off by one at powers of ten: keep 18 or 19 digits, both fit int64
        inrange &= (m >= 1e16) & (m < 9e18)
        mi = np.where(inrange, m, 0).astype(np.int64)
        mant[idx] = mi
        exp10[idx] = -p
        fallback[idx[~inrange]] = True
        # trim trailing zeros (shorter lines, same value)
        zi = idx[inrange]
        for _ in range(18):
            mz = mant[zi]
            q = mz // 10
            zi = zi[(q * 10 == mz) & (mz != 0)]
            if not len(zi):
                break
            mant[zi] //= 10
            exp10[zi] += 1
    # assemble: [-]digits[e±X]
    ew = np.where(exp10 != 0, 1 + 1 + _ndigits(np.abs(exp10)), 0)
    mw = _VAL_W - 4  # mantissa block: up to 19 digits plus sign
    md = _digits(mant, mw)
    nd = _ndigits(mant)
    # place the mantissa so that the exponent (at most 4 chars) follows it directly:
    # mantissa right-aligned in the first mw columns, exponent in the last 4 columns.
    out[:, :mw] = md
    rows = np.arange(n)
    sign_col = mw - nd - 1
    out[rows[neg], sign_col[neg]] = ord("-")
    has_e = ew > 0
    if has_e.any():
        ex = exp10[has_e]
        edig = _digits(np.abs(ex), 2)
        eblk = np.zeros((len(ex), 4), np.uint8)
        eblk[:, 0] = ord("e")
        eblk[:, 1] = np.where(ex < 0, ord("-"), ord("+"))
        eblk[:, 2:4] = edig
        # a one-digit exponent leaves a NUL inside the block: harmless, squeezed out later
        out[has_e, mw:] = eblk
    if fallback.any():
        for i in np.nonzero(fallback)[0]:
            s = repr(float(v[i])).encode()
            out[i, :] = 0
            out[i, _VAL_W - len(s):] = np.frombuffer(s, np.uint8)
    return out


def _const(n: int, s: bytes) -> npt.NDArray[np.uint8]:
    return np.broadcast_to(np.frombuffer(s, np.uint8), (n, len(s)))


# --------------------------------------------------------------------------- samples

_QUALITY_TXT = np.zeros((256, 3), np.uint8)
for _q in range(256):
    _s = str(_q).encode()
    _QUALITY_TXT[_q, 3 - len(_s):] = np.frombuffer(_s, np.uint8)


def usable(batch: Batch) -> npt.NDArray[np.bool_]:
    """Samples that carry a value: not bad, and finite."""
    return (batch.quality < Quality.BAD) & np.isfinite(batch.value)


def format_samples(batch: Batch, series: SeriesTable) -> bytes:
    """One line per sample: ``prefix value=V,quality=Qi TS``, or ``prefix quality=Qi TS``
    for samples without a usable value. ``series`` must cover every channel index."""
    n = len(batch)
    if n == 0:
        return b""
    ch = batch.channel
    if int(ch.max()) >= len(series) or int(ch.min()) < 0:
        raise IndexError(f"channel index out of the series table (size {len(series)})")
    has_v = usable(batch)
    vals = np.zeros((n, _VAL_W), np.uint8)
    if has_v.all():
        vals = format_floats(batch.value)
    elif has_v.any():
        vals[has_v] = format_floats(batch.value[has_v])
    P = series.width
    blocks = [
        (P, None),
        (6, b"value="),
        (_VAL_W, None),
        (9, b",quality="),
        (3, None),
        (2, b"i "),
        (19, None),
        (1, b"\n"),
    ]
    W = sum(w for w, _ in blocks)
    out = np.empty((n, W), np.uint8)
    c = 0
    out[:, c:c + P] = series.matrix[ch]
    c += P
    out[:, c:c + 6] = _const(n, b"value=")
    out[~has_v, c:c + 6] = 0
    c += 6
    out[:, c:c + _VAL_W] = vals
    c += _VAL_W
    out[:, c:c + 9] = _const(n, b",quality=")
    out[~has_v, c] = 0  # no comma without a value field
    c += 9
    out[:, c:c + 3] = _QUALITY_TXT[batch.quality]
    c += 3
    out[:, c:c + 2] = _const(n, b"i ")
    c += 2
    ts = batch.ts
    if (ts < 0).any() or (ts >= 10**19).any():
        raise ValueError("timestamps before 1970 cannot be written")
    out[:, c:c + 19] = _digits(ts, 19)
    c += 19
    out[:, c] = 10
    flat = out.reshape(-1)
    return flat[flat != 0].tobytes()


def split_lines(body: bytes, max_lines: int) -> list[bytes]:
    """Cut a body into chunks of at most ``max_lines`` lines, at line ends."""
    if not body:
        return []
    arr = np.frombuffer(body, np.uint8)
    ends = np.flatnonzero(arr == 10) + 1
    if len(ends) <= max_lines:
        return [body]
    cuts = [0, *ends[max_lines - 1::max_lines].tolist()]
    if cuts[-1] != len(body):
        cuts.append(len(body))
    return [body[a:b] for a, b in itertools.pairwise(cuts)]


def count_lines(body: bytes) -> int:
    return body.count(b"\n")


# --------------------------------------------------------------------------- events and stats

def _field_value(v: Any) -> str | None:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        f = float(v)
        if not math.isfinite(f):
            return None
        return repr(f)  # numbers always as floats: an int once and a float later would conflict
    if v is None:
        return None
    if isinstance(v, str):
        return escape_field_string(v)
    return escape_field_string(json.dumps(v, separators=(",", ":"), ensure_ascii=False, default=str))


def format_event(measurement: str, tags: Mapping[str, Any], fields: Mapping[str, Any], ts_ns: int) -> bytes:
    """One event line. Numbers become float fields, strings string fields, lists and
    dicts JSON strings; None and non-finite numbers are left out."""
    parts = []
    for k in sorted(fields):
        fv = _field_value(fields[k])
        if fv is not None:
            parts.append(f"{escape_tag(k)}={fv}")
    if not parts:
        parts.append('event="1"')
    return f"{series_key(measurement, tags)} {','.join(parts)} {int(ts_ns)}\n".encode()


def format_stats(series: SeriesTable, channels: npt.NDArray[np.int64], bucket_ts: int,
                 vmin: npt.NDArray[np.float64], vmax: npt.NDArray[np.float64],
                 vmean: npt.NDArray[np.float64], count: npt.NDArray[np.int64],
                 total: npt.NDArray[np.int64]) -> bytes:
    """Statistics lines for one interval; ``series`` holds the stats measurement's prefixes.

    Channels with no good sample get ``count=0i,samples=Ni`` only."""
    n = len(channels)
    if n == 0:
        return b""
    has = count > 0
    fmt_min = np.zeros((n, _VAL_W), np.uint8)
    fmt_max = np.zeros((n, _VAL_W), np.uint8)
    fmt_mean = np.zeros((n, _VAL_W), np.uint8)
    if has.any():
        fmt_min[has] = format_floats(vmin[has])
        fmt_max[has] = format_floats(vmax[has])
        fmt_mean[has] = format_floats(vmean[has])
    cols: list[npt.NDArray[np.uint8]] = [series.matrix[channels]]

    def lit(s: bytes, mask: npt.NDArray[np.bool_] | None = None) -> None:
        blk = np.array(_const(n, s))
        if mask is not None:
            blk[~mask] = 0
        cols.append(blk)

    lit(b"count=")
    cols.append(_digits(count.astype(np.int64), 19))
    lit(b"i")
    lit(b",max=", has)
    cols.append(fmt_max)
    lit(b",mean=", has)
    cols.append(fmt_mean)
    lit(b",min=", has)
    cols.append(fmt_min)
    lit(b",samples=")
    cols.append(_digits(total.astype(np.int64), 19))
    lit(b"i ")
    cols.append(_digits(np.full(n, bucket_ts, np.int64), 19))
    lit(b"\n")
    out = np.concatenate(cols, axis=1)
    flat = out.reshape(-1)
    return flat[flat != 0].tobytes()
