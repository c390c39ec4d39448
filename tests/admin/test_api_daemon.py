"""The API as a service of the real daemon: start/stop, binding, TLS (the daemon and its
plant: tests/fixtures/daemon.py)."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.daemon import SIM_PLANT, Daemon, auth, gateway_yaml, make_tokens
from tests.fixtures.helpers import wait_until


def test_api_serves_inside_the_daemon_and_stops_with_it(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(SIM_PLANT)
    host, port = sim.tcp("plc")
    tokens = make_tokens(tmp_path)
    d = Daemon(gateway_yaml(host, port, tmp_path)).start()
    try:
        assert d.url.startswith("http://127.0.0.1:")
        r = httpx.get(d.url + "/health")
        assert r.status_code == 200 and r.json()["gateway"] == "gw-api"

        # live values from the simulator arrive through the daemon's poller
        def gt1() -> Any:
            c = httpx.get(d.url + "/channels/GT-1", headers=auth(tokens["viewer"])).json()
            return c if c["quality"] == "good" else None

        c = wait_until(gt1, 15, what="GT-1 good")
        assert abs(c["value"] - 12.0) < 0.11
        url = d.url
    finally:
        d.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health", timeout=2)


def test_bad_tokens_lock_out_their_address_but_not_signed_in_users(tmp_path: Path, sim_factory: Any,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    sim = sim_factory(SIM_PLANT)
    host, port = sim.tcp("plc")
    tokens = make_tokens(tmp_path)
    opts = ", max_failures: 3, failure_window: 1m, lockout: 1h"
    d = Daemon(gateway_yaml(host, port, tmp_path, api_opts=opts)).start()
    try:
        url = d.url
        # the operator signs in before the attack (its token is verified and cached)
        assert httpx.get(url + "/whoami", headers=auth(tokens["operator"])).status_code == 200
        wrong = tokens["viewer"][:-4] + "AAAA"
        codes = [httpx.get(url + "/whoami", headers=auth(wrong + str(i))).status_code for i in range(3)]
        assert codes == [401, 401, 401]
        # locked: new tokens are refused without being checked, even a valid one
        r = httpx.get(url + "/whoami", headers=auth(tokens["admin"]))
        assert r.status_code == 429, r.text
        assert 3500 <= int(r.headers["Retry-After"]) <= 3600
        assert "too many failed token checks" in r.json()["detail"]
        # the operator already signed in can still acknowledge alarms
        r = httpx.post(url + "/alarms/GT-1/ack", headers=auth(tokens["operator"]), json={})
        assert r.status_code == 200, r.text
        # no token at all is a plain 401, not counted as a guess
        assert httpx.get(url + "/whoami").status_code == 401
        assert any("failed token checks from 127.0.0.1" in m for m in caplog.messages)
        assert not any(tokens["admin"] in m or wrong in m for m in caplog.messages)
    finally:
        d.stop()


def test_failure_limiter_window_and_expiry() -> None:
    from gateway.core.tokens import FailureLimiter

    now = [0.0]
    lim = FailureLimiter(3, 60.0, 300.0, clock=lambda: now[0])
    assert not lim.fail("a") and not lim.fail("a")
    now[0] = 61.0  # the first two failures fall out of the window
    assert not lim.fail("a") and not lim.fail("a")
    assert lim.retry_after("a") == 0.0
    assert lim.fail("a")  # third within the window
    assert lim.retry_after("a") == 300.0 and lim.retry_after("b") == 0.0
    now[0] = 361.0
    assert lim.retry_after("a") == 0.0
    assert not FailureLimiter(0, 60.0, 300.0).fail("a")  # 0 disables


def test_api_listens_on_loopback_by_default() -> None:
    from gateway.core.config import ApiSection

    assert ApiSection().listen.startswith("127.0.0.1:")


def test_port_in_use_is_a_clear_start_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        d = Daemon(
            f'gateway: {{id: g, site: "S", state_dir: "{tmp_path}"}}\napi: {{listen: "127.0.0.1:{busy}"}}\n'
        )
        with pytest.raises(RuntimeError, match="cannot listen"):
            d.start()
        d.stop()


def test_tls_by_config(tmp_path: Path) -> None:
    key, cert = tmp_path / "api.key", tmp_path / "api.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    tokens = make_tokens(tmp_path)
    d = Daemon(
        f'gateway: {{id: g, site: "S", state_dir: "{tmp_path}"}}\n'
        f'api: {{listen: "127.0.0.1:0", tls_cert: "{cert}", tls_key: "{key}"}}\n'
    ).start()
    try:
        assert d.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(cert))
        r = httpx.get(d.url + "/status", headers=auth(tokens["viewer"]), verify=ctx)
        assert r.status_code == 200
        # plain HTTP to the TLS port gets nothing useful
        with pytest.raises(httpx.HTTPError):
            httpx.get(d.url.replace("https", "http") + "/health", timeout=3)
    finally:
        d.stop()


def test_half_tls_config_is_refused(tmp_path: Path) -> None:
    d = Daemon(
        f'gateway: {{id: g, site: "S", state_dir: "{tmp_path}"}}\n'
        f'api: {{listen: "127.0.0.1:0", tls_cert: "{tmp_path}/x.crt"}}\n'
    )
    with pytest.raises(RuntimeError, match="both tls_cert and tls_key"):
        d.start()
    d.stop()
