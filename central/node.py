"""The central sync service: pulls (or receives) envelopes from gateways, stores, forwards.

One ``CentralNode`` runs:

- a pull loop per source it holds (two lanes each: alarms long-polled, main drained
  at full speed), with per-source positions and backoff;
- an HTTPS listener with the push endpoint (``POST /sync/v1/push``), ``GET /status``,
  and the ``/sync/v1`` API of its outbox for the next level up;
- ingest: open (verify the origin's signature, decrypt), then store each (origin,
  sequence) exactly once: duplicates are ignored, tampered or unknown envelopes are
  rejected and counted, a hole in an origin's sequence is refused so the range is
  fetched again (unless a gap record from the origin's journal explains it);
- storage into one journal per origin (``state_dir/journals/<origin>.db``, records
  as the gateway journaled them) and, when configured, InfluxDB;
- forwarding: each envelope stored is also put unchanged in the outbox, which the
  next level pulls (or this node pushes), so the top can verify every plant's
  signature itself;
- with ``state.backend: postgres``, several workers share the pull sources through
  row leases (``central.state.PgState.claim``).

Crashes: an intent file written before each journal append lets the next start
mark records that reached the journal without their cursor commit, so the re-sent
envelope skips them (see docs/central.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from central.config import CentralConfig, SourceEntry, tokens_path
from central.state import Commit, PgState, SqliteState, State, TableRow
from gateway import chanmap
from gateway.core.record import SAMPLES, Record
from gateway.core.tokens import FailureLimiter, UserStore, check_token
from gateway.store.journal import Journal
from uplink import envelope, keys
from uplink.auth import AuthError, Verifier, ensure_tls_cert
from uplink.link import Link
from uplink.sync import (
    LANES,
    MAX_BODY,
    NET_ERRORS,
    Backoff,
    HttpsListener,
    Item,
    Peer,
    PushClient,
    Signer,
    SyncServer,
    unpack_frames,
)

log = logging.getLogger(__name__)

ACCEPTED, DUPLICATE, REJECTED, GAP = "accepted", "duplicate", "rejected", "gap"
INFLUX_CURSOR = "influxdb"
OPEN_AHEAD = 4  # envelopes opened ahead of the one being stored


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


class OutboxSource:
    """This node's outbox as a sync ``Source`` for the next level."""

    def __init__(self, node_id: str, state: State):
        self.node_id = node_id
        self.state = state
        self._pos = {"main": 0, "alarms": 0}
        self._head = 0
        self._first = 0
        self._changed = asyncio.Event()

    async def load(self) -> None:
        self._pos = await self.state.upstream_positions()
        self._first, self._head = await self.state.outbox_bounds()

    def added(self, n: int = 1) -> None:
        self._head += n
        self._changed.set()

    async def read(self, lane: str, after: int, *, max_bytes: int, max_items: int = 0) -> list[Item]:
        rows = await self.state.outbox_read(lane, after, max_bytes)
        if max_items:
            rows = rows[:max_items]
        if rows:
            self._head = max(self._head, rows[-1].id)
        return [Item(lane, r.id, r.data, r.samples, 0) for r in rows]

    async def ack(self, lane: str, seq: int) -> None:
        if seq > self._pos.get(lane, 0):
            self._pos[lane] = seq
            await self.state.upstream_ack(lane, seq)

    def position(self, lane: str) -> int:
        return self._pos.get(lane, 0)

    def head(self) -> int:
        return self._head

    def first(self) -> int:
        return self._first

    async def wait(self, after: int, wait_s: float) -> bool:
        # the outbox id space is shared by both lanes: wake on any addition
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), wait_s)
        return self._changed.is_set()


def _payload(r: Record) -> Any:
    return r.batch() if r.kind == SAMPLES else r.event()


def _tables_in(records: list[Record]) -> list[tuple[int, dict[str, Any]]]:
    """The channel_table events among records: (origin seq, event)."""
    out = []
    for r in records:
        if chanmap.is_table_record(r):
            with contextlib.suppress(ValueError):
                ev = r.event()
                if chanmap.is_table_event(ev):
                    out.append((r.seq, ev))
    return out


class _TableHolder:
    """The channel table the InfluxDB writer of one origin tags by, and its series keys."""

    def __init__(self, origin: str):
        self.origin = origin
        self.doc: dict[str, Any] | None = None
        self._series: Any = None

    @property
    def version(self) -> str | None:
        return str(self.doc.get("table_version")) if self.doc else None

    def set(self, doc: dict[str, Any]) -> None:
        if self.doc is None or doc.get("table_version") != self.doc.get("table_version"):
            self._series = None
        self.doc = doc

    def tags(self, index: int) -> dict[str, Any]:
        return chanmap.tags(self.doc, index)

    def series(self, writer: Any, n: int) -> Any:
        if self._series is None or len(self._series) < n:
            have = len(self.doc.get("channels") or []) if self.doc else 0
            self._series = writer.make_series(max(n, have, 2 * len(self._series or [])))
        return self._series


class CentralNode:
    def __init__(self, cfg: CentralConfig):
        self.cfg = cfg
        self.id = cfg.node.id
        self.state_dir = Path(cfg.node.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        all_keys = keys.load_all(self.state_dir)
        if not all_keys:
            all_keys = [keys.init(self.state_dir, self.id)]
        self.keys = all_keys
        self.signer = Signer(all_keys[0].ed25519, all_keys[0].kid)
        self.worker = cfg.state.worker or f"{socket.gethostname()}-{os.getpid()}"
        # whom we trust: each source's own keys, plus origins behind relays
        self.trust = keys.TrustStore()
        self.sources: dict[str, SourceEntry] = {}
        self.by_kid: dict[str, SourceEntry] = {}
        push_keys = {}
        for s in cfg.sources:
            if not s.enabled:
                continue
            self.sources[s.id] = s
            for pk in keys.load_public(cfg.path(s.keys)):
                if pk.id != s.id:
                    raise ValueError(f"sources {s.id}: key bundle {s.keys} is for node {pk.id!r}")
                self.trust.add(pk)
                self.by_kid[pk.kid] = s
                push_keys[pk.kid] = pk.ed25519
        for p in cfg.trust:
            for pk in keys.load_public(cfg.path(p)):
                self.trust.add(pk)
        self.status = {s.id: SourceStatus(s.id, s.mode, s.relay) for s in self.sources.values()}
        self.origins: dict[str, OriginCursor] = {}
        self.journals: dict[str, Journal] = {}
        self._influx: dict[str, asyncio.Task[None]] = {}
        self.influx_writers: dict[str, Any] = {}
        self.influx_tables: dict[str, _TableHolder] = {}
        if cfg.state.backend == "postgres":
            assert cfg.state.dsn
            self.state: State = PgState(cfg.state.dsn)
        else:
            self.state = SqliteState(self.state_dir / "central.db")
        self.shared = isinstance(self.state, PgState)
        self.outbox = OutboxSource(self.id, self.state)
        self.forward = cfg.upstream is not None
        up = cfg.upstream
        up_trust = {}
        if up is not None:
            for p in up.keys:
                for pk in keys.load_public(cfg.path(p)):
                    up_trust[pk.kid] = pk.ed25519
        self.up_link = Link(self.state_dir, rate=up.bandwidth if up else None,
                            monthly_budget=up.monthly_budget if up else None)
        window = cfg.listen.clock_window
        self.push_verifier = Verifier(push_keys, window_s=window)
        self.sync_server = SyncServer(
            self.outbox, Verifier(up_trust, window_s=window), self.up_link,
            max_bytes=up.max_bytes if up else 8 * 2**20,
            extra_routes=[Route("/sync/v1/push", self.h_push, methods=["POST"]),
                          Route("/status", self.h_status, methods=["GET"])],
            info=lambda: {"kind": "central"})
        self.listener: HttpsListener | None = None
        self.pusher: PushClient | None = None
        self.up_peer: Peer | None = None
        self._crypto = ThreadPoolExecutor(1, thread_name_prefix="central-open")
        self._pullers: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self.on_stored: list[Callable[[str, list[Record]], None]] = []
        self.started_ns = time.time_ns()
        # latest channel table per origin (mirror of the state store's channel_tables)
        self.tables: dict[str, TableRow] = {}
        # bearer tokens for the operator endpoints (GET /status): scrypt hashes, file 0600
        self.tokens = UserStore(tokens_path(cfg))
        ls = cfg.listen
        self.token_limiter = FailureLimiter(ls.max_failures, ls.failure_window, ls.lockout)
        self._verify_slots = asyncio.Semaphore(2)

    # ------------------------------------------------------------------ storage
    def journal(self, origin: str) -> Journal:
        j = self.journals.get(origin)
        if j is None:
            st = self.cfg.storage
            j = Journal(self.state_dir / "journals" / f"{origin}.db", quota_bytes=st.journal_quota,
                        max_age_s=st.journal_max_age, sync=st.journal_sync)
            self.journals[origin] = j
            if self.cfg.influxdb is not None:
                j.register(INFLUX_CURSOR)
                self._influx[origin] = asyncio.create_task(self._influx_loop(origin, j),
                                                           name=f"influx[{origin}]")
        return j

    async def _influx_loop(self, origin: str, j: Journal) -> None:
        """Store an origin's journal into InfluxDB (the historian's writer), after its cursor.

        Points are tagged like the gateway's own historian tags them (gateway=<origin>,
        site, device, channel=<name>, kind, unit, area, hazard_source; measurement per
        kind), using the origin's channel table in force at each record: the last
        ``channel_table`` event before it in this journal (stored in the origin's
        journal order). Before any table is known, ``channel=<index>``."""
        from gateway.historian.service import InfluxWriter

        assert self.cfg.influxdb is not None
        holder = _TableHolder(origin)
        writer = InfluxWriter(self.cfg.influxdb, base_tags={"gateway": origin},
                              tags_for_channel=holder.tags, base_dir=self.cfg.base_dir)
        self.influx_writers[origin] = writer
        writer.open()
        try:
            found = await j.run_read(lambda db: chanmap.last_table(db, j.cursor(INFLUX_CURSOR)))
            if found is not None:
                holder.set(found[1])
            self.influx_tables[origin] = holder
            while True:
                after = j.cursor(INFLUX_CURSOR)
                recs = await j.read(after, 500, max_samples=50_000)
                if not recs:
                    await j.wait(after, 30.0)
                    continue
                parts = []
                for r in recs:
                    if r.kind == SAMPLES:
                        b = r.batch()
                        if len(b):
                            series = holder.series(writer, int(b.channel.max()) + 1)
                            parts.append(writer.format_batch(b, series))
                        continue
                    ev = r.event()
                    if chanmap.is_table_event(ev):
                        holder.set(ev)
                        ev = chanmap.summary(ev)
                    parts.append(writer.format_event(ev, seq=r.seq))
                body = b"".join(p if p.endswith(b"\n") or not p else p + b"\n" for p in parts)
                if body:
                    await writer.write(body)
                await j.ack(INFLUX_CURSOR, recs[-1].seq)
        finally:
            await writer.close()

    async def _cursor(self, origin: str) -> OriginCursor:
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

    # ------------------------------------------------------------------ channel tables
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

        def open_(it: Item) -> Any:
            return envelope.open_envelope(it.data, recipient=self.keys, trusted=self.trust)

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
                if v in (REJECTED, GAP):
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
        except envelope.EnvelopeError as e:
            return self._reject(st, type(e).__name__, str(e))
        h, records = opened.header, opened.records
        if not src.relay and h.origin != src.id:
            return self._reject(st, "wrong_origin", f"{src.id} sent an envelope of {h.origin}")
        cur = await self._cursor(h.origin)
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
                    deferred = [r for r in new if chanmap.is_table_record(r)]
                    if deferred:
                        new = [r for r in new if not chanmap.is_table_record(r)]
                    if not new and not deferred:
                        return await self._duplicate(src, st, it)
                    new_main, early_add = main, [r.seq for r in new]
                tables = _tables_in(new) if it.lane == "main" else []
                if new:
                    items = [_payload(r) for r in new]
                    if it.lane == "main" and self.shared and cur.appended != main:
                        # this worker's journal resumes an origin other workers stored in
                        # between: first a copy of the channel table in force here, so
                        # this journal alone tags what follows right (docs/central.md)
                        row = self.tables.get(h.origin)
                        if row is not None and row.seq <= main and not chanmap.is_table_record(new[0]):
                            items.insert(0, row.doc)
                    j = self.journal(h.origin)
                    # say durably what is about to be appended, so a crash before the
                    # cursor commit cannot make these records be stored twice
                    await loop.run_in_executor(None, self._write_intent, h.origin, j.last_seq,
                                               [r.seq for r in new])
                    await j.append_many(items)
                fwd = (it.lane, h.first_seq, h.last_seq, h.n_samples, it.data) if self.forward else None
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
        if self.forward:
            self.outbox.added()
        for cb in self.on_stored:
            cb(h.origin, new)
        return ACCEPTED

    def _intent_path(self, origin: str) -> Path:
        return self.state_dir / "journals" / f"{origin}.intent"

    def _write_intent(self, origin: str, journal_last: int, seqs: list[int]) -> None:
        p = self._intent_path(origin)
        tmp = p.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"journal_after": journal_last, "seqs": seqs}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)

    async def _recover_intents(self) -> None:
        """After a crash: records appended to an origin's journal whose cursor commit was
        lost are marked held (early), so the re-sent envelope skips them."""
        d = self.state_dir / "journals"
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
            j = self.journal(origin)
            if j.last_seq > after:
                cur = await self._cursor(origin)
                held = [q for q in seqs if q > cur.main and q not in cur.early]
                if held:
                    ok = await self.state.commit(Commit("", "alarms", 0, origin, cur.main,
                                                        cur.main, cur.alarms, held))
                    if ok:
                        cur.early.update(held)
                        log.warning("origin %s: %d records were stored before a crash without their "
                                    "cursor; they will not be stored again", origin, len(held))
            p.unlink()

    async def _duplicate(self, src: SourceEntry, st: SourceStatus, it: Item) -> str:
        st.duplicates += 1
        if it.seq > st.positions.get(it.lane, 0):
            st.positions[it.lane] = it.seq
            await self.state.set_position(src.id, it.lane, it.seq)
        return DUPLICATE

    # ------------------------------------------------------------------ pulling
    async def _pull_lane(self, src: SourceEntry, peer: Peer, lane: str) -> None:
        """Fetch and ingest one lane; the main lane prefetches the next range while it
        stores the current one (``after`` = received, ``ack`` = stored), so the
        gateway seals while central opens."""
        assert src.pull is not None
        pull = src.pull
        st = self.status[src.id]
        backoff = Backoff(0.2, pull.retry_max)

        def stored_pos() -> int:
            pos = st.positions
            return max(pos["alarms"], pos["main"]) if lane == "alarms" else pos["main"]

        async def fetch(after: int) -> tuple[list[Item], int]:
            params = {"lane": lane, "after": after, "ack": min(after, st.positions[lane]),
                      "max_bytes": pull.max_bytes, "wait": f"{pull.wait:g}"}
            r = await peer.request("GET", "/sync/v1/envelopes", params)
            items = unpack_frames(r.content)
            try:
                head = int(r.headers.get("x-safegw-head", "0"))
            except ValueError:
                head = 0
            return items, head

        pending: asyncio.Task[tuple[list[Item], int]] | None = None
        try:
            while True:
                try:
                    if pending is not None:
                        items, head = await pending
                        pending = None
                    else:
                        items, head = await fetch(stored_pos())
                except NET_ERRORS as e:
                    pending = None
                    msg = str(e) or type(e).__name__
                    if st.state != "failing":
                        log.error("source %s: pull failed: %s", src.id, msg)
                    st.state, st.last_error = "failing", msg
                    await asyncio.sleep(backoff.next())
                    continue
                if st.state != "ok":
                    log.info("source %s: pulling (%s)", src.id, pull.url)
                    st.state, st.last_error = "ok", None
                st.last_contact_ns = time.time_ns()
                st.head = max(st.head, head)
                if not items:
                    backoff.reset()
                    continue
                if lane == "main":
                    pending = asyncio.create_task(fetch(items[-1].seq), name=f"prefetch[{src.id}]")
                verdicts = await self.ingest(src, items)
                if REJECTED in verdicts or GAP in verdicts:
                    if pending is not None:
                        pending.cancel()
                        await asyncio.gather(pending, return_exceptions=True)
                        pending = None
                    await asyncio.sleep(backoff.next())
                else:
                    backoff.reset()
        finally:
            if pending is not None:
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)

    async def _pull_source(self, src: SourceEntry) -> None:
        assert src.pull is not None
        st = self.status[src.id]
        st.positions = await self.state.positions(src.id)
        ca = self.cfg.path(src.pull.tls_cert) if src.pull.tls_cert else None
        peer = Peer(src.pull.url, self.signer, ca=ca, verify=src.pull.verify,
                    timeout_s=src.pull.timeout + src.pull.wait)
        try:
            async with asyncio.TaskGroup() as tg:
                for lane in ("alarms", "main"):
                    tg.create_task(self._pull_lane(src, peer, lane), name=f"pull[{src.id}/{lane}]")
        finally:
            await peer.close()
            st.state = "idle"

    async def _leases(self) -> None:
        """Hold pull sources: all of them (SQLite) or a fair share by lease (PostgreSQL)."""
        pull_ids = sorted(s.id for s in self.sources.values() if s.mode == "pull")
        lease = self.cfg.state.lease
        while True:
            try:
                mine = set(await self.state.claim(self.worker, pull_ids, lease))
            except Exception as e:  # psycopg.Error and friends: keep what we have, retry
                log.error("lease renewal failed: %s", e)
                mine = set(self._pullers)
            for sid in list(self._pullers):
                if sid not in mine:
                    log.info("worker %s: released %s", self.worker, sid)
                    self._pullers.pop(sid).cancel()
            for sid in sorted(mine - set(self._pullers)):
                log.info("worker %s: pulling %s", self.worker, sid)
                self._pullers[sid] = asyncio.create_task(self._pull_source(self.sources[sid]),
                                                         name=f"pull[{sid}]")
            if not isinstance(self.state, PgState):
                await asyncio.Event().wait()
            await asyncio.sleep(lease / 3)

    # ------------------------------------------------------------------ HTTP
    async def h_push(self, request: Request) -> Response:
        try:
            if int(request.headers.get("content-length", "0")) > MAX_BODY:
                return JSONResponse({"error": f"body over {MAX_BODY} bytes"}, status_code=413)
        except ValueError:
            return JSONResponse({"error": "bad content-length"}, status_code=400)
        body = await request.body()
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            kid = self.push_verifier.verify(request.method, target, body, request.headers)
        except AuthError as e:
            return SyncServer.refuse(e)
        src = self.by_kid[kid]
        st = self.status[src.id]
        if src.mode != "push":
            return JSONResponse({"error": f"{src.id} is configured to be pulled"}, status_code=403)
        try:
            items = unpack_frames(body)
        except ValueError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        st.last_contact_ns = time.time_ns()
        st.state = "ok"
        with contextlib.suppress(ValueError):
            st.head = int(request.query_params.get("head", "0"))
        if len(self._pullers) == 0 and isinstance(self.state, PgState):
            # another worker may have moved this source: read positions fresh
            st.positions = await self.state.positions(src.id)
        await self.ingest(src, items)
        return JSONResponse({"cursors": st.positions})

    async def operator(self, request: Request) -> Response | None:
        """Check an operator endpoint's bearer token: None when it may go on, else the
        refusal (401 with a JSON error, 429 while the address is locked out). Tokens are
        made by ``safegw central -c FILE tokens add NAME`` and never logged."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        hdr = {"WWW-Authenticate": 'Bearer realm="safegw-central"'}
        if scheme.lower() != "bearer" or not token:
            return JSONResponse({"error": "unauthorized",
                                 "detail": "a bearer token is required (Authorization: Bearer TOKEN; "
                                           "'safegw central -c FILE tokens add NAME' makes one)"},
                                status_code=401, headers=hdr)
        client = request.client.host if request.client else "?"
        p, wait = await check_token(self.tokens, self.token_limiter, self._verify_slots, token, client)
        if wait > 0:
            detail = f"too many failed token checks; retry in {wait:.0f} s"
            return JSONResponse({"error": "locked_out", "detail": detail}, status_code=429,
                                headers={"Retry-After": str(max(1, round(wait)))})
        if p is None:
            return JSONResponse({"error": "unauthorized", "detail": "invalid or revoked token"},
                                status_code=401, headers=hdr)
        return None

    async def h_status(self, request: Request) -> Response:
        if not self.cfg.listen.status:
            return JSONResponse({"error": "status disabled"}, status_code=404)
        refused = await self.operator(request)
        if refused is not None:
            return refused
        return JSONResponse(self.status_doc())

    def status_doc(self) -> dict[str, Any]:
        now = time.time_ns()

        def age(ts: int) -> float | None:
            return round((now - ts) / 1e9, 3) if ts else None

        def table(origin: str) -> dict[str, Any] | None:
            row = self.tables.get(origin)
            if row is None:
                return None
            return {"version": row.version, "channels": row.channels, "seq": row.seq, "ts": row.ts,
                    "devices": len({c.get("device") for c in row.doc.get("channels") or []
                                    if isinstance(c, dict)})}

        sources = {}
        for sid, st in self.status.items():
            d = st.as_dict()
            d["last_contact"] = _iso(st.last_contact_ns)
            d["since_contact_s"] = age(st.last_contact_ns)
            d["lag_records"] = d["lag"]
            # lag in seconds: how old the newest data stored from this source is, while it
            # has more (0 when caught up; None before anything is known)
            cur = None if st.relay else self.origins.get(sid)
            if d["lag"] == 0:
                d["lag_s"] = 0.0
            elif d["lag"] and cur is not None and cur.main_ts:
                d["lag_s"] = round(max(0.0, (now - cur.main_ts) / 1e9), 3)
            else:
                d["lag_s"] = None
            if not st.relay:
                d["channel_table"] = table(sid)
            sources[sid] = d
        origins = {o: {"main_seq": c.main, "alarms_seq": c.alarms, "early": len(c.early),
                       "stored_records": c.stored_records, "stored_samples": c.stored_samples,
                       "last_ts": c.last_ts, "data_age_s": age(c.main_ts),
                       "channel_table": table(o),
                       "influx_tagged_by": (self.influx_tables[o].version if o in self.influx_tables
                                            else None)}
                   for o, c in self.origins.items()}
        doc: dict[str, Any] = {"node": self.id, "worker": self.worker, "backend": self.cfg.state.backend,
                               "uptime_s": round((now - self.started_ns) / 1e9, 1),
                               "sources": sources, "origins": origins,
                               "pulling": sorted(self._pullers)}
        if self.influx_writers:
            doc["influxdb"] = {o: {"cursor": self.journals[o].cursor(INFLUX_CURSOR),
                                   "lag": self.journals[o].lag(INFLUX_CURSOR), **w.status()}
                               for o, w in self.influx_writers.items()}
        if self.forward:
            doc["upstream"] = {"mode": self.cfg.upstream.mode if self.cfg.upstream else None,
                               "head": self.outbox.head(),
                               "cursors": {ln: self.outbox.position(ln) for ln in LANES},
                               "link": self.up_link.stats()}
        return doc

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.state.open()
        await self.outbox.load()
        self.tables = await self.state.channel_tables()
        if self.cfg.listen.status and not self.tokens.users():
            log.warning("no operator tokens in %s: GET /status answers 401 to everyone; make one with "
                        "'safegw central -c FILE tokens add NAME'", self.tokens.path)
        for sid in self.sources:
            self.status[sid].positions = await self.state.positions(sid)
        for o, (m, a) in (await self.state.all_origins()).items():
            await self._cursor(o)
            self.origins[o].main, self.origins[o].alarms = m, a
            if self.cfg.influxdb is not None:
                self.journal(o)  # resume storing into InfluxDB after a restart
        await self._recover_intents()
        lc = self.cfg.listen
        if lc.tls_cert and lc.tls_key:
            cert, key = self.cfg.path(lc.tls_cert), self.cfg.path(lc.tls_key)
        else:
            cert, key = ensure_tls_cert(self.state_dir, self.id)
        self.listener = HttpsListener(self.sync_server.app, lc.address, cert, key, name="central")
        await self.listener.start()
        up = self.cfg.upstream
        if up is not None and up.mode == "push":
            assert up.url
            self.up_peer = Peer(up.url, self.signer, ca=self.cfg.path(up.ca) if up.ca else None,
                                timeout_s=up.timeout)
            self.pusher = PushClient(self.outbox, self.up_peer, self.up_link, max_bytes=up.max_bytes,
                                     retry_max_s=up.retry_max)
        log.info("central %s listening on %s (%d sources, state %s, worker %s)", self.id, lc.address,
                 len(self.sources), self.cfg.state.backend, self.worker)

    @property
    def port(self) -> int:
        assert self.listener is not None
        return self.listener.port

    async def _housekeeping(self) -> None:
        up = self.cfg.upstream
        while True:
            await asyncio.sleep(60)
            self.up_link.save()
            if up is not None:
                try:
                    n = await self.state.outbox_prune(time.time_ns() - int(up.keep * 1e9))
                except Exception as e:  # database errors: report, keep running
                    log.error("outbox prune failed: %s", e)
                else:
                    if n:
                        log.info("outbox: pruned %d forwarded envelopes", n)

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._leases(), name="leases")
                tg.create_task(self._housekeeping(), name="housekeeping")
                if self.pusher is not None:
                    tg.create_task(self.pusher.run(), name="push[upstream]")
                stop = tg.create_task(self._stop.wait(), name="stop")
                await stop
                raise _Stop
        except* _Stop:
            pass
        finally:
            for t in self._pullers.values():
                t.cancel()
            await asyncio.gather(*self._pullers.values(), return_exceptions=True)
            self._pullers.clear()

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        if self.listener is not None:
            await self.listener.stop()
        if self.up_peer is not None:
            await self.up_peer.close()
        with contextlib.suppress(Exception):
            await self.state.release(self.worker, list(self.sources))
        for t in self._influx.values():
            t.cancel()
        await asyncio.gather(*self._influx.values(), return_exceptions=True)
        await self.state.close()
        for j in self.journals.values():
            j.close()
        self._crypto.shutdown(wait=False)
        self.up_link.save()


class _Stop(Exception):
    pass


def _iso(ns: int) -> str | None:
    if not ns:
        return None
    import datetime as dt

    t = dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")
