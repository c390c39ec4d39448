"""HJ 212-2017 upload contents from samples: the CP of real-time (2011), minute (2051),
hourly (2061) and daily (2031) data. Pure: arrays in, text out, no clock.

- Real-time data (6.6.2, CN 2011): ``code-Rtd=value,code-Flag=X`` per point.
- Period data (CN 2051/2061/2031): ``code-Min=…,code-Avg=…,code-Max=…[,code-Cou=…],code-Flag=X``.
  Min/Avg/Max are over the period's samples with flag N; when there is none, over all
  its samples that have a value, and the flag is the last sample's. ``Cou`` (the amount
  over the period, for a rate) is ``Avg × the period's length in the rate's time unit``.
- Data flags (HJ 212-2017 6.6.4 table 8 "数据标记"): N normal, F instrument out of operation
  (never sent: no safegw quality says so, docs/regulators.md), M maintenance,
  S set by hand, D fault, C calibrating, T over the upper limit, B communication lost.
  From safegw's quality (gateway/core/batch.py ``Quality``): see ``FLAG_OF_QUALITY``.
"""

from __future__ import annotations

import math
import time

import numpy as np
import numpy.typing as npt

from gateway.core.batch import Quality

#: the HJ 212 data flag of each quality byte (codes this version does not know: by class)
FLAG_OF_QUALITY: dict[int, str] = {
    Quality.GOOD: "N",
    Quality.UNCERTAIN: "N",          # a value to use with care, no cause named: still measured
    Quality.UNCERTAIN_STATUS: "N",
    Quality.CALIBRATING: "C",
    Quality.MAINTENANCE: "M",
    Quality.SUBSTITUTED: "S",         # a value set by hand / substituted
    Quality.BAD: "D",
    Quality.TIMEOUT: "B",             # communication with the instrument lost
    Quality.COMMS: "B",
    Quality.NO_DATA: "B",
    Quality.OUT_OF_RANGE: "T",        # over the instrument's range
    Quality.SENSOR_FAULT: "D",
    Quality.DEVICE_EXCEPTION: "D",
    Quality.CONFIG: "D",
    Quality.CHECKSUM: "B",            # frames from the instrument arrive broken: a link fault
    Quality.PARSE: "D",
    Quality.BAD_STATUS: "D",
}


def _flag_table() -> list[str]:
    out = []
    for q in range(256):
        if q in FLAG_OF_QUALITY:
            out.append(FLAG_OF_QUALITY[q])
        else:
            out.append("D" if q >= Quality.BAD else "N")
    return out


FLAGS = _flag_table()
_FLAG_IS_N = np.array([f == "N" for f in FLAGS], bool)

NS = 1_000_000_000
COU_UNIT_S = {"s": 1.0, "min": 60.0, "h": 3600.0}


class LocalTime:
    """HJ 212's times (QN, DataTime, BeginTime) in a fixed zone (Beijing: +08:00)."""

    def __init__(self, utc_offset: str = "+08:00"):
        sign = -1 if utc_offset.startswith("-") else 1
        hh, mm = utc_offset[1:].split(":")
        self.offset_s = sign * (int(hh) * 3600 + int(mm) * 60)
        self._cache_s = -1
        self._cache = ""

    def datetime(self, ns: int) -> str:
        """YYYYMMDDhhmmss."""
        s = ns // NS
        if s != self._cache_s:
            self._cache_s, self._cache = s, time.strftime("%Y%m%d%H%M%S", time.gmtime(s + self.offset_s))
        return self._cache

    def qn(self, ns: int) -> str:
        """YYYYMMDDhhmmsszzz (milliseconds)."""
        return self.datetime(ns) + f"{(ns // 1_000_000) % 1000:03d}"

    def parse(self, text: str) -> int:
        """YYYYMMDDhhmmss (or with zzz milliseconds) → ns; ValueError says what is wrong."""
        if not text.isdigit() or len(text) not in (14, 17):
            raise ValueError(f"time {text[:20]!r} is not YYYYMMDDhhmmss")
        import calendar

        try:
            t = time.strptime(text[:14], "%Y%m%d%H%M%S")
        except ValueError:
            raise ValueError(f"time {text!r} is not a valid date and time") from None
        ms = int(text[14:]) if len(text) == 17 else 0
        return (calendar.timegm(t) - self.offset_s) * NS + ms * 1_000_000

    def period_start(self, ns: int | npt.NDArray[np.int64], period_s: float) -> npt.NDArray[np.int64] | int:
        """The start of the period holding ``ns``, periods aligned to local midnight."""
        p = int(period_s * NS)
        off = self.offset_s * NS
        return ((ns + off) // p) * p - off  # type: ignore[no-any-return]


def _num(v: float, d: int) -> str:
    return f"{v:.{d}f}"


def rtd_formats(codes: list[str], decimals: list[int]) -> tuple[list[str], list[str]]:
    """Per slot: the %-format of a real-time item with a value, and of one without."""
    return ([f"{c}-Rtd=%.{d}f,{c}-Flag=%s" for c, d in zip(codes, decimals, strict=True)],
            [f"{c}-Flag=%s" for c in codes])


def rtd_items(formats: tuple[list[str], list[str]], slot: npt.NDArray[np.int32],
              value: npt.NDArray[np.float64], quality: npt.NDArray[np.uint8]) -> list[str]:
    """One ``code-Rtd=v,code-Flag=X`` per sample (a sample without a value: the flag only);
    ``formats`` from ``rtd_formats``."""
    flags = FLAGS
    with_value, flag_only = formats
    if np.isfinite(value).all():
        return [with_value[s] % (v, flags[q])
                for s, v, q in zip(slot.tolist(), value.tolist(), quality.tolist(), strict=True)]
    return [with_value[s] % (v, flags[q]) if math.isfinite(v) else flag_only[s] % flags[q]
            for s, v, q in zip(slot.tolist(), value.tolist(), quality.tolist(), strict=True)]


def latest_per_slot(slot: npt.NDArray[np.int32], ts: npt.NDArray[np.int64], value: npt.NDArray[np.float64],
                    quality: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float64],
                                                             npt.NDArray[np.uint8]]:
    """Each slot's newest sample (ordered by slot)."""
    order = np.lexsort((ts, slot))
    s = slot[order]
    last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, bool)
    return s[last], value[order][last], quality[order][last]


def period_items(codes: list[str], decimals: list[int], cou: list[str | None], period_s: float,
                 period: npt.NDArray[np.int64], slot: npt.NDArray[np.int32], ts: npt.NDArray[np.int64],
                 value: npt.NDArray[np.float64], quality: npt.NDArray[np.uint8]) -> dict[int, list[str]]:
    """Per period start (ns): the Min/Avg/Max[/Cou]/Flag items of every slot with samples in it."""
    out: dict[int, list[str]] = {}
    if not len(slot):
        return out
    order = np.lexsort((ts, slot, period))
    p, s, v, q = period[order], slot[order], value[order], quality[order]
    starts = np.flatnonzero(np.r_[True, (p[1:] != p[:-1]) | (s[1:] != s[:-1])])
    ends = np.r_[starts[1:], len(p)]
    good = _FLAG_IS_N[q] & np.isfinite(v)
    finite = np.isfinite(v)
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        sl = int(s[a])
        c, d = codes[sl], decimals[sl]
        use = good[a:b]
        flag = "N"
        if not use.any():
            use = finite[a:b]
            flag = FLAGS[int(q[b - 1])]
        vals = v[a:b][use]
        if len(vals):
            avg = float(vals.mean())
            lo, hi = float(vals.min()), float(vals.max())
            item = f"{c}-Min={_num(lo, d)},{c}-Avg={_num(avg, d)},{c}-Max={_num(hi, d)}"
            unit = cou[sl]
            if unit is not None:
                item += f",{c}-Cou={_num(avg * period_s / COU_UNIT_S[unit], d)}"
            item += f",{c}-Flag={flag}"
        else:
            item = f"{c}-Flag={flag}"
        out.setdefault(int(p[a]), []).append(item)
    return out
