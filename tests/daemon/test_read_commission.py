"""``safegw read``: one poll of every device, printed for the commissioning engineer."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway.commission import read_once
from gateway.config import loads
from tests.fixtures.helpers import free_port
from tests.fixtures.sims import SimProcess, gateway_yaml

ROOT = Path(__file__).resolve().parents[2]


async def test_table_of_every_channel(modbus_plant: SimProcess, tmp_path: Path) -> None:
    out = io.StringIO()
    code = await read_once(loads(gateway_yaml(modbus_plant, tmp_path)), out=out)
    text = out.getvalue()
    assert code == 0, text
    lines = text.splitlines()
    assert lines[0].split() == ["CHANNEL", "DEVICE", "KIND", "VALUE", "UNIT", "QUALITY"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:6]}
    assert rows["TT-1"] == ["TT-1", "tcp-dev", "temperature", "21.75", "°C", "good"]
    assert rows["SW-1"][3] == "1"
    assert rows["LT-1"][:4] == ["LT-1", "rtu-bus", "level", "6.5"]
    assert "2/2 devices ok" in text


async def test_failures_are_named_and_exit_1(modbus_plant: SimProcess, tmp_path: Path) -> None:
    host, port = modbus_plant.tcp("tcp-dev")
    text = gateway_yaml(modbus_plant, tmp_path) + f"""
  - name: nowhere
    protocol: modbus-tcp
    host: 127.0.0.1
    port: {free_port()}
    channels: [{{name: X-1, kind: other, address: holding:0}}]
  - name: half
    protocol: modbus-tcp
    host: {host}
    port: {port}
    max_gap: 0
    channels:
      - {{name: OK-1, kind: other, address: holding:10, type: float32, byte_order: CDAB}}
      - {{name: MISSING-1, kind: other, address: holding:5000}}
"""
    modbus_plant.control(fault="rtu-bus", unit=2, kind="silent")
    out = io.StringIO()
    code = await read_once(loads(text), out=out)
    report = out.getvalue()
    assert code == 1
    assert "device nowhere: FAILED: cannot connect to 127.0.0.1" in report
    assert "device half: unit 1 holding:5000: exception 2 (illegal data address)" in report
    assert "device rtu-bus: unit 2 input:4: unit 2: no answer" in report
    rows = {ln.split()[0]: ln for ln in report.splitlines() if ln and not ln.startswith("device")}
    assert rows["OK-1"].endswith(" good") and rows["MISSING-1"].endswith(" bad: config")
    assert rows["LT-1"].endswith(" bad: timeout") and rows["X-1"].endswith(" bad: comms")
    assert rows["MISSING-1"].split()[3] == "-"
    assert "1/4 devices ok" in report


async def test_one_device_as_json(modbus_plant: SimProcess, tmp_path: Path) -> None:
    out = io.StringIO()
    cfg = loads(gateway_yaml(modbus_plant, tmp_path))
    code = await read_once(cfg, device="rtu-bus", as_json=True, out=out)
    doc = json.loads(out.getvalue())
    assert code == 0 and doc["ok"] is True
    assert {c["name"]: c["value"] for c in doc["channels"]} == {"PT-1": 1.25, "LT-1": 6.5}
    assert doc["devices"]["rtu-bus"]["ok"] is True and list(doc["devices"]) == ["rtu-bus"]
    assert await read_once(loads(gateway_yaml(modbus_plant, tmp_path)), device="nope", out=io.StringIO()) == 1


def test_cli_read_exit_code(modbus_plant: SimProcess, tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(gateway_yaml(modbus_plant, tmp_path / "state"))
    p = subprocess.run([sys.executable, "-m", "gateway.cli", "read", "-c", str(cfg), "--device", "tcp-dev"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "GT-1" in p.stdout and "12.5" in p.stdout and "PT-1" not in p.stdout
    modbus_plant.control(fault="tcp-dev", kind="exception", code=4)
    p = subprocess.run([sys.executable, "-m", "gateway.cli", "read", "-c", str(cfg), "--device", "tcp-dev"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert "exception 4 (server device failure)" in p.stdout


async def test_streaming_drivers_opcua_and_serial(sim_factory: Any, tmp_path: Path) -> None:
    """Streaming drivers: wait for a first value of each channel; a missing node is named."""
    sim = sim_factory("""
signals: {PT: {base: 1.5}, N: {base: 72.5}}
devices:
  - name: dcs
    protocol: opcua
    port: 0
    points:
      - {signal: PT, node: "s=R201.PT01"}
  - name: meter
    protocol: serial
    link: "{tmp}/ttyN"
    interval: 100ms
    template: "LAeq={0:05.1f}"
    signals: [N]
""")
    ep = sim.endpoints["dcs"]
    endpoint = ep.get("endpoint") or ep.get("url")
    cfg = loads(f"""
gateway: {{id: g, site: "S", state_dir: "{tmp_path}/st"}}
devices:
  - name: dcs
    protocol: opcua
    endpoint: "{endpoint}"
    mode: subscribe
    channels:
      - {{name: PT-201, kind: pressure, unit: MPa, node: "ns=2;s=R201.PT01"}}
      - {{name: GHOST-1, kind: pressure, node: "ns=2;s=No.Such.Node"}}
  - name: meter
    protocol: serial
    port: "{sim.endpoints["meter"]["port"]}"
    channels:
      - {{name: N-01, kind: noise, unit: dB(A), pattern: 'LAeq=(?P<value>[0-9.]+)'}}
""")
    out = io.StringIO()
    code = await read_once(cfg, out=out)
    report = out.getvalue()
    rows = {ln.split()[0]: ln for ln in report.splitlines() if ln and not ln.startswith("device")}
    assert rows["PT-201"].split()[3] == "1.5" and rows["PT-201"].endswith(" good"), report
    assert rows["N-01"].split()[3] == "72.5" and rows["N-01"].endswith(" good"), report
    assert rows["GHOST-1"].endswith("bad: config"), report
    assert "channel GHOST-1" in report and "No.Such.Node" in report
    assert code == 1
