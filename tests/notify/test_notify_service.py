"""The notify service in a real gateway (journal, rules engine, register store) sending to
the robot simulators over real HTTPS: routing, recipients from the registers, escalation,
acknowledgement by any path, cleared messages, shelving, floods, retries, SMS replies."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.admin.api import ApiService
from gateway.app import Gateway
from gateway.config import loads
from rules.commands import apply_command, parse_command
from simulators.robots import RobotReceiver
from tests.fixtures.helpers import async_wait_until
from tests.fixtures.notify import batch, gateway_yaml, journal_events, running, secret, service

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


@pytest.fixture
def hook() -> Any:
    r = RobotReceiver("webhook", secret="hook-secret").start()
    yield r
    r.stop()


@pytest.fixture
def ding() -> Any:
    r = RobotReceiver("dingtalk", token="dt-token", secret="SEC-ding").start()
    yield r
    r.stop()


def notify_yaml(tmp: Path, hook: RobotReceiver, ding: RobotReceiver | None = None, *, routes: str = "",
                escalations: str = "", extra: str = "") -> str:
    hs = secret(tmp, "hook.secret", "hook-secret")
    chans = (f"    - {{type: webhook, name: hook, url: \"{hook.url}\", secret_file: \"{hs}\", "
             f"ca_file: \"{hook.ca}\", timeout: 2s}}\n")
    if ding is not None:
        tok, sec = secret(tmp, "ding.token", "dt-token"), secret(tmp, "ding.secret", "SEC-ding")
        chans += (f"    - {{type: dingtalk, name: ding, url: \"{ding.url}\", token_file: \"{tok}\", "
                  f"secret_file: \"{sec}\", ca_file: \"{ding.ca}\"}}\n")
    return f"""
notify:
  status_url: https://gw.plant.example
  retry_after: 1s
  channels:
{chans}  recipients:
    - {{name: 张三, phone: "+8613800000001", can_ack: true}}
    - {{name: 李四, phone: "+8613800000002", can_ack: true}}
    - {{name: 王五, phone: "+8613800000003"}}
    - {{name: 赵六, phone: "+8613800000004", can_ack: true}}
  routes:
{routes or "    - {name: gas, match: {kinds: [gas]}, to: [张三]}"}
{escalations}
{extra}
"""


def texts(r: RobotReceiver) -> list[str]:
    return [m["doc"]["text"] for m in r.messages]


def to_whom(r: RobotReceiver) -> list[str]:
    return [m["doc"]["recipient"] for m in r.messages]


def gateway(tmp_path: Path, notify: str) -> Gateway:
    return Gateway(loads(gateway_yaml(tmp_path / "state", notify)))


async def test_an_alarm_reaches_its_recipient_in_chinese_with_value_limit_and_link_then_cleared(
        tmp_path: Path, hook: RobotReceiver) -> None:
    gw = gateway(tmp_path, notify_yaml(tmp_path, hook))
    async with running(gw):
        gw.ingest(batch(gw, {"GT-1": 30.000000001, "GT-2": 5.0}))
        await async_wait_until(lambda: len(hook.messages) >= 1, 10, what="the alarm message")
        doc = hook.messages[0]["doc"]
        assert doc["recipient"] == "张三" and doc["kind"] == "alarm" and doc["locale"] == "zh-CN"
        # plant, area, channel, level, value with unit, limit, time, ack code, link
        for part in ("一号罐区", "罐区", "GT-1", "高限", "30%LEL", "限值:25%LEL", "确认码:" + doc["code"],
                     "https://gw.plant.example/#alarm=GT-1"):
            assert part in doc["text"], (part, doc["text"])
        assert "30.000000001" not in doc["text"]  # a scale of 0.1 is shown at its resolution
        assert len(doc["short"]) <= 70, doc["short"]
        assert doc["fields"]["alarm"]["channel"] == "GT-1"
        gw.ingest(batch(gw, {"GT-1": 3.0}))
        await async_wait_until(lambda: len(hook.messages) >= 2, 10, what="the cleared message")
        assert hook.messages[1]["doc"]["kind"] == "cleared" and "报警恢复" in hook.messages[1]["doc"]["text"]
        await async_wait_until(lambda: len(journal_events(gw, "notify")) >= 2, 5, what="attempts journaled")
        att = journal_events(gw, "notify")
        assert [(a["kind"], a["recipient"], a["via"], a["ok"]) for a in att] == [
            ("alarm", "张三", "hook", True), ("cleared", "张三", "hook", True)]
        assert all(a["latency_ms"] >= 0 and "13800000001" not in str(a) for a in att)  # no phone numbers
        st = service(gw).stats()
        assert st["sent"] == 2 and st["outbox"] == 0 and st["channels"]["hook"]["sent"] == 2
    assert not hook.refused


async def test_english_site_and_a_route_that_matches_nothing_sends_nothing(tmp_path: Path,
                                                                          hook: RobotReceiver) -> None:
    gw = gateway(tmp_path, notify_yaml(tmp_path, hook, routes="    - {name: t, match: {kinds: [temperature], "
                                       "levels: [h]}, to: [王五]}", extra="  locale: en"))
    async with running(gw):
        gw.ingest(batch(gw, {"GT-1": 30.0}))  # gas: no route
        gw.ingest(batch(gw, {"TT-1": 61.25}))
        await async_wait_until(lambda: len(hook.messages) >= 1, 10)
        assert to_whom(hook) == ["王五"]
        text = texts(hook)[0]
        assert "TT-1" in text and "61.25 °C" in text and "limit 60 °C" in text and "ALARM" in text
        assert "GT-1" not in text


async def test_shelved_and_suppressed_alarms_are_not_sent_until_the_shelve_ends(
        tmp_path: Path, hook: RobotReceiver) -> None:
    gw = gateway(tmp_path, notify_yaml(tmp_path, hook))
    async with running(gw):
        now = gw.clock()
        cmd = parse_command("shelve", {"channel": "GT-2", "operator": "op", "reason": "calibration",
                                       "duration": "1h"})
        events = apply_command(gw.rules, cmd, now)
        gw.emit_events(events)
        gw.emit_events(gw.rules.set_maintenance(channel="GT-1", on=True, who="op", now_ns=now))
        gw.ingest(batch(gw, {"GT-1": 40.0}))  # in maintenance (suppressed): no message
        gw.ingest(batch(gw, {"GT-2": 40.0}))  # shelved: no message
        gw.ingest(batch(gw, {"GT-3": 40.0}))  # the control: it is sent
        await async_wait_until(lambda: len(hook.messages) >= 1, 10)
        await gw.flush()
        await service(gw).drain()
        assert [m["doc"]["fields"]["alarm"]["channel"] for m in hook.messages] == ["GT-3"]
        # the shelve ends while GT-2 is still active: it is annunciated again, so told now
        cmd = parse_command("unshelve", {"channel": "GT-2", "operator": "op"})
        gw.emit_events(apply_command(gw.rules, cmd, gw.clock()))
        await async_wait_until(lambda: len(hook.messages) >= 2, 10)
        assert hook.messages[1]["doc"]["fields"]["alarm"]["channel"] == "GT-2"


async def test_escalation_goes_up_the_chain_until_an_ack_by_the_api_path_stops_it(
        tmp_path: Path, hook: RobotReceiver) -> None:
    esc = """  escalations:
    - name: night
      steps:
        - {to: [张三]}
        - {after: 1s, to: [李四]}
        - {after: 2s, to: [王五]}
        - {after: 30s, to: [赵六]}"""
    gw = gateway(tmp_path, notify_yaml(tmp_path, hook, routes="    - {name: gas, match: {kinds: [gas]}, "
                                       "escalation: night}", escalations=esc))
    async with running(gw):
        gw.ingest(batch(gw, {"GT-1": 30.0}))
        await async_wait_until(lambda: len(hook.messages) >= 3, 15, what="three steps")
        assert to_whom(hook) == ["张三", "李四", "王五"]
        assert [m["doc"]["kind"] for m in hook.messages] == ["alarm", "escalation", "escalation"]
        raised = hook.messages[0]["doc"]["fields"]["alarm"]["ts"] / 1e9  # the alarm's journaled time
        t = [m["wall"] - raised for m in hook.messages]
        assert t[1] >= 1.0 and t[2] >= 2.0  # not before their time
        svc = service(gw)
        assert svc.stats()["escalating"] == 1
        # the operator acknowledges as the API does: rules.commands, events journaled
        gw.emit_events(apply_command(gw.rules, parse_command("ack", {"channel": "GT-1", "operator": "op"}),
                                     gw.clock()))
        await async_wait_until(lambda: svc.stats()["escalating"] == 0, 10, what="escalation stopped")
        assert len(hook.messages) == 3


async def test_on_duty_and_hazard_responsible_come_from_the_registers_at_send_time(
        tmp_path: Path, hook: RobotReceiver) -> None:
    gw = gateway(tmp_path, notify_yaml(tmp_path, hook, routes="    - {name: gas, match: {kinds: [gas]}, "
                                       "to: [\"@on_duty\", \"@hazard_responsible\"]}",
                                       extra="  roster: {day: \"00:00-12:00\", night: \"12:00-00:00\"}"))
    async with running(gw):
        svc = service(gw)
        store = svc._store
        shifts = svc.on_shift(gw.clock())
        date, shift = next(s for s in shifts if s[1] != "all_day")
        store.create("duty_roster", {"date": date, "shift": shift, "leader": "李四", "members": ["赵六"]},
                     actor="admin")
        store.create("major_hazard_source", {"code": "HS-01", "name": "液氨储罐区", "grade": "二级",
                                             "filing_status": "filed", "responsible": "王五"}, actor="admin")
        gw.ingest(batch(gw, {"GT-1": 30.0}))
        await async_wait_until(lambda: len(hook.messages) >= 2, 10)
        assert sorted(to_whom(hook)) == ["王五", "赵六"]
        # the roster changes: the next alarm goes to whoever is on duty now
        store.create("duty_roster", {"date": date, "shift": "all_day", "leader": "李四", "members": ["张三"]},
                     actor="admin")
        gw.ingest(batch(gw, {"GT-2": 30.0}))  # no hazard source: on duty only
        await async_wait_until(lambda: len(hook.messages) >= 4, 10)
        assert sorted(to_whom(hook)[2:]) == ["张三", "赵六"]
        def sources() -> set[tuple[str, str]]:
            return {(a["recipient"], a["source"]) for a in journal_events(gw, "notify")}

        await async_wait_until(lambda: len(sources()) >= 3, 10, what="the attempts journaled")
        assert {("王五", "hazard_source"), ("赵六", "duty_roster"), ("张三", "duty_roster")} <= sources()


async def test_a_robot_answering_429_then_500_is_retried_and_each_attempt_journaled(
        tmp_path: Path, hook: RobotReceiver) -> None:
    hook.fail(429)
    hook.fail(500)
    gw = gateway(tmp_path, notify_yaml(tmp_path, hook))
    async with running(gw):
        gw.ingest(batch(gw, {"GT-1": 30.0}))
        await async_wait_until(lambda: len(hook.messages) >= 1, 20, what="delivery after two failures")
        await async_wait_until(lambda: len(journal_events(gw, "notify")) >= 3, 5)
        att = journal_events(gw, "notify")
        assert [(a["ok"], a["retry"], a["attempt"]) for a in att] == [(False, True, 1), (False, True, 2),
                                                                      (True, False, 3)]
        assert "429" in att[0]["detail"] and "500" in att[1]["detail"]
        assert hook.requests == 3


async def test_a_flood_becomes_digests_that_name_every_alarm(tmp_path: Path, hook: RobotReceiver) -> None:
    gw = Gateway(loads(gateway_yaml(tmp_path / "state", notify_yaml(
        tmp_path, hook, extra="  flood: {alarms: 10, window: 10m, digest_every: 2s}\n"
                              "  rate_limit: {messages: 3, per: 1m}"), extra_channels=30)))
    async with running(gw):
        for i in range(30):
            gw.ingest(batch(gw, {f"GX-{i}": 30.0}))
        await async_wait_until(lambda: any(m["doc"]["kind"] == "digest" for m in hook.messages), 15)
        await gw.flush()
        svc = service(gw)
        await async_wait_until(lambda: svc.stats()["digests_pending"] == 0 and svc.stats()["outbox"] == 0, 15)
        kinds = [m["doc"]["kind"] for m in hook.messages]
        assert kinds.count("alarm") == 3  # the rate limit
        named = {m["doc"]["fields"]["alarm"]["channel"] for m in hook.messages if m["doc"]["kind"] == "alarm"}
        for m in hook.messages:
            if m["doc"]["kind"] == "digest":
                named |= {it["channel"] for it in m["doc"]["fields"]["alarms"]}
                assert "报警泛滥" in m["doc"]["text"]
        assert named == {f"GX-{i}" for i in range(30)}
        assert len(hook.messages) <= 6


async def test_an_sms_reply_with_the_code_acknowledges_when_the_sender_may(tmp_path: Path,
                                                                          hook: RobotReceiver) -> None:
    gw = gateway(tmp_path, notify_yaml(tmp_path, hook))
    async with running(gw):
        gw.ingest(batch(gw, {"GT-1": 30.0}))
        await async_wait_until(lambda: len(hook.messages) >= 1, 10)
        code = hook.messages[0]["doc"]["code"]
        svc = service(gw)
        # 王五 may not acknowledge; an unknown number neither: both audited, nothing acked
        await svc.on_sms("+8613800000003", f"收到 {code}")
        await svc.on_sms("13999999999", code)
        assert gw.rules.active()[0]["state"] == "active_unacked"
        await svc.on_sms("13800000001", f"确认{code.lower()}")  # 张三, without +86, lower case
        assert gw.rules.active()[0]["state"] == "active_acked"
        await gw.flush()
        acks = [e for e in journal_events(gw, "alarm") if e["transition"] == "ack"]
        assert acks and acks[0]["who"] == "张三" and "SMS" in acks[0]["comment"]
        audit = svc._store.audit_list(path_prefix="/alarms/")["items"]
        assert sorted(a["status"] for a in audit) == [200, 403, 403]
        assert all("13800000001" not in str(a) for a in audit)  # masked
        assert svc.stats()["acks_by_sms"] == 1 and svc.stats()["sms_refused"] == 2


async def test_bad_reply_text_is_bounded_and_harmless(tmp_path: Path, hook: RobotReceiver) -> None:
    gw = gateway(tmp_path, notify_yaml(tmp_path, hook))
    async with running(gw):
        svc = service(gw)
        await svc.on_sms("+8613800000001", "\x00" * 100_000 + "ZZZZ")
        await svc.on_sms("", "")
        assert svc.stats()["acks_by_sms"] == 0
        await asyncio.sleep(0)


async def test_status_and_metrics_show_the_service_and_an_api_ack_stops_escalation(
        tmp_path: Path, hook: RobotReceiver) -> None:
    import httpx

    from tests.fixtures.daemon import auth, make_tokens

    esc = "  escalations:\n    - {name: e, steps: [{to: [张三]}, {after: 30s, to: [李四]}]}"
    state = tmp_path / "state"
    state.mkdir()
    tokens = make_tokens(state)
    skew = [0]  # the clock jumps ahead later: the second step's time passes at once
    gw = Gateway(loads(gateway_yaml(state, notify_yaml(tmp_path, hook, escalations=esc, routes=(
        "    - {name: gas, match: {kinds: [gas]}, escalation: e}")) + '\napi: {listen: "127.0.0.1:0"}\n')),
        clock=lambda: time.time_ns() + skew[0])
    async with running(gw):
        api = next(s for s in gw.services if isinstance(s, ApiService))
        assert api.url is not None
        gw.ingest(batch(gw, {"GT-1": 30.0}))
        await async_wait_until(lambda: len(hook.messages) >= 1, 10)
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as c:
            st = (await c.get("/status", headers=auth(tokens["viewer"]))).json()["services"]["notify"]
            assert st["escalating"] == 1 and st["sent"] == 1 and st["channels"]["hook"]["sent"] == 1
            r = await c.post("/alarms/GT-1/ack", headers=auth(tokens["operator"]))
            assert r.status_code == 200, r.text
            svc = service(gw)
            await async_wait_until(lambda: svc.stats()["escalating"] == 0, 10, what="the API ack read")
            text = (await c.get("/metrics", headers=auth(tokens["viewer"]))).text
            assert 'safegw_notify_messages_total{result="sent"} 1' in text
            assert 'safegw_notify_channel_sent_total{channel="hook",type="webhook"} 1' in text
            assert "safegw_notify_escalating_alarms 0" in text
        rounds = svc.rounds
        skew[0] = 60 * 10**9
        await async_wait_until(lambda: svc.rounds >= rounds + 2, 10, what="two timer rounds past step 2")
        # neither sent nor waiting to be (a step that fired is in the outbox until delivered)
        assert "李四" not in to_whom(hook) and all(it["r"]["name"] != "李四" for it in svc.state["outbox"])


async def test_two_routes_to_one_person_make_one_message_and_an_unreachable_person_is_journaled(
        tmp_path: Path, hook: RobotReceiver) -> None:
    routes = ("    - {name: a, match: {kinds: [gas]}, to: [张三]}\n"
              "    - {name: b, match: {areas: [罐区]}, to: [张三, 孙七]}")
    gw = gateway(tmp_path, notify_yaml(tmp_path, hook, routes=routes).replace(
        "  recipients:\n", "  recipients:\n    - {name: 孙七, channels: []}\n"))
    async with running(gw):
        gw.ingest(batch(gw, {"GT-1": 30.0}))
        await async_wait_until(lambda: len(journal_events(gw, "notify")) >= 2, 10)
        await service(gw).drain()
        assert to_whom(hook) == ["张三"]
        failed = [a for a in journal_events(gw, "notify") if not a["ok"]]
        assert [(a["recipient"], a["via"]) for a in failed] == [("孙七", None)]
        assert "no channel reaches" in failed[0]["detail"]


async def test_state_that_cannot_be_saved_holds_the_cursor_and_nothing_is_lost(tmp_path: Path,
                                                                              hook: RobotReceiver) -> None:
    gw = gateway(tmp_path, notify_yaml(tmp_path, hook))
    async with running(gw):
        svc = service(gw)
        blocker = gw.state_dir / "notify-state.tmp"  # where the state is written before its rename
        blocker.mkdir()
        before = svc.consumer.cursor
        gw.ingest(batch(gw, {"GT-1": 30.0}))
        await async_wait_until(lambda: svc.consumer.health.state == "failing", 10, what="save failing")
        assert svc.consumer.cursor == before and "notify-state" in str(svc.consumer.health.last_error)
        blocker.rmdir()
        await async_wait_until(lambda: svc.consumer.cursor > before and svc.consumer.health.ok, 20)
        await async_wait_until(lambda: len(hook.messages) == 1, 10)
    # and after a restart the alarm is not told twice (its state was saved)
    gw2 = gateway(tmp_path, notify_yaml(tmp_path, hook))
    async with running(gw2):
        await service(gw2).drain()
        assert to_whom(hook) == ["张三"]
        assert [a["channel"] for a in service(gw2).state["alarms"].values()] == ["GT-1"]
