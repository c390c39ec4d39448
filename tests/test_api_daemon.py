"""The API as a service of the real daemon: start/stop, binding, TLS; plus the Daemon
helper the other API tests use (a real ``Gateway(cfg).run()`` in a thread of its own,
polling the plant simulators, with its admin API on an ephemeral loopback port)."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import Gateway
from gateway.config import loads
from gateway.core.tokens import UserStore
from tests.helpers import free_port, wait_until

#: a small plant for the API tests: gas, temperature and level over Modbus TCP
SIM_PLANT = """
seed: 7
tick: 100ms
signals:
  GT-1: {base: 12.0}
  GT-2: {base: 3.0}
  TT-1: {base: 21.5}
  LT-1: {base: 6.5}
devices:
  - name: plc
    protocol: modbus-tcp
    port: 0
    units:
      - unit: 1
        points:
          - {signal: GT-1, address: input:0, type: int16, scale: 0.1}
          - {signal: GT-2, address: input:1, type: int16, scale: 0.1}
          - {signal: TT-1, address: holding:10, type: float32}
          - {signal: LT-1, address: holding:20, type: float32}
"""


def gateway_yaml(host: str, port: int, state_dir: Path, *, api_port: int = 0, extra: str = "",
                 api_opts: str = "") -> str:
    return f"""
gateway: {{id: gw-api, site: "91370100MA3C000000", state_dir: "{state_dir}"}}
devices:
  - name: plc
    protocol: modbus-tcp
    host: {host}
    port: {port}
    poll: 200ms
    timeout: 200ms
    retries: 0
    channels:
      - {{name: GT-1, kind: gas, unit: "%LEL", address: input:0, type: int16, scale: 0.1,
          hazard_source: HS-01, alarms: {{h: 25, hh: 50}}}}
      - {{name: GT-2, kind: gas, unit: "%LEL", address: input:1, type: int16, scale: 0.1,
          alarms: {{h: 25, hh: 50}}}}
      - {{name: TT-1, kind: temperature, unit: "°C", address: holding:10, type: float32}}
      - {{name: LT-1, kind: level, unit: m, address: holding:20, type: float32}}
  - name: dead-plc
    protocol: modbus-tcp
    host: 127.0.0.1
    port: {free_port()}
    poll: 1s
    timeout: 200ms
    retries: 0
    channels:
      - {{name: PT-9, kind: pressure, unit: MPa, address: holding:0, type: float32}}
api: {{listen: "127.0.0.1:{api_port}"{api_opts}}}
{extra}
"""


class Daemon:
    """A real gateway in a thread with its own event loop (so tests stay synchronous)."""

    def __init__(self, yaml_text: str, *, clock: Callable[[], int] | None = None):
        self.cfg = loads(yaml_text)
        self.clock = clock
        self.gw: Gateway | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="daemon", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            kw = {"clock": self.clock} if self.clock else {}
            self.gw = Gateway(self.cfg, **kw)
            await self.gw.run(drain_s=2.0, on_ready=self._ready.set)

        try:
            asyncio.run(main())
        except BaseException as e:
            self._error = e
            self._ready.set()

    def start(self) -> Daemon:
        self._thread.start()
        if not self._ready.wait(30):
            raise AssertionError("gateway did not become ready in 30 s")
        if self._error is not None:
            raise self._error
        return self

    @property
    def api(self) -> Any:
        assert self.gw is not None
        return next(s for s in self.gw.services if s.name == "api")

    @property
    def url(self) -> str:
        return str(self.api.url)

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.gw is not None and self.loop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.gw.stop)
        self._thread.join(30)
        assert not self._thread.is_alive(), "gateway did not stop within 30 s"

    def events(self, etype: str) -> list[dict[str, Any]]:
        """Every journal event of a type (the durable record the uplink carries)."""
        assert self.gw is not None
        self.run(self.gw.flush())
        from gateway.core.record import EVENT

        out = []
        after = 0
        while True:
            recs = self.gw.journal.read_sync(after, 1000, kinds=(EVENT,))
            if not recs:
                return out
            for r in recs:
                ev = r.event()
                if ev.get("type") == etype:
                    out.append(ev)
            after = recs[-1].seq


def make_tokens(state_dir: Path) -> dict[str, str]:
    store = UserStore(state_dir / "users.json")
    return {role: store.add(f"{role}-user", role) for role in ("viewer", "operator", "admin")}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- tests


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


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One simulator plant and one daemon with tokens for every role, shared by a module."""
    from tests.fixtures.sims import SimProcess

    tmp = tmp_path_factory.mktemp("plant")
    cfg = tmp / "sim.yaml"
    cfg.write_text(SIM_PLANT)
    sim = SimProcess(cfg)
    state = tmp / "state"
    state.mkdir()
    tokens = make_tokens(state)
    host, port = sim.tcp("plc")
    # the RBAC and fuzz tests send bad tokens to every endpoint from one address on purpose
    d = Daemon(gateway_yaml(host, port, state, api_opts=", max_failures: 100000")).start()

    class Plant:
        pass

    p = Plant()
    p.sim, p.daemon, p.tokens, p.url, p.state = sim, d, tokens, d.url, state  # type: ignore[attr-defined]
    p.http = httpx.Client(base_url=d.url, timeout=10)  # type: ignore[attr-defined]
    try:
        yield p
    finally:
        p.http.close()  # type: ignore[attr-defined]
        d.stop()
        sim.stop()
