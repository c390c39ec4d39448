"""A straightforward per-channel implementation of the rules (the reference).

One Python object per channel, one sample at a time, written to be read rather than to
be fast. The vectorized core (rules/engine.py) must produce the same alarm transitions
on the same inputs (tests/rules/test_rules_reference.py drives both with randomized data),
and bench/rules.py times both.

The semantics, sample by sample (a sample older than or as old as the channel's last
one is ignored; a tick earlier than the previous one, a clock step back, first brings the
channel's times later than it back to it):

1. maintenance: quality calibrating/maintenance, or the channel/device in maintenance,
   suppresses the channel: its active alarms are reported ``suppressed`` and reset,
   and nothing else is evaluated until it leaves maintenance.
2. stale clears on any sample; bad-quality starts (or continues) the bad timer.
3. bad samples (quality ≥ 0x80) stop here (process alarms hold their state); quality
   out-of-range / sensor-fault raises the range (sensor fault) alarm.
4. range: a value outside the instrument's range (or NaN/inf) is a sensor fault; frozen
   tracks how long the value has been exactly unchanged. Out-of-range values stop here.
5. process rules: limits with deadband, rate of change, trend and prediction (at trend
   bucket boundaries), exposure integrals (TWA / STEL / noise dose) and the MAC ceiling.

Every rule feeds its condition into the same delay machine: a new condition starts a
timer; it becomes the alarm's level when it has held for the on-delay (raise or worse
level) or the off-delay (clear or milder level).
"""

from __future__ import annotations

import math
from typing import Any

from rules.events import alarm_event, escalates, maintenance_event, suppress_event
from rules.settings import (
    HEALTH_RULES,
    IMPULSE_BUCKET_NS,
    IMPULSE_BUCKETS,
    MIN_TREND_BUCKETS,
    NS,
    PEAK_DAY_NS,
    PEAK_EXCURSION_NS,
    PEAK_GAP_NS,
    PEAK_PER_DAY,
    PROCESS_RULES,
    Q_BAD,
    Q_CALIBRATING,
    Q_MAINTENANCE,
    Q_OUT_OF_RANGE,
    Q_SENSOR_FAULT,
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
    RULES,
    STEL_BUCKET_NS,
    STEL_BUCKETS,
    TREND_BUCKETS,
    TREND_MID,
    TREND_SXX,
    TWA_BUCKETS,
    TWA_PER_STEL,
    UNDELAYED,
    ChannelRules,
    impulse_limit,
    phase_ns,
)

NR = len(RULES)


def trend_u(newest: int, slot: int) -> float:
    """Position of ring slot ``slot`` in the window whose newest bucket is in ``newest``."""
    return TREND_MID - ((newest - slot) % TREND_BUCKETS)


def tree8(a: list[float]) -> float:
    """Sum of 8 numbers in the order the vectorized core adds its columns."""
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))


class RefChannel:
    def __init__(self, index: int, cr: ChannelRules):
        self.i = index
        self.cr = cr
        self.act = [0] * NR
        self.cand = [0] * NR
        self.since = [0] * NR
        self.metric = [math.nan] * NR
        self.unacked = [False] * NR
        self.last_code = [0] * NR
        self.last_ts: int | None = None
        self.supp = cr.maintenance
        self.cfg_maint = cr.maintenance
        self.pv: float | None = None
        self.pt = 0
        self.fz_since = 0
        self.bad_since: int | None = None
        # trend buckets
        self.tb_bw = cr.trend_bucket_ns()
        self.tb_phase = phase_ns(index, self.tb_bw) if self.tb_bw else 0
        self.tb_k: int | None = None
        self.tb_n = 0
        self.tb_sv = 0.0
        self.tb_partial = False
        self.ring_y = [math.nan] * TREND_BUCKETS  # bucket means; NaN: empty
        # exposure
        self.I = 0.0
        self.ex_px = 0.0
        self.ex_phase = phase_ns(index, STEL_BUCKET_NS)
        self.ex_k: int | None = None
        self.snap_stel = [0.0] * (STEL_BUCKETS + 1)
        self.snap_twa = [0.0] * (TWA_BUCKETS + 1)
        self.old_stel = 0.0
        self.old_twa = 0.0
        # peak exposure: the open excursion's start (None: none), the last one's end, the
        # starts of the latest PEAK_PER_DAY excursions, whether the open one broke a rule
        self.pk3, self.pk5 = cr.peak_levels()
        self.pk_start: int | None = None
        self.pk_end: int | None = None
        self.pk_starts: list[int] = []
        self.pk_bad = False
        # impulse noise: impulses per 15-minute bucket (a ring of 32), the open bucket, and
        # whether the last valid reading was above the threshold
        self.im_k: int | None = None
        self.im_ring = [0] * IMPULSE_BUCKETS
        self.im_above = False
        self.enabled = [
            cr.stale_ns is not None, cr.bad_ns is not None, True, cr.frozen_ns is not None,
            any(not math.isnan(x) for x in (cr.hh, cr.h, cr.l, cr.ll)), not math.isnan(cr.roc),
            bool(cr.trend_ns) and not math.isnan(cr.trend_slope),
            bool(cr.trend_ns) and bool(cr.predict_ns) and not math.isnan(cr.predict_limit),
            cr.exposure is not None and not math.isnan(cr.twa),
            cr.exposure == "concentration" and not math.isnan(cr.stel),
            cr.exposure == "concentration" and not math.isnan(cr.mac),
            not math.isnan(self.pk3),
            not math.isnan(cr.impulse_db),
        ]

    # ------------------------------------------------------------------ machine
    def machine(self, r: int, x: int, t: int, out: list[dict[str, Any]]) -> None:
        if x != self.cand[r]:
            self.cand[r] = x
            self.since[r] = t
        c, a = self.cand[r], self.act[r]
        if c != a:
            if r in PROCESS_RULES and r not in UNDELAYED:
                delay = self.cr.on_ns if escalates(a, c) else self.cr.off_ns
            else:
                delay = 0
            if t - self.since[r] >= delay:
                if escalates(a, c):
                    self.unacked[r] = True
                self.act[r] = c
                if c:
                    self.last_code[r] = c
                out.append(alarm_event(self.cr, self.i, r, a, c, self.unacked[r], t, self.metric[r]))

    def _reset_rules(self) -> None:
        for r in range(NR):
            self.act[r] = self.cand[r] = 0
            self.unacked[r] = False
        self.pv = None
        self.ex_px = 0.0
        self.bad_since = None

    def _set_supp(self, supp: bool, t: int, out: list[dict[str, Any]]) -> None:
        if supp == self.supp:
            return
        self.supp = supp
        out.append(maintenance_event(self.cr, self.i, supp, t))
        if supp:
            for r in range(NR):
                if self.act[r] or self.unacked[r]:
                    out.append(suppress_event(self.cr, self.i, r, self.act[r], self.last_code[r], t,
                                              self.metric[r]))
        self._reset_rules()

    # ------------------------------------------------------------------ sample
    def sample(self, t: int, v: float, q: int, out: list[dict[str, Any]]) -> None:
        if self.last_ts is not None and t <= self.last_ts:
            return
        self.last_ts = t
        qm = q in (Q_CALIBRATING, Q_MAINTENANCE)
        self._set_supp(self.cfg_maint or qm, t, out)
        if self.supp:
            return
        en = self.enabled
        if en[R_STALE]:
            self.metric[R_STALE] = 0.0
            self.machine(R_STALE, 0, t, out)
        if q >= Q_BAD:
            if self.bad_since is None:
                self.bad_since = t
        else:
            self.bad_since = None
        if en[R_BAD]:
            assert self.cr.bad_ns is not None
            if self.bad_since is not None:
                self.metric[R_BAD] = (t - self.bad_since) / NS
                self.machine(R_BAD, int(t - self.bad_since >= self.cr.bad_ns), t, out)
            else:
                self.metric[R_BAD] = 0.0
                self.machine(R_BAD, 0, t, out)
        if q >= Q_BAD:
            if q in (Q_OUT_OF_RANGE, Q_SENSOR_FAULT):
                self.metric[R_RANGE] = v
                self.machine(R_RANGE, 1, t, out)
            return
        cr = self.cr
        inr = math.isfinite(v) and cr.range_lo <= v <= cr.range_hi
        self.metric[R_RANGE] = v
        self.machine(R_RANGE, int(not inr), t, out)
        if not inr:
            return
        # from here on the value is valid: pv/pt are the previous valid sample
        if en[R_FROZEN]:
            assert cr.frozen_ns is not None
            if self.pv is None or v != self.pv:
                self.fz_since = t
            self.metric[R_FROZEN] = v
            self.machine(R_FROZEN, int(t - self.fz_since >= cr.frozen_ns), t, out)
        if en[R_LIMIT]:
            self.metric[R_LIMIT] = v
            self.machine(R_LIMIT, self.limit_level(v), t, out)
        if en[R_ROC] and self.pv is not None:
            dv = abs(v - self.pv)
            self.metric[R_ROC] = dv / ((t - self.pt) / NS)
            self.machine(R_ROC, int(dv > cr.roc_per_ns() * (t - self.pt)), t, out)
        if self.tb_bw:
            self.trend(t, v, out)
        if cr.exposure is not None:
            self.exposure(t, v, out)
        if en[R_IMPULSE]:
            self.impulse(t, v, out)
        self.pv, self.pt = v, t

    def limit_level(self, v: float) -> int:
        cr, prev, db = self.cr, self.cand[R_LIMIT], self.cr.deadband
        if v >= cr.hh or (prev >= 2 and v >= cr.hh_keep()):
            return 2
        if v >= cr.h or (prev >= 1 and v >= cr.h - db):
            return 1
        if v <= cr.ll or (prev <= -2 and v <= cr.ll + db):
            return -2
        if v <= cr.l or (prev <= -1 and v <= cr.l + db):
            return -1
        return 0

    # ------------------------------------------------------------------ trend
    def trend(self, t: int, v: float, out: list[dict[str, Any]]) -> None:
        bw, ph = self.tb_bw, self.tb_phase
        k = (t + ph) // bw
        if self.tb_k is None:
            self.tb_k = k
            self.tb_partial = True  # the first bucket is partial: it is closed as empty
        elif k > self.tb_k:  # (a sample from before a clock step back stays in the open bucket)
            # close the bucket (its mean value); skipped buckets are empty
            k0 = self.tb_k
            self.ring_y[k0 % TREND_BUCKETS] = math.nan if self.tb_partial else self.tb_sv / self.tb_n
            self.tb_partial = False
            for j in range(k0 + 1, min(k, k0 + 1 + TREND_BUCKETS)):
                self.ring_y[j % TREND_BUCKETS] = math.nan
            self.tb_k, self.tb_n, self.tb_sv = k, 0, 0.0
            self.evaluate_trend(t, k, out)
        self.tb_n += 1
        self.tb_sv += v

    def evaluate_trend(self, t: int, k: int, out: list[dict[str, Any]]) -> None:
        """Least squares through the bucket means, at the bucket midpoints ``u`` (buckets
        from the window's centre: -3.5 oldest … 3.5 newest). ``k`` is the open bucket."""
        newest = (k - 1) % TREND_BUCKETS
        y = self.ring_y
        u = [trend_u(newest, j) for j in range(TREND_BUCKETS)]
        tot = tree8(y)
        if not math.isnan(tot):
            mu, my = 0.0, tot / TREND_BUCKETS
            slope = tree8([y[j] * u[j] for j in range(TREND_BUCKETS)]) / TREND_SXX
        else:
            w = [0.0 if math.isnan(x) else 1.0 for x in y]
            y0 = [0.0 if math.isnan(x) else x for x in y]
            cnt = sum(w)
            if cnt < MIN_TREND_BUCKETS:
                return
            mu = tree8([w[j] * u[j] for j in range(TREND_BUCKETS)]) / cnt
            my = tree8([w[j] * y0[j] for j in range(TREND_BUCKETS)]) / cnt
            du = [x - mu for x in u]
            sxx = tree8([w[j] * (du[j] * du[j]) for j in range(TREND_BUCKETS)])
            sxy = tree8([w[j] * (du[j] * (y0[j] - my)) for j in range(TREND_BUCKETS)])
            if not sxx > 0:
                return
            slope = sxy / sxx
        if math.isnan(slope):
            return
        cr = self.cr
        bw = self.tb_bw
        slope_s = slope / (bw / NS)
        if self.enabled[R_TREND]:
            per_min = slope_s * 60.0
            self.metric[R_TREND] = per_min
            x = per_min >= cr.trend_slope if cr.trend_slope > 0 else per_min <= cr.trend_slope
            self.machine(R_TREND, int(x), t, out)
        if self.enabled[R_PREDICT]:
            u_t = (TREND_MID + 0.5) + (t - (k * bw - self.tb_phase)) / bw
            y_end = my + slope * (u_t - mu)
            if slope > 0 and y_end < cr.predict_limit:
                ttl = (cr.predict_limit - y_end) / slope_s
            else:
                ttl = math.inf
            self.metric[R_PREDICT] = ttl
            self.machine(R_PREDICT, int(ttl * NS <= cr.predict_ns), t, out)

    # ------------------------------------------------------------------ exposure
    def exposure(self, t: int, v: float, out: list[dict[str, Any]]) -> None:
        cr = self.cr
        k = (t + self.ex_phase) // STEL_BUCKET_NS
        if self.ex_k is None:
            self.ex_k = k
            self.snap_stel = [self.I] * (STEL_BUCKETS + 1)
            self.snap_twa = [self.I] * (TWA_BUCKETS + 1)
            self.old_stel = self.old_twa = self.I
        elif k > self.ex_k:
            k0 = self.ex_k
            for j in range(max(k0 + 1, k - STEL_BUCKETS), k + 1):
                self.snap_stel[j % (STEL_BUCKETS + 1)] = self.I
            tk0, tk = k0 // TWA_PER_STEL, k // TWA_PER_STEL
            for j in range(max(tk0 + 1, tk - TWA_BUCKETS), tk + 1):
                self.snap_twa[j % (TWA_BUCKETS + 1)] = self.I
            self.old_stel = self.snap_stel[(k + 1) % (STEL_BUCKETS + 1)]
            self.old_twa = self.snap_twa[(tk + 1) % (TWA_BUCKETS + 1)]
            self.ex_k = k
        if self.pv is not None:
            # the previous reading held until now (at most hold_ns); a negative
            # concentration (zero drift) counts as none
            px = self.ex_px if cr.exposure == "noise" else max(self.pv, 0.0)
            self.I += px * min(t - self.pt, cr.hold_ns)  # value·ns
        if cr.exposure == "noise":
            self.ex_px = cr.noise_energy(v)
        if self.enabled[R_TWA]:
            self.metric[R_TWA] = self.I - self.old_twa
            self.machine(R_TWA, int(self.I > self.old_twa + cr.twa_threshold()), t, out)
        if self.enabled[R_STEL]:
            self.metric[R_STEL] = self.I - self.old_stel
            self.machine(R_STEL, int(self.I > self.old_stel + cr.stel_threshold()), t, out)
        if self.enabled[R_MAC]:
            # MAC is a ceiling (GBZ 2.1-2019): any valid reading above it, no averaging, no delay
            self.metric[R_MAC] = v
            self.machine(R_MAC, int(v > cr.mac), t, out)
        if self.enabled[R_PEAK]:
            self.peak(t, v, out)

    def peak(self, t: int, v: float, out: list[dict[str, Any]]) -> None:
        """Peak exposure (GBZ 2.1-2019): an excursion is a run of readings above 3 × PC-TWA;
        it exceeds when a reading passes 5 × PC-TWA, when it has lasted over 15 minutes,
        when it began less than 1 h after the previous one ended, or when it is the fifth
        to begin within 24 h. It ends at the first reading back at or below 3 × PC-TWA."""
        if v > self.pk3:
            if self.pk_start is None:
                self.pk_start = t
                near = sum(1 for s in self.pk_starts if t - s < PEAK_DAY_NS)
                soon = self.pk_end is not None and t - self.pk_end < PEAK_GAP_NS
                self.pk_bad = soon or near >= PEAK_PER_DAY
                self.pk_starts = [*self.pk_starts, t][-PEAK_PER_DAY:]
            x = v > self.pk5 or t - self.pk_start > PEAK_EXCURSION_NS or self.pk_bad
        else:
            if self.pk_start is not None:
                self.pk_end = t
                self.pk_start = None
            x = False
        self.metric[R_PEAK] = v
        self.machine(R_PEAK, int(x), t, out)

    def impulse(self, t: int, v: float, out: list[dict[str, Any]]) -> None:
        """Impulse noise (GBZ 2.2-2007 §11): a valid reading rising above the threshold is
        one impulse, counted in the open 15-minute bucket (a reading from before a clock step
        back counts in the open one); the count over the last 32 buckets picks the limit
        (140 / 130 / 120 dB), and a reading above it is an exceedance."""
        k = t // IMPULSE_BUCKET_NS
        if self.im_k is None:
            self.im_k = k
        elif k > self.im_k:
            for j in range(self.im_k + 1, min(k, self.im_k + IMPULSE_BUCKETS) + 1):
                self.im_ring[j % IMPULSE_BUCKETS] = 0
            self.im_k = k
        above = v > self.cr.impulse_db
        if above and not self.im_above:
            self.im_ring[self.im_k % IMPULSE_BUCKETS] += 1
        self.im_above = above
        lim = impulse_limit(sum(self.im_ring), self.cr.impulse_db)
        self.metric[R_IMPULSE] = v
        self.machine(R_IMPULSE, int(v > lim), t, out)

    # ------------------------------------------------------------------ clock
    def clock_back(self, now: int) -> None:
        """The clock went back: times later than now are brought back to it."""
        if self.last_ts is not None:
            self.last_ts = min(self.last_ts, now)
        self.pt = min(self.pt, now)
        self.fz_since = min(self.fz_since, now)
        self.since = [min(s, now) for s in self.since]
        if self.bad_since is not None:
            self.bad_since = min(self.bad_since, now)
        if self.pk_start is not None:
            self.pk_start = min(self.pk_start, now)
        if self.pk_end is not None:
            self.pk_end = min(self.pk_end, now)

    def tick(self, now: int, out: list[dict[str, Any]]) -> None:
        if self.supp:
            return
        if self.last_ts is None:
            self.last_ts = now
        en = self.enabled
        if en[R_STALE]:
            assert self.cr.stale_ns is not None
            self.metric[R_STALE] = (now - self.last_ts) / NS
            self.machine(R_STALE, int(now - self.last_ts > self.cr.stale_ns), now, out)
        if en[R_BAD] and self.bad_since is not None:
            assert self.cr.bad_ns is not None
            self.metric[R_BAD] = (now - self.bad_since) / NS
            self.machine(R_BAD, int(now - self.bad_since >= self.cr.bad_ns), now, out)
        for r in range(NR):
            if r not in (R_STALE, R_BAD) and self.cand[r] != self.act[r]:
                self.machine(r, self.cand[r], now, out)


class ReferenceEngine:
    """Per-channel reference with the engine's process/tick contract (transitions only)."""

    def __init__(self, rules: list[ChannelRules]):
        self.channels = [RefChannel(i, cr) for i, cr in enumerate(rules)]
        self.last_tick: int | None = None

    def process(self, channel: Any, ts: Any, value: Any, quality: Any) -> list[dict[str, Any]]:
        """Samples in batch order; several samples of one channel are taken in the order given."""
        out: list[dict[str, Any]] = []
        seen: dict[int, int] = {}
        rounds: list[list[tuple[int, int, float, int]]] = []
        for c, t, v, q in zip(channel, ts, value, quality, strict=True):
            c = int(c)
            k = seen.get(c, 0)
            seen[c] = k + 1
            while len(rounds) <= k:
                rounds.append([])
            rounds[k].append((c, int(t), float(v), int(q)))
        for rnd in rounds:
            for c, t, v, q in sorted(rnd, key=lambda s: s[0]):
                self.channels[c].sample(t, v, q, out)
        return out

    def tick(self, now: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        back = self.last_tick is not None and now < self.last_tick
        self.last_tick = now
        for ch in self.channels:
            if back:
                ch.clock_back(now)
            ch.tick(now, out)
        return out


__all__ = ["HEALTH_RULES", "RefChannel", "ReferenceEngine"]
