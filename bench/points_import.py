"""Benchmark: importing a 5,000-row point table (``safegw points import``).

Builds a table of ``--rows`` points over 50 Modbus TCP devices in the form a contractor
sends (Chinese headers, 40001-style addresses, types, ranges, alarm limits) with
openpyxl, then times the whole import as the command runs it: read the xlsx (openpyxl,
read-only), match headers, convert and check every row, and check the devices as
``safegw check`` does. The same for the CSV form. Reference, measured in the same run:
openpyxl only reading the same xlsx cell by cell (the floor any import pays).

Target: 5,000 rows in < 5 s (issue 16).

    .venv/bin/python bench/points_import.py [--rows 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import openpyxl

from gateway.points.cli import import_table

HEADER = ["位号", "设备", "IP地址", "从站地址", "寄存器地址", "数据类型", "字节序", "系数", "量程", "单位",
          "监测类型", "一级报警值(高)", "二级报警值(高)", "区域", "重大危险源编码"]


def rows(n: int) -> list[list[object]]:
    out: list[list[object]] = []
    for i in range(n):
        dev, k = divmod(i, 100)
        out.append([f"GT-{i:05d}", f"gas-ctl-{dev:02d}", f"10.0.{dev // 250}.{dev % 250 + 1}", 1,
                    40001 + 2 * k, "FLOAT", "CDAB", 1, "0~100", "%LEL", "可燃气体", 20, 40, f"区域{dev}",
                    f"HS-{dev:02d}"])
    return out


CPU: dict[str, list[float]] = {}


def timed(fn: object, repeat: int, label: str) -> list[float]:
    """Wall seconds a run; the process's CPU seconds go to CPU[label] (on a shared machine
    the wall time includes waiting for a core)."""
    times = []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
        CPU.setdefault(label, []).append(time.process_time() - c0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        xlsx, csvf = Path(d) / "points.xlsx", Path(d) / "points.csv"
        wb = openpyxl.Workbook()
        ws = wb.active
        assert ws is not None
        ws.append(HEADER)
        for r in rows(a.rows):
            ws.append(r)
        wb.save(xlsx)
        with open(csvf, "w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows([HEADER, *rows(a.rows)])

        def imp(path: Path) -> None:
            res = import_table(str(path))
            if res.errors or res.good_rows != a.rows:
                raise SystemExit(f"import failed: {res.errors[:3]}")

        def read_only() -> None:
            book = openpyxl.load_workbook(xlsx, read_only=True, data_only=True)
            for _ in book.worksheets[0].iter_rows(values_only=True):
                pass
            book.close()

        ref = timed(read_only, a.repeat, "ref")
        tx = timed(lambda: imp(xlsx), a.repeat, "xlsx")
        tc = timed(lambda: imp(csvf), a.repeat, "csv")
    fig = {"rows": a.rows, "repeat": a.repeat,
           "xlsx_import_s_median": round(statistics.median(tx), 3),
           "csv_import_s_median": round(statistics.median(tc), 3),
           "ref_openpyxl_read_only_s_median": round(statistics.median(ref), 3),
           "xlsx_import_cpu_s_median": round(statistics.median(CPU["xlsx"]), 3),
           "csv_import_cpu_s_median": round(statistics.median(CPU["csv"]), 3),
           "ref_openpyxl_read_only_cpu_s_median": round(statistics.median(CPU["ref"]), 3),
           "xlsx_rows_per_s": round(a.rows / statistics.median(tx)),
           "target_s": 5.0, "ok": statistics.median(tx) < 5.0}
    print(f"xlsx import {fig['xlsx_import_s_median']} s, csv {fig['csv_import_s_median']} s, "
          f"openpyxl read alone {fig['ref_openpyxl_read_only_s_median']} s (medians of {a.repeat})")
    print(json.dumps(fig))


if __name__ == "__main__":
    main()
