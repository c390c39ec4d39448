"""``safegw run`` parses its config in a child process (gateway.config.load_apart), so the
parse's peak memory goes back to the system: the result, the errors and the fallbacks
must be exactly those of the plain ``load``."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import config as gwconfig
from gateway.config import ConfigError, load, load_apart
from gateway.core.config import device_channels

ROOT = Path(__file__).resolve().parents[2]


def plant(tmp_path: Path, channels: int) -> Path:
    lines = ["gateway:", "  id: gw-apart", '  site: "S1"', f"  state_dir: {tmp_path / 'st'}", "devices:"]
    for d in range(channels // 500):
        lines += [f"  - name: dev{d}", "    protocol: modbus-tcp", "    host: 127.0.0.1",
                  f"    port: {1502 + d}", "    channels:"]
        lines += [f"      - {{name: d{d}.c{c}, kind: gas, unit: ppm, address: 'input:{2 * c}', "
                  f"type: float32, alarms: {{h: {c % 90 + 5}}}}}" for c in range(500)]
    path = tmp_path / "plant.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("name", ["demo.yaml", "reference.yaml"])
def test_the_bundled_configs_come_back_identical(name: str) -> None:
    path = ROOT / "config" / name
    assert load_apart(path).model_dump() == load(path).model_dump()


def test_a_large_plant_comes_back_identical(tmp_path: Path) -> None:
    path = plant(tmp_path, 2000)
    apart, here = load_apart(path), load(path)
    assert apart.model_dump() == here.model_dump()
    assert apart.base_dir == here.base_dir
    assert sum(len(device_channels(d)) for d in apart.devices) == 2000


def test_config_errors_are_the_same(tmp_path: Path) -> None:
    path = plant(tmp_path, 500)
    text = path.read_text()
    path.write_text(text.replace("type: float32, alarms: {h: 5}", "type: float33, alarms: {h: 5}"))
    with pytest.raises(ConfigError) as here:
        load(path)
    with pytest.raises(ConfigError) as apart:
        load_apart(path)
    assert apart.value.lines == here.value.lines
    assert any(":11:71:" in line and "float33" in line for line in apart.value.lines), apart.value.lines
    with pytest.raises(ConfigError) as missing:
        load_apart(tmp_path / "nothing.yaml")
    assert "file not found" in "\n".join(missing.value.lines)


def test_a_failing_child_falls_back_to_loading_here(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    path = plant(tmp_path, 500)

    def broken(obj: object, protocol: int | None = None) -> bytes:
        raise pickle.PicklingError("cannot pickle this")

    monkeypatch.setattr(gwconfig.pickle, "dumps", broken)  # the forked child inherits it
    cfg = load_apart(path)
    assert cfg.model_dump() == load(path).model_dump()
    assert "loading it in a child process failed" in caplog.text


def test_a_stuck_child_is_killed_and_the_config_loaded_here(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    path = plant(tmp_path, 500)
    monkeypatch.setattr(gwconfig, "APART_TIMEOUT_S", 0.5)
    real_load = gwconfig.load
    parent = os.getpid()

    def stuck(p: str | Path) -> object:
        if os.getpid() != parent:  # only in the child: as if a lock copied at fork were never released
            os.read(os.pipe()[0], 1)
        return real_load(p)

    monkeypatch.setattr(gwconfig, "load", stuck)
    cfg = load_apart(path)
    assert cfg.gateway.id == "gw-apart"
    assert "child process failed" in caplog.text


def test_safegw_run_refuses_a_bad_config_with_its_line(tmp_path: Path) -> None:
    """The daemon's own command: errors from the child reach stderr as FILE:LINE:COL, exit 2."""
    path = plant(tmp_path, 500)
    path.write_text(path.read_text().replace("    port: 1502\n", "    port: 99999\n"))
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "-c", str(path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2, r.stderr
    assert f"{path}:9:11:" in r.stderr and "port" in r.stderr, r.stderr
