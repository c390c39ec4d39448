"""The typed event columns of the uplink codec.

An event whose bytes are exactly ``json.dumps(obj, separators=(",", ":"),
ensure_ascii=False)`` of a JSON object (what the journal writes) travels as fields:
the key lists ("shapes") once, a shape id per event, the event's time as a
reference to an earlier record's time (an alarm carries the time of the sample
that raised it), then each key's values in event order as a column of its own
kind: the record time (implicit), integers as deltas, "prefix-N" strings as a
prefix and a delta of N, or values by index into the column's dictionary, new
values as typed literals (floats as a short decimal when one reproduces them).
Decoding rebuilds the same bytes. Other events travel opaque.
"""

from __future__ import annotations

import itertools
import json
import re
import struct
from collections.abc import Sequence
from typing import Any

from uplink.codec.bits import (
    _LIMIT,
    M_DIV,
    M_F32,
    M_MUL,
    MAX_K,
    CodecError,
    _Reader,
    _sput,
    _vput,
    _wrap,
    _zput,
)

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
                in_columns: list[bool]) -> tuple[bytes, bytearray]:
    """Per event a byte naming an earlier record with the same time (0: explicit);
    ``in_columns`` says which records are sample records that travel as columns."""
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
            if in_columns[j]:
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
