"""Frames and sources: what the sync transport moves, and where it reads it from.

A frame carries one sealed envelope with its lane and the sender's position after it
(wire format in the package docstring, ``uplink.sync``). A ``Source`` is what a pull
server serves and a push client sends; ``JournalSource`` is a gateway's journal, one
journal consumer per lane (cursors ``uplink`` and ``uplink.alarms``), sealing records
into envelopes on its own thread.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from gateway.consumer import JournalConsumer
from gateway.core.record import EVENT, SAMPLES, Record
from gateway.store.journal import Journal

LANES = ("main", "alarms")
LANE_CODE = {"main": 0, "alarms": 1}
LANE_NAME = {v: k for k, v in LANE_CODE.items()}
CURSORS = {"main": "uplink", "alarms": "uplink.alarms"}
FRAME = struct.Struct("<BQI")
MEDIA = "application/x-safegw-frames"
MAX_BODY = 64 * 2**20


# --------------------------------------------------------------------------- frames
@dataclass(slots=True)
class Item:
    lane: str
    seq: int
    data: bytes
    samples: int = 0
    records: int = 0


def pack_frames(items: list[Item]) -> bytes:
    parts: list[bytes] = []
    for it in items:
        parts.append(FRAME.pack(LANE_CODE[it.lane], it.seq, len(it.data)))
        parts.append(it.data)
    return b"".join(parts)


class FrameError(ValueError):
    pass


def unpack_frames(data: bytes) -> list[Item]:
    out: list[Item] = []
    mv = memoryview(data)
    pos = 0
    while pos < len(mv):
        if pos + FRAME.size > len(mv):
            raise FrameError("truncated frame header")
        lane, seq, n = FRAME.unpack_from(mv, pos)
        pos += FRAME.size
        if lane not in LANE_NAME or pos + n > len(mv):
            raise FrameError("bad lane or truncated envelope")
        out.append(Item(LANE_NAME[lane], seq, bytes(mv[pos:pos + n])))
        pos += n
    return out


# --------------------------------------------------------------------------- sources
class Source(Protocol):
    """What a pull server serves and a push client sends: positions and envelopes."""

    node_id: str

    async def read(self, lane: str, after: int, *, max_bytes: int, max_items: int = 0) -> list[Item]: ...

    async def ack(self, lane: str, seq: int) -> None: ...

    def position(self, lane: str) -> int: ...

    def head(self) -> int: ...

    def first(self) -> int: ...

    async def wait(self, after: int, wait_s: float) -> bool: ...


class JournalSource:
    """A gateway's journal as a source: reads records after a position and seals them."""

    def __init__(self, node_id: str, journal: Journal, seal: Callable[[list[Record]], bytes], *,
                 max_records: int = 200, max_samples: int = 50_000):
        self.node_id = node_id
        self.journal = journal
        self._seal = seal
        self.max_records = max_records
        self.max_samples = max_samples
        # one consumer per lane; the alarms lane reads only events
        self.lanes = {lane: JournalConsumer(journal, CURSORS[lane], max_records=max_records,
                                            max_samples=max_samples,
                                            kinds=(EVENT,) if lane == "alarms" else None)
                      for lane in LANES}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="uplink-seal")
        self.sealed_envelopes = 0
        self.sealed_samples = 0
        self.sealed_bytes = 0
        self._bytes_per_sample = 3.0  # running estimate, to size envelopes to a byte budget
        for consumer in self.lanes.values():
            consumer.register()

    def _read_seal(self, lane: str, after: int, max_bytes: int, max_items: int) -> list[Item]:
        consumer = self.lanes[lane]
        out: list[Item] = []
        total = 0
        while total < max_bytes and not (max_items and len(out) >= max_items):
            # on a capped link an envelope should fit the response budget, so that a
            # response never holds the link much longer than planned (alarms wait less)
            want = min(self.max_samples, max(256, int((max_bytes - total) / self._bytes_per_sample)))
            recs = consumer.read_sync(after, max_samples=want)
            if not recs:
                break
            data = self._seal(recs)
            n = sum(r.n for r in recs if r.kind == SAMPLES)
            if n >= 1000:
                self._bytes_per_sample = 0.5 * self._bytes_per_sample + 0.5 * len(data) / n
            out.append(Item(lane, recs[-1].seq, data, n, len(recs)))
            total += len(data)
            after = recs[-1].seq
            self.sealed_envelopes += 1
            self.sealed_samples += n
            self.sealed_bytes += len(data)
        return out

    async def read(self, lane: str, after: int, *, max_bytes: int, max_items: int = 0) -> list[Item]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._read_seal, lane, after, max_bytes, max_items)

    async def ack(self, lane: str, seq: int) -> None:
        await self.lanes[lane].ack(seq)

    def position(self, lane: str) -> int:
        return self.lanes[lane].cursor

    def head(self) -> int:
        return self.journal.last_seq

    def first(self) -> int:
        return self.journal.first_seq

    async def wait(self, after: int, wait_s: float) -> bool:
        return await self.lanes["main"].wait(after, wait_s)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
