"""The systemd units: they verify with systemd-analyze, carry what the issue asks for,
and their command lines are ones the CLI accepts."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"


def directives(unit: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_verify(tmp_path: Path) -> None:
    """systemd-analyze verify, with the binary path pointed at this checkout's venv
    (verify insists the ExecStart binary exists)."""
    exe = ROOT / ".venv" / "bin" / "safegw"
    if not exe.exists():
        pytest.skip("no .venv/bin/safegw")
    copies = []
    for name in ("safegw.service", "safegw-central.service"):
        text = (UNITS / name).read_text().replace("/opt/safegw/bin/safegw", str(exe))
        (tmp_path / name).write_text(text)
        copies.append(str(tmp_path / name))
    r = subprocess.run(["systemd-analyze", "verify", *copies], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=30", copies[0]],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr


def test_gateway_unit_has_what_the_issue_asks() -> None:
    d = directives(UNITS / "safegw.service")
    assert d["Type"] == ["notify"]
    assert d["WatchdogSec"] and d["Restart"] == ["on-failure"]
    assert d["User"] == ["safegw"] and d["Group"] == ["safegw"]
    assert d["ProtectSystem"] == ["strict"] and d["StateDirectory"] == ["safegw"]
    assert d["NoNewPrivileges"] == ["yes"]
    assert "PrivateDevices" not in d  # serial ports must stay reachable
    assert any(a.startswith("char-ttyUSB") for a in d["DeviceAllow"])
    assert any("check -c" in c for c in d["ExecStartPre"])
    # the state dir the sandbox leaves writable is the one the daemon writes
    assert "--state-dir ${STATE_DIRECTORY}" in d["ExecStart"][0]
    sysusers = (UNITS / "safegw.sysusers").read_text()
    assert "u safegw" in sysusers


def _argv(cmdline: str, env: dict[str, str]) -> list[str]:
    for k, v in env.items():
        cmdline = cmdline.replace("${" + k + "}", v)
    argv = shlex.split(cmdline)
    assert argv[0] == "/opt/safegw/bin/safegw"
    return argv[1:]


@pytest.mark.parametrize("unit", ["safegw.service", "safegw-central.service"])
def test_unit_command_lines_parse(unit: str) -> None:
    d = directives(UNITS / unit)
    env = dict(kv.split("=", 1) for e in d.get("Environment", []) for kv in shlex.split(e))
    env["STATE_DIRECTORY"] = "/var/lib/x"
    parser = build_parser()
    for key in ("ExecStartPre", "ExecStart"):
        for cmd in d[key]:
            argv = _argv(cmd, env)
            if argv[0] == "central" and "central" not in parser._subparsers._group_actions[0].choices:  # type: ignore[union-attr,operator]
                pytest.skip("the central command is not built in this checkout")
            args = parser.parse_args(argv)
            assert callable(args.func)
