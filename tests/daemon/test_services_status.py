"""``/status`` shows every service's ``stats()``: the real daemon with MQTT (a real
mosquitto) and InfluxDB (a real influxd) configured reports their counters, not ``{}``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.fixtures.daemon import Daemon, auth, make_tokens
from tests.fixtures.helpers import wait_until
from tests.fixtures.influxd import Influxd, unique_db
from tests.fixtures.mosquitto import Broker


def test_status_shows_mqtt_and_influxdb_counters(tmp_path: Path, influxd: Influxd, mosquitto: Broker) -> None:
    tokens = make_tokens(tmp_path)
    d = Daemon(
        f'gateway: {{id: gw-st, site: "S", state_dir: "{tmp_path}"}}\n'
        'api: {listen: "127.0.0.1:0"}\n'
        f"mqtt: {json.dumps(mosquitto.section())}\n"
        f'influxdb: {{url: "{influxd.url}", database: {unique_db("status")}, flush_every: 100ms}}\n'
    ).start()
    try:
        assert d.gw is not None
        journal = d.gw.journal

        def services() -> dict[str, Any]:
            r = httpx.get(d.url + "/status", headers=auth(tokens["viewer"]))
            assert r.status_code == 200, r.text
            doc: dict[str, Any] = r.json()["services"]
            return doc

        # the channel table is journaled at start: both consumers deliver it and say so
        wait_until(lambda: services()["influxdb"].get("points_written", 0) >= 1
                   and services()["mqtt"].get("connected") is True
                   and services()["mqtt"].get("cursor", 0) >= journal.last_seq >= 1, 20,
                   what="influxdb and mqtt counters in /status")
        st = services()
        influx, mqtt = st["influxdb"], st["mqtt"]
        assert influx["state"] == "ok" and influx["lag"] == 0
        assert influx["cursor"] == journal.cursor("influxdb")
        assert influx["requests"] >= 1 and influx["last_error"] is None  # (its 404 made the database)
        assert mqtt["prefix"] == "safegw/S/gw-st" and mqtt["cursor"] == journal.cursor("mqtt")
        assert mqtt["published"] == 0 and mqtt["commands"] == 0
    finally:
        d.stop()
