"""Import and export of a register's records as CSV or JSON (import: all or nothing).

A CSV cell a spreadsheet would run as a formula (one starting with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return: the OWASP CSV-injection rule) is exported with a
leading ``'``, which spreadsheets show as text; an import takes such cells as the text
they are and lists them in its result's ``warnings``.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from gateway.admin.registers import permits
from gateway.admin.registers.schema import (
    Invalid,
    NotFound,
    TypeSpec,
)
from gateway.admin.registers.store import StoreCore
from gateway.core.units import iso_ns

#: what starts a formula in Excel, LibreOffice and Google Sheets
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutral(cell: Any) -> Any:
    """A CSV cell as a spreadsheet shows it: text that would start a formula gets a ``'``."""
    if isinstance(cell, str) and cell.startswith(FORMULA_START):
        return "'" + cell
    return cell


class ImportExport(StoreCore):
    def export(self, rtype: str, fmt: str = "json", archived: str = "false") -> str:
        spec = self.spec(rtype)
        docs = self.query(rtype, archived=archived, limit=10**9)["items"]
        if fmt == "json":
            return json.dumps(
                {
                    "type": rtype,
                    "exported": iso_ns(self.clock()),
                    "records": [
                        {
                            "id": d["id"],
                            "state": d.get("state"),
                            "archived": d["archived"],
                            "version": d["version"],
                            **d["data"],
                        }
                        for d in docs
                    ],
                },
                ensure_ascii=False,
                indent=1,
            )
        if fmt != "csv":
            raise Invalid([(("query", "format"), "expected csv or json")])
        buf = io.StringIO()
        cols = ["id", "state", "archived", "version", *spec.fields]
        w = csv.writer(buf)
        w.writerow(cols)
        for d in docs:
            row: list[Any] = [
                d["id"],
                d.get("state") or "",
                "true" if d["archived"] else "false",
                d["version"],
            ]
            for k, f in spec.fields.items():
                v = d["data"].get(k)
                if v is None:
                    row.append("")
                elif f.type in ("list", "channels", "table"):
                    row.append(json.dumps(v, ensure_ascii=False))
                elif isinstance(v, bool):
                    row.append("true" if v else "false")
                else:
                    row.append(v)
            w.writerow([neutral(c) for c in row])
        return buf.getvalue()

    def import_(
        self, rtype: str, text: str, fmt: str, actor: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """All or nothing: rows with an ``id`` update that record, the others are created."""
        spec = self.spec(rtype)
        rows: list[tuple[int | None, dict[str, Any], bool]] = []
        errs: list[tuple[tuple[str | int, ...], str]] = []
        if fmt == "json":
            try:
                doc = json.loads(text)
            except ValueError as e:
                raise Invalid([(("body",), f"not JSON: {e}")]) from None
            except RecursionError:
                raise Invalid([(("body",), "not JSON records: nested too deeply")]) from None
            recs = doc.get("records") if isinstance(doc, dict) else doc
            if not isinstance(recs, list):
                raise Invalid([(("body",), 'expected a list of records, or {"records": [...]}')])
            for i, r in enumerate(recs):
                if not isinstance(r, dict):
                    errs.append((("records", i), "expected an object"))
                    continue
                r = dict(r)
                rid = r.pop("id", None)
                for k in ("state", "archived", "version"):
                    r.pop(k, None)
                if rid is not None and (isinstance(rid, bool) or not isinstance(rid, int)):
                    errs.append((("records", i, "id"), "expected an integer id"))
                    continue
                rows.append((rid, r, False))
        elif fmt == "csv":
            try:
                reader = csv.DictReader(io.StringIO(text))
                for i, r in enumerate(reader):
                    if None in r:
                        errs.append((("row", i + 2), "more cells than columns"))
                        continue
                    sid = (r.pop("id", "") or "").strip()
                    for k in ("state", "archived", "version"):
                        r.pop(k, None)
                    if sid and not sid.isdigit():
                        errs.append((("row", i + 2, "id"), f"expected an integer id, got {sid!r}"))
                        continue
                    rows.append((int(sid) if sid else None, dict(r), True))
            except csv.Error as e:
                raise Invalid([(("body",), f"not CSV: {e}")]) from None
        else:
            raise Invalid([(("query", "format"), "expected csv or json")])
        cleaned: list[tuple[int | None, dict[str, Any]]] = []
        for i, (rid, data, text_) in enumerate(rows):
            loc: tuple[str | int, ...] = ("row", i + 2) if fmt == "csv" else ("records", i)
            try:
                cleaned.append(
                    (rid, self._validate(spec, data, partial=rid is not None, text=text_, loc=loc))
                )
            except Invalid as e:
                errs.extend(e.errors)
        if errs:
            raise Invalid(errs[:100])
        warnings = [
            f"row {i + 2}, {k}: starts with {v[0]!r}, which a spreadsheet runs as a formula; imported as text"
            for i, (_rid, data) in enumerate(cleaned) if fmt == "csv"
            for k, v in data.items() if isinstance(v, str) and v.startswith(FORMULA_START)
        ]
        events = []
        created = updated = 0
        with self._tx():
            for i, (rid, data) in enumerate(cleaned):
                row_loc: tuple[str | int, ...] = ("row", i + 2) if fmt == "csv" else ("records", i)
                if rid is None:
                    _refuse_client_fields(spec, None, data, row_loc)
                    self._permit_no_taken(rtype, spec, data, None)
                    _doc, ev = self._create(rtype, data, actor, action="import")
                    created += 1
                else:
                    try:
                        cur = self._doc(self._row(rtype, rid))
                    except NotFound:
                        raise Invalid(
                            [(("records", i, "id"), f"no {rtype} record {rid} to update")]
                        ) from None
                    if {k: v for k, v in data.items() if v is not None} == cur["data"] and not any(
                        v is None and k in cur["data"] for k, v in data.items()
                    ):
                        continue
                    changed = {k: v for k, v in data.items() if cur["data"].get(k) != v}
                    _refuse_client_fields(spec, cur.get("state"), changed, row_loc)
                    errs = permits.check_data(rtype, spec, {**cur["data"], **changed})
                    if errs:
                        raise Invalid([((*row_loc, *loc[1:]), msg) for loc, msg in errs])
                    self._permit_no_taken(rtype, spec, changed, rid)
                    _doc, ev = self._update(rtype, rid, data, actor, action="import")
                    updated += 1
                events.append(ev)
        result: dict[str, Any] = {"created": created, "updated": updated,
                                  "unchanged": len(cleaned) - created - updated}
        if warnings:
            result["warnings"] = warnings[:100]
        return result, events


def _refuse_client_fields(spec: TypeSpec, state: str | None, data: dict[str, Any],
                          loc: tuple[str | int, ...]) -> None:
    """A permit's gateway-written or approved fields cannot be imported either."""
    errs = permits.check_client_fields(spec, state, data)
    if errs:
        raise Invalid([((*loc, *where[1:]), msg) for where, msg in errs])
