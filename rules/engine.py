"""The vectorized rules core and the alarm lifecycle (ISA-18.2 states).

Contract used by the gateway: ``RulesEngine(table)``; ``process(batch)`` for each
ingested Batch and ``tick(now_ns)`` once a second (timers: stale, bad-for, delays,
shelving expiry) both return alarm transition events (JSON-able dicts). Operator
actions return events too: ``ack``, ``shelve``, ``unshelve``, ``set_maintenance``;
the caller journals them (``gw.emit_events``). ``active()`` and ``history()`` serve the
admin API and the MQTT ``alarms/active`` document; ``restore(events)`` rebuilds the
alarm states from the journal at start, so a restart does not re-raise what holds, and
``warm(batches, now_ns)`` then replays the journaled samples into the trend, exposure
and previous-value state without events.

Pure: no I/O, no clock. Every channel's state lives in arrays of length N (rules ×
channels for the alarm machine); a Batch is applied with O(batch) numpy operations.
Most channels are quiet most of the time, so each rule first screens the batch with
one or two array comparisons and does its real work on the few channels that moved;
the delay machine looks only at channels with a nonzero condition or with a candidate
or level set (an index per rule, kept up to date), and tick() skips the stale check
until the earliest possible deadline. A batch of channels in one contiguous run (what
a driver hands on) is handled through array views, without gathering. Trend settings
and buckets are stored in phase order, so the channels refitted together are read as
contiguous runs (docs/rules.md, Performance).

The semantics are those of rules/reference.py (a per-channel implementation kept
alongside as the executable specification); the tests drive both with random data
and require identical transitions.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.core.batch import Batch
from gateway.core.channels import ChannelTable
from rules.events import (
    ACTIVE_UNACKED,
    CLEARED_UNACKED,
    alarm_event,
    escalates,
    level_name,
    maintenance_event,
    state_name,
    suppress_event,
)
from rules.settings import (
    LEVEL_CODES,
    MIN_TREND_BUCKETS,
    NS,
    Q_BAD,
    Q_CALIBRATING,
    Q_MAINTENANCE,
    Q_OUT_OF_RANGE,
    Q_SENSOR_FAULT,
    R_BAD,
    R_FROZEN,
    R_LIMIT,
    R_PREDICT,
    R_RANGE,
    R_ROC,
    R_STALE,
    R_STEL,
    R_TREND,
    R_TWA,
    RULES,
    STEL_BUCKET_NS,
    STEL_BUCKETS,
    STEL_WINDOW_NS,
    TREND_BUCKETS,
    TREND_MID,
    TREND_SXX,
    TWA_BUCKETS,
    TWA_PER_STEL,
    TWA_WINDOW_NS,
    ChannelRules,
    phase_ns,
    resolve_table,
)
from rules.summary import ChannelSummary, channel_summary

Event = dict[str, Any]
I64 = np.int64
NONE = np.iinfo(np.int64).min  # "no time yet"
UNSET = -(1 << 62)  # a channel's last time before its first sample: t - UNSET does not overflow
NEVER = np.iinfo(np.int64).max  # a disabled timer
NR = len(RULES)
_RULE_INDEX = {n: i for i, n in enumerate(RULES)}
SB1 = STEL_BUCKETS + 1
assert TREND_BUCKETS & (TREND_BUCKETS - 1) == 0, "the trend ring is indexed with a bit mask"
TB1 = TWA_BUCKETS + 1

IntArr = npt.NDArray[np.int64]
FloatArr = npt.NDArray[np.float64]
Sel = slice | npt.NDArray[np.intp]


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


def _merge_times(c: npt.NDArray[np.intp], t: IntArr, add_c: npt.NDArray[np.intp],
                 add_t: IntArr) -> tuple[npt.NDArray[np.intp], IntArr]:
    """A sorted channel -> time list ``c, t`` with the entries ``add_c, add_t`` put in
    (replacing a channel's entry if it has one)."""
    keep = ~np.isin(c, add_c)
    mc = np.concatenate((c[keep], add_c)).astype(np.intp)
    mt = np.concatenate((t[keep], add_t)).astype(np.int64)
    order = np.argsort(mc, kind="stable")
    return mc[order], mt[order]


#: escalates(old, new) for the levels -2..2, looked up at (new + 2) * 5 + (old + 2)
_ESC = np.array([escalates(old, new) for new in range(-2, 3) for old in range(-2, 3)])


def _escalates(old: npt.NDArray[np.int8], new: npt.NDArray[np.int8]) -> npt.NDArray[np.bool_]:
    """Whether each old → new level change takes the on-delay (a raise or a worse level)."""
    return _ESC[new.astype(np.intp) * 5 + old + 12]


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


def _minus(a: npt.NDArray[np.intp], b: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
    """Sorted ``a`` without the elements of sorted ``b``."""
    if not len(a) or not len(b):
        return a
    j = np.searchsorted(b, a)
    j[j >= len(b)] = 0
    return a[b[j] != a]


def _union(a: npt.NDArray[np.intp], b: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
    """Sorted union of two sorted unique index arrays (np.union1d without its overhead)."""
    if not len(a):
        return b
    if not len(b):
        return a
    u = np.concatenate((a, b))
    u.sort()
    keep = np.empty(len(u), bool)
    keep[0] = True
    np.not_equal(u[1:], u[:-1], out=keep[1:])
    return u[keep]


class RulesEngine:
    """Alarm rules for every channel, evaluated on whole arrays."""

    #: how far back ``warm`` replays samples (the longest window a rule looks at)
    warm_window_ns = TWA_WINDOW_NS

    def __init__(self, table: ChannelTable | None, *, rules: list[ChannelRules] | None = None,
                 gateway_id: str = "safegw", poll_s: dict[str, float | None] | None = None,
                 device_maintenance: dict[str, bool] | None = None, history: int = 1000):
        if rules is None:
            if table is None:
                raise ValueError("give a channel table or resolved rules")
            rules = resolve_table(table, poll_s=poll_s, device_maintenance=device_maintenance)
        self.table = table
        self.rules = rules
        self.gateway_id = gateway_id
        self.names = [r.name for r in rules]
        self.by_name = {n: i for i, n in enumerate(self.names)}
        self.n = n = len(rules)
        self._next_id = 1
        self.recent: deque[Event] = deque(maxlen=history)
        self.shelved: dict[tuple[int, int], dict[str, Any]] = {}
        self.maint_by: dict[int, dict[str, Any]] = {}  # operator-set maintenance: who, reason
        self.stats = {"samples": 0, "ignored_old": 0, "events": 0}
        self._build_config(rules)
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

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_gateway(cls, cfg: Any, table: ChannelTable) -> RulesEngine:
        """The engine as the gateway builds it: poll periods and maintenance from the devices."""
        # no poll period, no staleness: subscriptions report on change, disabled devices not at all
        streaming = {d.name for d in cfg.devices if getattr(d, "mode", None) == "subscribe" or not d.enabled}
        poll: dict[str, float | None] = {
            d.name: (None if d.name in streaming else d.poll) for d in cfg.devices}
        maint = {d.name: bool(d.maintenance) for d in cfg.devices}
        return cls(table, gateway_id=cfg.gateway.id, poll_s=poll, device_maintenance=maint)

    def _build_config(self, rules: list[ChannelRules]) -> None:
        n = len(rules)

        def f(attr: str) -> FloatArr:
            return np.array([getattr(r, attr) for r in rules], float).reshape(n)

        def ns(vals: Iterable[int | None]) -> IntArr:
            return np.array([NEVER if v is None else v for v in vals], I64).reshape(n)

        self.hh, self.h, self.l, self.ll = f("hh"), f("h"), f("l"), f("ll")
        self.db = f("deadband")
        with np.errstate(invalid="ignore"):
            self.gate_hi = np.fmin(self.h, self.hh) - self.db
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
        self.on_ns = np.zeros((NR, n), I64)
        self.off_ns = np.zeros((NR, n), I64)
        for r in (R_LIMIT, R_ROC, R_TREND, R_PREDICT):
            self.on_ns[r] = [c.on_ns for c in rules]
            self.off_ns[r] = [c.off_ns for c in rules]
        self.fz0 = np.flatnonzero(self.frozen_ns <= 0)  # frozen at once (a zero duration)
        self.stale_lbns = np.where(self.stale_ns == NEVER, 1 << 62, self.stale_ns)  # no overflow in slack

    # ------------------------------------------------------------------ the machine
    def _nzidx(self, r: int) -> npt.NDArray[np.intp]:
        """Channels (sorted) whose rule ``r`` has a candidate or an active level (cached)."""
        nz = self._nz[r]
        if nz is None:
            nz = self._nz[r] = np.flatnonzero((self.cand[r] | self.act[r]) != 0)
        return nz

    def _machine(self, r: int, chs: Any, x: npt.NDArray[np.int8] | npt.NDArray[np.bool_] | None,
                 t: IntArr | int, metric: FloatArr | Callable[[npt.NDArray[np.intp]], FloatArr] | float,
                 rnd: int, *, hold: npt.NDArray[np.intp] | None = None,
                 px: npt.NDArray[np.intp] | None = None, pxv: npt.NDArray[Any] | None = None) -> None:
        """Feed conditions ``x`` of channels ``chs`` (a slice, or sorted unique indices) at
        times ``t`` into the delay machine. Sparse form: ``x`` None, the conditions are 0
        except at positions ``px`` (sorted) where they are ``pxv``. Positions in ``hold``
        are skipped (their sample does not count for this rule).

        Only positions where something can happen are looked at: a nonzero condition, or
        a channel with a candidate or an active level (kept in a cached index)."""
        if isinstance(chs, slice):
            base, npos = chs.start, chs.stop - chs.start
        else:
            base, npos = 0, len(chs)
        nz = self._nzidx(r)
        if not len(nz):
            inter = nz
        elif isinstance(chs, slice):
            lo, hi = np.searchsorted(nz, (chs.start, chs.stop))
            inter = nz[lo:hi] - base
        else:
            p = np.searchsorted(chs, nz)
            p[p >= npos] = 0
            inter = p[chs[p] == nz] if npos else p[:0]
        if px is not None:
            assert pxv is not None
            if len(px):
                xfull = pxv.astype(np.int8, copy=False)
                idx = px[xfull != 0]
            else:
                idx = px
            if len(inter):
                idx = _union(idx, inter)
        else:
            xb = None if x is None else x if x.dtype == np.bool_ else x != 0  # nonzero of bool is fast
            if xb is not None and xb.any():
                idx = np.flatnonzero(xb)
                if len(inter):
                    idx = _union(idx, inter)
            else:
                idx = inter
        if hold is not None:
            idx = _minus(idx, hold)  # held positions do not count
        if not len(idx):
            return
        ch = idx + base if isinstance(chs, slice) else chs[idx]
        if x is not None:
            xs = x[idx].astype(np.int8, copy=False)
        elif px is not None and len(px):
            xs = np.zeros(len(idx), np.int8)
            j = np.searchsorted(px, idx)
            j[j >= len(px)] = 0
            hit = px[j] == idx
            xs[hit] = xfull[j[hit]]
        else:
            xs = np.zeros(len(idx), np.int8)
        c = self.cand[r][ch]
        a = self.act[r][ch]
        m = (xs != c) | (c != a)
        if not m.all():
            idx, ch, xs, c, a = idx[m], ch[m], xs[m], c[m], a[m]
            if not len(idx):
                return
        self._machine_at(r, ch, idx, xs, c, a, t, metric, rnd)

    def _nz_sync(self, r: int, ch: npt.NDArray[np.intp], before: npt.NDArray[np.bool_],
                 after: npt.NDArray[np.bool_]) -> None:
        """Keep rule ``r``'s index of channels with a candidate or level up to date after a
        machine step on channels ``ch`` (sorted) that were / are now members."""
        nz = self._nz[r]
        if nz is None:
            return
        chg = before != after
        if not chg.any():
            return
        leave = ch[chg & before]
        if len(leave):
            j = np.searchsorted(nz, leave)
            if not (j < len(nz)).all() or not (nz[j] == leave).all():
                self._nz[r] = None  # not where expected: rebuilt on next use
                return
            keep = np.ones(len(nz), bool)
            keep[j] = False
            nz = nz[keep]
        enter = ch[chg & after]
        if len(enter):
            nz = _union(nz, enter)
        self._nz[r] = nz

    def _machine_at(self, r: int, ch: npt.NDArray[np.intp], idx: npt.NDArray[np.intp],
                    xs: npt.NDArray[np.int8], cs: npt.NDArray[np.int8], as_: npt.NDArray[np.int8],
                    t: IntArr | int, metric: FloatArr | Callable[[npt.NDArray[np.intp]], FloatArr] | float,
                    rnd: int) -> None:
        """The machine step on channels ``ch`` (positions ``idx`` into t / metric) where the
        condition changed or a candidate is pending."""
        ts = t[idx] if isinstance(t, np.ndarray) else np.full(len(idx), t, I64)
        ss = self.since[r][ch]
        chg = xs != cs
        before = (cs != 0) | (as_ != 0)
        cs = np.where(chg, xs, cs)
        ss = np.where(chg, ts, ss)
        self.cand[r][ch] = cs
        self.since[r][ch] = ss
        if callable(metric):
            mv = metric(idx)
        elif isinstance(metric, np.ndarray):
            mv = metric[idx]
        else:
            mv = np.full(len(idx), metric)
        self.metric[r][ch] = mv
        pend = cs != as_
        if self._warming or not pend.any():
            # (a replay rebuilds conditions and their timers; the alarm states stay as restored,
            # and a delay that runs out is acted on by the next tick)
            self._nz_sync(r, ch, before, (cs != 0) | (as_ != 0))
            return
        esc = _escalates(as_, cs)
        delay = np.where(esc, self.on_ns[r][ch], self.off_ns[r][ch])
        fire = pend & (ts - ss >= delay)
        if not fire.any():
            self._nz_sync(r, ch, before, (cs != 0) | (as_ != 0))
            return
        fch, fts, fold, fnew, fesc = ch[fire], ts[fire], as_[fire], cs[fire], esc[fire]
        self.act[r][fch] = fnew
        self._nz_sync(r, ch, before, (cs != 0) | (np.where(fire, cs, as_) != 0))
        self.unacked[r][fch[fesc]] = True
        nz = fnew != 0
        self.last_code[r][fch[nz]] = fnew[nz]
        fmv = mv[fire]
        fun = self.unacked[r][fch]
        for i in range(len(fch)):
            self._tr.append((rnd, int(fch[i]), r, int(fun[i]), int(fold[i]), int(fnew[i]), int(fts[i]),
                             float(fmv[i])))

    # ------------------------------------------------------------------ process
    def process(self, batch: Batch) -> list[Event]:
        n = len(batch)
        if not n:
            return []
        self.stats["samples"] += n
        ch, t, v, q = batch.channel, batch.ts, batch.value, batch.quality
        if n > 1 and not bool((ch[1:] > ch[:-1]).all()):
            order = np.argsort(ch, kind="stable")
            ch, t, v, q = ch[order], t[order], v[order], q[order]
            dup = np.flatnonzero(ch[1:] == ch[:-1]) + 1
            if len(dup):
                # several samples of one channel: apply them in rounds, in batch order
                starts = np.ones(n, bool)
                starts[dup] = False
                grp = np.cumsum(starts) - 1
                first = np.flatnonzero(starts)
                rank = np.arange(n) - first[grp]
                # rounds as slices of one stable sort by rank (channels stay increasing
                # within a round), not a mask per round over the whole batch
                by = np.argsort(rank, kind="stable")
                ch, t, v, q = ch[by], t[by], v[by], q[by]
                bounds = np.searchsorted(rank[by], np.arange(int(rank.max()) + 2))
                for k in range(len(bounds) - 1):
                    a, b = int(bounds[k]), int(bounds[k + 1])
                    self._round(ch[a:b], t[a:b], v[a:b], q[a:b], k)
                return self._emit()
        self._round(ch, t, v, q, 0)
        return self._emit()

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

    def _round(self, ch: npt.NDArray[np.int32], t: IntArr, v: FloatArr, q: npt.NDArray[np.uint8],
               rnd: int) -> None:
        """One sample per channel, channels strictly increasing."""
        contiguous = self._contiguous(ch)
        lt = self.last_ts[ch[0]:ch[-1] + 1] if contiguous else self.last_ts[ch]
        # time since the channel's last sample; not after it: ignored
        di = np.subtract(t, lt, out=self._s_i[:len(t)])
        if int(di.min()) <= 0:
            ok = di > 0
            self.stats["ignored_old"] += int((~ok).sum())
            ch, t, v, q, di = ch[ok], t[ok], v[ok], q[ok], di[ok]
            if not len(ch):
                return
            contiguous = self._contiguous(ch)
        sel: Sel = slice(int(ch[0]), int(ch[-1]) + 1) if contiguous else ch.astype(np.intp)
        self.last_ts[sel] = t
        # ---- maintenance (quality calibrating / maintenance, or the channel set so)
        qany = bool(q.any())
        qpos: npt.NDArray[np.intp] | None = None  # positions of samples with a quality other than good
        if self.nsupp:
            qm = (q == Q_CALIBRATING) | (q == Q_MAINTENANCE) if qany else np.zeros(len(ch), bool)
            want = qm | self.cfg_maint[sel] | self.rt_maint[sel]
            flip = np.flatnonzero(want != self.supp[sel])
        elif qany:
            qpos = np.flatnonzero(q != 0)  # few samples have a quality other than good
            qs = q[qpos]
            flip = qpos[(qs == Q_CALIBRATING) | (qs == Q_MAINTENANCE)]
        else:
            flip = np.zeros(0, np.intp)
        if self._warming:
            # replay: a calibration / maintenance reading resets the channel's evaluation
            # state as entering maintenance does, but alarm and suppression states stay
            if len(flip):
                fc = ch[flip].astype(np.intp)
                self.pv[fc] = np.nan
                self._noise_reset(fc)
                self.bad_since[fc] = NONE
                keep = np.ones(len(ch), bool)
                keep[flip] = False
                ch, t, v, q, di = ch[keep], t[keep], v[keep], q[keep], di[keep]
                if not len(ch):
                    return
                sel = ch.astype(np.intp)
                qpos = None
            flip = flip[:0]
        for i in flip.tolist():
            self._set_supp(int(ch[i]), not bool(self.supp[ch[i]]), int(t[i]), rnd)
        # suppressed channels (maintenance) stay in the round, so that a run stays a slice,
        # and are evaluated as samples that do not count
        skip = np.zeros(0, np.intp)
        if self.nsupp:
            supp = self.supp[sel]
            if supp.any():
                skip = np.flatnonzero(supp)
                if len(skip) == len(ch):
                    return
        chs: Any = sel if isinstance(sel, slice) else ch
        base = sel.start if isinstance(sel, slice) else 0
        # ---- the time since the previous valid sample (di since the last sample, so far)
        ovpos, ovk = self._members(self.ov_c, chs)
        if len(ovpos):
            di[ovpos] = t[ovpos] - self.ov_t[ovk]
        # ---- stale clears on any sample
        nzs = self._nzidx(R_STALE)
        if len(nzs) and len(self._positions_of(nzs, chs)):
            self._stale_lb = NONE  # a cleared channel's next deadline may come before the bound
            self._machine(R_STALE, chs, None, t, 0.0, rnd)
        # ---- bad quality (the few bad samples by position; channels seen bad in bad_idx)
        if qany:
            if qpos is None:
                qpos = np.flatnonzero(q != 0)
            badpos = _minus(qpos[q[qpos] >= Q_BAD], skip)
        else:
            badpos = np.zeros(0, np.intp)
        if len(self.bad_idx):
            # a good sample ends a channel's bad time
            bpos = self._positions_of(self.bad_idx, chs)
            bpos = _minus(bpos, badpos)
            if len(bpos):
                self.bad_since[bpos + base if isinstance(sel, slice) else ch[bpos]] = NONE
        if len(badpos):
            bc = badpos + base if isinstance(sel, slice) else ch[badpos].astype(np.intp)
            tb = t[badpos]
            bs = self.bad_since[bc]
            bs = np.where(bs == NONE, tb, bs)
            self.bad_since[bc] = bs
            self.bad_idx = _union(self.bad_idx, bc)
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
        rhold = _union(badpos, skip)
        if len(loud):
            lc = ch[loud].astype(np.intp)
            lv = v[loud]
            linr = np.isfinite(lv) & (lv >= self.lo[lc]) & (lv <= self.hi[lc])
            self._machine(R_RANGE, chs, None, t, v, rnd, hold=rhold, px=loud, pxv=~linr)
            if not linr.all():
                out = loud[~linr]
                hold = out if hold is None else _union(hold, out)
        else:
            self._machine(R_RANGE, chs, None, t, v, rnd, hold=rhold)
        if len(skip):
            hold = skip if hold is None else _union(hold, skip)
        if hold is None or len(hold) < len(ch):
            self._valid(ch, t, v, di, sel, chs, pos, rnd, loud, hold)
        # channels whose sample did not count keep their previous valid time; the others
        # (valid now) leave the list
        if len(ovpos) or (hold is not None and len(hold)):
            keep = np.ones(len(self.ov_c), bool)
            keep[ovk] = False
            oc, ot = self.ov_c[keep], self.ov_t[keep]
            if hold is not None and len(hold):
                oc = np.concatenate((oc, ch[hold].astype(np.intp)))
                ot = np.concatenate((ot, t[hold] - di[hold]))
                order = np.argsort(oc, kind="stable")
                oc, ot = oc[order], ot[order]
            self.ov_c, self.ov_t = oc, ot

    @staticmethod
    def _members(cidx: npt.NDArray[np.intp], chs: Any) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """Channels ``cidx`` (sorted) present in a round: their positions there, and their
        indices in ``cidx``."""
        if not len(cidx):
            return cidx, cidx
        if isinstance(chs, slice):
            lo, hi = np.searchsorted(cidx, (chs.start, chs.stop))
            return cidx[lo:hi] - chs.start, np.arange(lo, hi)
        if not len(chs):
            return cidx[:0], cidx[:0]
        p = np.searchsorted(chs, cidx)
        p[p >= len(chs)] = 0
        hit = np.flatnonzero(chs[p] == cidx)
        return p[hit], hit

    @staticmethod
    def _positions_of(cidx: npt.NDArray[np.intp], chs: Any) -> npt.NDArray[np.intp]:
        """Positions in a round (a slice of channels, or sorted channels) of channels ``cidx`` (sorted)."""
        if isinstance(chs, slice):
            lo, hi = np.searchsorted(cidx, (chs.start, chs.stop))
            return cidx[lo:hi] - chs.start
        if not len(chs):
            return np.zeros(0, np.intp)
        p = np.searchsorted(chs, cidx)
        p[p >= len(chs)] = 0
        return p[chs[p] == cidx]

    def _valid(self, ch: Any, t: IntArr, v: FloatArr, di: IntArr, sel: Sel, chs: Any,
               pos: dict[str, Any] | None, rnd: int, loud: npt.NDArray[np.intp],
               hold: npt.NDArray[np.intp] | None = None) -> None:
        """Frozen, limits, rate of change, trend, exposure, for the valid in-range samples.

        ``hold`` lists positions of samples that are not (bad, out of range): the
        arithmetic runs over the whole round (array views stay views), the machines skip
        those positions, and their channels' accumulators are put back afterwards."""
        sliced = isinstance(sel, slice)
        saved: list[tuple[npt.NDArray[Any], npt.NDArray[np.intp], npt.NDArray[Any]]] = []
        if hold is not None and len(hold):
            hc = ch[hold].astype(np.intp)
            saved = [(a, hc, a[hc]) for a in (self.tb_n, self.tb_sv, self.I, self.pv)]
            hr = self.noise_rank[hc]
            hr = hr[hr >= 0]
            saved.append((self.ex_e, hr, self.ex_e[hr]))
        else:
            hold = None
        pv = self.pv[sel]
        m = len(t)
        with np.errstate(all="ignore"):
            # the time since the previous valid sample, in ns (as a float: exact below 104 days)
            dtn = self._s_dtn[:m]
            np.copyto(dtn, di)
            dv = np.subtract(v, pv, out=self._s_dv[:m])
            if pos is None or pos["any_ex"]:
                contrib = self._exposure_contrib(ch, v, pv, di, dtn, sel, pos)
            # ---- frozen: exactly the previous valid value
            eq = np.equal(dv, 0.0, out=self._s_b[:m])
            self._frozen(ch, t, v, di, chs, rnd, eq, hold)
            # ---- limits with deadband (only where the value is outside the quiet band)
            if pos is None or pos["any_limit"]:
                if len(loud):
                    lx = self._limit_levels(ch[loud].astype(np.intp), v[loud])
                    self._machine(R_LIMIT, chs, None, t, v, rnd, hold=hold, px=loud, pxv=lx)
                else:
                    self._machine(R_LIMIT, chs, None, t, v, rnd, hold=hold)
            # ---- rate of change
            if pos is None or pos["any_roc"]:
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
            # ---- bucket boundaries (trend, exposure), staggered so few channels cross per batch
            due = np.greater_equal(t, self.next_rot[sel], out=self._s_b[:m])
            if hold is not None:
                due[hold] = False
            rot = np.flatnonzero(due)
            if len(rot):
                self._rotate(ch[rot].astype(np.intp), t[rot], rnd)
            # ---- trend: running sums of the open bucket
            if pos is None or pos["any_trend"]:
                self.tb_n[sel] += 1
                self.tb_sv[sel] += v
            # ---- exposure: the previous reading held until now (at most hold_ns)
            if pos is None or pos["any_ex"]:
                if sliced:
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
        self.pv[sel] = v
        for a, idx, keep in saved:
            a[idx] = keep

    def _frozen(self, ch: Any, t: IntArr, v: FloatArr, di: IntArr, chs: Any, rnd: int,
                eq: npt.NDArray[np.bool_], hold: npt.NDArray[np.intp] | None) -> None:
        """Frozen: the value exactly the previous valid one for ``frozen_ns``. Only the
        channels in an unchanged run are kept (``fz_c``, from ``fz_t``): a sample equal to
        the previous one starts or continues a run, any other valid sample ends it."""
        mpos, mk = self._members(self.fz_c, chs)
        anyeq = bool(eq.any())
        zpos = self._positions_of(self.fz0, chs) if len(self.fz0) else self.fz0
        if not (anyeq or len(mpos) or len(zpos) or len(self._nzidx(R_FROZEN))):
            return
        eqpos = np.flatnonzero(eq) if anyeq else np.zeros(0, np.intp)
        if hold is not None:
            eqpos = _minus(eqpos, hold)  # held samples do not count
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
                zpos = _minus(zpos, hold)
            px = _union(eqpos, zpos)
            xz = np.ones(len(px), bool)
            xz[np.searchsorted(px, eqpos)] = x
            x = xz
        self._machine(R_FROZEN, chs, None, t, v, rnd, hold=hold, px=px, pxv=x)
        # the runs: members whose sample was held stay, the others are replaced by this round's
        keep = np.ones(len(self.fz_c), bool)
        if len(mpos):
            gone = np.ones(len(mpos), bool)
            if hold is not None:
                j = np.searchsorted(hold, mpos)
                j[j >= len(hold)] = 0
                gone = hold[j] != mpos
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

    def _noise_reset(self, cs: npt.NDArray[np.intp]) -> None:
        r = self.noise_rank[cs]
        self.ex_e[r[r >= 0]] = 0.0

    def _limit_levels(self, c: npt.NDArray[np.intp], vv: FloatArr) -> npt.NDArray[np.int8]:
        prev = self.cand[R_LIMIT, c]
        hh, h, lo, ll, db = self.hh[c], self.h[c], self.l[c], self.ll[c], self.db[c]
        lvl = np.zeros(len(c), np.int8)
        # precedence as in the reference: hh, h, ll, l (later assignments win)
        lvl[(vv <= lo) | ((prev <= -1) & (vv <= lo + db))] = -1
        lvl[(vv <= ll) | ((prev <= -2) & (vv <= ll + db))] = -2
        lvl[(vv >= h) | ((prev >= 1) & (vv >= h - db))] = 1
        lvl[(vv >= hh) | ((prev >= 2) & (vv >= hh - db))] = 2
        return lvl

    @staticmethod
    def _contiguous(ch: npt.NDArray[np.int32]) -> bool:
        return int(ch[-1]) - int(ch[0]) + 1 == len(ch)

    def _set_supp(self, c: int, on: bool, ts: int, rnd: int) -> None:
        """Enter / leave suppression; events are queued like transitions."""
        if bool(self.supp[c]) == on:
            return
        self.supp[c] = on
        self.nsupp += 1 if on else -1
        self._tr.append((rnd, c, -2, 0, int(on), 0, ts, math.nan))
        if on:
            for r in range(NR):
                if self.act[r, c] or self.unacked[r, c]:
                    self._tr.append((rnd, c, -1, r, int(self.act[r, c]), int(self.last_code[r, c]), ts,
                                     float(self.metric[r, c])))
        for r in range(NR):
            if self.act[r, c] or self.cand[r, c]:
                self._nz[r] = None
        self.act[:, c] = 0
        self.cand[:, c] = 0
        self.unacked[:, c] = False
        self.pv[c] = np.nan
        self._noise_reset(np.array([c]))
        self.bad_since[c] = NONE
        self._stale_lb = NONE
        self._maybe_unset = True

    # ------------------------------------------------------------------ buckets
    def _rotate(self, c: npt.NDArray[np.intp], t: IntArr, rnd: int) -> None:
        tr = np.flatnonzero(t >= self.tb_next[c])
        if len(tr):
            self._trend_rotate(c[tr], t[tr], rnd)
        ex = np.flatnonzero(t >= self.ex_next[c])
        if len(ex):
            self._exposure_rotate(c[ex], t[ex])
        self.next_rot[c] = np.minimum(self.tb_next[c], self.ex_next[c])

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
                tw = _union(tw, tc)
        if len(tw):
            self.lim_twa[tw] = self.old_twa[tw] + self.twa_thr[tw]
        lim_stel = self.old_stel[c] + self.stel_thr[c]
        self.lim_stel[c] = lim_stel
        self.lim_min[c] = np.fmin(self.lim_twa[c], lim_stel)
        self.ex_k[c] = k
        self.ex_next[c] = (k + 1) * STEL_BUCKET_NS - ph

    # ------------------------------------------------------------------ tick
    def tick(self, now_ns: int) -> list[Event]:
        now = int(now_ns)
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
            idx = _union(new, nz)
            if len(idx):
                last = self.last_ts[idx]
                xs = last + self.stale_lbns[idx] < now
                self._machine(R_STALE, idx, xs, now, lambda i: (now - last[i]) / NS, 0)
                if not xs.all():  # fresh again (the clock went back): their deadlines count
                    nxt = min(nxt, int((last + self.stale_lbns[idx])[~xs].min()))
            self._stale_lb = nxt
        # bad for longer than allowed
        if len(self.bad_idx):
            bidx = self.bad_idx[self.bad_since[self.bad_idx] != NONE]
            self.bad_idx = bidx
            if len(bidx):
                bs = self.bad_since[bidx]
                xb = (now - bs >= self.bad_ns[bidx])
                self._machine(R_BAD, bidx, xb, now, lambda i: (now - bs[i]) / NS, 0)
        # delays that ran out without a new sample
        for r in range(NR):
            if r in (R_STALE, R_BAD):
                continue
            nz = self._nzidx(r)
            if not len(nz):
                continue
            c, a = self.cand[r][nz], self.act[r][nz]
            pend = c != a
            if not pend.any():
                continue
            pidx, c, a = nz[pend], c[pend], a[pend]
            # only those whose delay has run out (the machine step would do nothing else:
            # the condition is the candidate, the metric the last evaluated one)
            esc = _escalates(a, c)
            due = now - self.since[r][pidx] >= np.where(esc, self.on_ns[r][pidx], self.off_ns[r][pidx])
            if due.any():
                pidx, c, a = pidx[due], c[due], a[due]
                self._machine_at(r, pidx, np.arange(len(pidx)), c, c, a, now, self.metric[r][pidx], 0)
        out = self._emit()
        # shelving that ran out
        for key, sh in list(self.shelved.items()):
            if sh["until"] is not None and sh["until"] <= now:
                out.append(self._unshelve_one(key, now, "system"))
        return out

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
        self._stale_lb = NONE

    # ------------------------------------------------------------------ events
    def _new_id(self) -> str:
        i = self._next_id
        self._next_id += 1
        return f"{self.gateway_id}-{i}"

    def _finish(self, ev: Event) -> Event:
        ev["id"] = self._new_id()
        self.recent.append(ev)
        self.stats["events"] += 1
        return ev

    def _emit(self) -> list[Event]:
        if not self._tr:
            return []
        tr = sorted(self._tr, key=lambda x: (x[0], x[1], x[2], x[3] if x[2] == -1 else 0))
        self._tr = []
        out = []
        for _rnd, c, r, sub, old, new, ts, mv in tr:
            cr = self.rules[c]
            if r == -2:
                ev = maintenance_event(cr, c, bool(old), ts, **self._supp_who(c))
            elif r == -1:
                ev = suppress_event(cr, c, sub, old, new, ts, mv)
            else:
                ev = alarm_event(cr, c, r, old, new, bool(sub), ts, mv,
                                 shelved=(c, r) in self.shelved)
            out.append(self._finish(ev))
        return out

    def _supp_who(self, c: int) -> dict[str, Any]:
        info = self.maint_by.get(c)
        return {"who": info.get("who"), "reason": info.get("reason")} if info else {}

    # ------------------------------------------------------------------ operator actions
    def _targets(self, channel: str | int | None, rule: str | None) -> list[tuple[int, int]]:
        if channel is None:
            cs = list(range(self.n))
        else:
            c = channel if isinstance(channel, int) else self.by_name.get(channel)
            if c is None or not 0 <= c < self.n:
                raise KeyError(f"unknown channel {channel!r}")
            cs = [c]
        if rule is None:
            rs = list(range(NR))
        else:
            if rule not in _RULE_INDEX:
                raise KeyError(f"unknown rule {rule!r}; rules: {', '.join(RULES)}")
            rs = [_RULE_INDEX[rule]]
        return [(c, r) for c in cs for r in rs]

    def ack(self, channel: str | int | None, *, who: str, now_ns: int, rule: str | None = None,
            comment: str | None = None) -> list[Event]:
        """Acknowledge unacknowledged alarms of a channel (or all with channel=None)."""
        if channel is None:
            rs, cs = np.nonzero(self.unacked)
            pairs = sorted(zip(cs.tolist(), rs.tolist(), strict=True))
            if rule is not None:
                pairs = [(c, r) for c, r in pairs if RULES[r] == rule]
        else:
            pairs = [(c, r) for c, r in self._targets(channel, rule) if self.unacked[r, c]]
        out = []
        for c, r in pairs:
            self.unacked[r, c] = False
            a = int(self.act[r, c])
            ev = alarm_event(self.rules[c], c, r, int(self.last_code[r, c]), a, False, now_ns,
                             float(self.metric[r, c]), transition="ack", who=who,
                             shelved=(c, r) in self.shelved)
            ev["code"] = a
            if comment:
                ev["comment"] = comment
            out.append(self._finish(ev))
        return out

    def shelve(self, channel: str | int, *, who: str, reason: str, now_ns: int, duration_s: float | None,
               rule: str | None = None) -> list[Event]:
        """Shelve a channel's alarms (one rule, or all) for a duration, by a named person."""
        if not who or not reason:
            raise ValueError("shelving needs who and a reason")
        out = []
        until = None if duration_s is None else int(now_ns) + round(duration_s * NS)
        for c, r in self._targets(channel, rule):
            if rule is None and not (self.enabled[r, c] or self.act[r, c]):
                continue
            self.shelved[(c, r)] = {"until": until, "who": who, "reason": reason, "since": int(now_ns)}
            ev = self._state_event(c, r, now_ns, "shelve", who)
            ev["shelved"] = True
            ev["until"] = until
            ev["reason"] = reason
            out.append(self._finish(ev))
        return out

    def unshelve(self, channel: str | int, *, who: str, now_ns: int, rule: str | None = None) -> list[Event]:
        return [self._unshelve_one(key, now_ns, who) for key in self._targets(channel, rule)
                if key in self.shelved]

    def _unshelve_one(self, key: tuple[int, int], now_ns: int, who: str) -> Event:
        del self.shelved[key]
        c, r = key
        ev = self._state_event(c, r, now_ns, "unshelve", who)
        if self.act[r, c]:
            # an alarm still active when its shelving ends is annunciated again
            self.unacked[r, c] = True
            ev["state"] = ACTIVE_UNACKED
        return self._finish(ev)

    def _state_event(self, c: int, r: int, now_ns: int, transition: str, who: str | None) -> Event:
        a = int(self.act[r, c])
        ev = alarm_event(self.rules[c], c, r, int(self.last_code[r, c]), a, bool(self.unacked[r, c]), now_ns,
                         float(self.metric[r, c]), transition=transition, who=who)
        ev["code"] = a
        return ev

    def set_maintenance(self, *, channel: str | None = None, device: str | None = None, on: bool, who: str,
                        now_ns: int, reason: str | None = None) -> list[Event]:
        """Put a channel or a whole device in maintenance (alarms suppressed) or take it out."""
        if (channel is None) == (device is None):
            raise ValueError("give exactly one of channel or device")
        if channel is not None:
            if channel not in self.by_name:
                raise KeyError(f"unknown channel {channel!r}")
            cs = [self.by_name[channel]]
        else:
            if self.table is None or device not in self.table.by_device:
                raise KeyError(f"unknown device {device!r}")
            cs = [ci.index for ci in self.table.by_device[device]]
        for c in cs:
            self.rt_maint[c] = on
            self.maint_by[c] = {"who": who, "reason": reason, "since": int(now_ns)}
            want = bool(self.rt_maint[c] or self.cfg_maint[c])
            if want != bool(self.supp[c]):
                self._set_supp(c, want, now_ns, 0)
        out = self._emit()
        if not on:
            for c in cs:
                self.maint_by.pop(c, None)
        return out

    # ------------------------------------------------------------------ views
    @property
    def version(self) -> int:
        """Changes with every event the engine makes (raise, clear, ack, shelve, level change):
        a view built from ``active()`` is current while this is unchanged."""
        return self._next_id

    def channel_summary(self) -> ChannelSummary:
        """Per channel: process alarm (red), health alarm or maintenance (yellow), and the
        most urgent visible alarm (rules/summary.py)."""
        return channel_summary(self.act, self.unacked, self.last_code, self.shelved, self.supp)

    def active(self) -> list[dict[str, Any]]:
        """Alarms an operator must see: active, cleared-unacknowledged, shelved; and suppressed channels."""
        rs, cs = np.nonzero((self.act != 0) | self.unacked)
        keys = set(zip(cs.tolist(), rs.tolist(), strict=True)) | set(self.shelved)
        out: list[dict[str, Any]] = []
        for c, r in sorted(keys):
            a = int(self.act[r, c])
            cr = self.rules[c]
            code = a or int(self.last_code[r, c])
            item: dict[str, Any] = {
                "channel": cr.name, "index": c, "kind": cr.kind, "unit": cr.unit, "rule": RULES[r],
                "level": level_name(r, code), "state": state_name(a, bool(self.unacked[r, c])),
                "since": int(self.since[r, c]), "value": None, "limit": None,
            }
            if code:
                ev = alarm_event(cr, c, r, code, a, False, 0, float(self.metric[r, c]))
                item["value"], item["limit"], item["priority"] = ev["value"], ev["limit"], ev["priority"]
            sh = self.shelved.get((c, r))
            if sh:
                item["shelved"] = dict(sh)
            out.append(item)
        for c in np.flatnonzero(self.supp).tolist():
            cr = self.rules[c]
            item = {"channel": cr.name, "index": c, "kind": cr.kind, "unit": cr.unit, "rule": "maintenance",
                    "level": "maintenance", "state": "suppressed", "since": None}
            if c in self.maint_by:
                item["by"] = dict(self.maint_by[c])
            out.append(item)
        return out

    def history(self, limit: int = 100, channel: str | None = None) -> list[Event]:
        """The most recent alarm events held in memory, newest first (the journal has them all)."""
        out = []
        for ev in reversed(self.recent):
            if channel is None or ev.get("channel") == channel:
                out.append(ev)
                if len(out) >= limit:
                    break
        return out

    def counts(self) -> dict[str, int]:
        a = self.act != 0
        return {
            ACTIVE_UNACKED: int((a & self.unacked).sum()),
            "active_acked": int((a & ~self.unacked).sum()),
            CLEARED_UNACKED: int((~a & self.unacked).sum()),
            "shelved": len(self.shelved),
            "suppressed": int(self.supp.sum()),
        }

    # ------------------------------------------------------------------ restart
    def restore(self, events: Iterable[Event]) -> int:
        """Rebuild alarm states from journaled events (oldest first); returns how many applied.

        The last event of each alarm fixes its level and acknowledgement; shelving and
        operator maintenance are restored too. The rule's timers are set so that a
        condition still holding after the restart keeps the alarm without a new raise:
        a stale or bad alarm stays until data (good data) comes back, a frozen alarm
        stays while the value is the one it froze at, and an exposure alarm assumes the
        average that raised it held over its window before the restart (conservative).
        """
        applied = 0
        last: dict[tuple[int, int], Event] = {}
        frozen: dict[int, int] = {}
        prefix = f"{self.gateway_id}-"
        for ev in events:
            if ev.get("type") != "alarm":
                continue
            eid = ev.get("id")
            if isinstance(eid, str) and eid.startswith(prefix):
                tail = eid[len(prefix):]
                if tail.isdigit():
                    self._next_id = max(self._next_id, int(tail) + 1)
            c = self.by_name.get(ev.get("channel", ""))
            if c is None:
                continue
            applied += 1
            self.recent.append(ev)
            rname = ev.get("rule")
            ts = int(ev.get("ts", 0))
            if rname == "maintenance":
                on = ev.get("transition") == "suppress"
                if ev.get("who") is not None:
                    # operator maintenance survives a restart; quality-driven does not
                    self.rt_maint[c] = on
                    if on:
                        self.maint_by[c] = {"who": ev.get("who"), "reason": ev.get("reason"), "since": ts}
                    else:
                        self.maint_by.pop(c, None)
                continue
            r = _RULE_INDEX.get(str(rname))
            if r is None:
                continue
            tr = ev.get("transition")
            if tr == "shelve":
                self.shelved[(c, r)] = {"until": ev.get("until"), "who": ev.get("who"),
                                        "reason": ev.get("reason"), "since": ts}
            elif tr == "unshelve":
                self.shelved.pop((c, r), None)
            last[(c, r)] = ev
        for (c, r), ev in last.items():
            state = ev.get("state")
            code = int(ev.get("code", 0)) if state in (ACTIVE_UNACKED, "active_acked") else 0
            lvl = ev.get("level")
            if r == R_LIMIT and lvl in LEVEL_CODES:
                self.last_code[r, c] = LEVEL_CODES[str(lvl)]
            elif lvl not in (None, "normal"):
                self.last_code[r, c] = 1
            if code and r == R_LIMIT and lvl in LEVEL_CODES:
                code = LEVEL_CODES[str(lvl)]
            self.act[r, c] = self.cand[r, c] = code
            self.since[r, c] = int(ev.get("ts", 0))
            self.unacked[r, c] = state in (ACTIVE_UNACKED, CLEARED_UNACKED)
            value = ev.get("value")
            self.metric[r, c] = np.nan if value is None else float(value)
            if not code:
                continue
            ts = int(ev.get("ts", 0))
            cr = self.rules[c]
            if r == R_STALE and cr.stale_ns is not None:
                self.last_ts[c] = ts - cr.stale_ns - 1
            elif r == R_BAD and cr.bad_ns is not None:
                self.bad_since[c] = ts - cr.bad_ns
                self.bad_idx = np.union1d(self.bad_idx, [c])
            elif r == R_FROZEN and cr.frozen_ns is not None and value is not None:
                self.pv[c] = float(value)
                frozen[c] = ts - cr.frozen_ns  # unchanged since then
            elif r == R_TWA and value is not None:
                avg = float(value)
                if cr.exposure == "noise":
                    avg = cr.noise_energy(avg)
                self.seed_twa[c] = avg * TWA_WINDOW_NS
                self.metric[r, c] = self.seed_twa[c]
            elif r == R_STEL and value is not None:
                self.seed_stel[c] = float(value) * STEL_WINDOW_NS
                self.metric[r, c] = self.seed_stel[c]
        if frozen:
            self.fz_c, self.fz_t = _merge_times(self.fz_c, self.fz_t, np.array(list(frozen), np.intp),
                                                np.array(list(frozen.values()), I64))
        self._nz = [None] * NR
        self._stale_lb = NONE
        self._maybe_unset = True
        # operator maintenance restored: suppress without new events
        want = self.rt_maint | self.cfg_maint
        for c in np.flatnonzero(want != self.supp).tolist():
            self.supp[c] = bool(want[c])
            self.nsupp += 1 if want[c] else -1
        return applied

    def warm(self, batches: Iterable[Batch], now_ns: int, *, window_ns: int | None = None) -> int:
        """Rebuild the sample-driven state from journaled sample batches (oldest first).

        Call after ``restore(events)`` at start. The batches are replayed through the
        normal evaluation with the alarm machine's transitions switched off, so trend
        buckets, the exposure integral and its TWA (8 h) / STEL (15 min) snapshots, the
        previous value (rate of change, frozen timer), bad-quality timers and each rule's
        condition with the time it began (a delay running at the restart) come back as an
        unbroken run would have them, while alarm, acknowledgement, shelving and
        suppression states stay as ``restore`` left them and no event is produced; a
        delay that ran out is acted on by the next ``tick``.

        Only samples within ``window_ns`` before ``now_ns`` are used (default: the TWA
        window, the longest any rule looks back), and not after ``now_ns``. The conservative
        exposure seed ``restore`` gives an active TWA / STEL alarm is dropped for the
        channels the replay rebuilt. Returns the number of samples applied.

        Cost: the replay runs at the engine's batch speed (see docs/rules.md); the journal
        read and decode is the caller's and usually dominates.
        """
        now = int(now_ns)
        lo = now - (TWA_WINDOW_NS if window_ns is None else int(window_ns))
        restored_last = self.last_ts.copy()
        self.last_ts[:] = UNSET
        # restore() may have set the previous value and timers of frozen / bad alarms;
        # the replay starts from scratch and they are put back where it brought nothing
        restored = [(a, a.copy()) for a in (self.pv, self.bad_since)]
        restored_fz = (self.fz_c, self.fz_t)
        self.pv[:] = np.nan
        self.bad_since[:] = NONE
        self.fz_c, self.fz_t = self.fz_c[:0], self.fz_t[:0]
        self.ov_c, self.ov_t = self.ov_c[:0], self.ov_t[:0]
        seed_twa, seed_stel = self.seed_twa.copy(), self.seed_stel.copy()
        self.seed_twa[:] = 0.0
        self.seed_stel[:] = 0.0
        stats = dict(self.stats)
        applied = 0
        self._warming = True
        # Journal records are small (one device's poll): replayed one by one, the per-call
        # cost dominates (7 s for 8 h of the 25-channel demo plant). They are concatenated
        # in chunks; process() applies a chunk in rounds (the k-th sample of every channel
        # in round k), so a channel's samples keep their order, and channels do not interact.
        pending: list[Batch] = []
        held = 0

        def flush() -> int:
            if not pending:
                return 0
            bb = pending[0] if len(pending) == 1 else Batch.concat(pending)
            pending.clear()
            m = (bb.ts >= lo) & (bb.ts <= now) & (bb.channel >= 0) & (bb.channel < self.n)
            if not m.all():
                bb = Batch(bb.channel[m], bb.ts[m], bb.value[m], bb.quality[m])
            if len(bb):
                self.process(bb)
            return len(bb)

        try:
            for b in batches:
                pending.append(b)
                held += len(b)
                if held >= 65536:
                    applied += flush()
                    held = 0
            applied += flush()
        finally:
            self._warming = False
            self._tr = []
            self.stats = stats
            untouched = self.last_ts == UNSET
            for arr, old in restored:
                arr[untouched] = old[untouched]
            fz_back = untouched[restored_fz[0]]
            if fz_back.any():
                self.fz_c, self.fz_t = _merge_times(self.fz_c, self.fz_t, restored_fz[0][fz_back],
                                                    restored_fz[1][fz_back])
            # a restored last time after the replayed one: the previous valid sample stays the replayed one
            raised = np.flatnonzero((restored_last > self.last_ts) & ~untouched)
            if len(raised):
                self.ov_c, self.ov_t = _merge_times(self.ov_c, self.ov_t, raised, self.valid_ts()[raised])
            self.last_ts = np.maximum(self.last_ts, restored_last)
            self.bad_idx = np.flatnonzero(self.bad_since != NONE)
            # channels without replayed exposure keep restore's conservative seed
            none = self.ex_k == NONE
            self.seed_twa[none] = seed_twa[none]
            self.seed_stel[none] = seed_stel[none]
            self._stale_lb = NONE
            self._maybe_unset = True
        return applied
