"""The alarm lifecycle (ISA-18.2 states) of every rule on every channel: the delay
machine, suppression (maintenance), the events, and the operator actions (ack, shelve,
unshelve, maintenance).

Each rule of the evaluation (rules/limits.py, trend.py, exposure.py) hands its
conditions to ``_machine``; the machine keeps, per rule × channel, the candidate
level and since when, the active level, the acknowledgement, and the last metric, and
queues a transition when a delay runs out. ``_emit`` turns the queued transitions of
a call into events in a fixed order (round, channel, rule), which is the order the
reference (rules/reference.py) produces them in.

A mixin over ``EngineState`` (rules/compile.py says why mixins): every other part
calls into the machine on the hot path, so it sits right above the state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from rules.compile import EngineState
from rules.events import ACTIVE_UNACKED, alarm_event, escalates, maintenance_event, suppress_event
from rules.indexing import I64, NONE, NR, RULE_INDEX, Event, FloatArr, IntArr, minus, union
from rules.settings import NS, R_BAD, R_STALE, RULES

#: escalates(old, new) for the levels -2..2, looked up at (new + 2) * 5 + (old + 2)
_ESC = np.array([escalates(old, new) for new in range(-2, 3) for old in range(-2, 3)])


def _escalates(old: npt.NDArray[np.int8], new: npt.NDArray[np.int8]) -> npt.NDArray[np.bool_]:
    """Whether each old → new level change takes the on-delay (a raise or a worse level)."""
    return _ESC[new.astype(np.intp) * 5 + old + 12]


class AlarmMachine(EngineState):
    """The delay machine, suppression, events and operator actions (see the module docstring)."""

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
                idx = union(idx, inter)
        else:
            xb = None if x is None else x if x.dtype == np.bool_ else x != 0  # nonzero of bool is fast
            if xb is not None and xb.any():
                idx = np.flatnonzero(xb)
                if len(inter):
                    idx = union(idx, inter)
            else:
                idx = inter
        if hold is not None:
            idx = minus(idx, hold)  # held positions do not count
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
            nz = union(nz, enter)
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

    def _tick_delays(self, now: int) -> None:
        """Delays that ran out without a new sample (stale and bad have checks of their own)."""
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

    def _expire_shelving(self, now: int) -> list[Event]:
        """Shelving that ran out: unshelved by "system"."""
        return [self._unshelve_one(key, now, "system") for key, sh in list(self.shelved.items())
                if sh["until"] is not None and sh["until"] <= now]

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
        self._forget(np.array([c]))
        self._stale_lb = NONE
        self._maybe_unset = True

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
            if rule not in RULE_INDEX:
                raise KeyError(f"unknown rule {rule!r}; rules: {', '.join(RULES)}")
            rs = [RULE_INDEX[rule]]
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
