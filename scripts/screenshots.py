#!/usr/bin/env python3
"""Screenshots of the page's main views, for docs/screenshots/ and the README.

Against a running daemon (``--url http://127.0.0.1:8080 --token-file FILE``, a viewer's or
an admin's token) or, by default, against the demo plant started here: the bundled
simulators (config/sim-demo.yaml) and the gateway on config/demo.yaml, moved to free ports,
its admin API on a free loopback port and an admin token made for the run. The demo's
leak scenarios raise alarms within a minute; the script waits for the first before it
takes the pictures (about two minutes). Headless Chromium (Debian's package) over the DevTools pipe.

    .venv/bin/python scripts/screenshots.py                      # the demo, into docs/screenshots/
    .venv/bin/python scripts/screenshots.py --url URL --token-file FILE --out /tmp/shots
    .venv/bin/python scripts/screenshots.py --lang zh-CN
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.fixtures.cdp import CDP  # noqa: E402

#: (file name, route, what must be on the page before the picture)
VIEWS = [
    ("start", "#/", "document.querySelector('#channels tbody tr')"),
    ("trends", "#/trends?ch={gas}&range=1h", "document.querySelector('.trend-chart')?.dataset.loaded"),
    ("alarms", "#/alarms?range=1h", "document.querySelector('#alarm-history')?.dataset.loaded"),
    ("report", "#/report?from=1h", "document.getElementById('report-body')?.dataset.loaded"),
    ("registers", "#/registers/hidden_danger", "document.querySelector('#view table, #view form')"),
    ("users", "#/users", "document.querySelector('#view table')"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_demo(tmp: Path) -> tuple[list[subprocess.Popen[Any]], str, str]:
    """The demo plant and gateway on free ports; (processes, API address, admin token)."""
    from gateway.core.tokens import UserStore

    subst = {"15020": str(free_port()), "15021": str(free_port()), "14840": str(free_port()),
             "/tmp/safegw-demo": str(tmp / "demo")}
    for name in ("demo.yaml", "sim-demo.yaml"):
        text = (ROOT / "config" / name).read_text()
        for k, v in subst.items():
            text = text.replace(k, v)
        (tmp / name).write_text(text)
    port = free_port()
    with (tmp / "demo.yaml").open("a") as f:
        f.write(f"\napi: {{listen: '127.0.0.1:{port}'}}\n")
    sim = subprocess.Popen([sys.executable, "-m", "simulators", "-c", str(tmp / "sim-demo.yaml")], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert sim.stdout is not None
    line = sim.stdout.readline()
    if not line.startswith("READY"):
        sim.kill()
        raise SystemExit(f"the simulators did not start: {line!r}")
    state = tmp / "state"
    state.mkdir()
    token = UserStore(state / "users.json").add("screenshots", "admin")
    gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(tmp / "demo.yaml"),
                           "--state-dir", str(state), "--log-level", "WARNING"], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return [gw, sim], f"http://127.0.0.1:{port}", token


def wait(cond: Any, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = cond()
        except httpx.HTTPError:
            v = None
        if v:
            return v
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.5)


def shell_present(url: str) -> bool:
    return httpx.get(url + "/static/shell.js", timeout=10).status_code == 200


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running daemon's admin API (default: start the demo here)")
    ap.add_argument("--token-file", help="a file holding a token for --url (viewer or admin)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    ap.add_argument("--lang", default="en", choices=["en", "zh-CN"])
    ap.add_argument("--timeout", type=float, default=180.0, help="longest wait for the demo's first alarm")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[Any]] = []
    with tempfile.TemporaryDirectory(prefix="safegw-shots-") as tmp_s:
        tmp = Path(tmp_s)
        try:
            if args.url:
                if not args.token_file:
                    raise SystemExit("--url needs --token-file")
                url, token = args.url.rstrip("/"), Path(args.token_file).read_text().strip()
            else:
                procs, url, token = start_demo(tmp)
            api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=20)
            wait(lambda: api.get("/health").status_code == 200, "the admin API", 60)
            # a plant with something to show: the demo's first leak raises and clears its alarm
            # within about two minutes
            wait(lambda: any(e.get("transition") == "clear" and e.get("kind") == "gas"
                             for e in api.get("/alarms", params={"history": 200}).json()["history"]),
                 "a first alarm raised and cleared", args.timeout)
            me = api.get("/whoami").json() if api.get("/whoami").status_code == 200 else {"role": "viewer"}
            gas = next((c["name"] for c in api.get("/channels", params={"kind": "gas"}).json()["channels"]),
                       None) or api.get("/channels").json()["channels"][0]["name"]
            with_shell = shell_present(url)
            chrome = CDP(tmp / "profile")
            try:
                taken = []
                for name, route, ready in VIEWS:
                    hash_ = route.format(gas=gas)
                    if with_shell:
                        chrome.open("about:blank")
                        chrome.send("Page.addScriptToEvaluateOnNewDocument", {"source": (
                            f"sessionStorage.setItem('safegw.token', {json.dumps(token)});"
                            f"localStorage.setItem('safegw.lang', {json.dumps(args.lang)});")})
                        chrome.send("Page.navigate", {"url": url + "/" + hash_})
                    elif name in ("trends", "alarms", "report"):
                        # until the page's shell is there, the view alone, as the tests mount it
                        from tests.fixtures.pageview import mount_view

                        role = me.get("role", "viewer")
                        mount_view(chrome, url, token, name, hash_, lang=args.lang, role=role)
                    else:
                        continue
                    try:
                        # !! : a DOM node comes back by value as {}, which reads as false
                        chrome.wait(f"!!({ready})", timeout=30, what=f"the {name} view")
                    except AssertionError as e:
                        print(f"skipped {name}: {e}", file=sys.stderr)
                        continue
                    if name == "trends":
                        # zoomed to the last 10 minutes, as a person drags across the chart
                        chrome.js("(() => { const u = document.querySelector('.trend-chart').uplot;"
                                  "u.setScale('x', {min: u.scales.x.max - 600, max: u.scales.x.max}); })()")
                    # the page's own refresh and fonts settle on the next frames, not by the clock
                    chrome.js("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
                    png = base64.b64decode(chrome.send("Page.captureScreenshot", {"format": "png"})["data"])
                    path = out / f"{name}.png"
                    path.write_bytes(png)
                    taken.append(str(path))
                    print(f"wrote {path}")
            finally:
                chrome.close()
            api.close()
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    print(json.dumps({"screenshots": taken}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
