"""Compact, lossless encoding of a range of journal records for the uplink.

API: ``encode(records) -> bytes``, ``decode(data, *, max_size=...) -> list[Record]``,
``CodecError`` (a ValueError). Pure: no I/O, no clock. The format (version 2) is
specified in docs/uplink-protocol.md; in short:

- Every record keeps its sequence number, kind, ts_min, ts_max, n and data bit-exactly.
  Events the journal wrote (canonical JSON objects: alarms, register changes, ...)
  travel as typed columns of their fields: keys and enum values from a table of known
  strings, the event's time as a reference to an earlier record's (or sample's) time,
  ids as a prefix and a counter, a channel's index/kind/unit once per channel, the
  state fields as rows that repeat; anything else (any future kind, odd bytes)
  travels *opaque*: its bytes as they are, lengths in a column, ts and n as
  delta-coded integer columns.
- Sample records are pooled into columns. A record's channel list is a *pattern*
  (a device polls the same channels every cycle), sent once per envelope; each
  record then costs a pattern id and its timestamp, coded along the records of the
  same pattern (a steady poll clock leaves only its jitter). Samples take their
  record's timestamp; records whose samples differ (OPC-UA source times) send
  their samples' timestamps per channel.
- Values are regrouped per channel. Each channel gets a reconstruction mode found
  from its data: ``q / 10**k``, ``q * 10**-k`` (how ``raw * scale`` comes out) or
  ``float32(q / 10**k)`` (float32 registers), k = 0..9, with q an integer. A value
  the mode does not reproduce bit for bit (NaN of a bad sample, inf, -0.0, a value
  off the grid) is an *exception*, sent as its
  IEEE bits XORed with the previous exception's (Gorilla-like). Lossless for every
  float64, NaN payloads included.
- Series in groups (a channel's integers, a device's record times, a channel's time
  offsets) go in one block: per group an anchor and the power of ten dividing all its
  differences (µs clocks with an ns phase), a least-squares line, residuals of order
  0, 1 or 2 (whichever is smallest), Rice-coded with a parameter per group. Other
  integer columns are zigzagged, cut to the narrowest of 1/2/4/8 bytes and
  byte-shuffled; the whole is zstd'ed with a dictionary of typical events.
"""

from __future__ import annotations

import itertools
import json
import re
import struct
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import zstandard

from gateway.core.batch import SAMPLE_BYTES
from gateway.core.record import EVENT, SAMPLES, Record

FORMAT = 2
L_OPAQUE, L_SAMPLES, L_EVENT = 0, 1, 2  # how a record travels
ZSTD_LEVEL = 3
MAX_K = 9

# value reconstruction modes (high nibble of the per-channel mode byte; low nibble = k)
M_DIV, M_MUL, M_F32, M_RAW = 0, 1, 2, 3
_POW = np.array([10.0**k for k in range(MAX_K + 1)])
_INV = np.array([10.0**-k for k in range(MAX_K + 1)])
_LIMIT = 2.0**53  # |q| below this converts float <-> int64 exactly

# A zstd dictionary of what journal events look like (raw content, part of format 1:
# changing it needs a new FORMAT). An envelope holds a handful of events, too few for
# zstd to learn their keys from; with this the first alarm of an envelope is cheap too.
# Most likely strings last: zstd reaches the end of a dictionary with the shortest offsets.
ZSTD_DICT = (
    b'{"type":"reminder","ts":1700000000000000000,"register":"","id":"","due":"","days":0}'
    b'{"type":"register","ts":1700000000000000000,"register":"hidden_danger","id":"","version":1,'
    b'"action":"update","actor":"admin","state":"reported","archived":false,"data":{},"changed":[]}'
    b'{"type":"gap","ts":1700000000000000000,"from_seq":1,"to_seq":2,"samples":0,"events":0,'
    b'"ts_from":1700000000000000000,"ts_to":1700000000000000000,"reason":"quota","consumers":["uplink"]}'
    b'{"type":"alarm","id":null,"ts":1700000000000000000,"channel":"","index":0,"kind":"status",'
    b'"unit":null,"rule":"maintenance","level":"maintenance","code":1,"transition":"suppress",'
    b'"state":"suppressed","priority":"low","value":null,"limit":null,"who":"admin","reason":""}'
    + '"kind":"temperature","unit":"°C""kind":"pressure","unit":"MPa""kind":"level","unit":"m"'.encode()
    + '"kind":"oxygen","unit":"%vol""kind":"dust","unit":"mg/m³""kind":"noise","unit":"dB(A)"'.encode()
    + b'"rule":"rate""rule":"frozen","level":"frozen""rule":"twa""rule":"stel""priority":"critical"'
    b'"transition":"escalate","state":"active_unacked","priority":"high""transition":"ack"'
    b'"transition":"clear","state":"cleared_unacked""state":"active_acked""state":"normal"'
    b'"rule":"quality","level":"bad","code":1,"transition":"raise","state":"active_unacked"'
    b'{"type":"alarm","id":"gw-1","ts":1700000000000000000,"channel":"GT-101","index":0,"kind":"gas",'
    b'"unit":"ppm","rule":"limit","level":"h","code":1,"transition":"raise","state":"active_unacked",'
    b'"priority":"medium","value":22.0,"limit":20.0,"who":null}'
    b'{"type":"alarm","id":"gw-2","ts":1700000000000000000,"channel":"GT-101","index":0,"kind":"gas",'
    b'"unit":"%LEL","rule":"limit","level":"h","code":0,"transition":"clear","state":"cleared_unacked",'
    b'"priority":"medium","value":1.0,"limit":20.0,"who":null}'
)
_zdict = zstandard.ZstdCompressionDict(ZSTD_DICT, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
_local = threading.local()  # zstd contexts are not thread-safe; one per thread and level


def _compressor(level: int) -> zstandard.ZstdCompressor:
    c: dict[int, zstandard.ZstdCompressor] = _local.__dict__.setdefault("c", {})
    if level not in c:
        c[level] = zstandard.ZstdCompressor(level=level, dict_data=_zdict, write_dict_id=False)
    return c[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor(dict_data=_zdict)
    return d


I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]


class CodecError(ValueError):
    """The bytes are not a valid encoding (truncated, corrupt, or larger than allowed)."""


# ------------------------------------------------------------------ integer columns

def _zigzag(x: I64) -> U64:
    return ((x << 1) ^ (x >> 63)).view(np.uint64)


def _unzigzag(z: U64) -> I64:
    return ((z >> np.uint64(1)) ^ (np.uint64(0) - (z & np.uint64(1)))).view(np.int64)


def _width(maxval: int) -> int:
    if maxval == 0:
        return 0
    if maxval < 1 << 8:
        return 1
    if maxval < 1 << 16:
        return 2
    if maxval < 1 << 32:
        return 4
    return 8


def write_varint(n: int) -> bytes:
    """``n`` (0 ≤ n < 2**64) as a minimal LEB128 varint."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int, bool]:
    """The LEB128 varint at ``pos`` in ``buf``: its value, the position after it, and whether
    it is a minimal 64-bit encoding. Past the end of ``buf``: IndexError; over ten bytes:
    OverflowError (each with the position reached)."""
    n = shift = 0
    while True:
        if pos >= len(buf):
            raise IndexError(pos)
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift > 63:
            raise OverflowError(pos)
    return n, pos, n <= 0xFFFF_FFFF_FFFF_FFFF and not (b == 0 and shift)


def _put_u64(out: list[bytes], z: U64) -> None:
    """Unsigned column: count, width byte, byte-shuffled planes."""
    n = len(z)
    w = _width(int(z.max())) if n else 0
    out.append(write_varint(n) + bytes([w]))
    if w:
        planes = z.astype(f"<u{w}").view(np.uint8).reshape(n, w)
        out.append(planes.T.tobytes())


def _put_ints(out: list[bytes], x: I64) -> None:
    _put_u64(out, _zigzag(np.asarray(x, dtype=np.int64)))


_SHIFTS = (7 * np.arange(10)).astype(np.uint64)


def _put_zvars(out: list[bytes], x: I64) -> None:
    """Small side columns: zigzag varints (a few big values do not widen the rest)."""
    z = _zigzag(np.asarray(x, dtype=np.int64))
    top = int(z.max()) if len(z) else 0
    if top < 0x80:  # the usual record table: one byte each
        out.append(z.astype(np.uint8).tobytes())
        return
    big = np.flatnonzero(z >= np.uint64(0x80))
    if len(big) <= 8:  # a few wide values among small ones (a gap in the sequence)
        small = z.astype(np.uint8).tobytes()
        parts: list[bytes] = []
        at = 0
        for i, v in zip(big.tolist(), z[big].tolist(), strict=True):
            parts += (small[at:i], write_varint(v))
            at = i + 1
        parts.append(small[at:])
        out.append(b"".join(parts))
        return
    w = (top.bit_length() + 6) // 7  # chunks the biggest value needs
    nb = np.ones(len(z), np.int64)
    for j in range(1, w):
        nb += z >= np.uint64(1 << (7 * j))
    chunks = (z[:, None] >> _SHIFTS[None, :w]) & np.uint64(0x7F)
    jj = _SHIFTS[:w].astype(np.int64)[None, :] // 7
    b = (chunks | ((jj < (nb - 1)[:, None]).astype(np.uint64) << np.uint64(7))).astype(np.uint8)
    out.append(b[jj < nb[:, None]].tobytes())


def _put_blob(out: list[bytes], b: bytes) -> None:
    out.append(write_varint(len(b)))
    out.append(b)


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes):
        self.buf = buf
        self.pos = 0

    def varint(self, what: str) -> int:
        try:
            n, self.pos, _ = read_varint(self.buf, self.pos)
        except IndexError as e:
            raise CodecError(f"{what}: truncated at byte {e.args[0]}") from None
        except OverflowError as e:
            raise CodecError(f"{what}: varint too long at byte {e.args[0]}") from None
        return n

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise CodecError(f"{what}: needs {n} bytes at {self.pos}, only {len(self.buf) - self.pos} left")
        mv = memoryview(self.buf)[self.pos:end]
        self.pos = end
        return mv

    def u64(self, what: str, expect: int | None = None) -> U64:
        n = self.varint(what)
        if expect is not None and n != expect:
            raise CodecError(f"{what}: {n} values where {expect} were expected")
        w = self.take(1, what)[0]
        if w == 0:
            return np.zeros(n, np.uint64)
        if w not in (1, 2, 4, 8):
            raise CodecError(f"{what}: bad integer width {w}")
        raw = np.frombuffer(self.take(n * w, what), np.uint8).reshape(w, n)
        return np.ascontiguousarray(raw.T).view(f"<u{w}").reshape(n).astype(np.uint64)

    def ints(self, what: str, expect: int | None = None) -> I64:
        return _unzigzag(self.u64(what, expect))

    def zvars(self, n: int, what: str) -> I64:
        """n zigzag varints (vectorized)."""
        if not n:
            return np.zeros(0, np.int64)
        avail = min(len(self.buf) - self.pos, 10 * n)
        b = np.frombuffer(self.buf, np.uint8, count=avail, offset=self.pos)
        term = np.flatnonzero(b < 0x80)[:n]
        if len(term) < n:
            raise CodecError(f"{what}: {len(term)} varints where {n} were expected")
        end = int(term[-1]) + 1
        starts = np.concatenate((np.zeros(1, np.int64), term[:-1] + 1))
        lens = term - starts + 1
        if lens.max() > 10:
            raise CodecError(f"{what}: varint too long")
        shift = ((np.arange(end) - np.repeat(starts, lens)) * 7).astype(np.uint64)
        vals = np.add.reduceat((b[:end] & 0x7F).astype(np.uint64) << shift, starts)
        self.pos += end
        return _unzigzag(vals)

    def blob(self, what: str) -> bytes:
        return bytes(self.take(self.varint(what), what))


def _dod(t: I64) -> I64:
    """Delta of deltas (wrapping int64 arithmetic, undone exactly by _undod)."""
    d = np.diff(t, prepend=np.int64(0))
    return np.diff(d, prepend=np.int64(0))


def _undod(dd: I64) -> I64:
    return np.cumsum(np.cumsum(dd, dtype=np.int64), dtype=np.int64)


# --------------------------------------------------------------- grouped residuals
#
# Series that come in groups (the values of one channel, the record times of one
# pattern) are coded per group as residuals of order 0 (x - base), 1 (deltas) or 2
# (deltas of deltas), whichever is smallest for that group, then Rice-coded with the
# group's own parameter k: a unary quotient stream and a remainder stream of k bits
# each, both bit-packed. Quotients of QMAX or more escape to a raw 64-bit column.

QMAX = 24
K_ZERO = 63  # the Rice parameter of a group whose residuals are all 0: no bits sent
_P10 = np.array([10**k for k in range(1, 10)], np.int64)  # divisors tried, 10 .. 10**9
_P10I = np.array([10**k for k in range(10)], np.int64)
MAX_EVENT_BYTES = 256 << 20


def _group_starts(counts: I64) -> I64:
    return np.cumsum(counts) - counts


def _gcumsum(x: I64, starts: I64, counts: I64) -> I64:
    """Cumulative sum restarting at each group (wrapping int64)."""
    cs = np.cumsum(x, dtype=np.int64)
    return cs - np.repeat(cs[starts] - x[starts], counts)


def _gdiff(x: I64, starts: I64) -> I64:
    d = x.copy()
    d[1:] -= x[:-1]
    d[starts] = x[starts]
    return d


def _rice_params(z: U64, starts: I64, counts: I64) -> npt.NDArray[np.uint8]:
    """Per group, the Rice parameter that codes ``z`` (zigzagged residuals) in fewest bits."""
    # the geometric distribution's best k from the mean (floor(log2(mean * ln 2))), or one more
    mean = np.add.reduceat(z.astype(np.float64), starts) / counts
    k0 = np.minimum(np.floor(np.log2(np.maximum(mean * 0.6931, 1.0))), 60).astype(np.int64)
    cand = k0[None, :] + np.arange(2)[:, None]
    ks = np.repeat(cand, counts, axis=1).astype(np.uint64)
    qq = (z[None, :] >> ks).astype(np.float64)
    bits = np.where(qq >= QMAX, QMAX + 65.0, qq + 1.0 + ks)
    best = np.argmin(np.add.reduceat(bits, starts, axis=1), axis=0)
    return cand[best, np.arange(len(starts))].astype(np.uint8)


def _put_rice(out: list[bytes], z: U64, kg: npt.NDArray[np.uint8], counts: I64) -> None:
    """Rice code with a parameter per group (``kg``) of contiguous groups of ``counts``."""
    n = len(z)
    ks = np.repeat(kg.astype(np.uint64), counts)
    q = z >> ks
    esc = q >= QMAX
    qc = np.where(esc, np.uint64(QMAX), q).astype(np.int64)
    ends = np.cumsum(qc + 1) - 1
    ubits = np.zeros(int(ends[-1]) + 1 if n else 0, np.uint8)
    ubits[ends] = 1
    # remainders: each value's low k bits, most significant first (escapes write zeros)
    w = int(ks.max()) if n else 0
    if w:
        rem = np.where(esc, np.uint64(0), z)
        bits = np.unpackbits(rem.astype(">u8").view(np.uint8).reshape(n, 8), axis=1)[:, 64 - w:]
        # each group's mask of its k low bits, repeated (cheaper than comparing per value)
        gmask = np.arange(w)[None, :] >= (w - kg.astype(np.int64))[:, None]
        rbits = bits[np.repeat(gmask, counts, axis=0)]
    else:
        rbits = np.zeros(0, np.uint8)
    _put_u64(out, z[esc])
    _put_blob(out, np.packbits(ubits).tobytes())
    _put_blob(out, np.packbits(rbits).tobytes())


def _get_rice(rd: _Reader, n: int, ks: U64, what: str) -> U64:
    escaped = rd.u64(what + " escapes")
    ubits = np.unpackbits(np.frombuffer(rd.blob(what + " quotients"), np.uint8))
    ones = np.flatnonzero(ubits)
    if len(ones) != n:
        raise CodecError(f"{what}: {len(ones)} quotients for {n} values")
    qc = np.diff(ones, prepend=np.int64(-1)) - 1
    if n and qc.max() > QMAX:
        raise CodecError(f"{what}: quotient above {QMAX}")
    esc = qc == QMAX
    if int(esc.sum()) != len(escaped):
        raise CodecError(f"{what}: {len(escaped)} escapes where {int(esc.sum())} are marked")
    need = int(ks.sum())
    rbytes = np.frombuffer(rd.blob(what + " remainders"), np.uint8)
    if len(rbytes) != (need + 7) // 8:
        raise CodecError(f"{what}: remainder stream of {len(rbytes)} bytes, {need} bits expected")
    w = int(ks.max()) if n else 0
    r = np.zeros(n, np.uint64)
    if w:
        full = np.zeros((n, 64), np.uint8)
        part = np.zeros((n, w), np.uint8)
        part[np.arange(w)[None, :] >= (w - ks.astype(np.int64))[:, None]] = np.unpackbits(rbytes, count=need)
        full[:, 64 - w:] = part
        r = np.packbits(full, axis=1).view(">u8").reshape(n).astype(np.uint64)
    z = (qc.astype(np.uint64) << ks) | r
    z[esc] = escaped
    return z


def _put_grouped(out: list[bytes], x: I64, counts: I64, *, sizes: dict[str, int] | None = None,
                 n_time_groups: int = 0, segments: Sequence[int] = ()) -> None:
    """Integers in contiguous groups of ``counts`` (all > 0): anchor, scale, trend, order, Rice.

    Per group: its first value is the anchor A; the differences x - A are divided by
    the largest power of ten that divides them all (timestamps in µs or 100 ns ticks
    stored as ns, whatever the phase); the result y is detrended by its least-squares
    line B + i*D (i = index in the group), so that order 0 codes a steady poll clock's
    jitter or a drifting sensor's noise, order 1 its steps, order 2 the change of its
    steps; the residuals are Rice-coded with the group's own parameter.
    """
    if not len(x):
        return
    n = len(x)
    starts = _group_starts(counts)
    rep = np.repeat(np.arange(len(counts)), counts)
    anchor = x[starts]
    d = x - anchor[rep]
    g = np.gcd.reduceat(d, starts)
    e = ((g[None, :] % _P10[:, None]) == 0).sum(axis=0).astype(np.uint8)  # 10**k | g implies 10**(k-1) | g
    e[g == 0] = 0
    if e.any():
        anchor[e == 0] = 0
        y = (x - anchor[rep]) // _P10I[e][rep]
    else:
        anchor[:] = 0
        y = x
    i = np.arange(n, dtype=np.int64) - starts[rep]
    yf = y.astype(np.float64)
    cf = counts.astype(np.float64)
    ibar = (cf - 1.0) / 2.0
    sy = np.add.reduceat(yf, starts)
    sxy = np.add.reduceat(i * yf, starts) - ibar * sy
    sxx = cf * (cf * cf - 1.0) / 12.0
    lim = 2.0**62  # keep the trend parameters in int64 range
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(counts > 1, sxy / np.maximum(sxx, 1.0), 0.0)
    slim = lim / _P10I[e]  # the slope times 10**e (sent) stays in range too
    slope = np.rint(np.clip(np.nan_to_num(slope), -slim, slim))
    base = np.rint(np.clip(np.nan_to_num(sy / cf - slope * ibar), -lim, lim))
    b = base.astype(np.int64)
    dd = slope.astype(np.int64)
    r0 = y - b[rep] - i * dd[rep]
    r1 = _gdiff(r0, starts)
    r2 = _gdiff(r1, starts)
    res = np.stack((r0, r1, r2))
    cost = np.add.reduceat(np.abs(res.astype(np.float64)), starts, axis=1)
    order = np.argmin(cost, axis=0)
    r = res[order[rep], np.arange(n)]
    z = _zigzag(r)
    k = _rice_params(z, starts, counts)
    zero = np.maximum.reduceat(z, starts) == 0  # a constant channel, an unmoving offset
    k[zero] = K_ZERO
    out.append((order.astype(np.uint8) << 6 | k).tobytes())
    out.append(e.tobytes())
    scaled = e > 0  # other groups: anchor 0, their base is the level
    # side columns, in the series' own units, as differences to the previous group of the
    # same segment (record times, time offsets, values): each group's level (its anchor
    # when scaled, else its base), its slope times 10**e; then the scaled groups' bases
    seg_starts = _group_starts(np.asarray(segments, np.int64)[np.asarray(segments) > 0]) if segments \
        else np.zeros(1, np.int64)
    level = np.where(scaled, anchor, b)
    _put_zvars(out, np.concatenate((_gdiff(level, seg_starts), _gdiff(dd * _P10I[e], seg_starts),
                                    b[scaled])))
    if sizes is not None:
        sizes["grouped_params"] = sizes.get("grouped_params", 0) + sum(map(len, out[-3:]))
        at = len(out)
    if zero.any():  # groups of zeros send no bits at all
        live = ~zero
        _put_rice(out, z[live[rep]], k[live], counts[live])
    else:
        _put_rice(out, z, k, counts)
    if sizes is not None:
        _count(sizes, "grouped_rice", out, at)
        # the part of the Rice bits spent on record times and sample time offsets
        n_t = int(counts[:n_time_groups].sum()) if n_time_groups else 0
        live_t = ~zero[rep[:n_t]]
        zt, kt = z[:n_t][live_t], k[rep[:n_t]][live_t].astype(np.uint64)
        sizes["grouped_rice_time_bits"] = sizes.get("grouped_rice_time_bits", 0) + int(
            np.minimum(zt >> kt, QMAX).sum() + len(zt) + kt.sum())


def _get_grouped(rd: _Reader, counts: I64, what: str, segments: Sequence[int] = ()) -> I64:
    g = len(counts)
    n = int(counts.sum())
    if not n:
        return np.zeros(0, np.int64)
    starts = _group_starts(counts)
    ok = np.frombuffer(rd.take(g, what + " orders"), np.uint8)
    order, k = ok >> 6, ok & 0x3F
    if order.max() > 2:
        raise CodecError(f"{what}: residual order {order.max()}")
    if ((k > 62) & (k != K_ZERO)).any():
        raise CodecError(f"{what}: rice parameter {k.max()}")
    e = np.frombuffer(rd.take(g, what + " scales"), np.uint8)
    if e.max() > 9:
        raise CodecError(f"{what}: scale 10**{e.max()}")
    scaled = e > 0
    n_sc = int(scaled.sum())
    side = rd.zvars(2 * g + n_sc, what + " levels, slopes and bases")
    seg = np.asarray(segments, np.int64)[np.asarray(segments) > 0] if segments else np.array([g], np.int64)
    if int(seg.sum()) != g:
        raise CodecError(f"{what}: segments of {int(seg.sum())} groups for {g}")
    seg_starts = _group_starts(seg)
    level = _gcumsum(side[:g], seg_starts, seg)
    p10 = _P10I[e]
    slope10 = _gcumsum(side[g:2 * g], seg_starts, seg)
    if (slope10 % p10).any():
        raise CodecError(f"{what}: slope not a multiple of its scale")
    slope = slope10 // p10
    anchor = np.where(scaled, level, 0)
    base = level.copy()
    base[scaled] = side[2 * g:]
    rep = np.repeat(np.arange(g), counts)
    live = (k != K_ZERO)[rep]
    if live.all():
        r = _unzigzag(_get_rice(rd, n, k[rep].astype(np.uint64), what))
    else:
        r = np.zeros(n, np.int64)
        r[live] = _unzigzag(_get_rice(rd, int(live.sum()), k[rep][live].astype(np.uint64), what))
    o_s = order[rep]
    d1 = np.where(o_s == 2, _gcumsum(r, starts, counts), r)
    r0 = np.where(o_s >= 1, _gcumsum(d1, starts, counts), d1)
    i = np.arange(n, dtype=np.int64) - starts[rep]
    y = r0 + base[rep] + i * slope[rep]
    return (anchor[rep] + y * _P10I[e][rep]).astype(np.int64, copy=False)


# ------------------------------------------------------------------------- values

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


# ------------------------------------------------------------------------ encode

def _unaligned(buf: bytes | bytearray, dtype: str, itemsize: int) -> npt.NDArray[Any]:
    """A view of ``buf`` with an element starting at every byte (for gathers/scatters)."""
    return np.ndarray((max(len(buf) - itemsize + 1, 0),), dtype, buffer=buf, strides=(1,))


def encode(records: Sequence[Record], *, level: int | None = None,
           sizes: dict[str, int] | None = None) -> bytes:
    """Encode records (any kinds, any sequence numbers) losslessly.

    ``level`` is zstd's; by default 6 for live-sized payloads (2 % smaller than 3 at
    about the same cost there) and 3 for big backlog ones, where speed counts more.
    ``sizes``, if given, is added each section's bytes before zstd (measurements).
    """
    return encode_summary(records, level=level, sizes=sizes)[0]


def encode_summary(records: Sequence[Record], *, level: int | None = None,
                   sizes: dict[str, int] | None = None) -> tuple[bytes, int, int, int]:
    """``encode``, plus what an envelope header states: (payload, smallest ts_min,
    largest ts_max, samples in SAMPLES records); the times are 0 without records."""
    nrec = len(records)
    out: list[bytes] = [bytes([FORMAT]), write_varint(nrec)]
    # one list per field (twice as fast as zip(*map(attrgetter(...))) on slotted records)
    seqs = [r.seq for r in records]
    kinds = [r.kind for r in records]
    tmins = [r.ts_min for r in records]
    tmaxs = [r.ts_max for r in records]
    ns = [r.n for r in records]
    datas = [r.data for r in records]
    seq_a = np.array(seqs, np.int64)
    kind_a = np.array(kinds, np.int64)
    tmin_a = np.array(tmins, np.int64)
    tmax_a = np.array(tmaxs, np.int64)
    n_a = np.array(ns, np.int64)
    len_a = np.fromiter(map(len, datas), np.int64, nrec)
    col = (kind_a == SAMPLES) & (n_a > 0) & (len_a == SAMPLE_BYTES * n_a)
    samples = None
    if col.any():
        ci = np.flatnonzero(col)
        samples = _gather_samples(datas, ns, ci, tmin_a, tmax_a)
        if samples is None:  # some batch's ts_min/ts_max differ from its samples: keep those opaque
            good = _ts_range_ok(datas, n_a, ci, tmin_a, tmax_a)
            col[ci[~good]] = False
            ci = ci[good]
            samples = _gather_samples(datas, ns, ci, tmin_a, tmax_a) if len(ci) else None

    # events whose bytes are canonical JSON objects travel as columns of their fields
    layout = col.astype(np.uint64)
    ev_objs: list[dict[str, Any]] = []
    ev_idx: list[int] = []
    for i in np.flatnonzero((kind_a == EVENT) & (n_a == 1) & (tmin_a == tmax_a)).tolist():
        obj = _canonical_event(datas[i])
        if obj is not None:
            layout[i] = L_EVENT
            ev_objs.append(obj)
            ev_idx.append(i)

    # record table
    _put_zvars(out, np.diff(seq_a, prepend=np.int64(0)) - 1)  # gaps are rare but can be wide
    _put_ints(out, kind_a)
    # layouts follow from the kinds (samples: columns, events: event columns, others
    # opaque) except for the samples and events that travel opaque: flag those
    _put_u64(out, ((layout == L_OPAQUE) & ((kind_a == SAMPLES) | (kind_a == EVENT))).astype(np.uint64))

    # opaque records
    oi = np.flatnonzero(layout == L_OPAQUE)
    if len(oi):
        t0 = tmin_a[oi]
        _put_ints(out, _dod(t0))
        _put_ints(out, tmax_a[oi] - t0)
        _put_ints(out, n_a[oi])
        _put_u64(out, len_a[oi].astype(np.uint64))
        out.append(b"".join([datas[i] for i in oi.tolist()]))
    else:
        out.append(bytes(8))  # four empty columns (count 0, width 0)
    if sizes is not None:
        _count(sizes, "records", out, 0)
    if samples is not None:
        _encode_samples(out, *samples, sizes=sizes)
    if ev_objs:
        at = len(out)
        refs, explicit = _event_refs(ev_idx, datas, ns, tmins, layout.tolist())
        _put_blob(out, _encode_events(ev_objs, [tmins[i] for i in ev_idx], refs, explicit))
        if sizes is not None:
            _count(sizes, "events", out, at)
    raw = b"".join(out)
    if level is None:
        level = 6 if len(raw) < 1 << 18 else ZSTD_LEVEL
    payload = _compressor(level).compress(raw)
    if not nrec:
        return payload, 0, 0, 0
    n_samples = int(n_a[kind_a == SAMPLES].sum())
    return payload, int(tmin_a.min()), int(tmax_a.max()), n_samples


def _count(sizes: dict[str, int], what: str, out: list[bytes], start: int) -> None:
    sizes[what] = sizes.get(what, 0) + sum(map(len, out[start:]))


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


# ------------------------------------------------------------------------ events
#
# An event whose bytes are exactly ``json.dumps(obj, separators=(",", ":"),
# ensure_ascii=False)`` of a JSON object (what the journal writes) travels as fields:
# the key lists ("shapes") once, a shape id per event, the event's time as a
# reference to an earlier record's time (an alarm carries the time of the sample
# that raised it), then each key's values in event order as a column of its own
# kind: the record time (implicit), integers as deltas, "prefix-N" strings as a
# prefix and a delta of N, or values by index into the column's dictionary, new
# values as typed literals (floats as a short decimal when one reproduces them).
# Decoding rebuilds the same bytes. Other events travel opaque.

_T_NULL, _T_TRUE, _T_FALSE, _T_INT, _T_FLOAT, _T_STR, _T_JSON, _T_BIGKNOWN = range(8)
_T_KNOWN = 0x10  # + i, i < 0x70: KNOWN[i] in one byte
_T_DEC = 0x80  # | mode << 4 | k: a float as a decimal, q follows
C_TSREC, C_INT, C_SEQSTR, C_DICT, C_PLAIN, C_CONST, C_DEP, C_GDICT = range(8)  # event column kinds
# Strings journal events are made of (keys and enum values), sent as an index into this
# table (part of codec format 2: append only, never reorder). Anything else is spelled out.
KNOWN = (
    "type", "id", "ts", "channel", "index", "kind", "unit", "rule", "level", "code", "transition",
    "state", "priority", "value", "limit", "who", "reason", "shelved", "alarm", "register", "reminder",
    "gap", "channel_table", "stale", "bad", "range", "frozen", "limit", "roc", "trend", "predict",
    "twa", "stel", "maintenance", "hh", "h", "l", "ll", "normal", "raise", "clear", "escalate",
    "deescalate", "ack", "shelve", "unshelve", "suppress", "unsuppress", "active_unacked",
    "active_acked", "cleared_unacked", "suppressed", "low", "medium", "high", "critical", "gas",
    "oxygen", "dust", "temperature", "humidity", "pressure", "level", "noise", "radiation", "status",
    "flow", "%LEL", "ppm", "%vol", "mg/m³", "°C", "%RH", "dB(A)", "µSv/h", "MPa", "kPa", "m", "m³/h",
    "from_seq", "to_seq", "samples", "events", "ts_from", "ts_to", "consumers", "quota", "age",
    "uplink", "version", "action", "actor", "data", "changed", "archived", "register", "due", "days",
    "admin", "system", "create", "update", "delete", "fingerprint",
)
# key lists of the journal's events, sent as an index into this table (append only)
KNOWN_SHAPES = (
    ("type", "id", "ts", "channel", "index", "kind", "unit", "rule", "level", "code", "transition",
     "state", "priority", "value", "limit", "who"),
    ("type", "id", "ts", "channel", "index", "kind", "unit", "rule", "level", "code", "transition",
     "state", "priority", "value", "limit", "who", "shelved"),
    ("type", "id", "ts", "channel", "index", "kind", "unit", "rule", "level", "code", "transition",
     "state", "priority", "value", "limit", "who", "reason"),
)
_SHAPE_INDEX = {sh: i for i, sh in enumerate(KNOWN_SHAPES)}
_KNOWN_INDEX: dict[str, int] = {}
for _i, _k in enumerate(KNOWN):
    _KNOWN_INDEX.setdefault(_k, _i)
_ENC = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_DEC = json.JSONDecoder()
_F64 = struct.Struct("<d")
_F32 = struct.Struct("<f")
_I64S = struct.Struct("<q")
_SEQSTR = re.compile(r"(.*?)(0|[1-9][0-9]{0,17})", re.S)
_POWL = [10.0**k for k in range(MAX_K + 1)]
_INVL = [10.0**-k for k in range(MAX_K + 1)]
REF_BACK = 15  # an event's time may name one of the 15 records before it


def _canonical_event(data: bytes) -> dict[str, Any] | None:
    try:
        text = data.decode()
        obj = _DEC.decode(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if type(obj) is not dict or _ENC.encode(obj) != text:
        return None
    return obj


def _wrap(x: int) -> int:
    return ((x + (1 << 63)) & ((1 << 64) - 1)) - (1 << 63)


def _vput(buf: bytearray, n: int) -> None:
    while n >= 0x80:
        buf.append((n & 0x7F) | 0x80)
        n >>= 7
    buf.append(n)


def _zput(buf: bytearray, d: int) -> None:
    """Zigzag varint of a signed 64-bit value."""
    _vput(buf, d << 1 if d >= 0 else ((-d) << 1) - 1)


def _sput(buf: bytearray, text: str) -> None:
    b = text.encode()
    _vput(buf, len(b))
    buf += b


def _put_float(buf: bytearray, v: float) -> None:
    """A float literal: the shortest decimal mode that gives its bits back, else 8 bytes."""
    bits = _F64.pack(v)
    for k in range(MAX_K + 1):
        t = v * _POWL[k]
        if not abs(t) < _LIMIT:
            break
        q = round(t)
        if _F64.pack(q / _POWL[k]) == bits:
            mode = M_DIV
        elif _F64.pack(q * _INVL[k]) == bits:
            mode = M_MUL
        else:
            try:
                f = _F32.unpack(_F32.pack(q / _POWL[k]))[0]
            except OverflowError:
                continue
            if _F64.pack(f) != bits:
                continue
            mode = M_F32
        buf.append(_T_DEC | mode << 4 | k)  # tag, mode and k in one byte
        _zput(buf, q)
        return
    buf.append(_T_FLOAT)
    buf += bits


def _put_literal(buf: bytearray, v: Any) -> None:
    if v is None:
        buf.append(_T_NULL)
    elif v is True:
        buf.append(_T_TRUE)
    elif v is False:
        buf.append(_T_FALSE)
    elif type(v) is int and -(1 << 63) <= v < 1 << 63:
        buf.append(_T_INT)
        _zput(buf, v)
    elif type(v) is float:
        _put_float(buf, v)
    elif type(v) is str:
        j = _KNOWN_INDEX.get(v)
        if j is None:
            buf.append(_T_STR)
            _sput(buf, v)
        elif j < _T_DEC - _T_KNOWN:
            buf.append(_T_KNOWN + j)  # the tag byte is the index
        else:
            buf.append(_T_BIGKNOWN)
            _vput(buf, j)
    else:
        buf.append(_T_JSON)
        _sput(buf, _ENC.encode(v))


def _dict_key(v: Any) -> Any:
    t = type(v)
    if t is float:
        return (t, _F64.pack(v))
    if t is list or t is dict:
        return (t, _ENC.encode(v))
    return (t, v)


def _event_refs(ev_idx: list[int], datas: Sequence[bytes], ns: Sequence[int], tmins: Sequence[int],
                layout: list[int]) -> tuple[bytes, bytearray]:
    """Per event a byte naming an earlier record with the same time (0: explicit)."""
    refs = bytearray()
    explicit = bytearray()
    for i in ev_idx:
        ts = tmins[i]
        ref = 0
        packed = b""
        for d in range(1, min(REF_BACK, i) + 1):
            j = i - d
            if tmins[j] == ts:
                ref = d
                break
            if layout[j] == L_SAMPLES:
                if not packed:
                    packed = _I64S.pack(ts)
                n = ns[j]
                data = datas[j]
                lo = 4 * n
                k = data.find(packed, lo, 12 * n)
                while k >= 0 and (k - lo) & 7:
                    k = data.find(packed, k + 1, 12 * n)
                if 0 <= k and (k - lo) >> 3 < 15:
                    ref = d | (((k - lo) >> 3) + 1) << 4
                    break
        refs.append(ref)
        if not ref:
            _zput(explicit, _wrap(ts - (tmins[i - 1] if i else 0)))
    return bytes(refs), explicit


def _encode_events(objs: list[dict[str, Any]], ts_l: list[int], refs: bytes, explicit: bytearray) -> bytes:
    buf = bytearray()
    shapes: dict[tuple[str, ...], int] = {}
    sid = [shapes.setdefault(tuple(o), len(shapes)) for o in objs]
    _vput(buf, len(shapes))
    for shape in shapes:
        known = _SHAPE_INDEX.get(shape)
        if known is not None:
            _vput(buf, known + 1)
            continue
        buf.append(0)
        _vput(buf, len(shape))
        for key in shape:
            j = _KNOWN_INDEX.get(key)
            if j is None:
                buf.append(0)
                _sput(buf, key)
            else:
                _vput(buf, j + 1)
    if len(shapes) > 1:
        for i in sid:
            _vput(buf, i)
    buf += refs
    _vput(buf, len(explicit))
    buf += explicit
    one = len(shapes) == 1
    cols = _Cols(len(objs) if one else 0)
    for key in dict.fromkeys(k for shape in shapes for k in shape):
        if one:
            vals = [o[key] for o in objs]
            tss = ts_l
        else:
            have = [i for i, o in enumerate(objs) if key in o]
            vals = [objs[i][key] for i in have]
            tss = [ts_l[i] for i in have]
        _put_column(buf, key, vals, tss, cols)
    if cols.members:  # the group's rows: each distinct combination once, then a row per event
        row_ids: dict[tuple[int, ...], int] = {}
        per_event = [row_ids.setdefault(r, len(row_ids)) for r in cols.rows]
        _vput(buf, len(row_ids))
        for r in row_ids:
            for j in r:
                _vput(buf, j)
        for j in per_event:
            _vput(buf, j)
    return bytes(buf)


class _Cols:
    """Encoder state across an envelope's event columns (one shape only: all events have every key)."""

    __slots__ = ("dict_idx", "members", "n", "rows")

    def __init__(self, n: int):
        self.n = n  # 0: several shapes, no dependent or grouped columns
        # per dictionary column: its index per event, number of distinct values
        self.dict_idx: list[tuple[tuple[int, ...], int]] = []
        self.members = 0
        self.rows: list[tuple[int, ...]] = [()] * n


def _put_column(buf: bytearray, key: str, vals: list[Any], tss: list[int], cols: _Cols) -> None:
    """One key's values, in the cheapest column kind that fits them."""
    types = {type(v) for v in vals}
    if key == "ts" and types == {int} and vals == tss:
        buf.append(C_TSREC)
        return
    if types == {int} and all(-(1 << 63) <= v < 1 << 63 for v in vals) and len(set(vals)) * 2 > len(vals):
        buf.append(C_INT)
        prev = 0
        for v in vals:
            _zput(buf, _wrap(v - prev))
            prev = v
        return
    if types == {str} and len(vals) > 1 and len(set(vals)) == len(vals):
        parts = [_SEQSTR.fullmatch(v) for v in vals]
        # ids ("gw-17", "gw-18", ...): one prefix, numbers that differ
        if all(parts) and len({m.group(1) for m in parts if m}) == 1:
            buf.append(C_SEQSTR)
            _sput(buf, parts[0].group(1))  # type: ignore[union-attr]
            nums = [int(p.group(2)) for p in parts]  # type: ignore[union-attr]
            _vput(buf, nums[0])
            if nums == list(range(nums[0], nums[0] + len(nums))):
                buf.append(0)  # consecutive, as the journal numbers them
                return
            buf.append(1)
            for a, b in itertools.pairwise(nums):
                _zput(buf, b - a - 1)
            return
    # values as dictionary keys: as they are, unless equal values could differ in bytes
    # (1 and true, 0.0 and -0.0, NaN) or are unhashable
    tricky = float in types or list in types or dict in types or (bool in types and int in types)
    dkeys = [_dict_key(v) for v in vals] if tricky else vals
    table: dict[Any, int] = {}
    lit_vals = []
    idx_l = []
    for v, dk in zip(vals, dkeys, strict=True):
        j = table.get(dk)
        if j is None:
            j = table[dk] = len(table)
            lit_vals.append(v)
        idx_l.append(j)
    idx = tuple(idx_l)
    if len(table) == 1:
        buf.append(C_CONST)
        _put_literal(buf, vals[0])
        return
    if cols.n:
        # a function of an earlier dictionary column (a channel's index, kind, unit)
        for ci, (cidx, n_a) in enumerate(cols.dict_idx):
            if len(set(zip(cidx, idx, strict=True))) == n_a:
                buf.append(C_DEP)
                _vput(buf, ci)
                firsts = list(dict.fromkeys(zip(cidx, idx, strict=True)))  # (a, j) by first use of a
                _vput(buf, len(firsts))
                seen = 0
                for _, j in firsts:
                    _vput(buf, j)
                    if j == seen:
                        _put_literal(buf, lit_vals[j])
                        seen += 1
                return
    if len(table) == len(vals) and str not in types:  # no repeats (measured values)
        buf.append(C_PLAIN)
        for v in vals:
            _put_literal(buf, v)
        return
    cols.dict_idx.append((idx, len(table)))
    if cols.n:
        # join the group (a row index per event instead of this column's own) if that is cheaper
        rows = [(*r, j) for r, j in zip(cols.rows, idx, strict=True)]
        n_rows, old, m = len(set(rows)), len(set(cols.rows)), cols.members
        if (m and n_rows * (m + 1) - old * m < cols.n) or (not m and n_rows * 3 <= cols.n):
            cols.rows = rows
            cols.members += 1
            buf.append(C_GDICT)
            _vput(buf, len(lit_vals))
            for v in lit_vals:
                _put_literal(buf, v)
            return
    buf.append(C_DICT)
    seen = 0
    for j in idx:
        _vput(buf, j)
        if j == seen:
            _put_literal(buf, lit_vals[j])
            seen += 1


def _get_literal(rd: _Reader) -> Any:
    tag = rd.take(1, "event tag")[0]
    if tag == _T_NULL:
        return None
    if tag == _T_TRUE:
        return True
    if tag == _T_FALSE:
        return False
    if tag == _T_INT:
        return _zget(rd)
    if tag == _T_FLOAT:
        return _F64.unpack(rd.take(8, "event float"))[0]
    if tag & _T_DEC:
        mode, k = (tag >> 4) & 3, tag & 15
        q = _zget(rd)
        if k > MAX_K or mode > M_F32 or abs(q) >= _LIMIT:
            raise CodecError(f"event float mode 0x{tag:02x}, q {q}")
        if mode == M_MUL:
            return q * _INVL[k]
        f = q / _POWL[k]
        return _F32.unpack(_F32.pack(f))[0] if mode == M_F32 else f
    if tag == _T_STR:
        return _text(rd, "event string")
    if _T_KNOWN <= tag < _T_DEC:
        return KNOWN[tag - _T_KNOWN]
    if tag == _T_BIGKNOWN:
        return KNOWN[rd.varint("event known string")]
    if tag == _T_JSON:
        return _DEC.decode(_text(rd, "event json"))
    raise CodecError(f"event value tag {tag}")


def _zget(rd: _Reader) -> int:
    z = rd.varint("event int")
    return z >> 1 if not z & 1 else -((z + 1) >> 1)


def _text(rd: _Reader, what: str) -> str:
    return bytes(rd.take(rd.varint(what), what)).decode()


def _decode_events(blob: bytes, n: int) -> tuple[list[dict[str, Any]], bytes, list[int], list[str]]:
    """Objects (the record-time keys still to fill), time refs, explicit times, record-time keys."""
    rd = _Reader(blob)
    shapes = []
    for _ in range(rd.varint("event shapes")):
        known = rd.varint("event shape")
        if known:
            shapes.append(list(KNOWN_SHAPES[known - 1]))
            continue
        nk = rd.varint("event keys")
        if nk > len(blob):
            raise CodecError("event shape too long")
        shape = []
        for _ in range(nk):
            j = rd.varint("event key")
            shape.append(KNOWN[j - 1] if j else _text(rd, "event key"))
        shapes.append(shape)
    if not shapes:
        raise CodecError("events without a shape")
    one = len(shapes) == 1
    sid = [rd.varint("event shape id") for _ in range(n)] if not one else [0] * n
    if any(i >= len(shapes) for i in sid):
        raise CodecError("event shape id out of range")
    refs = bytes(rd.take(n, "event time refs"))
    erd = _Reader(bytes(rd.take(rd.varint("event times"), "event times")))
    explicit = []
    for r in refs:
        if not r:
            explicit.append(_zget(erd))
    if erd.pos != len(erd.buf):
        raise CodecError("stray bytes after the event times")
    objs: list[dict[str, Any]] = [{} for _ in range(n)]
    tsrec: list[str] = []
    dict_idx: list[list[int] | None] = []  # per dictionary column: index per event (None: grouped)
    grouped: list[tuple[str, list[Any], int]] = []  # (key, table, position in dict_idx)
    deps: list[tuple[str, int, list[int], list[Any]]] = []  # (key, column, index per new a, table)
    for key in dict.fromkeys(k for shape in shapes for k in shape):
        have = range(n) if one else [i for i in range(n) if key in shapes[sid[i]]]
        kind = rd.take(1, "event column kind")[0]
        if kind == C_TSREC:
            tsrec.append(key)
            for i in have:
                objs[i][key] = None
        elif kind == C_INT:
            prev = 0
            for i in have:
                prev = _wrap(prev + _zget(rd))
                objs[i][key] = prev
        elif kind == C_SEQSTR:
            prefix = _text(rd, "event id prefix")
            prev = rd.varint("event id number") - 1
            steps = rd.take(1, "event id steps")[0]
            if steps > 1:
                raise CodecError(f"event id steps flag {steps}")
            for j, i in enumerate(have):
                prev += (_zget(rd) if steps and j else 0) + 1
                if not 0 <= prev < 10**18:
                    raise CodecError(f"event string number {prev}")
                objs[i][key] = prefix + str(prev)
        elif kind == C_CONST:
            v = _get_literal(rd)
            for i in have:
                objs[i][key] = v
        elif kind == C_PLAIN:
            for i in have:
                objs[i][key] = _get_literal(rd)
        elif kind == C_DICT:
            table: list[Any] = []
            idx = []
            for i in have:
                j = rd.varint("event value index")
                if j == len(table):
                    table.append(_get_literal(rd))
                objs[i][key] = table[j]
                idx.append(j)
            dict_idx.append(idx)
        elif kind == C_GDICT and one:
            m = rd.varint("event table size")
            if m > len(blob):
                raise CodecError("event table too long")
            grouped.append((key, [_get_literal(rd) for _ in range(m)], len(dict_idx)))
            dict_idx.append(None)
        elif kind == C_DEP and one:
            ref = rd.varint("event column ref")
            m = rd.varint("event dependent count")
            if ref >= len(dict_idx) or m > len(blob):
                raise CodecError(f"event column ref {ref}, {m} values")
            table = []
            js = []
            for _ in range(m):
                j = rd.varint("event value index")
                if j == len(table):
                    table.append(_get_literal(rd))
                js.append(j)
            deps.append((key, ref, js, table))
        else:
            raise CodecError(f"event column kind {kind}")
    if grouped:
        n_rows = rd.varint("event rows")
        if n_rows > len(blob):
            raise CodecError("too many event rows")
        rows = [[rd.varint("event row") for _ in grouped] for _ in range(n_rows)]
        per_event = [rows[rd.varint("event row index")] for _ in range(n)]
        for g, (key, table, pos) in enumerate(grouped):
            idx = [r[g] for r in per_event]
            for i in range(n):
                objs[i][key] = table[idx[i]]
            dict_idx[pos] = idx
    for key, ref, js, table in deps:
        cidx = dict_idx[ref]
        assert cidx is not None
        firsts = list(dict.fromkeys(cidx))
        if len(firsts) != len(js):
            raise CodecError(f"dependent event column: {len(js)} values for {len(firsts)} keys")
        fmap = {a: table[j] for a, j in zip(firsts, js, strict=True)}
        for i in range(n):
            objs[i][key] = fmap[cidx[i]]
    if rd.pos != len(blob):
        raise CodecError("stray bytes after the events")
    # keys back in each shape's order (columns were filled key by key)
    objs = [{k: o[k] for k in shapes[s]} for o, s in zip(objs, sid, strict=True)]
    return objs, refs, explicit, tsrec


# ------------------------------------------------------------------------ decode

def decode(data: bytes, *, max_size: int = 1 << 28) -> list[Record]:
    """Records back, exactly as encoded; CodecError for anything malformed."""
    try:
        size = zstandard.frame_content_size(data)
    except zstandard.ZstdError as e:
        raise CodecError(f"not a zstd frame: {e}") from None
    if size < 0 or size > max_size:
        raise CodecError(f"decoded size {size} unknown or above the limit {max_size}")
    try:
        raw = _decompressor().decompress(data, max_output_size=max_size)
    except zstandard.ZstdError as e:
        raise CodecError(f"payload does not decompress: {e}") from None
    try:
        return _decode(raw)
    except (ValueError, IndexError, OverflowError, KeyError, RecursionError, struct.error,
            UnicodeDecodeError) as e:
        if isinstance(e, CodecError):
            raise
        raise CodecError(f"inconsistent payload: {e}") from None


def _decode(raw: bytes) -> list[Record]:
    rd = _Reader(raw)
    fmt = rd.take(1, "format")[0]
    if fmt != FORMAT:
        raise CodecError(f"codec format {fmt} (this node reads {FORMAT})")
    nrec = rd.varint("record count")
    if nrec > len(raw):
        raise CodecError(f"record count {nrec} cannot fit in {len(raw)} bytes")
    seqs = np.cumsum(rd.zvars(nrec, "seq") + 1, dtype=np.int64)
    kinds = rd.ints("kind", nrec)
    opaque = rd.u64("opaque flags", nrec)
    if nrec and opaque.max() > 1:
        raise CodecError(f"opaque flag {opaque.max()}")
    by_kind = np.where(kinds == SAMPLES, L_SAMPLES, np.where(kinds == EVENT, L_EVENT, L_OPAQUE))
    layout = by_kind.astype(np.uint64)
    layout[opaque.astype(bool)] = L_OPAQUE
    n_op = int((layout == L_OPAQUE).sum())
    n_ev = int((layout == L_EVENT).sum())
    t0 = _undod(rd.ints("opaque ts_min", n_op))
    t1 = t0 + rd.ints("opaque ts span", n_op)
    nn = rd.ints("opaque n", n_op)
    lens = rd.u64("opaque lengths", n_op)
    blob = rd.take(int(lens.sum()), "opaque data")
    n_col = nrec - n_op - n_ev
    col_records: list[tuple[int, int, int, bytes]] = []
    if n_col:
        col_records = _decode_samples(rd, n_col)
    objs: list[dict[str, Any]] = []
    refs = b""
    explicit: list[int] = []
    tsrec: list[str] = []
    if n_ev:
        objs, refs, explicit, tsrec = _decode_events(rd.blob("events"), n_ev)
    if rd.pos != len(raw):
        raise CodecError(f"{len(raw) - rd.pos} stray bytes after the last column")

    out: list[Record] = []
    seq_l = seqs.tolist()
    kind_l = kinds.tolist()
    t0_l, t1_l, nn_l = t0.tolist(), t1.tolist(), nn.tolist()
    ends = np.cumsum(lens).tolist()
    oi = ci = ei = xi = 0
    start = 0
    size = 0
    lay_l = layout.tolist()
    for i, lay in enumerate(lay_l):
        if lay == L_SAMPLES:
            n, tmin, tmax, data = col_records[ci]
            out.append(Record(seq_l[i], kind_l[i], tmin, tmax, n, data))
            ci += 1
        elif lay == L_EVENT:
            ref = refs[ei]
            d, p = ref & 15, ref >> 4
            if not d:
                if p:
                    raise CodecError(f"event time ref 0x{ref:02x}")
                ts = _wrap((out[i - 1].ts_min if i else 0) + explicit[xi])
                xi += 1
            elif d > i:
                raise CodecError(f"event time names record {i - d}")
            elif not p:
                ts = out[i - d].ts_min
            else:
                src = out[i - d]
                if lay_l[i - d] != L_SAMPLES or p > src.n:
                    raise CodecError(f"event time names sample {p - 1} of record {i - d}")
                ts = _I64S.unpack_from(src.data, 4 * src.n + 8 * (p - 1))[0]
            obj = objs[ei]
            for k in tsrec:
                if k in obj:
                    obj[k] = ts
            data = _ENC.encode(obj).encode()
            size += len(data)
            if size > MAX_EVENT_BYTES:  # values referenced over and over: refuse, do not balloon
                raise CodecError(f"events decode to more than {MAX_EVENT_BYTES} bytes")
            out.append(Record(seq_l[i], kind_l[i], ts, ts, 1, data))
            ei += 1
        else:
            end = ends[oi]
            out.append(Record(seq_l[i], kind_l[i], t0_l[oi], t1_l[oi], nn_l[oi], bytes(blob[start:end])))
            start = end
            oi += 1
    return out


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
