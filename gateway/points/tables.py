"""Reading and writing point-table files: CSV and xlsx (openpyxl), bounded before work.

A table is read into :class:`Sheet`: the cells as text, each row with its 1-based row
number in the file, so every error can name its cell (``TABLE.xlsx:Sheet!C17``).
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Limits:
    """Bounds checked before (file size, unpacked size) and while reading (rows, cells)."""

    max_file: int = 20 * 2**20  # bytes on disk
    max_unpacked: int = 200 * 2**20  # an xlsx is a zip: its members' total size, checked before opening
    max_rows: int = 100_000
    max_columns: int = 200
    max_cell: int = 1000  # characters in one cell


class TableError(Exception):
    """The table cannot be read at all (too big, wrong format, no such sheet)."""


@dataclass
class Sheet:
    file: str
    sheet: str | None  # None for CSV
    rows: list[tuple[int, list[str]]] = field(default_factory=list)

    def cell(self, row: int, col: int) -> str:
        """``TABLE.xlsx:Sheet!C17`` (``TABLE.csv:C17`` for CSV); ``col`` is 0-based."""
        ref = f"{column_letter(col)}{row}"
        return f"{self.file}:{self.sheet}!{ref}" if self.sheet is not None else f"{self.file}:{ref}"


def column_letter(col: int) -> str:
    """0 → A, 25 → Z, 26 → AA."""
    s = ""
    col += 1
    while col:
        col, r = divmod(col - 1, 26)
        s = chr(65 + r) + s
    return s


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)
    return str(v).strip()


def _check_cell(sheet: Sheet, row: int, col: int, text: str, limits: Limits) -> None:
    if len(text) > limits.max_cell:
        raise TableError(f"{sheet.cell(row, col)}: cell of {len(text)} characters; at most {limits.max_cell}")


def read_table(path: str | Path, sheet_name: str | None = None, limits: Limits = Limits()) -> Sheet:
    path = Path(path)
    try:
        size = os.stat(path).st_size
    except OSError as e:
        raise TableError(f"{path}: {e.strerror}") from e
    if size > limits.max_file:
        raise TableError(
            f"{path}: {size} bytes; a point table may have at most {limits.max_file} (split it by device)"
        )
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xlsm"):
        return _read_xlsx(path, sheet_name, limits)
    if suffix in (".csv", ".txt"):
        if sheet_name is not None:
            raise TableError(f"{path}: --sheet applies to .xlsx files only")
        return _read_csv(path, limits)
    raise TableError(f"{path}: not a point table: give a .xlsx or .csv file (save .xls as .xlsx)")


def _read_csv(path: Path, limits: Limits) -> Sheet:
    raw = path.read_bytes()
    for enc in ("utf-8-sig", "gb18030"):  # Excel in China saves CSV as GBK unless told otherwise
        try:
            text = raw.decode(enc)
            break
        except UnicodeDecodeError:
            continue
    else:  # pragma: no cover - gb18030 decodes any byte string
        raise TableError(f"{path}: neither UTF-8 nor GB18030 text")
    sheet = Sheet(str(path), None)
    csv.field_size_limit(limits.max_cell + 1)
    try:
        for n, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
            if n > limits.max_rows + 1:
                raise TableError(f"{path}: more than {limits.max_rows} rows; split the table")
            if len(row) > limits.max_columns:
                raise TableError(
                    f"{sheet.cell(n, limits.max_columns)}: more than {limits.max_columns} columns"
                )
            cells = [c.strip() for c in row]
            for c, t in enumerate(cells):
                _check_cell(sheet, n, c, t, limits)
            sheet.rows.append((n, cells))
    except csv.Error as e:
        raise TableError(f"{path}: CSV: {e} (a cell is limited to {limits.max_cell} characters)") from e
    return sheet


def _read_xlsx(path: Path, sheet_name: str | None, limits: Limits) -> Sheet:
    try:
        with zipfile.ZipFile(path) as z:
            unpacked = sum(i.file_size for i in z.infolist())
    except zipfile.BadZipFile as e:
        raise TableError(f"{path}: not an xlsx file (not a zip archive): {e}") from e
    if unpacked > limits.max_unpacked:
        raise TableError(f"{path}: unpacks to {unpacked} bytes; at most {limits.max_unpacked}")
    import openpyxl  # deferred: only `points` needs it

    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise TableError(f"{path}: openpyxl cannot read it: {e}") from e
    try:
        if sheet_name is None:
            ws = wb.worksheets[0]
        elif sheet_name in wb.sheetnames:
            ws = wb[sheet_name]
        else:
            raise TableError(f"{path}: no sheet {sheet_name!r}; sheets: {', '.join(wb.sheetnames)}")
        sheet = Sheet(str(path), ws.title)
        for n, row in enumerate(ws.iter_rows(values_only=True), start=1):
            if n > limits.max_rows + 1:
                raise TableError(f"{path}:{ws.title}: more than {limits.max_rows} rows; split the table")
            cells = [_text(v) for v in row[: limits.max_columns + 1]]
            if len(cells) > limits.max_columns and any(cells[limits.max_columns :]):
                raise TableError(
                    f"{sheet.cell(n, limits.max_columns)}: more than {limits.max_columns} columns"
                )
            for c, t in enumerate(cells):
                _check_cell(sheet, n, c, t, limits)
            while cells and not cells[-1]:
                cells.pop()
            sheet.rows.append((n, cells))
        return sheet
    finally:
        wb.close()


def write_table(
    path: str | Path, header: list[str], rows: list[list[Any]], sheet_title: str = "points"
) -> None:
    """Write a table; the file is created private (0600): a point table maps a plant."""
    path = Path(path)
    suffix = path.suffix.lower()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    if suffix == ".csv":
        with os.fdopen(fd, "w", encoding="utf-8-sig", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows([["" if v is None else v for v in r] for r in rows])
        return
    if suffix != ".xlsx":
        os.close(fd)
        raise TableError(f"{path}: write .xlsx or .csv")
    import openpyxl

    wb = openpyxl.Workbook(write_only=True)
    ws = wb.create_sheet(sheet_title)
    ws.append(header)
    for r in rows:
        ws.append(r)
    with os.fdopen(fd, "wb") as f:
        wb.save(f)
