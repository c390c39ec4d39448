"""CONTRACT test of the ``api: v2`` path (influxdb-client → ``/api/v2/write``).

No InfluxDB 2.x/3.x can be installed on this machine (Debian ships 1.6.7, which has no
/api/v2; PyPI has no server), so this checks, against a local HTTP endpoint that
records what it receives, the request the client sends: path, org/bucket/precision
parameters, the token header, gzip, and the body (the same line protocol as v1). The
endpoint then plays the server's documented answers (204, 401, 400/422, 503) to check
how the writer reacts. It is a contract test, not an interoperability test.
"""

from __future__ import annotations

import gzip
import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.historian.service import CONSUMER
from tests.fixtures.helpers import async_wait_until
from tests.fixtures.historian import N_CH, T0, Harness, batch, make_config

pytestmark = pytest.mark.timeout(60)


class Recorder(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.status = 204  # what to answer next (tests switch it)
        self.reject_marker: bytes | None = None
        self.queries: list[dict[str, Any]] = []
        self.query_answer = ""
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def lines(self) -> list[bytes]:
        with self.lock:
            return [ln for r in self.requests if r["status"] == 204 for ln in r["body"].splitlines()]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Recorder

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path.startswith("/api/v2/query"):
            self.server.queries.append({"path": self.path, "headers": dict(self.headers),
                                        "body": json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b"
                                                           else raw)})
            data = self.server.query_answer.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/csv; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
        srv = self.server
        status = srv.status
        msg = ""
        if status == 204 and srv.reject_marker is not None and srv.reject_marker in body:
            status, msg = 422, "failure writing points to database: partial write: field type conflict"
        elif status == 401:
            msg = "unauthorized access"
        elif status >= 500:
            msg = "service unavailable"
        with srv.lock:
            srv.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                 "gzip": self.headers.get("Content-Encoding") == "gzip", "status": status})
        self.send_response(status)
        if msg:
            data = json.dumps({"code": "invalid", "message": msg}).encode()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self.send_header("Content-Length", "0")
            self.end_headers()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    srv = Recorder()
    t = threading.Thread(target=srv.serve_forever, name="v2-recorder", daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def v2_config(tmp: Path, url: str, token_file: Path) -> Any:
    token_file.write_text("tok-abc123\n")
    token_file.chmod(0o600)
    return make_config(tmp, url, "unused", extra=f"  api: v2\n  bucket: plant/autogen\n  org: my org\n"
                                                  f"  token_file: {token_file}\n  stats: false")


async def test_contract_v2_request_shape(recorder: Recorder, tmp_path: Path) -> None:
    cfg = v2_config(tmp_path, recorder.url, tmp_path / "token")
    h = Harness(cfg)
    await h.start()
    try:
        for i in range(3):
            await h.gw.journal.append_batch(batch(i))
        await h.caught_up()
    finally:
        await h.stop()
    req = recorder.requests[0]
    path, _, query = req["path"].partition("?")
    assert path == "/api/v2/write"
    params = {k: v[0] for k, v in urllib.parse.parse_qs(query).items()}
    assert params == {"org": "my org", "bucket": "plant/autogen", "precision": "ns"}
    assert req["headers"]["Authorization"] == "Token tok-abc123"
    assert req["gzip"]
    lines = recorder.lines()
    assert len(lines) == 3 * N_CH
    first = next(ln for ln in lines if b"channel=CH-000," in ln)
    assert first.startswith(b"gas,area=Tank\\ farm\\=1,channel=CH-000,device=plc-1,gateway=gw-test-1,"
                            b"hazard_source=HS\\ 0,kind=gas,site=91370100MA3C000000,unit=u\\,0 ")
    assert first.endswith(f" {T0}".encode())


async def test_contract_v2_401_retries_then_503_then_accepts(recorder: Recorder, tmp_path: Path) -> None:
    cfg = v2_config(tmp_path, recorder.url, tmp_path / "token")
    recorder.status = 401
    h = Harness(cfg)
    await h.start()
    try:
        await h.gw.journal.append_batch(batch(0))
        await async_wait_until(lambda: h.svc.writer.state == "unauthorized", 10)
        assert h.gw.journal.cursor(CONSUMER) == 0
        recorder.status = 503
        await async_wait_until(lambda: h.svc.writer.state == "retrying", 10)
        recorder.status = 204
        await h.caught_up()
    finally:
        await h.stop()
    assert len(recorder.lines()) == N_CH


async def test_contract_v2_422_splits_and_records_rejection(recorder: Recorder, tmp_path: Path) -> None:
    cfg = v2_config(tmp_path, recorder.url, tmp_path / "token")
    recorder.reject_marker = b"channel=CH-005,"
    h = Harness(cfg)
    await h.start()
    try:
        for i in range(4):
            await h.gw.journal.append_batch(batch(i))
        await h.caught_up()
        await async_wait_until(lambda: any(r.kind == 2 for r in h.gw.journal.read_sync(0, 100)), 10)
        ev = next(r.event() for r in h.gw.journal.read_sync(0, 100) if r.kind == 2)
        await h.caught_up()
    finally:
        await h.stop()
    assert ev["type"] == "influx_rejected" and ev["count"] == 4
    assert "field type conflict" in ev["message"]
    written = recorder.lines()
    assert not any(b"channel=CH-005," in ln for ln in written)
    samples = [ln for ln in written if ln.startswith((b"gas,", b"temperature,", b"pressure,"))]
    assert len(samples) == 4 * (N_CH - 1)


async def test_contract_v2_history_query(recorder: Recorder, tmp_path: Path) -> None:
    from gateway.historian.history import query_history

    cfg = v2_config(tmp_path, recorder.url, tmp_path / "token")
    recorder.query_answer = (
        ",result,table,_time,value,quality\r\n"
        ",_result,0,2025-11-24T16:00:01.000000007Z,1.5,0\r\n"
        ",_result,0,2025-11-24T16:00:00.000000007Z,,130\r\n"
        "\r\n")
    h = await query_history(cfg, "CH-001", T0, T0 + 10 * 10**9)
    q = recorder.queries[0]
    path, _, query = q["path"].partition("?")
    assert path == "/api/v2/query" and urllib.parse.parse_qs(query)["org"] == ["my org"]
    assert q["headers"]["Authorization"] == "Token tok-abc123"
    flux = q["body"]["query"]
    assert 'from(bucket: "plant/autogen")' in flux and 'r.channel == "CH-001"' in flux
    assert 'r._measurement == "temperature"' in flux and 'r.gateway == "gw-test-1"' in flux
    assert f"start: time(v: {T0})" in flux
    t = 1764000000 * 10**9 + 7
    assert h.source == "influxdb"
    assert h.rows == [[t, None, 130], [t + 10**9, 1.5, 0]]  # sorted, nanoseconds kept
