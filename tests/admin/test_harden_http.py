"""The HTTP listeners as an attacker meets them, through the real daemon and a real central
node on real sockets: bodies bounded while they are read (chunked too) before any token
is checked, request heads bounded in size and time, and X-Forwarded-For ignored unless
the sender is a configured proxy."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.central import CentralSide, central_config, central_pub, make_keys
from tests.fixtures.daemon import Daemon, auth, make_tokens
from tests.fixtures.rawhttp import chunked_upload, connect, read_status, tls_connect

MiB = 2**20






@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A daemon (no devices: these tests need only its API) with small limits: 1 MiB
    bodies, 3 bad tokens per address, 1 s for a request head."""
    state = tmp_path_factory.mktemp("harden")
    tokens = make_tokens(state)
    api = '{listen: "127.0.0.1:0", max_failures: 3, lockout: 1h, max_body: 1MiB, header_timeout: 1s}'
    d = Daemon(f'gateway: {{id: g, site: "S", state_dir: "{state}"}}\napi: {api}\n').start()
    d.tokens = tokens  # type: ignore[attr-defined]
    try:
        yield d
    finally:
        d.stop()




def test_a_chunked_body_without_token_is_refused_while_it_arrives(gw: Any) -> None:
    with connect(gw.url) as s:
        head = (b"POST /registers/hidden_danger HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        sent, early = chunked_upload(s, head, 32 * MiB)
        status, _ = read_status(s, data=early)
    assert status == 413
    assert sent < 8 * MiB, f"the server read {sent} bytes before refusing"


def test_a_declared_oversized_body_is_refused_before_it_is_sent(gw: Any) -> None:
    with connect(gw.url) as s:
        s.sendall(b"POST /alarms/GT-1/ack HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 300000000\r\n\r\n")
        status, data = read_status(s)
    assert status == 413, data
    assert b"connection: close" in data.lower()


def test_an_xlsx_import_is_taken_by_its_content_type_and_bounded_by_max_import(gw: Any) -> None:
    """A workbook sent as Excel's media type is read as one (no ?format=); one larger than
    api.max_import (default 10 MiB: imports keep their own limit) is a 413."""
    import io
    import os
    import zipfile

    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["title", "grade", "found_on", "found_by"])
    ws.append(["xlsx over http", "general", "2026-02-01", "li"])
    buf = io.BytesIO()
    wb.save(buf)
    media = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    headers = {**auth(gw.tokens["operator"]), "Content-Type": media}
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        r = c.post("/registers/hidden_danger/import?dry_run=true", content=buf.getvalue(), headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["created"] == 1 and r.json()["changes"][0]["row"] == 2
        # the same workbook with an 11 MiB part that does not compress
        with zipfile.ZipFile(buf, "a", zipfile.ZIP_STORED) as z:
            z.writestr("xl/media/image1.bin", os.urandom(11 * MiB))
        r = c.post("/registers/hidden_danger/import", content=buf.getvalue(), headers=headers)
        assert r.status_code == 413, r.text
        r = c.post("/registers/hidden_danger/import", content=b"title\nx\n", headers=headers)
        assert r.status_code == 422 and "not a zip archive" in r.text


def test_attachments_keep_their_own_larger_limit(gw: Any) -> None:
    # 2 MB is over the API's 1 MiB but within registers.max_attachment (20 MB): it reaches the
    # handler, which answers for the record (404: no record 999), not the size
    r = httpx.post(gw.url + "/registers/hidden_danger/999/attachments?filename=a.pdf",
                   headers=auth(gw.tokens["operator"]), content=b"%PDF-1.4\n" + b"0" * (2 * 10**6))
    assert r.status_code == 404, r.text


def test_a_head_over_16k_is_refused(gw: Any) -> None:
    r = httpx.get(gw.url + "/health", headers={"X-Junk": "a" * 20_000})
    assert r.status_code == 431
    assert httpx.get(gw.url + "/health", headers={"X-Junk": "a" * 8_000}).status_code == 200


def test_a_trickled_head_is_cut_off(gw: Any) -> None:
    with connect(gw.url) as s:
        t0 = time.monotonic()
        s.sendall(b"GET /health HTTP/1.1\r\n")
        closed = False
        s.settimeout(0.5)
        for _ in range(12):  # one header byte every 0.5 s: never a complete head
            try:
                s.sendall(b"X")
                if s.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        assert closed, "the connection stayed open for 6 s without a complete head"
        assert time.monotonic() - t0 < 4
    # an idle connection that never sends anything is closed too
    with connect(gw.url) as s:
        s.settimeout(5)
        assert s.recv(10) == b""


def test_x_forwarded_for_does_not_move_the_lockout_or_the_audit(gw: Any) -> None:
    # a lockout of 3 bad tokens per address: rotating X-Forwarded-For does not give fresh
    # addresses (from a loopback address of its own, so no other test's failures count)
    with httpx.Client(base_url=gw.url, transport=httpx.HTTPTransport(local_address="127.0.0.3")) as c:
        codes = [c.post("/alarms/GT-1/ack", json={},
                        headers={**auth(f"bad-{i}"), "X-Forwarded-For": f"10.9.{i}.1"}).status_code
                 for i in range(5)]
    assert codes[:3] == [401, 401, 401] and codes[3:] == [429, 429], codes
    # nor does it choose the address the audit trail records
    gw.run(gw.api.ctx.flush_audit())
    store = gw.api.ctx.store
    rows = gw.run(store.call(store.audit_list, path_prefix="/alarms/GT-1/ack"))["items"]
    remotes = {str(r["remote"]) for r in rows}
    assert any(x.startswith("127.0.0.3:") for x in remotes), remotes
    assert not any(x.startswith("10.") for x in remotes), remotes


def test_trusted_proxies_are_believed(tmp_path: Path) -> None:
    tokens = make_tokens(tmp_path)
    d = Daemon(f'gateway: {{id: g, site: "S", state_dir: "{tmp_path}"}}\n'
               'api: {listen: "127.0.0.1:0", max_failures: 1, trusted_proxies: ["127.0.0.1"]}\n').start()
    try:
        a = httpx.get(d.url + "/whoami", headers={**auth("bad"), "X-Forwarded-For": "10.0.0.1"})
        b = httpx.get(d.url + "/whoami", headers={**auth("bad"), "X-Forwarded-For": "10.0.0.2"})
        c = httpx.get(d.url + "/whoami", headers={**auth("bad"), "X-Forwarded-For": "10.0.0.1"})
        assert (a.status_code, b.status_code, c.status_code) == (401, 401, 429)
        assert httpx.get(d.url + "/whoami", headers=auth(tokens["viewer"])).status_code == 200
    finally:
        d.stop()


# --------------------------------------------------------------------------- central

async def _central(tmp_path: Path, **listen: Any) -> CentralSide:
    pub_dir = tmp_path / "pub"
    pub_dir.mkdir(exist_ok=True)
    gpub = make_keys(tmp_path / "gw-1", "gw-1", pub_dir)
    central_pub(tmp_path, "c1", pub_dir)
    cfg = central_config(tmp_path, "c1", [{"id": "gw-1", "keys": str(gpub), "mode": "push"}],
                         listen={"address": "127.0.0.1:0", **listen})
    return await CentralSide(cfg).start()




async def test_central_push_refuses_a_chunked_body_over_its_limit(tmp_path: Path) -> None:
    c = await _central(tmp_path, max_push="1MiB")
    try:
        def attack() -> tuple[int | None, int]:
            with tls_connect(c.node.port) as s:
                head = b"POST /sync/v1/push HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                sent, early = chunked_upload(s, head, 32 * MiB)
                return read_status(s, data=early)[0], sent

        status, sent = await asyncio.to_thread(attack)
        assert status == 413
        assert sent < 8 * MiB
    finally:
        await c.stop()


async def test_central_heads_and_forwarded_for(tmp_path: Path) -> None:
    c = await _central(tmp_path, max_failures=2)
    try:
        async with httpx.AsyncClient(verify=False, base_url=c.url) as h:
            r = await h.get("/status", headers={"X-Junk": "a" * 20_000})
            assert r.status_code == 431
            codes = []
            for i in range(3):
                r = await h.get("/status", headers={**auth("bad"), "X-Forwarded-For": f"10.1.{i}.1"})
                codes.append(r.status_code)
            assert codes == [401, 401, 429], codes
            r = await h.get("/sync/v1/envelopes?after=99999999999999999999999&lane=main")
            assert r.status_code in (400, 401), r.text
    finally:
        await c.stop()


async def test_central_refuses_positions_beyond_64_bits(tmp_path: Path) -> None:
    from uplink import keys
    from uplink.auth import sign_headers

    pub_dir = tmp_path / "pub"
    pub_dir.mkdir()
    prov_pub = make_keys(tmp_path / "prov", "prov", pub_dir)
    prov = keys.load_all(tmp_path / "prov")[0]
    central_pub(tmp_path, "c1", pub_dir)
    cfg = central_config(tmp_path, "c1", [], upstream={"mode": "pull", "keys": [str(prov_pub)]})
    c = await CentralSide(cfg).start()
    try:
        async with httpx.AsyncClient(verify=False, base_url=c.url) as h:
            for q in ("after=99999999999999999999999", "after=0&ack=99999999999999999999999",
                      "after=0&max_bytes=99999999999999999999999", "after=-99999999999999999999999"):
                target = f"/sync/v1/envelopes?lane=main&{q}"
                r = await h.get(target, headers=sign_headers(prov.ed25519, prov.kid, "GET", target, to="c1"))
                assert r.status_code == 400, (q, r.status_code, r.text)
            target = "/sync/v1/envelopes?lane=main&after=0"
            r = await h.get(target, headers=sign_headers(prov.ed25519, prov.kid, "GET", target, to="c1"))
            assert r.status_code == 200, r.text
    finally:
        await c.stop()
