"""The modem wired into the notify service, end to end, as a site runs it.

The real daemon (``python -m gateway.cli run``, a process of its own) polls a Modbus plant
simulator and owns the AT port of the modem simulator (``python -m simulators``, one
process for both, the modem on a pty pair). A leak is driven on the plant; what the modem
received is read with tests/fixtures/tpdu.py, written from 3GPP TS 23.040 for the tests,
never with safegw's codec; replies are injected as the network would deliver them.
Everything the daemon says is read over its HTTP API (/status, /metrics, /alarms, /audit)
and, once it stopped, from its journal.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.core.record import EVENT
from gateway.store.journal import Journal
from simulators.robots import RobotReceiver
from tests.fixtures.daemon import SIM_PLANT, DaemonProcess, auth, gateway_yaml, make_tokens
from tests.fixtures.helpers import wait_until
from tests.fixtures.notify import secret
from tests.fixtures.sims import SimProcess
from tests.fixtures.tpdu import read_submit, reassemble

pytestmark = [pytest.mark.timeout(90)]
ROOT = Path(__file__).resolve().parents[2]

ZHANG = "+8613800138000"  # the operator on duty: may acknowledge by SMS
LI = "+8613800138001"  # the shift leader: told by a call at the end of the chain
STRANGER = "+8613900000000"  # knows the code, is nobody in the config

PLANT_AND_MODEM = SIM_PLANT + """
  - name: modem
    protocol: modem
    link: "{tmp}/ttyModem"
    pin: "1234"
    answer: ring
"""


def notify_yaml(tmp: Path, pin: Path) -> str:
    port = tmp / "ttyModem"
    common = f'port: "{port}", pin_file: "{pin}", timeout: 5s'
    return f"""
notify:
  plant: 一号罐区
  retry_after: 1s
  channels:
    - {{type: modem, name: sms, {common}}}
    - {{type: modem, name: call, mode: voice, ring: 1s, {common}}}
  recipients:
    - {{name: 张三, phone: "{ZHANG}", can_ack: true}}
    - {{name: 李四, phone: "{LI}"}}
  routes:
    - {{name: leak, match: {{channels: [GT-1]}}, to: [张三], via: [sms], escalation: up}}
    - {{name: leak2, match: {{channels: [GT-2]}}, escalation: last-call}}
  escalations:
    - name: up
      steps: [{{after: 30s, to: [李四], via: [sms]}}]
    - name: last-call
      steps:
        - {{after: 0s, to: [张三], via: [sms]}}
        - {{after: 1s, to: [李四], via: [call]}}
"""


def sms_to(sim: SimProcess, number: str) -> list[str]:
    """Every SMS the modem took for ``number``, put together from its parts (TS 23.040)."""
    got = sim.control(device="modem", received=True)["received"]
    parts = [read_submit(r["pdu"]) for r in got]
    mine = [p for p in parts if p.da.lstrip("+") == number.lstrip("+")]
    by_ref: dict[Any, list[Any]] = {}
    for p in mine:
        c = p.concat()
        by_ref.setdefault(c[0] if c else id(p), []).append(p)
    return [reassemble(ps) for ps in by_ref.values()]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Any]:
    cfg = tmp_path / "sim.yaml"
    cfg.write_text(PLANT_AND_MODEM.replace("{tmp}", str(tmp_path)))
    sim = SimProcess(cfg)
    state = tmp_path / "state"
    state.mkdir()
    tokens = make_tokens(state)
    pin = secret(tmp_path, "sim.pin", "1234")
    host, port = sim.tcp("plc")
    gw = tmp_path / "gw.yaml"
    gw.write_text(gateway_yaml(host, port, state, extra=notify_yaml(tmp_path, pin)))
    d = DaemonProcess(gw)

    class Site:
        pass

    s = Site()
    s.sim, s.daemon, s.state, s.tokens = sim, d, state, tokens  # type: ignore[attr-defined]
    s.get = lambda path, role="viewer": httpx.get(  # type: ignore[attr-defined]
        d.url + path, headers=auth(tokens[role]), timeout=10)
    try:
        yield s
    finally:
        d.stop()
        sim.stop()


def notify_stats(get: Callable[..., httpx.Response]) -> dict[str, Any]:
    r = get("/status")
    r.raise_for_status()
    st: dict[str, Any] = r.json()["services"]["notify"]
    return st


def journal_events(state: Path, etype: str) -> list[dict[str, Any]]:
    j = Journal(state / "journal.db")
    try:
        out, after = [], 0
        while recs := j.read_sync(after, 1000, kinds=(EVENT,)):
            out += [ev for r in recs if isinstance(ev := r.event(), dict) and ev.get("type") == etype]
            after = recs[-1].seq
        return out
    finally:
        j.close()


def test_a_leak_by_sms_acked_by_reply_a_call_at_the_end_modem_state_over_http(site: Any) -> None:
    sim, get = site.sim, site.get
    # /status and /metrics: the modem's SIM (PIN from the 0600 file), registration and signal
    wait_until(lambda: notify_stats(get)["channels"]["sms"]["state"] == "ready", timeout=20)
    ch = notify_stats(get)["channels"]["sms"]
    # +CSQ: 20 is -113 + 2 x 20 dBm (TS 27.007 8.5)
    assert (ch["sim"], ch["registration"], ch["signal_dbm"]) == ("ready", "home", -73)
    metrics = get("/metrics").text
    assert 'safegw_modem_signal_dbm{channel="sms"} -73' in metrics
    assert 'safegw_modem_registered{channel="sms"} 1' in metrics
    assert 'safegw_modem_ready{channel="call"} 1' in metrics
    # read with prometheus-client's own parser: label order and "1" against "1.0" are the
    # exposition's business
    info = {tuple(sorted(x.labels.items())): x.value for fam in text_string_to_metric_families(metrics)
            for x in fam.samples if x.name == "safegw_modem_info"}
    assert any(dict(k)["channel"] == "sms" and dict(k)["state"] == "ready" and dict(k)["sim"] == "ready"
               and dict(k)["registration"] == "home" and v == 1 for k, v in info.items()), metrics

    # GT-2's chain ends with a call to the shift leader through the voice channel
    sim.control(set="GT-2", value=45.0)
    wait_until(lambda: any(c["number"] == LI and c["hung_up"]
                           for c in sim.control(device="modem", received=True)["calls"]), timeout=20)
    call = next(c for c in sim.control(device="modem", received=True)["calls"] if c["number"] == LI)
    assert not call["answered"]  # the simulator rang (answer: ring); the gateway hung up after `ring`

    # a leak on GT-1: an SMS to the operator on duty, in Chinese, read by the independent decoder
    sim.control(set="GT-1", value=45.2)
    wait_until(lambda: any("GT-1" in t for t in sms_to(sim, ZHANG)), timeout=20)
    text = next(t for t in sms_to(sim, ZHANG) if "GT-1" in t)
    assert "一号罐区" in text, text  # the plant
    assert "45.2%LEL" in text, text  # value with unit
    assert "限25" in text, text  # the h limit
    m = re.search(r"回复([0-9A-Z]{4})确认", text)
    assert m, text
    code = m.group(1)
    wait_until(lambda: notify_stats(get)["escalating"] == 1, timeout=10)  # GT-1's chain waits for 30 s

    # the reply from a number nobody configured: refused, audited, nothing acknowledged
    sim.control(device="modem", inject={"from": STRANGER, "text": code})
    wait_until(lambda: notify_stats(get)["sms_refused"] == 1, timeout=15)
    st = notify_stats(get)
    assert (st["acks_by_sms"], st["escalating"]) == (0, 1)
    gt1 = get("/alarms?channel=GT-1&history=0").json()["active"]
    assert [a["state"] for a in gt1] == ["active_unacked"], gt1

    # the code from the operator's phone: acknowledged, escalation stopped, audited
    sim.control(device="modem", inject={"from": ZHANG, "text": f"收到 {code.lower()}"})
    wait_until(lambda: notify_stats(get)["acks_by_sms"] == 1, timeout=15)
    wait_until(lambda: notify_stats(get)["escalating"] == 0, timeout=10)
    wait_until(lambda: [a["state"] for a in get("/alarms?channel=GT-1&history=0").json()["active"]]
               == ["active_acked"], timeout=10)
    audit = get("/audit?path=/alarms/GT-1/ack", "admin").json()["items"]
    assert [(a["actor"], a["status"], a["detail"]["code"]) for a in audit if a["status"] == 200] == \
        [("张三", 200, code)]
    refused = get("/audit?path=/alarms/-/ack", "admin").json()["items"]
    assert [a["status"] for a in refused] == [403]
    assert STRANGER not in json.dumps(refused)  # phone numbers are masked in the audit

    # the delivery reports (TS 23.040 9.2.2.3, TP-ST 0: delivered) settle the SMS sent
    wait_until(lambda: notify_stats(get)["delivered"] >= 2, timeout=15)
    assert "safegw_notify_delivery_reports_total{result=\"delivered\"}" in get("/metrics").text

    assert site.daemon.stop() == 0
    notes = journal_events(site.state, "notify")
    sms_gt1 = [e for e in notes if e.get("code") == code and e["via"] == "sms"]
    assert [(e["kind"], e["recipient"], e["ok"]) for e in sms_gt1 if e["kind"] != "delivery"] == \
        [("alarm", "张三", True)]  # and no escalation to 李四: the ack stopped it
    delivered = [e for e in sms_gt1 if e["kind"] == "delivery"]
    assert [(e["of"], e["recipient"], e["delivered"]) for e in delivered] == [("alarm", "张三", True)]
    assert "TP-ST 0x00" in delivered[0]["detail"]
    voice = [e for e in notes if e["via"] == "call"]
    assert [(e["kind"], e["recipient"], e["ok"]) for e in voice] == [("escalation", "李四", True)]
    acks = [e for e in journal_events(site.state, "alarm")
            if e.get("transition") == "ack" and e.get("channel") == "GT-1"]
    assert [(a["who"], a["comment"]) for a in acks] == [("张三", f"SMS reply ({code})")]


def safegw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)


def test_notify_test_through_the_modem_simulator_sms_and_call(tmp_path: Path) -> None:
    cfg = tmp_path / "sim.yaml"
    cfg.write_text(PLANT_AND_MODEM.replace("{tmp}", str(tmp_path)))
    sim = SimProcess(cfg)
    try:
        state = tmp_path / "state"
        state.mkdir()
        host, port = sim.tcp("plc")
        gw = tmp_path / "gw.yaml"
        gw.write_text(gateway_yaml(host, port, state,
                                   extra=notify_yaml(tmp_path, secret(tmp_path, "sim.pin", "1234"))))
        r = safegw("notify", "test", "-c", str(gw), "张三")
        assert r.returncode == 0, r.stdout + r.stderr
        lines = r.stdout.splitlines()
        assert any(line.startswith("ok   张三: sms: 1 part, mr=") for line in lines), r.stdout
        assert any(line.startswith("ok   张三: call: rang 1 s, not answered") for line in lines), r.stdout
        texts = sms_to(sim, ZHANG)  # read back with the independent TS 23.040 reader
        assert len(texts) == 1 and "测试消息" in texts[0] and "一号罐区" in texts[0], texts
        calls = sim.control(device="modem", received=True)["calls"]
        assert [(c["number"], c["hung_up"]) for c in calls] == [(ZHANG, True)]

        # the modem unplugged: each channel says so, the exit status says it failed
        sim.control(fault="modem", kind="disconnect")
        wait_until(lambda: not (tmp_path / "ttyModem").exists(), timeout=10)
        r = safegw("notify", "test", "--modem-wait", "1", "-c", str(gw), "张三")
        assert r.returncode != 0, r.stdout
        assert "modem not ready" in r.stdout and "FAIL 张三: sms: modem port" in r.stdout, r.stdout
    finally:
        sim.stop()


def test_check_refuses_two_modem_channels_on_one_port_with_different_settings(tmp_path: Path) -> None:
    pin = secret(tmp_path, "sim.pin", "1234")
    notify = notify_yaml(tmp_path, pin).replace(
        "{type: modem, name: call, mode: voice, ring: 1s, port:",
        "{type: modem, name: call, mode: voice, ring: 1s, baud: 9600, port:")
    gw = tmp_path / "gw.yaml"
    gw.write_text(gateway_yaml("127.0.0.1", 1502, tmp_path / "state", extra=notify))
    r = safegw("check", "-c", str(gw))
    assert r.returncode == 2, r.stdout + r.stderr
    line = next(i for i, t in enumerate(gw.read_text().splitlines(), 1) if "name: call" in t)
    errs = [e for e in r.stdout.splitlines() if "baud differs" in e]
    assert len(errs) == 1 and errs[0].startswith(f"{gw}:{line}:"), r.stdout
    assert "notify.channels[0]" in errs[0] and "same port" in errs[0], errs

    # the same settings (ring and mode are each channel's own): accepted
    gw.write_text(gateway_yaml("127.0.0.1", 1502, tmp_path / "state", extra=notify_yaml(tmp_path, pin)))
    r = safegw("check", "-c", str(gw))
    assert "differs" not in r.stdout, r.stdout


def test_modem_unplugged_during_an_escalation_failed_attempts_retried_the_webhook_delivers(
        tmp_path: Path) -> None:
    hook = RobotReceiver("webhook").start()
    cfg = tmp_path / "sim.yaml"
    cfg.write_text(PLANT_AND_MODEM.replace("{tmp}", str(tmp_path)))
    sim = SimProcess(cfg)
    d: DaemonProcess | None = None
    try:
        state = tmp_path / "state"
        state.mkdir()
        tokens = make_tokens(state)
        pin = secret(tmp_path, "sim.pin", "1234")
        notify = f"""
notify:
  plant: 一号罐区
  retry_after: 1s
  retries: 20
  channels:
    - {{type: modem, name: sms, port: "{tmp_path / 'ttyModem'}", pin_file: "{pin}", timeout: 5s}}
    - {{type: webhook, name: hook, url: "{hook.url}", ca_file: "{hook.ca}"}}
  recipients:
    - {{name: 张三, phone: "{ZHANG}", can_ack: true}}
    - {{name: 李四, phone: "{LI}"}}
  routes:
    - {{name: leak, match: {{channels: [GT-1]}}, to: [张三], via: [hook], escalation: up}}
  escalations:
    - name: up
      steps: [{{after: 1s, to: [李四], via: [sms, hook]}}]
"""
        host, port = sim.tcp("plc")
        gw = tmp_path / "gw.yaml"
        gw.write_text(gateway_yaml(host, port, state, extra=notify))
        d = DaemonProcess(gw)

        def get(path: str) -> httpx.Response:
            assert d is not None
            return httpx.get(d.url + path, headers=auth(tokens["viewer"]), timeout=10)

        wait_until(lambda: notify_stats(get)["channels"]["sms"]["state"] == "ready", timeout=20)
        sim.control(fault="modem", kind="disconnect")  # the USB modem pulled out
        wait_until(lambda: notify_stats(get)["channels"]["sms"]["state"] == "no_port", timeout=20)

        sim.control(set="GT-1", value=45.2)
        # the escalation step reaches 李四 by the webhook although the modem is gone ...
        wait_until(lambda: any(m["doc"].get("recipient") == "李四" for m in hook.messages), timeout=20)
        # ... while its SMS fails, is journaled, and waits for a retry
        wait_until(lambda: notify_stats(get)["retried"] >= 1, timeout=20)
        assert notify_stats(get)["outbox"] == 1
        assert sms_to(sim, LI) == []

        sim.control(clear="modem")  # plugged in again: the retry goes out
        try:
            wait_until(lambda: sms_to(sim, LI), timeout=60)
        except AssertionError:
            print("".join(d.log[-60:]))
            raise
        assert "GT-1" in sms_to(sim, LI)[0]
        wait_until(lambda: notify_stats(get)["outbox"] == 0, timeout=10)

        assert d.stop() == 0
        notes = [e for e in journal_events(state, "notify") if e["kind"] != "delivery"]
        sms = [e for e in notes if e["via"] == "sms"]
        assert len(sms) >= 2 and all(e["recipient"] == "李四" and e["kind"] == "escalation" for e in sms)
        assert [e["attempt"] for e in sms] == list(range(1, len(sms) + 1))
        assert all(not e["ok"] and e["retry"] and "unavailable" in e["detail"] for e in sms[:-1]), sms
        assert sms[-1]["ok"], sms[-1]
        hooks = [(e["recipient"], e["kind"], e["ok"], e["attempt"]) for e in notes if e["via"] == "hook"]
        assert hooks == [("张三", "alarm", True, 1), ("李四", "escalation", True, 1)]
    finally:
        if d is not None:
            d.stop()
        sim.stop()
        hook.stop()


def test_a_delivery_report_after_a_restart_is_attributed_from_the_message_key() -> None:
    """After a restart the service no longer holds who a message was for; the key (built in
    NotifyService._tell and pacing's digests) still says."""
    from gateway.notify.service import _meta_from_key

    assert _meta_from_key("222W/escalation/2/李四/sms") == \
        {"code": "222W", "kind": "escalation", "recipient": "李四", "via": "sms"}
    assert _meta_from_key("digest/张三/1796669656943999062/sms") == \
        {"kind": "digest", "recipient": "张三", "via": "sms"}
    assert _meta_from_key("test/张三/sms/1") == {}  # a `notify test` message: not the service's
