"""Device templates: expansion by the config loader, errors, ``safegw templates``.

The shipped templates' register maps come from public manuals named in each file
(``source:``), with what was and was not confirmed (``confirmed:``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.config import load, loads
from gateway.core.channels import ChannelTable
from gateway.core.configcheck import ConfigError
from gateway.core.templates import TEMPLATE_DIR, available, load_template

ROOT = Path(__file__).resolve().parents[2]

BY_TEMPLATE = """\
gateway: {id: gw-t, site: "S1"}
devices:
  - name: gas-ctl-1
    protocol: modbus-tcp
    host: 10.0.0.8
    unit: 3
    template: gas-controller-8ch
    prefix: GC1.
    overrides:
      ch1.gas: {alarms: {h: 25, hh: 50}, area: "罐区"}
      ch2.gas: {gas: H2S, unit: ppm, preset: null, range: [0, 100]}
      ch8.battery: {enabled: false}
    channels:
      - {name: GC1.extra, kind: other, address: holding:200}
  - name: bus
    protocol: modbus-rtu
    port: /dev/ttyUSB0
    units:
      - {unit: 2, template: gas-transmitter-status, prefix: GT2.}
      - {unit: 4, template: temp-humidity, prefix: TH4., overrides: {temperature: {alarms: {h: 60}}}}
"""


def _by_hand() -> str:
    """The same devices written out channel by channel from the manuals' tables."""
    gc: list[dict[str, object]] = [{"name": "GC1.extra", "kind": "other", "address": "holding:200"}]
    for n in range(1, 9):
        base = 30 + 4 * (n - 1)
        gas: dict[str, object] = {
            "kind": "gas",
            "gas": "combustible",
            "unit": "%LEL",
            "address": f"holding:{base}",
            "type": "int16",
            "range": [0, 100],
            "preset": "gbt50493",
        }
        if n == 1:
            gas |= {"alarms": {"h": 25, "hh": 50}, "area": "罐区"}
        if n == 2:
            gas = {**gas, "gas": "H2S", "unit": "ppm"}
            del gas["preset"]
        gc.append({"name": f"GC1.ch{n}.gas", **gas})
        gc.append(
            {
                "name": f"GC1.ch{n}.status",
                "kind": "status",
                "address": f"holding:{base + 1}",
                "type": "uint16",
            }
        )
        if n != 8:
            gc.append(
                {
                    "name": f"GC1.ch{n}.battery",
                    "kind": "voltage",
                    "unit": "V",
                    "address": f"holding:{base + 2}",
                    "type": "uint16",
                }
            )
    bits = {
        4: "maintenance_fault",
        5: "instrument_fault",
        6: "alarm1",
        7: "alarm2",
        8: "relay1",
        9: "relay2",
        10: "relay3",
        11: "heartbeat",
    }
    gt = [
        {
            "name": "GT2.gas",
            "kind": "gas",
            "gas": "toxic",
            "unit": "ppm",
            "address": "holding:2",
            "type": "float32",
            "byte_order": "ABCD",
        },
        {"name": "GT2.status", "kind": "status", "address": "holding:0", "type": "uint16"},
    ]
    gt += [
        {"name": f"GT2.status.{b}", "kind": "status", "address": f"holding:0.{i}", "type": "bool"}
        for i, b in bits.items()
    ]
    th = [
        {
            "name": "TH4.temperature",
            "kind": "temperature",
            "unit": "°C",
            "address": "holding:0",
            "type": "int16",
            "scale": 0.1,
            "range": [-40, 80],
            "alarms": {"h": 60},
        },
        {
            "name": "TH4.humidity",
            "kind": "humidity",
            "unit": "%RH",
            "address": "holding:1",
            "type": "uint16",
            "scale": 0.1,
            "range": [0, 100],
        },
    ]

    def flow(chs: Sequence[Mapping[str, object]], indent: str) -> str:
        return "".join(f"{indent}- {json.dumps(c, ensure_ascii=False)}\n" for c in chs)

    return (
        'gateway: {id: gw-t, site: "S1"}\ndevices:\n'
        "  - {name: gas-ctl-1, protocol: modbus-tcp, host: 10.0.0.8, unit: 3, channels: [\n"
        + ",\n".join("      " + json.dumps(c, ensure_ascii=False) for c in gc)
        + "]}\n"
        "  - name: bus\n    protocol: modbus-rtu\n    port: /dev/ttyUSB0\n    units:\n"
        "      - unit: 2\n        channels:\n"
        + flow(gt, "          ")
        + "      - unit: 4\n        channels:\n"
        + flow(th, "          ")
    )


def _table(cfg_text: str, tmp_path: Path, name: str) -> list[tuple[object, ...]]:
    p = tmp_path / name
    p.write_text(cfg_text, encoding="utf-8")
    table = ChannelTable.from_config(load(p))
    return [
        (c.index, c.name, c.kind, c.unit, c.device, c.unit_id, c.spec.model_dump()) for c in table.channels
    ]


def test_template_device_equals_the_device_by_hand(tmp_path: Path) -> None:
    by_template = _table(BY_TEMPLATE, tmp_path, "t.yaml")
    assert len(by_template) == 23 + 1 + 10 + 2
    assert by_template == _table(_by_hand(), tmp_path, "h.yaml")


def test_check_and_read_see_the_expanded_channels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "t.yaml"
    p.write_text(BY_TEMPLATE, encoding="utf-8")
    assert main(["check", "-c", str(p)]) == 0
    assert "ok: 2 devices, 36 channels" in capsys.readouterr().out
    # `read` and the daemon load through the same function (gateway.config.load_or_exit → load)
    from gateway.config import load_or_exit

    assert ChannelTable.from_config(load_or_exit(str(p))).names() == ChannelTable.from_config(load(p)).names()


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        loads(text, "plant.yaml")
    return e.value.lines


def test_errors_point_at_the_device_or_the_override() -> None:
    base = 'gateway: {id: gw-t, site: "S1"}\ndevices:\n  - name: d\n    protocol: modbus-tcp\n    host: h\n'
    assert _errors(base + "    template: gas-controlr-8ch\n") == [
        "plant.yaml:6:5: devices[0].template: no template 'gas-controlr-8ch' (no file "
        f"{TEMPLATE_DIR}/gas-controlr-8ch.yaml); shipped: dust-monitor, gas-controller-8ch, "
        "gas-transmitter-status, noise-meter, temp-humidity"
    ]
    assert _errors(base + "    template: temp-humidity\n    overrides:\n      temprature: {scale: 1}\n") == [
        "plant.yaml:8:7: devices[0].overrides.temprature: template temp-humidity has no point "
        "'temprature'; its points: humidity, temperature"
    ]
    errs = _errors(base + "    template: temp-humidity\n    overrides:\n      temperature: {type: flaot}\n")
    assert len(errs) == 1 and errs[0].startswith("plant.yaml:8:20: devices[0].channels[0].type:")
    assert "flaot" in errs[0]


def test_errors_in_a_template_file_name_its_line(tmp_path: Path) -> None:
    t = tmp_path / "my.yaml"
    t.write_text(
        textwrap.dedent("""\
        template: my
        description: a broken one
        source: none
        confirmed: nothing
        points:
          - {suffix: a, kind: gas, address: holding:0}
          - {suffix: b, kind: gas, address: holding:1, type: flaot}
          - {suffix: s, kind: status, address: coil:1, bits: {0: x}}
        """),
        encoding="utf-8",
    )
    cfg = (
        'gateway: {id: gw-t, site: "S1"}\ndevices:\n  - {name: d, protocol: modbus-tcp, host: h, '
        "template: ./my.yaml}\n"
    )
    p = tmp_path / "plant.yaml"
    p.write_text(cfg, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load(p)
    lines = e.value.lines
    assert lines[0].startswith(f"{p}:3:") and "template './my.yaml' is invalid" in lines[0]
    assert lines[1].startswith(f"  {t}:7:") and "points[1].type" in lines[1] and "flaot" in lines[1]
    assert lines[2] == f"  {t}:8:54: points[2].bits: bits break up a whole holding or input register"


@pytest.mark.parametrize("path", available(), ids=lambda p: p.stem)
def test_shipped_templates_are_valid_and_cite_a_source(path: Path) -> None:
    t = load_template(path)
    assert t.model.template == path.stem
    assert "http" in t.model.source or "NOT CONFIRMED" in t.model.source
    assert "confirmed" in t.model.confirmed.lower()


def test_templates_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["templates", "list"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 5 and "gas-controller-8ch" in out
    assert main(["templates", "show", "gas-transmitter-status", "--prefix", "GT2."]) == 0
    out = capsys.readouterr().out
    assert "GT2.status.alarm1" in out and "holding:0.6" in out and "Midas" in out
    assert main(["templates", "show", "nope"]) == 2


def test_an_own_channel_error_keeps_its_line() -> None:
    text = (
        'gateway: {id: gw-t, site: "S1"}\ndevices:\n  - name: d\n    protocol: modbus-tcp\n    host: h\n'
        "    template: temp-humidity\n    channels:\n      - {name: X, kind: other, address: holding:9,"
        " type: flaot}\n"
    )
    errs = _errors(text)
    assert len(errs) == 1 and errs[0].startswith("plant.yaml:8:58: devices[0].channels[0].type:"), errs


def test_read_polls_a_template_built_device(sim_factory: Any, tmp_path: Path) -> None:
    """`safegw read` (a subprocess) against a simulated temperature/humidity transmitter laid
    out as the L-com SRTH100 manual says (holding 0: temperature x10, signed; 1: RH x10)."""
    sim = sim_factory("""
signals: {T: {base: -12.5}, H: {base: 55.0}}
devices:
  - name: th
    protocol: modbus-tcp
    host: 127.0.0.1
    port: 0
    units:
      - unit: 4
        points:
          - {signal: T, address: holding:0, type: int16, scale: 0.1}
          - {signal: H, address: holding:1, type: uint16, scale: 0.1}
""")
    host, port = sim.tcp("th")
    cfg = tmp_path / "plant.yaml"
    cfg.write_text(f'gateway: {{id: g, site: "S", state_dir: "{tmp_path}/st"}}\ndevices:\n'
                   f"  - {{name: th-1, protocol: modbus-tcp, host: {host}, port: {port}, unit: 4,\n"
                   "     template: temp-humidity, prefix: TH1.}\n", encoding="utf-8")
    p = subprocess.run([sys.executable, "-m", "gateway.cli", "read", "-c", str(cfg), "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    got = {c["name"]: (c["value"], c["quality"], c["unit"]) for c in json.loads(p.stdout)["channels"]}
    assert got == {"TH1.temperature": (-12.5, "good", "°C"), "TH1.humidity": (55.0, "good", "%RH")}
