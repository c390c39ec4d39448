"""The shift report (gateway/admin/report.py) written as PDF (fpdf2, with Debian's Noto CJK
font so Chinese renders) and as XLSX (openpyxl), in English or Chinese. The same columns
and the same texts as the JSON the page shows, so the three can be compared cell by cell.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

#: Debian's fonts-noto-cjk; face 2 of the collection is Simplified Chinese (SC)
CJK_FONT = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
CJK_FACE = 2

LABELS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Shift report", "period": "Period", "generated": "Generated", "tz": "Time zone",
        "summary": "Summary", "alarms": "Alarms", "faulty": "Faulty channels", "top": "Top alarm sources",
        "channel": "Channel", "area": "Area", "rule": "Rule", "level": "Level", "raised": "Raised",
        "acknowledged": "Acknowledged", "ack_by": "By", "ack_after_s": "Ack after (s)", "cleared": "Cleared",
        "duration_s": "Duration (s)", "rules": "Rules", "count": "Count", "faulty_s": "Faulty (s)",
        "since": "Since", "still_faulty": "Still faulty", "share": "Share (%)", "chattering": "Chattering",
        "standing": "Standing", "per_hour": "Alarms per hour", "unacknowledged": "Unacknowledged",
        "median_ack_s": "Median time to acknowledge (s)", "faulty_channels": "Faulty channels",
        "yes": "yes", "no": "", "incomplete": "The journal scan was cut: older events are missing.",
        "none": "none", "cut": "The first {n} of {total} rows; the XLSX export lists them all.",
    },
    "zh-CN": {
        "title": "交接班报告", "period": "时段", "generated": "生成时间", "tz": "时区",
        "summary": "概要", "alarms": "报警", "faulty": "故障通道", "top": "报警源排行",
        "channel": "通道", "area": "区域", "rule": "规则", "level": "级别", "raised": "报警时间",
        "acknowledged": "确认时间", "ack_by": "确认人", "ack_after_s": "确认用时(秒)", "cleared": "恢复时间",
        "duration_s": "持续(秒)", "rules": "规则", "count": "次数", "faulty_s": "故障时长(秒)",
        "since": "开始", "still_faulty": "仍故障", "share": "占比(%)", "chattering": "振荡报警",
        "standing": "长期报警", "per_hour": "每小时报警数", "unacknowledged": "未确认",
        "median_ack_s": "确认用时中位数(秒)", "faulty_channels": "故障通道数",
        "yes": "是", "no": "", "incomplete": "日志扫描被截断：更早的事件缺失。",
        "none": "无", "cut": "仅列出前 {n} 行（共 {total} 行）；XLSX 导出包含全部。",
    },
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
    doc.cell(text=lab["title"], new_x="LMARGIN", new_y="NEXT")
    doc.set_font_size(9)
    period = f"{lab['period']}: {rep['from']} - {rep['to']} ({rep['tz']})"
    doc.cell(text=period, new_x="LMARGIN", new_y="NEXT")
    doc.cell(text=f"{lab['generated']}: {rep['generated']}", new_x="LMARGIN", new_y="NEXT")
    if not rep["complete"]:
        doc.cell(text=lab["incomplete"], new_x="LMARGIN", new_y="NEXT")
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
        doc.cell(text=lab[key], new_x="LMARGIN", new_y="NEXT")
        doc.set_font_size(8)
        if not rows:
            doc.cell(text=lab["none"], new_x="LMARGIN", new_y="NEXT")
            continue
        if len(rows) > PDF_MAX_ROWS:
            doc.cell(text=lab["cut"].format(n=PDF_MAX_ROWS, total=len(rows)), new_x="LMARGIN", new_y="NEXT")
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
