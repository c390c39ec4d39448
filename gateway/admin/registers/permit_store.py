"""The register store's side of the permits to work (GB 30871-2022): analyses taken
outside a step, the flag an alarm (or a failing analysis) raises on a permit in progress,
the permits a channel's alarm concerns, and the timing reminders. The checks of the
workflow steps are in ``permits`` (called by ``StoreCore.transition``)."""

from __future__ import annotations

import json
import logging
from typing import Any

from gateway.admin.registers import permits
from gateway.admin.registers.schema import Conflict, NotFound
from gateway.admin.registers.store import StoreCore

log = logging.getLogger(__name__)


class PermitRecords(StoreCore):
    def record_analysis(
        self, rtype: str, rid: int, analysis: dict[str, Any], actor: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """A gas analysis taken outside a step (periodic, during the work): recorded; one
        that fails while the work is in progress flags and suspends the permit."""
        spec = self.spec(rtype)
        if spec.permit is None:
            raise NotFound(f"{rtype} is not a permit to work")
        with self._tx():
            cur = self._doc(self._row(rtype, rid))
            if cur["archived"] or cur.get("state") in (spec.workflow.final if spec.workflow else []):
                what = "archived" if cur["archived"] else cur.get("state")
                raise Conflict(f"{rtype} record {rid} is {what}")
            changes = permits.with_analysis(cur["data"], analysis, actor)
            if not analysis["ok"] and cur.get("state") == permits.IN_PROGRESS:
                return self._flag(rtype, cur, changes, analysis["message"], actor, channel=None)
            doc, ev = self._update(rtype, rid, changes, actor, action="analysis", comment=analysis["message"],
                                   check_required=False)
        return doc, [ev]

    def _flag(self, rtype: str, cur: dict[str, Any], changes: dict[str, Any], reason: str, actor: str,
              *, channel: str | None,
              alarm: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Suspends a permit in progress and flags it; the flag is published like a reminder."""
        now = self._now().isoformat(timespec="seconds")
        changes = {**changes, "flagged": True, "flag_reason": reason, "flag_at": now, "suspended_at": now,
                   "suspend_reason": f"flagged: {reason}"}
        doc, ev = self._update(rtype, cur["id"], changes, actor, action="flag", state=permits.SUSPENDED,
                               comment=reason, check_required=False)
        ev["from_state"] = cur["state"]
        spec = self.spec(rtype)
        notice = {
            "type": "reminder", "ts": self.clock(), "register": rtype, "id": cur["id"],
            "label": doc.get("label", str(cur["id"])), "field": "flagged", "field_title": "permit flagged",
            "title": spec.title, "title_zh": spec.title_zh, "due": None, "days_left": None, "threshold": None,
            "overdue": False, "state": doc.get("state"), "rule": "permit_flagged", "reason": reason,
            "location": doc["data"].get("location"), "channel": channel,
        }
        if alarm is not None:
            notice["alarm"] = alarm
        log.warning("permit %s %s flagged and suspended: %s", rtype, notice["label"], reason)
        return doc, [ev, notice]

    def permits_in_progress(self) -> list[tuple[str, int, list[str], str | None]]:
        """(type, id, channels, area) of every permit whose work is in progress."""
        names = [n for n, s in self.types.items() if s.permit is not None]
        if not names:
            return []
        rows = self._db.execute(
            "SELECT type, id, data FROM records WHERE archived=0 AND state=? "
            f"AND type IN ({','.join('?' * len(names))})",
            (permits.IN_PROGRESS, *names),
        ).fetchall()
        out = []
        for rtype, rid, data in rows:
            d = json.loads(data)
            out.append((rtype, int(rid), list(d.get("channels") or []), d.get("area")))
        return out

    def flag_alarm(self, rtype: str, rid: int, alarm: dict[str, Any]) -> list[dict[str, Any]]:
        """An alarm hit a channel of a permit in progress: flag and suspend it (nothing when
        it is no longer in progress)."""
        with self._tx():
            cur = self._doc(self._row(rtype, rid))
            if cur["archived"] or cur.get("state") != permits.IN_PROGRESS:
                return []
            what = f"{alarm.get('level')} alarm on {alarm.get('channel')}"
            if alarm.get("value") is not None:
                what += f" ({alarm['value']:g} {alarm.get('unit') or ''}".rstrip() + ")"
            reason = f"{what}: stop the work; a new gas analysis is required before it resumes"
            shown = {k: alarm.get(k) for k in ("channel", "rule", "level", "value", "limit", "unit", "ts")}
            _doc, events = self._flag(rtype, cur, {}, reason, "gateway", channel=alarm.get("channel"),
                                      alarm=shown)
        return events

    def check_permit_timing(self) -> list[dict[str, Any]]:
        """Reminders for the permits' timing rules (GB 30871-2022: the analysis no older
        than 30 min when work starts, re-analysis after an interruption, periodic analysis
        in a confined space, the validity's end), each once per rule and reference time
        (the analysis, the suspension, the end of validity)."""
        names = [n for n, s in self.types.items() if s.permit is not None]
        if not names:
            return []
        now_dt = self._now()
        now = self.clock()
        sent = {tuple(r) for r in self._db.execute(
            "SELECT type, record, field, due FROM reminders WHERE field LIKE 'timing:%'")}
        events: list[dict[str, Any]] = []
        new_rows = []
        rows = self._db.execute(
            "SELECT id, type, version, state, archived, created_ns, created_by, updated_ns, updated_by, data "
            f"FROM records WHERE archived=0 AND type IN ({','.join('?' * len(names))})", names).fetchall()
        for row in rows:
            spec = self.types[row[1]]
            if spec.workflow is not None and row[3] in spec.workflow.final:
                continue
            doc = self._doc(row)
            due = permits.timing_due(doc["type"], spec, doc.get("state"), doc["data"], now_dt)
            for rule, ref, message in due:
                key = (doc["type"], doc["id"], f"timing:{rule}", ref)
                if key in sent:
                    continue
                sent.add(key)
                new_rows.append((*key, 0, now))
                events.append({
                    "type": "reminder", "ts": now, "register": doc["type"], "id": doc["id"],
                    "label": doc.get("label", str(doc["id"])), "field": f"timing:{rule}", "field_title": rule,
                    "title": spec.title, "title_zh": spec.title_zh, "due": ref, "days_left": None,
                    "threshold": None, "overdue": rule == "validity_expired", "state": doc.get("state"),
                    "rule": rule, "reason": message, "location": doc["data"].get("location"),
                })
                log.info("permit reminder: %s %s %s: %s", doc["type"], doc.get("label"), rule, message)
        if new_rows:
            with self._tx():
                self._db.executemany("INSERT OR IGNORE INTO reminders VALUES (?,?,?,?,?,?)", new_rows)
        return events
