"""A live reload's rules state: what a channel carries from the old engine to the new one.

A reload builds a new engine for the new channel table (new settings, new numbering) and
then carries over, channel by channel (matched by *name*), the state that makes an alarm
what it is: the alarm machine (level, candidate, since, metric, unacknowledged, last
code), shelving, operator maintenance, the previous value and times (stale, bad, frozen),
and the event counter. So an alarm that still holds is not raised again, an
acknowledgement is not lost, and a changed limit takes effect on the next sample (it
clears or changes level the ordinary way, with its event).

Trend buckets and exposure windows are staggered by channel index (``phase_ns``): they
are carried when the channel keeps its index and those settings, and start afresh
otherwise (the reload's diff says which: ``rules_reset``).

Pure: arrays in, arrays out, no I/O and no clock.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rules.compile import EngineState
from rules.indexing import NR, merge_times

#: alarm machine arrays, rule × channel
_ALARM = ("act", "cand", "since", "metric", "unacked", "last_code")
#: per-channel state every carried channel keeps
_CHANNEL = ("last_ts", "rt_maint", "pv", "bad_since")
#: per-channel trend state (indexed by channel), carried with the same bucket and phase
_TREND = ("tb_next", "tb_n", "tb_sv")
#: per-channel exposure state, carried with the same exposure settings and phase
_EXPOSURE = ("I", "ex_k", "ex_next", "old_stel", "old_twa", "lim_stel", "lim_twa", "lim_min", "seed_stel",
             "seed_twa", "pk_start", "pk_end", "pk_bad", "im_k", "im_above")
_EXPOSURE_ROWS = ("snap_stel", "snap_twa", "pk_starts", "im_ring")


def _same_trend(old: EngineState, o: int, new: EngineState, n: int) -> bool:
    return bool(old.tb_bw[o] == new.tb_bw[n] and old.tb_ph[o] == new.tb_ph[n])


def _same_exposure(old: EngineState, o: int, new: EngineState, n: int) -> bool:
    return bool(old.ex_mode[o] == new.ex_mode[n] and old.ex_ph[o] == new.ex_ph[n]
                and np.array_equal(old.twa_thr[o], new.twa_thr[n], equal_nan=True)
                and np.array_equal(old.stel_thr[o], new.stel_thr[n], equal_nan=True)
                and np.array_equal(old.pk3[o], new.pk3[n], equal_nan=True)
                and np.array_equal(old.im_th[o], new.im_th[n], equal_nan=True))


def carry(old: EngineState, new: EngineState, kept: Mapping[str, tuple[int, int]]) -> list[str]:
    """Carry the state of channels ``kept`` (name → (old index, new index)) from ``old``
    into ``new``, a fresh engine for the new table. Returns the names whose trend or
    exposure state started afresh (moved, or those settings changed)."""
    reset: list[str] = []
    if kept:
        o = np.fromiter((v[0] for v in kept.values()), np.intp, len(kept))
        n = np.fromiter((v[1] for v in kept.values()), np.intp, len(kept))
        for a in _ALARM:
            getattr(new, a)[:, n] = getattr(old, a)[:, o]
        for a in _CHANNEL:
            getattr(new, a)[n] = getattr(old, a)[o]
        for name, (oi, ni) in kept.items():
            t_ok, e_ok = _same_trend(old, oi, new, ni), _same_exposure(old, oi, new, ni)
            if t_ok:
                for a in _TREND:
                    getattr(new, a)[ni] = getattr(old, a)[oi]
                new.p_k[new.rpos[ni]] = old.p_k[old.rpos[oi]]
                new.p_part[new.rpos[ni]] = old.p_part[old.rpos[oi]]
                if new.ring_y.shape[1] and old.ring_y.shape[1]:
                    new.ring_y[:, new.rpos[ni]] = old.ring_y[:, old.rpos[oi]]
            if e_ok:
                for a in _EXPOSURE:
                    getattr(new, a)[ni] = getattr(old, a)[oi]
                for a in _EXPOSURE_ROWS:
                    dst, src = getattr(new, a), getattr(old, a)
                    if len(dst) and len(src):
                        dst[ni] = src[oi]
                if old.noise_rank[oi] >= 0 and new.noise_rank[ni] >= 0:
                    new.ex_e[new.noise_rank[ni]] = old.ex_e[old.noise_rank[oi]]
            if not (t_ok and e_ok) and (old.tb_bw[oi] > 0 or old.ex_mode[oi] > 0 or new.tb_bw[ni] > 0
                                        or new.ex_mode[ni] > 0):
                reset.append(name)
        new.next_rot[:] = np.minimum(new.tb_next, new.ex_next)
        o2n = np.full(old.n, -1, np.intp)
        o2n[o] = n

        def moved(c: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            m = o2n[c] if len(c) else c
            keep = m >= 0
            order = np.argsort(m[keep], kind="stable")
            return m[keep][order], t[keep][order]

        empty = np.zeros(0, new.ov_t.dtype)
        new.ov_c, new.ov_t = merge_times(np.zeros(0, np.intp), empty, *moved(old.ov_c, old.ov_t))
        new.fz_c, new.fz_t = merge_times(np.zeros(0, np.intp), empty, *moved(old.fz_c, old.fz_t))
        new.bad_idx = np.sort(o2n[old.bad_idx][o2n[old.bad_idx] >= 0]) if len(old.bad_idx) else new.bad_idx
        if len(old.pk_open):
            new.pk_open = np.sort(o2n[old.pk_open][o2n[old.pk_open] >= 0])
        new.shelved = {(int(o2n[c]), r): dict(v) for (c, r), v in old.shelved.items() if o2n[c] >= 0}
        new.maint_by = {int(o2n[c]): dict(v) for c, v in old.maint_by.items() if o2n[c] >= 0}
        # maintenance as restore() sets it: operator's or the config's, without new events
        # (a suppression the config set and no longer sets ends; one by quality stays)
        want = new.rt_maint | new.cfg_maint
        new.supp[:] = want
        new.supp[n] |= old.supp[o] & ~old.cfg_maint[o]
        new.nsupp = int(new.supp.sum())
    new._next_id = max(new._next_id, old._next_id)
    new.recent.extend(old.recent)
    for k, v in old.stats.items():
        new.stats[k] = v
    new._nz = [None] * NR  # rebuilt on next use
    new._last_tick = old._last_tick
    return reset
