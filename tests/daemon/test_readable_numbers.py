"""Numbers as a person reads them, through the real paths (issue 15, item 7): a Modbus
simulator serves a float32 register (19.31 → 19.309999465942383 once in a float32), an
int16 × 0.1 (222 → 22.200000000000003), a uint32 × 0.001 and a small float32; the real
daemon polls it and

- MQTT (a real mosquitto) carries alarm events, ``alarms/active`` and ``values`` with the
  numbers at their shortest float32 form / the scale's resolution, and health alarms
  with their own fields in seconds (a device that stops answering: ``bad``);
- the API the status page reads (/channels, /channels/NAME, /alarms) shows the same;
- ``safegw read`` (the CLI, table and --json), the demo's table and ``safegw history``'s
  table show the same;
- the journal keeps the exact values.

The expected numbers are the decimals written in the simulator's config: what safegw
renders must be them, not safegw's own arithmetic."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.demo import render
from tests.fixtures.daemon import Daemon, auth, make_tokens
from tests.fixtures.mosquitto import Broker, Subscriber
from tests.fixtures.sims import SimProcess

ROOT = Path(__file__).resolve().parents[2]

SIM = """
seed: 3
tick: 100ms
signals:
  TT-1: {base: 19.31}
  GT-1: {base: 22.2}
  FT-1: {base: 1234.567}
  RT-1: {base: 0.1234}
  PT-1: {base: 1.5}
devices:
  - name: plc
    protocol: modbus-tcp
    port: 0
    units:
      - unit: 1
        points:
          - {signal: TT-1, address: holding:10, type: float32}
          - {signal: GT-1, address: input:0, type: int16, scale: 0.1}
          - {signal: FT-1, address: input:2, type: uint32, scale: 0.001}
          - {signal: RT-1, address: holding:20, type: float32}
  - name: plc2
    protocol: modbus-tcp
    port: 0
    units:
      - unit: 1
        points:
          - {signal: PT-1, address: holding:0, type: float32}
"""

#: what a person must read: the decimals of the simulator's config
SHOWN = {"TT-1": 19.31, "GT-1": 22.2, "FT-1": 1234.567, "RT-1": 0.1234, "PT-1": 1.5}
#: what the journal keeps: the exact values as read
EXACT = {"TT-1": float(np.float32(19.31)), "GT-1": 222 * 0.1}
#: the float artifacts that must not reach a person
ARTIFACTS = ("19.309999", "22.200000000000003", "0.12340000", "1234.5670")


def gateway_yaml(sim: SimProcess, state: Path, mqtt: dict[str, Any] | None) -> str:
    host, port = sim.tcp("plc")
    host2, port2 = sim.tcp("plc2")
    text = f"""
gateway: {{id: gw-num, site: "S1", state_dir: "{state}"}}
devices:
  - name: plc
    protocol: modbus-tcp
    host: {host}
    port: {port}
    poll: 200ms
    timeout: 200ms
    retries: 0
    channels:
      - {{name: TT-1, kind: temperature, unit: "°C", address: holding:10, type: float32,
          alarms: {{h: 19.0, frozen: 1s}}}}
      - {{name: GT-1, kind: gas, unit: "%LEL", address: input:0, type: int16, scale: 0.1, alarms: {{h: 20}}}}
      - {{name: FT-1, kind: other, unit: "m³/h", address: input:2, type: uint32, scale: 0.001}}
      - {{name: RT-1, kind: radiation, unit: "µSv/h", address: holding:20, type: float32}}
  - name: plc2
    protocol: modbus-tcp
    host: {host2}
    port: {port2}
    poll: 200ms
    timeout: 200ms
    retries: 0
    channels:
      - {{name: PT-1, kind: pressure, unit: MPa, address: holding:0, type: float32,
          alarms: {{bad_for: 600ms}}}}
api: {{listen: "127.0.0.1:0"}}
"""
    if mqtt is not None:
        text += "mqtt: " + json.dumps(mqtt) + "\n"
    return text


def _first(items: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((m for m in items if all(m.get(k) == v for k, v in match.items())), None)


def test_mqtt_api_and_demo_show_readable_numbers(sim_factory: Callable[..., SimProcess], mosquitto: Broker,
                                                 tmp_path: Path) -> None:
    sim = sim_factory(SIM)
    state = tmp_path / "state"
    state.mkdir()
    tokens = make_tokens(state)
    sub = Subscriber(mosquitto, ["safegw/#"])
    d = Daemon(gateway_yaml(sim, state, mosquitto.section(values_every="300ms"))).start()
    http = httpx.Client(base_url=d.url, timeout=10, headers=auth(tokens["viewer"]))
    try:
        def alarms() -> list[dict[str, Any]]:
            return sub.json(lambda t: "/alarms/" in t and not t.endswith("/active"))

        # ---- MQTT: a limit alarm on a float32 and on a scaled int16, a frozen float32
        sub.wait_for(lambda s: all(_first(alarms(), channel=c, rule=r) for c, r in
                                   (("TT-1", "limit"), ("GT-1", "limit"), ("TT-1", "frozen"))),
                     20, "limit and frozen alarms")
        tt = _first(alarms(), channel="TT-1", rule="limit")
        gt = _first(alarms(), channel="GT-1", rule="limit")
        fz = _first(alarms(), channel="TT-1", rule="frozen")
        assert tt is not None and gt is not None and fz is not None
        assert (tt["value"], tt["limit"], tt["unit"]) == (19.31, 19.0, "°C")
        assert (gt["value"], gt["limit"], gt["unit"]) == (22.2, 20.0, "%LEL")
        # frozen: the reading that stopped moving, in the channel's unit; its threshold in seconds
        assert (fz["value"], fz["limit"], fz["threshold_s"], fz["unit"]) == (19.31, None, 1.0, "°C")
        raw = b"\n".join(p for t, p, _r, _ts in sub.messages if "/alarms/" in t)
        for junk in ARTIFACTS:
            assert junk.encode() not in raw, junk
        assert b'"value":19.31,' in raw and b'"value":22.2,' in raw

        # ---- the far end stops answering: a bad alarm carries seconds, never a process value
        sim.control(fault="plc2", kind="silent")
        sub.wait_for(lambda s: _first(alarms(), channel="PT-1", rule="bad", transition="raise"), 20,
                     "the bad alarm of PT-1")
        bad = _first(alarms(), channel="PT-1", rule="bad", transition="raise")
        assert bad is not None
        assert bad["value"] is None and bad["limit"] is None and bad["threshold_s"] == 0.6
        assert bad["duration_s"] >= 0.6 and bad["duration_s"] == round(bad["duration_s"], 3)
        stale = _first(alarms(), channel="PT-1", rule="stale")
        if stale is not None:  # a backing-off poller may also leave it stale: same shape
            assert stale["value"] is None and stale["limit"] is None and stale["threshold_s"] > 0
            assert stale["duration_s"] >= stale["threshold_s"]

        # retained alarms/active and the live values, rendered too
        def active_doc() -> dict[str, Any] | None:
            docs = sub.json(lambda t: t.endswith("/alarms/active"))
            return docs[-1] if docs else None

        sub.wait_for(lambda s: (a := active_doc()) is not None
                     and _first(a["alarms"], channel="PT-1", rule="bad") is not None, 20,
                     "alarms/active with the bad alarm")
        act = active_doc()
        assert act is not None
        assert _first(act["alarms"], channel="TT-1", rule="limit")["value"] == 19.31  # type: ignore[index]
        abad = _first(act["alarms"], channel="PT-1", rule="bad")
        assert abad is not None and abad["value"] is None and abad["threshold_s"] == 0.6
        assert abad["duration_s"] > 0
        def last_values() -> dict[str, Any] | None:
            docs = sub.json(lambda t: t.endswith("/values"))
            return docs[-1]["values"] if docs else None

        sub.wait_for(lambda s: (v := last_values()) is not None and v["TT-1"][0] is not None, 10,
                     "live values on <prefix>/values")
        last = last_values()
        assert last is not None
        assert {c: last[c][0] for c in ("TT-1", "GT-1", "FT-1", "RT-1")} == {
            c: SHOWN[c] for c in ("TT-1", "GT-1", "FT-1", "RT-1")}

        # ---- the API the status page reads
        r = http.get("/channels")
        assert r.status_code == 200, r.text
        for junk in ARTIFACTS:
            assert junk not in r.text, junk
        shown = {c["name"]: c["value"] for c in r.json()["channels"]}
        assert {c: shown[c] for c in ("TT-1", "GT-1", "FT-1", "RT-1")} == {
            c: SHOWN[c] for c in ("TT-1", "GT-1", "FT-1", "RT-1")}
        one = http.get("/channels/TT-1").json()
        assert one["value"] == 19.31 and _first(one["alarms"], rule="limit")["value"] == 19.31  # type: ignore[index]
        al = http.get("/alarms", params={"history": 200}).json()
        assert _first(al["active"], channel="GT-1", rule="limit")["value"] == 22.2  # type: ignore[index]
        pbad = _first(al["active"], channel="PT-1", rule="bad")
        assert pbad is not None and pbad["value"] is None and pbad["threshold_s"] == 0.6
        assert _first(al["history"], channel="TT-1", rule="limit", transition="raise")["value"] == 19.31  # type: ignore[index]
        hist_text = json.dumps(al)
        for junk in ARTIFACTS:
            assert junk not in hist_text, junk
        # an operator's acknowledgement answers with the event as read; the journal has it exact
        op = httpx.Client(base_url=d.url, timeout=10, headers=auth(tokens["operator"]))
        try:
            r = op.post("/alarms/TT-1/ack", json={"rule": "limit"})
        finally:
            op.close()
        assert r.status_code == 200, r.text
        [ack] = r.json()["events"]
        assert (ack["transition"], ack["value"], ack["who"]) == ("ack", 19.31, "operator-user")
        jack = _first(d.events("alarm"), channel="TT-1", rule="limit", transition="ack")
        assert jack is not None and jack["value"] == EXACT["TT-1"]

        # ---- the demo's table (the same renderer the demo runs, on this daemon)
        async def table() -> str:
            assert d.gw is not None
            return render(d.gw, d.gw.clock(), color=False)

        rows = {ln.split()[0]: ln.split() for ln in d.run(table()).splitlines() if ln.split()}
        assert rows["TT-1"][2] == "19.31" and rows["GT-1"][2] == "22.2"
        assert rows["FT-1"][2] == "1234.567" and rows["RT-1"][2] == "0.1234"

        # ---- the journal keeps the exact values
        journal = d.events("alarm")
        jt = _first(journal, channel="TT-1", rule="limit", transition="raise")
        jg = _first(journal, channel="GT-1", rule="limit", transition="raise")
        assert jt is not None and jg is not None
        assert jt["value"] == EXACT["TT-1"] and jg["value"] == EXACT["GT-1"]
        assert jt["value"] != 19.31 and jg["value"] != 22.2
    finally:
        http.close()
        d.stop()
        sub.close()

    # ---- `safegw history` over the same journal: the table as read, --format json exact
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(gateway_yaml(sim, state, None))
    window = ["--from=-1h", "--to=now"]
    p = subprocess.run([sys.executable, "-m", "gateway.cli", "history", "-c", str(cfg), "TT-1", *window],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    values = [ln.split()[1] for ln in p.stdout.splitlines()[1:] if ln.split()[-1] == "good"]
    assert values and set(values) == {"19.31"}, p.stdout[:500]
    pj = subprocess.run([sys.executable, "-m", "gateway.cli", "history", "-c", str(cfg), "TT-1", *window,
                         "--format", "json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    rows = json.loads(pj.stdout)["rows"]
    assert rows and {r["value"] for r in rows if r["value"] is not None} == {EXACT["TT-1"]}


def _read_cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "read", "-c", str(cfg), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_read_shows_readable_numbers(sim_factory: Callable[..., SimProcess], tmp_path: Path) -> None:
    sim = sim_factory(SIM)
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(gateway_yaml(sim, tmp_path / "state", None))
    p = _read_cli(cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = {ln.split()[0]: ln.split() for ln in p.stdout.splitlines() if ln.split()}
    for name, want in SHOWN.items():
        assert rows[name][3] == repr(want), (name, rows[name])  # 1234.567, not 1234.57
    for junk in ARTIFACTS:
        assert junk not in p.stdout, junk
    pj = _read_cli(cfg, "--json")
    assert pj.returncode == 0, pj.stdout + pj.stderr
    assert {c["name"]: c["value"] for c in json.loads(pj.stdout)["channels"]} == SHOWN

    # the far end dying: the channel reads "-", the others keep their numbers
    sim.control(fault="plc2", kind="silent")
    p = _read_cli(cfg)
    assert p.returncode == 1, p.stdout + p.stderr
    rows = {ln.split()[0]: ln.split() for ln in p.stdout.splitlines() if ln.split()}
    assert rows["PT-1"][3] == "-" and rows["PT-1"][-1] == "timeout" and rows["TT-1"][3] == "19.31"


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_read_of_a_value_that_cannot_be_shown(sim_factory: Callable[..., SimProcess], tmp_path: Path,
                                              bad: str) -> None:
    """A float32 register holding NaN or infinity (the device's own fault): no number is
    made up for it, the channel reads bad, and the others keep theirs."""
    sim = sim_factory(SIM)
    sim.control(set="RT-1", value=float(bad))
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(gateway_yaml(sim, tmp_path / "state", None))
    pj = _read_cli(cfg, "--json", "--device", "plc")
    doc = json.loads(pj.stdout)
    rt = _first(doc["channels"], name="RT-1")
    assert rt is not None and rt["value"] is None and rt["quality"].startswith("bad"), rt
    assert _first(doc["channels"], name="TT-1")["value"] == 19.31  # type: ignore[index]
