"""OPC-UA status codes and the fast decoding of Read responses.

Status codes map to quality: Good → good, Uncertain* → UNCERTAIN_STATUS, Bad* →
BAD_STATUS (BadNodeIdUnknown / BadNodeIdInvalid → CONFIG).

asyncua decodes a Read response into one DataValue dataclass per node (≈ 20 µs each
in pure Python). The common answer of a DCS is a run of same-shaped scalars, so the
results array is decoded here with numpy when every record has the same layout, with
a small struct loop when they differ, and handed back to asyncua's own decoder for
anything else (arrays, structures, picoseconds).
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import numpy.typing as npt
from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.status_codes import code_to_name_doc
from asyncua.ua.ua_binary import nodeid_to_binary, struct_to_binary

from gateway.core.batch import Quality

_MISSING = {ua.StatusCodes.BadNodeIdUnknown, ua.StatusCodes.BadNodeIdInvalid,
            ua.StatusCodes.BadAttributeIdInvalid}


def status_name(code: int) -> str:
    """``BadSensorFailure (0x808B0000)``."""
    name = code_to_name_doc.get(code, ("Unknown", ""))[0]
    return f"{name} (0x{code:08X})"


def status_quality(codes: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint8]:
    """Quality bytes for raw OPC-UA status codes (top two bits are the severity)."""
    sev = codes >> 30
    q = np.where(sev == 0, Quality.GOOD, np.where(sev == 1, Quality.UNCERTAIN_STATUS, Quality.BAD_STATUS))
    q = q.astype(np.uint8)
    if (sev >= 2).any():
        missing = np.isin(codes & 0xFFFF0000, np.array(sorted(_MISSING), dtype=np.uint32))
        q[missing] = Quality.CONFIG
    return q


_FILETIME_EPOCH = 116444736000000000  # 1601-01-01 → 1970-01-01, in 100 ns ticks
#: Variant type id → (struct format, size); numbers only
_SCALARS = {1: ("<?", 1), 2: ("<b", 1), 3: ("<B", 1), 4: ("<h", 2), 5: ("<H", 2), 6: ("<i", 4),
            7: ("<I", 4), 8: ("<q", 8), 9: ("<Q", 8), 10: ("<f", 4), 11: ("<d", 8)}
_NP = {1: "u1", 2: "i1", 3: "u1", 4: "<i2", 5: "<u2", 6: "<i4", 7: "<u4", 8: "<i8", 9: "<u8", 10: "<f4",
       11: "<f8"}
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")


class NotSimple(Exception):
    """The response holds something the fast decoder leaves to asyncua."""


def decode_results(buf: bytes, pos: int, n: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.uint32],
                                                           npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """The DataValue array of a Read response: values, status codes, source times (ns, 0 = none),
    and which values were not numbers (strings, dates). Raises NotSimple for anything else."""
    count = _I32.unpack_from(buf, pos)[0]
    pos += 4
    if count != n:
        raise NotSimple(f"{count} results for {n} nodes")
    values = np.full(n, np.nan)
    codes = np.zeros(n, dtype=np.uint32)
    src = np.zeros(n, dtype=np.int64)
    not_num = np.zeros(n, dtype=bool)
    if n == 0:
        return values, codes, src, not_num
    # uniform layout: every record has the first one's mask and variant type
    mask = buf[pos]
    if not mask & 0x30 and (mask & 0x01 == 0 or buf[pos + 1] in _SCALARS):
        size = 1
        vt = 0
        if mask & 0x01:
            vt = buf[pos + 1]
            size += 1 + _SCALARS[vt][1]
        size += 4 * bool(mask & 0x02) + 8 * bool(mask & 0x04) + 8 * bool(mask & 0x08)
        if pos + size * n <= len(buf):
            rec = np.frombuffer(buf, dtype=np.uint8, count=size * n, offset=pos).reshape(n, size)
            if (rec[:, 0] == mask).all() and (vt == 0 or (rec[:, 1] == vt).all()):
                off = 1
                if vt:
                    raw = np.ascontiguousarray(rec[:, 2:2 + _SCALARS[vt][1]]).view(_NP[vt]).ravel()
                    values = raw.astype(np.float64)
                    off = 2 + _SCALARS[vt][1]
                if mask & 0x02:
                    codes = np.ascontiguousarray(rec[:, off:off + 4]).view("<u4").ravel().astype(np.uint32)
                    off += 4
                if mask & 0x04:
                    t = np.ascontiguousarray(rec[:, off:off + 8]).view("<i8").ravel()
                    src = np.where(t > 0, (t - _FILETIME_EPOCH) * 100, 0).astype(np.int64)
                return values, codes, src, not_num
    # mixed layouts: one record at a time
    for i in range(n):
        mask = buf[pos]
        pos += 1
        if mask & 0x30:
            raise NotSimple("picoseconds")
        if mask & 0x01:
            vt = buf[pos]
            pos += 1
            if vt in _SCALARS:
                fmt, size = _SCALARS[vt]
                values[i] = struct.unpack_from(fmt, buf, pos)[0]
                pos += size
            elif vt == 12 or vt == 15:  # String, ByteString: skip, not a measurement
                ln = _I32.unpack_from(buf, pos)[0]
                pos += 4 + max(ln, 0)
                not_num[i] = True
            elif vt == 13:  # DateTime
                pos += 8
                not_num[i] = True
            elif vt == 0:
                pass
            else:
                raise NotSimple(f"variant type {vt}")
        if mask & 0x02:
            codes[i] = _U32.unpack_from(buf, pos)[0]
            pos += 4
        if mask & 0x04:
            t = _I64.unpack_from(buf, pos)[0]
            src[i] = (t - _FILETIME_EPOCH) * 100 if t > 0 else 0
            pos += 8
        if mask & 0x08:
            pos += 8
    return values, codes, src, not_num


def _reparse(hdr: ua.ResponseHeader, results: bytes) -> Any:
    """A whole ReadResponse buffer again, for asyncua's decoder (the slow path)."""
    typeid = nodeid_to_binary(ua.FourByteNodeId(ua.ObjectIds.ReadResponse_Encoding_DefaultBinary))  # type: ignore[arg-type]
    return Buffer(typeid + struct_to_binary(hdr) + results)


def _src_seconds(dv: ua.DataValue) -> float:
    t = dv.SourceTimestamp
    return t.timestamp() if t is not None else 0.0
