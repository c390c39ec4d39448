"""Configuration from central, end to end: Modbus simulators → the real gateway daemon
(``safegw run``, a subprocess) ⇄ a real central node over HTTPS, configs issued by
``safegw central config push`` (a subprocess) and by ``POST /configs``.

What is checked: the gateway refuses every config it must (another key, another
gateway, an older version, a changed text, and all of them while it is set to refuse),
applies nothing then, and reports each refusal with its reason through the journal to
central, whose status shows the version and the last result; a push gateway fetches
what central's answer offers; a good config is applied live and kept on disk, and one
whose device cannot be polled is rolled back after the grace time, the device polled again.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from central.config import load as load_central
from gateway.core import gmcrypto
from tests.fixtures.central import CentralSide, central_pub, events_of, make_keys, stored
from tests.fixtures.helpers import async_wait_until, free_port
from tests.fixtures.sims import SimProcess, gateway_yaml
from uplink import configdoc, keys
from uplink.sync import Peer, Signer

pytestmark = [pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
GW = "gw-test"
SUITES = ["x25519-ed25519", pytest.param("gm", marks=pytest.mark.skipif(
    not gmcrypto.sm2_available(), reason="gmssl-pyx not installed"))]


class Plant:
    """One gateway daemon (subprocess) and one central node (in this process)."""

    def __init__(self, root: Path, sim: SimProcess, *, mode: str, suite: str, remote: str,
                 grace: str = "3s"):
        self.root = root
        self.sim = sim
        self.pubs = root / "pubs"
        self.pubs.mkdir(exist_ok=True)
        self.gw_state = root / "gw"
        self.gw_pub = make_keys(self.gw_state, GW, self.pubs)
        self.central_pub = central_pub(root, "central-1", self.pubs)
        self.central_keys = keys.load(root / "central-1")
        self.port = free_port()
        self.mode, self.suite, self.remote, self.grace = mode, suite, remote, grace
        self.gw_file = root / "gateway.yaml"
        self.central_file = root / "central.yaml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.central: CentralSide | None = None
        self.log = root / "gateway.log"

    def gateway_text(self, central_url: str = "", **changes: str) -> str:
        text = gateway_yaml(self.sim, self.gw_state, poll="200ms")
        for old, new in changes.items():
            text = text.replace(old, new)
        up = {"mode": self.mode, "central_keys": [str(self.central_pub)], "suite": self.suite,
              "remote_config": self.remote, "remote_config_grace": self.grace, "retry_max": "1s"}
        if self.mode == "pull":
            up["listen"] = f"127.0.0.1:{self.port}"
        else:
            up.update(central_url=central_url, ca=str(self.root / "central-1" / "tls.crt"))
        return text + "uplink: " + json.dumps(up) + "\n"

    def write_central(self) -> None:
        src: dict[str, Any] = {"id": GW, "keys": str(self.gw_pub), "mode": self.mode, "suite": self.suite}
        if self.mode == "pull":
            src["pull"] = {"url": f"https://127.0.0.1:{self.port}", "wait": "1s", "retry_max": "1s",
                           "tls_cert": str(self.gw_state / "tls.crt")}
        doc = {"node": {"id": "central-1", "state_dir": str(self.root / "central-1")},
               "listen": {"address": "127.0.0.1:0"}, "sources": [src]}
        self.central_file.write_text(json.dumps(doc))

    async def start(self) -> Plant:
        self.write_central()
        if self.mode == "pull":
            self.gw_file.write_text(self.gateway_text())
            self._start_gateway()
            await async_wait_until(lambda: (self.gw_state / "tls.crt").exists() and self._listening(),
                                   timeout=60, what="the gateway's sync listener")
            self.central = await CentralSide(load_central(self.central_file)).start()
        else:
            self.central = await CentralSide(load_central(self.central_file)).start()
            self.gw_file.write_text(self.gateway_text(self.central.url))
            self._start_gateway()
        return self

    def _listening(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def _start_gateway(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "-c", str(self.gw_file)],
                cwd=ROOT, env=ENV, stdout=log, stderr=log)

    async def stop(self) -> None:
        if self.central is not None:
            await self.central.stop()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.proc.wait, 60)

    # -- central's side
    def status(self) -> dict[str, Any]:
        assert self.central is not None
        d: dict[str, Any] = self.central.node.status_doc()["configs"].get(GW) or {}
        return d

    def reports(self) -> list[dict[str, Any]]:
        assert self.central is not None
        return [e for e in events_of(stored(self.central.node, GW)) if e.get("type") == "remote_config"]

    async def reported(self, what: str, **match: Any) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for e in self.reports():
                if all(str(v) in str(e.get(k)) for k, v in match.items()):
                    return e
            return None

        ev: dict[str, Any] = await async_wait_until(find, timeout=60, interval=0.1, what=what)  # type: ignore
        return ev

    async def push_cli(self, text: str) -> str:
        f = self.root / "new.yaml"
        f.write_text(text)
        r = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "gateway.cli", "central", "-c", str(self.central_file), "config", "push",
            "--gateway", GW, str(f)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    async def post_to_gateway(self, doc: bytes) -> dict[str, Any]:
        """What a central node's delivery does, by hand: a signed POST to the gateway."""
        signer = Signer(self.central_keys.ed25519, self.central_keys.kid)
        peer = Peer(f"https://127.0.0.1:{self.port}", signer, recipient=GW, ca=self.gw_state / "tls.crt")
        try:
            r = await peer.request("POST", "/sync/v1/config", None, doc)
            return dict(r.json())
        finally:
            await peer.close()

    def sign(self, text: str, version: int, *, gateway: str = GW,
             signer: keys.NodeKeys | None = None) -> bytes:
        alg = "sm2-sm3" if self.suite == "gm" else "ed25519"
        return configdoc.sign(text, gateway=gateway, version=version, issued_ns=1, alg=alg,
                              signer=signer or self.central_keys)


@pytest.fixture
def plant_sim(tmp_path: Path) -> Iterator[SimProcess]:
    from tests.fixtures.sims import MODBUS_PLANT

    d = tmp_path / "sim"
    d.mkdir()
    cfg = d / "sim.yaml"
    cfg.write_text(MODBUS_PLANT.replace("{tmp}", str(d)))
    sim = SimProcess(cfg)
    yield sim
    sim.stop()


def _declared_too_large(port: int, cert: Path) -> int | None:
    import socket
    import ssl

    from tests.fixtures.rawhttp import read_status

    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(b"POST /configs?gateway=gw-test HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n"
                     b"Content-Length: %d\r\n\r\n" % (configdoc.MAX_TEXT + 1))
        return read_status(sock)[0]


def _unchanged(p: Plant, before: bytes) -> None:
    assert p.gw_file.read_bytes() == before, "the config file changed"
    assert not p.gw_file.with_name(p.gw_file.name + ".prev").exists()


@pytest.mark.parametrize("suite", SUITES)
async def test_pull_gateway_refuses_what_it_must_and_central_shows_why(
        tmp_path: Path, plant_sim: SimProcess, suite: str) -> None:
    p = await Plant(tmp_path, plant_sim, mode="pull", suite=suite, remote="refuse").start()
    try:
        before = p.gw_file.read_bytes()
        good = p.gateway_text().replace("poll: 200ms", "poll: 300ms")
        # the default: every authentic config refused, and reported to central
        out = await p.push_cli(good)
        assert "config v1 for gw-test issued" in out
        ev = await p.reported("v1 refused by the gateway's setting", version=1, result="refused")
        assert "uplink.remote_config: refuse" in ev["reason"] and ev["sha256"] == configdoc.sha256_text(good)
        await async_wait_until(lambda: (p.status().get("last_result") or {}).get("version") == 1, timeout=30,
                               what="central's status to show v1's result")
        st = p.status()
        assert st["issued"]["version"] == 1 and st["delivered"]["version"] == 1
        assert st["issued"]["alg"] == ("sm2-sm3" if suite == "gm" else "ed25519")
        assert st["last_result"]["result"] == "refused" and "refuse" in st["last_result"]["reason"]
        await p.push_cli(good)
        await p.reported("v2 refused", version=2, result="refused")

        # an older version again (authentic): a replay
        answer = await p.post_to_gateway(p.sign(good, 1))
        assert answer["status"] == "refused" and "replay" in answer["reason"]
        await p.reported("the replay reported", version=1, reason="replay")
        # the newest one again: a duplicate, answered without a new report
        n = len(p.reports())
        assert (await p.post_to_gateway(p.sign(good, 2)))["status"] in ("duplicate", "refused")

        # signed by a key this gateway does not trust (same node name, another key)
        rogue = keys.NodeKeys.generate("central-1", sm2=suite == "gm")
        answer = await p.post_to_gateway(p.sign(good, 10, signer=rogue))
        assert answer["status"] == "refused" and answer["reason"].startswith("unknown_key")
        await p.reported("the forged config reported", version=10, reason="unknown_key")
        # for another gateway
        answer = await p.post_to_gateway(p.sign(good.replace("gw-test", "gw-other"), 11, gateway="gw-other"))
        assert answer["reason"].startswith("wrong_gateway")
        await p.reported("the other gateway's config reported", version=11, reason="wrong_gateway")
        # the text changed after signing
        doc = json.loads(p.sign(good, 12))
        body = base64.b64decode(doc["body"]).replace(b"poll: 300ms", b"poll: 100ms")
        doc["body"] = base64.b64encode(body).decode()
        answer = await p.post_to_gateway(json.dumps(doc).encode())
        assert answer["reason"].startswith("bad_signature")
        await p.reported("the altered config reported", version=12, reason="bad_signature")
        assert len(p.reports()) >= n + 3
        _unchanged(p, before)
        state = json.loads((p.gw_state / "remote-config.json").read_text())
        assert state["handled"] == 2 and state["applied"] == 0  # the refused ones moved nothing
        assert (p.gw_state / "remote-config.json").stat().st_mode & 0o777 == 0o600
    finally:
        await p.stop()


async def test_push_gateway_fetches_what_central_offers_and_the_api_guards_uploads(
        tmp_path: Path, plant_sim: SimProcess) -> None:
    p = await Plant(tmp_path, plant_sim, mode="push", suite="x25519-ed25519", remote="refuse").start()
    try:
        from gateway.core.tokens import UserStore

        assert p.central is not None
        store = UserStore(Path(p.central.cfg.node.state_dir) / "tokens.json")
        admin, viewer = store.add("ops", "admin", by="test"), store.add("look", "viewer", by="test")
        await async_wait_until(lambda: p.central is not None
                               and p.central.node.status[GW].positions["main"] > 0,
                               timeout=60, what="the gateway's first push")
        before = p.gw_file.read_bytes()
        good = p.gateway_text(p.central.url).replace("poll: 200ms", "poll: 300ms")
        url = f"{p.central.url}/configs"
        import ssl

        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(p.central.cert))) as http:
            def auth(t: str) -> dict[str, str]:
                return {"authorization": f"Bearer {t}"}

            r = await http.post(url, params={"gateway": GW}, content=good.encode(), headers=auth(viewer))
            assert r.status_code == 403
            r = await http.post(url, params={"gateway": GW}, content=good.encode())
            assert r.status_code == 401
            # a body declared larger than a config may be is refused before the token is looked at
            assert await asyncio.to_thread(_declared_too_large, p.central.node.port, p.central.cert) == 413
            r = await http.post(url, params={"gateway": GW}, content=good.replace("gw-test", "gw-9").encode(),
                                headers=auth(admin))
            assert r.status_code == 400 and "gw-9" in r.json()["error"]
            r = await http.post(url, params={"gateway": GW}, content=b"gateway: [unclosed",
                                headers=auth(admin))
            assert r.status_code == 400 and "<upload>:2:1: (syntax)" in r.json()["error"]
            r = await http.post(url, params={"gateway": GW}, content=good.encode(), headers=auth(admin))
            assert r.status_code == 200 and r.json()["version"] == 1
            ev = await p.reported("the push gateway's refusal", version=1, result="refused")
            assert "remote_config: refuse" in ev["reason"]
            await async_wait_until(lambda: (p.status().get("last_result") or {}).get("version") == 1,
                                   timeout=30, what="central's status")
            assert p.status()["delivered"]["answer"] == {"fetched": True}
            r = await http.get(url, headers=auth(viewer))
            assert r.status_code == 200 and r.json()[GW]["last_result"]["result"] == "refused"
        # fetched once: later push answers offer v1 again, and it is not fetched or reported again
        n = len(p.reports())
        pos = p.central.node.status[GW].positions["main"]
        await async_wait_until(lambda: p.central is not None
                               and p.central.node.status[GW].positions["main"] > pos + 3,
                               timeout=60, what="more pushes")
        assert len(p.reports()) == n
        _unchanged(p, before)
    finally:
        await p.stop()


def _device(p: Plant, name: str) -> dict[str, Any]:
    from gateway.ops.status import ask

    d: dict[str, Any] = next(d for d in ask(p.gw_state / "status.sock")["devices"] if d["name"] == name)
    return d


async def test_a_good_config_is_applied_and_a_bad_one_rolled_back(
        tmp_path: Path, plant_sim: SimProcess) -> None:
    p = await Plant(tmp_path, plant_sim, mode="pull", suite="x25519-ed25519", remote="apply",
                    grace="3s").start()
    try:
        before = p.gw_file.read_text()
        await async_wait_until(lambda: _device(p, "tcp-dev")["last_ok_age_s"] is not None, timeout=30,
                               what="tcp-dev polled good")
        good = p.gateway_text().replace("poll: 200ms", "poll: 300ms")
        await p.push_cli(good)
        ev = await p.reported("v1 applied", version=1, result="applied")
        assert ev["sha256"] == configdoc.sha256_text(good)
        assert p.gw_file.read_text() == good
        prev = p.gw_file.with_name(p.gw_file.name + ".prev")
        assert prev.read_text() == before
        assert p.gw_file.stat().st_mode & 0o777 == 0o600 and prev.stat().st_mode & 0o777 == 0o600
        await async_wait_until(lambda: (p.status().get("last_result") or {}).get("result") == "applied",
                               timeout=30, what="central's status: v1 applied")
        # the TCP device moved to a port where nothing answers: it cannot be polled
        _host, port = p.sim.tcp("tcp-dev")
        bad = good.replace(f"port: {port}", f"port: {free_port()}")
        assert bad != good
        await p.push_cli(bad)
        ev = await p.reported("v2 rolled back", version=2, result="rolled_back")
        assert "tcp-dev" in ev["reason"] and "grace time of 3 s" in ev["reason"], ev
        assert "rtu-bus" not in ev["reason"]
        assert p.gw_file.read_text() == good  # v1 stays on disk
        # the rollback made the device anew: it is polled good again at its old port
        await async_wait_until(lambda: (d := _device(p, "tcp-dev"))["state"] == "ok"
                               and d["last_ok_age_s"] is not None, timeout=30, what="tcp-dev polled again")
        await async_wait_until(lambda: (p.status().get("last_result") or {}).get("result") == "rolled_back",
                               timeout=30, what="central's status: v2 rolled back")
        st = p.status()
        assert st["issued"]["version"] == 2 and st["last_result"]["version"] == 2
        assert "tcp-dev" in st["last_result"]["reason"]
    finally:
        await p.stop()


def test_config_push_refuses_bad_files_with_where_and_why(tmp_path: Path) -> None:
    """``safegw central config push`` (a subprocess): what it refuses, exit 2, nothing issued."""
    pubs = tmp_path / "pubs"
    pubs.mkdir()
    gw_pub = make_keys(tmp_path / "gw", GW, pubs)
    central_pub(tmp_path, "central-1", pubs)
    cfile = tmp_path / "central.yaml"
    cfile.write_text(json.dumps({"node": {"id": "central-1", "state_dir": str(tmp_path / "central-1")},
                                 "sources": [{"id": GW, "keys": str(gw_pub), "mode": "push"}]}))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "gateway.cli", "central", "-c", str(cfile), "config", *args]
        return subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)

    def push(gateway: str, text: str | None, *, size: int = 0) -> subprocess.CompletedProcess[str]:
        f = tmp_path / "c.yaml"
        if text is not None:
            f.write_text(text)
        else:
            with open(f, "wb") as fh:
                fh.truncate(size)
        return cli("push", "--gateway", gateway, str(f))

    good = 'gateway: {id: gw-test, site: "S"}\n'
    cases = [
        (push("gw-nope", good), "'gw-nope' is not among this node's sources (gw-test)"),
        (push(GW, 'gateway: {id: gw-9, site: "S"}\n'), "gateway.id is 'gw-9', but the config is issued to"),
        (push(GW, "gateway: {id: [\n"), "c.yaml:2:1: (syntax)"),
        (push(GW, "- a\n- b\n"), "c.yaml:1:1: a gateway config is a mapping with a 'gateway:' section"),
        (push(GW, None, size=configdoc.MAX_TEXT + 1), f"is more than {configdoc.MAX_TEXT} for a config"),
    ]
    for r, words in cases:
        assert r.returncode == 2 and words in r.stderr, (words, r.stderr)
    listed = cli("list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == {}
    r = push(GW, good)
    assert r.returncode == 0 and "config v1 for gw-test issued" in r.stdout
    r = push(GW, good)
    assert "config v2 for gw-test issued" in r.stdout
    db = tmp_path / "central-1" / "configs.db"
    assert db.stat().st_mode & 0o777 == 0o600
    listed = cli("list")
    assert listed.returncode == 0
    row = next(line for line in listed.stdout.splitlines() if line.startswith(GW))
    assert row.split()[:3] == [GW, "2", "-"]
