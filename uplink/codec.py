"""Compact, lossless encoding of a range of journal records for the uplink.

API: ``encode(records) -> bytes``, ``decode(data) -> list[Record]``, ``CodecError``.
(Provisional body: record fields packed, then zstd. The columnar format replaces it.)
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import zstandard

from gateway.journal import Record

FORMAT = 0
_REC = struct.Struct("<qBqqqI")


class CodecError(ValueError):
    """The bytes are not a valid encoding (truncated, corrupt, or too large)."""


def encode(records: Sequence[Record]) -> bytes:
    parts = [struct.pack("<BI", FORMAT, len(records))]
    for r in records:
        parts.append(_REC.pack(r.seq, r.kind, r.ts_min, r.ts_max, r.n, len(r.data)))
        parts.append(bytes(r.data))
    return zstandard.ZstdCompressor(level=3).compress(b"".join(parts))


def decode(data: bytes, *, max_size: int = 1 << 28) -> list[Record]:
    try:
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=max_size)
    except zstandard.ZstdError as e:
        raise CodecError(f"payload does not decompress: {e}") from None
    if len(raw) < 5 or raw[0] != FORMAT:
        raise CodecError("unknown codec format")
    (count,) = struct.unpack_from("<I", raw, 1)
    pos = 5
    out = []
    for i in range(count):
        if pos + _REC.size > len(raw):
            raise CodecError(f"record {i}: truncated")
        seq, kind, t0, t1, n, ln = _REC.unpack_from(raw, pos)
        pos += _REC.size
        if pos + ln > len(raw):
            raise CodecError(f"record {i}: truncated data")
        out.append(Record(seq, kind, t0, t1, n, raw[pos:pos + ln]))
        pos += ln
    return out
