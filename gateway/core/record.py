"""The journal's record format: what a record is, its kinds and codecs, and how to read
its bytes. Shared by the journal (gateway/store), the uplink codec and central, none of
which should need the journal's storage to know what a record holds.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import zstandard

from gateway.core.batch import Batch

SAMPLES = 1
EVENT = 2

CODEC_RAW = 0
CODEC_ZSTD = 1

GAP_PREFIX = b'{"type":"gap"'


@dataclass(slots=True)
class Record:
    seq: int
    kind: int
    ts_min: int
    ts_max: int
    n: int
    data: bytes

    def batch(self) -> Batch:
        if self.kind != SAMPLES:
            raise TypeError(f"record {self.seq} is an event, not samples")
        return Batch.from_bytes(self.data)

    def event(self) -> dict[str, Any]:
        if self.kind != EVENT:
            raise TypeError(f"record {self.seq} holds samples, not an event")
        doc: dict[str, Any] = json.loads(self.data)
        return doc

    @property
    def is_gap(self) -> bool:
        return self.kind == EVENT and self.data.startswith(GAP_PREFIX)


def decode_data(codec: int, data: bytes | memoryview) -> bytes:
    """A stored ``records.data`` → the record's plain bytes (``Batch.to_bytes`` layout or
    JSON). Code that reads the journal file with its own SQL should use this rather than
    test codecs itself, so a new codec does not break it."""
    if codec == CODEC_ZSTD:
        out: bytes = _dz_local().decompress(data)
        return out
    if codec == CODEC_RAW:
        return bytes(data)
    raise ValueError(f"unknown journal codec {codec}")


_tls = threading.local()


def _dz_local() -> zstandard.ZstdDecompressor:
    dz: zstandard.ZstdDecompressor | None = getattr(_tls, "dz", None)
    if dz is None:
        dz = _tls.dz = zstandard.ZstdDecompressor()
    return dz


def event_record(event: dict[str, Any]) -> tuple[int, int, int, int, bytes]:
    ts = int(event.get("ts", 0))
    return (EVENT, ts, ts, 1, json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode())


