"""MQTT alarm channel against a real mosquitto: delivery, PUBACK cursor, broker outage,
TLS, passwords, commands, retained documents and the last will."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.app import Gateway
from gateway.batch import Batch
from gateway.config import loads
from tests.fixtures.mosquitto import Broker, Subscriber
from tests.helpers import async_wait_until, wait_until

ROOT = Path(__file__).resolve().parents[1]
NS = 1_000_000_000


def gateway_yaml(state_dir: Path, mqtt: dict[str, Any] | None, n: int = 4) -> str:
    chans = "\n".join(
        f"      - {{name: GT-{i}, kind: gas, gas: combustible, unit: '%LEL', address: 'holding:{i}', "
        f"preset: gbt50493}}" for i in range(n))
    text = textwrap.dedent(f"""\
        gateway: {{id: gw-test, site: "S1", state_dir: {state_dir}}}
        devices:
          - name: plc
            protocol: modbus-tcp
            host: 127.0.0.1
            port: 1502
            enabled: false
            channels:
        """) + chans + "\n"
    if mqtt is not None:
        text += "mqtt: " + json.dumps(mqtt) + "\n"
    return text


def crossing(gw: Gateway, ch: int, value: float, t_ns: int) -> None:
    gw.ingest(Batch.build([ch], [t_ns], [value], [0]))


async def run_gateway(gw: Gateway) -> asyncio.Task[None]:
    task = asyncio.create_task(gw.run(drain_s=3.0))
    await async_wait_until(lambda: gw.services and getattr(gw.services[0], "connected", False), 15,
                           what="gateway's mqtt connection")
    return task


def alarm_msgs(sub: Subscriber) -> list[dict[str, Any]]:
    return [m for m in sub.json(lambda t: "/alarms/" in t and not t.endswith("/active"))]


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
        assert sub.payloads("safegw/S1/gw-test/status")[-1] == b"offline"
    finally:
        sub.close()
