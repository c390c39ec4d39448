"""Trend and prediction: bucket means over a sliding window of 8 buckets, the
least-squares slope through them (alarm on a slope limit), and the time until the
fitted line reaches a limit (alarm when it is closer than the prediction horizon).

The open bucket's running sums are kept in channel order (added to on every sample);
the settings and the ring of finished bucket means are in phase order, so the channels
whose buckets close together are read as contiguous runs (docs/rules.md, Performance).
Sums are taken in a fixed order (``_tree4``/``_tree8``) that rules/reference.py repeats,
so both give the same bits.

A mixin over the alarm machine (rules/compile.py says why mixins).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from rules.alarmstate import AlarmMachine
from rules.indexing import NONE, FloatArr, IntArr
from rules.settings import MIN_TREND_BUCKETS, NS, R_PREDICT, R_TREND, TREND_BUCKETS, TREND_MID, TREND_SXX

assert TREND_BUCKETS & (TREND_BUCKETS - 1) == 0, "the trend ring is indexed with a bit mask"


def _tree4(a: FloatArr) -> FloatArr:
    """Column sums of a (4, R) array, in a fixed order the reference repeats exactly
    (``a`` is overwritten)."""
    a[:2] += a[2:]
    return a[0] + a[1]


def _tree8(a: FloatArr) -> FloatArr:
    """Column sums of an (8, R) array, in the order of reference.tree8 (``a`` is overwritten)."""
    return _tree4(np.add(a[:4], a[4:], out=a[:4]))


#: bucket positions in a full trend window, by ring slot (rows) and the newest bucket's
#: slot (columns): the newest at +3.5, the oldest at -3.5 (reference.trend_u)
TREND_U = np.array([[TREND_MID - ((new - j) % TREND_BUCKETS) for new in range(TREND_BUCKETS)]
                    for j in range(TREND_BUCKETS)])


def _trend_fit_partial(y: FloatArr, u: FloatArr) -> tuple[FloatArr, FloatArr, FloatArr]:
    """Least squares over the non-empty buckets (NaN: empty) of windows ``y`` at positions
    ``u`` (both (8, R)): the mean position, the mean value and the slope per bucket (NaN
    with fewer than MIN_TREND_BUCKETS buckets or no spread)."""
    w = (~np.isnan(y)).astype(float)
    y0 = np.where(w > 0, y, 0.0)
    cnt = w.sum(axis=0)  # whole numbers: exact in any order
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = _tree8(w * u) / cnt
        my = _tree8(w * y0) / cnt
        du = u - mu
        sxx = _tree8(w * (du * du))
        sxy = _tree8(w * (du * (y0 - my)))
        slope = sxy / sxx
    slope[~((cnt >= MIN_TREND_BUCKETS) & (sxx > 0))] = np.nan
    return mu, my, slope


class Trend(AlarmMachine):
    """Trend buckets, slope and prediction (see the module docstring)."""

    def _trend_rotate(self, c: npt.NDArray[np.intp], t: IntArr, rnd: int) -> None:
        """Close the current trend bucket of channels ``c`` (sorted) and evaluate the slope.

        Per-channel trend settings and the ring live in phase order (``rpos``), so the
        channels that rotate together are read as contiguous runs; only the running sums
        of the open bucket are in channel order (they are added to on every sample)."""
        rp = self.rpos[c]
        bw, ph = self.p_bw[rp], self.p_ph[rp]
        k0 = self.p_k[rp]
        first = k0 == NONE
        anyfirst = bool(first.any())
        # the bucket number (t + ph) // bw: usually the next one (an integer division by
        # an array is slow), computed only where it is not
        k = k0 + 1
        start = k * bw - ph
        far = first | (t >= start + bw)
        if far.any():
            k[far] = (t[far] + ph[far]) // bw[far]
            start[far] = k[far] * bw[far] - ph[far]
        self.p_k[rp] = k
        self.tb_next[c] = start + bw
        if anyfirst:
            # the channel's first bucket is partial: it will be closed as empty
            self.p_part[rp[first]] = True
            self.tb_n[c[first]] = 0
            self.tb_sv[c[first]] = 0.0
            old = ~first
            if not old.any():
                return
            c, rp, t, k0, k, start, bw = c[old], rp[old], t[old], k0[old], k[old], start[old], bw[old]
        n = self.tb_n[c]
        slot = k0 & (TREND_BUCKETS - 1)  # k0 % TREND_BUCKETS (a power of two), without a division
        mean = self.tb_sv[c] / n
        part = self.p_part[rp]
        if part.any():
            mean[part] = np.nan
            self.p_part[rp[part]] = False
        self.ring_y.reshape(-1)[slot * self.ring_y.shape[1] + rp] = mean
        gap = k - k0
        if bool((gap > 1).any()):
            # buckets without a sample in between are empty
            for j in range(1, TREND_BUCKETS + 1):
                m = j < gap
                if not m.any():
                    break
                self.ring_y[(k0[m] + j) & (TREND_BUCKETS - 1), rp[m]] = np.nan
        self.tb_n[c] = 0
        self.tb_sv[c] = 0.0
        self._trend_eval(c, rp, t, k, start, bw, rnd)

    def _trend_eval(self, c: npt.NDArray[np.intp], rp: npt.NDArray[np.intp], t: IntArr, k: IntArr,
                    start: IntArr, bw: IntArr, rnd: int) -> None:
        """Least-squares line through the last 8 bucket means, for the channels that rotated.

        The buckets are a fixed grid: the means sit at the buckets' midpoints, at
        ``u = -3.5 … 3.5`` buckets from the window's centre (oldest to newest), so for a
        full window the slope is one weighted sum ``Σ u·y / 42`` (42 = Σ u²); a window
        with empty buckets (at least 3 full) takes the general fit over those present.
        The channels whose buckets close together sit side by side in phase order, so
        the gather of their ring columns reads mostly contiguous memory."""
        m = len(rp)
        newest = (k - 1) & (TREND_BUCKETS - 1)  # the ring slot of the bucket just closed
        ys = np.take(self.ring_y, rp, axis=1, out=self._ev_scratch(0, m), mode="clip")
        tmp = self._ev_scratch(1, m)
        tot = _tree4(np.add(ys[:4], ys[4:], out=tmp[:4]))
        n0 = int(newest[0])
        if bool((newest == n0).all()):
            u: FloatArr = TREND_U[:, n0:n0 + 1]  # the usual: one window position for all
        else:
            u = np.take(TREND_U, newest, axis=1, out=self._ev_scratch(2, m), mode="clip")
        np.multiply(ys, u, out=tmp)
        num = _tree8(tmp)
        my = tot / TREND_BUCKETS
        slope = num / TREND_SXX  # per bucket
        mu = np.zeros(m)
        partial = np.isnan(tot)
        if partial.any():
            # empty buckets in the window: the general fit over the ones present
            p = np.flatnonzero(partial)
            pmu, pmy, pslope = _trend_fit_partial(ys[:, p], TREND_U[:, newest[p]])
            mu[p], my[p], slope[p] = pmu, pmy, pslope
        ok = ~np.isnan(slope)
        if not ok.all():
            c, rp, t, start, bw, mu, my, slope = (c[ok], rp[ok], t[ok], start[ok], bw[ok], mu[ok], my[ok],
                                                  slope[ok])
            if not len(c):
                return
        slope_s = slope / self.p_bws[rp]  # per second
        et = None if self.all_et else self.p_et[rp]
        if et is None or et.any():
            per_min = slope_s * 60.0
            # per_min >= lim for a rising limit, <= for a falling one: both as sgn * per_min
            # >= sgn * lim (a sign flip is exact)
            x = np.greater_equal(per_min if self.all_up else per_min * self.p_sgn[rp], self.p_alim[rp])
            if et is not None:
                x &= et
            self._machine(R_TREND, c, x, t, per_min, rnd)
        ep = None if self.all_ep else self.p_ep[rp]
        if ep is None or ep.any():
            if ep is not None and not ep.all():
                c, rp, t, start, bw, mu, my, slope, slope_s = (
                    c[ep], rp[ep], t[ep], start[ep], bw[ep], mu[ep], my[ep], slope[ep], slope_s[ep])
            # the fitted line at the sample's time (u = 4 at the start of the open bucket)
            u_t = (TREND_MID + 0.5) + (t - start) / bw
            y_end = my + slope * (u_t - mu)
            lim = self.p_plim[rp]
            rising = (slope > 0) & (y_end < lim)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                ttl = (lim - y_end) / slope_s  # the time to the limit (meant where rising)
                x = rising & (ttl * NS <= self.p_pns[rp])
            self._machine(R_PREDICT, c, x, t, lambda i: np.where(rising[i], ttl[i], np.inf), rnd)

    def _ev_scratch(self, i: int, m: int) -> FloatArr:
        """Scratch ``i`` of the trend refit as an (8, m) contiguous array (grown on demand)."""
        buf = self._evbuf[i]
        if len(buf) < TREND_BUCKETS * m:
            buf = self._evbuf[i] = np.empty(TREND_BUCKETS * max(m, 2 * len(buf) // TREND_BUCKETS))
        return buf[:TREND_BUCKETS * m].reshape(TREND_BUCKETS, m)
