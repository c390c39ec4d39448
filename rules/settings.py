"""Per-channel rule settings, resolved from the config (presets applied, units to SI).

``ChannelRules`` is the plain, fully resolved description of what is checked on one
channel. Both the vectorized core (rules/engine.py) and the per-channel reference
(rules/reference.py) are built from a list of them, so they evaluate the same rules.
Times are integer nanoseconds; a disabled rule has ``None`` (or NaN for a limit).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

from gateway.core.batch import Quality
from gateway.core.channels import ChannelTable
from gateway.core.config import AlarmSettings, ChannelBase, Config, ExposureSettings, device_channels
from gateway.core.yamlsrc import Path_
from rules.presets import MOLAR_VOLUME_L, alarm_preset, exposure_preset, gbt50493_ceiling, occupational_limit

NS = 1_000_000_000
NAN = math.nan

#: rule slots, in the order they are evaluated for one sample (and transitions reported)
#: (the rules of issue 17 come last, so the order of the other rules' events is unchanged:
#: mac, GBZ 2.1-2019 MAC, a ceiling no single reading may pass; peak, GBZ 2.1-2019 peak
#: exposure, for a PC-TWA without PC-STEL or MAC; impulse, GBZ 2.2-2007 impulse noise, the
#: peak limit for the count of impulses in 8 h)
RULES = ("stale", "bad", "range", "frozen", "limit", "roc", "trend", "predict", "twa", "stel", "mac", "peak",
         "impulse")
(R_STALE, R_BAD, R_RANGE, R_FROZEN, R_LIMIT, R_ROC, R_TREND, R_PREDICT, R_TWA, R_STEL,
 R_MAC, R_PEAK, R_IMPULSE) = range(len(RULES))
PROCESS_RULES = (R_LIMIT, R_ROC, R_TREND, R_PREDICT, R_TWA, R_STEL, R_MAC, R_PEAK, R_IMPULSE)
#: rules without on/off delays (the exposure rules: their window or ceiling is the limit)
UNDELAYED = (R_TWA, R_STEL, R_MAC, R_PEAK, R_IMPULSE)
HEALTH_RULES = (R_STALE, R_BAD, R_RANGE, R_FROZEN)
#: the channel's maintenance (suppression) state is reported under this rule name
MAINTENANCE = "maintenance"

#: level codes of the limit rule (others use 1 = active)
LIMIT_LEVELS = {2: "hh", 1: "h", -1: "l", -2: "ll"}
LEVEL_CODES = {v: k for k, v in LIMIT_LEVELS.items()}
PRIORITY = {"hh": "high", "ll": "high", "h": "medium", "l": "medium", "stel": "high", "twa": "medium",
            "mac": "high", "peak": "high", "impulse": "high",
            "roc": "high", "trend": "low", "predict": "medium", "stale": "low", "bad": "low",
            "range": "low", "frozen": "low"}

#: the quality codes the rules look at, as plain ints: numpy compares an array with an
#: IntEnum member several times slower than with an int
Q_CALIBRATING, Q_MAINTENANCE = int(Quality.CALIBRATING), int(Quality.MAINTENANCE)
Q_BAD, Q_OUT_OF_RANGE, Q_SENSOR_FAULT = int(Quality.BAD), int(Quality.OUT_OF_RANGE), int(Quality.SENSOR_FAULT)

TREND_BUCKETS = 8  # least-squares trend: the window in this many buckets
MIN_TREND_BUCKETS = 3  # fewer non-empty buckets: no slope
TREND_MID = (TREND_BUCKETS - 1) / 2  # bucket positions in a window: u = -3.5 (oldest) … 3.5 (newest)
TREND_SXX = sum((j - TREND_MID) ** 2 for j in range(TREND_BUCKETS))  # Σ u² of a full window: 42
STEL_WINDOW_NS = 15 * 60 * NS
STEL_BUCKETS = 15  # 1-minute buckets
STEL_BUCKET_NS = STEL_WINDOW_NS // STEL_BUCKETS
TWA_WINDOW_NS = 8 * 3600 * NS
TWA_PER_STEL = 15  # a TWA bucket is 15 STEL buckets: 15 minutes
TWA_BUCKETS = 32  # 8 h of 15-minute buckets
# peak exposure, GBZ 2.1-2019 (峰接触浓度; the figures as issue 17 states them, docs/rules.md):
# above 3 × PC-TWA for at most 15 min at a time, at most 4 times a day, at least 1 h apart,
# never above 5 × PC-TWA
PEAK_FACTOR = 3.0
PEAK_CEILING_FACTOR = 5.0
PEAK_EXCURSION_NS = 15 * 60 * NS
PEAK_GAP_NS = 3600 * NS
PEAK_PER_DAY = 4
PEAK_DAY_NS = 24 * 3600 * NS
# impulse noise, GBZ 2.2-2007 §11 (table of impulse-noise limits): the peak sound pressure
# level allowed for the number n of impulses in a working day (8 h): n ≤ 100: 140 dB,
# n ≤ 1,000: 130 dB, n ≤ 10,000: 120 dB (more: every impulse exceeds). Counted in 15-minute
# buckets over the last 32 of them (the current one and 31 before: 7¾–8 h)
IMPULSE_LIMITS = ((100, 140.0), (1000, 130.0), (10000, 120.0))
IMPULSE_BUCKET_NS = 15 * 60 * NS
IMPULSE_BUCKETS = 32


def impulse_limit(count: int, threshold: float) -> float:
    """The peak-level limit for ``count`` impulses in 8 h (beyond the table: the threshold)."""
    for n, lim in IMPULSE_LIMITS:
        if count <= n:
            return lim
    return threshold
PHASES = 97  # bucket boundaries are staggered over channels so rotation work spreads out
PHASE_BLOCK = 16  # ... in blocks of adjacent channels, so those that rotate together share cache lines


@dataclass(slots=True)
class ChannelRules:
    name: str
    kind: str = "other"
    unit: str = ""
    hh: float = NAN
    h: float = NAN
    l: float = NAN  # noqa: E741 - the ISA name of the low limit
    ll: float = NAN
    deadband: float = 0.0
    restore: float = NAN  # hh is held while v >= restore (NaN: while v >= hh - deadband)
    on_ns: int = 0
    off_ns: int = 0
    range_lo: float = -math.inf
    range_hi: float = math.inf
    roc: float = NAN  # units per second
    trend_ns: int = 0  # window; 0 = off
    trend_slope: float = NAN  # units per minute (sign: direction)
    predict_ns: int = 0  # 0 = off
    predict_limit: float = NAN
    stale_ns: int | None = None  # None = never stale
    bad_ns: int | None = None
    frozen_ns: int | None = None
    exposure: str | None = None  # None | "concentration" | "noise"
    twa: float = NAN  # concentration limit, or the noise criterion in dB(A)
    stel: float = NAN
    mac: float = NAN  # MAC ceiling: any valid reading above it is an exceedance
    peak: bool = False  # peak exposure on the PC-TWA (GBZ 2.1-2019)
    impulse_db: float = NAN  # impulse noise: the counting threshold (dB); NaN: off
    exchange_db: float = 3.0
    hold_ns: int = 60 * NS  # longest gap a reading is held for in the exposure integral
    maintenance: bool = False
    source: str | None = None  # where the preset numbers come from

    # ---- derived figures shared by both implementations (so they compare bit-equal)
    def trend_bucket_ns(self) -> int:
        return self.trend_ns // TREND_BUCKETS

    def noise_k(self) -> float:
        return noise_k(self.exchange_db)

    def noise_c(self) -> float:
        """Level-to-energy factor: a level L is the energy exp(L · c) = 10^(L / k)."""
        return math.log(10.0) / self.noise_k()

    def noise_energy(self, level: float) -> float:
        """exp(level · c) as numpy computes it for an array, so that the engine and the
        reference agree bit for bit (Python's ``10 ** x`` and ``math.exp`` differ from
        numpy's vectorized functions in the last bit for about 5 % of inputs)."""
        return float(np.exp(np.float64(level) * self.noise_c()))

    def twa_threshold(self) -> float:
        """PC-TWA limit as an integral over 8 h (value·ns); for noise, energy·ns."""
        if self.exposure == "noise":
            return self.noise_energy(self.twa) * TWA_WINDOW_NS
        return float(self.twa * TWA_WINDOW_NS)

    def stel_threshold(self) -> float:
        """PC-STEL limit as an integral over 15 min (value·ns)."""
        return float(self.stel * STEL_WINDOW_NS)

    def peak_levels(self) -> tuple[float, float]:
        """Peak exposure: (the excursion level 3 × PC-TWA, the ceiling 5 × PC-TWA); NaN: off."""
        if not self.peak or self.exposure != "concentration":
            return NAN, NAN
        return PEAK_FACTOR * self.twa, PEAK_CEILING_FACTOR * self.twa

    def roc_per_ns(self) -> float:
        """The rate-of-change limit per ns: a change dv over dt ns alarms when |dv| > this · dt."""
        return self.roc / NS

    def hh_keep(self) -> float:
        """hh is held while the value is at or above this: the restore value, else hh - deadband."""
        return self.restore if not math.isnan(self.restore) else self.hh - self.deadband

    def limits(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("hh", "h", "l", "ll") if not math.isnan(getattr(self, k))}


def phase_ns(index: int, bucket_ns: int) -> int:
    return ((index // PHASE_BLOCK) % PHASES) * bucket_ns // PHASES


def noise_k(exchange_db: float) -> float:
    """Level-to-energy divisor: 10 for the 3 dB (equal-energy) rule, q/log10(2) otherwise."""
    return 10.0 if exchange_db == 3.0 else exchange_db / math.log10(2.0)


def _alarm_values(spec: ChannelBase, mv: float = MOLAR_VOLUME_L) -> dict[str, Any]:
    vals: dict[str, Any] = {}
    if spec.preset:
        vals.update(alarm_preset(spec.preset, gas=spec.gas, unit=spec.unit, molar_volume=mv))
    if spec.alarms is not None:
        # explicit keys override the preset's
        for k in spec.alarms.model_fields_set:
            vals[k] = getattr(spec.alarms, k)
    return vals


def _limit_order(spec: ChannelBase, r: ChannelRules) -> tuple[tuple[str, ...], str] | None:
    """The limits must rise ll < l < h < hh: (the key to blame, the message) if they do not."""
    lim = [(k, getattr(r, k)) for k in ("ll", "l", "h", "hh") if not math.isnan(getattr(r, k))]
    for (k1, v1), (k2, v2) in itertools.pairwise(lim):
        if not v1 < v2:
            given = spec.alarms.model_fields_set if spec.alarms is not None else set()
            if spec.preset:
                # blame the override that broke the preset's order (or the preset itself)
                key: tuple[str, ...] = ("alarms", k1) if k1 in given else ("alarms", k2) if k2 in given \
                    else ("preset",)
                return key, (f"with preset {spec.preset!r} the limits no longer rise ll < l < h < hh "
                             f"({k1}={v1:g}, {k2}={v2:g}); override both")
            return ("alarms", k2), f"the limits must rise ll < l < h < hh ({k1}={v1:g}, {k2}={v2:g})"
    return None


def check_channel(spec: ChannelBase, mv: float = MOLAR_VOLUME_L) -> list[tuple[tuple[str, ...], str]]:
    """What ``resolve`` would refuse in one channel's presets and overrides, as
    (key path under the channel, message): for ``safegw check`` (gateway/core/configcheck.py)."""
    if isinstance(spec.exposure, str):
        try:
            exposure_preset(spec.exposure, gas=spec.gas, unit=spec.unit, molar_volume=mv)
        except ValueError as e:
            return [(("exposure",), str(e))]
    if spec.preset:
        try:
            alarm_preset(spec.preset, gas=spec.gas, unit=spec.unit, molar_volume=mv)
        except ValueError as e:
            return [(("preset",), str(e))]
    try:
        r = resolve(spec, check_order=False, molar_volume=mv)
    except ValueError as e:
        msg = str(e)
        key = ("exposure",) if "exposure kind" in msg else ("alarms", "restore") if "restore (" in msg \
            else ("alarms",)
        return [(key, msg)]
    # (limits out of order without a preset: gateway/core/configcheck.py reports those itself)
    bad = _limit_order(spec, r) if spec.preset else None
    return [bad] if bad else []


def check_config(cfg: Config) -> list[tuple[Path_, str]]:
    """For ``safegw check``: every channel's presets and overrides, at the key to fix."""
    errs: list[tuple[Path_, str]] = []
    mv = cfg.hygiene.molar_volume_l()
    for di, dev in enumerate(cfg.devices):
        for cpath, ch in device_channels(dev):
            if ch.preset or ch.alarms is not None or ch.exposure is not None:
                errs.extend((("devices", di, *cpath, *key), msg) for key, msg in check_channel(ch, mv))
    return errs


def channel_warnings(spec: ChannelBase, mv: float = MOLAR_VOLUME_L) -> list[tuple[tuple[str, ...], str]]:
    """Explicit alarm limits above what GB/T 50493-2019 §5.5.2 allows for the channel's gas
    (level 1 ≤ 100 % OEL / 25 %LEL, level 2 ≤ 200 % OEL / 50 %LEL): worth a warning, not
    a refusal (a site may have an approved reason, e.g. a detector's resolution)."""
    if spec.alarms is None:
        return []
    cap = gbt50493_ceiling(spec.gas, spec.unit, mv)
    if cap is None:
        return []
    out: list[tuple[tuple[str, ...], str]] = []
    given = spec.alarms.model_fields_set
    vals = {k: getattr(spec.alarms, k) for k in ("h", "hh")
            if k in given and getattr(spec.alarms, k) is not None}
    try:
        o = occupational_limit(spec.gas or "")
        basis = f"{o.basis} {o.oel_mg_m3:g} mg/m³ = {o.oel_ppm(mv):.3g} ppm at {mv:g} L/mol"
        what = ("100 % of the OEL", "200 % of the OEL")
    except KeyError:
        basis, what = "%LEL", ("25 %LEL", "50 %LEL")
    # the lower level set is level 1, the higher level 2
    levels = sorted(vals.items(), key=lambda kv: float(kv[1]))
    for n, (k, v) in enumerate(levels[-2:] if len(levels) == 2 else levels):
        allowed = cap[n]
        if float(v) > allowed * (1 + 1e-9):
            pct = ""
            if basis != "%LEL":
                pct = f" ({100 * float(v) / cap[0]:.0f} % of the OEL)"
            out.append((("alarms", k), f"warning: level {n + 1} at {float(v):g} {spec.unit}{pct} is above "
                        f"the "
                        f"{what[n]} ({allowed:.4g} {spec.unit}) GB/T 50493-2019 §5.5.2 allows for {spec.gas}"
                        f"{'' if basis == '%LEL' else f' (OEL: {basis})'}; use preset: gbt50493 or lower it"))
    return out


def config_warnings(cfg: Config) -> list[tuple[Path_, str]]:
    """For ``safegw check``: what is allowed but against a standard (printed, exit 0)."""
    mv = cfg.hygiene.molar_volume_l()
    out: list[tuple[Path_, str]] = []
    for di, dev in enumerate(cfg.devices):
        for cpath, ch in device_channels(dev):
            out.extend((("devices", di, *cpath, *key), msg) for key, msg in channel_warnings(ch, mv))
    return out


def resolve(spec: ChannelBase, *, poll_s: float | None = 1.0,
            device_maintenance: bool = False, check_order: bool = True,
            molar_volume: float = MOLAR_VOLUME_L) -> ChannelRules:
    """One channel's rules from its config (presets resolved, overrides applied)."""
    vals = _alarm_values(spec, molar_volume)
    # values are already parsed (config floats in seconds, preset numbers): merge without
    # re-validating, which would refuse unit-less durations
    a = AlarmSettings().model_copy(update={k: v for k, v in vals.items() if k != "source"})
    r = ChannelRules(spec.name, spec.kind, spec.unit, source=vals.get("source"))
    for k in ("hh", "h", "l", "ll"):
        v = getattr(a, k)
        setattr(r, k, NAN if v is None else float(v))
    bad = _limit_order(spec, r) if check_order else None
    if bad is not None:
        raise ValueError(f"channel {spec.name}: {bad[1]}")
    r.deadband = float(a.deadband)
    if a.restore is not None:
        if math.isnan(r.hh) or not a.restore <= r.hh:
            raise ValueError(f"channel {spec.name}: restore ({a.restore:g}) needs an hh limit at or above it "
                             f"(hh={r.hh:g})")
        r.restore = float(a.restore)
    r.on_ns = round(a.delay * NS)
    r.off_ns = round(a.off_delay * NS)
    if spec.range is not None:
        r.range_lo, r.range_hi = float(spec.range[0]), float(spec.range[1])
    if a.roc is not None:
        r.roc = float(a.roc)
    if a.trend is not None:
        r.trend_ns = round(a.trend.window * NS)
        if a.trend.slope is not None:
            r.trend_slope = float(a.trend.slope)
        if a.trend.predict is not None:
            r.predict_ns = round(a.trend.predict * NS)
            r.predict_limit = r.h if not math.isnan(r.h) else r.hh
    if poll_s:
        r.stale_ns = round(a.stale_periods * poll_s * NS)
        r.hold_ns = max(r.stale_ns, NS)
    if a.bad_for is not None:
        r.bad_ns = round(a.bad_for * NS)
    elif r.stale_ns is not None:
        r.bad_ns = r.stale_ns  # default: bad for as long as it would take to go stale
    if a.frozen is not None:
        r.frozen_ns = round(a.frozen * NS)
    ex = spec.exposure
    if ex is not None:
        if isinstance(ex, str):
            ex = ExposureSettings.model_validate(
                {k: v for k, v in exposure_preset(ex, gas=spec.gas, unit=spec.unit,
                                                  molar_volume=molar_volume).items() if k != "source"})
        if ex.kind == "impulse":
            if ex.threshold_db is None:
                raise ValueError(f"channel {spec.name}: exposure kind impulse needs threshold_db, the peak "
                                 "level above which a rise counts one impulse (e.g. 110)")
            r.impulse_db = float(ex.threshold_db)
        elif ex.kind == "noise":
            r.exposure = ex.kind
            r.twa = float(ex.criterion_db)
            r.exchange_db = float(ex.exchange_rate_db)
        else:
            r.exposure = ex.kind
            r.twa = NAN if ex.twa is None else float(ex.twa)
            r.stel = NAN if ex.stel is None else float(ex.stel)
            r.mac = NAN if ex.mac is None else float(ex.mac)
            auto = ex.twa is not None and ex.stel is None and ex.mac is None
            r.peak = bool(ex.twa is not None and (auto if ex.peak is None else ex.peak))
    r.maintenance = bool(spec.maintenance or device_maintenance)
    return r


class TableRules(Sequence[ChannelRules]):
    """Every channel's ``ChannelRules`` of a table, resolved when asked instead of held.

    The engine reads them all once, into its arrays, and afterwards only for the few
    channels an event or a listing names. Held, they cost ~300 bytes a channel (15 MB at
    50,000 channels, bench/footprint.py); resolving one again costs ~25 µs, and the last
    ``cache`` asked for are kept (an alarm raised, then acknowledged and cleared, is one
    resolve). The table's specs are the daemon's config, which does not change under it,
    so the same channel resolves to the same settings every time."""

    def __init__(self, table: ChannelTable, *, poll_s: dict[str, float | None] | None = None,
                 device_maintenance: dict[str, bool] | None = None,
                 molar_volume: float = MOLAR_VOLUME_L, cache: int = 1024):
        self.table, self.poll_s, self.device_maintenance = table, poll_s, device_maintenance
        self.molar_volume = molar_volume
        self._cached = functools.lru_cache(maxsize=cache)(self._resolve)

    def _resolve(self, i: int) -> ChannelRules:
        c = self.table.channels[i]
        p = 1.0 if self.poll_s is None else self.poll_s.get(c.device, 1.0)
        m = bool(self.device_maintenance and self.device_maintenance.get(c.device))
        return resolve(c.spec, poll_s=p, device_maintenance=m, molar_volume=self.molar_volume)

    def __len__(self) -> int:
        return len(self.table.channels)

    @overload
    def __getitem__(self, i: int) -> ChannelRules: ...
    @overload
    def __getitem__(self, i: slice) -> list[ChannelRules]: ...
    def __getitem__(self, i: int | slice) -> ChannelRules | list[ChannelRules]:
        if isinstance(i, slice):
            return [self._resolve(j) for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        return self._cached(i % n)

    def __iter__(self) -> Iterator[ChannelRules]:
        return (self._resolve(i) for i in range(len(self)))  # a full pass: not worth caching


def resolve_table(table: ChannelTable, *, poll_s: dict[str, float | None] | None = None,
                  device_maintenance: dict[str, bool] | None = None,
                  molar_volume: float = MOLAR_VOLUME_L) -> list[ChannelRules]:
    """Rules for every channel of a table; ``poll_s`` and maintenance are per device name."""
    out = []
    for c in table.channels:
        p = 1.0 if poll_s is None else poll_s.get(c.device, 1.0)
        m = bool(device_maintenance and device_maintenance.get(c.device))
        out.append(resolve(c.spec, poll_s=p, device_maintenance=m, molar_volume=molar_volume))
    return out
