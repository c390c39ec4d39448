"""The sample columns of the uplink codec: patterns, record times, values, qualities.

A record's channel list is a *pattern* (a device polls the same channels every cycle),
sent once per envelope; each record then costs a pattern id and its timestamp, coded
along the records of the same pattern. Records whose samples differ in time (OPC-UA
source times) send their samples' offsets per channel. Values are regrouped per
channel, each with a reconstruction mode found from its data; a value the mode does
not reproduce bit for bit is an exception, sent as its IEEE bits XORed with the
previous exception's. Every integer series goes through ``grouped`` in one block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.core.batch import SAMPLE_BYTES
from uplink.codec.bits import (
    _LIMIT,
    I64,
    M_F32,
    M_MUL,
    M_RAW,
    MAX_K,
    U64,
    CodecError,
    _count,
    _put_blob,
    _put_ints,
    _put_u64,
    _Reader,
)
from uplink.codec.grouped import _get_grouped, _put_grouped

_POW = np.array([10.0**k for k in range(MAX_K + 1)])
_INV = np.array([10.0**-k for k in range(MAX_K + 1)])


def _choose_modes(vs: npt.NDArray[np.float64], starts: I64, counts: I64,
                  per: int = 8) -> npt.NDArray[np.uint8]:
    """Per channel (contiguous groups of ``vs``), the cheapest exact mode byte.

    All candidates (mode x k) are tried at once on up to ``per`` samples spread over
    each channel; the caller checks the full data, sends what a mode misses as
    exceptions, and retries a channel on all its samples when the guess was poor.
    """
    n_ch = len(starts)
    m = np.minimum(counts, per)
    first = np.cumsum(m) - m
    rep = np.repeat(np.arange(n_ch), m)
    j = np.arange(int(m.sum())) - first[rep]
    idx = starts[rep] + (j * np.maximum(counts - 1, 0)[rep]) // np.maximum(m - 1, 1)[rep]
    sub = vs[idx]
    bits = sub.view(np.uint64)
    finite = np.isfinite(sub)
    with np.errstate(over="ignore", invalid="ignore"):
        t = sub * _POW[:, None]  # rows k = 0..MAX_K
        ok_range = np.abs(t) < _LIMIT
    q = np.rint(np.where(ok_range, t, 0.0))
    div = q / _POW[:, None]
    cand = np.stack((div, q * _INV[:, None], div.astype(np.float32).astype(np.float64)), axis=1)
    # a failure: finite, and not reproduced bit for bit; row = k*3 + mode
    bad = (cand.view(np.uint64) != bits) & (ok_range & finite)[:, None, :] | (~ok_range & finite)[:, None, :]
    fails = np.add.reduceat(bad.reshape(3 * (MAX_K + 1), -1), first, axis=1)
    best = np.argmin(fails, axis=0)  # smallest k with the fewest failures, then div, mul, f32
    nfin = np.add.reduceat(finite, first)
    out = (((best % 3) << 4) | (best // 3)).astype(np.uint8)
    # mostly off-grid, or nothing finite: send everything as exceptions
    out[(fails[best, np.arange(n_ch)] * 2 > nfin) | (nfin == 0)] = M_RAW << 4
    return out


def _reconstruct(q: I64, mode_s: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
    """Values from integers and per-sample mode bytes (M_RAW rows: garbage, masked later)."""
    k = mode_s & 0x0F
    mode = mode_s >> 4
    qf = q.astype(np.float64)
    if not len(mode):
        return qf
    lo, hi = int(mode.min()), int(mode.max())
    if lo == hi:  # the usual case: one mode for every channel
        if lo == M_MUL:
            return qf * _INV[k]
        r = qf / _POW[k]
        return r.astype(np.float32).astype(np.float64) if lo == M_F32 else r
    div = qf / _POW[k]
    out = np.where(mode == M_MUL, qf * _INV[k], div)
    f32 = mode == M_F32
    if f32.any():
        out[f32] = div[f32].astype(np.float32).astype(np.float64)
    return out


def _unaligned(buf: bytes | bytearray, dtype: str, itemsize: int) -> npt.NDArray[Any]:
    """A view of ``buf`` with an element starting at every byte (for gathers/scatters)."""
    return np.ndarray((max(len(buf) - itemsize + 1, 0),), dtype, buffer=buf, strides=(1,))


def _columns(buf: bytes, counts: I64) -> tuple[I64, I64, npt.NDArray[np.float64], npt.NDArray[np.uint8], I64]:
    """channel, ts, value, quality of concatenated Batch.to_bytes() blocks, in one gather each."""
    total = int(counts.sum())
    rec_start = np.cumsum(counts) - counts
    ch_pos, ts_pos, v_pos, q_pos = _positions(counts, rec_start, total)
    ch = _unaligned(buf, "<i4", 4)[ch_pos].astype(np.int64)
    ts = _unaligned(buf, "<i8", 8)[ts_pos].astype(np.int64)
    val = _unaligned(buf, "<f8", 8)[v_pos].astype(np.float64)
    qual = np.frombuffer(buf, np.uint8)[q_pos]
    return ch, ts, val, qual, rec_start


def _positions(counts: I64, rec_start: I64, total: int) -> tuple[I64, I64, I64, I64]:
    """Byte offsets of each sample's channel, ts, value and quality in concatenated batches.

    Sample j of a record at byte o with n samples: channel at o+4j, ts at o+4n+8j,
    value at o+12n+8j, quality at o+20n+j (Batch.to_bytes layout).
    """
    j = np.arange(total, dtype=np.int64) - np.repeat(rec_start, counts)
    o = np.repeat(SAMPLE_BYTES * rec_start, counts)
    n4 = np.repeat(4 * counts, counts)
    ch_pos = o + 4 * j
    ts_pos = ch_pos + n4 + 4 * j
    v_pos = ts_pos + 2 * n4
    q_pos = o + 5 * n4 + j
    return ch_pos, ts_pos, v_pos, q_pos


def _ts_range_ok(datas: Sequence[bytes], n_a: I64, ci: I64, tmin_a: I64,
                 tmax_a: I64) -> npt.NDArray[np.bool_]:
    counts = n_a[ci]
    _, ts, _, _, rec_start = _columns(b"".join([datas[i] for i in ci.tolist()]), counts)
    lo_ok = np.minimum.reduceat(ts, rec_start) == tmin_a[ci]
    return lo_ok & (np.maximum.reduceat(ts, rec_start) == tmax_a[ci])


def _gather_samples(datas: Sequence[bytes], ns: Sequence[int], ci: I64, tmin_a: I64,
                    tmax_a: I64) -> tuple[Any, ...] | None:
    """Columns of the sample records ``ci``, or None if one's ts_min/ts_max disagree."""
    if len(ci) == len(datas):
        cdatas, cns = datas, ns
    else:
        il = ci.tolist()
        cdatas = [datas[i] for i in il]
        cns = [ns[i] for i in il]
    counts = np.array(cns, np.int64)
    ch, ts, val, qual, rec_start = _columns(b"".join(cdatas), counts)
    if not ((np.minimum.reduceat(ts, rec_start) == tmin_a[ci]).all()
            and (np.maximum.reduceat(ts, rec_start) == tmax_a[ci]).all()):
        return None
    pat_len, pat_ch, pid = _patterns(ch, counts, rec_start)
    if pid is None:  # a hash collision (never seen): find the patterns the slow, exact way
        patterns: dict[bytes, int] = {}
        pid_l = [patterns.setdefault(d[:4 * n], len(patterns)) for d, n in zip(cdatas, cns, strict=True)]
        pat_ch = np.frombuffer(b"".join(patterns), "<i4").astype(np.int64)
        pat_len = np.fromiter(map(len, patterns), np.int64, len(patterns)) // 4
        pid = np.array(pid_l, np.int64)
    return pat_len, pat_ch, pid, counts, rec_start, ch, ts, val, qual


_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)
_hash_pow = np.ones(1, np.uint64)


def _powers(n: int) -> U64:
    """_HASH_MUL ** j (mod 2**64) for j < n, cached."""
    global _hash_pow
    if len(_hash_pow) < n:
        p = np.full(max(n, 2 * len(_hash_pow)), _HASH_MUL, np.uint64)
        p[0] = 1
        _hash_pow = np.cumprod(p, dtype=np.uint64)  # wraps mod 2**64, as wanted
    return _hash_pow[:n]


def _patterns(ch: I64, counts: I64, rec_start: I64) -> tuple[I64, I64, I64 | None]:
    """Distinct channel lists of the records: (lengths, channels, pattern id per record).

    Records are grouped by a 64-bit polynomial hash of their channel list, then every
    record is compared with its pattern; None for the pattern ids on a collision.
    """
    total = len(ch)
    j = np.arange(total, dtype=np.int64) - np.repeat(rec_start, counts)
    with np.errstate(over="ignore"):
        terms = (ch.view(np.uint64) + np.uint64(1)) * _powers(int(counts.max()))[j]
        h = np.add.reduceat(terms, rec_start) ^ counts.view(np.uint64)
    # ids in order of first use
    uniq, first_u, inv = np.unique(h, return_index=True, return_inverse=True)
    by_first = np.argsort(first_u)
    rank = np.empty(len(uniq), np.int64)
    rank[by_first] = np.arange(len(uniq))
    pid = rank[inv.reshape(-1)]
    first = first_u[by_first]
    pat_len = counts[first]
    pat_off = np.cumsum(pat_len) - pat_len
    src = np.repeat(rec_start[first] - pat_off, pat_len) + np.arange(int(pat_len.sum()))
    pat_ch = ch[src]
    if not (counts == pat_len[pid]).all():
        return pat_len, pat_ch, None
    if not (pat_ch[np.repeat(pat_off[pid] - rec_start, counts) + np.arange(total)] == ch).all():
        return pat_len, pat_ch, None
    return pat_len, pat_ch, pid


def _encode_samples(out: list[bytes], pat_len: I64, pat_ch: I64, pid: I64, counts: I64, rec_start: I64,
                    ch: I64, ts: I64, val: npt.NDArray[np.float64], qual: npt.NDArray[np.uint8], *,
                    sizes: dict[str, int] | None = None) -> None:
    at = len(out)
    # patterns: lengths and channel ids (delta coded along the concatenation)
    _put_ints(out, pat_len)
    _put_ints(out, np.diff(pat_ch, prepend=np.int64(0)))
    _put_ints(out, pid)
    # record timestamps, along each pattern's records (a device's poll clock)
    t_rec = ts[rec_start]
    if len(pat_len) > 1:
        by_pat = np.argsort(pid, kind="stable")
        xs = [t_rec[by_pat]]
        cs = [np.bincount(pid, minlength=len(pat_len)).astype(np.int64)]
    else:
        xs = [t_rec]
        cs = [np.array([len(t_rec)], np.int64)]
    # records whose samples are not all stamped alike: those samples' ts, per channel
    inv, n_ch = _dense(ch)
    order = np.argsort(inv, kind="stable")
    mixed = np.minimum.reduceat(ts, rec_start) != np.maximum.reduceat(ts, rec_start)
    _put_u64(out, mixed.astype(np.uint64))
    if mixed.any():
        sel = order[np.repeat(mixed, counts)[order]]
        # as offsets from the record's time: a node's lag behind the scan is steady
        off = ts - np.repeat(t_rec, counts)
        xs.append(off[sel])
        cs.append(_nonzero_counts(inv[sel], n_ch))

    # values, regrouped per channel
    vs = val[order]
    ch_count = np.bincount(inv, minlength=n_ch).astype(np.int64)
    ch_start = np.cumsum(ch_count) - ch_count
    # each channel's mode from the previous envelopes when known (instruments keep their
    # resolution), else found from a few spread samples
    ch_ids = vs[:0].astype(np.int64) if not n_ch else ch[order[ch_start]]
    known = np.array([_MODE_CACHE.get(c, -1) for c in ch_ids.tolist()], np.int64)
    fresh = known < 0
    mode = known.astype(np.uint8)
    if fresh.any():
        mode[fresh] = _choose_modes(vs, ch_start[fresh], ch_count[fresh])
    mode_s = np.repeat(mode, ch_count)
    q, exc = _quantize(vs, mode_s)
    # a poor guess from the spread samples (or a mode that no longer fits): retry those
    # channels on all their samples; likewise a remembered k finer than the values need
    n_exc = np.add.reduceat(exc & np.isfinite(vs), ch_start)
    # (a fresh guess missing even a few: q / 10 and q * 0.1 agree on most values, not all)
    poor = ((n_exc * 8 > ch_count) | fresh & (n_exc > 0)) & ((mode >> 4) != M_RAW)
    if not fresh.all():
        coarse = np.add.reduceat((q % 10 == 0) | exc, ch_start) == ch_count
        poor |= ~fresh & (((mode & 0x0F) > 0) & coarse | ((mode >> 4) == M_RAW))
    retry = np.flatnonzero(poor)
    if len(retry):
        for c in retry.tolist():
            s, n = int(ch_start[c]), int(ch_count[c])
            mode[c] = _choose_modes(vs[s:s + n], np.zeros(1, np.int64), np.array([n]), per=n)[0]
        mode_s = np.repeat(mode, ch_count)
        q, exc = _quantize(vs, mode_s)
    if len(_MODE_CACHE) > 1 << 16:  # channel ids are int32: keep the memory bounded
        _MODE_CACHE.clear()
    _MODE_CACHE.update(zip(ch_ids.tolist(), mode.tolist(), strict=True))
    out.append(mode.tobytes())
    out.append(qual[order].tobytes())
    _put_blob(out, np.packbits(exc).tobytes())
    if exc.any():
        keep = ~exc
        xs.append(q[keep])
        cs.append(_nonzero_counts(np.repeat(np.arange(n_ch), ch_count)[keep], n_ch))
    else:
        xs.append(q)
        cs.append(ch_count)
    if sizes is not None:
        _count(sizes, "sample_layout", out, at)  # patterns, pattern ids, modes, qualities, exception bits
        at = len(out)
    # every integer series in one go: record times, sample time offsets, values
    _put_grouped(out, np.concatenate(xs), np.concatenate(cs), sizes=sizes,
                 n_time_groups=sum(len(c) for c in cs[:-1]), segments=[len(c) for c in cs])
    ev = vs[exc].view(np.uint64)
    at2 = len(out)
    _put_u64(out, ev ^ np.concatenate((np.zeros(1, np.uint64), ev[:-1])))
    if sizes is not None:
        _count(sizes, "exception_values", out, at2)


# channel id -> mode byte last chosen: only a starting guess (the encoder checks it on the
# data and chooses again when it does not fit); shared by threads, races are harmless
_MODE_CACHE: dict[int, int] = {}


def _quantize(vs: npt.NDArray[np.float64],
              mode_s: npt.NDArray[np.uint8]) -> tuple[I64, npt.NDArray[np.bool_]]:
    """Integers of every sample under its channel's mode, and which samples are exceptions."""
    with np.errstate(over="ignore", invalid="ignore"):
        t = vs * _POW[mode_s & 0x0F]
        fin = np.abs(t) < _LIMIT
    q = np.rint(np.where(fin, t, 0.0)).astype(np.int64)
    rec = _reconstruct(q, mode_s)
    exc = (rec.view(np.uint64) != vs.view(np.uint64)) | ~fin | ((mode_s >> 4) == M_RAW)
    return q, exc


def _nonzero_counts(group: npt.NDArray[Any], n: int) -> I64:
    """Sizes of the non-empty groups of a sorted group-id array."""
    c = np.bincount(group, minlength=n).astype(np.int64)
    return c[c > 0]


def _dense(ch: I64) -> tuple[npt.NDArray[np.intp], int]:
    """Channel ids -> 0..C-1 in ascending id order."""
    if len(ch) and ch.min() >= 0 and ch.max() < 1 << 20:
        present = np.zeros(int(ch.max()) + 1, bool)
        present[ch] = True
        remap = np.cumsum(present) - 1
        inv = remap[ch]
        n = int(present.sum())
        return (inv.astype(np.uint16) if n < 1 << 16 else inv), n
    uniq, inv = np.unique(ch, return_inverse=True)
    return inv, len(uniq)


def _decode_samples(rd: _Reader, n_col: int) -> list[tuple[int, int, int, bytes]]:
    pat_len = rd.ints("pattern lengths")
    if (pat_len <= 0).any() or int(pat_len.sum()) > len(rd.buf):
        raise CodecError("bad pattern lengths")
    pat_ch = np.cumsum(rd.ints("pattern channels", int(pat_len.sum())), dtype=np.int64)
    if len(pat_ch) and (pat_ch.min() < -(1 << 31) or pat_ch.max() >= 1 << 31):
        raise CodecError("channel id out of int32 range")
    pid = rd.ints("pattern ids", n_col)
    if pid.min() < 0 or pid.max() >= len(pat_len):
        raise CodecError("pattern id out of range")
    counts = pat_len[pid]
    total = int(counts.sum())
    if total > 8 * len(rd.buf) + 64:  # every sample costs at least its exception bit
        raise CodecError(f"{total} samples cannot fit in {len(rd.buf)} bytes")
    rec_start = np.cumsum(counts) - counts
    pat_cnt = np.bincount(pid, minlength=len(pat_len)).astype(np.int64)
    pat_off = np.cumsum(pat_len) - pat_len
    ch = pat_ch[np.repeat(pat_off[pid] - rec_start, counts) + np.arange(total)]
    inv, n_ch = _dense(ch)
    order = np.argsort(inv, kind="stable")
    mixed = rd.u64("mixed ts", n_col).astype(bool)
    sel = order[np.repeat(mixed, counts)[order]] if mixed.any() else None
    off_counts = _nonzero_counts(inv[sel], n_ch) if sel is not None else np.zeros(0, np.int64)
    ch_count = np.bincount(inv, minlength=n_ch).astype(np.int64)
    mode = np.frombuffer(rd.take(n_ch, "channel modes"), np.uint8)
    if ((mode >> 4) > M_RAW).any() or ((mode & 0x0F) > MAX_K).any():
        raise CodecError("unknown value mode")
    qual_s = np.frombuffer(rd.take(total, "quality"), np.uint8)
    packed = rd.blob("exceptions")
    if len(packed) != (total + 7) // 8:
        raise CodecError(f"exception mask of {len(packed)} bytes for {total} samples")
    exc = np.unpackbits(np.frombuffer(packed, np.uint8), count=total).astype(bool)
    n_exc = int(exc.sum())
    keep = ~exc
    val_counts = _nonzero_counts(np.repeat(np.arange(n_ch), ch_count)[keep], n_ch)
    allx = _get_grouped(rd, np.concatenate((pat_cnt, off_counts, val_counts)), "integers",
                        [len(pat_cnt), len(off_counts), len(val_counts)])
    t_sorted = allx[:n_col]
    q = allx[n_col + int(off_counts.sum()):]
    if len(pat_len) > 1:
        t_rec = np.empty(n_col, np.int64)
        t_rec[np.argsort(pid, kind="stable")] = t_sorted
    else:
        t_rec = t_sorted
    ts = np.repeat(t_rec, counts)
    if sel is not None:
        ts[sel] += allx[n_col:n_col + int(off_counts.sum())]
    xe = rd.u64("exception values", n_exc)
    mode_s = np.repeat(mode, ch_count)
    vs = np.empty(total, np.float64)
    vs[keep] = _reconstruct(q, mode_s[keep])
    vs[exc] = np.bitwise_xor.accumulate(xe).view(np.float64) if n_exc else xe.view(np.float64)
    val = np.empty(total, np.float64)
    val[order] = vs
    qual = np.empty(total, np.uint8)
    qual[order] = qual_s

    tmin = np.minimum.reduceat(ts, rec_start).tolist()
    tmax = np.maximum.reduceat(ts, rec_start).tolist()
    # rebuild every record's Batch.to_bytes() layout with one scatter per column
    buf = bytearray(SAMPLE_BYTES * total)
    ch_pos, ts_pos, v_pos, q_pos = _positions(counts, rec_start, total)
    _unaligned(buf, "<i4", 4)[ch_pos] = ch
    _unaligned(buf, "<i8", 8)[ts_pos] = ts
    _unaligned(buf, "<f8", 8)[v_pos] = val
    np.frombuffer(buf, np.uint8)[q_pos] = qual
    data = bytes(buf)
    starts = (SAMPLE_BYTES * rec_start).tolist()
    return [(n, tmin[r], tmax[r], data[s:s + SAMPLE_BYTES * n])
            for r, (s, n) in enumerate(zip(starts, counts.tolist(), strict=True))]
