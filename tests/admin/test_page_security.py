"""The page's security and accessibility basics, in headless Chromium against the running
daemon: register text that looks like markup or a formula is shown literally and exported
neutralized (CSV and XLSX downloaded from the page, compared with the API's data); the
content security policy forbids inline script; the alarm colours are readable (WCAG 2.x
contrast ≥ 4.5:1, computed from the page's own styles); admins manage users from the page
and a token is shown once."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openpyxl
import pytest

from tests.fixtures.cdp import CDP, CHROMIUM
from tests.fixtures.daemon import SIM_PLANT, Daemon, auth, gateway_yaml, make_tokens
from tests.fixtures.pagehelp import allow_downloads, go, png, set_files, sign_in, wait_file

pytestmark = [
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium package is not installed"),
    pytest.mark.timeout(300),
]

SCRIPT = "<script>window.__pwned = 1</script>"
IMG = '<img src=x onerror="window.__pwned = 2">'
FORMULA = '=HYPERLINK("http://evil.example/","click me")'


@pytest.fixture()
def plant(tmp_path: Path, sim_factory: Any) -> Iterator[tuple[Daemon, Any, dict[str, str]]]:
    sim = sim_factory(SIM_PLANT)
    host, port = sim.tcp("plc")
    tokens = make_tokens(tmp_path)
    d = Daemon(gateway_yaml(host, port, tmp_path)).start()
    try:
        yield d, sim, tokens
    finally:
        d.stop()


@pytest.fixture()
def chrome(tmp_path: Path) -> Iterator[CDP]:
    c = CDP(tmp_path / "profile")
    try:
        yield c
    finally:
        c.close()


def test_register_text_is_shown_literally_and_exported_neutralized(plant: Any, chrome: CDP,
                                                                   tmp_path: Path) -> None:
    d, _sim, tokens = plant
    api = httpx.Client(base_url=d.url, headers=auth(tokens["operator"]), timeout=10)
    evil = {"title": SCRIPT, "description": IMG, "grade": "general", "found_on": "2026-12-01",
            "found_by": FORMULA, "location": "+1-2@tank", "measures": "-cmd|' /C calc'!A0"}
    plain = {"title": "drain cover missing", "grade": "general", "found_on": "2026-12-02", "found_by": "li"}
    rid = api.post("/registers/hidden_danger", json=evil).json()["id"]
    api.post("/registers/hidden_danger", json=plain)

    sign_in(chrome, d.url + "/", tokens["viewer"])
    go(chrome, "#/registers/hidden_danger", f"document.querySelector('#records tr[data-id=\"{rid}\"]')")
    row = f"#records tr[data-id=\"{rid}\"]"
    cell = chrome.js(f"document.querySelector('{row} td[data-field=title]').textContent")
    assert cell == SCRIPT
    go(chrome, f"#/registers/hidden_danger/{rid}", "document.querySelector('#history tbody tr')")
    values = chrome.js("Object.fromEntries([...document.querySelectorAll('#record-form [data-field]')]"
                       ".filter(e => 'value' in e).map(e => [e.dataset.field, e.value]))")
    assert values["title"] == SCRIPT and values["description"] == IMG and values["found_by"] == FORMULA
    assert SCRIPT in chrome.js("document.querySelector('h2').textContent")
    # nothing ran and no element came from the text
    assert chrome.js("window.__pwned") is None
    assert chrome.js("document.querySelectorAll('img[src=x], #view script').length") == 0

    # export the list as the page shows it (searched): the file is the API's data, neutralized
    allow_downloads(chrome, tmp_path / "dl")
    go(chrome, "#/registers/hidden_danger?q=HYPERLINK", f"document.querySelector('{row}')")
    assert chrome.js("document.querySelectorAll('#records tbody tr').length") == 1
    want = api.get("/registers/hidden_danger", params={"q": "HYPERLINK"}).json()["items"]
    assert [x["id"] for x in want] == [rid]

    chrome.click("#reg-export-csv")
    rows = list(csv.DictReader(io.StringIO(wait_file(tmp_path / "dl" / "hidden_danger.csv").decode())))
    assert [int(r["id"]) for r in rows] == [rid]
    first = rows[0]
    for k, v in want[0]["data"].items():
        # what a spreadsheet would run as a formula starts with ' and is text; the rest as stored
        expected = "'" + v if v[0] in "=+-@" else v
        assert first[k] == expected, (k, first[k])
    assert first["found_by"] == "'" + FORMULA and first["title"] == SCRIPT

    chrome.click("#reg-export-xlsx")
    wb = openpyxl.load_workbook(io.BytesIO(wait_file(tmp_path / "dl" / "hidden_danger.xlsx")))
    ws = wb.active
    assert ws is not None
    grid = [[c for c in r] for r in ws.iter_rows()]
    head = [c.value for c in grid[0]]
    assert len(grid) == 2 and grid[1][head.index("id")].value == rid
    for k, v in want[0]["data"].items():
        c = grid[1][head.index(k)]
        assert c.data_type == "s", (k, c.data_type)  # text, never a formula
        assert c.value == ("'" + v if v[0] in "=+-@" else v), (k, c.value)
    assert not chrome.errors(), chrome.errors()
    api.close()


def test_the_page_forbids_inline_script(plant: Any, chrome: CDP) -> None:
    d, _sim, tokens = plant
    for path in ("/", "/static/shell.js", "/static/views/registers.js", "/static/i18n/core.json"):
        r = httpx.get(d.url + path, timeout=10)
        assert r.status_code == 200, path
        parts = [k.split() for k in r.headers["content-security-policy"].split(";")]
        csp = {k[0]: k[1:] for k in parts}
        assert csp["default-src"] == ["'self'"], csp
        assert "script-src" not in csp  # so default-src 'self' governs scripts: no inline, no eval
        assert not any("unsafe" in v for vs in csp.values() for v in vs), csp
        assert csp["frame-ancestors"] == ["'none'"] and csp["object-src"] == ["'none'"]
        assert r.headers["x-content-type-options"] == "nosniff"
    # and the browser enforces it: an inline script inserted into the page does not run
    sign_in(chrome, d.url + "/", tokens["viewer"])
    chrome.js("(() => { const s = document.createElement('script'); s.textContent = 'window.__inline = 1';"
              " document.body.append(s); })()")
    assert chrome.js("window.__inline") is None


CONTRAST = """
(() => {
  const rgb = (s) => s.match(/[\\d.]+/g).slice(0, 3).map(Number);
  const lum = ([r, g, b]) => [r, g, b].map((c) => { c /= 255; return c <= 0.03928 ? c / 12.92 :
      Math.pow((c + 0.055) / 1.055, 2.4); }).reduce((a, c, i) => a + c * [0.2126, 0.7152, 0.0722][i], 0);
  const ratio = (a, b) => { const [x, y] = [lum(rgb(a)), lum(rgb(b))].sort((p, q) => q - p);
      return (x + 0.05) / (y + 0.05); };
  // the colour behind an element: its own, else its ancestors'
  const bg = (e) => { for (; e; e = e.parentElement) { const c = getComputedStyle(e).backgroundColor;
      if (!/rgba\\(.*, 0\\)$/.test(c) && c !== 'transparent') return c; } return 'rgb(255, 255, 255)'; };
  const out = {};
  for (const [name, sel] of Object.entries(SELECTORS)) {
    const e = document.querySelector(sel);
    out[name] = e ? [ratio(getComputedStyle(e).color, bg(e)), getComputedStyle(e).color, bg(e)] : null;
  }
  return out;
})()
"""


def test_alarm_colours_have_enough_contrast(plant: Any, chrome: CDP) -> None:
    d, sim, tokens = plant
    api = httpx.Client(base_url=d.url, headers=auth(tokens["operator"]), timeout=10)
    # an overdue due date and a gas alarm: the page's red in its places
    api.post("/registers/fire_equipment", json={"name": "hose reel 4", "kind": "hydrant", "location": "dock",
                                                "next_inspection": "2020-01-01"})
    sim.control(set="GT-1", value=55.0)
    sign_in(chrome, d.url + "/", tokens["operator"])
    chrome.wait("!!document.querySelector('#alarms tr[data-channel=\"GT-1\"] button.ack')",
                what="the alarm row")
    chrome.wait("!!document.querySelector('#due td.overdue')", what="the overdue reminder")
    chrome.wait("document.querySelector('#channels tr[data-channel=\"GT-1\"]')?.className === 'alarm'",
                what="GT-1 red")
    chrome.wait("!!document.querySelector('#channels tr.fault')", timeout=30,
                what="PT-9 (device down) yellow")
    selectors = {
        "ack button": '#alarms tr[data-channel="GT-1"] button.ack',
        "alarm row text": '#alarms tr[data-channel="GT-1"] td.alarm-state',
        "channel row in alarm": '#channels tr[data-channel="GT-1"] td.value',
        "overdue reminder": "#due td.overdue",
        "fault row": '#channels tr.fault td.value',
    }
    got = chrome.js(CONTRAST.replace("SELECTORS", json.dumps(selectors)))
    for name, sel in selectors.items():
        assert got[name] is not None, (name, sel)
        assert got[name][0] >= 4.5, (name, got[name])
    # the overdue register in its own list: a badge on the record
    rid = api.get("/registers/fire_equipment").json()["items"][0]["id"]
    go(chrome, f"#/registers/fire_equipment/{rid}", "document.querySelector('.badge.overdue')")
    badge = chrome.js(CONTRAST.replace("SELECTORS", json.dumps({"b": ".badge.overdue"})))["b"]
    assert badge[0] >= 4.5, badge
    api.close()


def test_an_admin_manages_users_from_the_page(plant: Any, chrome: CDP) -> None:
    d, _sim, tokens = plant
    sign_in(chrome, d.url + "/", tokens["admin"])
    assert chrome.js("document.querySelector('#nav a[data-view=users]').hidden") is False
    go(chrome, "#/users", "document.querySelector('#users tr[data-user=\"admin-user\"]')")
    chrome.click("#user-name")
    chrome.type("shift-lead")
    chrome.js("document.getElementById('user-role').value = 'operator'")
    chrome.click("#user-add")
    chrome.wait("!!document.querySelector('#new-token')", what="the new token")
    token = chrome.js("document.querySelector('#new-token').textContent")

    def whoami(tok: str) -> httpx.Response:
        return httpx.get(d.url + "/whoami", headers=auth(tok), timeout=10)

    assert whoami(token).json() == {"name": "shift-lead", "role": "operator"}
    chrome.wait("!!document.querySelector('#users tr[data-user=\"shift-lead\"]')", what="the new user listed")
    # shown once: not in the list, and gone once the view is left and opened again
    assert token not in chrome.js("document.querySelector('#users').textContent")
    go(chrome, "#/", "document.querySelector('#channels')")
    go(chrome, "#/users", "document.querySelector('#users tr[data-user=\"shift-lead\"]')")
    assert chrome.js("document.querySelector('#new-token')") is None
    assert token not in chrome.js("document.body.textContent")

    # a new token: the old one stops working
    chrome.click('#users tr[data-user="shift-lead"] button[data-action=rotate]')
    chrome.wait(f"document.querySelector('#new-token')?.textContent.length > 0 && "
                f"document.querySelector('#new-token').textContent !== {json.dumps(token)}",
                what="the rotated token")
    rotated = chrome.js("document.querySelector('#new-token').textContent")
    assert whoami(token).status_code == 401 and whoami(rotated).status_code == 200

    # revoke (the page asks first)
    chrome.js("window.confirm = () => true")
    chrome.click('#users tr[data-user="shift-lead"] button[data-action=revoke]')
    chrome.wait("document.querySelector('#users tr[data-user=\"shift-lead\"]')?.className === 'revoked'",
                what="revoked")
    assert whoami(rotated).status_code == 401
    # an admin cannot lock themself out from here
    mine = '#users tr[data-user="admin-user"] button[data-action=revoke]'
    assert chrome.js(f"document.querySelector({json.dumps(mine)}).disabled") is True
    # a user who exists (without rotate): the server's words
    chrome.click("#user-name")
    chrome.type("admin-user")
    chrome.click("#user-add")
    chrome.wait("document.querySelector('#user-error').textContent.length > 0", what="the refusal")
    again = httpx.post(d.url + "/users", json={"name": "admin-user", "role": "viewer"},
                       headers=auth(tokens["admin"]))
    assert again.status_code == 409
    assert chrome.js("document.querySelector('#user-error').textContent") == again.json()["detail"]
    assert not chrome.errors(), chrome.errors()


def test_uploads_are_checked_by_content_and_size(tmp_path: Path, sim_factory: Any, chrome: CDP) -> None:
    """A text file named .png is refused by its content, a file over registers.max_attachment by
    its size (as it arrives); a PDF is previewed in the page. Each refusal in the server's words."""
    sim = sim_factory(SIM_PLANT)
    host, port = sim.tcp("plc")
    tokens = make_tokens(tmp_path)
    d = Daemon(gateway_yaml(host, port, tmp_path, extra="registers: {max_attachment: 4KB}")).start()
    try:
        api = httpx.Client(base_url=d.url, headers=auth(tokens["operator"]), timeout=10)
        danger = {"title": "uploads", "grade": "general", "found_on": "2026-12-01", "found_by": "li"}
        rid = api.post("/registers/hidden_danger", json=danger).json()["id"]
        fake = tmp_path / "photo.png"
        fake.write_text("#!/bin/sh\necho not a picture\n")
        big = tmp_path / "big.png"
        big.write_bytes(png(60, 60) + b"\0" * 8000)
        pdf = tmp_path / "permit.pdf"
        pdf.write_bytes(b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
                        b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
                        b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\n"
                        b"trailer<</Root 1 0 R>>\n%%EOF\n")
        sign_in(chrome, d.url + "/", tokens["operator"])
        go(chrome, f"#/registers/hidden_danger/{rid}", "document.querySelector('#att-file')")
        for path, status in ((fake, 422), (big, 413)):
            chrome.js("document.getElementById('att-error').textContent = ''")
            set_files(chrome, "#att-file", path)
            chrome.wait("document.getElementById('att-error').textContent.length > 0",
                        what=f"{path.name} refused")
            said = chrome.js("document.getElementById('att-error').textContent")
            r = api.post(f"/registers/hidden_danger/{rid}/attachments", params={"filename": path.name},
                         content=path.read_bytes(), headers={"Content-Type": "application/octet-stream"})
            assert r.status_code == status
            detail = r.json()["detail"]
            assert said == (detail if isinstance(detail, str) else "; ".join(x["msg"] for x in detail)), said
        assert api.get(f"/registers/hidden_danger/{rid}/attachments").json() == []
        set_files(chrome, "#att-file", pdf)
        chrome.wait("document.querySelectorAll('#att-list li[data-attachment]').length === 1", what="the PDF")
        chrome.click("#att-list li[data-attachment] button[data-action=preview]")
        chrome.wait("document.querySelector('#att-preview iframe')?.src.startsWith('blob:')",
                    what="the PDF preview")
        assert chrome.js("document.querySelector('#att-list li').textContent").count("application/pdf") == 1
        api.close()
    finally:
        d.stop()
