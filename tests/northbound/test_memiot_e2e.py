"""mem-iot end to end: the daemon polling a simulated Modbus plant (a separate process),
its ``regulators:`` mem-iot adapter posting over HTTPS to the receiving simulator
(simulators/memiot_platform.py, decrypting with GmSSL), secrets in 0600 files.

The platform is stopped for a while (its connections dropped) and started again on the
same port: afterwards every reading of the mapped channels the journal holds arrived
exactly once, in journal order, with its quality flag; the unmapped channel never; the
adapter shows in /status and /metrics.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.core.record import SAMPLES
from northbound.memiot.adapter import quality_flag
from simulators.memiot_platform import MemIotReceiver
from tests.fixtures.daemon import Daemon, auth, make_tokens
from tests.fixtures.helpers import wait_until
from tests.fixtures.sims import plc_device, tcp_plant

KEY = "8d6c1f3b2a5e4d7c9b0a1f2e3d4c5b6a"
IV = "00000000000000000000000000000000"
ENTERPRISE = "91340100MA2XXXXX0X"

PLANT = tcp_plant(
    ("DUST-1", 2.5, "input:0", "int16", 0.1),
    ("DUST-2", 21.75, "holding:10", "float32", None),
    ("SW-1", 1, "coil:5", "bool", None),
    seed=5,
)

#: the gateway's channels of the plant
CHANNELS = ('{name: DUST-1, kind: dust, unit: "mg/m3", address: input:0, type: int16, scale: 0.1}',
            '{name: DUST-2, kind: temperature, unit: "°C", address: holding:10, type: float32}',
            "{name: SW-1, kind: status, address: coil:5, type: bool}")


def secret(d: Path, name: str, text: str) -> Path:
    p = d / name
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    return p


def gateway_yaml(plc: tuple[str, int], url: str, ca: Path, state: Path, secrets: Path) -> str:
    return f"""
gateway: {{id: gw-dust, site: "{ENTERPRISE}", state_dir: "{state}"}}
{plc_device(plc, *CHANNELS)}
regulators:
  - type: mem-iot
    name: dust
    url: "{url}"
    appid: "APP-7"
    secret_file: "{secrets / 'secret'}"
    key_file: "{secrets / 'key'}"
    iv_file: "{secrets / 'iv'}"
    ca_file: "{ca}"
    enterprise_code: "{ENTERPRISE}"
    device_code: "GW-01"
    start: oldest
    batch_points: 20
    timeout: 2s
    backoff_max: 500ms
    points:
      - {{channel: DUST-1, code: FC001, scale: 1000, decimals: 0}}   # g/m3 → mg/m3: a unit conversion
      - {{channel: DUST-2, code: FT001, decimals: 2}}
api: {{listen: "127.0.0.1:0"}}
"""


def receiver(port: int, certs: Path) -> MemIotReceiver:
    return MemIotReceiver(appid="APP-7", secret="app-secret-7", key=bytes.fromhex(KEY), iv=bytes.fromhex(IV),
                          enterprise=ENTERPRISE, port=port, cert_dir=certs).start()


def journal_readings(d: Daemon, upto: int) -> list[tuple[str, str, str]]:
    """(code, time, flag) of every DUST-1/DUST-2 sample up to record ``upto``, in the
    journal's order (each record's samples by time), read here from the journal."""
    assert d.gw is not None
    out: list[tuple[str, str, str]] = []
    after = 0
    while after < upto:
        recs = d.gw.journal.read_sync(after, 1000, kinds=(SAMPLES,))
        if not recs:
            break
        for r in recs:
            if r.seq > upto:
                return out
            b = r.batch()
            m = b.channel <= 1
            order = np.argsort(b.ts[m], kind="stable")
            for c, t, q in zip(b.channel[m][order].tolist(), b.ts[m][order].tolist(),
                               b.quality[m][order].tolist(), strict=True):
                tm = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t // 10**9 + 8 * 3600))
                out.append(("FC001" if c == 0 else "FT001", tm, quality_flag(q)))
        after = recs[-1].seq
    return out


def stats(d: Daemon) -> dict[str, Any]:
    assert d.gw is not None
    svc = next(s for s in d.gw.services if s.name == "regulators")
    out: dict[str, Any] = svc.stats()["dust"]
    return out


@pytest.mark.timeout(120)
def test_daemon_to_platform_with_outage(sim_factory: Any, tmp_path: Path) -> None:
    plant = sim_factory(PLANT)
    certs, secrets, state = tmp_path / "certs", tmp_path / "secrets", tmp_path / "state"
    secrets.mkdir()
    secret(secrets, "secret", "app-secret-7")
    secret(secrets, "key", KEY)
    secret(secrets, "iv", IV)
    platform = receiver(0, certs)
    port = platform.port
    assert platform.ca is not None
    tokens = make_tokens(state)
    d = Daemon(gateway_yaml(plant.tcp("plc"), platform.url, platform.ca, state, secrets)).start()
    try:
        wait_until(lambda: len(platform.readings) >= 20, 20, what="live readings")
        platform.stop()
        wait_until(lambda: stats(d)["state"] == "failing", 20, what="the adapter to see the platform gone")
        assert d.gw is not None
        seq0 = d.gw.journal.last_seq
        wait_until(lambda: d.gw is not None and d.gw.journal.last_seq >= seq0 + 10, 20, what="polls")
        first = platform.readings
        platform = receiver(port, certs)
        target = d.gw.journal.last_seq
        wait_until(lambda: stats(d)["cursor"] >= target, 30, what="the backlog after the outage")
        assert stats(d)["state"] == "ok" and platform.refused == []
        cursor = stats(d)["cursor"]
        got = first + list(platform.readings)  # live data goes on: compare against the journal now
        upto_cursor = journal_readings(d, cursor)
        every = journal_readings(d, d.gw.journal.last_seq)
        seen = [(r["code"], r["time"], r["quality"]) for r in got]
        assert len(seen) >= len(upto_cursor) >= 40  # 20 before the outage, 10 polls × 2 during it
        assert seen == every[:len(seen)], "exactly once, in journal order, none missing"
        assert {r["code"] for r in got} == {"FC001", "FT001"}  # SW-1 has no mapping: never sent
        dust = [r["value"] for r in got if r["code"] == "FC001" and r["value"] is not None]
        assert dust and all(v == round(v) for v in dust)  # ×1000, no decimals
        with httpx.Client(base_url=d.url, headers=auth(tokens["viewer"]), timeout=10) as http:
            st = http.get("/status").json()["services"]["regulators"]["dust"]
            assert st["name"] == "regulator.dust" and st["unmapped_channels"] == 1 and st["failures"] >= 1
            assert 'safegw_regulator_messages_sent_total{adapter="dust"}' in http.get("/metrics").text
    finally:
        d.stop()
        platform.stop()
