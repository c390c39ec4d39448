"""Exposure: the time-weighted average over 8 h (TWA) and the short-term limit over
15 min (STEL) of a concentration, the Leq,8h of a noise level (averaged as energy), and
the MAC of GBZ 2.1-2019: a ceiling that any single valid reading above it exceeds.

Each channel keeps one running integral of its readings over time (each reading held
until the next, at most ``hold_ns``), with snapshots of it at minute boundaries (a
ring of 16 for STEL) and 15-minute boundaries (a ring of 33 for TWA); the integral
over a window is the integral now minus the snapshot at the window's start. So the
check per sample is one compare of the integral against a limit moved to the
snapshot (``lim_min``: the lower of the two), and the boundaries are staggered over
the channels so few cross in one batch.

A mixin over the alarm machine (rules/compile.py says why mixins).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from rules.alarmstate import AlarmMachine
from rules.compile import SB1, TB1
from rules.indexing import NONE, UNSET, FloatArr, Idx, IntArr, Sel, minus, positions_of, union
from rules.settings import (
    IMPULSE_BUCKET_NS,
    IMPULSE_BUCKETS,
    IMPULSE_LIMITS,
    PEAK_DAY_NS,
    PEAK_EXCURSION_NS,
    PEAK_GAP_NS,
    PEAK_PER_DAY,
    R_IMPULSE,
    R_MAC,
    R_PEAK,
    R_STEL,
    R_TWA,
    STEL_BUCKET_NS,
    TWA_PER_STEL,
)


def _fill_ring(snap: FloatArr, c: npt.NDArray[np.intp], k0: IntArr, k: IntArr, v: FloatArr) -> None:
    """Snapshots of channels ``c`` (rows of ``snap``, a ring of W slots by bucket number)
    for buckets k0+1 … k: all take the value ``v`` (nothing came in between); only the
    last W matter."""
    w = snap.shape[1]
    start = np.maximum(k0 + 1, k - (w - 1))
    for d in range(w):
        j = start + d
        m = j <= k
        if not m.any():
            break
        snap[c[m], j[m] % w] = v[m]


class Exposure(AlarmMachine):
    """The exposure integral, its snapshots and the TWA / STEL rules (see the module docstring)."""

    def _exposure_contrib(self, ch: Any, v: FloatArr, pv: FloatArr, di: IntArr, dtn: FloatArr, sel: Sel,
                          pos: dict[str, Any] | None) -> FloatArr:
        """What each sample adds to the exposure integral: the previous reading held until
        now, at most hold_ns (value·ns; a noise level as energy)."""
        m = len(v)
        held = dtn
        if pos is None or int(di.max()) > pos["hold_min"]:
            # the clamp is needed only after a gap (one reduction tells)
            held = np.minimum(dtn, self.hold_f[sel], out=self._s_h[:m])
        contrib = np.multiply(pv, held, out=self._s_c[:m])
        # a negative concentration (zero drift) counts as none; no previous value, none
        if not float(contrib.min()) >= 0.0:  # (NaN too)
            contrib[~(contrib >= 0.0)] = 0.0
        if pos is None or pos["any_noise"]:
            if pos is None:
                npos = np.flatnonzero(self.ex_mode[sel] == 2)
                nc = ch[npos].astype(np.intp)
                nk = self.noise_c[nc]
                nr: Any = self.noise_rank[nc]
            else:
                npos, nk, nr = pos["noise"], pos["noise_c"], pos["noise_r"]
            if len(npos):
                contrib[npos] = self.ex_e[nr] * held[npos]
                self.ex_e[nr] = np.exp(v[npos] * nk)  # the level as energy
        return contrib

    def _exposure_add(self, ch: Any, t: IntArr, v: FloatArr, sel: Sel, chs: Any, contrib: FloatArr, rnd: int,
                      hold: Idx | None, pos: dict[str, Any] | None, loud: Idx) -> None:
        """Add a round's contributions to the integral and check the TWA, STEL and MAC limits."""
        m = len(t)
        if isinstance(sel, slice):
            integ = self.I[sel]
            integ += contrib
        else:
            integ = self.I[sel] + contrib
            self.I[sel] = integ
        over = np.flatnonzero(np.greater(integ, self.lim_min[sel], out=self._s_b[:m]))
        ot = self.old_twa
        os_ = self.old_stel

        def twa_metric(i: npt.NDArray[np.intp]) -> FloatArr:
            return integ[i] - (ot[i + sel.start] if isinstance(sel, slice) else ot[sel[i]])

        def stel_metric(i: npt.NDArray[np.intp]) -> FloatArr:
            return integ[i] - (os_[i + sel.start] if isinstance(sel, slice) else os_[sel[i]])

        oc = ch[over].astype(np.intp)
        io = integ[over]
        self._machine(R_TWA, chs, None, t, twa_metric, rnd, hold=hold, px=over,
                      pxv=io > self.lim_twa[oc])
        self._machine(R_STEL, chs, None, t, stel_metric, rnd, hold=hold, px=over,
                      pxv=io > self.lim_stel[oc])
        if len(loud):
            # (the MAC and the peak level bound the quiet band: only loud readings can pass them)
            lc = loud + sel.start if isinstance(sel, slice) else ch[loud].astype(np.intp)
            lv = v[loud]
        else:
            lc, lv = loud, v[:0]
        if pos is None or pos["any_mac"]:
            # MAC (GBZ 2.1-2019): a ceiling, not an average: any valid reading above it
            with np.errstate(invalid="ignore"):
                om = loud[lv > self.mac[lc]]
            self._machine(R_MAC, chs, None, t, v, rnd, hold=hold, px=om, pxv=np.ones(len(om), np.int8))
        if pos is None or pos["any_peak"]:
            with np.errstate(invalid="ignore"):
                up = loud[lv > self.pk3[lc]]
            self._peak(ch, t, v, sel, chs, rnd, hold, up)

    def _impulse(self, ch: Any, t: IntArr, v: FloatArr, sel: Sel, chs: Any, rnd: int, hold: Idx | None,
                 ipos: npt.NDArray[np.intp] | None) -> None:
        """Impulse noise (rules/reference.py ``impulse`` says the rule), on the few channels
        that count impulses (``ipos``: their positions in the run; None: find them)."""
        idx = np.flatnonzero(self.enabled[R_IMPULSE][ch]) if ipos is None else ipos
        if hold is not None and len(hold):
            idx = minus(idx, hold)
        if len(idx):
            c = idx + sel.start if isinstance(sel, slice) else ch[idx].astype(np.intp)
            tt, vv = t[idx], v[idx]
            k = tt // IMPULSE_BUCKET_NS
            k0 = self.im_k[c]
            k0 = np.where(k0 == NONE, k, k0)
            adv = k > k0
            if adv.any():
                ca, ka, ja = c[adv], k[adv], k0[adv]
                for d in range(1, IMPULSE_BUCKETS + 1):  # the buckets passed are emptied
                    m = ja + d <= ka
                    if not m.any():
                        break
                    self.im_ring[ca[m], (ja[m] + d) % IMPULSE_BUCKETS] = 0
            kk = np.maximum(k, k0)
            self.im_k[c] = kk
            th = self.im_th[c]
            above = vv > th
            new = above & ~self.im_above[c]
            if new.any():
                self.im_ring[c[new], kk[new] % IMPULSE_BUCKETS] += 1
            self.im_above[c] = above
            cnt = self.im_ring[c].sum(axis=1)
            lim = np.select([cnt <= n for n, _ in IMPULSE_LIMITS], [lim for _, lim in IMPULSE_LIMITS], th)
            x = vv > lim
            px, pxv = idx[x], np.ones(int(x.sum()), np.int8)
        else:
            px, pxv = idx, np.zeros(0, np.int8)
        self._machine(R_IMPULSE, chs, None, t, v, rnd, hold=hold, px=px, pxv=pxv)

    def _peak(self, ch: Any, t: IntArr, v: FloatArr, sel: Sel, chs: Any, rnd: int, hold: Idx | None,
              up: Idx) -> None:
        """Peak exposure (rules/reference.py ``peak`` says the rule): only the positions above
        3 × PC-TWA (``up``, sorted) or in an open excursion are looked at."""
        idx = up
        if len(self.pk_open):
            idx = union(idx, positions_of(self.pk_open, chs))
        if hold is not None and len(hold):
            idx = minus(idx, hold)
        if len(idx):
            c = idx + sel.start if isinstance(sel, slice) else ch[idx].astype(np.intp)
            tt, vv = t[idx], v[idx]
            hi_i = vv > self.pk3[c]
            st = self.pk_start[c]
            start = hi_i & (st == UNSET)
            if start.any():
                cs, ts_ = c[start], tt[start]
                ring = self.pk_starts[cs]
                near = np.count_nonzero(ts_[:, None] - ring < PEAK_DAY_NS, axis=1)
                self.pk_bad[cs] = (ts_ - self.pk_end[cs] < PEAK_GAP_NS) | (near >= PEAK_PER_DAY)
                ring[:, :-1] = ring[:, 1:]
                ring[:, -1] = ts_
                self.pk_starts[cs] = ring
                self.pk_start[cs] = ts_
                self.pk_open = union(self.pk_open, cs)
            end = ~hi_i & (st != UNSET)
            if end.any():
                ce = c[end]
                self.pk_end[ce] = tt[end]
                self.pk_start[ce] = UNSET
                self.pk_open = minus(self.pk_open, ce)
            x = hi_i & ((vv > self.pk5[c]) | (tt - self.pk_start[c] > PEAK_EXCURSION_NS) | self.pk_bad[c])
            px, pxv = idx[x], np.ones(int(x.sum()), np.int8)
        else:
            px, pxv = idx, np.zeros(0, np.int8)
        self._machine(R_PEAK, chs, None, t, v, rnd, hold=hold, px=px, pxv=pxv)

    def _exposure_rotate(self, c: npt.NDArray[np.intp], t: IntArr) -> None:
        ph = self.ex_ph[c]
        k = (t + ph) // STEL_BUCKET_NS
        k0 = self.ex_k[c]
        first = k0 == NONE
        integ = self.I[c]
        anyfirst = bool(first.any())
        if anyfirst:
            fc = c[first]
            s_st = integ[first] - self.seed_stel[fc]
            s_tw = integ[first] - self.seed_twa[fc]
            self.snap_stel[fc] = s_st[:, None]
            self.snap_twa[fc] = s_tw[:, None]
            self.old_stel[fc] = s_st
            self.old_twa[fc] = s_tw
            old = ~first
            oc, ok_, oi, k0 = c[old], k[old], integ[old], k0[old]
        else:
            oc, ok_, oi = c, k, integ
        tw = c[first] if anyfirst else c[:0]  # channels whose TWA limit moves
        if len(oc):
            row = oc * SB1  # flat positions in the (channel, snapshot) array: 1-D indexing is faster
            flat = self.snap_stel.reshape(-1)
            if bool((ok_ == k0 + 1).all()):
                # the usual: the next minute, one snapshot
                flat[row + ok_ % SB1] = oi
            else:
                _fill_ring(self.snap_stel, oc, k0, ok_, oi)
            self.old_stel[oc] = flat[row + (ok_ + 1) % SB1]
            tk0, tk = k0 // TWA_PER_STEL, ok_ // TWA_PER_STEL
            # the TWA snapshots move only when a 15-minute boundary was crossed
            newtw = tk != tk0
            if newtw.any():
                tc, tk0, tk, ti = oc[newtw], tk0[newtw], tk[newtw], oi[newtw]
                _fill_ring(self.snap_twa, tc, tk0, tk, ti)
                self.old_twa[tc] = self.snap_twa[tc, (tk + 1) % TB1]
                tw = union(tw, tc)
        if len(tw):
            self.lim_twa[tw] = self.old_twa[tw] + self.twa_thr[tw]
        lim_stel = self.old_stel[c] + self.stel_thr[c]
        self.lim_stel[c] = lim_stel
        self.lim_min[c] = np.fmin(self.lim_twa[c], lim_stel)
        self.ex_k[c] = k
        self.ex_next[c] = (k + 1) * STEL_BUCKET_NS - ph
