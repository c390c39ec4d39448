"""Alarm history and the shift report against the real daemon polling the plant simulator:
alarms are raised by driving the simulator past the limits, one is acknowledged, a device
is dead (its channel faulty). The alarm view's rows are what GET /alarms/history returns for
the same filters (set in the page by a person's clicks, and paged); the shift report's JSON
is checked against the journal, and its PDF (read back with pypdf) and XLSX (openpyxl)
carry the same texts and cells; the report view shows the JSON's rows."""

from __future__ import annotations

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

ROWS = ("Array.from(document.querySelectorAll('#alarm-history tbody tr'))"
        ".map(r => [r.dataset.seq, ...Array.from(r.cells).map(c => c.textContent)])")


def wait_for(cond: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.fixtures.sims import SimProcess

    tmp = tmp_path_factory.mktemp("alarmsite")
    cfg = tmp / "sim.yaml"
    cfg.write_text(SIM_PLANT)
    sim = SimProcess(cfg)
    tokens = make_tokens(tmp)
    host, port = sim.tcp("plc")
    text = gateway_yaml(host, port, tmp).replace("hazard_source: HS-01,",
                                                 "hazard_source: HS-01, area: tank-farm,")
    d = Daemon(text).start()
    op = httpx.Client(base_url=d.url, headers=auth(tokens["operator"]), timeout=30)

    def active(ch: str) -> list[dict[str, Any]]:
        return [a for a in op.get("/alarms", params={"history": 0}).json()["active"]
                if a["channel"] == ch and a["rule"] == "limit"]

    try:
        # GT-1 to hh, acknowledged, back to normal; GT-2 to h and back, never acknowledged
        sim.control(set="GT-1", value=55.0)
        wait_for(lambda: any(a["level"] == "hh" for a in active("GT-1")), "GT-1 hh")
        assert op.post("/alarms/GT-1/ack", json={"comment": "gas team sent"}).status_code == 200
        sim.control(set="GT-1", value=12.0)
        wait_for(lambda: not active("GT-1"), "GT-1 cleared")
        sim.control(set="GT-2", value=30.0)
        wait_for(lambda: active("GT-2"), "GT-2 h")
        sim.control(set="GT-2", value=3.0)
        wait_for(lambda: all(a["state"] != "active_unacked" for a in active("GT-2")) and
                 any(e["channel"] == "GT-2" and e["transition"] == "clear" for e in d.events("alarm")),
                 "GT-2 cleared")
        # the dead device's channel is faulty (its health alarm raised)
        wait_for(lambda: any(e["channel"] == "PT-9" for e in d.events("alarm")), "PT-9 faulty")

        class Site:
            pass

        s = Site()
        s.daemon, s.tokens, s.op, s.tmp = d, tokens, op, tmp  # type: ignore[attr-defined]
        yield s
    finally:
        op.close()
        d.stop()
        sim.stop()


def api_rows(site: Any, **params: Any) -> dict[str, Any]:
    r = site.op.get("/alarms/history", params=params)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_alarm_history_api_filters_and_errors(site: Any) -> None:
    all_ = api_rows(site, **{"from": "1h"})["events"]
    assert all_ == sorted(all_, key=lambda e: -e["seq"])  # newest first
    gt1 = api_rows(site, **{"from": "1h", "channel": "GT-1"})["events"]
    assert gt1 and {e["channel"] for e in gt1} == {"GT-1"}
    # the journal agrees: every GT-1 alarm event is listed
    journal = [e for e in site.daemon.events("alarm") if e["channel"] == "GT-1"]
    assert sorted(e["ts"] for e in gt1) == sorted(e["ts"] for e in journal)
    area = api_rows(site, **{"from": "1h", "area": "tank-farm"})["events"]
    assert {e["channel"] for e in area} == {"GT-1"} and all(e["area"] == "tank-farm" for e in area)
    hh = api_rows(site, **{"from": "1h", "level": "hh", "transition": "raise"})["events"]
    assert hh and all(e["level"] == "hh" and e["transition"] == "raise" for e in hh)
    acks = api_rows(site, **{"from": "1h", "transition": "ack"})["events"]
    # (one event per alarm the acknowledge met: under load GT-1 may also be stale a moment)
    assert acks and {(e["channel"], e["who"]) for e in acks} == {("GT-1", "operator-user")}
    # paging: pages of 2 join up to the whole list, without gaps or repeats
    seqs, before = [], None
    while True:
        page = api_rows(site, **{"from": "1h", "limit": 2, **({"before": before} if before else {})})
        seqs += [e["seq"] for e in page["events"]]
        before = page["next_before"]
        if before is None:
            break
    assert seqs == [e["seq"] for e in all_]
    # bad filters are refused, naming the parameter
    for params, where in [({"state": "burning"}, "state"), ({"channel": "NOPE"}, "channel"),
                          ({"transition": "x"}, "transition"), ({"from": "yesterday-ish"}, "from"),
                          ({"limit": 5000}, "limit"), ({"channel": "x" * 201}, "channel")]:
        r = site.op.get("/alarms/history", params=params)
        assert r.status_code == 422, (params, r.text)
        assert where in str(r.json()["detail"]), r.text


def test_alarm_view_rows_are_the_apis(site: Any, tmp_path: Path) -> None:
    chrome = CDP(tmp_path / "profile")
    try:
        mount_view(chrome, site.daemon.url, site.tokens["viewer"], "alarms", "#/alarms?channel=GT-1&range=1h")
        chrome.wait("document.querySelector('#alarm-history')?.dataset.loaded", what="the history")
        rows = chrome.js(ROWS)
        api = api_rows(site, **{"from": "1h", "channel": "GT-1", "limit": 100})["events"]
        assert [int(r[0]) for r in rows] == [e["seq"] for e in api]
        for r, e in zip(rows, api, strict=True):
            assert r[2] == "GT-1" and r[3] == "tank-farm" and r[4] == e["rule"] and r[5] == e["level"]
            assert r[10] == (e["who"] or "")
        # the channel links to its trend
        href = chrome.js("document.querySelector('#alarm-history tbody a').getAttribute('href')")
        assert href == "#/trends?ch=GT-1&range=1h"

        # a person changes the filters: no channel, level hh, only raises
        chrome.js("document.getElementById('alarm-f-channel').value = ''")
        chrome.js("(() => { const s = document.getElementById('alarm-f-level'); s.value = 'hh'; })()")
        chrome.js("(() => { const s = document.getElementById('alarm-f-transition'); s.value = 'raise'; })()")
        before = chrome.js("document.querySelector('#alarm-history').dataset.loaded")
        chrome.click("#alarm-apply")
        chrome.wait(f"document.querySelector('#alarm-history').dataset.loaded !== '{before}'", what="reload")
        rows = chrome.js(ROWS)
        api = api_rows(site, **{"from": "1h", "level": "hh", "transition": "raise", "limit": 100})["events"]
        assert rows and [int(r[0]) for r in rows] == [e["seq"] for e in api]
        assert chrome.js("location.hash") == "#/alarms?range=1h&level=hh&transition=raise"

        # paging in the page: 2 at a time, "more" until it hides
        mount_view(chrome, site.daemon.url, site.tokens["viewer"], "alarms", "#/alarms?range=1h&limit=2")
        chrome.wait("document.querySelector('#alarm-history')?.dataset.loaded", what="the first page")
        while not chrome.js("document.getElementById('alarm-more').hidden"):
            n = chrome.js("document.querySelectorAll('#alarm-history tbody tr').length")
            chrome.click("#alarm-more")
            chrome.wait(f"document.querySelectorAll('#alarm-history tbody tr').length > {n}",
                        what="the next page")
        rows = chrome.js(ROWS)
        api = api_rows(site, **{"from": "1h", "limit": 1000})["events"]
        # events the daemon journals meanwhile (PT-9's health alarms) may come on top: the
        # page's rows are the API's list at the time, newest first, without gaps
        page_seqs = [int(r[0]) for r in rows]
        assert page_seqs == [e["seq"] for e in api if e["seq"] <= page_seqs[0]]

        # in Chinese: every word of the view (options included) has its string, none shows a key
        mount_view(chrome, site.daemon.url, site.tokens["viewer"], "alarms", "#/alarms?range=1h",
                   lang="zh-CN")
        chrome.wait("document.querySelector('#alarm-history')?.dataset.loaded", what="the history in Chinese")
        text = chrome.js("document.getElementById('view').textContent")
        assert "报警历史" in text and "高高" in text and not re.search(r"alarms\.[a-z_]", text), text
        assert not chrome.errors(), chrome.errors()
    finally:
        chrome.close()


def _squash(s: str) -> str:
    """Text without white space, and without the NULs pypdf 7 puts before each character of
    fpdf2's two-byte CID codes (it reads fpdf2's embedded Identity CMap a byte at a time; the
    ToUnicode map, which gives the characters, is read right)."""
    return re.sub(r"[\s\x00]+", "", s)


def test_shift_report_json_pdf_xlsx_and_view(site: Any, tmp_path: Path) -> None:
    import openpyxl
    import pypdf

    from gateway.admin.reportdoc import ALARM_COLS, LABELS, cell

    # a fixed window ending now, so the three formats describe the same period
    now = time.time()
    frm = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 3600))
    to = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    q = {"from": frm, "to": to, "tz": "Asia/Shanghai"}
    rep = site.op.get("/reports/shift", params=q).json()
    assert rep["tz"] == "Asia/Shanghai" and rep["complete"] is True
    gt1 = [a for a in rep["alarms"] if a["channel"] == "GT-1"]
    assert len(gt1) == 1 and gt1[0]["level"] == "hh" and gt1[0]["ack_by"] == "operator-user"
    assert gt1[0]["area"] == "tank-farm" and gt1[0]["cleared"]
    # the times are the journal's, on the site's clock (UTC+8)
    ev = {e["transition"]: e for e in site.daemon.events("alarm")
          if e["channel"] == "GT-1" and e["rule"] == "limit"}
    shanghai = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ev["raise"]["ts"] / 1e9 + 8 * 3600))
    assert gt1[0]["raised"] == shanghai
    assert gt1[0]["ack_after_s"] == round((ev["ack"]["ts"] - ev["raise"]["ts"]) / 1e9, 1)
    gt2 = [a for a in rep["alarms"] if a["channel"] == "GT-2"]
    assert gt2 and gt2[0]["acknowledged"] is None and gt2[0]["level"] == "h"
    assert rep["summary"]["alarms"] == 2 and rep["summary"]["unacknowledged"] == 1
    # faulty: the channels with a health alarm in the journal (PT-9, its device dead; under
    # load a polled channel may go stale for a moment too)
    health = {e["channel"] for e in site.daemon.events("alarm")
              if e["rule"] in ("stale", "bad", "range", "frozen") and e["code"] and e["ts"] <= rep["to_ns"]}
    assert "PT-9" in health and {f["channel"] for f in rep["faulty"]} == health
    # PT-9 is faulty from its first poll on; a moment's stale under load may round to 0.0 s
    assert all(f["faulty_s"] >= 0 for f in rep["faulty"])
    assert next(f for f in rep["faulty"] if f["channel"] == "PT-9")["faulty_s"] > 1.0
    assert {t["channel"]: t["count"] for t in rep["top"]} == {"GT-1": 1, "GT-2": 1}

    for lang in ("en", "zh-CN"):
        r = site.op.get("/reports/shift", params={**q, "format": "pdf", "lang": lang})
        assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
        text = _squash("".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(r.content)).pages))
        lab = LABELS[lang]
        for word in (lab["title"], lab["alarms"], lab["faulty"], lab["top"], rep["from"], rep["to"]):
            assert _squash(word) in text, (lang, word)
        for row in rep["alarms"]:
            for c in ("channel", "level", "raised", "acknowledged", "ack_by", "cleared"):
                assert _squash(cell(row[c], lang)) in text, (lang, c, row[c])
        for row in rep["faulty"]:
            assert _squash(row["channel"] + cell(row["area"], lang) + row["rules"]) in text
    r = site.op.get("/reports/shift", params={**q, "format": "xlsx", "lang": "zh-CN"})
    assert r.status_code == 200
    wb = openpyxl.load_workbook(io.BytesIO(r.content))
    lab = LABELS["zh-CN"]
    assert wb.sheetnames == [lab["summary"], lab["alarms"], lab["faulty"], lab["top"]]
    sh = wb[lab["alarms"]]
    cols = [c.value for c in sh[1]]
    got = [dict(zip(cols, (c.value for c in row), strict=True)) for row in sh.iter_rows(min_row=2)]
    want = [{lab[c]: row[c] for c in ALARM_COLS} for row in rep["alarms"]]
    assert got == want
    summary = {row[0].value: row[1].value for row in wb[lab["summary"]].iter_rows(min_row=5)}
    assert summary[lab["alarms"]] == rep["summary"]["alarms"]
    assert summary[lab["unacknowledged"]] == 1

    # the page shows the same rows, and its PDF button fetches the PDF
    chrome = CDP(tmp_path / "profile")
    try:
        mount_view(chrome, site.daemon.url, site.tokens["viewer"], "report",
                   f"#/report?from={frm}&to={to}", tz="Asia/Shanghai", lang="zh-CN")
        chrome.wait("document.getElementById('report-body')?.dataset.loaded", what="the report")
        cells = chrome.js("Array.from(document.querySelectorAll('#report-alarms tbody tr'))"
                          ".map(r => Array.from(r.cells).map(c => c.textContent))")
        want_cells = [[cell(row[c], "zh-CN") for c in ALARM_COLS] for row in rep["alarms"]]
        assert cells == want_cells
        text = chrome.js("document.getElementById('view').textContent")
        assert "交接班报告" in text and not re.search(r"report\.[a-z_]", text), text
        total = chrome.js("document.querySelector('#report-summary tr[data-key=alarms] td').textContent")
        assert total == "2"
        chrome.click("#report-pdf")
        chrome.wait("document.getElementById('report-file').dataset.format === 'pdf'", what="the PDF")
        head = chrome.js("document.getElementById('report-file').file.slice(0, 5).text()")
        assert head == "%PDF-"
        assert not chrome.errors(), chrome.errors()
    finally:
        chrome.close()
