"""``regulators:`` in ``safegw check``: errors at their FILE:LINE:COL, unmapped channels
listed with ``--verbose``, the password file's mode."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.cli import main

BASE = """\
gateway: {id: gw-1, site: "S1", state_dir: /tmp/x}
devices:
  - name: plc
    protocol: modbus-tcp
    host: 127.0.0.1
    port: 5020
    poll: 1s
    channels:
      - {name: GT-1, kind: gas, unit: "%LEL", address: input:0, type: int16}
      - {name: TT-1, kind: temperature, unit: "°C", address: input:1, type: int16}
      - {name: SW-1, kind: status, address: coil:1, type: bool}
regulators:
"""


def check(tmp_path: Path, regs: str, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    f = tmp_path / "gw.yaml"
    f.write_text(BASE + textwrap.indent(textwrap.dedent(regs), "  "))
    code = main(["check", "-c", str(f), *args])
    return code, [line.replace(str(f), "F") for line in capsys.readouterr().out.splitlines()]


GOOD = """\
- type: hj212
  name: epb
  host: 10.0.0.7
  port: 9001
  mn: "MN0001"
  password: "123456"
  points:
    - {channel: GT-1, code: a21026, scale: 10}
"""


def test_a_valid_section_and_the_unmapped_channels(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(tmp_path, GOOD, capsys, "--verbose")
    assert code == 0, out
    assert out == ["ok: 1 devices, 3 channels",
                   "regulator epb: 2 channel(s) not sent (no point mapping): TT-1, SW-1"]
    code, out = check(tmp_path, GOOD, capsys)
    assert out == ["ok: 1 devices, 3 channels"]


@pytest.mark.parametrize(("regs", "expected"), [
    # an unknown adapter type, at its line, naming the known ones
    (GOOD.replace("type: hj212", "type: hj213"),
     ["F:13:11: regulators[0].type: unknown type 'hj213'; known: hj212"]),
    (GOOD.replace("- type: hj212\n  name", "- name"), ["F:13:5: regulators[0]: 'type:' is missing"]),
    # a channel that does not exist (line 20: the point)
    (GOOD.replace("channel: GT-1", "channel: GT-9"),
     ["F:20:19: regulators[0].points[0].channel: no channel 'GT-9' in devices"]),
    # both password and password_file; neither
    (GOOD.replace('password: "123456"', 'password: "123456"\n  password_file: pw.txt'),
     ["F:13:5: regulators[0].hj212: give exactly one of password or password_file"]),
    # an unknown key, at the key
    (GOOD.replace("  port: 9001", "  port: 9001\n  prot: 1"), ["F:17:5: regulators[0].prot:"]),
    # a minute interval that does not divide the hour
    (GOOD.replace("  port: 9001", "  port: 9001\n  minute_interval: 7m"), ["does not divide an hour"]),
    # two adapters with one name; one code twice
    (GOOD + GOOD.replace("{channel: GT-1, code: a21026, scale: 10}",
                         "{channel: GT-1, code: a21026}\n    - {channel: TT-1, code: a21026}"),
     ["F:22:11: regulators[1].name: a second adapter named 'epb'",
      "F:29:31: regulators[1].points[1].code: code 'a21026' is used twice in this adapter"]),
    # a password longer than HJ 212's 6 characters
    (GOOD.replace('"123456"', '"1234567"'), ["F:18:15: regulators[0].password: String should match pattern"]),
])
def test_errors_point_at_their_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], regs: str,
                                    expected: list[str]) -> None:
    code, out = check(tmp_path, regs, capsys)
    assert code == 2, out
    for want in expected:
        assert any(line.startswith(want) or want in line for line in out), (want, out)
