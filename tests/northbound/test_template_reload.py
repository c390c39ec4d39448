"""The template publisher across live config reloads, in the daemon: the reload restarts
the ``regulators`` service (gateway/reload.py), and the restarted adapter resends exactly
the kind of base data whose content changed (the state file's hashes), nothing else.

The in-thread daemon polls a Modbus plant simulator (its own process) and publishes with
the shipped HTTPS profile (config/regulators/beijing-db11.yaml, in batch mode) to a real
TLS receiver; the platform's side (simulators/province_platform.py: GmSSL decrypts and
checks the SM3 signature) opens every message.

- At start: enterprise, hazard sources and point list, once each. GT-1's limits come from
  its ``preset: gbt50493`` (GB/T 50493-2019 §5.5.2, combustible gas: level 1 ≤ 25 %LEL,
  level 2 ≤ 50 %LEL), not from an ``alarms:`` of its own.
- A reload changing TT-1's high limit: the point list goes again (with the new limit), and
  neither the enterprise nor the hazard list.
- A reload renaming the hazard source: the hazard list goes again, and neither the point
  list nor the enterprise.
- A reload changing nothing the platform sees (SW-1, an unmapped channel): nothing again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from simulators.province_platform import HttpsReceiver, Province
from tests.fixtures.daemon import Daemon
from tests.fixtures.helpers import wait_until
from tests.fixtures.notify import secret
from tests.fixtures.province import ENTERPRISE, HAZARD, IV, KEY, PROFILES, SIGN, profile_doc
from tests.fixtures.sims import tcp_plant

pytestmark = [pytest.mark.timeout(180)]

BEIJING = next(p for p in PROFILES if p.stem == "beijing-db11")
PATHS = ["/api/v1/sensing/realtime", "/api/v1/sensing/alarm", "/api/v1/heartbeat", "/api/v1/base/enterprise",
         "/api/v1/base/hazard", "/api/v1/base/target"]
BASE = ("base.enterprise", "base.hazard_sources", "base.points")

PLANT = tcp_plant(
    ("GT-1", 2.5, "input:0", "int16", 0.1),
    ("TT-1", 21.75, "holding:10", "float32", None),
    ("SW-1", 1, "coil:5", "bool", None),
    seed=4,
)


def _urls(x: Any, base: str) -> Any:
    if isinstance(x, dict):
        return {k: _urls(v, base) for k, v in x.items()}
    if isinstance(x, list):
        return [_urls(v, base) for v in x]
    return x.replace("https://<platform host>", base) if isinstance(x, str) else x


def profile(recv: HttpsReceiver, tmp: Path, hazard_name: str) -> dict[str, Any]:
    doc: dict[str, Any] = _urls(profile_doc(BEIJING), recv.base)
    doc["http"].update(ca_file=str(recv.ca), timeout="2s", backoff_max="300ms")
    doc.pop("interval", None)
    doc.update(mode="batch", start="end", batch_points=50, heartbeat=None, enterprise_code=ENTERPRISE)
    doc["enterprise"] = {"name": "一号化工", "address": "北京市某区某路1号"}
    doc["hazard_sources"][0]["name"] = hazard_name
    doc["crypto"].update(key_file=str(secret(tmp, "sm4.key", KEY.hex())),
                         iv_file=str(secret(tmp, "sm4.iv", IV.hex())),
                         sign_key_file=str(secret(tmp, "sign.key", SIGN.decode())))
    doc["points"] = [{"channel": "GT-1", "code": "A0001", "decimals": 1},
                     {"channel": "TT-1", "code": "T0001", "decimals": 2}]
    return doc


def gateway_yaml(plc: tuple[str, int], state: Path, reg: dict[str, Any], *, tt_h: float,
                 sw_desc: str = "valve") -> str:
    return f"""
gateway: {{id: gw-bj-reload, site: "{ENTERPRISE}", state_dir: "{state}"}}
devices:
  - name: plc
    protocol: modbus-tcp
    host: {plc[0]}
    port: {plc[1]}
    poll: 300ms
    timeout: 300ms
    retries: 0
    channels:
      - {{name: GT-1, kind: gas, gas: combustible, unit: "%LEL", address: input:0, type: int16, scale: 0.1,
          hazard_source: "{HAZARD}", preset: gbt50493}}
      - {{name: TT-1, kind: temperature, unit: "°C", address: holding:10, type: float32,
          alarms: {{h: {tt_h}}}}}
      - {{name: SW-1, kind: status, address: coil:5, type: bool, description: "{sw_desc}"}}
regulators:
  - {json.dumps(reg, ensure_ascii=False)}
"""


def test_a_reload_resends_only_the_changed_kind_of_base_data(sim_factory: Any, tmp_path: Path) -> None:
    plant = sim_factory(PLANT)
    recv = HttpsReceiver(tmp_path / "certs", PATHS)
    state = tmp_path / "state"
    doc = profile(recv, tmp_path, "一号罐区")
    prov = Province(doc, KEY, IV, SIGN)

    def got() -> list[tuple[str, dict[str, Any]]]:
        return prov.sort(list(recv.messages))

    def kinds_from(n: int) -> list[str]:
        return [k for k, _ in got()[n:]]

    def base_from(kinds: list[str]) -> list[str]:
        """The base data among messages. Alarms may come between them: under load a poll
        can overrun its timeout and a channel go stale and back (a raise and a clear)."""
        assert set(kinds) <= {"data", "alarm", *BASE}, kinds
        return [k for k in kinds if k in BASE]

    def settled(n: int) -> bool:
        """Readings arrived after message n: the restarted adapter is past its base data
        (sent before anything else at start)."""
        return "data" in kinds_from(n)

    d = Daemon(gateway_yaml(plant.tcp("plc"), state, doc, tt_h=60)).start()

    def reload(text: str) -> None:
        assert d.gw is not None
        res = d.run(d.gw.reload_config(text, source="test"), 30)
        assert res.ok, res.error
    try:
        wait_until(lambda: settled(0), 30, what="base data, then readings")
        first = got()
        assert prov.refused == []
        assert base_from([k for k, _ in first]) == list(BASE)
        points = {p["code"]: p for p in prov.items(*next(m for m in first if m[0] == "base.points"))}
        # GT-1's limits from its preset (GB/T 50493-2019 §5.5.2), TT-1's own alarms:
        assert (points["A0001"]["h"], points["A0001"]["hh"]) == (25.0, 50.0)
        assert (points["T0001"]["h"], points["T0001"]["hh"]) == (60.0, None)

        # 1. a mapped point's limit changes: the point list again, only it
        n = len(first)
        reload(gateway_yaml(plant.tcp("plc"), state, doc, tt_h=70))
        wait_until(lambda: "base.points" in kinds_from(n) and settled(n + kinds_from(n).index("base.points")),
                   30, what="the point list again, then readings")
        after = got()[n:]
        assert base_from([k for k, _ in after]) == ["base.points"]
        points = {p["code"]: p for p in prov.items(*next(m for m in after if m[0] == "base.points"))}
        assert points["T0001"]["h"] == 70.0 and points["A0001"]["hh"] == 50.0

        # 2. the hazard source is renamed: the hazard list again, only it
        n = len(got())
        doc2 = profile(recv, tmp_path, "一号罐区（东）")
        reload(gateway_yaml(plant.tcp("plc"), state, doc2, tt_h=70))
        wait_until(lambda: "base.hazard_sources" in kinds_from(n)
                   and settled(n + kinds_from(n).index("base.hazard_sources")), 30,
                   what="the hazard list again, then readings")
        after = got()[n:]
        assert base_from([k for k, _ in after]) == ["base.hazard_sources"]
        hazards = prov.items(*next(m for m in after if m[0] == "base.hazard_sources"))
        assert hazards[0]["code"] == HAZARD and hazards[0]["name"] == "一号罐区（东）"

        # 3. a change the platform does not see (an unmapped channel's description): the
        # channel table changed, so the service restarts, and sends no base data
        assert d.gw is not None
        before = d.gw.service_of("regulators")
        n = len(got())
        reload(gateway_yaml(plant.tcp("plc"), state, doc2, tt_h=70, sw_desc="valve 2"))
        assert d.gw.service_of("regulators") is not before  # restarted: the channel table changed
        # readings after the reload come from the restarted adapter (the old one was stopped
        # before the swap): had it resent base data, that would have come before them
        wait_until(lambda: sum(1 for k in kinds_from(n) if k == "data") >= 3, 30,
                   what="readings after the reload")
        assert base_from(kinds_from(n)) == []
        assert prov.refused == []
    finally:
        d.stop()
        recv.stop()
