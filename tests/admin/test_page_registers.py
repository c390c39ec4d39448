"""The registers on the page, in headless Chromium against the running daemon polling the
simulators, driven as people would: a hidden danger filed with a photo and taken through to
verified by two users of different roles in two browsers; a record of a plant-defined type
created from its generated form; the page in Chinese; a viewer who is offered nothing to
change; and an import previewed before it is applied."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openpyxl
import pytest

from tests.fixtures.cdp import CDP, CHROMIUM
from tests.fixtures.daemon import SIM_PLANT, Daemon, auth, gateway_yaml, make_tokens
from tests.fixtures.helpers import wait_until
from tests.fixtures.pagehelp import choose, field, fill, go, png, press_enter, set_files, sign_in

pytestmark = [
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium package is not installed"),
    pytest.mark.timeout(300),
]

PLANT_TYPES = """
gas_detector_calibration:
  title: Gas detector calibrations
  title_zh: 气体探测器标定记录
  label: detector
  fields:
    detector: {type: channel, required: true, title: detector channel, title_zh: 探测器通道}
    calibrated_on: {type: date, required: true, title: calibrated on, title_zh: 标定日期}
    result: {type: enum, values: [passed, failed], required: true, title: result, title_zh: 标定结果}
    span_gas: {type: number, min: 0, max: 100, title: span gas (%LEL), title_zh: 标气浓度}
    hazard_source: {type: ref, to: major_hazard_source, title: hazard source, title_zh: 危险源}
    next_due: {type: date, due: true, title: next calibration, title_zh: 下次标定}
"""


class Plant:
    def __init__(self, d: Daemon, sim: Any, tokens: dict[str, str], tmp: Path):
        self.d, self.sim, self.tokens, self.tmp = d, sim, tokens, tmp
        self.url = d.url + "/"
        self.http = {role: httpx.Client(base_url=d.url, headers=auth(tok), timeout=10)
                     for role, tok in tokens.items()}


@pytest.fixture()
def plant(tmp_path: Path, sim_factory: Any) -> Iterator[Plant]:
    tmp = tmp_path / "plant"
    tmp.mkdir()
    sim = sim_factory(SIM_PLANT)
    host, port = sim.tcp("plc")
    (tmp / "plant-types.yaml").write_text(PLANT_TYPES)
    tokens = make_tokens(tmp)
    extra = f'registers: {{types_file: "{tmp / "plant-types.yaml"}"}}'
    d = Daemon(gateway_yaml(host, port, tmp, extra=extra))
    d.start()
    p = Plant(d, sim, tokens, tmp)
    try:
        yield p
    finally:
        for c in p.http.values():
            c.close()
        d.stop()


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[Any]:
    """A factory of browsers (each its own profile: two people at two desks); all closed after."""
    made: list[CDP] = []

    def make() -> CDP:
        c = CDP(tmp_path / f"profile{len(made)}")
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.close()


def record_id(chrome: CDP) -> int:
    m = re.search(r"/(\d+)$", chrome.js("location.hash"))
    assert m, chrome.js("location.hash")
    return int(m.group(1))


def state_is(state: str) -> str:
    return f"document.querySelector('#rec-state')?.dataset.state === {json.dumps(state)}"


def texts(chrome: CDP, selector: str) -> list[str]:
    return list(chrome.js(f"[...document.querySelectorAll({json.dumps(selector)})].map(e => e.textContent)"))


def take_step(chrome: CDP, name: str, fields: dict[str, str], note: str = "",
              photo: Path | None = None) -> None:
    """Click a workflow button, fill its dialog and confirm."""
    button = f"#workflow button[data-transition={json.dumps(name)}]"
    chrome.wait(f"!!document.querySelector({json.dumps(button)})", what=f"the {name} button")
    chrome.click(button)
    chrome.wait("!!document.querySelector('#transition-dialog')?.open", what=f"the {name} dialog")
    for k, v in fields.items():
        sel = field(k, "#transition-dialog")
        kind = chrome.js(f"document.querySelector({json.dumps(sel)}).type")
        if kind in ("date", "select-one", "datetime-local"):
            choose(chrome, sel, v)
        else:
            fill(chrome, sel, v)
    if note:
        fill(chrome, "#tr-note", note)
    if photo is not None:
        set_files(chrome, "#tr-photo", photo)
    chrome.click("#tr-ok")


def test_hidden_danger_with_a_photo_through_to_verified_by_two_people(plant: Plant, browser: Any,
                                                                       tmp_path: Path) -> None:
    photo = tmp_path / "leak.png"
    photo.write_bytes(png(3, 2))
    fixed = tmp_path / "fixed.png"
    fixed.write_bytes(png(4, 4))
    op, admin = browser(), browser()
    sign_in(op, plant.url, plant.tokens["operator"])
    sign_in(admin, plant.url, plant.tokens["admin"])

    # the operator files it from the list's "new record" form
    go(op, "#/registers/hidden_danger", "document.querySelector('#reg-new')", "the hidden danger list")
    op.click("#reg-new")
    op.wait(f"!!document.querySelector({json.dumps(field('title'))})", what="the new record form")
    fill(op, field("title"), "flange leak at pump P-101")
    choose(op, field("grade"), "major")
    choose(op, field("found_on"), "2026-12-01")
    fill(op, field("found_by"), "li")
    fill(op, field("location"), "tank farm")
    op.click("#rec-save")
    op.wait(state_is("reported"), what="the record, reported")
    rid = record_id(op)

    # a photo, with the upload's progress shown
    set_files(op, "#att-file", photo)
    op.wait("document.querySelectorAll('#att-list li[data-attachment]').length === 1",
            what="the photo listed")
    assert op.js("document.querySelector('#att-progress').value") == 100
    assert int(op.js("document.querySelector('#att-progress').dataset.done")) == photo.stat().st_size
    op.click("#att-list li[data-attachment] button[data-action=preview]")
    op.wait("document.querySelector('#att-preview img')?.naturalWidth === 3", what="the photo previewed")

    # only the step allowed from "reported" is offered
    steps_js = "[...document.querySelectorAll('#workflow button')].map(b => b.dataset.transition)"
    assert op.js(steps_js) == ["assign"]
    # the admin (safety office) assigns it, in the other browser
    go(admin, f"#/registers/hidden_danger/{rid}", state_is("reported"))
    take_step(admin, "assign",
              {"responsible": "wang", "deadline": "2026-12-20", "measures": "replace the gasket"})
    admin.wait(state_is("assigned"), what="assigned")
    # the operator rectifies it with a photo of the work done
    go(op, "#/registers", "document.querySelector('#register-types')")
    go(op, f"#/registers/hidden_danger/{rid}", state_is("assigned"))
    take_step(op, "rectify", {"rectified_on": "2026-12-05", "rectification": "gasket replaced"},
              note="checked with soap water", photo=fixed)
    op.wait(state_is("rectified"), what="rectified")
    op.wait("document.querySelectorAll('#att-list li[data-attachment]').length === 2",
            what="both photos listed")

    # the admin verifies it, with the keyboard: focus the button, press Enter
    go(admin, "#/registers", "document.querySelector('#register-types')")
    go(admin, f"#/registers/hidden_danger/{rid}", state_is("rectified"))
    admin.js("document.querySelector('#workflow button[data-transition=verify]').focus()")
    press_enter(admin)
    admin.wait("!!document.querySelector('#transition-dialog')?.open",
               what="the verify dialog from the keyboard")
    # a required field left empty: the browser asks for it, nothing is sent
    admin.click("#tr-ok")
    assert admin.js("document.querySelector('#transition-dialog').open") is True
    fill(admin, field("verified_by", "#transition-dialog"), "zhao")
    choose(admin, field("verified_on", "#transition-dialog"), "2026-12-06")
    fill(admin, "#tr-note", "verified on site")
    admin.click("#tr-ok")
    admin.wait(state_is("closed"), what="closed (verified)")
    assert admin.js("document.querySelector('#workflow')") is None  # no step from a final state

    # the server agrees: who did what, the note, both photos
    doc = plant.http["viewer"].get(f"/registers/hidden_danger/{rid}").json()
    assert doc["state"] == "closed" and doc["data"]["verified_by"] == "zhao"
    assert [a["mime"] for a in doc["attachments"]] == ["image/png", "image/png"]
    hist = plant.http["viewer"].get(f"/registers/hidden_danger/{rid}/history").json()
    steps = [(h["action"], h["actor"]) for h in hist if h["action"].startswith(("create", "transition"))]
    assert steps == [("create", "operator-user"), ("transition:assign", "admin-user"),
                     ("transition:rectify", "operator-user"), ("transition:verify", "admin-user")]
    assert [h["comment"] for h in hist if h["action"] == "transition:verify"] == ["verified on site"]
    # the page's history table shows them, newest first
    admin.wait(f"document.querySelectorAll('#history tbody tr').length === {len(hist)}",
               what="the history rows")
    first = admin.js("[...document.querySelector('#history tbody tr').cells].map(c => c.textContent)")
    assert first[1] == "admin-user" and "closed" in first[3] and first[4] == "verified on site"
    assert not op.errors() and not admin.errors(), (op.errors(), admin.errors())


def test_the_server_refusal_is_shown_as_worded(plant: Plant, browser: Any) -> None:
    """A hot-work permit's gas analysis while the gas reads high: the step is refused, and the
    dialog shows the server's own words; then an edit against a stale version (409) likewise."""
    plant.sim.control(set="GT-1", value=55.0)
    # judged on a steady state: the reading there and its alarm raised (both go into the reason)
    wait_until(lambda: (lambda ch: ch["value"] == 55 and bool(ch["alarms"]))(
        plant.http["viewer"].get("/channels/GT-1").json()), 15, 0.1, "GT-1 at 55 and in alarm")
    permit = {"permit_no": "DH-2026-001", "applicant_unit": "maintenance", "location": "pump P-101",
              "content": "welding a flange", "work_leader": "wang", "level": "second", "channels": ["GT-1"],
              "medium": "methane", "valid_from": "2026-12-07T08:00:00", "valid_to": "2026-12-07T16:00:00"}
    r = plant.http["operator"].post("/registers/hot_work_permit", json=permit)
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    c = browser()
    sign_in(c, plant.url, plant.tokens["operator"])
    go(c, f"#/registers/hot_work_permit/{rid}", state_is("applied"))
    # approve needs the admin role: not offered to an operator
    offered = c.js("[...document.querySelectorAll('#workflow button')].map(b => b.dataset.transition)")
    assert offered == ["analyse", "cancel"]
    take_step(c, "analyse", {}, note="before welding")
    c.wait("document.querySelector('#tr-error').textContent.length > 0", what="the refusal")
    shown = c.js("document.querySelector('#tr-error p').textContent")
    again = plant.http["operator"].post(f"/registers/hot_work_permit/{rid}/transitions/analyse", json={})
    assert again.status_code == 409
    assert shown == again.json()["detail"] and "GT-1" in shown
    assert c.js("document.querySelector('#transition-dialog').open") is True
    c.click("#tr-cancel")
    c.wait("!document.querySelector('#transition-dialog')", what="the dialog closed")

    # an edit against a version someone else changed meanwhile
    plant.http["admin"].patch(f"/registers/hot_work_permit/{rid}", json={"guardian": "zhou"})
    fill(c, field("location"), "pump P-102")
    c.click("#rec-save")
    c.wait("document.querySelector('#record-form [role=alert]').textContent.length > 0", what="the refusal")
    shown = c.js("document.querySelector('#record-form [role=alert]').textContent")
    again = plant.http["operator"].patch(f"/registers/hot_work_permit/{rid}?version=1",
                                         json={"location": "x"})
    assert again.status_code == 409 and shown == again.json()["detail"]
    # in Chinese: the message in Chinese, the server's own words after it
    c.js("(() => { const s = document.getElementById('lang'); s.value = 'zh-CN';"
         " s.dispatchEvent(new Event('change')); })()")
    c.wait("document.querySelector('#rec-save')?.textContent === '保存'", what="the record in Chinese")
    fill(c, field("location"), "pump P-103")
    plant.http["admin"].patch(f"/registers/hot_work_permit/{rid}", json={"guardian": "qian"})
    c.click("#rec-save")
    c.wait("document.querySelector('#record-form [role=alert]').textContent.length > 0", what="the refusal")
    shown = c.js("document.querySelector('#record-form [role=alert]').textContent")
    current = plant.http["viewer"].get(f"/registers/hot_work_permit/{rid}").json()["version"]
    assert shown.startswith(f"记录 {rid} 已被他人修改（当前为第 {current} 版，而非第 {current - 1} 版）")
    assert shown.endswith("（" + f"hot_work_permit record {rid} is at version {current}, not {current - 1}: "
                          "someone changed it meanwhile; reload and retry）")
    # reloaded, the edit goes through and changes only what was edited: the gateway's gas
    # analyses and the datetimes shown in the site's zone are sent back as they were, not at all
    go(c, "#/registers", "document.querySelector('#register-types')")
    go(c, f"#/registers/hot_work_permit/{rid}", f"document.querySelector({json.dumps(field('location'))})")
    fill(c, field("location"), "pump P-104")
    c.click("#rec-save")
    c.wait("document.querySelector('#history tbody tr')?.textContent.includes('pump P-104')",
           what="the record reloaded with the edit in its history")
    hist = plant.http["viewer"].get(f"/registers/hot_work_permit/{rid}/history").json()
    last = hist[-1]
    assert last["actor"] == "operator-user" and last["action"] == "update"
    before, after = last["before"]["data"], last["after"]["data"]
    assert {k for k in {*before, *after} if before.get(k) != after.get(k)} == {"location"}
    assert plant.http["viewer"].get(f"/registers/hot_work_permit/{rid}").json()["state"] == "applied"


def test_a_record_of_a_plant_defined_type_from_its_form(plant: Plant, browser: Any) -> None:
    hs = plant.http["operator"].post("/registers/major_hazard_source", json={
        "code": "HS-01", "name": "LPG tank farm", "grade": "二级", "filing_status": "filed"}).json()
    c = browser()
    sign_in(c, plant.url, plant.tokens["operator"])
    go(c, "#/registers", "document.querySelector('#register-types tr[data-type=gas_detector_calibration] a')")
    c.click("#register-types tr[data-type=gas_detector_calibration] a")
    c.wait("!!document.querySelector('#reg-new')", what="the plant type's list")
    c.click("#reg-new")
    c.wait(f"!!document.querySelector({json.dumps(field('detector'))})", what="its form")
    # the form follows the schema: a channel picker of configured channels, an enum, a ref, a number
    assert c.js(f"document.querySelector({json.dumps(field('result'))}).tagName") == "SELECT"
    assert c.js(f"document.querySelector({json.dumps(field('span_gas'))}).type") == "number"
    c.wait(f"[...document.querySelector({json.dumps(field('detector'))}).list.options].map(o => o.value)"
           ".includes('GT-1')", what="the channels offered")
    refs = c.js(f"[...document.querySelectorAll({json.dumps(field('hazard_source') + ' option')})]"
                ".map(o => o.value)")
    assert str(hs["id"]) in refs
    labels = texts(c, "#record-form label")
    assert "detector channel *" in labels and "next calibration" in labels
    fill(c, field("detector"), "GT-1")
    choose(c, field("calibrated_on"), "2026-12-02")
    choose(c, field("result"), "passed")
    fill(c, field("span_gas"), "50")
    choose(c, field("hazard_source"), str(hs["id"]))
    choose(c, field("next_due"), "2027-06-02")
    c.click("#rec-save")
    c.wait("/gas_detector_calibration\\/\\d+$/.test(location.hash)", what="the saved record")
    rid = record_id(c)
    data = plant.http["viewer"].get(f"/registers/gas_detector_calibration/{rid}").json()["data"]
    assert data == {"detector": "GT-1", "calibrated_on": "2026-12-02", "result": "passed", "span_gas": 50,
                    "hazard_source": hs["id"], "next_due": "2027-06-02"}

    # in Chinese: the plant's own labels, the built-in words and the shell's
    c.js("(() => { const s = document.getElementById('lang'); s.value = 'zh-CN';"
         " s.dispatchEvent(new Event('change')); })()")
    c.wait("!!document.querySelector('h2')?.textContent.startsWith('气体探测器标定记录')",
           what="the Chinese title")
    labels = texts(c, "#record-form label")
    assert "探测器通道 *" in labels and "标定日期 *" in labels and "下次标定" in labels
    assert c.js("document.querySelector('#nav a[data-view=registers]').textContent") == "台账"
    assert c.js("document.documentElement.lang") == "zh-CN"
    assert texts(c, f"{field('result')} option:checked") == ["合格"]
    # a built-in type's labels too
    go(c, "#/registers/hidden_danger/new", f"document.querySelector({json.dumps(field('found_on'))})")
    labels = texts(c, "#record-form label")
    assert "发现日期 *" in labels and "整改期限" in labels
    # the choice is the user's, kept in this browser
    assert c.js("localStorage.getItem('safegw.lang')") == "zh-CN"
    assert not c.errors(), c.errors()


def test_one_enum_value_in_two_fields_has_each_fields_own_words(plant: Plant, browser: Any) -> None:
    """``special`` is 特级 as a hot-work permit's level and 特种 as a kind of protective
    equipment: in Chinese, each field's list cell, filter and form show its own word."""
    r = plant.http["operator"].post("/registers/ppe", json={**_ppe("respirator"), "kind": "special"})
    assert r.status_code == 201, r.text
    ppe_id = r.json()["id"]
    permit = {"permit_no": "DH-2026-009", "applicant_unit": "maintenance", "location": "tank T-2",
              "content": "cutting a nozzle", "work_leader": "wang", "level": "special",
              "valid_from": "2026-12-07T08:00:00", "valid_to": "2026-12-07T12:00:00"}
    r = plant.http["operator"].post("/registers/hot_work_permit", json=permit)
    assert r.status_code == 201, r.text
    permit_id = r.json()["id"]
    c = browser()
    sign_in(c, plant.url, plant.tokens["operator"])
    c.js("(() => { const s = document.getElementById('lang'); s.value = 'zh-CN';"
         " s.dispatchEvent(new Event('change')); })()")
    c.wait("document.querySelector('#nav a[data-view=registers]')?.textContent === '台账'",
           what="the page in Chinese")

    cell = f"#records tbody tr[data-id='{ppe_id}'] td[data-field=kind]"
    go(c, "#/registers/ppe", f"document.querySelector({json.dumps(cell)})")
    assert texts(c, cell) == ["特种"]
    assert "特种" in texts(c, "#reg-filter-kind option") and "特级" not in texts(c, "#reg-filter-kind option")
    go(c, f"#/registers/ppe/{ppe_id}", f"document.querySelector({json.dumps(field('kind'))})")
    assert texts(c, f"{field('kind')} option:checked") == ["特种"]

    go(c, "#/registers/hot_work_permit", "document.querySelector('#reg-filter-level')")
    assert texts(c, "#reg-filter-level option") == ["全部", "特级", "一级", "二级"]
    go(c, f"#/registers/hot_work_permit/{permit_id}", f"document.querySelector({json.dumps(field('level'))})")
    assert texts(c, f"{field('level')} option:checked") == ["特级"]
    # the same value in a third field (an equipment inspection's kind) has a word of its own too
    go(c, "#/registers/equipment_inspection", "document.querySelector('#reg-filter-inspection')")
    shown = texts(c, "#reg-filter-inspection option")
    assert "专项" in shown and "特级" not in shown and "特种" not in shown
    assert not c.errors(), c.errors()


def test_a_viewer_is_offered_nothing_to_change(plant: Plant, browser: Any) -> None:
    r = plant.http["operator"].post("/registers/hidden_danger", json={
        "title": "loose railing", "grade": "general", "found_on": "2026-12-01", "found_by": "li"})
    rid = r.json()["id"]
    c = browser()
    sign_in(c, plant.url, plant.tokens["viewer"])
    assert c.js("document.querySelector('#nav a[data-view=users]').hidden") is True
    go(c, "#/registers/hidden_danger", "document.querySelector('#records tbody tr')")
    assert c.js("document.querySelector('#reg-new')") is None
    assert c.js("document.querySelector('#reg-import-file')") is None
    assert c.js("document.querySelector('#reg-export-csv')") is not None  # reading is allowed
    go(c, f"#/registers/hidden_danger/{rid}", f"document.querySelector({json.dumps(field('title'))})")
    assert c.js("document.querySelector('#workflow')") is None
    assert c.js("document.querySelector('.transition')") is None
    assert c.js("document.querySelector('#rec-save')") is None
    assert c.js("document.querySelector('#rec-archive')") is None
    assert c.js("document.querySelector('#att-file')") is None
    assert c.js("[...document.querySelectorAll('#record-form input, #record-form select')]"
                ".every(e => e.disabled)")
    # a route with no view says so
    go(c, "#/no-such-view", "document.querySelector('#view p.not-available')")
    # the users view says what it needs, without asking the API
    go(c, "#/users", "document.querySelector('#view p.error')")
    assert "admin" in c.js("document.querySelector('#view p.error').textContent")
    assert not c.errors(), c.errors()


def test_an_import_is_previewed_before_it_is_applied(plant: Plant, browser: Any, tmp_path: Path) -> None:
    r = plant.http["operator"].post("/registers/ppe", json=_ppe("helmets"))
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    csv_text = plant.http["viewer"].get("/registers/ppe/export?format=csv").text
    head, *rows = csv_text.strip().splitlines()
    cols = head.split(",")
    mine = next(row for row in rows if row.startswith(f"{rid},"))
    cells = mine.split(",")
    cells[cols.index("quantity")] = "40"
    new = ["" for _ in cols]
    for k, v in _ppe("gloves").items():
        new[cols.index(k)] = str(v)
    path = tmp_path / "ppe.csv"
    path.write_text("\n".join([head, ",".join(cells), ",".join(new)]) + "\n")
    before = plant.http["viewer"].get("/registers/ppe?archived=all").json()["total"]

    c = browser()
    sign_in(c, plant.url, plant.tokens["operator"])
    go(c, "#/registers/ppe", "document.querySelector('#reg-import-file')")
    set_files(c, "#reg-import-file", path)
    c.wait("!!document.querySelector('#reg-import-apply')", what="the preview")
    text = c.js("document.querySelector('#reg-import-preview').textContent")
    assert "create 1, update 1" in text
    rows_shown = c.js("[...document.querySelectorAll('#reg-import-changes tr')]"
                      ".map(r => [...r.cells].map(x => x.textContent))")
    assert ["update", f"#{rid}", "quantity: 20 → 40"] in rows_shown
    assert any(r[0] == "create" and "gloves" in r[2] for r in rows_shown)
    # nothing written yet
    assert plant.http["viewer"].get("/registers/ppe?archived=all").json()["total"] == before
    assert plant.http["viewer"].get(f"/registers/ppe/{rid}").json()["data"]["quantity"] == 20
    c.click("#reg-import-apply")
    c.wait("!!document.querySelector('#reg-import-preview p.ok')", what="the import applied")
    assert plant.http["viewer"].get(f"/registers/ppe/{rid}").json()["data"]["quantity"] == 40
    assert plant.http["viewer"].get("/registers/ppe?archived=all").json()["total"] == before + 1
    c.wait("[...document.querySelectorAll('#records tbody tr')].some(r => r.textContent.includes('gloves'))",
           what="the list reloaded")
    assert not c.errors(), c.errors()


def test_an_xlsx_workbook_is_imported_from_the_page(plant: Plant, browser: Any, tmp_path: Path) -> None:
    """A workbook as Excel saves it (dates typed as dates, numbers as numbers): a wrong cell is
    named by its sheet and cell; once fixed, the preview, then the records."""
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "ppe"
    ws.append(["item", "kind", "person", "quantity", "issued_on", "replace_by"])
    ws.append(["ear plugs", "general", "li", 200, dt.datetime(2026, 11, 1), dt.date(2027, 5, 1)])
    ws.append(["harness", "special", "wang", 0, dt.datetime(2026, 11, 2), None])
    bad = tmp_path / "ppe-bad.xlsx"
    wb.save(bad)
    ws["D3"] = 2
    good = tmp_path / "ppe.xlsx"
    wb.save(good)
    before = plant.http["viewer"].get("/registers/ppe?archived=all").json()["total"]

    c = browser()
    sign_in(c, plant.url, plant.tokens["operator"])
    go(c, "#/registers/ppe", "document.querySelector('#reg-import-file')")
    set_files(c, "#reg-import-file", bad)
    c.wait("!!document.querySelector('#reg-import-preview p.error')", what="the refusal")
    shown = c.js("document.querySelector('#reg-import-preview p.error').textContent")
    assert shown.startswith("ppe!D3 quantity: must be >= 1"), shown
    assert c.js("document.querySelector('#reg-import-apply')") is None

    set_files(c, "#reg-import-file", good)
    c.wait("!!document.querySelector('#reg-import-apply')", what="the preview")
    assert "create 2, update 0" in c.js("document.querySelector('#reg-import-preview').textContent")
    assert plant.http["viewer"].get("/registers/ppe?archived=all").json()["total"] == before
    c.click("#reg-import-apply")
    c.wait("!!document.querySelector('#reg-import-preview p.ok')", what="the import applied")
    items = plant.http["viewer"].get("/registers/ppe?q=harness").json()["items"]
    assert [d["data"] for d in items] == [
        {"item": "harness", "kind": "special", "person": "wang", "quantity": 2, "issued_on": "2026-11-02"}]
    plugs = plant.http["viewer"].get("/registers/ppe?q=ear").json()["items"][0]["data"]
    assert (plugs["issued_on"], plugs["replace_by"], plugs["quantity"]) == ("2026-11-01", "2027-05-01", 200)
    assert plant.http["viewer"].get("/registers/ppe?archived=all").json()["total"] == before + 2
    # in Chinese, the refusal in Chinese with the server's words after it
    c.js("(() => { const s = document.getElementById('lang'); s.value = 'zh-CN';"
         " s.dispatchEvent(new Event('change')); })()")
    c.wait("document.querySelector('#nav a[data-view=registers]')?.textContent === '台账'",
           what="the page in Chinese")
    c.wait("!!document.querySelector('#reg-import-file')?.parentElement.textContent.startsWith('导入')",
           what="the import in Chinese")
    set_files(c, "#reg-import-file", bad)
    c.wait("!!document.querySelector('#reg-import-preview p.error')", what="the refusal in Chinese")
    shown = c.js("document.querySelector('#reg-import-preview p.error').textContent")
    assert shown.startswith("ppe!D3 quantity: 不能小于 1（must be >= 1）"), shown
    assert not c.errors(), c.errors()


def _ppe(item: str) -> dict[str, Any]:
    return {"item": item, "kind": "general", "person": "li", "quantity": 20, "issued_on": "2026-11-01",
            "replace_by": "2027-11-01"}


def test_a_permit_approved_with_its_signatures_in_the_dialog(plant: Plant, browser: Any) -> None:
    """Approval needs the admin role, a passing gas analysis on live readings and five
    signatures: the dialog asks for the signatures table; without them the server's refusal
    is shown; with them the permit is approved."""
    plant.sim.control(set="GT-1", value=0.0)
    viewer = plant.http["viewer"]
    # the daemon polls the simulator: wait until the reading is the new one
    wait_until(lambda: viewer.get("/channels/GT-1").json()["value"] in (0, 0.0), 15, 0.1, "GT-1 at 0")
    permit = {"permit_no": "DH-2026-002", "applicant_unit": "maintenance", "location": "pump P-201",
              "content": "cutting a bracket", "work_leader": "wang", "level": "second", "channels": ["GT-1"],
              "medium": "methane",
              "valid_from": "2026-12-07T08:00:00", "valid_to": "2026-12-07T16:00:00"}
    rid = plant.http["operator"].post("/registers/hot_work_permit", json=permit).json()["id"]
    r = plant.http["operator"].post(f"/registers/hot_work_permit/{rid}/transitions/analyse", json={})
    assert r.status_code == 200 and r.json()["state"] == "analysed", r.text

    c = browser()
    sign_in(c, plant.url, plant.tokens["admin"])
    go(c, f"#/registers/hot_work_permit/{rid}", state_is("analysed"))
    c.click("#workflow button[data-transition=approve]")
    c.wait("!!document.querySelector('#transition-dialog')?.open", what="the approve dialog")
    table = "#transition-dialog div[data-field=signatures]"
    assert c.js(f"!!document.querySelector({json.dumps(table)})") is True
    c.click("#tr-ok")
    c.wait("document.querySelector('#tr-error').textContent.includes('signature')", what="the refusal")
    said = c.js("document.querySelector('#tr-error').textContent")
    assert "a applicant signature is required to approve" in said

    roles = ["applicant", "work_leader", "guardian", "analyst", "approver"]
    for i, role in enumerate(roles):
        c.click(f"{table} > button")  # add a row
        row = f"{table} fieldset.table-row:nth-of-type({i + 1})"
        c.wait(f"!!document.querySelector({json.dumps(row)})", what=f"signature row {i + 1}")
        choose(c, f"{row} select", role)
        fill(c, f"{row} input[type=text]", f"signer {i + 1}")
        choose(c, f"{row} input[type=datetime-local]", "2026-12-07T08:30:00")
    c.click("#tr-ok")
    c.wait(state_is("approved"), what="approved")
    doc = plant.http["viewer"].get(f"/registers/hot_work_permit/{rid}").json()
    assert sorted(s["role"] for s in doc["data"]["signatures"]) == sorted(roles)
    assert [a["step"] for a in doc["data"]["gas_analyses"] if a["ok"]][-1] == "approve"
    assert not c.errors(), c.errors()


def test_a_gas_step_dialog_shows_the_live_analysis_before_confirming(plant: Plant, browser: Any) -> None:
    """The analyse step of a hot-work permit: its dialog shows the analysis the gateway would take
    now (GET …/analysis), refreshed while it is open: passing on the live reading, then failing
    with its channel once the simulator's gas rises; confirmed anyway, the server refuses it."""
    viewer = plant.http["viewer"]
    plant.sim.control(set="GT-1", value=0.0)
    wait_until(lambda: viewer.get("/channels/GT-1").json()["value"] in (0, 0.0), 15, 0.1, "GT-1 at 0")
    permit = {"permit_no": "DH-2026-003", "applicant_unit": "maintenance", "location": "pump P-301",
              "content": "welding a support", "work_leader": "wang", "level": "second", "channels": ["GT-1"],
              "medium": "methane", "valid_from": "2026-12-07T08:00:00", "valid_to": "2026-12-07T16:00:00"}
    r = plant.http["operator"].post("/registers/hot_work_permit", json=permit)
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    c = browser()
    sign_in(c, plant.url, plant.tokens["operator"])
    go(c, f"#/registers/hot_work_permit/{rid}", state_is("applied"))
    c.click("#workflow button[data-transition=analyse]")
    c.wait("!!document.querySelector('#transition-dialog')?.open", what="the analyse dialog")
    verdict = "document.querySelector('#tr-analysis-verdict')?.dataset.ok"
    c.wait(f"{verdict} === 'true'", what="a passing analysis shown")
    row = "#tr-analysis-readings tr[data-channel='GT-1']"
    cells = c.js(f"[...document.querySelector({json.dumps(row)}).cells].map(x => x.textContent)")
    assert cells[0] == "GT-1" and cells[1].startswith("0 ") and cells[3] == "pass", cells
    assert cells[2], cells  # the limit and its clause
    # what the page shows is what the API says now (same channels, same verdicts)
    api = viewer.get(f"/registers/hot_work_permit/{rid}/analysis").json()
    assert api["ok"] is True and [x["channel"] for x in api["readings"]] == ["GT-1"]
    assert c.js("document.querySelector('#transition-dialog').open") is True

    # the gas rises while the dialog is open: the preview follows without a click, and its
    # longer rows never move the confirm button (it sits below the buttons)
    ok_at = "JSON.stringify(document.querySelector('#tr-ok').getBoundingClientRect())"
    before = c.js(ok_at)
    plant.sim.control(set="GT-1", value=55.0)
    c.wait(f"{verdict} === 'false'", what="the failing analysis shown", timeout=20)
    c.wait(f"document.querySelector({json.dumps(row)})?.dataset.verdict !== 'pass'",
           what="GT-1's row failing")
    failing = c.js(f"[...document.querySelector({json.dumps(row)}).cells].map(x => x.textContent)")
    assert failing[1].startswith("55"), failing
    assert "GT-1" in failing[3], failing
    assert "GT-1" in c.js("document.querySelector('#tr-analysis-verdict').textContent")
    assert c.js(ok_at) == before
    assert plant.http["viewer"].get(f"/registers/hot_work_permit/{rid}").json()["state"] == "applied"

    # confirmed anyway: the server takes its own analysis and refuses the step, as before
    c.click("#tr-ok")
    c.wait("document.querySelector('#tr-error').textContent.length > 0", what="the refusal")
    assert "GT-1" in c.js("document.querySelector('#tr-error p').textContent")
    doc = viewer.get(f"/registers/hot_work_permit/{rid}").json()
    assert doc["state"] == "applied"
    c.click("#tr-cancel")
    c.wait("!document.querySelector('#transition-dialog')", what="the dialog closed")

    # in Chinese, the preview's own words in Chinese
    c.js("(() => { const s = document.getElementById('lang'); s.value = 'zh-CN';"
         " s.dispatchEvent(new Event('change')); })()")
    c.wait("document.querySelector('#rec-save')?.textContent === '保存'", what="the record in Chinese")
    c.click("#workflow button[data-transition=analyse]")
    c.wait("!!document.querySelector('#transition-dialog')?.open", what="the analyse dialog in Chinese")
    c.wait(f"{verdict} === 'false'", what="the failing analysis in Chinese")
    assert c.js("document.querySelector('#tr-analysis-verdict').textContent").startswith("当前不合格：")
    assert c.js("document.querySelector('#tr-analysis h4').textContent").startswith("当前实时读数的气体分析")
    c.click("#tr-cancel")
    c.wait("!document.querySelector('#transition-dialog')", what="the dialog closed")
    assert not c.errors(), c.errors()
