"""The local status page in headless Chromium (Debian's package), driven over the Chrome
DevTools protocol on a pipe (``--remote-debugging-pipe``: no websocket library, no
browser download). Against the real daemon polling the simulators: the page loads, logs
in with a token, shows live values with their colours, and a real mouse click on
"acknowledge" changes the alarm's state."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.cdp import CDP, CHROMIUM
from tests.fixtures.daemon import SIM_PLANT, Daemon, auth, gateway_yaml, make_tokens

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="Debian's chromium package is not installed"
)


def row_class(name: str) -> str:
    return (
        f"(() => {{ const r = document.querySelector('#channels tr[data-channel=\"{name}\"]'); "
        f"return r ? r.className : null; }})()"
    )


def test_status_page_live_values_and_acknowledge(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(SIM_PLANT)
    host, port = sim.tcp("plc")
    tokens = make_tokens(tmp_path)
    d = Daemon(gateway_yaml(host, port, tmp_path)).start()
    api = httpx.Client(base_url=d.url, headers=auth(tokens["operator"]), timeout=10)
    chrome = CDP(tmp_path / "profile")
    try:
        assert (
            api.post(
                "/registers/fire_equipment",
                json={
                    "name": "extinguisher bank 3",
                    "kind": "extinguisher",
                    "location": "tank farm",
                    "next_inspection": time.strftime("%Y-%m-%d", time.localtime(time.time() + 10 * 86400)),
                },
            ).status_code
            == 201
        )

        chrome.open(d.url + "/")
        chrome.wait(
            "document.readyState === 'complete' && !document.getElementById('login').hidden",
            what="the login form",
        )
        # log in the way a person does: focus the field, type, press the button
        chrome.click("#token")
        chrome.type(tokens["operator"])
        chrome.click("#login-btn")
        chrome.wait("!document.getElementById('app').hidden", what="the app after login")
        assert chrome.js("sessionStorage.getItem('safegw.token')") == tokens["operator"]
        assert chrome.js("document.getElementById('who').textContent") == "operator-user (operator)"

        # live values from the simulator, green; the dead device's channel yellow
        chrome.wait(row_class("GT-1") + " === 'normal'", what="GT-1 green")
        value = float(
            chrome.js("document.querySelector('#channels tr[data-channel=\"GT-1\"] td.value').textContent")
        )
        assert abs(value - 12.0) < 0.11
        chrome.wait(row_class("PT-9") + " === 'fault'", what="PT-9 (device down) yellow")
        assert (
            chrome.js(
                "getComputedStyle(document.querySelector('#channels tr[data-channel=\"PT-9\"]'))"
                ".backgroundColor"
            )
            == "rgb(255, 248, 214)"
        )
        # the register due in 10 days is listed
        chrome.wait(
            "document.querySelector('#due tbody').textContent.includes('extinguisher bank 3')",
            what="the due register",
        )

        # the gas rises past its high-high limit: the row turns red and an unacknowledged alarm appears
        sim.control(set="GT-1", value=55.0)
        chrome.wait(row_class("GT-1") + " === 'alarm'", what="GT-1 red")
        chrome.wait(
            'document.querySelector(\'#alarms tr[data-channel="GT-1"][data-state="active_unacked"] '
            "button.ack') !== null",
            what="the acknowledge button",
        )
        assert (
            chrome.js(
                "getComputedStyle(document.querySelector('#channels tr[data-channel=\"GT-1\"]'))"
                ".backgroundColor"
            )
            == "rgb(253, 226, 223)"
        )
        # The alarm table is redrawn every second and the dead device's alarms come and go
        # in it, so a row can move between finding the button and the mouse reaching it
        # (the click then lands on another row). A person whose click missed clicks again:
        # so does the test, at most three times, each time waiting on the state it expects.
        acked = "document.querySelector('#alarms tr[data-channel=\"GT-1\"]')?.dataset.state" \
            " === 'active_acked'"
        button = "document.querySelector('#alarms tr[data-channel=\"GT-1\"] button.ack') !== null"
        for attempt in range(3):
            if chrome.js(button):  # gone once the ack went through: then only wait
                with contextlib.suppress(RuntimeError):  # redrawn away between the check and the click
                    chrome.click('#alarms tr[data-channel="GT-1"] button.ack')
            try:
                chrome.wait(acked, timeout=10, what="the alarm acknowledged on the page")
                break
            except AssertionError:
                if attempt == 2:
                    raise
        # the daemon agrees, and the journal has who acknowledged
        active = api.get("/alarms?history=0").json()["active"]
        gt1 = [a for a in active if a["channel"] == "GT-1" and a["rule"] == "limit"]
        assert gt1 and gt1[0]["state"] == "active_acked"
        acks = [e for e in d.events("alarm") if e.get("transition") == "ack" and e["channel"] == "GT-1"]
        assert acks and acks[-1]["who"] == "operator-user"
        assert not chrome.errors(), chrome.errors()
    finally:
        chrome.close()
        api.close()
        d.stop()


def test_viewer_cannot_acknowledge_from_the_page(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(SIM_PLANT)
    host, port = sim.tcp("plc")
    tokens = make_tokens(tmp_path)
    d = Daemon(gateway_yaml(host, port, tmp_path)).start()
    chrome = CDP(tmp_path / "profile")
    try:
        sim.control(set="GT-2", value=60.0)
        chrome.open(d.url + "/")
        chrome.wait("document.readyState === 'complete'")
        # a wrong token is refused with a message and the form stays
        chrome.js("document.getElementById('token').value = 'sgw_000000000000_" + "x" * 43 + "'")
        chrome.click("#login-btn")
        chrome.wait("document.getElementById('login-error').textContent.includes('refused')", what="refusal")
        chrome.js(f"document.getElementById('token').value = '{tokens['viewer']}'")
        chrome.click("#login-btn")
        chrome.wait(
            "document.querySelector('#alarms tr[data-channel=\"GT-2\"] button.ack') !== null",
            what="GT-2 alarm row",
        )
        assert (
            chrome.js("document.querySelector('#alarms tr[data-channel=\"GT-2\"] button.ack').disabled")
            is True
        )
    finally:
        chrome.close()
        d.stop()


def test_page_shows_numbers_as_read_and_health_alarms_in_seconds(tmp_path: Path, sim_factory: Any) -> None:
    """Issue 15, item 7: the page shows a float32 register at its shortest form and a
    scaled integer at its resolution, as sent by the API, and a health alarm (the dead
    device's ``bad``) with its time and threshold in seconds, not as a reading."""
    sim = sim_factory(SIM_PLANT)
    host, port = sim.tcp("plc")
    tokens = make_tokens(tmp_path)
    d = Daemon(gateway_yaml(host, port, tmp_path)).start()
    chrome = CDP(tmp_path / "profile")
    try:
        sim.control(set="TT-1", value=19.31)  # float32: 19.309999465942383
        sim.control(set="LT-1", value=1234567.8)  # float32: 1234567.75
        sim.control(set="GT-2", value=22.2)  # int16 × 0.1: 22.200000000000003
        chrome.open(d.url + "/")
        chrome.wait("document.readyState === 'complete'")
        chrome.js(f"document.getElementById('token').value = '{tokens['viewer']}'")
        chrome.click("#login-btn")

        def cell(name: str) -> str:
            return f"document.querySelector('#channels tr[data-channel=\"{name}\"] td.value')?.textContent"

        chrome.wait(cell("TT-1") + " === '19.31'", what="TT-1 shown as 19.31")
        chrome.wait(cell("LT-1") + " === '1234567.8'", what="LT-1 shown as 1234567.8")
        chrome.wait(cell("GT-2") + " === '22.2'", what="GT-2 shown as 22.2")
        # the dead device's channel goes stale and bad after stale_periods × poll (3 s): its
        # alarm rows show seconds in the value and limit columns; a rule whose level is its
        # name shows the word once ("stale", not "stale stale")
        rows = ("Array.from(document.querySelectorAll('#alarms tr[data-channel=\"PT-9\"]'))"
                ".map(r => Array.from(r.cells).map(c => c.textContent))"
                ".filter(c => ['stale', 'bad'].includes(c[1]))")
        chrome.wait(rows + ".length > 0", timeout=30, what="PT-9's health alarm row")
        for cells in chrome.js(rows):
            value_cell, limit_cell = cells[3], cells[4]
            assert limit_cell == "3.0 s", cells
            assert value_cell.endswith(" s") and float(value_cell[:-2]) >= 3.0, cells
        assert not chrome.errors(), chrome.errors()
    finally:
        chrome.close()
        d.stop()
