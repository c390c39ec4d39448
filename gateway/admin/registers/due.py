"""Due dates across registers (certificate expiry, next inspection, hidden-danger
deadlines) and the reminder events they raise, each once per item and threshold."""

from __future__ import annotations

import logging
from typing import Any

from gateway.admin.registers.store import StoreCore

log = logging.getLogger(__name__)

OVERDUE = -1  # the reminder threshold recorded for "past due"


class DueDates(StoreCore):
    def due(self, within_days: int = 30) -> list[dict[str, Any]]:
        """Every open due date across registers within N days (or past), soonest first."""
        today = self.today()
        out = []
        for row in self._db.execute(
            "SELECT id, type, version, state, archived, created_ns, created_by, "
            "updated_ns, updated_by, data FROM records WHERE archived=0"
        ):
            if row[1] not in self.types:
                continue
            d = self._doc(row, today)
            for x in d["due"]:
                if x["days_left"] <= within_days:
                    out.append(
                        {
                            "type": d["type"],
                            "id": d["id"],
                            "label": d.get("label", str(d["id"])),
                            "state": d.get("state"),
                            "title": self.types[d["type"]].title,
                            **x,
                        }
                    )
        out.sort(key=lambda x: (x["days_left"], x["type"], x["id"]))
        return out

    def check_reminders(self) -> list[dict[str, Any]]:
        """Reminder events for due dates crossing a threshold today; each fires once.

        For each (record, due field, due date) the bands are the configured days ahead
        (e.g. 30, 7, 1) and "overdue". Only the tightest band reached fires; looser bands
        are marked as done with it, so a gateway that was off for a month does not send
        a burst of stale "30 days left" reminders. Changing the date re-arms them.
        """
        today = self.today()
        now = self.clock()
        events: list[dict[str, Any]] = []
        sent = {
            tuple(r) for r in self._db.execute("SELECT type, record, field, due, threshold FROM reminders")
        }
        new_rows = []
        for row in self._db.execute(
            "SELECT id, type, version, state, archived, created_ns, created_by, "
            "updated_ns, updated_by, data FROM records WHERE archived=0"
        ).fetchall():
            spec = self.types.get(row[1])
            if spec is None:
                continue
            doc = self._doc(row, today)
            for x in doc["due"]:
                days_left = x["days_left"]
                if days_left < 0:
                    band = OVERDUE
                else:
                    reached = [t for t in self.thresholds if days_left <= t]
                    if not reached:
                        continue
                    band = min(reached)
                key = (doc["type"], doc["id"], x["field"], x["date"], band)
                if key in sent:
                    continue
                looser = [t for t in self.thresholds if band == OVERDUE or t > band]
                for t in {band, *looser}:
                    k2 = (doc["type"], doc["id"], x["field"], x["date"], t)
                    if k2 not in sent:
                        sent.add(k2)
                        new_rows.append((*k2, now))
                f = spec.fields[x["field"]]
                events.append(
                    {
                        "type": "reminder",
                        "ts": now,
                        "register": doc["type"],
                        "id": doc["id"],
                        "label": doc.get("label", str(doc["id"])),
                        "field": x["field"],
                        "field_title": f.title or x["field"],
                        "title": spec.title,
                        "title_zh": spec.title_zh,
                        "due": x["date"],
                        "days_left": days_left,
                        "threshold": None if band == OVERDUE else band,
                        "overdue": band == OVERDUE,
                        "state": doc.get("state"),
                    }
                )
        if new_rows:
            with self._tx():
                self._db.executemany("INSERT OR IGNORE INTO reminders VALUES (?,?,?,?,?,?)", new_rows)
        for ev in events:
            log.info(
                "reminder: %s %s %s due %s (%d days)",
                ev["register"],
                ev["label"],
                ev["field"],
                ev["due"],
                ev["days_left"],
            )
        return events
