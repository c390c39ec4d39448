"""The trend view (static/views/trends.js) in headless Chromium against the real daemon
polling the plant simulator while a leak scenario runs on GT-1: the chart's own data (uPlot's
columns) is the API's, its limit lines carry the configured limits, the shaded alarm period
starts and ends where the journal's alarm events say, the shading is painted there, and the
CSV export holds exactly the API's points."""

from __future__ import annotations

import csv
import io
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.cdp import CDP, CHROMIUM
from tests.fixtures.daemon import SIM_PLANT, Daemon, auth, gateway_yaml, make_tokens
from tests.fixtures.pageview import mount_view

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="Debian's chromium package is not installed"
)

# GT-1 (base 12 %LEL, h 25, hh 50): a leak adds up to 45 over 3 s, holds 4 s, falls over 3 s,
# every 30 s: each leak makes one limit alarm period (raise at h, escalate to hh, clear)
LEAK_PLANT = SIM_PLANT + """
scenarios:
  - {kind: leak, signal: GT-1, start: 4s, rise: 3s, peak: 45, hold: 4s, fall: 3s, every: 30s}
"""

CHART = "document.querySelector('.trend-chart')"


def journal_periods(events: list[dict[str, Any]], channel: str) -> list[tuple[str, str | None]]:
    """(start, end) of each limit alarm of a channel, read straight off its raise and clear events."""
    from gateway.historian.history import fmt_ns

    out: list[tuple[str, str | None]] = []
    start: int | None = None
    for ev in events:
        if ev["channel"] != channel or ev["rule"] != "limit":
            continue
        if ev["transition"] == "raise" and start is None:
            start = ev["ts"]
        elif ev["transition"] == "clear" and start is not None:
            out.append((fmt_ns(start), fmt_ns(ev["ts"])))
            start = None
    if start is not None:
        out.append((fmt_ns(start), None))
    return out


def test_trend_chart_data_limits_alarm_period_and_csv(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(LEAK_PLANT)
    host, port = sim.tcp("plc")
    tokens = make_tokens(tmp_path)
    d = Daemon(gateway_yaml(host, port, tmp_path)).start()
    api = httpx.Client(base_url=d.url, headers=auth(tokens["viewer"]), timeout=20)
    chrome = CDP(tmp_path / "profile")
    try:
        # one whole leak in the journal: raised and cleared
        deadline_s = 90

        def cleared() -> bool:
            return any(end for _, end in journal_periods(d.events("alarm"), "GT-1"))

        t_end = time.monotonic() + deadline_s
        while not cleared():
            assert time.monotonic() < t_end, "no complete leak alarm on GT-1 in the journal"
            time.sleep(0.5)

        mount_view(chrome, d.url, tokens["viewer"], "trends", "#/trends?ch=GT-1&range=1h")
        # the chart shows a finished alarm period (it reloads every 5 s for the 1 h range)
        chrome.wait(f"{CHART}?.alarmPeriods?.some(p => p.end !== null)", timeout=30, what="a shaded period")
        chart = chrome.js(
            f"(() => {{ const c = {CHART}; const u = c.uplot; return {{"
            "data: u.data, labels: u.series.map(s => s.label), roles: u.series.map(s => s.role || null),"
            "levels: u.series.map(s => s.level || null), periods: c.alarmPeriods,"
            "xmin: u.scales.x.min, xmax: u.scales.x.max }; })()"
        )
        # the same query the view made, asked of the API with the chart's own window
        doc = api.get("/trend/GT-1", params={"range": "1h"}).json()
        assert doc["every_s"] == 5.0 and doc["limits"] == {"hh": 50.0, "h": 25.0}
        roles = chart["roles"]
        assert roles[1:4] == ["mean", "min", "max"], chart["labels"]
        xs = chart["data"][0]
        # the window's two ends carry the limit lines only (no reading)
        assert (xs[0], xs[-1]) == (chart["xmin"], chart["xmax"])
        assert all(chart["data"][k][0] is None and chart["data"][k][-1] is None for k in (1, 2, 3))
        xs = xs[1:-1]
        byt = {p["t"]: p for p in doc["points"]}
        common = [i + 1 for i, x in enumerate(xs) if x in byt]
        # the newest bucket may have filled since the chart loaded; every other one is the same
        assert len(xs) >= 3 and len(common) >= len(xs) - 1, (len(common), len(xs))
        for i in common[:-1]:
            p = byt[chart["data"][0][i]]
            shown = (chart["data"][1][i], chart["data"][2][i], chart["data"][3][i])
            assert shown == (p["mean"], p["min"], p["max"])
        # the leak is in the series: the max column reaches past hh
        assert max(v for v in chart["data"][3] if v is not None) > 50.0
        # limit lines: one series per configured limit, constant at its value
        lim = {chart["levels"][k]: chart["data"][k] for k, r in enumerate(roles) if r == "limit"}
        assert set(lim) == {"hh", "h"}
        assert set(lim["hh"]) == {50.0} and set(lim["h"]) == {25.0}
        assert "GT-1 HH limit" in chart["labels"]

        # shaded periods: exactly the journal's raise → clear times (those in the chart's window)
        journal = journal_periods(d.events("alarm"), "GT-1")
        periods = [(p["start"], p["end"]) for p in chart["periods"] if p["rule"] == "limit"]
        ended = [s for s in periods if s[1] is not None]
        assert ended and all(s in journal for s in ended), (periods, journal)
        # (under load a health alarm, stale, may come too: the leak's are the limit rule's)
        leaks = [p for p in chart["periods"] if p["rule"] == "limit" and p["end"] is not None]
        assert leaks and all(p["level"] == "hh" for p in leaks), chart["periods"]
        # the period rows link to the channel's alarm history
        href = chrome.js("document.querySelector('.trend-periods tbody a').getAttribute('href')")
        assert href == "#/alarms?channel=GT-1&range=24h"
        # and the shading is painted there: a pixel near the plot's top inside a period is
        # tinted red, one outside every period is not
        start_t, end_t = leaks[0]["start_t"], leaks[0]["end_t"]
        pixel = (
            f"((t) => {{ const u = {CHART}.uplot; const x = Math.round(u.valToPos(t, 'x', true));"
            "const y = Math.round(u.bbox.top + 3); return Array.from(u.ctx.getImageData(x, y, 1, 1).data); })"
        )
        inside = chrome.js(f"{pixel}({(start_t + end_t) / 2})")
        # the window's first minutes, long before the plant started: no period there
        assert all(p["start_t"] > chart["xmin"] + 600 for p in chart["periods"])
        outside = chrome.js(f"{pixel}({chart['xmin'] + 300})")
        assert inside[3] > 0 and inside[0] > inside[1], inside  # a red tint
        assert outside[3] == 0 or outside[0] == outside[1] == outside[2], outside

        # CSV export: a real click; the file the page made is exactly the API's points
        chrome.click("#trend-export")
        chrome.wait("document.getElementById('trend-csv').href.startsWith('blob:')", what="the CSV file")
        text = chrome.js("document.getElementById('trend-csv').file.text()")
        rows = list(csv.DictReader(io.StringIO(text)))
        assert rows and {r["channel"] for r in rows} == {"GT-1"}
        loaded = int(chrome.js(f"{CHART}.dataset.points"))
        assert len(rows) == loaded  # the whole range is shown (no zoom): every point
        api_rows = {p["ts"]: p for p in doc["points"]}
        same = [r for r in rows if r["time"] in api_rows]
        assert len(same) >= len(rows) - 1
        for r in same[:-1]:
            p = api_rows[r["time"]]
            assert float(r["value"]) == p["mean"] and float(r["min"]) == p["min"]
            assert float(r["max"]) == p["max"] and int(r["n"]) == p["n"]

        # zoom: a drag across the leak asks for that window again, finer; its CSV is that answer
        before = chrome.js(f"{CHART}.dataset.loaded")
        chrome.js(f"(() => {{ const u = {CHART}.uplot; const a = u.valToPos({start_t - 5}, 'x');"
                  f"const b = u.valToPos({end_t + 5}, 'x');"
                  "u.setSelect({left: a, width: b - a, top: 0, height: u.over.clientHeight}); })()")
        chrome.wait(f"{CHART}.dataset.loaded !== '{before}'", what="the zoomed window")
        lo, hi = chrome.js(f"[{CHART}.uplot.scales.x.min, {CHART}.uplot.scales.x.max]")
        assert abs(lo - (start_t - 5)) < 0.5 and abs(hi - (end_t + 5)) < 0.5, (lo, hi, start_t, end_t)

        def iso(x: float) -> str:
            ms = round(x * 1000)
            return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"

        zoomed = api.get("/trend/GT-1", params={"from": iso(lo), "to": iso(hi)}).json()
        assert zoomed["every_s"] == 1.0 and zoomed["from_t"] == lo and zoomed["to_t"] == hi
        chrome.click("#trend-export")
        csv_file = "document.getElementById('trend-csv').file"
        chrome.wait(f"{csv_file}.size !== {len(text.encode())}", what="a new CSV")
        zrows = list(csv.DictReader(io.StringIO(chrome.js(f"{csv_file}.text()"))))
        got = [(r["time"], float(r["value"]), float(r["min"]), float(r["max"]), int(r["n"])) for r in zrows]
        want = [(p["ts"], p["mean"], p["min"], p["max"], p["n"]) for p in zoomed["points"]]
        # the window ends a few seconds ago: its newest bucket may have filled since the page asked
        # (or not be there yet when the page asked: one row fewer)
        assert len(got) >= 10 and len(want) - len(got) in (0, 1)  # ~20 s of 1 s buckets
        assert got[:-1] == want[: len(got) - 1]
        chrome.click("#trend-reset")
        chrome.wait(f"{CHART}.uplot.scales.x.max - {CHART}.uplot.scales.x.min > 3000", what="zoomed out")

        # two channels overlaid: each one's mean and its own limit lines, its values the API's
        mount_view(chrome, d.url, tokens["viewer"], "trends", "#/trends?ch=GT-1,GT-2&range=1h")
        chrome.wait(f"{CHART}?.dataset.loaded", what="the overlaid chart")
        two = chrome.js(f"(() => {{ const u = {CHART}.uplot; return {{ data: u.data,"
                        "labels: u.series.map(s => s.label) }; })()")
        assert two["labels"][1:] == ["GT-1 mean", "GT-1 HH limit", "GT-1 H limit",
                                     "GT-2 mean", "GT-2 HH limit", "GT-2 H limit"]
        gt2 = {p["t"]: p["mean"] for p in api.get("/trend/GT-2", params={"range": "1h"}).json()["points"]}
        pairs = [(x, y) for x, y in zip(two["data"][0], two["data"][4], strict=True) if x in gt2]
        assert len(pairs) >= 2 and all(y == gt2[x] for x, y in pairs[:-1]), pairs

        # in Chinese: the controls, legend and period table have their strings, no key shows
        mount_view(chrome, d.url, tokens["viewer"], "trends", "#/trends?ch=GT-1&range=8h", lang="zh-CN")
        chrome.wait(f"{CHART}?.dataset.loaded", what="the chart in Chinese")
        text = chrome.js("document.getElementById('view').textContent")
        assert "趋势" in text and "GT-1 HH 限值" in text and not re.search(r"trends\.[a-z_]", text), text
        assert not chrome.errors(), chrome.errors()
    finally:
        chrome.close()
        api.close()
        d.stop()
