"""What a commissioning engineer sees in ``safegw read`` and ``safegw demo``: the missing
register named, out-of-range and -0.0 readings as they are, overflows as data, quiet
pipes and library logs, and tables that fit the terminal whatever the script."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from gateway.commission import DeviceResult, print_table, read_once
from gateway.config import loads
from gateway.core.batch import Quality
from gateway.core.channels import ChannelTable
from gateway.core.cliutil import display_width
from gateway.demo import render
from tests.fixtures.sims import SimProcess, gateway_yaml

ROOT = Path(__file__).resolve().parents[2]


def _rows(report: str) -> dict[str, str]:
    return {ln.split()[0]: ln for ln in report.splitlines() if ln and not ln.startswith("device")}


def _tcp_extra(plant: SimProcess, tmp_path: Path, channels: str) -> str:
    """The standard plant's config plus a device on tcp-dev's endpoint with these channels."""
    host, port = plant.tcp("tcp-dev")
    return gateway_yaml(plant, tmp_path) + f"""
  - name: extra
    protocol: modbus-tcp
    host: {host}
    port: {port}
    timeout: 500ms
    channels:
{channels}"""


async def test_a_missing_register_in_a_merged_read_is_named(modbus_plant: SimProcess, tmp_path: Path) -> None:
    # the simulator's tables have 1000 registers: 995 exists, 1000 does not; one merged read
    cfg = loads(_tcp_extra(modbus_plant, tmp_path, """
      - {name: HERE-1, kind: other, address: "holding:995"}
      - {name: GONE-1, kind: other, address: "holding:1000"}
"""))
    out = io.StringIO()
    assert await read_once(cfg, device="extra", out=out) == 1
    report = out.getvalue()
    rows = _rows(report)
    assert rows["HERE-1"].endswith(" good"), report
    assert rows["GONE-1"].endswith(" bad: config"), report
    assert "device extra: unit 1 holding:1000: exception 2 (illegal data address)" in report
    assert "995-1000" not in report


async def test_out_of_range_overflow_and_negative_zero(modbus_plant: SimProcess, tmp_path: Path) -> None:
    text = _tcp_extra(modbus_plant, tmp_path, """
      - {name: GT-9, kind: gas, unit: "%LEL", address: input:0, type: int16, scale: 0.1, range: [0, 10]}
      - {name: TT-9, kind: temperature, address: holding:10, type: float32, byte_order: CDAB, scale: 1e308}
      - {name: PT-9, kind: pressure, address: holding:10, type: float32, byte_order: CDAB}
""")
    modbus_plant.control(set="TT-1", value=-0.0)
    out = io.StringIO()
    assert await read_once(loads(text), device="extra", as_json=True, out=out) == 0  # out of range is ok
    doc = json.loads(out.getvalue())
    chans = {c["name"]: c for c in doc["channels"]}
    # out of range: the value read, with its quality (the journal keeps NaN)
    assert chans["GT-9"]["value"] == 12.5 and chans["GT-9"]["quality"] == "bad: out_of_range"
    # -0.0 keeps its sign next to scaled channels
    assert chans["PT-9"]["value"] == 0.0 and math.copysign(1.0, chans["PT-9"]["value"]) == -1.0
    modbus_plant.control(set="TT-1", value=3.0e38)
    out = io.StringIO()
    await read_once(loads(text), device="extra", as_json=True, out=out)
    doc = json.loads(out.getvalue())
    assert {c["name"]: c["quality"] for c in doc["channels"]}["TT-9"] == "bad: sensor_fault"
    assert doc["devices"]["extra"]["scale_overflows"] == 1
    assert "overflows float64" in doc["devices"]["extra"]["errors"]["channel TT-9"]


def test_cli_read_shows_out_of_range_value_and_no_warning(modbus_plant: SimProcess, tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(_tcp_extra(modbus_plant, tmp_path / "st", """
      - {name: GT-9, kind: gas, unit: "%LEL", address: input:0, type: int16, scale: 0.1, range: [0, 10]}
      - {name: TT-9, kind: temperature, address: holding:10, type: float32, byte_order: CDAB, scale: 1e308}
"""))
    modbus_plant.control(set="TT-1", value=3.0e38)
    p = subprocess.run([sys.executable, "-m", "gateway.cli", "read", "-c", str(cfg), "--device", "extra"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert p.stderr == "", p.stderr
    assert _rows(p.stdout)["GT-9"].split()[3:] == ["12.5", "%LEL", "bad:", "out_of_range"], p.stdout
    assert "device extra: channel TT-9: raw × scale 1e+308 overflows float64" in p.stdout


def test_closed_pipe_is_quiet(modbus_plant: SimProcess, tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(gateway_yaml(modbus_plant, tmp_path / "state"))
    # `safegw read --json | head -1`, with the reader gone before the first write
    p = subprocess.Popen([sys.executable, "-m", "gateway.cli", "read", "-c", str(cfg), "--json"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(60) == 141
    assert err == ""


def test_asyncua_tracebacks_become_one_line() -> None:
    code = """
import logging, sys
from gateway.core.cliutil import setup_logging
setup_logging(sys.argv[1])
try:
    raise ConnectionError("connection lost")
except ConnectionError:
    logging.getLogger("asyncua.client.ua_session").exception("Publish iteration crashed; retrying in 1s")
logging.getLogger("gateway.app").error("device dcs: connection lost")
"""
    run = [sys.executable, "-c", code]
    info = subprocess.run([*run, "INFO"], cwd=ROOT, capture_output=True, text=True, timeout=30).stderr
    lines = info.splitlines()
    assert len(lines) == 2, info
    assert "WARNING asyncua.client.ua_session: Publish iteration crashed; retrying in 1s: " \
           "ConnectionError: connection lost" in lines[0]
    quiet = subprocess.run([*run, "ERROR"], cwd=ROOT, capture_output=True, text=True, timeout=30).stderr
    # the demo's level: safegw's own line only (the time stamps differ)
    assert [ln.split(" ", 2)[2] for ln in quiet.splitlines()] == [lines[1].split(" ", 2)[2]]


# ---------------------------------------------------------------------- tables

WIDE = """
gateway: {id: g, site: S, state_dir: "/tmp/x"}
devices:
  - name: tank-farm
    protocol: modbus-tcp
    host: 127.0.0.1
    channels:
      - {name: GT-101, kind: gas, unit: "%LEL", address: input:0}
      - {name: 甲烷浓度, kind: gas, unit: "％LEL", address: input:1}
      - {name: AT-201.with-a-long-channel-name, kind: gas, unit: ppm, address: input:2}
"""


def test_read_table_aligns_by_display_width() -> None:
    cfg = loads(WIDE)
    table = ChannelTable.from_config(cfg)
    res = DeviceResult("tank-farm", "modbus-tcp")
    for c in table.channels:
        res.value[c.index], res.quality[c.index] = 1.5, Quality.GOOD
    out = io.StringIO()
    print_table(table, [res], out)
    lines = out.getvalue().splitlines()[:4]
    cols = {display_width(ln[:ln.index(w)]) for ln, w in zip(lines, ["QUALITY", "good", "good", "good"],
                                                                strict=True)}
    assert len(cols) == 1, lines


def _fake_gateway(n: int, alarms: list[dict[str, Any]]) -> Any:
    lines = ["gateway: {id: g, site: S, state_dir: /tmp/x}", "devices:", "  - name: plc",
             "    protocol: modbus-tcp", "    host: 127.0.0.1", "    channels:"]
    lines += [f"      - {{name: GT-{i:03d}.combustible-gas-detector, kind: gas, unit: '%LEL',"
              f" address: 'input:{i}'}}" for i in range(n)]
    lines += ["      - {name: 甲烷浓度探测器, kind: gas, unit: '％LEL', address: 'input:900'}"]
    table = ChannelTable.from_config(loads("\n".join(lines) + "\n"))
    m = len(table)
    live = SimpleNamespace(ts=np.full(m, 1, dtype=np.int64), value=np.arange(m, dtype=np.float64),
                           quality=np.zeros(m, dtype=np.uint8))
    journal = SimpleNamespace(stats=lambda: {"last_seq": 12345, "payload_bytes": 2_000_000})
    return SimpleNamespace(rules=SimpleNamespace(active=lambda: alarms), table=table, live=live,
                           devices={"plc": SimpleNamespace(name="plc", state="up")}, journal=journal,
                           state_dir="/tmp/safegw-demo-a-rather-long-state-directory-name/x/y/z")


def test_demo_table_fits_80x24_alarms_first() -> None:
    alarms = [{"index": 29, "level": "bad", "rule": "bad", "state": "active_unacked"},
              {"index": 29, "level": "hh", "rule": "limit", "state": "active_unacked"},
              {"index": 30, "level": "frozen", "rule": "frozen", "state": "cleared_unacked"}]
    gw = _fake_gateway(30, alarms)
    text = render(gw, 2_000_000_000, color=False, size=(80, 24))
    lines = text.splitlines()
    assert all(display_width(ln) <= 80 for ln in lines), [ln for ln in lines if display_width(ln) > 80]
    assert len(lines) + 2 <= 24  # and "(Ctrl-C to stop)", and the cursor's line after it
    assert lines[2].startswith("GT-029") and "bad (active_unacked)" in lines[2]
    assert lines[3].startswith("甲烷浓度探测器") and "frozen (cleared_unacked)" in lines[3]
    assert "bad bad" not in text and "frozen frozen" not in text
    assert any(ln.startswith("GT-000") for ln in lines) and "more channels" in lines[-4]
    # the columns line up whatever the script of the name
    assert len({display_width(ln[:ln.index("good")]) for ln in lines[2:4]}) == 1


def test_demo_table_without_a_terminal_is_whole() -> None:
    gw = _fake_gateway(30, [])
    lines = render(gw, 2_000_000_000, color=False).splitlines()
    assert len(lines) == 2 + 31 + 3 and lines[2].startswith("GT-000")
    assert "kind" in lines[0] and "age" in lines[0]
