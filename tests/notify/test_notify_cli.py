"""``safegw check`` on the notify section (errors at their line and column) and
``safegw notify test`` against the simulators, as a user runs them; the default texts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import loads
from gateway.notify.render import Renderer
from simulators.robots import RobotReceiver
from simulators.smtp import SmtpServer
from tests.fixtures.notify import gateway_yaml, secret

pytestmark = [pytest.mark.timeout(60)]
ROOT = Path(__file__).resolve().parents[2]


def safegw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)


BAD = """
notify:
  channels:
    - {type: dingtalk, name: ding, url: "https://oapi.dingtalk.com/robot/send"}
    - {type: email, name: mail, host: smtp.example.com, sender: alarm@example.com}
    - {type: modem, port: /dev/ttyUSB2}
    - {type: pager, name: p}
  recipients:
    - {name: 张三, phone: 13800000001}
  routes:
    - {name: r1, to: [张三, 李四], via: [dingg], escalation: night}
  escalations:
    - name: night
      steps:
        - {after: 5m, to: ["@shift_leader"]}
        - {after: 1m, to: [张三], voice: true}
  templates:
    zh-CN: {sms: {alarm: "{channel} {valeu}"}}
"""


def test_check_reports_each_notify_mistake_at_its_line_and_column(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(gateway_yaml(tmp_path / "state", BAD))
    r = safegw("check", "-c", str(cfg))
    assert r.returncode == 2, r.stdout + r.stderr
    out = r.stdout
    lines = {line.split(": ", 1)[0].rsplit(":", 2)[1]: line for line in out.splitlines()}
    # the line numbers of BAD within the file: find them rather than count them
    text = cfg.read_text().splitlines()

    def line_of(s: str) -> str:
        return str(next(i for i, t in enumerate(text, 1) if s in t))

    assert "pager" in lines[line_of("type: pager")] and "email" in lines[line_of("type: pager")]
    assert "in quotes" in lines[line_of("phone: 13800000001")]
    # the checks across the section run once the models pass: fix the model errors, look again
    fixed = BAD.replace("    - {type: pager, name: p}\n", "")
    fixed = fixed.replace("phone: 13800000001", 'phone: "13800000001"')
    cfg.write_text(gateway_yaml(tmp_path / "state", fixed))
    r = safegw("check", "-c", str(cfg))
    assert r.returncode == 2
    text = cfg.read_text().splitlines()
    found = r.stdout
    assert f"gw.yaml:{line_of('name: r1')}:" in found
    assert "no recipient named '李四'" in found and "did you mean 'ding'" in found
    assert "steps come in time order" in found and "{valeu}" in found
    assert "a voice call needs a modem channel" not in found  # there is one
    for line in found.splitlines():
        assert line.startswith(str(cfg)) and line.split(":")[1].isdigit() and line.split(":")[2].isdigit()


def test_the_default_texts_are_chinese_for_a_chinese_site_and_fit_one_sms(tmp_path: Path) -> None:
    cfg = loads(gateway_yaml(tmp_path / "s", "notify: {channels: [{type: modem, port: /dev/ttyUSB2}]}"))
    assert cfg.notify is not None and cfg.notify.locale == "zh-CN"
    r = Renderer(cfg, cfg.notify)
    ev = {"channel": "GT-1", "level": "hh", "value": 52.30000000000001, "limit": 50.0, "unit": "%LEL",
          "ts": 1_765_000_000_000_000_000, "kind": "gas", "rule": "limit"}
    for kind in ("alarm", "escalation", "cleared"):
        m = r.message("k", kind, "sms", r.fields(ev, code="A2B3", step=2))  # type: ignore[arg-type]
        assert len(m.short) <= 70, (kind, len(m.short), m.short)  # one UCS-2 SMS (3GPP TS 23.038)
        assert "GT-1" in m.short and "52.3" in m.short and "高高限" in m.short and "52.30000" not in m.short
    assert "回复A2B3确认" in r.message("k", "alarm", "sms", r.fields(ev, code="A2B3")).short


def test_notify_test_sends_through_every_channel_of_a_recipient_and_reports_each(tmp_path: Path) -> None:
    ding = RobotReceiver("dingtalk", token="t1", secret="SEC").start()
    smtp = SmtpServer().start()
    try:
        tok, sec = secret(tmp_path, "d.tok", "t1"), secret(tmp_path, "d.sec", "SEC")
        pw = secret(tmp_path, "smtp.pw", "secret-pw")
        notify = f"""
notify:
  channels:
    - {{type: dingtalk, name: ding, url: "{ding.url}", token_file: "{tok}", secret_file: "{sec}",
        ca_file: "{ding.ca}"}}
    - {{type: email, name: mail, host: 127.0.0.1, port: {smtp.port}, username: alarm, password_file: "{pw}",
        sender: safegw@plant.example, ca_file: "{smtp.ca}"}}
  recipients:
    - {{name: 张三, phone: "13800000001", email: zs@plant.example}}
"""
        cfg = tmp_path / "gw.yaml"
        cfg.write_text(gateway_yaml(tmp_path / "state", notify))
        r = safegw("notify", "test", "-c", str(cfg), "张三")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "ok   张三: ding" in r.stdout and "ok   张三: mail" in r.stdout
        assert len(ding.messages) == 1 and "测试消息" in ding.messages[0]["doc"]["text"]["content"]
        assert len(smtp.messages) == 1
        import sqlite3

        db = sqlite3.connect(tmp_path / "state" / "registers.db")
        assert db.execute("SELECT actor, path, status FROM audit").fetchall() == [("cli", "notify test", 200)]
        db.close()
        # the SMTP password goes wrong: that channel fails, the other still works, exit 1
        pw.write_text("nope\n")
        r = safegw("notify", "test", "-c", str(cfg), "张三")
        assert r.returncode == 1
        assert "FAIL 张三: mail: login refused" in r.stdout and "ok   张三: ding" in r.stdout
        assert "nope" not in r.stdout + r.stderr and "secret-pw" not in r.stdout + r.stderr
        # a secret others may read is refused, naming the file, not its content
        os.chmod(sec, 0o644)
        r = safegw("notify", "test", "-c", str(cfg), "张三")
        assert r.returncode == 2 and "d.sec" in r.stdout and "chmod 600" in r.stdout and "SEC" not in r.stdout
        assert safegw("notify", "test", "-c", str(cfg), "nobody").returncode == 2
    finally:
        ding.stop()
        smtp.stop()


def test_a_template_from_the_config_replaces_the_default_for_its_language_and_kind(tmp_path: Path) -> None:
    notify = """
notify:
  locale: en
  channels: [{type: modem, port: /dev/ttyUSB2}]
  templates:
    en: {sms: {alarm: "{plant}: {channel} {level} at {value} {unit}! ack {code}"}}
"""
    cfg = loads(gateway_yaml(tmp_path / "s", notify))
    assert cfg.notify is not None
    r = Renderer(cfg, cfg.notify)
    ev = {"channel": "TT-1", "level": "h", "value": 19.309999465942383, "limit": 60.0, "unit": "°C",
          "ts": 1_765_000_000_000_000_000}
    m = r.message("k", "alarm", "sms", r.fields(ev, code="XY23"))
    assert m.short == "一号罐区: TT-1 h at 19.31 °C! ack XY23"  # TT-1: float32, shortest form
    cleared = r.message("k", "cleared", "sms", r.fields(ev, code="XY23"))
    assert cleared.short.startswith("一号罐区 ") and "cleared" in cleared.short  # the default for the rest


def test_the_roster_shift_that_covers_now_including_a_night_that_began_yesterday(tmp_path: Path) -> None:
    import datetime as dt
    import zoneinfo

    from gateway.app import Gateway
    from gateway.notify.service import NotifyService

    cfg = loads(gateway_yaml(tmp_path / "s", "notify: {channels: [{type: webhook, name: h, "
                                             "url: \"https://127.0.0.1:9/hook\"}]}"))
    assert cfg.notify is not None
    gw = Gateway(cfg)
    try:
        svc = NotifyService(gw, cfg.notify)
        tz = zoneinfo.ZoneInfo("Asia/Shanghai")

        def at(s: str) -> list[tuple[str, str]]:
            return svc.on_shift(int(dt.datetime.fromisoformat(s).replace(tzinfo=tz).timestamp() * 1e9))

        assert at("2026-12-07T09:30") == [("2026-12-07", "all_day"), ("2026-12-07", "day")]
        assert at("2026-12-07T21:00") == [("2026-12-07", "all_day"), ("2026-12-07", "night")]
        # 03:00 belongs to the night shift that began on the 6th at 20:00
        assert at("2026-12-07T03:00") == [("2026-12-07", "all_day"), ("2026-12-06", "night")]
        assert at("2026-12-07T08:00") == [("2026-12-07", "all_day"), ("2026-12-07", "day")]
        assert at("2026-12-07T20:00") == [("2026-12-07", "all_day"), ("2026-12-07", "night")]
    finally:
        gw.journal.close()
