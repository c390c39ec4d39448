"""Import and export of a register's records as CSV, XLSX (openpyxl; reading in
``xlsxin.py``) or JSON (import: all or nothing; ``dry_run`` answers what an import would
change and writes nothing).

A CSV or XLSX cell a spreadsheet would run as a formula (one starting with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return: the OWASP CSV-injection rule) is exported with a
leading ``'``, which spreadsheets show as text; an import takes such cells as the text
they are and lists them in its result's ``warnings``.
An XLSX text cell is also stored as text (never as a formula), so a spreadsheet cannot run it;
an XLSX import drops the ``'`` its export added (``xlsxin.quote``/``unquote``), so an export
imported again gives the same records.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from gateway.admin.registers import permits, xlsxin
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


class _DryRun(Exception):
    """Raised inside an import's transaction to roll a preview back."""


def _xlsx(title: str, rows: list[list[Any]]) -> bytes:
    # deferred: openpyxl (and the PIL and XML modules it brings) cost the daemon ~8 MB at
    # start when only an export needs them (issue 19: bench/footprint.py, 10k channels)
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell

    wb = Workbook(write_only=True)
    ws = wb.create_sheet(title[:31] or "records")
    for row in rows:
        cells = []
        for v in row:
            c = WriteOnlyCell(ws, value=xlsxin.quote(v) if isinstance(v, str) else v)
            if isinstance(v, str):
                c.data_type = "s"  # text, even when it looks like a formula
            cells.append(c)
        ws.append(cells)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


class ImportExport(StoreCore):
    def export(self, rtype: str, fmt: str = "json", archived: str = "false", **query: Any) -> str | bytes:
        """The records the list would show with the same ``query`` (filters, search, sort), all
        of them, as JSON, CSV or XLSX (bytes)."""
        spec = self.spec(rtype)
        query.pop("limit", None)
        query.pop("offset", None)
        docs = self.query(rtype, archived=archived, limit=10**9, **query)["items"]
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
        if fmt not in ("csv", "xlsx"):
            raise Invalid([(("query", "format"), "expected csv, xlsx or json")])
        cols = ["id", "state", "archived", "version", *spec.fields]
        rows: list[list[Any]] = [list(cols)]
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
            rows.append(row)
        if fmt == "xlsx":
            return _xlsx(rtype, rows)
        buf = io.StringIO()
        w = csv.writer(buf)
        for row in rows:
            w.writerow([neutral(c) for c in row])
        return buf.getvalue()

    def import_(
        self, rtype: str, text: str | bytes, fmt: str, actor: str, *, dry_run: bool = False
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """All or nothing: rows with an ``id`` update that record, the others are created.
        ``text`` is the file's text (csv, json) or bytes (xlsx).
        With ``dry_run`` every check runs in a transaction that is rolled back, and the result
        lists each row's change (``changes``: create with its data, update with before/after)."""
        spec = self.spec(rtype)
        # (id, fields, as text?, where: the row's location, the row number the plan shows)
        rows: list[tuple[int | None, dict[str, Any], bool, tuple[str | int, ...], int]] = []
        errs: list[tuple[tuple[str | int, ...], str]] = []
        warnings: list[str] = []
        table: xlsxin.Table | None = None
        if fmt == "xlsx":
            if not isinstance(text, bytes):
                raise Invalid([(("body",), "an XLSX import is the workbook's bytes")])
            table = xlsxin.read_xlsx(text, rtype)
            warnings += table.warnings
            for n, cells in table.rows:
                r = dict(zip(table.header, cells, strict=True))
                sid = r.pop("id", "").strip()
                for k in ("state", "archived", "version"):
                    r.pop(k, None)
                if sid and not sid.isdigit():
                    col = table.header.index("id")
                    errs.append(((*table.loc(n, col), "id"), f"expected an integer id, got {sid!r}"))
                    continue
                rows.append((int(sid) if sid else None, r, True, table.loc(n), n))
        elif isinstance(text, bytes):
            raise Invalid([(("body",), "expected text")])
        elif fmt == "json":
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
                rows.append((rid, r, False, ("records", i), i))
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
                    rows.append((int(sid) if sid else None, dict(r), True, ("row", i + 2), i + 2))
            except csv.Error as e:
                raise Invalid([(("body",), f"not CSV: {e}")]) from None
        else:
            raise Invalid([(("query", "format"), "expected csv, xlsx or json")])
        cleaned: list[tuple[int | None, dict[str, Any], tuple[str | int, ...], int]] = []
        for rec_id, data, text_, loc, shown in rows:
            try:
                valid = self._validate(spec, data, partial=rec_id is not None, text=text_, loc=loc)
                cleaned.append((rec_id, valid, loc, shown))
            except Invalid as e:
                errs.extend(e.errors)
        if errs:
            raise Invalid([_with_column(table, loc, msg) for loc, msg in errs[:100]])
        if fmt == "csv":
            warnings += [
                f"row {n}, {k}: starts with {v[0]!r}, which a spreadsheet runs as a formula; imported as text"
                for _rid, data, _loc, n in cleaned
                for k, v in data.items() if isinstance(v, str) and v.startswith(FORMULA_START)
            ]
        elif table is not None:
            warnings += [
                f"sheet {table.sheet!r}, cell {xlsxin.column_letter(c)}{n} ({table.header[c]}): a formula or "
                "text that starts like one; imported as its text, never computed"
                for n, c in table.formula_like
            ]
        events: list[dict[str, Any]] = []
        plan: list[dict[str, Any]] = []
        try:
            with self._tx():
                self._import_rows(rtype, spec, cleaned, actor, events, plan, table)
                if dry_run:
                    raise _DryRun
        except _DryRun:
            events = []
        created = sum(1 for x in plan if x["action"] == "create")
        updated = sum(1 for x in plan if x["action"] == "update")
        result: dict[str, Any] = {"created": created, "updated": updated,
                                  "unchanged": len(cleaned) - created - updated}
        if warnings:
            result["warnings"] = warnings[:100]
        if dry_run:
            result["dry_run"] = True
            result["changes"] = plan[:1000]
        return result, events

    def _import_rows(self, rtype: str, spec: TypeSpec,
                     cleaned: list[tuple[int | None, dict[str, Any], tuple[str | int, ...], int]],
                     actor: str, events: list[dict[str, Any]], plan: list[dict[str, Any]],
                     table: xlsxin.Table | None = None) -> None:
        """Writes the validated rows in the caller's transaction, noting each change in ``plan``."""
        for rid, data, row_loc, shown in cleaned:
            try:
                ev = self._import_row(rtype, spec, rid, data, row_loc, shown, actor, plan)
            except Invalid as e:
                raise Invalid([_with_column(table, loc, msg) for loc, msg in e.errors]) from None
            if ev is not None:
                events.append(ev)

    def _import_row(self, rtype: str, spec: TypeSpec, rid: int | None, data: dict[str, Any],
                    row_loc: tuple[str | int, ...], shown: int, actor: str,
                    plan: list[dict[str, Any]]) -> dict[str, Any] | None:
        if rid is None:
            _refuse_client_fields(spec, None, data, row_loc)
            self._permit_no_taken(rtype, spec, data, None)
            doc, ev = self._create(rtype, data, actor, action="import")
            plan.append({"row": shown, "action": "create", "id": doc["id"], "data": data})
            return ev
        try:
            cur = self._doc(self._row(rtype, rid))
        except NotFound:
            raise Invalid([((*row_loc, "id"), f"no {rtype} record {rid} to update")]) from None
        if {k: v for k, v in data.items() if v is not None} == cur["data"] and not any(
            v is None and k in cur["data"] for k, v in data.items()
        ):
            plan.append({"row": shown, "action": "unchanged", "id": rid})
            return None
        changed = {k: v for k, v in data.items() if cur["data"].get(k) != v}
        _refuse_client_fields(spec, cur.get("state"), changed, row_loc)
        errs = permits.check_data(rtype, spec, {**cur["data"], **changed})
        if errs:
            raise Invalid([((*row_loc, *loc[1:]), msg) for loc, msg in errs])
        self._permit_no_taken(rtype, spec, changed, rid)
        _doc, ev = self._update(rtype, rid, data, actor, action="import")
        plan.append({"row": shown, "action": "update", "id": rid,
                     "changes": {k: [cur["data"].get(k), v] for k, v in changed.items()}})
        return ev


def _with_column(table: xlsxin.Table | None, loc: tuple[str | int, ...], msg: str
                 ) -> tuple[tuple[str | int, ...], str]:
    """An XLSX import's error with its column: ``sheet, NAME, row, 7, column, C, field``."""
    if table is None or len(loc) < 5 or loc[0] != "sheet" or loc[4] == "column":
        return loc, msg
    name = loc[4]
    if isinstance(name, str) and name in table.header:
        return (*loc[:4], "column", xlsxin.column_letter(table.header.index(name)), *loc[4:]), msg
    return loc, msg


def _refuse_client_fields(spec: TypeSpec, state: str | None, data: dict[str, Any],
                          loc: tuple[str | int, ...]) -> None:
    """A permit's gateway-written or approved fields cannot be imported either."""
    errs = permits.check_client_fields(spec, state, data)
    if errs:
        raise Invalid([((*loc, *where[1:]), msg) for where, msg in errs])
