"""``regulators:`` in ``safegw check``: errors at their FILE:LINE:COL, unmapped channels
listed with ``--verbose``, the password file's mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.regcheck import GT1, check_regulators

CHANNELS = (GT1, '{name: TT-1, kind: temperature, unit: "°C", address: input:1, type: int16}',
            "{name: SW-1, kind: status, address: coil:1, type: bool}")


def check(tmp_path: Path, regs: str, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    f, code, out = check_regulators(tmp_path, capsys, regs, *args, channels=CHANNELS)
    return code, [line.replace(str(f), "F") for line in out.splitlines()]


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


def test_a_code_not_in_the_hj212_table_is_a_warning_at_its_line(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """a21026 (SO2) and a01012 (flue gas temperature) are in both public sources of the
    table; x99999 is in neither; e10101 matches a pattern (e101xx). A warning, exit 0."""
    regs = GOOD.replace("{channel: GT-1, code: a21026, scale: 10}",
                        "{channel: GT-1, code: a21026, scale: 10}\n    - {channel: TT-1, code: x99999}\n"
                        "    - {channel: SW-1, code: e10101}")
    code, out = check(tmp_path, regs, capsys)
    assert code == 0, out
    bad = [line for line in out if "x99999" in line]
    assert len(bad) == 1 and bad[0].startswith("F:21:31: regulators[0].points[1].code: code 'x99999' "
                                               "is not in HJ 212-2017's code table"), out
    assert not any("a21026" in line or "e10101" in line for line in out), out
    assert out[-1] == "ok: 1 devices, 3 channels, 1 warnings"
    code, out = check(tmp_path, GOOD, capsys)
    assert out == ["ok: 1 devices, 3 channels"]


def test_the_code_table_carries_its_sources() -> None:
    from gateway.core import hj212_codes
    so2 = hj212_codes.lookup("a21026")
    assert so2 is not None and so2["name"] == "二氧化硫" and so2["confirmed"] and len(so2["sources"]) == 2
    one = {"name": "二氧化硫折", "sources": ["lingkejia/bocon-operation-app"], "confirmed": False}
    assert hj212_codes.lookup("a21026z") == one  # one source only: unconfirmed
    assert hj212_codes.lookup("w00000") is not None and hj212_codes.lookup("ws0001") is None  # vendor-local
    doc = json.loads(hj212_codes.TABLE.read_text(encoding="utf-8"))
    assert set(doc["_sources"]) == {"srdgame/lua-HJ212", "lingkejia/bocon-operation-app"}
    assert all(s in doc["_sources"] for v in doc["codes"].values() for s in v["sources"])
