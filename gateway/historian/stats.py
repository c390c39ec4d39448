"""The historian's 5-minute statistics: per channel, the min, max, mean and count of the
good samples of each fixed interval, accumulated vectorized from Batches as the
historian reads the journal, and written (``stats_5m``) once an interval closes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gateway.core.batch import Batch, Quality


@dataclass(slots=True)
class ClosedInterval:
    start_ns: int
    channels: npt.NDArray[np.int64]
    vmin: npt.NDArray[np.float64]
    vmax: npt.NDArray[np.float64]
    mean: npt.NDArray[np.float64]
    count: npt.NDArray[np.int64]
    total: npt.NDArray[np.int64]


class _Acc:
    __slots__ = ("count", "first_seq", "max", "min", "sum", "total")

    def __init__(self, n: int, seq: int):
        self.min = np.full(n, np.inf)
        self.max = np.full(n, -np.inf)
        self.sum = np.zeros(n)
        self.count = np.zeros(n, np.int64)
        self.total = np.zeros(n, np.int64)
        self.first_seq = seq

    def grow(self, n: int) -> None:
        if n <= len(self.min):
            return
        k = n - len(self.min)
        self.min = np.concatenate([self.min, np.full(k, np.inf)])
        self.max = np.concatenate([self.max, np.full(k, -np.inf)])
        self.sum = np.concatenate([self.sum, np.zeros(k)])
        self.count = np.concatenate([self.count, np.zeros(k, np.int64)])
        self.total = np.concatenate([self.total, np.zeros(k, np.int64)])


class IntervalStats:
    """Per-channel min, max, mean and count of good samples per fixed interval (5 min),
    accumulated vectorized from Batches.

    An interval closes once data ``grace`` past its end has been seen (or the clock
    passed it while the consumer is caught up). Samples for an interval already closed
    are counted in ``late_samples`` and left out: re-emitting the interval from them
    alone would overwrite the complete figures."""

    def __init__(self, interval_s: float = 300.0, grace_s: float = 10.0, closed_upto_ns: int = 0, n: int = 0):
        self.interval = int(interval_s * 1e9)
        self.grace = int(grace_s * 1e9)
        self.closed_upto = closed_upto_ns
        self.open: dict[int, _Acc] = {}
        self.high_water = 0
        self.late_samples = 0
        self.n = n

    def add(self, batch: Batch, seq: int) -> None:
        if not len(batch):
            return
        self.n = max(self.n, int(batch.channel.max()) + 1)
        start = batch.ts - batch.ts % self.interval
        lo, hi = int(start.min()), int(start.max())
        self.high_water = max(self.high_water, batch.ts_max)
        if hi < self.closed_upto:
            self.late_samples += len(batch)
            return
        good = (batch.quality < Quality.UNCERTAIN) & np.isfinite(batch.value)
        buckets = [lo] if lo == hi else np.unique(start).tolist()
        for b in buckets:
            if b < self.closed_upto:
                self.late_samples += int((start == b).sum())
                continue
            m = None if lo == hi else start == b
            acc = self.open.get(b)
            if acc is None:
                acc = self.open[b] = _Acc(self.n, seq)
            acc.grow(self.n)
            ch = batch.channel if m is None else batch.channel[m]
            np.add.at(acc.total, ch, 1)
            g = good if m is None else good & m
            chg = batch.channel[g]
            vg = batch.value[g]
            np.minimum.at(acc.min, chg, vg)
            np.maximum.at(acc.max, chg, vg)
            np.add.at(acc.sum, chg, vg)
            np.add.at(acc.count, chg, 1)

    def close(self, now_ns: int | None = None) -> list[ClosedInterval]:
        """Close intervals whose end + grace lies behind the data (or behind ``now_ns``)."""
        horizon = max(self.high_water, now_ns or 0)
        out = []
        for b in sorted(self.open):
            if b + self.interval + self.grace > horizon:
                break
            acc = self.open.pop(b)
            ch = np.flatnonzero(acc.total).astype(np.int64)
            cnt = acc.count[ch]
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = acc.sum[ch] / cnt
            out.append(ClosedInterval(b, ch, acc.min[ch], acc.max[ch], mean, cnt, acc.total[ch]))
            self.closed_upto = max(self.closed_upto, b + self.interval)
        return out

    def first_open_seq(self) -> int | None:
        return min((a.first_seq for a in self.open.values()), default=None)
