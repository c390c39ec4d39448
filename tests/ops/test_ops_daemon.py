"""Operations against the real daemon in a subprocess (``safegw run``) polling the plant
simulator: ``/metrics`` over HTTP read by prometheus-client's own parser and by Debian's
``promtool check metrics`` (neither written here), ``safegw status`` over the daemon's Unix
socket, its bounds and its answer when the daemon is gone, and the journald line format
when the daemon's stderr is the stream named by JOURNAL_STREAM (systemd.exec(5))."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.daemon import SIM_PLANT, auth, gateway_yaml, make_tokens
from tests.fixtures.helpers import free_port, wait_until
from tests.fixtures.sims import SimProcess

ROOT = Path(__file__).resolve().parents[2]

#: every name the hand-written exposition had (gateway/admin/metrics.py before prometheus-client),
#: for this daemon's config (no uplink, notify or regulators section)
OLD_NAMES = {
    "safegw_up", "safegw_uptime_seconds", "safegw_channels", "safegw_device_polls_total",
    "safegw_device_errors_total", "safegw_device_overruns_total", "safegw_device_samples_total",
    "safegw_device_up", "safegw_device_last_poll_seconds", "safegw_channels_by_quality",
    "safegw_ingested_batches_total", "safegw_ingest_errors_total", "safegw_journal_last_seq",
    "safegw_journal_depth_records", "safegw_journal_payload_bytes", "safegw_journal_file_bytes",
    "safegw_journal_quota_bytes", "safegw_journal_dropped_records_total", "safegw_consumer_lag_records",
    "safegw_alarms_active", "safegw_api_requests_total", "safegw_reminders_total",
}


def safegw(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


class Running:
    proc: subprocess.Popen[bytes]
    cfg: Path
    state: Path
    log: Path
    url: str
    tokens: dict[str, str]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("ops")
    (tmp / "sim.yaml").write_text(SIM_PLANT)
    sim = SimProcess(tmp / "sim.yaml")
    state = tmp / "state"
    state.mkdir()
    r = Running()
    r.tokens = make_tokens(state)
    host, port = sim.tcp("plc")
    api_port = free_port()
    r.cfg, r.state, r.log, r.url = tmp / "gw.yaml", state, tmp / "stderr.log", f"http://127.0.0.1:{api_port}"
    r.cfg.write_text(gateway_yaml(host, port, state, api_port=api_port))
    err = open(r.log, "wb")
    st = os.fstat(err.fileno())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    env.pop("NOTIFY_SOCKET", None)
    r.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(r.cfg), "--drain", "2"],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        def up() -> bool:
            assert r.proc.poll() is None, r.log_text()
            try:
                return httpx.get(r.url + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 30, what="the daemon's API")
        wait_until(lambda: (state / "status.sock").exists(), 10, what="the status socket")
        yield r
    finally:
        if r.proc.poll() is None:
            r.proc.send_signal(signal.SIGTERM)
            try:
                r.proc.wait(20)
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait()
        err.close()
        sim.stop()


def _metrics(r: Running) -> str:
    resp = httpx.get(r.url + "/metrics", headers=auth(r.tokens["viewer"]), timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return resp.text


def test_metrics_parse_with_the_client_library_and_keep_every_name(daemon: Running) -> None:
    # wait until the plant was polled and the dead device failed at least once
    def polled() -> bool:
        t = _metrics(daemon)
        return 'safegw_device_polls_total{device="plc"}' in t and \
            'safegw_device_errors_total{device="dead-plc"} 0.0' not in t

    wait_until(polled, 20, what="a poll of plc and a failure of dead-plc")
    text = _metrics(daemon)
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    # the parser names a counter's family without _total; the samples keep it
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    names = {s[0] for s in samples}
    assert OLD_NAMES <= names, f"names lost: {sorted(OLD_NAMES - names)}"
    assert fams["safegw_device_polls"].type == "counter" and fams["safegw_device_up"].type == "gauge"
    assert samples[("safegw_device_polls_total", (("device", "plc"),))] > 0
    assert samples[("safegw_device_errors_total", (("device", "dead-plc"),))] >= 1
    assert samples[("safegw_device_up", (("device", "dead-plc"), ("protocol", "modbus-tcp")))] == 0
    assert samples[("safegw_device_up", (("device", "plc"), ("protocol", "modbus-tcp")))] == 1
    assert samples[("safegw_up", ())] == 1
    # one HELP and one TYPE per family, as the format requires
    assert text.count("# TYPE safegw_device_polls_total counter") == 1


@pytest.mark.skipif(shutil.which("promtool") is None, reason="no promtool (Debian's prometheus package)")
def test_metrics_pass_promtool_check(daemon: Running) -> None:
    text = _metrics(daemon)
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                       timeout=60)
    # promtool exits 1 on lint problems and on format errors alike; it prints either
    assert r.returncode == 0, r.stdout + r.stderr
    # and it does fail on a broken exposition (so the check above can fail)
    bad = subprocess.run(["promtool", "check", "metrics"], input="# TYPE x counter\nx{a=\"1} 2\n",
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0


def test_status_over_the_socket(daemon: Running) -> None:
    sock = daemon.state / "status.sock"
    mode = stat.S_IMODE(sock.stat().st_mode)
    assert stat.S_ISSOCK(sock.stat().st_mode) and mode == 0o660, oct(mode)
    wait_until(lambda: json.loads(safegw("status", "-c", str(daemon.cfg), "--json").stdout)
               ["devices"][0]["state"] == "ok", 20, what="plc ok in status")
    r = safegw("status", "-c", str(daemon.cfg), "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    devs = {d["name"]: d for d in st["devices"]}
    assert devs["plc"]["state"] == "ok" and devs["dead-plc"]["state"] == "failing"
    assert devs["dead-plc"]["last_error"]
    assert st["gateway"]["id"] == "gw-api" and st["gateway"]["pid"] == daemon.proc.pid
    assert st["config"]["sha256"] == st["config"]["file_sha256"]
    assert st["consumers"] and all(isinstance(c["lag"], int) for c in st["consumers"].values())
    assert st["disk"]["free_bytes"] > 0 and st["disk"]["journal_quota_bytes"] > 0
    assert st["journal"]["last_seq"] > 0 and st["journal"]["alive"] is True
    # no secrets: none of the tokens, no users file path
    for tok in daemon.tokens.values():
        assert tok not in r.stdout
    text = safegw("status", "-c", str(daemon.cfg))
    assert text.returncode == 0
    for needle in ("gw-api", "dead-plc", "failing", "CONSUMER", "alarms:", "disk:", "(same as the file)"):
        assert needle in text.stdout, (needle, text.stdout)


def test_status_says_when_the_file_on_disk_differs(daemon: Running, tmp_path: Path) -> None:
    changed = tmp_path / "gw.yaml"
    changed.write_text(daemon.cfg.read_text().replace("id: gw-api", "id: gw-api, name: renamed"))
    r = safegw("status", "-c", str(changed), "--state-dir", str(daemon.state))
    assert r.returncode == 0, r.stderr
    assert "THE FILE ON DISK DIFFERS" in r.stdout


def _raw(path: Path, payload: bytes, *, close_write: bool = False) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(15)
    try:
        s.connect(str(path))
        if payload:
            s.sendall(payload)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out
    finally:
        s.close()


def test_status_socket_bounds_its_request(daemon: Running) -> None:
    sock = daemon.state / "status.sock"
    too_long = _raw(sock, b"s" * 4096)  # no newline within 64 bytes
    assert b"at most 64 bytes" in too_long
    unknown = json.loads(_raw(sock, b"secrets\n"))
    assert "unknown request" in unknown["error"]
    half = _raw(sock, b"stat", close_write=True)  # the line never ends
    assert b"error" in half
    t0 = time.monotonic()
    silent = _raw(sock, b"")  # says nothing: the daemon hangs up after its request timeout
    assert b"error" in silent and time.monotonic() - t0 < 14
    # the daemon keeps polling and answering
    assert safegw("status", "-c", str(daemon.cfg)).returncode == 0
    assert daemon.proc.poll() is None


def test_journald_lines_when_stderr_is_the_journal_stream(daemon: Running) -> None:
    wait_until(lambda: "device dead-plc failed" in daemon.log_text(), 20, what="the dead device's log line")
    lines = daemon.log_text().splitlines()
    failed = next(ln for ln in lines if "device dead-plc failed" in ln)
    # <3> is syslog's err (RFC 5424 6.2.1), which journald takes as PRIORITY=3
    assert failed.startswith("<3>gateway.app: device dead-plc failed: ")
    assert failed.endswith(" device=dead-plc")
    running = next(ln for ln in lines if " running: " in ln)
    assert running.startswith("<6>gateway.app: safegw gw-api running")
    assert not any(ln[:4].count("-") == 1 and ln[:2] == "20" for ln in lines), "a timestamped line"


def test_status_when_the_daemon_is_not_running(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f'gateway: {{id: gw-off, site: "TEST", state_dir: "{state}"}}\n')
    r = safegw("status", "-c", str(cfg))
    assert r.returncode == 1 and "the daemon is not running: no status socket at" in r.stderr
    # a socket file left by a daemon that was killed: nothing listens
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(state / "status.sock"))
    s.close()
    r = safegw("status", "-c", str(cfg))
    assert r.returncode == 1 and "nothing listens" in r.stderr, r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway: {id: x}\nnope: 1\n")
    r = safegw("status", "-c", str(bad))
    assert r.returncode == 2 and f"{bad}:" in r.stderr


def test_status_socket_goes_with_the_daemon(tmp_path: Path) -> None:
    # a state dir whose socket path is longer than sun_path's 108 bytes (unix(7))
    state = tmp_path / ("long-" * 20) / "state"
    assert len(str(state / "status.sock")) > 108
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f'gateway: {{id: gw-life, site: "TEST", state_dir: "{state}"}}\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("JOURNAL_STREAM", None)
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(cfg), "--drain", "1"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: (state / "status.sock").exists() or proc.poll() is not None, 30,
                   what="the status socket")
        assert safegw("status", "-c", str(cfg)).returncode == 0
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert not (state / "status.sock").exists()
    # not under journald (no JOURNAL_STREAM): the plain timestamped format
    assert b"<6>" not in err and b"INFO    gateway.app" in err
    r = safegw("status", "-c", str(cfg))
    assert r.returncode == 1 and "not running" in r.stderr


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="no prometheus (Debian's prometheus package)")
def test_a_real_prometheus_scrapes_the_daemon(daemon: Running, tmp_path: Path) -> None:
    """Debian's Prometheus server scrapes /metrics with a viewer token, on a port of its own;
    its query API then has the daemon up and its counters, with the names queries use."""
    token = tmp_path / "token"
    token.write_text(daemon.tokens["viewer"])
    token.chmod(0o600)
    port = free_port()
    conf = tmp_path / "prometheus.yml"
    conf.write_text(f"""
global: {{scrape_interval: 1s, scrape_timeout: 900ms}}
scrape_configs:
  - job_name: safegw
    authorization: {{credentials_file: {token}}}
    static_configs: [{{targets: ["{daemon.url.removeprefix('http://')}"]}}]
""")
    proc = subprocess.Popen(["prometheus", f"--config.file={conf}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    api = f"http://127.0.0.1:{port}/api/v1/query"

    def query(q: str) -> list[dict[str, Any]]:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        try:
            r = httpx.get(api, params={"query": q}, timeout=5)
        except httpx.HTTPError:
            return []
        if r.status_code != 200:
            return []
        out: list[dict[str, Any]] = r.json()["data"]["result"]
        return out

    try:
        wait_until(lambda: [x for x in query('up{job="safegw"}') if x["value"][1] == "1"], 40,
                   interval=0.3, what="prometheus to scrape the daemon (up == 1)")
        polls = query('safegw_device_polls_total{device="plc"}')
        assert polls and float(polls[0]["value"][1]) > 0
        dead = query('safegw_device_up{device="dead-plc"}')
        assert dead and dead[0]["value"][1] == "0"
        # the scrape had no problems Prometheus counts (samples out of order, bad format)
        assert query("scrape_samples_scraped")[0]["value"][1] != "0"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
