"""Ingest: open envelopes from a source and store each (origin, sequence) exactly once.

Opening verifies the origin's signature and decrypts (on a thread of its own, a few
envelopes ahead of storing). Storing appends the new records to the origin's journal
and moves its cursor in the state store by compare-and-set: duplicates are ignored,
tampered or unknown envelopes are rejected and counted, a hole in an origin's sequence
is refused so the range is fetched again (unless a gap record from the origin's journal
explains it). Channel tables are tracked as they are stored in journal order.

An authentic envelope that cannot be ingested for a reason that will not change
(``envelope.Undecodable``: above ``max_payload`` decoded, not decodable, contradicting
its header) is refused for good to a push source (``REFUSED``: it narrows its envelope
and sets the record aside), and *set aside* here for a pull or relay source (which
cannot re-seal): an ``uplink_rejected`` marker is stored for its range, where its
records would have been, and the cursors move past it.

Crashes: an intent file written before each journal append lets the next start mark
records that reached the journal without their cursor commit, so the re-sent envelope
skips them (see docs/central.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from central.config import SourceEntry
from central.journals import Journals
from central.state import Commit, State, TableRow
from central.store_vm import VmStore
from gateway.core import chantable
from gateway.core.record import SAMPLES, Record, event_record
from uplink import envelope, keys
from uplink.sync import Item

log = logging.getLogger(__name__)

ACCEPTED, DUPLICATE, REJECTED, GAP = "accepted", "duplicate", "rejected", "gap"
REFUSED = "refused"  # for good: the push source narrows its envelope, then sets the record aside
OPEN_AHEAD = 4  # envelopes opened ahead of the one being stored

# how pulls and pushes hand frames in: (source, frames) -> a verdict per frame
IngestFn = Callable[[SourceEntry, list[Item]], Awaitable[list[str]]]


@dataclass
class SourceStatus:
    id: str
    mode: str
    relay: bool
    state: str = "waiting"  # waiting | ok | failing | idle (not leased by this worker)
    last_contact_ns: int = 0
    last_error: str | None = None
    head: int = 0
    positions: dict[str, int] = field(default_factory=lambda: {"main": 0, "alarms": 0})
    envelopes: int = 0
    records: int = 0
    samples: int = 0
    bytes_in: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    gaps: int = 0
    suite: str = "x25519-ed25519"  # the envelope suite accepted from this source
    refused: int = 0  # envelopes refused for good (push sources)
    set_aside: int = 0  # envelopes set aside here (pull and relay sources)
    refusal: str | None = None  # why the last one was refused or set aside

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["lag"] = max(0, self.head - self.positions.get("main", 0)) if self.head else None
        d["rejected_total"] = sum(self.rejected.values())
        return d


@dataclass
class OriginCursor:
    main: int
    alarms: int
    early: set[int]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    stored_records: int = 0
    stored_samples: int = 0
    last_ts: int = 0
    main_ts: int = 0  # newest record time stored through the main lane (for lag in seconds)
    appended: int = -1  # main cursor after this worker's last main-lane append to its journal


def _payload(r: Record) -> Any:
    return r.batch() if r.kind == SAMPLES else r.event()


def _set_aside(h: envelope.Header, size: int, reason: str) -> list[Record]:
    """The marker stored instead of an envelope's records: a gap-like event at its last sequence."""
    kind, ts_min, ts_max, n, data = event_record({
        "type": "uplink_rejected", "ts": h.ts_min, "seq": h.last_seq, "from_seq": h.first_seq,
        "records": h.n_records, "kind": "envelope", "bytes": size, "reason": reason[:300]})
    return [Record(h.last_seq, kind, ts_min, ts_max, n, data)]


def _tables_in(records: list[Record]) -> list[tuple[int, dict[str, Any]]]:
    """The channel_table events among records: (origin seq, event)."""
    out = []
    for r in records:
        if chantable.is_table_record(r):
            with contextlib.suppress(ValueError):
                ev = r.event()
                if chantable.is_table_event(ev):
                    out.append((r.seq, ev))
    return out


class Ingest:
    """Stores the frames of the sources into the origins' journals and the state store.

    It updates the registries it is given: ``status`` (per source), ``origins`` (the
    cursors per origin, filled as origins are met) and ``tables`` (the latest channel
    table per origin, a mirror of the state store's). ``shared`` says that other
    workers store into the same state (PostgreSQL); ``forwarded`` is called for each
    envelope put in the outbox; ``on_stored`` callbacks see the records stored."""

    def __init__(self, *, state: State, journals: Journals, recipient: list[keys.NodeKeys],
                 trust: keys.TrustStore, status: dict[str, SourceStatus], origins: dict[str, OriginCursor],
                 tables: dict[str, TableRow], shared: bool, forwarded: Callable[[], None] | None,
                 on_stored: list[Callable[[str, list[Record]], None]], store: VmStore | None = None,
                 journal: bool = True):
        self.state = state
        self.journals = journals
        self.recipient = recipient
        self.trust = trust
        self.status = status
        self.origins = origins
        self.tables = tables
        self.shared = shared
        self.forwarded = forwarded
        self.on_stored = on_stored
        self.store = store  # VictoriaMetrics + PostgreSQL: acknowledged before the cursor moves
        self.journal = journal  # keep the per-origin journal (always without a store)
        self.max_payload = envelope.MAX_PAYLOAD  # decoded bytes an envelope may declare
        self._crypto = ThreadPoolExecutor(1, thread_name_prefix="central-open")

    def close(self) -> None:
        self._crypto.shutdown(wait=False)

    # ------------------------------------------------------------------ cursors and tables
    async def cursor(self, origin: str) -> OriginCursor:
        c = self.origins.get(origin)
        if c is None:
            main, alarms, early = await self.state.origin(origin)
            c = self.origins.setdefault(origin, OriginCursor(main, alarms, early))
            if self.shared or origin not in self.tables:
                row = await self.state.channel_table(origin)
                if row is not None:
                    self._table_row(row)
        return c

    async def _reload(self, origin: str, cur: OriginCursor) -> None:
        """Another worker moved this origin: take its cursors (and channel table) fresh."""
        cur.main, cur.alarms, cur.early = await self.state.origin(origin)
        row = await self.state.channel_table(origin)
        if row is not None:
            self._table_row(row)

    def _table_row(self, row: TableRow) -> None:
        old = self.tables.get(row.origin)
        if old is None or row.seq > old.seq:
            self.tables[row.origin] = row

    def _table_seen(self, origin: str, seq: int, doc: dict[str, Any]) -> None:
        """A channel table stored in journal order (its commit wrote it to the state store)."""
        old = self.tables.get(origin)
        if old is not None and old.seq >= seq:
            return
        row = TableRow(origin, seq, str(doc.get("table_version") or ""), int(doc.get("ts") or 0),
                       len(doc.get("channels") or []), doc, time.time_ns())
        self.tables[origin] = row
        if old is None or old.version != row.version:
            log.info("origin %s: channel table %s (%d channels) from its seq %d%s", origin, row.version,
                     row.channels, seq, f", was {old.version}" if old else "")

    # ------------------------------------------------------------------ ingest
    async def ingest(self, src: SourceEntry, items: list[Item]) -> list[str]:
        """Ingest frames from one source in order; stops a lane at its first refusal.

        Opening (signature, decryption, decoding) runs a few envelopes ahead of storing,
        on its own thread, so the two overlap; the look-ahead is bounded to keep memory
        bounded on large push bodies."""
        loop = asyncio.get_running_loop()

        suites = envelope.SUITES if src.suite == "any" else (src.suite,)

        def open_(it: Item) -> Any:
            return envelope.open_envelope(it.data, recipient=self.recipient, trusted=self.trust,
                                          max_payload=self.max_payload, suites=suites)

        ahead: list[asyncio.Future[Any]] = []
        verdicts: list[str] = []
        stopped: set[str] = set()
        try:
            for i, it in enumerate(items):
                while len(ahead) < min(len(items) - i, OPEN_AHEAD):
                    nxt = items[i + len(ahead)]
                    ahead.append(loop.run_in_executor(self._crypto, open_, nxt))
                fut = ahead.pop(0)
                if it.lane in stopped:
                    with contextlib.suppress(envelope.EnvelopeError):
                        await fut
                    verdicts.append(GAP)
                    continue
                v = await self._ingest_one(src, it, fut)
                verdicts.append(v)
                if v in (REJECTED, GAP, REFUSED):
                    stopped.add(it.lane)
        finally:
            for f in ahead:
                f.cancel()
        return verdicts

    def _reject(self, st: SourceStatus, reason: str, msg: str) -> str:
        st.rejected[reason] = st.rejected.get(reason, 0) + 1
        if st.last_error != msg:
            log.warning("source %s: rejected an envelope: %s", st.id, msg)
        st.last_error = msg
        return REJECTED

    async def _ingest_one(self, src: SourceEntry, it: Item, opening: asyncio.Future[Any]) -> str:
        st = self.status[src.id]
        st.bytes_in += len(it.data)
        loop = asyncio.get_running_loop()
        try:
            opened = await opening
        except envelope.Undecodable as e:
            st.refusal = str(e)
            if not (src.mode == "pull" or src.relay):
                st.refused += 1
                log.warning("source %s: refused an envelope for good: %s", src.id, e)
                return REFUSED
            h = envelope.peek_header(it.data)  # authentic: its signature was checked
            if it.lane == "alarms":  # the main lane stores its marker, in order
                await self._skip(src, st, it)
                return ACCEPTED
            st.set_aside += 1
            log.error("source %s: set aside %s %d..%d: %s", src.id, h.origin, h.first_seq, h.last_seq, e)
            opened = envelope.Opened(h, _set_aside(h, len(it.data), str(e)))
        except envelope.EnvelopeError as e:
            return self._reject(st, type(e).__name__, str(e))
        h, records = opened.header, opened.records
        if not src.relay and h.origin != src.id:
            return self._reject(st, "wrong_origin", f"{src.id} sent an envelope of {h.origin}")
        cur = await self.cursor(h.origin)
        async with cur.lock:
            for _attempt in range(2):
                main = cur.main
                if it.lane == "main":
                    if h.last_seq <= main:
                        return await self._duplicate(src, st, it)
                    if h.first_seq > main + 1:
                        r0 = records[0]
                        explained = r0.is_gap and int(r0.event().get("from_seq", r0.seq)) <= main + 1
                        if not (explained or src.relay):
                            if self.shared and _attempt == 0:
                                # another worker may have moved this origin: judge on fresh state
                                await self._reload(h.origin, cur)
                                continue
                            st.gaps += 1
                            log.warning("source %s: %s %d..%d does not follow %d: fetching the range again",
                                        src.id, h.origin, h.first_seq, h.last_seq, main)
                            return GAP
                        if not explained:
                            st.gaps += 1
                            log.warning("relay %s: %s jumps from %d to %d (the relay lost that range)",
                                        src.id, h.origin, main, h.first_seq)
                    new = [r for r in records if r.seq > main and r.seq not in cur.early]
                    new_main, early_add = h.last_seq, []
                else:
                    new = [r for r in records if r.seq > main and r.seq not in cur.early]
                    # a channel table is not stored ahead: it takes effect where the gateway
                    # journaled it, so the main lane stores it in order (samples before it
                    # keep the previous table's names)
                    deferred = [r for r in new if chantable.is_table_record(r)]
                    if deferred:
                        new = [r for r in new if not chantable.is_table_record(r)]
                    if not new and not deferred:
                        return await self._duplicate(src, st, it)
                    new_main, early_add = main, [r.seq for r in new]
                tables = _tables_in(new) if it.lane == "main" else []
                if new and self.store is not None:
                    row = self.tables.get(h.origin)
                    await self.store.put(h.origin, new, row.doc if row is not None else None,
                                         main_lane=it.lane == "main")
                if new and (self.journal or self.store is None):
                    items = [_payload(r) for r in new]
                    if it.lane == "main" and self.shared and cur.appended != main:
                        # this worker's journal resumes an origin other workers stored in
                        # between: first a copy of the channel table in force here, so
                        # this journal alone tags what follows right (docs/central.md)
                        row = self.tables.get(h.origin)
                        if row is not None and row.seq <= main and not chantable.is_table_record(new[0]):
                            items.insert(0, row.doc)
                    j = self.journals.open(h.origin)
                    # say durably what is about to be appended, so a crash before the
                    # cursor commit cannot make these records be stored twice
                    await loop.run_in_executor(None, self._write_intent, h.origin, j.last_seq,
                                               [r.seq for r in new])
                    await j.append_many(items)
                fwd = ((it.lane, h.first_seq, h.last_seq, h.n_samples, it.data)
                       if self.forwarded is not None else None)
                commit = Commit(src.id, it.lane, it.seq, h.origin, main, new_main,
                                max(cur.alarms, h.last_seq if it.lane == "alarms" else 0), early_add, fwd,
                                tables)
                if await self.state.commit(commit):
                    break
                # another worker moved this origin: reload and judge again
                await self._reload(h.origin, cur)
            else:
                return await self._duplicate(src, st, it)
            cur.main = new_main
            cur.alarms = commit.alarms_seq
            if it.lane == "main":
                cur.appended = new_main
            if early_add:
                cur.early.update(early_add)
            if new_main > main:
                cur.early = {s for s in cur.early if s > new_main}
            n = sum(r.n for r in new if r.kind == SAMPLES)
            cur.stored_records += len(new)
            cur.stored_samples += n
            cur.last_ts = max(cur.last_ts, h.ts_max)
            if it.lane == "main":
                cur.main_ts = max(cur.main_ts, h.ts_max)
            for seq, doc in tables:
                self._table_seen(h.origin, seq, doc)
        st.positions[it.lane] = max(st.positions.get(it.lane, 0), it.seq)
        st.envelopes += 1
        st.records += len(new)
        st.samples += n
        if self.forwarded is not None:
            self.forwarded()
        for cb in self.on_stored:
            cb(h.origin, new)
        return ACCEPTED

    async def _duplicate(self, src: SourceEntry, st: SourceStatus, it: Item) -> str:
        st.duplicates += 1
        await self._skip(src, st, it)
        return DUPLICATE

    async def _skip(self, src: SourceEntry, st: SourceStatus, it: Item) -> None:
        """Move the source's position past a frame without storing anything."""
        if it.seq > st.positions.get(it.lane, 0):
            st.positions[it.lane] = it.seq
            await self.state.set_position(src.id, it.lane, it.seq)

    # ------------------------------------------------------------------ crash intents
    def _intent_path(self, origin: str) -> Path:
        return self.journals.folder / f"{origin}.intent"

    def _write_intent(self, origin: str, journal_last: int, seqs: list[int]) -> None:
        p = self._intent_path(origin)
        tmp = p.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"journal_after": journal_last, "seqs": seqs}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)

    async def recover_intents(self) -> None:
        """After a crash: records appended to an origin's journal whose cursor commit was
        lost are marked held (early), so the re-sent envelope skips them."""
        d = self.journals.folder
        if not d.is_dir():
            return
        for p in sorted(d.glob("*.intent")):
            origin = p.stem
            try:
                doc = json.loads(p.read_text())
                after, seqs = int(doc["journal_after"]), [int(x) for x in doc["seqs"]]
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("ignoring unreadable %s: %s", p, e)
                continue
            j = self.journals.open(origin)
            if j.last_seq > after:
                cur = await self.cursor(origin)
                held = [q for q in seqs if q > cur.main and q not in cur.early]
                if held:
                    ok = await self.state.commit(Commit("", "alarms", 0, origin, cur.main,
                                                        cur.main, cur.alarms, held))
                    if ok:
                        cur.early.update(held)
                        log.warning("origin %s: %d records were stored before a crash without their "
                                    "cursor; they will not be stored again", origin, len(held))
            p.unlink()
