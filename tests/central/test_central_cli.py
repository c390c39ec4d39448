"""``safegw central``: config check (exit codes, FILE:LINE:COL errors) and the daemon itself
as a subprocess (status over HTTPS, clean exit on SIGTERM)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.fixtures.central import make_keys
from tests.fixtures.helpers import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
SAFEGW = [sys.executable, "-m", "gateway.cli"]

pytestmark = pytest.mark.timeout(60)


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from gateway.cli import main

    code = main(["central", "--check", "-c", str(path)])
    return code, capsys.readouterr().out


@pytest.mark.parametrize("name", ["central.yaml", "central-province.yaml", "central-workers.yaml"])
def test_examples_are_valid(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(ROOT / "config" / name, capsys)
    assert code == 0, out
    assert out.startswith("ok: central node")


def test_errors_name_file_line_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("node: {id: county}\nsources:\n  - id: gw-1\n    keys: a.yaml\n    mode: pull\n"
                 "    pul: {url: 'https://x'}\nstate: {backend: postgres}\n")
    code, out = check(f, capsys)
    assert code == 2
    assert f"{f}:6:5: sources[0].pul:" in out, out
    f.write_text("node: {id: county}\nsources:\n  - {id: gw-1, keys: a.yaml, mode: pull}\n"
                 "state: {backend: postgres}\n")
    code, out = check(f, capsys)
    assert code == 2
    assert f"{f}:3:5: sources[0].pull: mode pull needs pull:" in out, out
    assert "state.dsn: backend postgres needs dsn" in out, out
    code, out = check(tmp_path / "missing.yaml", capsys)
    assert code == 2


def test_daemon_serves_status_and_stops_on_sigterm(tmp_path: Path) -> None:
    pubs = tmp_path / "pub"
    pubs.mkdir()
    gpub = make_keys(tmp_path / "gw-1", "gw-1", pubs)
    port = free_port()
    f = tmp_path / "central.yaml"
    f.write_text(f"node: {{id: county, state_dir: '{tmp_path / 'county'}'}}\n"
                 f"listen: {{address: '127.0.0.1:{port}'}}\n"
                 f"sources: [{{id: gw-1, keys: '{gpub}', mode: push}}]\n")
    # an operator token, made by the CLI: printed once, stored as a hash in a 0600 file
    made = subprocess.run([*SAFEGW, "central", "-c", str(f), "tokens", "add", "ops-1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("sgw_")
    tokens_file = tmp_path / "county" / "tokens.json"
    assert tokens_file.stat().st_mode & 0o777 == 0o600
    assert token.split("_")[-1] not in tokens_file.read_text()
    listed = subprocess.run([*SAFEGW, "central", "tokens", "list", "--json", "-c", str(f)], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0 and '"ops-1"' in listed.stdout and token not in listed.stdout
    p = subprocess.Popen([*SAFEGW, "central", "-c", str(f)], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        cert = tmp_path / "county" / "tls.crt"
        url = f"https://127.0.0.1:{port}/status"

        def answer() -> httpx.Response | None:
            if not cert.exists():
                return None
            try:
                return httpx.get(url, verify=_ctx(cert), timeout=2)
            except httpx.HTTPError:
                return None

        r = wait_until(answer, 20, what="central's status page")
        assert isinstance(r, httpx.Response)
        # no token, a malformed header, a wrong token: 401 with a JSON error
        assert r.status_code == 401 and r.json()["error"] == "unauthorized", r.text
        assert "bearer token is required" in r.json()["detail"]
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = httpx.get(url, verify=_ctx(cert), timeout=5, headers={"Authorization": f"Basic {token}"})
        assert r.status_code == 401
        wrong = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        r = httpx.get(url, verify=_ctx(cert), timeout=5, headers={"Authorization": f"Bearer {wrong}"})
        assert r.status_code == 401
        assert r.json() == {"error": "unauthorized", "detail": "invalid or revoked token"}
        r = httpx.get(url, verify=_ctx(cert), timeout=5, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["node"] == "county"
        assert doc["sources"]["gw-1"]["mode"] == "push"
        # keys were made on first start, private file 0600
        key_file = tmp_path / "county" / "keys" / "node.json"
        assert key_file.stat().st_mode & 0o077 == 0
        # the sync API refuses unsigned requests (its own auth; a status token is no use there)
        r = httpx.get(f"https://127.0.0.1:{port}/sync/v1/envelopes", verify=_ctx(cert), timeout=2,
                      headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401
        # revoked: refused at once
        rv = subprocess.run([*SAFEGW, "central", "-c", str(f), "tokens", "revoke", "ops-1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
        assert rv.returncode == 0, rv.stderr
        r = httpx.get(url, verify=_ctx(cert), timeout=5, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0
        out, err = p.communicate(timeout=10)
        assert token not in out + err and token.split("_")[-1] not in out + err, "a token reached the log"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _ctx(cert: Path):  # type: ignore[no-untyped-def]
    from uplink.auth import client_context

    return client_context(cert)


def test_run_refuses_a_bad_config_with_file_line_col(tmp_path: Path) -> None:
    """Not only --check: starting the daemon with a bad field fails at once (exit 2), the
    error on stderr names FILE:LINE:COL and the key, and nothing is started."""
    f = tmp_path / "central.yaml"
    f.write_text(f"node: {{id: county, state_dir: '{tmp_path / 'county'}'}}\n"
                 "listen:\n  address: 127.0.0.1:0\n  clock_window: soon\n  token_file: x\n")
    p = subprocess.run([*SAFEGW, "central", "-c", str(f)], cwd=ROOT, capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 2
    assert f"{f}:4:17: listen.clock_window:" in p.stderr, p.stderr
    assert f"{f}:5:3: listen.token_file:" in p.stderr, p.stderr
    assert not (tmp_path / "county").exists()
