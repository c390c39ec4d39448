# ruff: noqa: E501 - the table holds exact error lines; they read best unbroken
"""Config validation: a table of broken files with the exact error lines expected, the
YAML 1.1 traps, and ``safegw check`` as a user runs it (exit codes, output)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.config import load, loads
from gateway.core.config import Config, ModbusTcpDevice
from gateway.core.configcheck import ConfigError

ROOT = Path(__file__).resolve().parents[2]

HEAD = """\
gateway:
  id: gw-1
  site: "91370100MA3C000000"
devices:
  - name: plc
    protocol: modbus-tcp
    host: 127.0.0.1
"""

# (case id, file text, expected lines with F for the file name)
CASES: list[tuple[str, str, list[str]]] = [
    ("unknown-key", """\
gateway:
  id: gw-1
  site: "x"
  stat_dir: /var/lib/safegw
""", ["F:4:3: gateway.stat_dir: unknown key 'stat_dir'; did you mean 'state_dir'? valid here: id, site, name, "
      "state_dir, log_level, timezone"]),
    ("unknown-channel-key", HEAD + """\
    channels:
      - {name: T1, kind: level, address: holding:1, sclae: 0.1}
""", ["F:9:53: devices[0].channels[0].sclae: unknown key 'sclae'; did you mean 'scale'? valid here: name, kind, "
      "unit, description, gas, range, scale, offset, alarms, preset, exposure, hazard_source, area, maintenance, "
      "address, type, byte_order"]),
    ("wrong-type", HEAD + """\
    port: abc
    channels:
      - {name: T1, kind: level, address: holding:1}
""", ["F:8:11: devices[0].port: must be a valid integer, unable to parse string as an integer (got 'abc')"]),
    ("wrong-literal", HEAD + """\
    channels:
      - {name: T1, kind: levle, address: holding:1}
""", ["F:9:26: devices[0].channels[0].kind: must be 'gas', 'dust', 'temperature', 'humidity', 'wind_speed', "
      "'pressure', 'level', 'flow', 'noise', 'radiation', 'position', 'presence', 'oxygen', 'voltage', 'current', "
      "'status' or 'other' (got 'levle'; did you mean 'level'?)"]),
    ("duration-without-unit", HEAD + """\
    poll: 5
    channels:
      - {name: T1, kind: level, address: holding:1}
""", ["F:8:11: devices[0].poll: write the unit: 5s or 5ms? (durations look like 500ms, 1s, 5m, 2h, 30d)"]),
    ("duration-bad-unit", HEAD + """\
    timeout: 1 sec
    channels:
      - {name: T1, kind: level, address: holding:1}
""", ["F:8:14: devices[0].timeout: '1 sec' is not a duration; write a number and a unit: 500ms, 1s, 5m, 2h, 30d"]),
    ("bad-size", """\
gateway: {id: gw-1, site: "x"}
journal:
  quota: 2 gigs
""", ["F:3:10: journal.quota: '2 gigs' is not a size; write e.g. 512MB, 2GB, 100KiB"]),
    ("journal-limits", """\
gateway: {id: gw-1, site: "x"}
journal: {quota: 10KB, max_age: 5s}
""", ["F:2:18: journal.quota: a quota of 10000 bytes keeps almost nothing; give at least 1MB (e.g. 2GB)",
      "F:2:33: journal.max_age: keeping records only 5s is surely a mistake; give at least 1m (e.g. 30d)"]),
    ("duplicate-channel-names", HEAD + """\
    channels:
      - {name: T1, kind: level, address: holding:1}
      - {name: T2, kind: level, address: holding:2}
  - name: plc2
    protocol: modbus-tcp
    host: 127.0.0.2
    channels:
      - {name: T1, kind: level, address: holding:1}
""", ["F:15:16: devices[1].channels[0].name: duplicate channel name 'T1' (first at devices[0].channels[0])"]),
    ("two-devices-one-serial-port", """\
gateway: {id: gw-1, site: "x"}
devices:
  - name: bus-a
    protocol: modbus-rtu
    port: /dev/ttyUSB0
    units: [{unit: 1, channels: [{name: A, kind: gas, address: input:1}]}]
  - name: bus-b
    protocol: modbus-rtu
    port: /dev/ttyUSB0
    units: [{unit: 2, channels: [{name: B, kind: gas, address: input:1}]}]
""", ["F:9:11: devices[1].port: serial port /dev/ttyUSB0 is already used by devices[0]; put several units of "
      "one RS-485 line under one device's 'units:'"]),
    ("float32-on-one-register", HEAD + """\
    channels:
      - {name: FT-1, kind: flow, address: holding:100, type: float32}
      - {name: FT-2, kind: flow, address: holding:101, type: float32}
""", ["F:10:43: devices[0].channels[1].address: register holding:101 is already taken by 'FT-1', a float32 at "
      "holding:100 that spans 2 registers (100-101); move this channel to holding:102 or later, or check the "
      "type of 'FT-1'"]),
    ("float32-on-one-register-rtu-unit", """\
gateway: {id: gw-1, site: "x"}
devices:
  - name: bus
    protocol: modbus-rtu
    port: /dev/ttyUSB0
    units:
      - unit: 1
        channels:
          - {name: A, kind: gas, address: input:0, type: float64}
          - {name: B, kind: gas, address: input:3}
      - unit: 2
        channels:
          - {name: C, kind: gas, address: input:3}
""", ["F:10:43: devices[0].units[0].channels[1].address: register input:3 is already taken by 'A', a float64 at "
      "input:0 that spans 4 registers (0-3); move this channel to input:4 or later, or check the type of 'A'"]),
    ("float32-past-the-last-register", HEAD + """\
    channels:
      - {name: FT-1, kind: flow, address: input:65535, type: float32}
""", ["F:9:43: devices[0].channels[0].address: a float32 takes 2 registers: input:65535 would need "
      "65535-65536, beyond 65535"]),
    ("poll-below-timeout", HEAD + """\
    poll: 200ms
    timeout: 1s
    channels:
      - {name: T1, kind: level, address: holding:1}
""", ["F:8:11: devices[0].poll: poll interval 0.2s is shorter than the timeout 1s; make poll >= timeout"]),
    ("rtu-bus-too-slow-for-its-poll", """\
gateway: {id: gw-1, site: "x"}
devices:
  - name: bus
    protocol: modbus-rtu
    port: /dev/ttyUSB0
    poll: 200ms
    timeout: 100ms
    units:
      - {unit: 1, channels: [{name: G1, kind: gas, address: input:0}]}
      - {unit: 2, channels: [{name: G2, kind: gas, address: input:0}]}
      - {unit: 3, channels: [{name: G3, kind: gas, address: input:0}]}
      - {unit: 4, channels: [{name: G4, kind: gas, address: input:0}]}
      - {unit: 5, channels: [{name: G5, kind: gas, address: input:0}]}
      - {unit: 6, channels: [{name: G6, kind: gas, address: input:0}]}
      - {unit: 7, channels: [{name: G7, kind: gas, address: input:0}]}
      - {unit: 8, channels: [{name: G8, kind: gas, address: input:0}]}
      - {unit: 9, channels: [{name: G9, kind: gas, address: input:0}]}
      - {unit: 10, channels: [{name: G10, kind: gas, address: input:0}]}
""", ["F:6:11: devices[0].poll: at 9600 baud this bus needs 229 ms per cycle even when every unit "
      "answers (10 units); poll is 200 ms: raise poll or baudrate, or split the units over more lines"]),
    ("unknown-protocol", """\
gateway: {id: gw-1, site: "x"}
devices:
  - name: old-plc
    protocol: profibus
    channels: []
""", ["F:4:15: devices[0].protocol: unknown protocol 'profibus'; known protocols: modbus-tcp, modbus-rtu, opcua, serial"]),
    ("yaml-syntax", HEAD + """\
    channels:
      - {name: T1, kind: level, address: holding:1
""", ["F:10:1: (syntax): did not find expected ',' or '}' (while parsing a flow mapping that started at "
      "line 9, column 9)"]),
    ("yaml-tab", "gateway:\n\tid: gw-1\n",
     ["F:2:1: (syntax): found character that cannot start any token; YAML indents with spaces, not tabs"]),
    ("yaml-duplicate-key", HEAD + """\
    host: 127.0.0.2
""", ["F:8:5: devices[0].host: duplicate key 'host' (first at line 7); keep one"]),
    ("address-0502", HEAD + """\
    channels:
      - {name: T1, kind: level, address: 0502}
""", ["F:9:42: devices[0].channels[0].address: address 0502 has no function; write holding:502, input:502, "
      "coil:502 or discrete:502 (a bare 0502 is not taken as a number: YAML 1.1 would read it as octal)"]),
    ("address-number", HEAD + """\
    channels:
      - {name: T1, kind: level, address: 502}
""", ["F:9:42: devices[0].channels[0].address: write the function too: holding:502, input:502, coil:502 or "
      "discrete:502"]),
    ("number-where-text-is-expected", HEAD + """\
    channels:
      - {name: T1, kind: level, address: holding:1, unit: 1.10}
""", ["F:9:59: devices[0].channels[0].unit: write it in quotes, \"1.10\", to keep it as text: unquoted, YAML "
      "reads 1.10 as the number 1.1"]),
    ("site-unquoted", """\
gateway:
  id: gw-1
  site: 913701000000000000
""", ["F:3:9: gateway.site: write the site code in quotes, so leading zeros and letters survive"]),
    ("missing-gateway-id", """\
gateway:
  site: "x"
""", ["F:2:3: gateway.id: required key is missing"]),
    ("not-a-mapping", "- just\n- a list\n", ["F:1:1: (top): the file must be a mapping with a 'gateway:' section"]),
    ("channel-name-with-space", HEAD + """\
    channels:
      - {name: "T 1", kind: level, address: holding:1}
""", ["F:9:16: devices[0].channels[0].name: no spaces, '/', '#' or '+' in a channel name (they break MQTT "
      "topics and InfluxDB keys) (got 'T 1')"]),
    # several problems at once: every schema error, and the cross checks on what is valid,
    # in file order
    ("all-at-once", """\
gateway:
  id: gw-1
  site: 91370100
journal:
  max_age: 30
devices:
  - name: plc
    protocol: modbus-tcp
    host: 127.0.0.1
    poll: 100ms
    channels:
      - {name: T1, kind: level, address: holding:0, type: float32}
      - {name: T1, kind: level, address: holding:1}
      - {name: T3, kind: levle, address: holding:9}
  - name: plc
    protocol: opcua-ish
""", [
        "F:3:9: gateway.site: write the site code in quotes, so leading zeros and letters survive",
        "F:5:12: journal.max_age: write the unit: 30s or 30ms? (durations look like 500ms, 1s, 5m, 2h, 30d)",
        "F:10:11: devices[0].poll: poll interval 0.1s is shorter than the timeout 1s; make poll >= timeout",
        "F:13:16: devices[0].channels[1].name: duplicate channel name 'T1' (first at devices[0].channels[0])",
        "F:13:42: devices[0].channels[1].address: register holding:1 is already taken by 'T1', a float32 at "
        "holding:0 that spans 2 registers (0-1); move this channel to holding:2 or later, or check the type of 'T1'",
        "F:14:26: devices[0].channels[2].kind: must be 'gas', 'dust', 'temperature', 'humidity', 'wind_speed', "
        "'pressure', 'level', 'flow', 'noise', 'radiation', 'position', 'presence', 'oxygen', 'voltage', "
        "'current', 'status' or 'other' (got 'levle'; did you mean 'level'?)",
        "F:16:15: devices[1].protocol: unknown protocol 'opcua-ish'; known protocols: modbus-tcp, modbus-rtu, opcua, serial",
    ]),
]


@pytest.mark.parametrize(("text", "expected"), [pytest.param(t, e, id=i) for i, t, e in CASES])
def test_broken_file(tmp_path: Path, text: str, expected: list[str]) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as ei:
        load(f)
    assert ei.value.lines == [e.replace("F:", f"{f}:", 1) for e in expected]


def test_yaml_11_traps_mean_what_was_typed() -> None:
    """`on`, `off`, `yes`, `no` stay names, `0x10` is hex, a leading-zero number stays text."""
    cfg = loads(HEAD + """\
    channels:
      - {name: on, kind: status, address: coil:1, type: bool}
      - {name: off, kind: status, address: coil:2, type: bool}
      - name: yes
        kind: status
        address: coil:3
        type: bool
      - {name: no, kind: level, address: holding:0x10, description: 12:30}
      - {name: "0502", kind: level, address: input:0502, unit: "1.10"}
""")
    dev = cfg.devices[0]
    assert isinstance(dev, ModbusTcpDevice)
    assert [c.name for c in dev.channels] == ["on", "off", "yes", "no", "0502"]
    assert dev.channels[3].address == "holding:0x10" and dev.channels[3].description == "12:30"
    assert dev.channels[4].address == "input:0502"
    assert dev.channels[4].unit == "1.10"


def test_booleans_need_true_or_false_words() -> None:
    cfg = loads(HEAD + """\
    enabled: false
    channels:
      - {name: T1, kind: level, address: holding:1}
""")
    assert cfg.devices[0].enabled is False


def test_units_are_parsed() -> None:
    cfg = loads("""\
gateway: {id: gw-1, site: "x", state_dir: /tmp/x}
journal: {quota: 512MB, max_age: 7d, sync: normal}
devices:
  - {name: d, protocol: modbus-tcp, host: h, poll: 2s, timeout: 500ms,
     channels: [{name: T1, kind: level, address: "holding:1"}]}
""")
    assert cfg.journal.quota == 512 * 10**6 and cfg.journal.max_age == 7 * 86400.0
    assert cfg.journal.sync == "normal"
    assert (cfg.devices[0].poll, cfg.devices[0].timeout) == (2.0, 0.5)


def test_minimal_config_has_defaults() -> None:
    cfg = loads('gateway: {id: gw-1, site: "x"}\n')
    assert isinstance(cfg, Config)
    assert cfg.devices == [] and cfg.mqtt is None and cfg.journal.sync == "full"
    assert str(cfg.gateway.state_dir) == "/var/lib/safegw"


# ---------------------------------------------------------------------- the CLI
def check(path: Path | str) -> subprocess.CompletedProcess[str]:
    """``safegw check`` as a user runs it: a real process."""
    return subprocess.run([sys.executable, "-m", "gateway.cli", "check", "-c", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def check_in_process(path: Path | str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The same command through ``gateway.cli.main`` (a process start costs seconds here)."""
    from gateway.cli import main

    code = main(["check", "-c", str(path)])
    return code, capsys.readouterr().out


def gateway_configs() -> list[Path]:
    """The shipped gateway configs (config/*.yaml with a gateway: section)."""
    return [p for p in sorted((ROOT / "config").glob("*.yaml"))
            if any(line.startswith("gateway:") for line in p.read_text(encoding="utf-8").splitlines())]


@pytest.mark.parametrize("path", gateway_configs(), ids=lambda p: p.name)
def test_shipped_configs_pass_check(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.core.channels import ChannelTable

    cfg = load(path)
    code, out = check_in_process(path, capsys)
    assert code == 0, out
    assert out == f"ok: {len(cfg.devices)} devices, {len(ChannelTable.from_config(cfg))} channels\n"


def test_check_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(HEAD + """\
    channels:
      - {name: T1, kind: level, address: holding:1}
      - {name: T2, kind: level, address: holding:2, type: float32}
""")
    assert check_in_process(good, capsys) == (0, "ok: 1 devices, 2 channels\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""\
        gateway: {id: gw-1, site: "x", colour: red}
        devices: [{name: d, protocol: nope}]
    """))
    expected = [
        f"{bad}:1:32: gateway.colour: unknown key 'colour'; valid here: id, site, name, state_dir, log_level, timezone",
        f"{bad}:2:31: devices[0].protocol: unknown protocol 'nope'; known protocols: modbus-tcp, modbus-rtu, opcua, serial",
    ]
    code, out = check_in_process(bad, capsys)
    assert (code, out.splitlines()) == (2, expected)
    code, out = check_in_process(tmp_path / "missing.yaml", capsys)
    assert (code, out) == (2, f"{tmp_path / 'missing.yaml'}:1:1: (file): file not found\n")
    # and once as a real process: the exit status the shell (and systemd's ExecStartPre) sees
    r = check(bad)
    assert (r.returncode, r.stdout.splitlines()) == (2, expected)


def test_a_typo_is_matched_to_the_first_of_equally_close_words(tmp_path: Path) -> None:
    """'flaot' is as close to 'float32' as to 'float64'; the suggestion is the first in the
    type list (float32, what a typo of "float" means on a Modbus register), not difflib's
    largest string."""
    f = tmp_path / "gw.yaml"
    f.write_text("gateway: {id: gw-1}\ndevices:\n- name: plc\n  protocol: modbus-tcp\n  host: 127.0.0.1\n"
                 "  channels:\n  - {name: T1, kind: temperature, unit: C, address: 'holding:0', type: flaot}\n",
                 encoding="utf-8")
    with pytest.raises(ConfigError) as ei:
        load(f)
    assert "did you mean 'float32'?" in "\n".join(ei.value.lines)
