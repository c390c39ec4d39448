"""The template publisher end to end, as a site runs it.

The real daemon (``python -m gateway.cli run``, a process of its own) polls a Modbus plant
simulator (another process) and reports, with the shipped Anhui profile
(config/regulators/anhui-db34t4020.yaml: SM4-CBC, HMAC-SM3), over MQTT with TLS to a real
mosquitto. The platform's side (tests/northbound/province.py) decrypts and checks every
message with GmSSL, from the profile's text. A leak is driven on the plant, the alarm
acknowledged over the API; the broker is stopped meanwhile and started again; then the
gateway is restarted. Afterwards the platform holds, read against the daemon's own
journal: the base data once, heartbeats, every reading of the mapped channels and every
alarm transition of GT-1, exactly once, in journal order, with their quality flags.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.core.record import EVENT, SAMPLES
from gateway.store.journal import Journal
from northbound.memiot.adapter import quality_flag
from simulators.province_platform import Province
from tests.fixtures.daemon import DaemonProcess, auth, make_tokens
from tests.fixtures.helpers import wait_until
from tests.fixtures.mosquitto import Broker, Subscriber
from tests.fixtures.notify import secret
from tests.fixtures.province import ENTERPRISE, HAZARD, IV, KEY, PROFILES, SIGN, profile_doc
from tests.fixtures.sims import SimProcess, tcp_plant

pytestmark = [pytest.mark.timeout(240)]

ANHUI = next(p for p in PROFILES if p.stem == "anhui-db34t4020")
CODES = {"GT-1": ("A0001", 1), "TT-1": ("T0001", 2)}  # channel → (platform code, decimals)
#: the alarm transitions the profile sends (its alarms.events), by their journal names
EVENTS = {"raise": "raised", "escalate": "escalated", "ack": "acknowledged", "clear": "cleared"}

PLANT = tcp_plant(
    ("GT-1", 12.5, "input:0", "int16", 0.1),
    ("TT-1", 21.75, "holding:10", "float32", None),
    ("SW-1", 1, "coil:5", "bool", None),
    seed=3,
)


def profile(broker: Broker, tmp: Path) -> dict[str, Any]:
    assert broker.certs is not None
    doc = profile_doc(ANHUI)
    doc.update(enterprise_code=ENTERPRISE, hazard_code=HAZARD, start="oldest", batch_points=20)
    doc["mqtt"] = {"host": broker.host, "port": broker.port, "tls": True, "ca_file": str(broker.certs.ca),
                   "client_id": "gw-anhui", "topic": "prov/data", "qos": 1}
    doc["alarms"]["topic"] = "prov/alarm"
    doc["heartbeat"].update(topic="prov/heartbeat", interval="1s")
    for k, sec in doc["base"].items():
        sec["topic"] = f"prov/base-{k}"
    doc["enterprise"] = {"name": "一号化工", "address": "安徽省某市某路1号"}
    doc["hazard_sources"][0]["name"] = "一号罐区"
    doc["crypto"].update(key_file=str(secret(tmp, "sm4.key", KEY.hex())),
                         iv_file=str(secret(tmp, "sm4.iv", IV.hex())),
                         sign_key_file=str(secret(tmp, "sign.key", SIGN.decode())))
    doc["points"] = [{"channel": ch, "code": code, "decimals": dec} for ch, (code, dec) in CODES.items()]
    return doc


def gateway_yaml(plc: tuple[str, int], state: Path, reg: dict[str, Any]) -> str:
    return f"""
gateway: {{id: gw-anhui-1, site: "{ENTERPRISE}", state_dir: "{state}"}}
devices:
  - name: plc
    protocol: modbus-tcp
    host: {plc[0]}
    port: {plc[1]}
    poll: 200ms
    timeout: 200ms
    retries: 0
    channels:
      - {{name: GT-1, kind: gas, unit: "%LEL", address: input:0, type: int16, scale: 0.1,
          hazard_source: "{HAZARD}", alarms: {{h: 25, hh: 50}}}}
      - {{name: TT-1, kind: temperature, unit: "°C", address: holding:10, type: float32}}
      - {{name: SW-1, kind: status, address: coil:5, type: bool}}
regulators:
  - {json.dumps(reg, ensure_ascii=False)}
api: {{listen: "127.0.0.1:0"}}
"""


def journal_sequence(state: Path, *, upto_cursor: bool) -> list[tuple[str, Any]]:
    """What the platform must hold, from the stopped daemon's journal: every GT-1/TT-1
    reading (each record's by time) and alarm transition, in journal order; up to the
    adapter's cursor, or all the journal holds."""
    names = {0: "GT-1", 1: "TT-1"}
    out: list[tuple[str, Any]] = []
    j = Journal(state / "journal.db")
    try:
        upto, after = j.cursor("regulator.anhui") if upto_cursor else j.last_seq, 0
        while recs := j.read_sync(after, 1000, kinds=(SAMPLES, EVENT)):
            for r in recs:
                if r.seq > upto:
                    return out
                if r.kind == EVENT:
                    ev = r.event()
                    if ev.get("type") == "alarm" and ev.get("channel") in CODES \
                            and ev.get("transition") in EVENTS:
                        out.append(("alarm", (EVENTS[ev["transition"]], CODES[ev["channel"]][0], ev["level"],
                                              _time(ev["ts"]))))
                    continue
                b = r.batch()
                m = b.channel <= 1
                order = np.argsort(b.ts[m], kind="stable")
                for c, t, v, q in zip(b.channel[m][order].tolist(), b.ts[m][order].tolist(),
                                      b.value[m][order].tolist(), b.quality[m][order].tolist(), strict=True):
                    code, dec = CODES[names[c]]
                    out.append(("data", (code, round(v, dec) if math.isfinite(v) else None, _time(t),
                                         quality_flag(q))))
            after = recs[-1].seq
        return out
    finally:
        j.close()


def _time(ts_ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts_ns // 10**9 + 8 * 3600))


def received(prov: Province, sub: Subscriber) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for kind, msg in prov.sort(sub.messages):
        if kind == "data":
            out += [("data", (d["code"], d["value"], d["time"], d["flag"])) for d in prov.items(kind, msg)]
        elif kind == "alarm":
            f = prov.fields(kind, msg)
            out.append(("alarm", (f["event"], f["code"], f["level"], f["time"])))
        else:
            out.append((kind, None))
    return out


def kinds(got: list[tuple[str, Any]], kind: str) -> list[Any]:
    return [v for k, v in got if k == kind]


def test_daemon_reports_base_heartbeats_readings_alarms_across_outage_and_restart(
        sim_factory: Callable[..., SimProcess], mosquitto_factory: Callable[..., Broker],
        tmp_path: Path) -> None:
    broker = mosquitto_factory(tls=True, persistence=True)
    sub = Subscriber(broker, ["prov/#"], client_id="province", clean_session=False)
    plant = sim_factory(PLANT)
    state = tmp_path / "state"
    state.mkdir()
    tokens = make_tokens(state)
    doc = profile(broker, tmp_path)
    prov = Province(doc, KEY, IV, SIGN)
    gw = tmp_path / "gw.yaml"
    gw.write_text(gateway_yaml(plant.tcp("plc"), state, doc))
    d = DaemonProcess(gw)

    def status() -> dict[str, Any]:
        r = httpx.get(d.url + "/status", headers=auth(tokens["viewer"]), timeout=10)
        r.raise_for_status()
        st: dict[str, Any] = r.json()["services"]["regulators"]["anhui"]
        return st

    def got() -> list[tuple[str, Any]]:
        return received(prov, sub)

    def leak() -> list[tuple[str, ...]]:
        """GT-1's high-limit alarm's transitions received."""
        return [a for a in kinds(got(), "alarm") if a[1:3] == ("A0001", "h")]
    try:
        wait_until(lambda: len(kinds(got(), "data")) >= 20 and kinds(got(), "heartbeat"), 30,
                   what="readings and a heartbeat")
        g = got()
        assert [k for k, _ in g[:3]] == ["base.enterprise", "base.hazard_sources", "base.points"]
        base = {k: m for k, m in prov.sort(sub.messages) if k.startswith("base.")}
        assert prov.fields("base.enterprise", base["base.enterprise"])["name"] == "一号化工"
        points = prov.items("base.points", base["base.points"])
        assert [(p["code"], p["h"], p["hh"], p["hazard"]) for p in points] == [
            ("A0001", 25.0, 50.0, HAZARD), ("T0001", None, None, HAZARD)]

        # a leak: GT-1 over its high limit
        plant.control(set="GT-1", value=30.0)
        wait_until(lambda: [a[0] for a in leak()] == ["raised"], 30, what="the alarm raised")

        # the platform's broker goes away; the operator acknowledges, the leak ends
        broker.stop()
        wait_until(lambda: not status()["connected"], 30, what="the adapter to see the broker gone")
        r = httpx.post(d.url + "/alarms/GT-1/ack", json={}, headers=auth(tokens["operator"]), timeout=10)
        assert r.status_code == 200, r.text
        plant.control(set="GT-1", value=None)
        wait_until(lambda: status()["lag"] >= 20, 30, what="a backlog while the broker is away")
        broker.start()
        wait_until(lambda: [a[0] for a in leak()] in (["raised", "acknowledged", "cleared"],
                                                      ["raised", "cleared", "acknowledged"]), 60,
                   what="the acknowledgement and the clearing after the outage")

        # the gateway restarts: the unchanged base data is not sent again
        n_beats = len(kinds(got(), "heartbeat"))
        assert d.stop() == 0
        d = DaemonProcess(gw)
        n_data = len(kinds(got(), "data"))
        wait_until(lambda: len(kinds(got(), "data")) >= n_data + 20
                   and len(kinds(got(), "heartbeat")) > n_beats, 30, what="readings after the restart")
        assert d.stop() == 0

        want = journal_sequence(state, upto_cursor=True)
        every = journal_sequence(state, upto_cursor=False)
        assert len(want) >= 80

        def sent() -> list[tuple[str, Any]]:
            return [(k, v) for k, v in got() if k in ("data", "alarm")]
        wait_until(lambda: len(sent()) >= len(want), 30, what="the broker to hand on the last messages")
        g = got()
        assert prov.refused == []
        assert [k for k, _ in g if k.startswith("base.")] == ["base.enterprise", "base.hazard_sources",
                                                              "base.points"], "base data once"
        # a stop that outlasts its drain may leave the last message sent but not yet marked:
        # it is then beyond the cursor, never twice
        got_all = sent()
        assert got_all == every[:len(got_all)], "every reading and alarm exactly once, in journal order"
        assert {c for c, *_ in kinds(want, "data")} == {"A0001", "T0001"}  # SW-1 has no mapping
    finally:
        d.stop()
        sub.close()
