"""The start page with more channels than one page holds, in headless Chromium against the
running daemon polling a simulated PLC: the table shows 100 rows at a time with the total,
pages forward and back, filters by name and by state on the server, and each channel name
links to its trend; the channels in alarm are listed above with acknowledge (a viewer's
disabled)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.cdp import CDP, CHROMIUM
from tests.fixtures.daemon import Daemon, make_tokens
from tests.fixtures.pagehelp import fill, sign_in

pytestmark = [
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium package is not installed"),
    pytest.mark.timeout(300),
]

N = 250
HOT = (7, 120, 233)  # the channels that read above their limit


def sim_yaml() -> str:
    lines = ["seed: 3", "tick: 100ms", "signals:"]
    lines += [f"  C{i:03d}: {{base: {80.0 if i in HOT else 20.0}}}" for i in range(N)]
    lines += ["devices:", "  - name: plc", "    protocol: modbus-tcp", "    port: 0", "    units:",
              "      - unit: 1", "        points:"]
    lines += [f"          - {{signal: C{i:03d}, address: holding:{2 * i}, type: float32}}" for i in range(N)]
    return "\n".join(lines) + "\n"


def gw_yaml(host: str, port: int, state: Path) -> str:
    lines = [f'gateway: {{id: gw-start, site: "91370100MA3C000000", state_dir: "{state}"}}', "devices:",
             "  - name: plc", "    protocol: modbus-tcp", f"    host: {host}", f"    port: {port}",
             "    poll: 500ms", "    timeout: 500ms", "    channels:"]
    lines += [f"      - {{name: C{i:03d}, kind: gas, unit: '%LEL', address: holding:{2 * i}, type: float32, "
              "alarms: {h: 50}}" for i in range(N)]
    lines.append('api: {listen: "127.0.0.1:0"}')
    return "\n".join(lines) + "\n"


@pytest.fixture()
def page(tmp_path: Path, sim_factory: Any) -> Iterator[tuple[CDP, Daemon]]:
    sim = sim_factory(sim_yaml())
    host, port = sim.tcp("plc")
    tokens = make_tokens(tmp_path)
    d = Daemon(gw_yaml(host, port, tmp_path)).start()
    chrome = CDP(tmp_path / "profile")
    try:
        sign_in(chrome, d.url + "/", tokens["viewer"])
        yield chrome, d
    finally:
        chrome.close()
        d.stop()


def names(chrome: CDP) -> list[str]:
    return list(chrome.js("[...document.querySelectorAll('#channels tbody tr')].map(r => r.dataset.channel)"))


def test_the_start_page_pages_filters_and_links(page: tuple[CDP, Daemon]) -> None:
    chrome, _d = page
    chrome.wait("document.getElementById('channel-count')?.textContent === '(250)'", what="250 channels")
    assert names(chrome) == [f"C{i:03d}" for i in range(100)]
    assert chrome.js("document.getElementById('chan-page').textContent") == "1–100 of 250"
    assert chrome.js("document.getElementById('chan-prev').disabled") is True
    chrome.click("#chan-next")
    chrome.wait("document.getElementById('chan-page').textContent === '101–200 of 250'", what="page 2")
    assert names(chrome) == [f"C{i:03d}" for i in range(100, 200)]
    chrome.click("#chan-next")
    chrome.wait("document.getElementById('chan-page').textContent === '201–250 of 250'", what="page 3")
    assert names(chrome) == [f"C{i:03d}" for i in range(200, 250)]
    assert chrome.js("document.getElementById('chan-next').disabled") is True
    chrome.click("#chan-prev")
    chrome.wait("document.getElementById('chan-page').textContent === '101–200 of 250'",
                what="back to page 2")

    # the server filters: by name (back to the first page), then by state
    fill(chrome, "#filter", "C12*")
    chrome.wait("document.getElementById('channel-count').textContent === '(10)'", what="C12* filtered")
    assert names(chrome) == [f"C{i:03d}" for i in range(120, 130)]
    chrome.js("document.getElementById('filter').value = ''")
    chrome.js("(() => { const s = document.getElementById('state-filter'); s.value = 'alarm';"
              " s.dispatchEvent(new Event('change')); })()")
    chrome.wait("document.getElementById('channel-count').textContent === '(3)'", timeout=30,
                what="the channels in alarm")
    assert names(chrome) == [f"C{i:03d}" for i in HOT]
    classes = chrome.js("[...document.querySelectorAll('#channels tbody tr')].map(r => r.className)")
    assert set(classes) == {"alarm"}

    # the same channels in the alarm list, not acknowledgeable by a viewer
    chrome.wait("new Set([...document.querySelectorAll('#alarms tbody tr')].map(r => r.dataset.channel))"
                ".size === 3", what="three channels in the alarm list")
    assert chrome.js("[...document.querySelectorAll('#alarms button.ack')].every(b => b.disabled)") is True
    # a channel's name opens its trend
    href = chrome.js("document.querySelector('#channels tbody tr a').getAttribute('href')")
    assert href == "#/trends?ch=C007"
    assert not chrome.errors(), chrome.errors()
