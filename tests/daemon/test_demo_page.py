"""`safegw demo` shows the page: the address of the admin API on a free loopback port and
a demo admin token are printed under the table, and they work (the page loads, the token
signs in as an admin)."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import httpx
import pytest

from tests.daemon.test_demo_cli import STOP_S, _start
from tests.fixtures.helpers import wait_until

pytestmark = pytest.mark.timeout(300)


def test_demo_prints_the_page_address_and_a_working_admin_token(tmp_path: Path) -> None:
    proc, out = _start(tmp_path)
    try:
        found: dict[str, str] = {}

        def printed() -> bool:
            assert proc.poll() is None, out.read_text()[-3000:]
            text = out.read_text()
            url = re.search(r"^web page: (http://127\.0\.0\.1:\d+)/ ", text, re.M)
            token = re.search(r"^token: (sgw_\S+)$", text, re.M)
            if url and token:
                found.update(url=url.group(1), token=token.group(1))
            return bool(found)

        wait_until(printed, 120, 0.2, "the page's address and token under the table")
        with httpx.Client(base_url=found["url"], timeout=10) as http:
            page = http.get("/")
            assert page.status_code == 200 and "/static/shell.js" in page.text
            assert http.get("/whoami").status_code == 401
            me = http.get("/whoami", headers={"Authorization": f"Bearer {found['token']}"}).json()
            assert me == {"name": "demo-admin", "role": "admin"}
            # the channels the table shows are the page's too
            chans = http.get("/channels", headers={"Authorization": f"Bearer {found['token']}"}).json()
            assert chans["total"] == 25
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        assert proc.wait(STOP_S) == 0, out.read_text()[-3000:]
    assert "Traceback" not in out.read_text()
