"""Frames and sources: what the sync transport moves, and where it reads it from.

A frame carries one sealed envelope with its lane and the sender's position after it
(wire format in the package docstring, ``uplink.sync``). A ``Source`` is what a pull
server serves and a push client sends; ``JournalSource`` is a gateway's journal, one
journal consumer per lane (cursors ``uplink`` and ``uplink.alarms``), sealing records
into envelopes on its own thread.

No record can stop the stream: a record larger than ``ALONE_BYTES`` travels in an
envelope of its own (which may decode to the whole ``envelope.MAX_PAYLOAD``), and one
that no envelope can carry, or that central refused for good (``SetsAside``, used by
the push client), is *set aside*: an ``uplink_rejected`` marker travels at its
sequence instead, and an ``uplink_set_aside`` event in the journal tells the audit.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from gateway.consumer import JournalConsumer
from gateway.core.record import EVENT, SAMPLES, Record, event_record
from gateway.store.journal import Journal
from uplink.envelope import TooLarge

log = logging.getLogger(__name__)

LANES = ("main", "alarms")
LANE_CODE = {"main": 0, "alarms": 1}
LANE_NAME = {v: k for k, v in LANE_CODE.items()}
CURSORS = {"main": "uplink", "alarms": "uplink.alarms"}
FRAME = struct.Struct("<BQI")
MEDIA = "application/x-safegw-frames"
MAX_BODY = 64 * 2**20
ALONE_BYTES = 2**20  # a record larger than this travels in an envelope of its own


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


@runtime_checkable
class SetsAside(Protocol):
    """A source that can narrow its envelopes and set a record aside, for a push client
    whose envelope central refused for good (``JournalSource``; an outbox cannot)."""

    def narrow(self, lane: str, after: int, records: int) -> None: ...

    async def set_aside(self, lane: str, seq: int, reason: str) -> None: ...


def _alone(recs: list[Record]) -> list[Record]:
    """The leading records up to a big one, or the big one alone when it leads."""
    for i, r in enumerate(recs):
        if len(r.data) > ALONE_BYTES:
            return recs[:i] if i else recs[:1]
    return recs


def _marker(r: Record, reason: str) -> tuple[Record, dict[str, Any]]:
    """The marker travelling at a set-aside record's sequence, and the journal's note of it."""
    what = {"seq": r.seq, "kind": "samples" if r.kind == SAMPLES else "event", "bytes": len(r.data),
            "reason": reason[:300]}
    kind, ts_min, ts_max, n, data = event_record({"type": "uplink_rejected", "ts": r.ts_min, **what})
    return Record(r.seq, kind, ts_min, ts_max, n, data), {"type": "uplink_set_aside", "ts": time.time_ns(),
                                                           **what}


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
        self.set_aside_records = 0
        self._bytes_per_sample = 3.0  # running estimate, to size envelopes to a byte budget
        self.markers: dict[int, Record] = {}  # seq -> the marker sent instead of a set-aside record
        self._notes: list[dict[str, Any]] = []  # set-aside events still to journal
        self._narrow: dict[str, tuple[int, int]] = {}  # lane -> (after, records in the next envelope)
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
            at, narrow = self._narrow.pop(lane, (-1, 0))
            narrow = narrow if at == after else 0
            recs = _alone(consumer.read_sync(after, max_samples=want, max_records=narrow or None))
            if not recs:
                break
            data, recs = self._seal_fitting(recs)
            n = sum(r.n for r in recs if r.kind == SAMPLES)
            if n >= 1000:
                self._bytes_per_sample = 0.5 * self._bytes_per_sample + 0.5 * len(data) / n
            out.append(Item(lane, recs[-1].seq, data, n, len(recs)))
            total += len(data)
            after = recs[-1].seq
            self.sealed_envelopes += 1
            self.sealed_samples += n
            self.sealed_bytes += len(data)
            if narrow:  # a narrowed envelope goes by itself: central judges it alone
                break
        return out

    def _seal_fitting(self, recs: list[Record]) -> tuple[bytes, list[Record]]:
        """Seal the longest head of ``recs`` that fits ``MAX_PAYLOAD`` (halving); a record
        that does not fit alone is set aside (its marker goes instead)."""
        recs = [self.markers.get(r.seq, r) for r in recs]
        while True:
            try:
                return self._seal(recs), recs
            except TooLarge as e:
                if len(recs) > 1:
                    recs = recs[:len(recs) // 2]
                    continue
                recs = [self._mark(recs[0], str(e))]

    def _mark(self, r: Record, reason: str) -> Record:
        marker, note = _marker(r, reason)
        if r.seq not in self.markers:
            self.markers[r.seq] = marker
            self._notes.append(note)
            self.set_aside_records += 1
            log.error("uplink: record %d (%d bytes) set aside: %s", r.seq, len(r.data), reason)
        return self.markers[r.seq]

    async def _journal_notes(self) -> None:
        while self._notes:
            await self.journal.append_event(self._notes.pop(0))

    async def read(self, lane: str, after: int, *, max_bytes: int, max_items: int = 0) -> list[Item]:
        loop = asyncio.get_running_loop()
        items = await loop.run_in_executor(self._pool, self._read_seal, lane, after, max_bytes, max_items)
        await self._journal_notes()
        return items

    def narrow(self, lane: str, after: int, records: int) -> None:
        """The next envelope read on ``lane`` after ``after`` carries at most ``records``."""
        self._narrow[lane] = (after, max(1, records))

    async def set_aside(self, lane: str, seq: int, reason: str) -> None:
        """Send a marker instead of record ``seq`` from now on (central refused it alone)."""
        recs = await self.journal.read(seq - 1, 1)
        if recs and recs[0].seq == seq:
            self._mark(recs[0], reason)
            await self._journal_notes()

    async def ack(self, lane: str, seq: int) -> None:
        await self.lanes[lane].ack(seq)
        if lane == "main" and self.markers:
            # no read starts before the main cursor: the markers behind it are done
            done = self.lanes["main"].cursor
            for s in [s for s in list(self.markers) if s <= done]:
                del self.markers[s]

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
