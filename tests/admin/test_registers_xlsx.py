"""Register import from Excel workbooks (.xlsx), made by openpyxl here as Excel would save
them: an export imported again gives the same records; native cells (dates, numbers,
booleans) go through the CSV checks; formulas are text, never computed; errors name the
sheet, row and column; and bad files (not a zip, a zip bomb, a lying zip, too many rows,
too long a cell) are refused before or while reading, never by inflating them."""

from __future__ import annotations

import datetime as dt
import io
import struct
import zipfile
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from gateway.admin.registers import Invalid, RegisterStore, xlsxin
from tests.admin.test_registers_store import Clock
from tests.fixtures import xlsx


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = RegisterStore(tmp_path / "registers.db", channels=["GT-1", "GT-2"], clock=Clock(dt.date(2026, 3, 1)))
    yield s
    s.close()


@pytest.fixture
def other(tmp_path: Path) -> Any:
    s = RegisterStore(tmp_path / "other.db", channels=["GT-1", "GT-2"], clock=Clock(dt.date(2026, 3, 1)))
    yield s
    s.close()


def workbook(rows: list[list[Any]], title: str = "Sheet1", extra_sheet: bool = False) -> bytes:
    wb = xlsx.workbook(rows, title)
    if extra_sheet:
        wb.create_sheet("notes").append(["not a register"])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def hd(title: str, **kw: Any) -> dict[str, Any]:
    return {"title": title, "grade": "general", "found_on": "2026-02-01", "found_by": "li", **kw}


def errors_of(e: pytest.ExceptionInfo[Invalid]) -> list[tuple[tuple[str | int, ...], str]]:
    return e.value.errors


def test_an_export_imported_again_gives_the_same_records(store: Any, other: Any) -> None:
    hs, _ = store.create("major_hazard_source", {
        "code": "HS-01", "name": "LPG tanks", "grade": "二级", "filing_status": "filed", "channels": ["GT-1"],
        "chemicals": [{"name": "propane", "cas": "74-98-6", "quantity_t": 120.5, "critical_t": 50}]}, "op")
    store.create("hidden_danger", hd("ladder", location="-1+2", found_by='=HYPERLINK("http://x","y")',
                                     funds=1234.56, reported_to_regulator=True, hazard_source=hs["id"]), "op")
    store.create("hidden_danger", hd("'=quoted already", description="line one\nline two, 中文",
                                     reported_to_regulator=False, deadline="2026-04-01"), "op")
    store.create("hidden_danger", hd("railing", grade="major", funds=0), "op")
    for rtype in ("hidden_danger", "major_hazard_source"):
        before = store.export(rtype, "json")
        raw = store.export(rtype, "xlsx")
        # into the same store: every row is its record as it is
        result, events = store.import_(rtype, raw, "xlsx", "op")
        assert (result["created"], result["updated"]) == (0, 0) and events == []
        assert result["unchanged"] == store.query(rtype)["total"]
        assert store.export(rtype, "json").split('"records"')[1] == before.split('"records"')[1]

    # into another plant's store, as Excel would keep it after someone took out the ids
    other.create("major_hazard_source", {"code": "HS-01", "name": "LPG tanks", "grade": "二级",
                                         "filing_status": "filed"}, "op")
    wb = openpyxl.load_workbook(io.BytesIO(store.export("hidden_danger", "xlsx")))
    ws = wb.active
    assert ws is not None
    ws.delete_cols(1)
    buf = io.BytesIO()
    wb.save(buf)
    result, _ = other.import_("hidden_danger", buf.getvalue(), "xlsx", "op")
    assert result["created"] == 3
    mine = [d["data"] for d in store.query("hidden_danger", sort="id")["items"]]
    theirs = [d["data"] for d in other.query("hidden_danger", sort="id")["items"]]
    assert theirs == mine
    assert theirs[0]["found_by"] == '=HYPERLINK("http://x","y")' and theirs[0]["location"] == "-1+2"
    assert theirs[1]["title"] == "'=quoted already" and theirs[0]["funds"] == 1234.56


def test_cells_as_excel_types_them(store: Any) -> None:
    """Dates, numbers, booleans and text as Excel stores them; a formula is its text."""
    raw = workbook([
        ["title", "grade", "found_on", "found_by", "funds", "reported_to_regulator", "deadline", "measures"],
        ["ladder", "general", dt.datetime(2026, 2, 1), 12345, 1500, True, dt.date(2026, 5, 1), "=A2&B2"],
        ["railing", "major", "2026-02-02", "wang", 12.25, False, None, None],
    ], extra_sheet=True)
    result, _ = store.import_("hidden_danger", raw, "xlsx", "op", dry_run=True)
    assert result["created"] == 2 and result["dry_run"] is True
    assert any("Sheet1" in w and "notes" in w for w in result["warnings"])
    assert any("H2" in w and "never computed" in w for w in result["warnings"])
    data = [c["data"] for c in result["changes"]]
    assert data[0] == {"title": "ladder", "grade": "general", "found_on": "2026-02-01", "found_by": "12345",
                       "funds": 1500.0, "reported_to_regulator": True, "deadline": "2026-05-01",
                       "measures": "=A2&B2"}
    assert data[1]["funds"] == 12.25 and data[1]["reported_to_regulator"] is False
    assert [c["row"] for c in result["changes"]] == [2, 3]
    assert store.query("hidden_danger")["total"] == 0  # a preview writes nothing


def test_a_formula_is_never_computed_nor_its_cached_result_trusted(store: Any) -> None:
    """A workbook whose formula cell carries a cached result (as Excel saves it): the import
    sees the formula, so a number field refuses it, naming the sheet, row and column."""
    raw = workbook([["title", "grade", "found_on", "found_by", "funds"],
                    ["ladder", "general", "2026-02-01", "li", "=1+1"]], title="danger")
    # give the formula a cached value of 2, as Excel would: <c><f>1+1</f><v>2</v></c>
    raw = _rewrite(raw, "xl/worksheets/sheet1.xml",
                   lambda x: x.replace(b"<f>1+1</f><v />", b"<f>1+1</f><v>2</v>"))
    assert b"<v>2</v>" in zipfile.ZipFile(io.BytesIO(raw)).read("xl/worksheets/sheet1.xml")
    with pytest.raises(Invalid) as e:
        store.import_("hidden_danger", raw, "xlsx", "op")
    (loc, msg), = errors_of(e)
    assert loc == ("sheet", "danger", "row", 2, "column", "E", "funds")
    assert "'=1+1'" in msg


def test_errors_name_the_sheet_row_and_column(store: Any) -> None:
    raw = workbook([["title", "grade", "found_on", "found_by", "id"],
                    ["ok", "general", "2026-02-01", "li", None],
                    ["bad", "catastrophic", "2026-13-01", "li", None],
                    ["x", "general", "2026-02-01", "li", "seven"]], title="hidden_danger")
    with pytest.raises(Invalid) as e:
        store.import_("hidden_danger", raw, "xlsx", "op")
    locs = {loc: msg for loc, msg in errors_of(e)}
    assert ("sheet", "hidden_danger", "row", 3, "column", "B", "grade") in locs
    assert ("sheet", "hidden_danger", "row", 3, "column", "C", "found_on") in locs
    assert ("sheet", "hidden_danger", "row", 4, "column", "E", "id") in locs
    assert store.query("hidden_danger")["total"] == 0  # all or nothing
    # an unknown header, and a value beside the header
    with pytest.raises(Invalid) as e:
        store.import_("hidden_danger", workbook([["title", "colour"], ["x", "red"]]), "xlsx", "op")
    assert any(loc[-1] == "colour" and loc[:4] == ("sheet", "Sheet1", "row", 2) for loc, _ in errors_of(e))
    with pytest.raises(Invalid) as e:
        store.import_("hidden_danger", workbook([["title"], ["x", "stray"]]), "xlsx", "op")
    assert errors_of(e)[0][0] == ("sheet", "Sheet1", "row", 2, "column", "B")


@pytest.mark.parametrize("raw, says", [
    (b"title,grade\nx,general\n", "not a zip archive"),
    (b"PK\x03\x04" + b"\0" * 100, "not a zip archive"),
    (b"", "not a zip archive"),
], ids=["csv-text", "zip-magic-only", "empty"])
def test_what_is_not_a_workbook_is_refused(store: Any, raw: bytes, says: str) -> None:
    with pytest.raises(Invalid) as e:
        store.import_("hidden_danger", raw, "xlsx", "op")
    assert says in errors_of(e)[0][1]


def test_a_zip_that_is_not_a_workbook_or_a_damaged_one_is_refused(store: Any) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(Invalid) as e:
        store.import_("hidden_danger", buf.getvalue(), "xlsx", "op")
    assert "no xl/workbook.xml" in errors_of(e)[0][1]
    raw = _rewrite(workbook([["title"], ["x"]]), "xl/worksheets/sheet1.xml", lambda x: x[: len(x) // 2])
    with pytest.raises(Invalid) as e:
        store.import_("hidden_danger", raw, "xlsx", "op")
    assert errors_of(e)[0][0] == ("sheet", "Sheet1") and "ParseError" in errors_of(e)[0][1]


def test_an_xml_entity_bomb_is_refused(store: Any) -> None:
    """openpyxl parses through defusedxml (a declared dependency, pyproject.toml): a sheet
    declaring entities (the billion-laughs kind) is refused, not expanded."""
    from openpyxl.xml import DEFUSEDXML

    assert DEFUSEDXML
    lol = (b'<?xml version="1.0"?><!DOCTYPE w [<!ENTITY a "aaaaaaaaaa">'
           + b"".join(b'<!ENTITY %s "%s">' % (b"b" * (i + 1), (b"&" + (b"b" * i or b"a") + b";") * 10)
                      for i in range(8)) + b"]>")
    raw = _rewrite(workbook([["title"], ["x"]]), "xl/worksheets/sheet1.xml",
                   lambda x: lol + x.replace(b"<t>x</t>", b"<t>&bbbbbbbb;</t>"))
    with pytest.raises(Invalid) as e:
        store.import_("hidden_danger", raw, "xlsx", "op")
    assert "Forbidden" in errors_of(e)[0][1], errors_of(e)


def test_a_zip_bomb_is_refused_before_it_is_inflated(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A member that unpacks to more than MAX_UNPACKED (a few kB compressed) is refused from
    the zip's directory alone: openpyxl is never called."""
    raw = _rewrite(workbook([["title"], ["x"]]), "xl/sharedStrings.xml",
                   lambda x: x + b" " * (xlsxin.MAX_UNPACKED + 1), missing_ok=True)
    assert len(raw) < 200_000
    called = []
    monkeypatch.setattr(openpyxl, "load_workbook", lambda *a, **k: called.append(1))
    with pytest.raises(Invalid) as e:
        store.import_("hidden_danger", raw, "xlsx", "op")
    assert "unpacks to" in errors_of(e)[0][1] and called == []


def test_a_zip_that_lies_about_its_sizes_is_not_inflated_past_them(store: Any) -> None:
    """The directory says a sheet unpacks to 100 bytes; it holds 10 MB of spaces: reading
    stops at the stated size and the import is refused, not 10 MB read."""
    raw = _rewrite(workbook([["title"], ["x"]]), "xl/worksheets/sheet1.xml",
                   lambda x: x.replace(b"<sheetData>", b"<sheetData>" + b" " * 10_000_000))
    raw = _lie_about_size(raw, "xl/worksheets/sheet1.xml", 100)
    with pytest.raises(Invalid) as e:
        store.import_("hidden_danger", raw, "xlsx", "op")
    assert "Bad CRC-32" in errors_of(e)[0][1]


def test_rows_cells_and_text_are_bounded(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(xlsxin, "MAX_ROWS", 5)
    rows: list[list[Any]] = [["title", "grade", "found_on", "found_by"]]
    rows += [[f"d{i}", "general", "2026-02-01", "li"] for i in range(6)]
    with pytest.raises(Invalid) as e:
        store.import_("hidden_danger", workbook(rows), "xlsx", "op")
    assert errors_of(e)[0] == (("sheet", "Sheet1", "row", 7), "more than 5 rows; split the file")
    # empty rows count: a row far below the others is not reached by walking empty ones forever
    far = workbook([["title"], ["x"]])
    far = _rewrite(far, "xl/worksheets/sheet1.xml",
                   lambda x: x.replace(b"</sheetData>", b'<row r="1000000"><c r="A1000000" t="inlineStr">'
                                       b"<is><t>y</t></is></c></row></sheetData>"))
    with pytest.raises(Invalid) as e:
        store.import_("hidden_danger", far, "xlsx", "op")
    assert "more than 5 rows" in errors_of(e)[0][1]
    monkeypatch.setattr(xlsxin, "MAX_ROWS", 20_000)
    monkeypatch.setattr(xlsxin, "MAX_CELLS", 10)
    with pytest.raises(Invalid) as e:
        store.import_("hidden_danger", workbook(rows[:4]), "xlsx", "op")
    assert "more than 10 cells" in errors_of(e)[0][1] and errors_of(e)[0][0][:3] == ("sheet", "Sheet1", "row")
    monkeypatch.setattr(xlsxin, "MAX_CELL_CHARS", 5000)
    long = workbook([["title", "grade", "found_on", "found_by"],
                     ["x" * 5001, "general", "2026-02-01", "li"]])
    with pytest.raises(Invalid) as e:
        store.import_("hidden_danger", long, "xlsx", "op")
    assert errors_of(e)[0] == (("sheet", "Sheet1", "row", 2, "column", "A"),
                               "5001 characters; a cell has at most 5000")
    wide = workbook([[f"c{i}" for i in range(xlsxin.MAX_COLUMNS + 1)]])
    with pytest.raises(Invalid) as e:
        store.import_("hidden_danger", wide, "xlsx", "op")
    assert f"more than {xlsxin.MAX_COLUMNS} columns" in errors_of(e)[0][1]


def test_quote_and_unquote_are_inverse() -> None:
    for s in ["", "x", "=1", "'=1", "''=1", "'x", "-", "+1", "@a", "\tx", "'", "''"]:
        assert xlsxin.unquote(xlsxin.quote(s)) == s, s
    assert xlsxin.quote("=1") == "'=1" and xlsxin.quote("'x") == "'x"


# ---------------------------------------------------------------------------- zip surgery

def _rewrite(raw: bytes, member: str, change: Any, missing_ok: bool = False) -> bytes:
    """The workbook with one member's bytes changed (added if missing and ``missing_ok``)."""
    src = zipfile.ZipFile(io.BytesIO(raw))
    out = io.BytesIO()
    names = src.namelist()
    assert member in names or missing_ok, names
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name in names:
            data = src.read(name)
            z.writestr(name, change(data) if name == member else data)
        if member not in names:
            z.writestr(member, change(b""))
    return out.getvalue()


def _lie_about_size(raw: bytes, member: str, size: int) -> bytes:
    """The zip with ``member``'s uncompressed size in its central directory (and local
    header) set to ``size``: what a zip bomb that hides its size does."""
    b = bytearray(raw)
    name = member.encode()
    # central directory entries: signature PK\1\2, uncompressed size at offset 24
    i = b.find(b"PK\x01\x02")
    while i != -1:
        nlen = struct.unpack_from("<H", b, i + 28)[0]
        if bytes(b[i + 46:i + 46 + nlen]) == name:
            struct.pack_into("<I", b, i + 24, size)
            local = struct.unpack_from("<I", b, i + 42)[0]
            struct.pack_into("<I", b, local + 22, size)
        i = b.find(b"PK\x01\x02", i + 4)
    return bytes(b)
