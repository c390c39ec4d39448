"""MQTT alarm channel against a real mosquitto: delivery, PUBACK cursor, broker outage,
TLS, passwords, commands, retained documents and the last will."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.config import loads
from gateway.core.batch import Batch
from tests.fixtures.helpers import async_wait_until, wait_until
from tests.fixtures.mosquitto import Broker, Subscriber
from tests.fixtures.mqttgw import alarm_msgs, crossing, gateway_yaml, run_gateway
from uplink.mqtt import MqttService

ROOT = Path(__file__).resolve().parents[2]
NS = 1_000_000_000


def mqtt_service(gw: Gateway) -> MqttService:
    svc = gw.services[0]
    assert isinstance(svc, MqttService), svc
    return svc










@pytest.mark.parametrize("tls,password", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["plain", "tls", "password", "tls+password"])
async def test_alarms_arrive(mosquitto_factory: Any, tmp_path: Path, tls: bool, password: bool) -> None:
    broker: Broker = mosquitto_factory(tls=tls, password=password)
    sub = Subscriber(broker, ["safegw/#"])
    try:
        cfg = loads(gateway_yaml(tmp_path / "state", broker.section()))
        gw = Gateway(cfg)
        task = await run_gateway(gw)
        t = gw.clock()
        crossing(gw, 0, 30.0, t)  # level 1 (25 %LEL)
        crossing(gw, 0, 55.0, t + NS)  # level 2 (50 %LEL)
        crossing(gw, 0, 5.0, t + 2 * NS)  # clear
        await asyncio.to_thread(sub.wait_for, lambda s: len(alarm_msgs(s)) >= 3, 15, "3 alarm events")
        msgs = alarm_msgs(sub)
        assert [(m["channel"], m["level"], m["transition"]) for m in msgs] == [
            ("GT-0", "h", "raise"), ("GT-0", "hh", "escalate"), ("GT-0", "hh", "clear")]
        assert msgs[0]["limit"] == 25.0 and msgs[1]["limit"] == 50.0 and msgs[0]["value"] == 30.0
        assert msgs[0]["unit"] == "%LEL" and msgs[0]["kind"] == "gas" and msgs[0]["id"].startswith("gw-test-")
        assert len({m["id"] for m in msgs}) == 3
        assert sub.payloads("safegw/S1/gw-test/status")[-1] == b"online"
        await async_wait_until(lambda: gw.journal.cursor("mqtt") >= max(m["seq"] for m in msgs), 10,
                               what="cursor past the acknowledged events")
        gw.stop()
        await task
        # the broker hands the offline status to the subscriber in its own time
        status = "safegw/S1/gw-test/status"
        await asyncio.to_thread(sub.wait_for, lambda s: s.payloads(status)[-1:] == [b"offline"], 10,
                                "the offline status")
    finally:
        sub.close()


@pytest.mark.slow
async def test_broker_outage_delivers_everything_in_order(mosquitto_factory: Any, tmp_path: Path) -> None:
    broker: Broker = mosquitto_factory(persistence=True)
    # a persistent session: the broker keeps the subscription across its crash
    sub = Subscriber(broker, ["safegw/+/+/alarms/+"], client_id="ops-console", clean_session=False)
    try:
        gw = Gateway(loads(gateway_yaml(tmp_path / "state", broker.section())))
        task = await run_gateway(gw)
        t = gw.clock()
        crossing(gw, 0, 30.0, t)
        await asyncio.to_thread(sub.wait_for, lambda s: len(alarm_msgs(s)) >= 1, 15, "first alarm")
        await asyncio.to_thread(wait_until, lambda: (broker.dir / "mosquitto.db").exists(), 10, 0.05,
                                "the broker to save the subscription")
        await async_wait_until(lambda: gw.journal.lag("mqtt") == 0 or gw.journal.cursor("mqtt") > 0, 10)
        broker.kill()
        await async_wait_until(lambda: not mqtt_service(gw).connected, 15, what="gateway to see the outage")
        cursor_before = gw.journal.cursor("mqtt")
        published_before = mqtt_service(gw).published
        # alarms raised during the outage: 4 channels go up and down, 24 transitions
        k = 0
        for _ in range(3):
            for ch in range(4):
                k += 1
                crossing(gw, ch, 60.0, t + k * NS)
                k += 1
                crossing(gw, ch, 1.0, t + k * NS)
        await gw.flush()
        recs = [r for r in await gw.journal.read(cursor_before, 1000, kinds=(2,))
                if r.event().get("type") == "alarm"]
        raised = [r.event() for r in recs]
        assert len(raised) >= 24
        # the publisher hands them to paho while the broker is away (queued, never acked)
        await async_wait_until(lambda: mqtt_service(gw).published >= published_before + len(raised), 10,
                               what="the publisher to take the outage's alarms")
        # nothing raised in the outage is acknowledged: the cursor stays before the first
        # of them (it may still pass the PUBACK of the alarm before, or non-alarm events)
        assert gw.journal.cursor("mqtt") < recs[0].seq
        broker.start()
        want = [e["id"] for e in raised]
        await asyncio.to_thread(
            sub.wait_for, lambda s: set(want) <= {m["id"] for m in alarm_msgs(s)}, 30, "alarms after restart")
        got: list[str] = []
        for m in alarm_msgs(sub):  # QoS 1: a duplicate is allowed, a reorder is not
            if m["id"] not in got:
                got.append(m["id"])
        assert [i for i in got if i in set(want)] == want
        await async_wait_until(lambda: gw.journal.cursor("mqtt") >= gw.journal.last_seq - 1, 15,
                               what="cursor to catch up after the broker came back")
        gw.stop()
        await task
    finally:
        sub.close()


async def test_commands_ack_shelve_and_active_document(mosquitto: Broker, tmp_path: Path) -> None:
    sub = Subscriber(mosquitto, ["safegw/#"])
    try:
        gw = Gateway(loads(gateway_yaml(tmp_path / "state", mosquitto.section())))
        task = await run_gateway(gw)
        crossing(gw, 1, 60.0, gw.clock())
        prefix = "safegw/S1/gw-test"

        def active(s: Subscriber) -> list[dict[str, Any]]:
            docs = [json.loads(p) for p in s.payloads(f"{prefix}/alarms/active")]
            return docs[-1]["alarms"] if docs else []

        await asyncio.to_thread(sub.wait_for, lambda s: any(a["channel"] == "GT-1" and a["state"] ==
                                                            "active_unacked" for a in active(s)), 15)
        op = mosquitto.client("console")
        op.connect(mosquitto.host, mosquitto.port)
        op.loop_start()
        try:
            op.publish(f"{prefix}/cmd/ack", json.dumps({"channel": "GT-1"}), qos=1)  # no operator: refused
            op.publish(f"{prefix}/cmd/ack", json.dumps({"channel": "GT-1", "operator": "Zhang San",
                                                        "request_id": "r1"}), qos=1)
            await asyncio.to_thread(sub.wait_for, lambda s: any(
                m.get("transition") == "ack" for m in alarm_msgs(s)), 15, "ack event")
            ack = next(m for m in alarm_msgs(sub) if m.get("transition") == "ack")
            assert ack["who"] == "Zhang San" and ack["state"] == "active_acked" and ack["level"] == "hh"
            results = sub.json(lambda t: t.endswith("/cmd/result"))
            assert results[0]["ok"] is False and "operator" in results[0]["error"]
            assert results[1]["ok"] is True and results[1]["request_id"] == "r1"
            await asyncio.to_thread(sub.wait_for, lambda s: any(
                a["channel"] == "GT-1" and a["state"] == "active_acked" for a in active(s)), 15)
            op.publish(f"{prefix}/cmd/shelve", json.dumps({
                "channel": "GT-1", "rule": "limit", "operator": "Li Si", "reason": "sensor being replaced",
                "duration": "30m"}), qos=1)
            await asyncio.to_thread(sub.wait_for, lambda s: any(
                a["channel"] == "GT-1" and a.get("shelved") for a in active(s)), 15, "shelved in active doc")
            shelve = next(m for m in alarm_msgs(sub) if m.get("transition") == "shelve")
            assert shelve["who"] == "Li Si" and shelve["reason"] == "sensor being replaced"
            assert shelve["until"] - shelve["ts"] == 1800 * NS
        finally:
            op.disconnect()
            op.loop_stop()
        # the operator actions are journaled
        evs = [r.event() for r in await gw.journal.read(0, 1000, kinds=(2,))]
        assert [e["transition"] for e in evs if e.get("channel") == "GT-1"] == ["raise", "ack", "shelve"]
        gw.stop()
        await task
    finally:
        sub.close()


ACL = """\
# the gateway publishes its alarms and status, and reads the command topics
user safegw
topic write safegw/+/+/alarms/#
topic write safegw/+/+/status
topic write safegw/+/+/values
topic write safegw/+/+/reminders
topic write safegw/+/+/cmd/result
topic read safegw/+/+/cmd/#
# control-room operators read everything and may acknowledge and shelve
user operator
topic read safegw/#
topic write safegw/+/+/cmd/ack
topic write safegw/+/+/cmd/shelve
topic write safegw/+/+/cmd/unshelve
# anyone else with an account: read-only
pattern read safegw/#
"""


async def test_acl_keeps_commands_to_operators(mosquitto_factory: Any, tmp_path: Path) -> None:
    broker: Broker = mosquitto_factory(password=True, acl=ACL)
    await asyncio.to_thread(subprocess.run, ["mosquitto_passwd", "-b", str(broker.dir / "passwd"), "viewer",
                                             "viewer-pw"], check=True)
    broker.stop()
    broker.start()
    sub = Subscriber(broker, ["safegw/#"], user=broker.operator)
    try:
        gw = Gateway(loads(gateway_yaml(tmp_path / "state", broker.section())))
        task = await run_gateway(gw)
        crossing(gw, 2, 30.0, gw.clock())
        await asyncio.to_thread(sub.wait_for, lambda s: len(alarm_msgs(s)) >= 1, 15, "alarm through the ACL")
        prefix = "safegw/S1/gw-test"
        for user in (("viewer", "viewer-pw"), broker.operator):
            c = broker.client(f"c-{user[0]}", user=user)
            c.connect(broker.host, broker.port)
            c.loop_start()
            c.publish(f"{prefix}/cmd/ack", json.dumps({"channel": "GT-2", "operator": user[0]}),
                      qos=1).wait_for_publish(5)
            c.disconnect()
            c.loop_stop()
        await asyncio.to_thread(sub.wait_for, lambda s: any(m.get("transition") == "ack"
                                                            for m in alarm_msgs(s)), 15, "operator's ack")
        acks = [m for m in alarm_msgs(sub) if m.get("transition") == "ack"]
        assert [a["who"] for a in acks] == ["operator"]  # the viewer's publish was dropped by the broker
        gw.stop()
        await task
    finally:
        sub.close()


@pytest.mark.slow
def test_last_will_when_gateway_is_killed(mosquitto: Broker, tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(gateway_yaml(tmp_path / "state", mosquitto.section()))
    sub = Subscriber(mosquitto, ["safegw/S1/gw-test/status"])
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(cfg)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        sub.wait_for(lambda s: s.payloads("safegw/S1/gw-test/status")[-1:] == [b"online"], 30, "online")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        sub.wait_for(lambda s: s.payloads("safegw/S1/gw-test/status")[-1:] == [b"offline"], 15,
                     "the last will")
        # retained: a console connecting later sees the gateway is gone
        late = Subscriber(mosquitto, ["safegw/S1/gw-test/status"], client_id="late")
        late.wait_for(lambda s: s.payloads("safegw/S1/gw-test/status") == [b"offline"], 10)
        late.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        sub.close()


async def test_stop_drains_and_values_are_published(mosquitto: Broker, tmp_path: Path) -> None:
    sub = Subscriber(mosquitto, ["safegw/#"])
    try:
        gw = Gateway(loads(gateway_yaml(tmp_path / "state", mosquitto.section(values_every="200ms"))))
        task = await run_gateway(gw)
        gw.ingest(Batch.build([0, 1, 2, 3], [gw.clock()] * 4, [1.0, 2.0, 3.0, 4.0], [0] * 4))
        def gt3(s: Subscriber) -> bool:
            docs = s.json(lambda t: t.endswith("/values"))
            return any(d.get("values", {}).get("GT-3", [None])[0] == 4.0 for d in docs)

        await asyncio.to_thread(sub.wait_for, gt3, 15, "live values")
        # raised and stopped at once: the bounded drain still delivers it
        crossing(gw, 3, 70.0, gw.clock())
        gw.stop()
        await task
        await asyncio.to_thread(sub.wait_for, lambda s: any(m["channel"] == "GT-3" for m in alarm_msgs(s)),
                                10, "alarm delivered by the drain")
        assert gw.journal.cursor("mqtt") >= max(m["seq"] for m in alarm_msgs(sub))
    finally:
        sub.close()
