"""The vectorized rules core and the alarm lifecycle (ISA-18.2 states).

Contract used by the gateway: ``RulesEngine(table)``; ``process(batch)`` for each
ingested Batch and ``tick(now_ns)`` once a second (timers: stale, bad-for, delays,
shelving expiry) both return alarm transition events (JSON-able dicts). Operator
actions return events too: ``ack``, ``shelve``, ``unshelve``, ``set_maintenance``;
the caller journals them (``gw.emit_events``). ``active()``, ``history()``,
``version`` and ``channel_summary()`` serve the admin API and the MQTT
``alarms/active`` document; ``restore(events)`` rebuilds the alarm states from the
journal at start, so a restart does not re-raise what holds, and
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

This module orchestrates a batch and a tick; the parts are mixins over one set of
state arrays (rules/compile.py says why):

- rules/compile.py: the settings compiled from ``ChannelRules``, and the state arrays;
- rules/alarmstate.py: the delay machine, suppression, events, operator actions;
- rules/limits.py: stale, bad, range, frozen, limits with deadband, rate of change;
- rules/trend.py: trend buckets, slope and prediction;
- rules/exposure.py: TWA / STEL / noise exposure;
- rules/restore.py: ``restore`` and ``warm`` at a restart.

The semantics are those of rules/reference.py (a per-channel implementation kept
alongside as the executable specification); the tests drive both with random data
and require identical transitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.core.batch import Batch
from gateway.core.channels import ChannelTable
from rules.events import ACTIVE_UNACKED, CLEARED_UNACKED, figures, level_name, state_name
from rules.indexing import Event, FloatArr, Idx, IntArr, Sel, contiguous, members, union
from rules.restore import Recovery
from rules.settings import (
    PRIORITY,
    Q_CALIBRATING,
    Q_MAINTENANCE,
    RULES,
    TWA_WINDOW_NS,
    ChannelRules,
    TableRules,
)
from rules.summary import ChannelSummary, channel_summary


class RulesEngine(Recovery):
    """Alarm rules for every channel, evaluated on whole arrays."""

    #: how far back ``warm`` replays samples (the longest window a rule looks at)
    warm_window_ns = TWA_WINDOW_NS

    def __init__(self, table: ChannelTable | None, *, rules: Sequence[ChannelRules] | None = None,
                 gateway_id: str = "safegw", poll_s: dict[str, float | None] | None = None,
                 device_maintenance: dict[str, bool] | None = None, history: int = 1000):
        if rules is None:
            if table is None:
                raise ValueError("give a channel table or resolved rules")
            rules = TableRules(table, poll_s=poll_s, device_maintenance=device_maintenance)
        super().__init__(rules, table=table, gateway_id=gateway_id, history=history)

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_gateway(cls, cfg: Any, table: ChannelTable) -> RulesEngine:
        """The engine as the gateway builds it: poll periods and maintenance from the devices."""
        # no poll period, no staleness: subscriptions report on change, disabled devices not at all
        streaming = {d.name for d in cfg.devices if getattr(d, "mode", None) == "subscribe" or not d.enabled}
        poll: dict[str, float | None] = {
            d.name: (None if d.name in streaming else d.poll) for d in cfg.devices}
        maint = {d.name: bool(d.maintenance) for d in cfg.devices}
        rules = TableRules(table, poll_s=poll, device_maintenance=maint,
                           molar_volume=cfg.hygiene.molar_volume_l())
        return cls(table, rules=rules, gateway_id=cfg.gateway.id)

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


    def _round(self, ch: npt.NDArray[np.int32], t: IntArr, v: FloatArr, q: npt.NDArray[np.uint8],
               rnd: int) -> None:
        """One sample per channel, channels strictly increasing."""
        run = contiguous(ch)
        lt = self.last_ts[ch[0]:ch[-1] + 1] if run else self.last_ts[ch]
        # time since the channel's last sample; not after it: ignored
        di = np.subtract(t, lt, out=self._s_i[:len(t)])
        if int(di.min()) <= 0:
            ok = di > 0
            self.stats["ignored_old"] += int((~ok).sum())
            ch, t, v, q, di = ch[ok], t[ok], v[ok], q[ok], di[ok]
            if not len(ch):
                return
            run = contiguous(ch)
        sel: Sel = slice(int(ch[0]), int(ch[-1]) + 1) if run else ch.astype(np.intp)
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
                self._forget(ch[flip].astype(np.intp))
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
        ovpos, ovk = members(self.ov_c, chs)
        if len(ovpos):
            di[ovpos] = t[ovpos] - self.ov_t[ovk]
        hold, loud, pos = self._health(ch, t, v, q, sel, chs, base, qany, qpos, skip, rnd)
        if len(skip):
            hold = skip if hold is None else union(hold, skip)
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

    def _valid(self, ch: Any, t: IntArr, v: FloatArr, di: IntArr, sel: Sel, chs: Any,
               pos: dict[str, Any] | None, rnd: int, loud: Idx, hold: Idx | None = None) -> None:
        """Frozen, limits, rate of change, trend, exposure, for the valid in-range samples.

        ``hold`` lists positions of samples that are not (bad, out of range): the
        arithmetic runs over the whole round (array views stay views), the machines skip
        those positions, and their channels' accumulators are put back afterwards."""
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
            if pos is None or pos["any_limit"]:
                self._limits(ch, t, v, chs, rnd, loud, hold)
            if pos is None or pos["any_roc"]:
                self._roc(ch, t, dv, dtn, sel, chs, pos, rnd, hold)
            if pos is None or len(pos["impulse"]):
                self._impulse(ch, t, v, sel, chs, rnd, hold, None if pos is None else pos["impulse"])
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
                self._exposure_add(ch, t, v, sel, chs, contrib, rnd, hold, pos, loud)
        self.pv[sel] = v
        for a, idx, keep in saved:
            a[idx] = keep

    def _rotate(self, c: Idx, t: IntArr, rnd: int) -> None:
        """Close the trend and exposure buckets of channels ``c`` whose boundary a sample crossed."""
        tr = np.flatnonzero(t >= self.tb_next[c])
        if len(tr):
            self._trend_rotate(c[tr], t[tr], rnd)
        ex = np.flatnonzero(t >= self.ex_next[c])
        if len(ex):
            self._exposure_rotate(c[ex], t[ex])
        self.next_rot[c] = np.minimum(self.tb_next[c], self.ex_next[c])

    def tick(self, now_ns: int) -> list[Event]:
        now = int(now_ns)
        self._tick_stale(now)
        self._tick_bad(now)
        self._tick_delays(now)
        out = self._emit()
        out += self._expire_shelving(now)
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
                item.update(figures(cr, r, code, float(self.metric[r, c])))
                item["priority"] = PRIORITY.get(item["level"], "low")
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
