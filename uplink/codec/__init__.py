"""Compact, lossless encoding of a range of journal records for the uplink.

API: ``encode(records) -> bytes``, ``decode(data, *, max_size=...) -> list[Record]``,
``CodecError`` (a ValueError; ``TooLarge`` when ``encode_summary(max_size=...)`` is
exceeded). Pure: no I/O, no clock. This module frames the records
(record table, opaque records, zstd); ``samples`` and ``events`` code their columns,
``grouped`` the integer series in groups, ``bits`` the primitives. The format (version 2) is
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

import struct
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import zstandard

from gateway.core.batch import SAMPLE_BYTES
from gateway.core.record import EVENT, SAMPLES, Record
from uplink.codec.bits import (
    CodecError,
    _count,
    _dod,
    _put_blob,
    _put_ints,
    _put_u64,
    _put_zvars,
    _Reader,
    _undod,
    _wrap,
    read_varint,
    write_varint,
)
from uplink.codec.events import _ENC, _I64S, _canonical_event, _decode_events, _encode_events, _event_refs
from uplink.codec.samples import _decode_samples, _encode_samples, _gather_samples, _ts_range_ok

__all__ = ["FORMAT", "CodecError", "TooLarge", "decode", "encode", "encode_summary", "read_varint",
           "write_varint"]

FORMAT = 2
L_OPAQUE, L_SAMPLES, L_EVENT = 0, 1, 2  # how a record travels
ZSTD_LEVEL = 3
MAX_EVENT_BYTES = 256 << 20


class TooLarge(CodecError):
    """Records whose payload would decode to more than the limit given to ``encode_summary``."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"decoded size {size} is above the limit {limit}")
        self.size = size
        self.limit = limit


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


def encode(records: Sequence[Record], *, level: int | None = None,
           sizes: dict[str, int] | None = None) -> bytes:
    """Encode records (any kinds, any sequence numbers) losslessly.

    ``level`` is zstd's; by default 6 for live-sized payloads (2 % smaller than 3 at
    about the same cost there) and 3 for big backlog ones, where speed counts more.
    ``sizes``, if given, is added each section's bytes before zstd (measurements).
    """
    return encode_summary(records, level=level, sizes=sizes)[0]


def encode_summary(records: Sequence[Record], *, level: int | None = None,
                   sizes: dict[str, int] | None = None,
                   max_size: int | None = None) -> tuple[bytes, int, int, int]:
    """``encode``, plus what an envelope header states: (payload, smallest ts_min,
    largest ts_max, samples in SAMPLES records); the times are 0 without records.
    ``max_size`` bounds the decoded size: above it ``TooLarge`` is raised before
    anything is compressed (the receiver would refuse such a payload)."""
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
        refs, explicit = _event_refs(ev_idx, datas, ns, tmins, (layout == L_SAMPLES).tolist())
        _put_blob(out, _encode_events(ev_objs, [tmins[i] for i in ev_idx], refs, explicit))
        if sizes is not None:
            _count(sizes, "events", out, at)
    raw = b"".join(out)
    if max_size is not None and len(raw) > max_size:
        raise TooLarge(len(raw), max_size)
    if level is None:
        level = 6 if len(raw) < 1 << 18 else ZSTD_LEVEL
    payload = _compressor(level).compress(raw)
    if not nrec:
        return payload, 0, 0, 0
    n_samples = int(n_a[kind_a == SAMPLES].sum())
    return payload, int(tmin_a.min()), int(tmax_a.max()), n_samples



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

