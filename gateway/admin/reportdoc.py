"""The shift report (gateway/admin/report.py) written as PDF (fpdf2, with Debian's Noto CJK
font so Chinese renders) and as XLSX (openpyxl), in English or Chinese. The same columns
and the same texts as the JSON the page shows, so the three can be compared cell by cell.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fpdf import FPDF

#: Debian's fonts-noto-cjk; face 2 of the collection is Simplified Chinese (SC)
CJK_FONT = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
CJK_FACE = 2

#: the languages a report is written in, in the order of the texts in ``_TEXTS``
LANGS = ("en", "zh-CN")
#: every label and sentence of a report, each language's side by side (none can be missing)
_TEXTS: dict[str, tuple[str, str]] = {
    "title": ("Shift report", "交接班报告"),
    "period": ("Period", "时段"),
    "generated": ("Generated", "生成时间"),
    "tz": ("Time zone", "时区"),
    "summary": ("Summary", "概要"),
    "alarms": ("Alarms", "报警"),
    "faulty": ("Faulty channels", "故障通道"),
    "top": ("Top alarm sources", "报警源排行"),
    "channel": ("Channel", "通道"),
    "area": ("Area", "区域"),
    "rule": ("Rule", "规则"),
    "level": ("Level", "级别"),
    "raised": ("Raised", "报警时间"),
    "acknowledged": ("Acknowledged", "确认时间"),
    "ack_by": ("By", "确认人"),
    "ack_after_s": ("Ack after (s)", "确认用时(秒)"),
    "cleared": ("Cleared", "恢复时间"),
    "duration_s": ("Duration (s)", "持续(秒)"),
    "rules": ("Rules", "规则"),
    "count": ("Count", "次数"),
    "faulty_s": ("Faulty (s)", "故障时长(秒)"),
    "since": ("Since", "开始"),
    "still_faulty": ("Still faulty", "仍故障"),
    "share": ("Share (%)", "占比(%)"),
    "chattering": ("Chattering", "振荡报警"),
    "standing": ("Standing", "长期报警"),
    "per_hour": ("Alarms per hour", "每小时报警数"),
    "unacknowledged": ("Unacknowledged", "未确认"),
    "median_ack_s": ("Median time to acknowledge (s)", "确认用时中位数(秒)"),
    "faulty_channels": ("Faulty channels", "故障通道数"),
    "yes": ("yes", "是"),
    "no": ("", ""),
    "incomplete": ("The journal scan was cut: older events are missing.", "日志扫描被截断：更早的事件缺失。"),
    "none": ("none", "无"),
    "cut": ("The first {n} of {total} rows; the XLSX export lists them all.",
            "仅列出前 {n} 行（共 {total} 行）；XLSX 导出包含全部。"),
}
LABELS: dict[str, dict[str, str]] = {
    lang: {k: texts[i] for k, texts in _TEXTS.items()} for i, lang in enumerate(LANGS)
}

#: alarm rows the PDF lists at most: a table of 5,000 rows costs fpdf2 ~15 CPU-seconds here,
#: 1,000 about 3; the XLSX lists them all (a note in the PDF says so)
PDF_MAX_ROWS = 1000

ALARM_COLS = ("channel", "area", "level", "raised", "acknowledged", "ack_by", "cleared", "duration_s")
FAULTY_COLS = ("channel", "area", "rules", "count", "faulty_s", "since", "still_faulty")
TOP_COLS = ("channel", "area", "count", "share", "chattering", "standing")
SUMMARY_KEYS = ("alarms", "per_hour", "unacknowledged", "median_ack_s", "faulty_channels", "chattering",
                "standing")


def cell(v: Any, lang: str) -> str:
    """A report value as text, the same in the PDF, the XLSX and the page."""
    lab = LABELS[lang]
    if v is None:
        return ""
    if isinstance(v, bool):
        return lab["yes"] if v else lab["no"]
    if isinstance(v, float):
        # as the page's JavaScript writes a number: shortest form, no ".0"
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    return str(v)


def tables(rep: dict[str, Any]) -> list[tuple[str, tuple[str, ...], list[dict[str, Any]]]]:
    return [("alarms", ALARM_COLS, rep["alarms"]), ("faulty", FAULTY_COLS, rep["faulty"]),
            ("top", TOP_COLS, rep["top"])]


def xlsx(rep: dict[str, Any], lang: str) -> bytes:
    from openpyxl import Workbook

    lab = LABELS[lang]
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = lab["summary"][:31]
    ws.append([lab["title"]])
    ws.append([lab["period"], rep["from"], rep["to"]])
    ws.append([lab["tz"], rep["tz"]])
    ws.append([lab["generated"], rep["generated"]])
    for k in SUMMARY_KEYS:
        ws.append([lab.get(k, k), rep["summary"][k]])
    for key, cols, rows in tables(rep):
        sh = wb.create_sheet(lab[key][:31])
        sh.append([lab[c] for c in cols])
        for r in rows:
            # text cells are written as text values, never formulas: openpyxl would take a
            # leading "=" as one, so such text gets a leading apostrophe's worth of quoting
            sh.append([_safe(r[c]) if isinstance(r[c], str) else cell(r[c], lang) if isinstance(r[c], bool)
                       else r[c] for c in cols])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def _safe(s: str) -> str:
    """Text that a spreadsheet must not run as a formula (OWASP CSV injection)."""
    return "'" + s if s[:1] in ("=", "+", "-", "@", "\t", "\r") else s


class FontMissing(Exception):
    """The CJK font the PDF needs is not installed."""


def _line(doc: FPDF, text: str) -> None:
    """A line of text across the page; the next starts below it at the left margin."""
    doc.cell(text=text, new_x="LMARGIN", new_y="NEXT")


def pdf(rep: dict[str, Any], lang: str) -> bytes:
    from fpdf import FPDF
    from fpdf.fonts import FontFace

    if not CJK_FONT.is_file():
        raise FontMissing(f"the PDF needs the font {CJK_FONT} (Debian package fonts-noto-cjk)")
    lab = LABELS[lang]
    doc = FPDF(orientation="landscape", format="A4")
    doc.set_auto_page_break(True, margin=12)
    doc.add_font("cjk", fname=str(CJK_FONT), collection_font_number=CJK_FACE)
    doc.set_font("cjk", size=9)
    doc.add_page()
    doc.set_font_size(16)
    _line(doc, lab["title"])
    doc.set_font_size(9)
    period = f"{lab['period']}: {rep['from']} - {rep['to']} ({rep['tz']})"
    _line(doc, period)
    _line(doc, f"{lab['generated']}: {rep['generated']}")
    if not rep["complete"]:
        _line(doc, lab["incomplete"])
    doc.ln(2)
    head = FontFace(emphasis=None, fill_color=(230, 230, 230))
    with doc.table(col_widths=(60, 30), width=120, align="LEFT", headings_style=head,
                   first_row_as_headings=False) as t:
        for k in SUMMARY_KEYS:
            row = t.row()
            row.cell(lab.get(k, k))
            row.cell(cell(rep["summary"][k], lang))
    for key, cols, rows in tables(rep):
        doc.ln(4)
        doc.set_font_size(12)
        _line(doc, lab[key])
        doc.set_font_size(8)
        if not rows:
            _line(doc, lab["none"])
            continue
        if len(rows) > PDF_MAX_ROWS:
            _line(doc, lab["cut"].format(n=PDF_MAX_ROWS, total=len(rows)))
            rows = rows[:PDF_MAX_ROWS]
        with doc.table(headings_style=head, text_align="LEFT") as t:
            hr = t.row()
            for c in cols:
                hr.cell(lab[c])
            for r in rows:
                tr = t.row()
                for c in cols:
                    tr.cell(cell(r[c], lang))
        doc.set_font_size(9)
    return bytes(doc.output())
