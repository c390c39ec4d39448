"""Hostile payloads on the MQTT command topics, through a real mosquitto: every payload
gets a ``cmd/result``, an oversized one is refused before it is parsed, ``request_id``
is echoed only as short text, log lines carry no unbounded string from a payload, and
nothing raises in the loop's callbacks meanwhile."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.config import loads
from tests.fixtures.mosquitto import Broker, Subscriber
from tests.fixtures.mqttgw import gateway_yaml, run_gateway
from uplink.mqtt import MAX_COMMAND_BYTES, MAX_REQUEST_ID

pytestmark = pytest.mark.timeout(60)

PREFIX = "safegw/S1/gw-test"


async def test_hostile_command_payloads(mosquitto: Broker, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
    sub = Subscriber(mosquitto, [f"{PREFIX}/cmd/result"])
    gw = Gateway(loads(gateway_yaml(tmp_path / "state", mosquitto.section())))
    task = await run_gateway(gw)
    op = mosquitto.client("console")
    op.connect(mosquitto.host, mosquitto.port)
    op.loop_start()
    huge = "x" * 5000  # under the size limit: these are parsed, and their refusals quote them
    cmd = {"channel": "GT-1", "operator": "Zhang San"}
    payloads: list[tuple[str, bytes]] = [
        ("ack", json.dumps({**cmd, "comment": "a" * 70_000, "request_id": "big"}).encode()),  # over the limit
        ("ack", json.dumps({**cmd, "request_id": "r" * (MAX_REQUEST_ID + 1)}).encode()),
        ("ack", json.dumps({**cmd, "request_id": {"a": 1}}).encode()),
        ("ack", b'{"channel": "GT-1", "operator": "x", "request_id": ' + b"[" * 900 + b"]" * 900 + b"}"),
        ("shelve", json.dumps({"channel": [huge], "operator": huge, "request_id": "long-channel"}).encode()),
        ("unshelve", json.dumps({"channel": huge, "operator": "Li Si", "request_id": "c"}).encode()),
        ("ack", b"\xff\xfe junk"),
        ("ack", b"[" * 5000),
        ("ack", b"9" * 5000),
        ("ack", json.dumps({**cmd, "request_id": "fine-1"}).encode()),
    ]
    try:
        for verb, payload in payloads:
            op.publish(f"{PREFIX}/cmd/{verb}", payload, qos=1)
        await asyncio.to_thread(sub.wait_for, lambda s: len(s.json()) >= len(payloads), 15,
                                "a result for every payload")
        results = sub.json()
        assert len(results) == len(payloads)
        by_id = {r["request_id"]: r for r in results if r.get("request_id")}
        assert by_id["fine-1"]["ok"] is True
        big = results[0]
        assert big["ok"] is False and big["request_id"] is None and str(MAX_COMMAND_BYTES) in big["error"]
        for r in results[1:4]:  # the request_id is refused (not echoed), and the result says why
            assert r["request_id"] is None and "request_id" in r["request_id_error"], r
        assert by_id["long-channel"]["ok"] is False and len(by_id["long-channel"]["error"]) <= 1000
        assert by_id["c"]["ok"] is False
        assert all(len(json.dumps(r)) < 4096 for r in results), "a result echoed an unbounded string"
        assert not loop_errors, loop_errors
        long_lines = [r.getMessage()[:200] for r in caplog.records if len(r.getMessage()) > 1000]
        assert not long_lines, long_lines
        assert gw.services[0].stats()["commands"] >= 1
    finally:
        op.disconnect()
        op.loop_stop()
        sub.close()
        gw.stop()
        await task
