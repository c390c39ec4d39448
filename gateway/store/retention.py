"""Retention: the oldest records go when the journal is over its quota or they are over
its age, and a record an active consumer has not acknowledged is replaced by a gap
record that says what was lost (docs/journal.md). Runs in the writer's transaction."""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import Any

from gateway.core.record import CODEC_RAW, EVENT, GAP_PREFIX

log = logging.getLogger("gateway.store.journal")

#: after the quota forces dropping, shrink to this fraction of it (hysteresis, so
#: not every commit pays for a retention pass)
QUOTA_LOW_WATER = 0.9


def drop_oldest(db: sqlite3.Connection, *, now: int, total: int, last: int, quota: int, max_age_ns: int,
                active: dict[str, int], name: str,
                reason_override: str | None = None) -> tuple[int, int, bool, int]:
    """Drop the oldest records over quota or age, inside the caller's transaction.

    ``active`` holds the cursors of the consumers registered in this run: a record one
    of them has not acknowledged is replaced by a gap record (see docs/journal.md).
    Returns (records dropped, payload bytes freed, whether a gap was written, new
    first sequence). Never drops ``last`` (the newest record).
    """
    cutoff = now - max_age_ns
    target = int(quota * QUOTA_LOW_WATER) if total > quota else total
    upto = 0
    after = 0
    freed = 0
    rows_dropped = 0
    by_quota = by_age = False
    done = False
    while not done:
        rows = db.execute(
            "SELECT seq, ts_max, nbytes FROM records WHERE seq > ? AND seq < ? ORDER BY seq LIMIT 1024",
            (after, last),
        ).fetchall()
        if not rows:
            break
        for seq, ts_max, nb in rows:
            over = total - freed > target
            old = ts_max < cutoff
            if not (over or old):
                done = True
                break
            by_quota |= over
            by_age |= old and not over
            upto = seq
            freed += nb
            rows_dropped += 1
        after = rows[-1][0]
    if not rows_dropped:
        first = db.execute("SELECT MIN(seq) FROM records").fetchone()[0]
        return 0, 0, False, first if first is not None else last + 1
    behind = sorted(c for c, s in active.items() if s < upto)
    gap: dict[str, Any] | None = None
    if behind:
        low = min(active[c] for c in behind)
        lost = db.execute(
            "SELECT MIN(seq), MAX(seq), COALESCE(SUM(CASE kind WHEN 1 THEN n ELSE 0 END), 0), "
            "COALESCE(SUM(CASE kind WHEN 2 THEN 1 ELSE 0 END), 0), MIN(ts_min), MAX(ts_max) "
            "FROM records WHERE seq > ? AND seq <= ?",
            (low, upto),
        ).fetchone()
        if lost[0] is not None:
            reasons = set()
            if reason_override:
                reasons.add(reason_override)
            else:
                reasons |= {"quota"} if by_quota else set()
                reasons |= {"age"} if by_age else set()
            from_seq, samples, events, ts_from, ts_to = lost[0], lost[2], lost[3], lost[4], lost[5]
            # an earlier gap in the range: fold its counts into this one
            for (data,) in db.execute(
                "SELECT data FROM records WHERE seq > ? AND seq <= ? AND kind = 2 "
                "AND substr(data, 1, ?) = ?", (low, upto, len(GAP_PREFIX), GAP_PREFIX),
            ):
                old = json.loads(data)
                from_seq = min(from_seq, int(old["from_seq"]))
                samples += int(old["samples"])
                events += int(old["events"]) - 1  # the old gap record itself is no event lost
                ts_from = min(ts_from, int(old["ts_from"]))
                ts_to = max(ts_to, int(old["ts_to"]))
                reasons |= set(str(old.get("reason", "")).split("+")) - {""}
            gap = {
                "type": "gap", "ts": now, "from_seq": from_seq, "to_seq": upto,
                "samples": samples, "events": events, "ts_from": ts_from, "ts_to": ts_to,
                "reason": "+".join(sorted(reasons)), "consumers": behind,
            }
    db.execute("DELETE FROM records WHERE seq <= ?", (upto,))
    if gap is not None:
        data = json.dumps(gap, separators=(",", ":")).encode()
        # the gap takes the place (and the sequence) of the last record dropped
        db.execute(
            "INSERT INTO records(seq, kind, ts_min, ts_max, n, nbytes, codec, data) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (upto, EVENT, gap["ts_from"], gap["ts_to"], 1, len(data), CODEC_RAW, data),
        )
        freed -= len(data)
        log.warning("journal %s: dropped unsent records %d..%d (%d samples, %d events; %s) for %s",
                    name, gap["from_seq"], upto, gap["samples"], gap["events"],
                    gap["reason"], ", ".join(behind))
    db.execute("UPDATE meta SET value=value-? WHERE key='bytes'", (freed,))
    first = upto if gap is not None else upto + 1
    return rows_dropped, freed, gap is not None, first
