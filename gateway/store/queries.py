"""Read queries on the journal file: the only SQL on ``records`` outside the journal's
own writer. Each function takes a SQLite connection (the journal's reader thread, via
``Journal.run_read``, or a read-only connection from ``open_readonly`` for commands
that run beside the daemon), decodes records through ``decode_data`` and never
assumes a codec.
"""

from __future__ import annotations

import bisect
import json
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gateway.core import chantable
from gateway.core.batch import SAMPLE_BYTES, Batch
from gateway.core.record import EVENT, SAMPLES, decode_data

#: event records looked at, at most, by one backwards scan
SCAN_EVENTS_MAX = 40_000


def open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to a journal file that exists (FileNotFoundError otherwise)."""
    if not path.exists():
        raise FileNotFoundError(path)
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)


def index_periods(db: sqlite3.Connection, name: str, since_ns: int) -> list[tuple[int, int]]:
    """Where channel ``name`` was in the numbering over time: (sequence of a channel_table
    event, the channel's index in it, -1 if it had none), oldest first, back to the table
    in force at ``since_ns``. A live reload or a restart with another config renumbers the
    channels; the name is what stays (gateway/reload.py)."""
    out: list[tuple[int, int]] = []
    before: int | None = None
    while (found := last_channel_table(db, before)) is not None:
        seq, ev = found
        idx = next((int(c["index"]) for c in ev["channels"]
                    if isinstance(c, dict) and c.get("name") == name and isinstance(c.get("index"), int)), -1)
        out.append((seq, idx))
        if int(ev.get("ts") or 0) < since_ns:
            break
        before = seq - 1
    out.reverse()
    return out


def channel_samples(db: sqlite3.Connection, index: int, start_ns: int, end_ns: int, *,
                    max_samples: int | None = None, name: str | None = None) -> tuple[Batch, bool]:
    """One channel's samples with ``start_ns <= ts < end_ns``, oldest first; and whether
    ``max_samples`` cut them (the oldest are kept). With ``name``, each record is read with
    the channel's index in the table journaled before it (``index_periods``), so the
    history follows the channel across renumberings; ``index`` is its index now (and
    before any table was journaled)."""
    ts_l, v_l, q_l = [], [], []
    n = 0
    truncated = False
    periods = index_periods(db, name, start_ns) if name is not None else []
    p_seq = [s for s, _ in periods]
    rows = db.execute("SELECT seq, codec, data FROM records WHERE kind = ? AND ts_max >= ? AND ts_min < ? "
                      "ORDER BY seq", (SAMPLES, start_ns, end_ns))
    for seq, codec, data in rows:
        at = index
        if p_seq:
            k = bisect.bisect_left(p_seq, seq) - 1
            at = periods[k][1] if k >= 0 else index
            if at < 0:
                continue
        raw = decode_data(codec, data)
        if len(raw) % SAMPLE_BYTES:
            continue
        b = Batch.from_bytes(raw)
        m = (b.channel == at) & (b.ts >= start_ns) & (b.ts < end_ns)
        if m.any():
            ts_l.append(b.ts[m])
            v_l.append(b.value[m])
            q_l.append(b.quality[m])
            n += int(m.sum())
        if max_samples is not None and n > max_samples:
            truncated = True
            break
    if not ts_l:
        return Batch.empty(), False
    ts = np.concatenate(ts_l)
    order = np.argsort(ts, kind="stable")
    b = Batch(np.full(len(ts), index, np.int32), ts[order], np.concatenate(v_l)[order],
              np.concatenate(q_l)[order])
    if max_samples is not None and len(b) > max_samples:
        b = Batch(b.channel[:max_samples], b.ts[:max_samples], b.value[:max_samples], b.quality[:max_samples])
    return b, truncated


def oldest_sample_ts(db: sqlite3.Connection) -> int | None:
    """The time of the oldest sample the journal still holds (None: it holds none)."""
    row = db.execute("SELECT MIN(ts_min) FROM records WHERE kind = ?", (SAMPLES,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def events_backwards(db: sqlite3.Connection, *, before: int | None = None, prefix: bytes | None = None,
                     max_records: int = SCAN_EVENTS_MAX) -> Iterator[tuple[int, dict[str, Any]]]:
    """Event records newest first, as (seq, document): those at or before sequence
    ``before``, whose JSON starts with ``prefix`` (a cheap filter on the type, e.g.
    ``b'{"type":"alarm"'``). At most ``max_records`` records are looked at; records
    that are not JSON objects are skipped."""
    sql = "SELECT seq, codec, data FROM records WHERE kind = ?"
    args: list[Any] = [EVENT]
    if before is not None:
        sql += " AND seq <= ?"
        args.append(before)
    looked = 0
    for seq, codec, data in db.execute(sql + " ORDER BY seq DESC", args):
        looked += 1
        if looked > max_records:
            return
        raw = decode_data(codec, data)
        if prefix is not None and not raw.startswith(prefix):
            continue
        try:
            doc = json.loads(raw)
        except ValueError:
            continue
        if isinstance(doc, dict):
            yield int(seq), doc


def last_channel_table(db: sqlite3.Connection,
                       before: int | None = None) -> tuple[int, dict[str, Any]] | None:
    """The newest channel_table event (gateway/core/chantable.py) at or before sequence
    ``before``: (seq, event). Every event is looked at, not the usual scan bound: a busy
    day can journal more events than that between two tables, and central needs the
    table all the same."""
    for seq, ev in events_backwards(db, before=before, prefix=chantable.PREFIX, max_records=sys.maxsize):
        if chantable.is_table_event(ev):
            return seq, ev
    return None


def samples_between(db: sqlite3.Connection, start_ns: int, end_ns: int, channels: np.ndarray, *,
                    max_samples: int) -> tuple[Batch, bool]:
    """The samples of ``channels`` (indexes) with ``start_ns <= ts < end_ns``, in one pass
    over the records (journal order, not sorted by time); and whether ``max_samples`` cut
    them (the oldest records are kept). For consumers that summarise periods of many
    channels at once (the regulator adapters' minute, hourly and daily data)."""
    parts: list[Batch] = []
    n = 0
    truncated = False
    rows = db.execute("SELECT codec, data FROM records WHERE kind = ? AND ts_max >= ? AND ts_min < ? "
                      "ORDER BY seq", (SAMPLES, start_ns, end_ns))
    for codec, data in rows:
        raw = decode_data(codec, data)
        if len(raw) % SAMPLE_BYTES:
            continue
        b = Batch.from_bytes(raw)
        m = (b.ts >= start_ns) & (b.ts < end_ns) & np.isin(b.channel, channels)
        k = int(m.sum())
        if not k:
            continue
        if n + k > max_samples:
            truncated = True
            break
        parts.append(Batch(b.channel[m], b.ts[m], b.value[m], b.quality[m]))
        n += k
    if not parts:
        return Batch.empty(), truncated
    out = Batch(np.concatenate([p.channel for p in parts]), np.concatenate([p.ts for p in parts]),
                np.concatenate([p.value for p in parts]), np.concatenate([p.quality for p in parts]))
    return out, truncated
