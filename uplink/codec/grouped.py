"""Integer series in groups, for the uplink codec: anchor, scale, trend, order, Rice.

Series that come in groups (the values of one channel, the record times of one
pattern, a channel's time offsets) are coded per group as residuals of order 0
(x - base), 1 (deltas) or 2 (deltas of deltas), whichever is smallest for that
group, then Rice-coded with the group's own parameter (see ``bits``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from uplink.codec.bits import (
    I64,
    QMAX,
    CodecError,
    _count,
    _get_rice,
    _put_rice,
    _put_zvars,
    _Reader,
    _rice_params,
    _unzigzag,
    _zigzag,
)

K_ZERO = 63  # the Rice parameter of a group whose residuals are all 0: no bits sent
_P10 = np.array([10**k for k in range(1, 10)], np.int64)  # divisors tried, 10 .. 10**9
_P10I = np.array([10**k for k in range(10)], np.int64)
MAX_EVENT_BYTES = 256 << 20


def _group_starts(counts: I64) -> I64:
    return np.cumsum(counts) - counts


def _gcumsum(x: I64, starts: I64, counts: I64) -> I64:
    """Cumulative sum restarting at each group (wrapping int64)."""
    cs = np.cumsum(x, dtype=np.int64)
    return cs - np.repeat(cs[starts] - x[starts], counts)


def _gdiff(x: I64, starts: I64) -> I64:
    d = x.copy()
    d[1:] -= x[:-1]
    d[starts] = x[starts]
    return d



def _put_grouped(out: list[bytes], x: I64, counts: I64, *, sizes: dict[str, int] | None = None,
                 n_time_groups: int = 0, segments: Sequence[int] = ()) -> None:
    """Integers in contiguous groups of ``counts`` (all > 0): anchor, scale, trend, order, Rice.

    Per group: its first value is the anchor A; the differences x - A are divided by
    the largest power of ten that divides them all (timestamps in µs or 100 ns ticks
    stored as ns, whatever the phase); the result y is detrended by its least-squares
    line B + i*D (i = index in the group), so that order 0 codes a steady poll clock's
    jitter or a drifting sensor's noise, order 1 its steps, order 2 the change of its
    steps; the residuals are Rice-coded with the group's own parameter.
    """
    if not len(x):
        return
    n = len(x)
    starts = _group_starts(counts)
    rep = np.repeat(np.arange(len(counts)), counts)
    anchor = x[starts]
    d = x - anchor[rep]
    g = np.gcd.reduceat(d, starts)
    e = ((g[None, :] % _P10[:, None]) == 0).sum(axis=0).astype(np.uint8)  # 10**k | g implies 10**(k-1) | g
    e[g == 0] = 0
    if e.any():
        anchor[e == 0] = 0
        y = (x - anchor[rep]) // _P10I[e][rep]
    else:
        anchor[:] = 0
        y = x
    i = np.arange(n, dtype=np.int64) - starts[rep]
    yf = y.astype(np.float64)
    cf = counts.astype(np.float64)
    ibar = (cf - 1.0) / 2.0
    sy = np.add.reduceat(yf, starts)
    sxy = np.add.reduceat(i * yf, starts) - ibar * sy
    sxx = cf * (cf * cf - 1.0) / 12.0
    lim = 2.0**62  # keep the trend parameters in int64 range
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(counts > 1, sxy / np.maximum(sxx, 1.0), 0.0)
    slim = lim / _P10I[e]  # the slope times 10**e (sent) stays in range too
    slope = np.rint(np.clip(np.nan_to_num(slope), -slim, slim))
    base = np.rint(np.clip(np.nan_to_num(sy / cf - slope * ibar), -lim, lim))
    b = base.astype(np.int64)
    dd = slope.astype(np.int64)
    r0 = y - b[rep] - i * dd[rep]
    r1 = _gdiff(r0, starts)
    r2 = _gdiff(r1, starts)
    res = np.stack((r0, r1, r2))
    cost = np.add.reduceat(np.abs(res.astype(np.float64)), starts, axis=1)
    order = np.argmin(cost, axis=0)
    r = res[order[rep], np.arange(n)]
    z = _zigzag(r)
    k = _rice_params(z, starts, counts)
    zero = np.maximum.reduceat(z, starts) == 0  # a constant channel, an unmoving offset
    k[zero] = K_ZERO
    out.append((order.astype(np.uint8) << 6 | k).tobytes())
    out.append(e.tobytes())
    scaled = e > 0  # other groups: anchor 0, their base is the level
    # side columns, in the series' own units, as differences to the previous group of the
    # same segment (record times, time offsets, values): each group's level (its anchor
    # when scaled, else its base), its slope times 10**e; then the scaled groups' bases
    seg_starts = _group_starts(np.asarray(segments, np.int64)[np.asarray(segments) > 0]) if segments \
        else np.zeros(1, np.int64)
    level = np.where(scaled, anchor, b)
    _put_zvars(out, np.concatenate((_gdiff(level, seg_starts), _gdiff(dd * _P10I[e], seg_starts),
                                    b[scaled])))
    if sizes is not None:
        sizes["grouped_params"] = sizes.get("grouped_params", 0) + sum(map(len, out[-3:]))
        at = len(out)
    if zero.any():  # groups of zeros send no bits at all
        live = ~zero
        _put_rice(out, z[live[rep]], k[live], counts[live])
    else:
        _put_rice(out, z, k, counts)
    if sizes is not None:
        _count(sizes, "grouped_rice", out, at)
        # the part of the Rice bits spent on record times and sample time offsets
        n_t = int(counts[:n_time_groups].sum()) if n_time_groups else 0
        live_t = ~zero[rep[:n_t]]
        zt, kt = z[:n_t][live_t], k[rep[:n_t]][live_t].astype(np.uint64)
        sizes["grouped_rice_time_bits"] = sizes.get("grouped_rice_time_bits", 0) + int(
            np.minimum(zt >> kt, QMAX).sum() + len(zt) + kt.sum())


def _get_grouped(rd: _Reader, counts: I64, what: str, segments: Sequence[int] = ()) -> I64:
    g = len(counts)
    n = int(counts.sum())
    if not n:
        return np.zeros(0, np.int64)
    starts = _group_starts(counts)
    ok = np.frombuffer(rd.take(g, what + " orders"), np.uint8)
    order, k = ok >> 6, ok & 0x3F
    if order.max() > 2:
        raise CodecError(f"{what}: residual order {order.max()}")
    if ((k > 62) & (k != K_ZERO)).any():
        raise CodecError(f"{what}: rice parameter {k.max()}")
    e = np.frombuffer(rd.take(g, what + " scales"), np.uint8)
    if e.max() > 9:
        raise CodecError(f"{what}: scale 10**{e.max()}")
    scaled = e > 0
    n_sc = int(scaled.sum())
    side = rd.zvars(2 * g + n_sc, what + " levels, slopes and bases")
    seg = np.asarray(segments, np.int64)[np.asarray(segments) > 0] if segments else np.array([g], np.int64)
    if int(seg.sum()) != g:
        raise CodecError(f"{what}: segments of {int(seg.sum())} groups for {g}")
    seg_starts = _group_starts(seg)
    level = _gcumsum(side[:g], seg_starts, seg)
    p10 = _P10I[e]
    slope10 = _gcumsum(side[g:2 * g], seg_starts, seg)
    if (slope10 % p10).any():
        raise CodecError(f"{what}: slope not a multiple of its scale")
    slope = slope10 // p10
    anchor = np.where(scaled, level, 0)
    base = level.copy()
    base[scaled] = side[2 * g:]
    rep = np.repeat(np.arange(g), counts)
    live = (k != K_ZERO)[rep]
    if live.all():
        r = _unzigzag(_get_rice(rd, n, k[rep].astype(np.uint64), what))
    else:
        r = np.zeros(n, np.int64)
        r[live] = _unzigzag(_get_rice(rd, int(live.sum()), k[rep][live].astype(np.uint64), what))
    o_s = order[rep]
    d1 = np.where(o_s == 2, _gcumsum(r, starts, counts), r)
    r0 = np.where(o_s >= 1, _gcumsum(d1, starts, counts), d1)
    i = np.arange(n, dtype=np.int64) - starts[rep]
    y = r0 + base[rep] + i * slope[rep]
    return (anchor[rep] + y * _P10I[e][rep]).astype(np.int64, copy=False)

