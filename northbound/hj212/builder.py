"""From journal records to HJ 212 messages, in journal order (pure but for the clock it
is given; the period data's samples are fetched by the caller).

The ``Builder`` is fed the journal's records one by one. Its clock is the data's own:
the newest sample time seen. A real-time window or a minute/hour/day period closes once
samples at least ``late`` newer than its end came in, so the messages a stretch of the
journal gives are the same whether it is sent live or replayed after an outage.

Every record gets a ``Hold``: the journal cursor may pass the record only once every
message built from it (its real-time window, the periods its arrival closed) is
acknowledged (``pending`` back to 0).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gateway.core.batch import Batch
from gateway.core.record import SAMPLES, Record
from northbound.base import PointMap
from northbound.hj212 import uploads
from northbound.hj212.uploads import NS, LocalTime

log = logging.getLogger(__name__)

CN_RTD = "2011"
CN_MINUTE = "2051"
CN_HOUR = "2061"
CN_DAY = "2031"


@dataclass(slots=True)
class Hold:
    """A record the cursor may not pass while ``pending`` > 0."""

    seq: int
    pending: int = 1  # the record itself, until fed


@dataclass(slots=True)
class Upload:
    """One data message to send: its CN, the period (or window) start, the CP items."""

    cn: str
    start_ns: int
    items: list[str]
    holds: list[Hold] = field(default_factory=list)
    #: the end of its period: what the sent-until state moves to once acknowledged
    end_ns: int = 0


@dataclass(slots=True)
class Closing:
    """Periods of one CN that closed: their data is to be read from the journal."""

    cn: str
    period_s: float
    starts: list[int]
    hold: Hold


@dataclass
class _Window:
    slot: list[npt.NDArray[np.int32]] = field(default_factory=list)
    ts: list[npt.NDArray[np.int64]] = field(default_factory=list)
    value: list[npt.NDArray[np.float64]] = field(default_factory=list)
    quality: list[npt.NDArray[np.uint8]] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)


class Builder:
    """Real-time windows and period closings from the journal's records."""

    def __init__(self, points: PointMap, local: LocalTime, *, rtd_interval: float, late: float,
                 periods: dict[str, float], sent_until: dict[str, int]):
        self.points = points
        self.local = local
        self.rtd_interval = rtd_interval
        self.late_ns = int(late * NS)
        #: CN → period length (s) of the period data to send
        self.periods = periods
        #: CN → the end of the last period (or real-time window) acknowledged
        self.sent_until = dict(sent_until)
        #: CN → the start of the next period to close
        self.next_close: dict[str, int] = {}
        self.clock = 0
        #: times (ns) when the platform had real-time data stopped (2012 → 2011): [from, to),
        #: to None while stopped. A window starting in one is not sent, however late the
        #: adapter gets to it (after an outage the backlog is sent as the platform asked).
        self.stopped: list[list[int | None]] = []
        self._open: dict[int, _Window] = {}
        #: real-time windows before this are closed: samples for them came too late
        self._rtd_closed_until = 0
        self.late_samples = 0
        self._formats = uploads.rtd_formats(points.codes, points.decimals)
        self.gaps = 0

    @property
    def realtime(self) -> bool:
        return not self.stopped or self.stopped[-1][1] is not None

    def stop_realtime(self, now_ns: int) -> None:
        if self.realtime:
            self.stopped.append([now_ns, None])
            del self.stopped[:-100]  # bounded: the oldest stops no longer matter

    def start_realtime(self, now_ns: int) -> None:
        if not self.realtime:
            self.stopped[-1][1] = now_ns

    def _wanted(self, start_ns: int) -> bool:
        for a, b in reversed(self.stopped):
            if a is not None and a <= start_ns and (b is None or start_ns < b):
                return False
        return True

    def feed(self, rec: Record) -> tuple[list[Upload], list[Closing], Hold]:
        """Take one record; returns the real-time uploads and period closings it brings
        about, and its hold (released by the caller once fed: ``hold.pending -= 1``)."""
        hold = Hold(rec.seq)
        if rec.kind != SAMPLES:
            if rec.is_gap:
                self.gaps += 1
                log.warning("the journal dropped unsent records (gap record %d): the platform misses them",
                            rec.seq)
            return [], [], hold
        b = rec.batch()
        if not len(b):
            return [], [], hold
        newest = int(b.ts.max())
        first = self.clock == 0
        if newest > self.clock:
            self.clock = newest
        if first:
            oldest = int(b.ts.min())
            for cn, p in self.periods.items():
                start = int(self.local.period_start(oldest, p))
                self.next_close[cn] = max(start, self.sent_until.get(cn, start))
        slot, mb = self.points.select(b)
        if len(slot):
            self._add_rtd(slot, mb, hold)
        uploads_ = self._close_rtd()
        closings = []
        for cn, p in self.periods.items():
            pn = int(p * NS)
            starts = []
            while self.next_close[cn] + pn + self.late_ns <= self.clock:
                starts.append(self.next_close[cn])
                self.next_close[cn] += pn
            if starts:
                hold.pending += 1
                closings.append(Closing(cn, p, starts, hold))
        return uploads_, closings, hold

    def _add_rtd(self, slot: npt.NDArray[np.int32], b: Batch, hold: Hold) -> None:
        win = np.asarray(self.local.period_start(b.ts, self.rtd_interval))
        done = self.sent_until.get(CN_RTD, 0)
        for w in np.unique(win).tolist():
            if w < done:
                continue  # acknowledged before a restart
            if w < self._rtd_closed_until:
                # its window went out already: these samples came more than `late` after
                # its end (a slow device, a clock step); the period data still has them
                n = int((win == w).sum())
                if not self.late_samples:
                    log.warning("%d sample(s) for the real-time window %s came after it closed "
                                "(more than 'late' after its end): not sent as real-time data; "
                                "raise 'late' if this repeats", n, self.local.datetime(w))
                self.late_samples += n
                continue
            m = win == w
            ow = self._open.setdefault(w, _Window())
            ow.slot.append(slot[m])
            ow.ts.append(b.ts[m])
            ow.value.append(b.value[m])
            ow.quality.append(b.quality[m])
            if not ow.holds or ow.holds[-1] is not hold:
                ow.holds.append(hold)
                hold.pending += 1

    def _close_rtd(self) -> list[Upload]:
        out = []
        rn = int(self.rtd_interval * NS)
        for w in sorted(self._open):
            if w + rn + self.late_ns > self.clock:
                break
            ow = self._open.pop(w)
            self._rtd_closed_until = max(self._rtd_closed_until, w + rn)
            if not self._wanted(w):
                for h in ow.holds:
                    h.pending -= 1
                continue
            s, v, q = uploads.latest_per_slot(np.concatenate(ow.slot), np.concatenate(ow.ts),
                                              np.concatenate(ow.value), np.concatenate(ow.quality))
            items = uploads.rtd_items(self._formats, s, v, q)
            out.append(Upload(CN_RTD, w, items, ow.holds, w + rn))
        return out

    def period_uploads(self, closing: Closing, b: Batch) -> list[Upload]:
        """The period data of ``closing`` from its samples ``b`` (all channels, raw values)."""
        slot, mb = self.points.select(b)
        per = np.asarray(self.local.period_start(mb.ts, closing.period_s))
        cou: list[str | None] = [p.cou for p in self.points.points]
        items = uploads.period_items(self.points.codes, self.points.decimals, cou, closing.period_s,
                                     per, slot, mb.ts, mb.value, mb.quality)
        pn = int(closing.period_s * NS)
        out = []
        for start in closing.starts:
            if start in items:
                out.append(Upload(closing.cn, start, items[start], [closing.hold], start + pn))
        return out
