"""Alarm commands get the same result by MQTT and by the admin API (rules/commands.py):
a shelve names its duration and stays within alarms.max_shelve, an ack names its channel
("*" for every alarm, written so), and a refused command changes nothing. Real mosquitto,
real HTTP, the real daemon in process."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

import httpx

from gateway.app import Gateway
from gateway.config import loads
from gateway.core.batch import Batch
from gateway.core.record import EVENT
from gateway.core.tokens import UserStore
from tests.fixtures.helpers import async_wait_until
from tests.fixtures.mosquitto import Broker, Subscriber

PREFIX = "safegw/S1/gw-cmd"


def _yaml(state_dir: Path, mqtt: dict[str, Any]) -> str:
    chans = "\n".join(
        f"      - {{name: GT-{i}, kind: gas, gas: combustible, unit: '%LEL', address: 'holding:{i}', "
        f"preset: gbt50493}}" for i in range(3))
    return textwrap.dedent(f"""\
        gateway: {{id: gw-cmd, site: "S1", state_dir: {state_dir}}}
        alarms: {{max_shelve: 8h}}
        devices:
          - name: plc
            protocol: modbus-tcp
            host: 127.0.0.1
            port: 1502
            enabled: false
            channels:
        """) + chans + "\n" + "mqtt: " + json.dumps(mqtt) + '\napi: {listen: "127.0.0.1:0"}\n'


async def _operator_events(gw: Gateway) -> list[dict[str, Any]]:
    evs = [r.event() for r in await gw.journal.read(0, 10_000, kinds=(EVENT,))]
    ops = ("ack", "shelve", "unshelve")
    return [e for e in evs if e.get("type") == "alarm" and e.get("transition") in ops]


async def test_the_same_command_rules_by_mqtt_and_by_api(mosquitto: Broker, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    token = UserStore(state / "users.json").add("op", "operator")
    gw = Gateway(loads(_yaml(state, mosquitto.section())))
    sub = Subscriber(mosquitto, [f"{PREFIX}/cmd/result"])
    task = asyncio.create_task(gw.run(drain_s=3.0))
    try:
        def service(name: str) -> Any:
            return next((s for s in gw.services if s.name == name), None)

        await async_wait_until(lambda: getattr(service("mqtt"), "connected", False)
                               and getattr(service("api"), "url", None), 15, what="mqtt connected, api up")
        api = service("api")
        now = gw.clock()
        for ch in range(3):  # three channels in alarm
            gw.ingest(Batch.build([ch], [now], [60.0], [0]))
        await async_wait_until(lambda: sum(a["state"] == "active_unacked" for a in gw.rules.active()) >= 3,
                               15, what="three active alarms")
        op = mosquitto.client("console")
        op.connect(mosquitto.host, mosquitto.port)
        op.loop_start()
        refused: list[tuple[str, dict[str, Any], str]] = [
            ("shelve", {"channel": "GT-0", "operator": "Li", "reason": "r"}, "duration"),  # forever: no
            ("shelve", {"channel": "GT-0", "operator": "Li", "reason": "r", "duration": "9h"}, "duration"),
            ("shelve", {"channel": "GT-0", "operator": "Li", "reason": "r", "duration": 3600}, "duration"),
            ("shelve", {"channel": "GT-0", "operator": "Li", "reason": "r", "duration": "-1h"}, "duration"),
            ("ack", {"operator": "Li"}, "channel"),  # no channel is not "every alarm"
            ("ack", {"channel": 0, "operator": "Li"}, "channel"),  # not an index
            ("shelve", {"channel": "*", "operator": "Li", "reason": "r", "duration": "1h"}, "channel"),
            ("ack", {"channel": "GT-0", "operator": "x" * 5000}, "operator"),
        ]
        try:
            for i, (verb, doc, _field) in enumerate(refused):
                op.publish(f"{PREFIX}/cmd/{verb}", json.dumps({**doc, "request_id": f"r{i}"}), qos=1)
            for bad in (b"[1,2]", b'"x"', b"[" * 5000, b"1e300"):
                op.publish(f"{PREFIX}/cmd/ack", bad, qos=1)
            n = len(refused) + 4
            await asyncio.to_thread(sub.wait_for, lambda s: len(s.json(lambda t: True)) >= n, 15, "results")
            results = sub.json(lambda t: True)
            assert [r["ok"] for r in results] == [False] * n, results
            by_id = {r["request_id"]: r for r in results if r.get("request_id")}
            for i, (_verb, _doc, field) in enumerate(refused):
                assert field in by_id[f"r{i}"]["error"], by_id[f"r{i}"]
            assert await _operator_events(gw) == []  # nothing changed

            # the API refuses the same with 422 and the field
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.port}",
                                         headers={"Authorization": f"Bearer {token}"}) as http:
                r = await http.post("/alarms/GT-0/shelve", json={"duration": "9h", "reason": "r"})
                assert r.status_code == 422 and "8h" in r.text, r.text
                r = await http.post("/alarms/*/shelve", json={"duration": "1h", "reason": "r"})
                assert r.status_code == 422 and "ack only" in r.text, r.text
                r = await http.post("/alarms/GT-0/shelve", json={"duration": "8h", "reason": "calibration"})
                assert r.status_code == 200, r.text
                shelved = r.json()["events"]
                assert shelved and {(e["transition"], e["channel"]) for e in shelved} == {("shelve", "GT-0")}
                # "*" acknowledges every alarm, by API ...
                r = await http.post("/alarms/*/ack", json={"comment": "all seen"})
                assert r.status_code == 200, r.text
                assert {e["channel"] for e in r.json()["events"]} == {"GT-0", "GT-1", "GT-2"}
            # ... and by MQTT: nothing left to acknowledge, and the command is answered ok
            everything = {"channel": "*", "operator": "Li", "request_id": "all"}
            op.publish(f"{PREFIX}/cmd/ack", json.dumps(everything), qos=1)
            await asyncio.to_thread(sub.wait_for, lambda s: any(
                r.get("request_id") == "all" for r in s.json(lambda t: True)), 15, "ack-all result")
            done = next(r for r in sub.json(lambda t: True) if r.get("request_id") == "all")
            assert done["ok"] is True and done["events"] == []
            await gw.flush()
            journaled = await _operator_events(gw)
            assert [e["id"] for e in journaled if e["transition"] == "shelve"] == [e["id"] for e in shelved]
            assert {e["channel"] for e in journaled if e["transition"] == "ack"} == {"GT-0", "GT-1", "GT-2"}
            assert all(e["until"] - e["ts"] == 8 * 3600 * 10**9 for e in shelved)
        finally:
            op.disconnect()
            op.loop_stop()
    finally:
        gw.stop()
        await task
        sub.close()
