"""The rules engine's state: per-channel settings compiled from ``ChannelRules`` into
arrays, and the evaluation and alarm state arrays they drive.

``EngineState`` is the base of the engine's parts (rules/alarmstate.py, limits.py,
trend.py, exposure.py), which are mixins over this one set of arrays rather than
helper objects owning a share of them: the parts read and write each other's arrays
(entering maintenance resets the previous value, the exposure energy and the bad
timer; a restart touches everything), and the hot path reads them as ``self.x``
with no extra attribute hop per access. All of the state is declared here, in one
place, so what a channel carries can be read top to bottom.

Every array is indexed by channel (0..N-1), the alarm machine's by rule × channel;
the trend settings and ring are in phase order (``rpos``: channel -> position), so
the channels whose buckets close together sit side by side (docs/rules.md).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.core.channels import ChannelIndex, ChannelTable
from rules.indexing import I64, NEVER, NONE, NR, UNSET, Event, FloatArr, Idx, IntArr
from rules.settings import (
    IMPULSE_BUCKETS,
    NS,
    PEAK_PER_DAY,
    R_BAD,
    R_FROZEN,
    R_IMPULSE,
    R_LIMIT,
    R_MAC,
    R_PEAK,
    R_PREDICT,
    R_RANGE,
    R_ROC,
    R_STALE,
    R_STEL,
    R_TREND,
    R_TWA,
    STEL_BUCKET_NS,
    STEL_BUCKETS,
    TREND_BUCKETS,
    TWA_BUCKETS,
    ChannelRules,
    TableRules,
    phase_ns,
)

SB1 = STEL_BUCKETS + 1  # STEL snapshots kept per channel (a ring by minute)
TB1 = TWA_BUCKETS + 1  # TWA snapshots kept per channel (a ring by 15 minutes)


class EngineState:
    """The settings and state arrays of every channel (see the module docstring)."""

    def __init__(self, rules: Sequence[ChannelRules], *, table: ChannelTable | None, gateway_id: str,
                 history: int):
        self.table = table  # for its devices (maintenance by device)
        #: a channel's settings, for the events that name it (TableRules: resolved when asked)
        self.rules = rules
        self.gateway_id = gateway_id
        every = list(rules)  # read once into the arrays below, then let go
        self.names = [r.name for r in every]
        self.by_name: Mapping[str, int]
        if isinstance(rules, TableRules):  # the gateway's: the table's names, in its order
            self.by_name = ChannelIndex(rules.table)
        else:
            self.by_name = {n: i for i, n in enumerate(self.names)}
        self.n = n = len(rules)
        self._next_id = 1
        self.recent: deque[Event] = deque(maxlen=history)
        self.shelved: dict[tuple[int, int], dict[str, Any]] = {}
        self.maint_by: dict[int, dict[str, Any]] = {}  # operator-set maintenance: who, reason
        self.stats = {"samples": 0, "ignored_old": 0, "events": 0}
        self._build_config(every)
        del every
        # ---- alarm machine, rules × channels
        self.act = np.zeros((NR, n), np.int8)
        self.cand = np.zeros((NR, n), np.int8)
        self.since = np.zeros((NR, n), I64)
        self.metric = np.full((NR, n), np.nan)
        self.unacked = np.zeros((NR, n), bool)
        self.last_code = np.zeros((NR, n), np.int8)
        # ---- per-channel state
        self.last_ts = np.full(n, UNSET, I64)
        self.supp = self.cfg_maint.copy()
        self.rt_maint = np.zeros(n, bool)
        self.nsupp = int(self.supp.sum())
        self.pv = np.full(n, np.nan)
        # the previous valid sample's time is last_ts, except for the few channels whose
        # latest samples did not count (bad, out of range): those are listed here (sorted)
        self.ov_c = np.zeros(0, np.intp)
        self.ov_t = np.zeros(0, I64)
        # channels whose value is unchanged since the previous valid sample, and since when
        self.fz_c = np.zeros(0, np.intp)
        self.fz_t = np.zeros(0, I64)
        self.bad_since = np.full(n, NONE, I64)
        self.bad_idx = np.zeros(0, np.intp)  # channels (sorted) that may have bad_since set
        self._stale_lb = NONE  # no channel can go stale before this time (NONE: unknown)
        self._last_tick = NONE
        self._maybe_unset = True  # some channel may still have no last time
        # trend: the current bucket, and a ring of finished ones
        self.tb_next = np.where(self.tb_bw > 0, NONE, NEVER).astype(I64)
        self.tb_n = np.zeros(n, np.int32)  # samples in the open bucket
        self.tb_sv = np.zeros(n)
        nt = n if self.tb_bw.any() else 0
        # the means of finished buckets, bucket-major in phase order (the channels refitted
        # together are a run of columns); NaN: an empty (or the first, partial) bucket
        self.ring_y = np.full((TREND_BUCKETS, nt), np.nan)
        # exposure: a running integral with snapshots at (staggered) minute boundaries
        self.I = np.zeros(n)
        # noise channels, numbered in channel order (-1: not noise), and their previous
        # reading as energy (a channel run's noise channels are a slice of it)
        self.noise_rank = np.where(self.ex_mode == 2, np.cumsum(self.ex_mode == 2) - 1, -1)
        self.ex_e = np.zeros(int((self.ex_mode == 2).sum()))
        self.ex_k = np.full(n, NONE, I64)
        self.ex_next = np.where(self.ex_mode > 0, NONE, NEVER).astype(I64)
        ne = n if (self.ex_mode > 0).any() else 0
        self.snap_stel = np.zeros((ne, SB1))
        self.snap_twa = np.zeros((ne, TB1))
        self.old_stel = np.zeros(n)
        self.old_twa = np.zeros(n)
        self.lim_stel = np.full(n, np.nan)  # alarm when the integral passes these
        self.lim_twa = np.full(n, np.nan)
        self.lim_min = np.full(n, np.nan)  # fmin of the two: one compare screens both
        self.next_rot = np.minimum(self.tb_next, self.ex_next)
        self.seed_stel = np.zeros(n)  # restored exposure (see restore())
        # peak exposure (rules/exposure.py): the open excursion's start (UNSET: none), the
        # last one's end (UNSET: none), the starts of the latest PEAK_PER_DAY, and whether the
        # open one broke a rule (too soon, too many)
        self.pk_start = np.full(n, UNSET, I64)
        self.pk_end = np.full(n, UNSET, I64)
        self.pk_starts = np.full((n if self.enabled[R_PEAK].any() else 0, PEAK_PER_DAY), UNSET, I64)
        self.pk_bad = np.zeros(n, bool)
        self.pk_open = np.zeros(0, np.intp)  # channels (sorted) with an open excursion
        # impulse noise (rules/exposure.py): impulses per 15-minute bucket (a ring of 32 by
        # bucket number), the open bucket (NONE: none yet), the last reading above the threshold
        self.im_k = np.full(n, NONE, I64)
        self.im_ring = np.zeros((n if self.enabled[R_IMPULSE].any() else 0, IMPULSE_BUCKETS), np.int64)
        self.im_above = np.zeros(n, bool)
        self.seed_twa = np.zeros(n)
        self._pos_cache: dict[tuple[int, int], dict[str, Any]] = {}
        # scratch for the per-sample passes (a fresh 100k-element temporary costs about
        # twice a pass into memory already mapped)
        self._s_i = np.empty(n, I64)
        self._s_dtn = np.empty(n)
        self._s_h = np.empty(n)
        self._s_c = np.empty(n)
        self._s_dv = np.empty(n)
        self._s_f = np.empty(n)
        self._s_b = np.empty(n, bool)
        self._s_b2 = np.empty(n, bool)
        self._evbuf = [np.empty(0) for _ in range(3)]
        self._nz: list[npt.NDArray[np.intp] | None] = [None] * NR
        self._warming = False
        # transitions of the current call: (round, channel, rule, aux, old, new, ts, metric);
        # rule -2 = maintenance, -1 = an alarm suppressed (aux = its rule); else aux = unacked
        self._tr: list[tuple[int, int, int, int, int, int, int, float]] = []


    def _build_config(self, rules: list[ChannelRules]) -> None:
        n = len(rules)

        def f(attr: str) -> FloatArr:
            return np.array([getattr(r, attr) for r in rules], float).reshape(n)

        def ns(vals: Iterable[int | None]) -> IntArr:
            return np.array([NEVER if v is None else v for v in vals], I64).reshape(n)

        self.hh, self.h, self.l, self.ll = f("hh"), f("h"), f("l"), f("ll")
        self.db = f("deadband")
        with np.errstate(invalid="ignore"):
            # hh is held down to its restore value where there is one (else hh - deadband)
            self.hh_keep = np.array([r.hh_keep() for r in rules], float).reshape(n)
            self.gate_hi = np.fmin(np.fmin(self.h - self.db, self.hh - self.db), self.hh_keep)
            self.gate_lo = np.fmax(self.l, self.ll) + self.db
        self.gate_hi[np.isnan(self.gate_hi)] = np.inf
        self.gate_lo[np.isnan(self.gate_lo)] = -np.inf
        self.lo, self.hi = f("range_lo"), f("range_hi")
        self.q_lo = np.maximum(self.lo, self.gate_lo)  # the quiet band: in range, no limit near
        self.q_hi = np.minimum(self.hi, self.gate_hi)
        roc = f("roc")
        self.roc_ns = np.array([r.roc_per_ns() for r in rules], float).reshape(n)
        self.tb_bw = np.array([r.trend_bucket_ns() for r in rules], I64).reshape(n)
        self.tb_ph = np.array([phase_ns(i, r.trend_bucket_ns()) for i, r in enumerate(rules)], I64).reshape(n)
        tr_slope = f("trend_slope")
        pred_ns = np.array([r.predict_ns for r in rules], I64).reshape(n)
        pred_lim = f("predict_limit")
        self.stale_ns = ns(r.stale_ns for r in rules)
        self.bad_ns = ns(r.bad_ns for r in rules)
        self.frozen_ns = ns(r.frozen_ns for r in rules)
        self.ex_mode = np.array([{None: 0, "concentration": 1, "noise": 2}[r.exposure] for r in rules],
                                np.int8).reshape(n)
        self.noise_c = np.array([r.noise_c() for r in rules], float).reshape(n)
        self.hold_ns = np.array([r.hold_ns for r in rules], I64).reshape(n)
        self.hold_f = self.hold_ns.astype(float)
        self.ex_ph = np.array([phase_ns(i, STEL_BUCKET_NS) for i in range(n)], I64).reshape(n)
        with np.errstate(invalid="ignore", over="ignore"):
            self.twa_thr = np.array([r.twa_threshold() if r.exposure else math.nan for r in rules],
                                    float).reshape(n)
            self.stel_thr = np.array([r.stel_threshold() if r.exposure == "concentration" else math.nan
                                      for r in rules], float).reshape(n)
        # MAC ceiling (NaN: none): any valid reading above it (checked with the exposure)
        self.mac = np.array([r.mac if r.exposure == "concentration" else math.nan for r in rules],
                            float).reshape(n)
        self.cfg_maint = np.array([r.maintenance for r in rules], bool).reshape(n)
        en = np.zeros((NR, n), bool)
        en[R_STALE] = self.stale_ns != NEVER
        en[R_BAD] = self.bad_ns != NEVER
        en[R_RANGE] = True
        en[R_FROZEN] = self.frozen_ns != NEVER
        en[R_LIMIT] = ~(np.isnan(self.hh) & np.isnan(self.h) & np.isnan(self.l) & np.isnan(self.ll))
        en[R_ROC] = ~np.isnan(roc)
        en[R_TREND] = (self.tb_bw > 0) & ~np.isnan(tr_slope)
        en[R_PREDICT] = (self.tb_bw > 0) & (pred_ns > 0) & ~np.isnan(pred_lim)
        en[R_TWA] = (self.ex_mode > 0) & ~np.isnan(self.twa_thr)
        en[R_STEL] = (self.ex_mode == 1) & ~np.isnan(self.stel_thr)
        en[R_MAC] = (self.ex_mode == 1) & ~np.isnan(self.mac)
        pk = np.array([r.peak_levels() for r in rules], float).reshape(n, 2)
        self.pk3, self.pk5 = pk[:, 0].copy(), pk[:, 1].copy()
        en[R_PEAK] = ~np.isnan(self.pk3)
        self.im_th = f("impulse_db")
        en[R_IMPULSE] = ~np.isnan(self.im_th)
        # the quiet band also stays below the MAC and the peak-exposure level: a quiet reading
        # exceeds neither, so those rules look only at the loud few (and open excursions)
        self.q_hi = np.fmin(np.fmin(self.q_hi, self.mac), self.pk3)
        self.enabled = en
        # trend settings and state in phase order: channels whose buckets end together
        # sit side by side (``rpos``: channel -> position)
        order = np.lexsort((np.arange(n), self.tb_bw, self.tb_ph))
        self.rpos = np.empty(n, np.intp)
        self.rpos[order] = np.arange(n)
        self.p_bw = np.where(self.tb_bw > 0, self.tb_bw, 1)[order]
        self.p_ph = self.tb_ph[order]
        self.p_slope = tr_slope[order]
        self.p_pns = pred_ns[order]
        self.p_plim = pred_lim[order]
        self.p_et = en[R_TREND][order]
        self.p_ep = en[R_PREDICT][order]
        self.p_sgn = np.where(self.p_slope > 0, 1.0, -1.0)
        self.p_alim = self.p_slope * self.p_sgn
        self.all_up = bool((self.p_sgn[self.p_et] > 0).all())  # no falling-slope limit
        self.all_et = bool(self.p_et.all())
        self.all_ep = bool(self.p_ep.all())
        self.p_k = np.full(n, NONE, I64)  # the open bucket's number
        self.p_bws = self.p_bw / NS  # bucket width in seconds
        self.p_part = np.zeros(n, bool)  # the open bucket is the channel's first (partial) one
        # on/off delays by rule, then channel: the delayed rules share one row of the
        # channels' delays, the others one row of zeros (not 13 rows: 10 MB at 50,000
        # channels). Read-only: nothing changes a delay after start.
        zero = np.zeros(n, I64)
        on, off = np.array([c.on_ns for c in rules], I64), np.array([c.off_ns for c in rules], I64)
        for a in (zero, on, off):
            a.setflags(write=False)
        delayed = (R_LIMIT, R_ROC, R_TREND, R_PREDICT)
        self.on_ns: list[IntArr] = [on if r in delayed else zero for r in range(NR)]
        self.off_ns: list[IntArr] = [off if r in delayed else zero for r in range(NR)]
        self.fz0 = np.flatnonzero(self.frozen_ns <= 0)  # frozen at once (a zero duration)
        self.stale_lbns = np.where(self.stale_ns == NEVER, 1 << 62, self.stale_ns)  # no overflow in slack


    def _positions(self, sel: slice) -> dict[str, Any]:
        """Per contiguous run: which positions have each optional rule (cached)."""
        key = (sel.start, sel.stop)
        p = self._pos_cache.get(key)
        if p is None:
            p = {
                "noise": np.flatnonzero(self.ex_mode[sel] == 2),
                "noise_c": self.noise_c[sel][self.ex_mode[sel] == 2],
                "noise_r": slice(int(np.count_nonzero(self.ex_mode[:sel.start] == 2)),
                                 int(np.count_nonzero(self.ex_mode[:sel.stop] == 2))),
                "any_roc": bool(self.enabled[R_ROC][sel].any()),
                "roc_min": float(np.nanmin(self.roc_ns[sel])) if self.enabled[R_ROC][sel].any() else math.inf,
                "any_trend": bool((self.tb_bw[sel] > 0).any()),
                "any_ex": bool((self.ex_mode[sel] > 0).any()),
                "any_limit": bool(self.enabled[R_LIMIT][sel].any()),
                "any_noise": bool((self.ex_mode[sel] == 2).any()),
                "any_mac": bool(self.enabled[R_MAC][sel].any()),
                "any_peak": bool(self.enabled[R_PEAK][sel].any()),
                "impulse": np.flatnonzero(self.enabled[R_IMPULSE][sel]),
                "hold_min": int(self.hold_ns[sel].min()),
                "q_lo_max": float(self.q_lo[sel].max()),
                "q_hi_min": float(self.q_hi[sel].min()),
                "band_same": bool((self.q_lo[sel] == self.q_lo[sel.start]).all()
                                  and (self.q_hi[sel] == self.q_hi[sel.start]).all()),
                "band_skip": 0,  # rounds before the one-number band screen is tried again
            }
            if len(self._pos_cache) > 4096:
                self._pos_cache.clear()
            self._pos_cache[key] = p
        return p


    def _forget(self, cs: Idx) -> None:
        """Channels ``cs`` start their evaluation afresh (entering maintenance, or a
        calibration reading in a replay): no previous value, noise energy or bad time."""
        self.pv[cs] = np.nan
        r = self.noise_rank[cs]
        self.ex_e[r[r >= 0]] = 0.0
        self.bad_since[cs] = NONE
