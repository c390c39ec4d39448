"""Reading a register import from an Excel workbook (.xlsx), bounded before work: the zip's
members and their unpacked sizes are checked before openpyxl opens it (read-only, so the
sheet is streamed), rows, cells and text lengths while it is read. Formulas are never
computed and their cached results never read: a formula cell is its text (``=SUM(A1:A3)``),
data like any other. Cells come out as the text a CSV import would have (numbers without a
trailing ``.0``, dates as ISO 8601), so both go through the same checks.

Python's zipfile stops inflating a member at its declared size (and then fails its CRC
check), so the declared sizes checked here bound what is unpacked even when they lie.
"""

from __future__ import annotations

import datetime as dt
import io
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any

from gateway.admin.registers.schema import Invalid
from gateway.points.tables import column_letter

#: the largest total of the zip's members unpacked, and the most members (Excel writes ~10)
MAX_UNPACKED = 64 * 2**20
MAX_MEMBERS = 1000
#: data rows (the header row aside; empty rows count), columns, non-empty cells
MAX_ROWS = 20_000
MAX_COLUMNS = 300
MAX_CELLS = 1_000_000
#: characters in one cell: Excel's own limit
MAX_CELL_CHARS = 32_767

#: what starts a formula in Excel, LibreOffice and Google Sheets (as io.FORMULA_START)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

# what openpyxl raises on a damaged workbook (a missing part, bad XML, a bad number, a
# forbidden DTD from defusedxml, a truncated member): all mean "not a workbook we can read"
_BROKEN = (zipfile.BadZipFile, zlib.error, KeyError, ValueError, TypeError, IndexError, AttributeError,
           SyntaxError, EOFError, OSError)


@dataclass
class Table:
    """The sheet read: its title, the header row's names, and each data row with its row
    number in the sheet (1 is the header) and its cells as text (``""`` for an empty one)."""

    sheet: str
    header: list[str]
    rows: list[tuple[int, list[str]]] = field(default_factory=list)
    #: cells that start like a formula (not written so by our export): (row, column index)
    formula_like: list[tuple[int, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def loc(self, row: int, col: int | None = None) -> tuple[str | int, ...]:
        """An error's location: sheet, row and (when known) column, as Excel names them."""
        base: tuple[str | int, ...] = ("sheet", self.sheet, "row", row)
        return base if col is None else (*base, "column", column_letter(col))


def unquote(s: str) -> str:
    """Undoes the export's neutralising: a text that starts like a formula was written with a
    leading ``'`` (and one that already started with ``'`` before such a character, with one
    more), so one ``'`` is dropped from those; any other text is as it is."""
    if s.startswith("'") and s.lstrip("'").startswith(FORMULA_START):
        return s[1:]
    return s


def quote(s: str) -> str:
    """The export's side of ``unquote`` (``unquote(quote(s)) == s`` for every text)."""
    return "'" + s if s.lstrip("'").startswith(FORMULA_START) else s


def check_archive(raw: bytes) -> None:
    """Refuses what is not a zip, or one that would unpack too large, before openpyxl sees it."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError) as e:
        raise Invalid([(("body",), f"not an XLSX workbook (not a zip archive: {e})")]) from None
    if len(infos) > MAX_MEMBERS:
        raise Invalid([(("body",), f"not an XLSX workbook: {len(infos)} parts; at most {MAX_MEMBERS}")])
    unpacked = sum(i.file_size for i in infos)
    if unpacked > MAX_UNPACKED:
        raise Invalid([(("body",), f"the workbook unpacks to {unpacked} bytes; at most {MAX_UNPACKED} "
                                   f"({MAX_UNPACKED // 2**20} MB): split it")])
    names = {i.filename for i in infos}
    if "xl/workbook.xml" not in names:
        raise Invalid([(("body",), "not an XLSX workbook (no xl/workbook.xml); "
                                   "save .xls or .ods files as .xlsx")])


def read_xlsx(raw: bytes, sheet_name: str) -> Table:
    """The sheet named ``sheet_name`` (the export's, the register type), else the first.
    Raises Invalid naming the sheet, row and column of what is wrong."""
    check_archive(raw)
    from openpyxl import load_workbook  # deferred: only an XLSX import needs the reader

    try:
        wb = load_workbook(io.BytesIO(raw), read_only=True, data_only=False, keep_links=False)
    except _BROKEN as e:
        raise Invalid([(("body",), f"not a readable XLSX workbook: {_why(e)}")]) from None
    try:
        names = list(wb.sheetnames)
        if not names:
            raise Invalid([(("body",), "the workbook has no sheet")])
        title = sheet_name[:31] if sheet_name[:31] in names else names[0]
        table = Table(title, [])
        if len(names) > 1:
            others = ", ".join(n for n in names if n != title)
            table.warnings.append(f"read the sheet {title!r}; not read: {others}")
        try:
            _read_sheet(wb[title], table)
        except _BROKEN as e:
            raise Invalid([(("sheet", title), f"cannot be read: {_why(e)}")]) from None
        return table
    finally:
        wb.close()


def _why(e: BaseException) -> str:
    """An openpyxl failure in one line, with what caused it (it wraps defusedxml's refusals)."""
    why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    cause = e.__cause__ or e.__context__
    return f"{why} ({type(cause).__name__})" if cause is not None else why


def _read_sheet(ws: Any, table: Table) -> None:
    ws.reset_dimensions()  # the sheet's own <dimension> may lie; rows are as the XML has them
    head = next(iter(ws.iter_rows(min_row=1, max_row=1, max_col=MAX_COLUMNS + 1, values_only=True)), ())
    header = [_cell(table, 1, c, v, None) for c, v in enumerate(head)]
    while header and not header[-1]:
        header.pop()
    if len(header) > MAX_COLUMNS:
        raise Invalid([(table.loc(1, MAX_COLUMNS), f"more than {MAX_COLUMNS} columns")])
    if not header:
        raise Invalid([(table.loc(1), "no header row: the first row names the fields")])
    for c, h in enumerate(header):
        if not h:
            raise Invalid([(table.loc(1, c), "a column without a name in the header row")])
    table.header = header
    width = len(header)
    cells = 0
    n = 1
    # one column more than the header: a value beside it is refused, as CSV's "more cells than columns"
    for n, row in enumerate(ws.iter_rows(min_row=2, max_col=width + 1, values_only=True), start=2):
        if n > MAX_ROWS + 1:
            raise Invalid([(table.loc(n), f"more than {MAX_ROWS} rows; split the file")])
        if len(row) > width and row[width] is not None:
            raise Invalid([(table.loc(n, width), "a value in a column without a name in the header row")])
        if all(v is None for v in row[:width]):
            continue
        texts = [_cell(table, n, c, v, header[c]) for c, v in enumerate(row[:width])]
        cells += sum(1 for t in texts if t)
        if cells > MAX_CELLS:
            raise Invalid([(table.loc(n), f"more than {MAX_CELLS} cells; split the file")])
        table.rows.append((n, texts))


def _cell(table: Table, row: int, col: int, v: Any, name: str | None) -> str:
    """A cell as text: what the same value in a CSV file would be."""
    if v is None:
        return ""
    if isinstance(v, str):
        if len(v) > MAX_CELL_CHARS:
            msg = f"{len(v)} characters; a cell has at most {MAX_CELL_CHARS}"
            raise Invalid([(table.loc(row, col), msg)])
        s = unquote(v)
        if s == v and s.startswith(FORMULA_START) and name is not None:
            table.formula_like.append((row, col))
        return s
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)
    if isinstance(v, dt.datetime):
        if v.time() == dt.time(0):
            return v.date().isoformat()  # a date typed into Excel; a datetime field takes it too
        return v.isoformat(timespec="seconds")
    if isinstance(v, dt.date | dt.time):
        return v.isoformat()
    text = getattr(v, "text", None)  # an array formula: its text, like any other formula
    if isinstance(text, str):
        table.formula_like.append((row, col))
        return text[:MAX_CELL_CHARS + 1]
    raise Invalid([(table.loc(row, col), f"a cell of a kind an import cannot take ({type(v).__name__}); "
                                          "give its value as text, a number or a date")])
