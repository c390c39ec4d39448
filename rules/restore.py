"""Restart recovery: the alarm states rebuilt from the journaled events (``restore``),
then the sample-driven state from the journaled samples (``warm``).

A mixin over the evaluation parts, like them: it runs once at start, touches every
part's state, and ``warm`` replays through the engine's own ``process``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from gateway.core.batch import Batch
from rules.events import ACTIVE_UNACKED, CLEARED_UNACKED
from rules.exposure import Exposure
from rules.indexing import I64, NONE, NR, RULE_INDEX, UNSET, Event, merge_times
from rules.limits import Limits
from rules.settings import (
    LEVEL_CODES,
    R_BAD,
    R_FROZEN,
    R_LIMIT,
    R_PREDICT,
    R_STALE,
    R_STEL,
    R_TWA,
    STEL_WINDOW_NS,
    TWA_WINDOW_NS,
)
from rules.trend import Trend

#: rules whose metric an event carries in a field of its own, not in ``value``
_METRIC_FIELD = {R_STALE: "duration_s", R_BAD: "duration_s", R_PREDICT: "time_to_limit_s"}


class Recovery(Limits, Trend, Exposure):
    """``restore`` and ``warm``: the engine's state rebuilt at a restart."""

    def process(self, batch: Batch) -> list[Event]:
        raise NotImplementedError  # the engine's (rules/engine.py)

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
            r = RULE_INDEX.get(str(rname))
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
            # the metric of the rules measured in seconds travels in their own field (events
            # journaled before it did carry it in ``value``)
            metric = ev.get(_METRIC_FIELD.get(r, "value"), value)
            self.metric[r, c] = np.nan if metric is None else float(metric)
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
            self.fz_c, self.fz_t = merge_times(self.fz_c, self.fz_t, np.array(list(frozen), np.intp),
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
                self.fz_c, self.fz_t = merge_times(self.fz_c, self.fz_t, restored_fz[0][fz_back],
                                                    restored_fz[1][fz_back])
            # a restored last time after the replayed one: the previous valid sample stays the replayed one
            raised = np.flatnonzero((restored_last > self.last_ts) & ~untouched)
            if len(raised):
                self.ov_c, self.ov_t = merge_times(self.ov_c, self.ov_t, raised, self.valid_ts()[raised])
            self.last_ts = np.maximum(self.last_ts, restored_last)
            self.bad_idx = np.flatnonzero(self.bad_since != NONE)
            # channels without replayed exposure keep restore's conservative seed
            none = self.ex_k == NONE
            self.seed_twa[none] = seed_twa[none]
            self.seed_stel[none] = seed_stel[none]
            self._stale_lb = NONE
            self._maybe_unset = True
        return applied
