"""The register store: typed records in the registers' SQLite file, with their history
(who changed what, when, before and after), workflows and archiving. ``RegisterStore``
(the package's ``__init__``) adds due dates, import/export, attachments and the audit
trail to this core.

All SQLite work happens on one dedicated thread (``call``); the sync methods are also
usable directly (tests, CLI), never from the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from gateway.admin.registers import permits
from gateway.admin.registers.db import open_db
from gateway.admin.registers.schema import (
    Conflict,
    Invalid,
    NotFound,
    Refused,
    TypeSpec,
    Validator,
    check_size,
    load_schemas,
)
from gateway.core.personal import PersonalMode, redact
from gateway.core.units import iso_ns

log = logging.getLogger(__name__)

T = TypeVar("T")


class StoreCore:
    """Typed register records with their history and workflow."""

    def __init__(
        self,
        path: str | Path,
        *,
        schemas: dict[str, TypeSpec] | None = None,
        channels: Iterable[str] | None = None,
        clock: Callable[[], int] = time.time_ns,
        remind_days: int | list[int] = (30, 7, 1),  # type: ignore[assignment]
        max_attachment: int = 20 * 10**6,
        attachments_dir: Path | None = None,
        personal_upstream: PersonalMode = "full",
    ):
        self.path = Path(path)
        self.types = schemas if schemas is not None else load_schemas()
        self.validator = Validator(channels)
        self.clock = clock
        days = [remind_days] if isinstance(remind_days, int) else list(remind_days)
        self.thresholds = sorted(set(days), reverse=True)
        self.max_attachment = max_attachment
        self.attachments_dir = attachments_dir or self.path.with_name("attachments")
        self.personal_upstream = personal_upstream
        self._db = open_db(self.path)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="registers")

    # ------------------------------------------------------------------ plumbing
    async def call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run a sync method on the store's own thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kw))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._db.close()

    def spec(self, rtype: str) -> TypeSpec:
        try:
            return self.types[rtype]
        except KeyError:
            raise NotFound(
                f"unknown register type {rtype!r}; known: {', '.join(sorted(self.types))}"
            ) from None

    def today(self) -> dt.date:
        """The plant's local date, from the injectable clock."""
        return dt.datetime.fromtimestamp(self.clock() / 1e9).date()

    # ------------------------------------------------------------------ reading
    def _row(self, rtype: str, rid: int) -> sqlite3.Row | tuple[Any, ...]:
        row = self._db.execute(
            "SELECT id, type, version, state, archived, created_ns, created_by, updated_ns, "
            "updated_by, data FROM records WHERE id=? AND type=?",
            (rid, rtype),
        ).fetchone()
        if row is None:
            raise NotFound(f"{rtype} record {rid} does not exist")
        return row  # type: ignore[no-any-return]

    def _doc(self, row: Any, today: dt.date | None = None) -> dict[str, Any]:
        rid, rtype, version, state, archived, cns, cby, uns, uby, data = row
        spec = self.types.get(rtype)
        d = json.loads(data)
        today = today or self.today()
        due = []
        overdue = False
        final = spec is not None and spec.workflow is not None and state in spec.workflow.final
        if spec is not None:
            for f in spec.due_fields():
                if d.get(f):
                    days_left = (dt.date.fromisoformat(d[f]) - today).days
                    due.append({"field": f, "date": d[f], "days_left": days_left})
            wf = spec.workflow
            if wf is not None and wf.overdue is not None and not final and d.get(wf.overdue.field):
                overdue = dt.date.fromisoformat(d[wf.overdue.field]) < today
            elif wf is None:
                overdue = any(x["days_left"] < 0 for x in due)
        doc: dict[str, Any] = {
            "id": rid,
            "type": rtype,
            "version": version,
            "archived": bool(archived),
            "created": iso_ns(cns),
            "created_by": cby,
            "updated": iso_ns(uns),
            "updated_by": uby,
            "data": d,
            "due": due if not (archived or final) else [],
            "overdue": bool(overdue and not archived),
        }
        if state is not None:
            doc["state"] = state
        if spec is not None and spec.label and spec.label in d:
            doc["label"] = str(d[spec.label])
        if rtype == "major_hazard_source" and d.get("chemicals"):
            # GB 18218: a unit is a major hazard source when Σ q/Q >= 1
            doc["q_over_q"] = round(
                sum(c["quantity_t"] / c["critical_t"] for c in d["chemicals"] if c.get("critical_t")), 4
            )
        if rtype == "accident_investigation":
            doc["grade_by_rule"] = permits.accident_grade(d)
        return doc

    def get(self, rtype: str, rid: int) -> dict[str, Any]:
        self.spec(rtype)
        doc = self._doc(self._row(rtype, rid))
        doc["attachments"] = self.attachments(rtype, rid)
        return doc

    def attachments(self, rtype: str, rid: int) -> list[dict[str, Any]]:
        return [
            {"id": a, "filename": fn, "mime": m, "size": s, "sha256": h, "uploaded": iso_ns(ts), "by": by}
            for a, fn, m, s, h, ts, by in self._db.execute(
                "SELECT id, filename, mime, size, sha256, ts, actor FROM attachments "
                "WHERE record=? AND type=? AND archived=0 ORDER BY id",
                (rid, rtype),
            )
        ]

    def query(
        self,
        rtype: str,
        *,
        filters: dict[str, str] | None = None,
        q: str | None = None,
        state: str | None = None,
        archived: str = "false",
        overdue: bool | None = None,
        due_within: int | None = None,
        sort: str = "id",
        desc: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> dict[str, Any]:
        spec = self.spec(rtype)
        sql = ["FROM records WHERE type=?"]
        args: list[Any] = [rtype]
        if archived in ("false", "true"):
            sql.append("AND archived=?")
            args.append(1 if archived == "true" else 0)
        elif archived != "all":
            raise Invalid([(("query", "archived"), "expected false, true or all")])
        if state is not None:
            if spec.workflow is None:
                raise Invalid([(("query", "state"), f"{rtype} has no workflow")])
            if state not in spec.workflow.states:
                raise Invalid([(("query", "state"), f"{state!r} is not one of {spec.workflow.states}")])
            sql.append("AND state=?")
            args.append(state)
        for k, v in (filters or {}).items():
            f = spec.fields.get(k)
            if f is None:
                raise Invalid(
                    [(("query", k), f"unknown filter; fields of {rtype}: {', '.join(spec.fields)}")]
                )
            if f.type in ("list", "channels", "table"):
                sql.append("AND EXISTS (SELECT 1 FROM json_each(records.data, ?) WHERE value = ?)")
                args += [f"$.{k}", v]
                continue
            errs: list[tuple[tuple[str | int, ...], str]] = []
            val = self.validator.value(
                f.model_copy(update={"min": None, "max": None}), v, ("query", k), errs, text=True
            )
            if errs:
                raise Invalid(errs)
            sql.append("AND json_extract(data, ?) = ?")
            args += [f"$.{k}", val]
        if q:
            sql.append("AND instr(lower(data), lower(?)) > 0")
            args.append(json.dumps(q, ensure_ascii=False)[1:-1])
        if sort != "id" and sort not in spec.fields and sort not in ("updated", "created"):
            raise Invalid([(("query", "sort"), f"sort by id, created, updated or a field of {rtype}")])
        where = " ".join(sql)
        rows = self._db.execute(
            "SELECT id, type, version, state, archived, created_ns, created_by, updated_ns, "
            f"updated_by, data {where}",
            args,
        ).fetchall()
        today = self.today()
        docs = [self._doc(r, today) for r in rows]
        if overdue is not None:
            docs = [d for d in docs if d["overdue"] == overdue]
        if due_within is not None:
            docs = [d for d in docs if any(x["days_left"] <= due_within for x in d["due"])]

        def key(d: dict[str, Any]) -> Any:
            if sort == "id":
                return (0, d["id"])
            if sort in ("updated", "created"):
                return (0, d[sort])
            v = d["data"].get(sort)
            return (1, "") if v is None else (0, str(v)) if not isinstance(v, int | float) else (0, v)

        try:
            docs.sort(key=key, reverse=desc)
        except TypeError:
            docs.sort(key=lambda d: str(key(d)), reverse=desc)
        return {
            "type": rtype,
            "total": len(docs),
            "offset": offset,
            "limit": limit,
            "items": docs[offset : offset + limit],
        }

    def summary(self) -> list[dict[str, Any]]:
        counts = dict(
            self._db.execute("SELECT type, count(*) FROM records WHERE archived=0 GROUP BY type").fetchall()
        )
        return [
            {
                "type": name,
                "title": s.title,
                "title_zh": s.title_zh,
                "records": counts.get(name, 0),
                "due_fields": s.due_fields(),
                "workflow": s.workflow.model_dump(by_alias=True) if s.workflow else None,
            }
            for name, s in self.types.items()
        ]

    def history(self, rtype: str, rid: int) -> list[dict[str, Any]]:
        self.spec(rtype)
        self._row(rtype, rid)
        return [
            {
                "seq": s,
                "version": v,
                "ts": iso_ns(ts),
                "actor": a,
                "action": act,
                "before": json.loads(b) if b else None,
                "after": json.loads(af) if af else None,
                "comment": c,
            }
            for s, v, ts, a, act, b, af, c in self._db.execute(
                "SELECT seq, version, ts, actor, action, before, after, comment FROM changes "
                "WHERE record=? ORDER BY seq",
                (rid,),
            )
        ]

    # ------------------------------------------------------------------ writing
    def _check_refs(
        self,
        spec: TypeSpec,
        data: dict[str, Any],
        loc: tuple[str | int, ...],
        errs: list[tuple[tuple[str | int, ...], str]],
    ) -> None:
        for k, v in data.items():
            f = spec.fields.get(k)
            if f is not None and f.type == "ref" and v is not None:
                row = self._db.execute(
                    "SELECT archived FROM records WHERE id=? AND type=?", (v, f.to)
                ).fetchone()
                if row is None:
                    errs.append(((*loc, k), f"no {f.to} record with id {v}"))
                elif row[0]:
                    errs.append(((*loc, k), f"{f.to} record {v} is archived"))

    def _validate(
        self,
        spec: TypeSpec,
        data: Any,
        *,
        partial: bool,
        text: bool = False,
        loc: tuple[str | int, ...] = ("body",),
    ) -> dict[str, Any]:
        errs: list[tuple[tuple[str | int, ...], str]] = []
        if not isinstance(data, dict):
            raise Invalid([(loc, "expected a JSON object of fields")])
        out = self.validator.fields(spec.fields, data, loc, errs, partial=partial, text=text)
        self._check_refs(spec, out, loc, errs)
        if not partial and not errs:
            errs.extend(permits.check_data(self._rtype_of(spec), spec, out))
        if errs:
            raise Invalid(errs)
        check_size(out, loc)
        return out

    def _rtype_of(self, spec: TypeSpec) -> str:
        return next(n for n, s in self.types.items() if s is spec)

    def _event(
        self, doc: dict[str, Any], action: str, actor: str, changed: list[str] | None = None, **extra: Any
    ) -> dict[str, Any]:
        personal = self.spec(doc["type"]).personal_fields()
        ev = {
            "type": "register",
            "ts": self.clock(),
            "register": doc["type"],
            "id": doc["id"],
            "version": doc["version"],
            "action": action,
            "actor": actor,
            "state": doc.get("state"),
            "archived": doc["archived"],
            "data": redact(doc["data"], personal, self.personal_upstream),
        }
        check_size(ev, ("body",))  # an update may grow a record past the bound of one event
        if changed is not None:
            ev["changed"] = changed
        if personal:
            # which data keys are personal, for the consumers (the historian leaves them out)
            ev["personal"] = personal
        ev.update(extra)
        return ev

    def _log_change(
        self,
        doc_before: dict[str, Any] | None,
        doc_after: dict[str, Any],
        action: str,
        actor: str,
        comment: str | None,
    ) -> None:
        def snap(d: dict[str, Any] | None) -> str | None:
            if d is None:
                return None
            return json.dumps(
                {"state": d.get("state"), "archived": d["archived"], "data": d["data"]}, ensure_ascii=False
            )

        self._db.execute(
            "INSERT INTO changes(record, type, version, ts, actor, action, before, after, comment) "
            "VALUES (?,?,?,?,?,?,?,?,?)",
            (
                doc_after["id"],
                doc_after["type"],
                doc_after["version"],
                self.clock(),
                actor,
                action,
                snap(doc_before),
                snap(doc_after),
                comment,
            ),
        )

    def _create(
        self, rtype: str, data: dict[str, Any], actor: str, comment: str | None = None, action: str = "create"
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        spec = self.spec(rtype)
        now = self.clock()
        state = spec.workflow.initial if spec.workflow else None
        clean = {k: v for k, v in data.items() if v is not None}
        cur = self._db.execute(
            "INSERT INTO records(type, version, state, archived, created_ns, created_by, "
            "updated_ns, updated_by, data) VALUES (?,1,?,0,?,?,?,?,?)",
            (rtype, state, now, actor, now, actor, json.dumps(clean, ensure_ascii=False)),
        )
        doc = self._doc(self._row(rtype, int(cur.lastrowid or 0)))
        self._log_change(None, doc, action, actor, comment)
        return doc, self._event(doc, action, actor, sorted(clean))

    def _permit_no_taken(self, rtype: str, spec: TypeSpec, data: dict[str, Any], rid: int | None) -> None:
        """A permit's number names one permit: another (not archived) with it is a conflict."""
        if spec.permit is None or not data.get("permit_no"):
            return
        row = self._db.execute(
            "SELECT id FROM records WHERE type=? AND archived=0 AND json_extract(data, '$.permit_no')=? "
            "AND id IS NOT ?",
            (rtype, data["permit_no"], rid),
        ).fetchone()
        if row is not None:
            raise Conflict(f"{rtype} number {data['permit_no']!r} is already record {row[0]}")

    def create(
        self, rtype: str, data: Any, actor: str, comment: str | None = None
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        spec = self.spec(rtype)
        clean = self._validate(spec, data, partial=False)
        errs = permits.check_client_fields(spec, None, clean)
        if errs:
            raise Invalid(errs)
        with self._tx():
            self._permit_no_taken(rtype, spec, clean, None)
            doc, ev = self._create(rtype, clean, actor, comment)
        return doc, [ev]

    def _update(
        self,
        rtype: str,
        rid: int,
        changes: dict[str, Any],
        actor: str,
        *,
        action: str = "update",
        state: str | None = None,
        archived: bool | None = None,
        comment: str | None = None,
        version: int | None = None,
        check_required: bool = True,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        spec = self.spec(rtype)
        before = self._doc(self._row(rtype, rid))
        if version is not None and version != before["version"]:
            raise Conflict(
                f"{rtype} record {rid} is at version {before['version']}, not {version}: "
                "someone changed it meanwhile; reload and retry"
            )
        data = dict(before["data"])
        for k, v in changes.items():
            if v is None:
                data.pop(k, None)
            else:
                data[k] = v
        if check_required:
            missing = [k for k, f in spec.fields.items() if f.required and data.get(k) is None]
            if missing:
                raise Invalid([(("body", k), "required") for k in missing])
        changed = sorted(k for k in set(data) | set(before["data"]) if data.get(k) != before["data"].get(k))
        new_state = state if state is not None else before.get("state")
        new_archived = before["archived"] if archived is None else archived
        self._db.execute(
            "UPDATE records SET version=version+1, state=?, archived=?, updated_ns=?, updated_by=?, "
            "data=? WHERE id=?",
            (new_state, int(new_archived), self.clock(), actor, json.dumps(data, ensure_ascii=False), rid),
        )
        after = self._doc(self._row(rtype, rid))
        self._log_change(before, after, action, actor, comment)
        return after, self._event(after, action, actor, changed)

    def update(
        self,
        rtype: str,
        rid: int,
        data: Any,
        actor: str,
        *,
        version: int | None = None,
        comment: str | None = None,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        spec = self.spec(rtype)
        clean = self._validate(spec, data, partial=True)
        with self._tx():
            cur = self._doc(self._row(rtype, rid))
            if cur["archived"]:
                raise Conflict(f"{rtype} record {rid} is archived; restore it first")
            errs = permits.check_client_fields(spec, cur.get("state"), clean)
            errs += permits.check_data(rtype, spec, {**cur["data"], **clean})
            if errs:
                raise Invalid(errs)
            self._permit_no_taken(rtype, spec, clean, rid)
            doc, ev = self._update(rtype, rid, clean, actor, version=version, comment=comment)
        return doc, [ev]

    def archive(
        self, rtype: str, rid: int, actor: str, *, archived: bool = True, comment: str | None = None
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        self.spec(rtype)
        with self._tx():
            cur = self._doc(self._row(rtype, rid))
            if cur["archived"] == archived:
                raise Conflict(f"{rtype} record {rid} is {'already' if archived else 'not'} archived")
            doc, ev = self._update(
                rtype,
                rid,
                {},
                actor,
                action="archive" if archived else "restore",
                archived=archived,
                comment=comment,
                check_required=False,
            )
        return doc, [ev]

    def transition(
        self,
        rtype: str,
        rid: int,
        name: str,
        data: Any,
        actor: str,
        *,
        comment: str | None = None,
        analysis: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """A workflow step. A step with ``check: gas`` needs ``analysis`` (the caller's
        analysis of the permit's live readings, gateway/admin/permits/analysis.py): when it
        failed, the refusal is recorded and ``Refused`` raised."""
        spec = self.spec(rtype)
        wf = spec.workflow
        if wf is None:
            raise NotFound(f"{rtype} has no workflow")
        t = wf.transitions.get(name)
        if t is None:
            raise NotFound(f"{rtype} has no transition {name!r}; it has: {', '.join(wf.transitions)}")
        clean = self._validate(spec, data if data is not None else {}, partial=True)
        refused: tuple[str, list[dict[str, Any]]] | None = None
        with self._tx():
            cur = self._doc(self._row(rtype, rid))
            if cur["archived"]:
                raise Conflict(f"{rtype} record {rid} is archived")
            if cur["state"] not in t.from_:
                raise Conflict(
                    f"cannot {name} a {rtype} in state {cur['state']!r}; {name} applies in {t.from_}"
                )
            merged = {**cur["data"], **{k: v for k, v in clean.items()}}
            missing = [r for r in t.requires if merged.get(r) is None]
            if missing:
                raise Invalid([(("body", r), f"required to {name}") for r in missing])
            errs = permits.check_client_fields(spec, cur["state"], clean)
            errs += permits.check_signatures(t, name, merged) + permits.check_data(rtype, spec, merged)
            if spec.permit is not None and t.to == permits.IN_PROGRESS and cur["state"] == "approved":
                errs += permits.check_start(rtype, spec, merged, self._now())
            if errs:
                raise Invalid(errs)
            changes = dict(clean)
            if permits.needs_gas(spec, t, merged):
                if analysis is None:
                    raise Invalid(
                        [(("body",), f"{name} needs a gas analysis of live readings (through the API)")]
                    )
                changes.update(permits.with_analysis(merged, analysis, actor))
                if not analysis["ok"]:
                    record = permits.with_analysis(cur["data"], analysis, actor)
                    doc, ev = self._update(rtype, rid, record, actor,
                                           action=f"refused:{name}", comment=analysis["message"],
                                           check_required=False)
                    refused = (analysis["message"], [ev])
            if refused is None:
                changes.update(permits.step_fields(spec, cur["state"], t.to, self._now()))
                doc, ev = self._update(
                    rtype, rid, changes, actor, action=f"transition:{name}", state=t.to, comment=comment
                )
                ev["from_state"] = cur["state"]
        if refused is not None:
            raise Refused(refused[0], analysis, refused[1])
        return doc, [ev]

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock() / 1e9).astimezone()

    def _tx(self) -> Any:
        db = self._db

        class _T:
            def __enter__(self) -> None:
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, et: Any, e: Any, tb: Any) -> None:
                db.execute("COMMIT" if et is None else "ROLLBACK")

        return _T()
