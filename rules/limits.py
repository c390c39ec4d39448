"""Sensor health and the value rules: stale, bad quality, out of range (sensor fault),
frozen; limits with deadband, and rate of change.

Most channels are quiet most of the time, so a round is first screened against the
quiet band (in range, no limit near, whatever the deadband) and the range and limit
rules look only at the few loud samples. The bad and frozen timers are kept for the
few channels concerned (``bad_idx``; ``fz_c``/``fz_t``), and ``tick`` skips the stale
check until the earliest possible deadline (``_stale_lb``).

A mixin over the alarm machine (rules/compile.py says why mixins).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from rules.alarmstate import AlarmMachine
from rules.indexing import (
    I64,
    NEVER,
    NONE,
    UNSET,
    FloatArr,
    Idx,
    IntArr,
    Sel,
    members,
    minus,
    positions_of,
    union,
)
from rules.settings import (
    NS,
    Q_BAD,
    Q_OUT_OF_RANGE,
    Q_SENSOR_FAULT,
    R_BAD,
    R_FROZEN,
    R_LIMIT,
    R_RANGE,
    R_ROC,
    R_STALE,
)


class Limits(AlarmMachine):
    """Health, limits and rate of change (see the module docstring)."""

    def _health(self, ch: npt.NDArray[np.int32], t: IntArr, v: FloatArr, q: npt.NDArray[np.uint8], sel: Sel,
                chs: Any, base: int, qany: bool, qpos: Idx | None, skip: Idx,
                rnd: int) -> tuple[Idx | None, Idx, dict[str, Any] | None]:
        """Stale, bad and range on a round's samples (``skip``: positions in maintenance),
        and the screen of the limits. Returns the positions whose sample does not count
        (bad, out of range; None: none), those outside the quiet band (``loud``), and the
        run's cached facts (None: not a run)."""
        # ---- stale clears on any sample
        nzs = self._nzidx(R_STALE)
        if len(nzs) and len(positions_of(nzs, chs)):
            self._stale_lb = NONE  # a cleared channel's next deadline may come before the bound
            self._machine(R_STALE, chs, None, t, 0.0, rnd)
        # ---- bad quality (the few bad samples by position; channels seen bad in bad_idx)
        if qany:
            if qpos is None:
                qpos = np.flatnonzero(q != 0)
            badpos = minus(qpos[q[qpos] >= Q_BAD], skip)
        else:
            badpos = np.zeros(0, np.intp)
        if len(self.bad_idx):
            # a good sample ends a channel's bad time
            bpos = positions_of(self.bad_idx, chs)
            bpos = minus(bpos, badpos)
            if len(bpos):
                self.bad_since[bpos + base if isinstance(sel, slice) else ch[bpos]] = NONE
        if len(badpos):
            bc = badpos + base if isinstance(sel, slice) else ch[badpos].astype(np.intp)
            tb = t[badpos]
            bs = self.bad_since[bc]
            bs = np.where(bs == NONE, tb, bs)
            self.bad_since[bc] = bs
            self.bad_idx = union(self.bad_idx, bc)
            with np.errstate(over="ignore"):
                xb = tb - bs >= self.bad_ns[bc]
            bad_since = self.bad_since

            def bad_metric(i: npt.NDArray[np.intp]) -> FloatArr:
                b = bad_since[i + base] if isinstance(sel, slice) else bad_since[ch[i]]
                return np.where(b != NONE, (t[i] - b) / NS, 0.0)

            self._machine(R_BAD, chs, None, t, bad_metric, rnd, px=badpos, pxv=xb)
            fault = badpos[(q[badpos] == Q_OUT_OF_RANGE) | (q[badpos] == Q_SENSOR_FAULT)]
            if len(fault):
                fch = ch[fault].astype(np.intp)
                self._machine(R_RANGE, fch, np.ones(len(fault), np.int8), t[fault], v[fault], rnd)
            hold: npt.NDArray[np.intp] | None = badpos
        else:
            hold = None
            self._machine(R_BAD, chs, None, t, 0.0, rnd)
        # ---- range (sensor fault) and limits, screened together: a value strictly
        # inside the quiet band is in range and below every limit whatever the deadband
        m = len(v)
        pos = self._positions(sel) if isinstance(sel, slice) else None
        if pos is not None and pos["band_skip"] == 0:
            # first against the band all the run's channels share (the narrowest), one number
            # each side; where the bands differ, the few outside it are then tested exactly
            quiet = np.greater(v, pos["q_lo_max"], out=self._s_b[:m])
            quiet &= np.less(v, pos["q_hi_min"], out=self._s_b2[:m])
            loud = np.flatnonzero(np.logical_not(quiet, out=quiet))
            if not pos["band_same"] and len(loud):
                if len(loud) > m // 16:
                    pos["band_skip"] = 100  # not worth it for this run for a while
                lc = ch[loud].astype(np.intp)
                lv = v[loud]
                loud = loud[~((lv > self.q_lo[lc]) & (lv < self.q_hi[lc]))]
        else:
            if pos is not None:
                pos["band_skip"] -= 1
            quiet = np.greater(v, self.q_lo[sel], out=self._s_b[:m])
            quiet &= np.less(v, self.q_hi[sel], out=self._s_b2[:m])
            loud = np.flatnonzero(np.logical_not(quiet, out=quiet))
        rhold = union(badpos, skip)
        if len(loud):
            lc = ch[loud].astype(np.intp)
            lv = v[loud]
            linr = np.isfinite(lv) & (lv >= self.lo[lc]) & (lv <= self.hi[lc])
            self._machine(R_RANGE, chs, None, t, v, rnd, hold=rhold, px=loud, pxv=~linr)
            if not linr.all():
                out = loud[~linr]
                hold = out if hold is None else union(hold, out)
        else:
            self._machine(R_RANGE, chs, None, t, v, rnd, hold=rhold)
        return hold, loud, pos

    def _limits(self, ch: Any, t: IntArr, v: FloatArr, chs: Any, rnd: int, loud: Idx,
                hold: Idx | None) -> None:
        """Limits with deadband, only where the value is outside the quiet band."""
        if len(loud):
            lx = self._limit_levels(ch[loud].astype(np.intp), v[loud])
            self._machine(R_LIMIT, chs, None, t, v, rnd, hold=hold, px=loud, pxv=lx)
        else:
            self._machine(R_LIMIT, chs, None, t, v, rnd, hold=hold)

    def _roc(self, ch: Any, t: IntArr, dv: FloatArr, dtn: FloatArr, sel: Sel, chs: Any,
             pos: dict[str, Any] | None, rnd: int, hold: Idx | None) -> None:
        """Rate of change: ``dv`` (overwritten) the change since the previous valid sample,
        ``dtn`` the time since it (ns, as floats)."""
        m = len(t)
        np.abs(dv, out=dv)
        roc_metric = lambda i: dv[i] / (dtn[i] / NS)  # noqa: E731
        # a screen with one number: no change above the run's lowest limit over its
        # shortest interval (products of non-negative numbers round monotonically)
        cand = None
        if pos is not None:
            lowest = pos["roc_min"] * float(dtn.min())
            cand = np.flatnonzero(np.greater(dv, lowest, out=self._s_b[:m]))
        if cand is not None and len(cand) <= m // 16:
            cc = ch[cand].astype(np.intp)
            self._machine(R_ROC, chs, None, t, roc_metric, rnd, hold=hold, px=cand,
                          pxv=dv[cand] > self.roc_ns[cc] * dtn[cand])
        else:
            thr = np.multiply(self.roc_ns[sel], dtn, out=self._s_f[:m])
            xr = np.greater(dv, thr, out=self._s_b[:m])
            self._machine(R_ROC, chs, xr, t, roc_metric, rnd, hold=hold)

    def _frozen(self, ch: Any, t: IntArr, v: FloatArr, di: IntArr, chs: Any, rnd: int,
                eq: npt.NDArray[np.bool_], hold: npt.NDArray[np.intp] | None) -> None:
        """Frozen: the value exactly the previous valid one for ``frozen_ns``. Only the
        channels in an unchanged run are kept (``fz_c``, from ``fz_t``): a sample equal to
        the previous one starts or continues a run, any other valid sample ends it."""
        mpos, mk = members(self.fz_c, chs)
        anyeq = bool(eq.any())
        zpos = positions_of(self.fz0, chs) if len(self.fz0) else self.fz0
        if not (anyeq or len(mpos) or len(zpos) or len(self._nzidx(R_FROZEN))):
            return
        eqpos = np.flatnonzero(eq) if anyeq else np.zeros(0, np.intp)
        if hold is not None:
            eqpos = minus(eqpos, hold)  # held samples do not count
        # a run starts at the previous valid sample (the value's first reading) or goes on
        since = t[eqpos] - di[eqpos]
        if len(mpos) and len(eqpos):
            j = np.searchsorted(eqpos, mpos)
            j[j >= len(eqpos)] = 0
            cont = np.flatnonzero(eqpos[j] == mpos)
            since[j[cont]] = self.fz_t[mk[cont]]
        eqc = ch[eqpos].astype(np.intp)
        x = (t[eqpos] - since) >= self.frozen_ns[eqc]
        px = eqpos
        if len(zpos):
            # a zero duration: frozen on every valid sample
            if hold is not None:
                zpos = minus(zpos, hold)
            px = union(eqpos, zpos)
            xz = np.ones(len(px), bool)
            xz[np.searchsorted(px, eqpos)] = x
            x = xz
        self._machine(R_FROZEN, chs, None, t, v, rnd, hold=hold, px=px, pxv=x)
        # the runs: members whose sample was held stay, the others are replaced by this round's
        gone = np.ones(len(mpos), bool)
        if len(mpos) and hold is not None:
            j = np.searchsorted(hold, mpos)
            j[j >= len(hold)] = 0
            gone = hold[j] != mpos
        if len(mpos) == len(eqpos) if hold is None else int(gone.sum()) == len(eqpos):
            # the usual round of a steady plant: the same runs go on (each replaced by
            # itself, its start unchanged), so skip rebuilding the plant-wide list
            if np.array_equal(mpos if hold is None else mpos[gone], eqpos):
                return
        keep = np.ones(len(self.fz_c), bool)
        if len(mpos):
            keep[mk[gone]] = False
        fc, ft = self.fz_c[keep], self.fz_t[keep]
        if len(eqc):
            fc = np.concatenate((fc, eqc))
            ft = np.concatenate((ft, since))
            order = np.argsort(fc, kind="stable")
            fc, ft = fc[order], ft[order]
        self.fz_c, self.fz_t = fc, ft

    def valid_ts(self) -> IntArr:
        """Each channel's previous valid sample time (UNSET: none yet)."""
        out = self.last_ts.copy()
        out[self.ov_c] = self.ov_t
        return out

    def frozen_since(self) -> IntArr:
        """Since when each channel's value is unchanged (NONE: it changed at its last valid sample)."""
        out = np.full(self.n, NONE, I64)
        out[self.fz_c] = self.fz_t
        return out


    def _limit_levels(self, c: npt.NDArray[np.intp], vv: FloatArr) -> npt.NDArray[np.int8]:
        prev = self.cand[R_LIMIT, c]
        hh, h, lo, ll, db = self.hh[c], self.h[c], self.l[c], self.ll[c], self.db[c]
        lvl = np.zeros(len(c), np.int8)
        # precedence as in the reference: hh, h, ll, l (later assignments win)
        lvl[(vv <= lo) | ((prev <= -1) & (vv <= lo + db))] = -1
        lvl[(vv <= ll) | ((prev <= -2) & (vv <= ll + db))] = -2
        lvl[(vv >= h) | ((prev >= 1) & (vv >= h - db))] = 1
        lvl[(vv >= hh) | ((prev >= 2) & (vv >= self.hh_keep[c]))] = 2
        return lvl

    def _tick_stale(self, now: int) -> None:
        """Stale: no sample for longer than N poll periods (a channel's time counts from the
        first tick when it has had no sample yet)."""
        live = ~self.supp if self.nsupp else None
        if self._maybe_unset:
            unset = self.last_ts == UNSET
            if live is not None:
                unset &= live
            if unset.any():
                self.last_ts[unset] = now
                self._stale_lb = NONE
            self._maybe_unset = self.nsupp > 0
        # stale: no sample for longer than N poll periods. ``_stale_lb`` is a lower bound
        # of the earliest deadline of the channels not stale yet: before it, nothing to do
        # (unless the clock went back: a stale channel may then be fresh again)
        if now < self._last_tick:
            self._clock_back(now)
        self._last_tick = now
        if now > self._stale_lb and self.n:
            # each channel's deadline; those stale already (the rule's index) and suppressed
            # ones are set aside, so one min() tells whether any other went stale and when
            # the next one can
            dl = np.add(self.last_ts, self.stale_lbns, out=self._s_i)
            if live is not None:
                np.copyto(dl, NEVER, where=~live)
            nz = self._nzidx(R_STALE)
            dl[nz] = NEVER
            nxt = int(dl.min())
            new = np.zeros(0, np.intp)
            if nxt < now:
                new = np.flatnonzero(dl < now)
                dl[new] = NEVER
                nxt = int(dl.min())
            idx = union(new, nz)
            if len(idx):
                last = self.last_ts[idx]
                xs = last + self.stale_lbns[idx] < now
                self._machine(R_STALE, idx, xs, now, lambda i: (now - last[i]) / NS, 0)
                if not xs.all():  # fresh again (the clock went back): their deadlines count
                    nxt = min(nxt, int((last + self.stale_lbns[idx])[~xs].min()))
            self._stale_lb = nxt

    def _tick_bad(self, now: int) -> None:
        # bad for longer than allowed
        if len(self.bad_idx):
            bidx = self.bad_idx[self.bad_since[self.bad_idx] != NONE]
            self.bad_idx = bidx
            if len(bidx):
                bs = self.bad_since[bidx]
                xb = (now - bs >= self.bad_ns[bidx])
                self._machine(R_BAD, bidx, xb, now, lambda i: (now - bs[i]) / NS, 0)

    def _clock_back(self, now: int) -> None:
        """The clock went back (a step, as NTP makes when the gateway's clock ran fast): the
        channels' times later than ``now`` are brought back to it. Samples stamped after the
        step are then taken at once (else they would all be dropped as older than the
        last one until the clock caught up, the alarms with them), delays go on from now,
        and a stale channel may be fresh again. Bucket boundaries ahead stay: the open
        trend and exposure buckets run longer by the step."""
        np.minimum(self.last_ts, now, out=self.last_ts)
        np.minimum(self.since, now, out=self.since)
        np.minimum(self.bad_since, now, out=self.bad_since)
        np.minimum(self.ov_t, now, out=self.ov_t)
        np.minimum(self.fz_t, now, out=self.fz_t)
        np.minimum(self.pk_start, now, out=self.pk_start)
        np.minimum(self.pk_end, now, out=self.pk_end)
        self._stale_lb = NONE
