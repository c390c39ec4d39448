"""Sorted index sets, time sentinels and array types shared by the parts of the rules engine.

The engine does its work on the few channels that moved, kept as sorted arrays of
channel indices, and on rounds given either as a slice (a contiguous run of channels,
what a driver hands on) or as sorted channel indices. These helpers combine such sets
without the overhead of numpy's general set functions (np.union1d sorts and checks
more than a sorted unique input needs)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from rules.settings import RULES

Event = dict[str, Any]
I64 = np.int64
NONE = np.iinfo(np.int64).min  # "no time yet"
UNSET = -(1 << 62)  # a channel's last time before its first sample: t - UNSET does not overflow
NEVER = np.iinfo(np.int64).max  # a disabled timer
NR = len(RULES)
RULE_INDEX = {n: i for i, n in enumerate(RULES)}

IntArr = npt.NDArray[np.int64]
FloatArr = npt.NDArray[np.float64]
Idx = npt.NDArray[np.intp]
Sel = slice | Idx


def minus(a: Idx, b: Idx) -> Idx:
    """Sorted ``a`` without the elements of sorted ``b``."""
    if not len(a) or not len(b):
        return a
    j = np.searchsorted(b, a)
    j[j >= len(b)] = 0
    return a[b[j] != a]


def union(a: Idx, b: Idx) -> Idx:
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


def members(cidx: Idx, chs: Any) -> tuple[Idx, Idx]:
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


def positions_of(cidx: Idx, chs: Any) -> Idx:
    """Positions in a round (a slice of channels, or sorted channels) of channels ``cidx`` (sorted)."""
    if isinstance(chs, slice):
        lo, hi = np.searchsorted(cidx, (chs.start, chs.stop))
        return cidx[lo:hi] - chs.start
    if not len(chs):
        return np.zeros(0, np.intp)
    p = np.searchsorted(chs, cidx)
    p[p >= len(chs)] = 0
    return p[chs[p] == cidx]


def contiguous(ch: npt.NDArray[np.int32]) -> bool:
    """Whether sorted unique channels ``ch`` are one run (then a round works on array views)."""
    return int(ch[-1]) - int(ch[0]) + 1 == len(ch)


def merge_times(c: Idx, t: IntArr, add_c: Idx, add_t: IntArr) -> tuple[Idx, IntArr]:
    """A sorted channel -> time list ``c, t`` with the entries ``add_c, add_t`` put in
    (replacing a channel's entry if it has one)."""
    keep = ~np.isin(c, add_c)
    mc = np.concatenate((c[keep], add_c)).astype(np.intp)
    mt = np.concatenate((t[keep], add_t)).astype(np.int64)
    order = np.argsort(mc, kind="stable")
    return mc[order], mt[order]
