"""The sample instrument configs: each passes ``safegw check`` and parses the frame its comment shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from drivers.serial.driver import frame_spec
from drivers.serial.frames import FrameParser, checksum_text
from gateway.config import load
from gateway.core.batch import Quality

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "config" / "instruments").glob("*.yaml"))


def test_there_are_samples():
    names = {p.stem for p in SAMPLES}
    assert {"sound-level-meter", "dust-monitor", "gamma-dose-rate"} <= names


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_sample_passes_safegw_check(path):
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "check", "-c", str(path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok:")


def parse(path: Path, frame: bytes):
    dev = load(path).devices[0]
    return FrameParser(frame_spec(dev)).parse(frame)


def test_sound_level_meter_line():
    body = b"LAeq=078.4,LCpk=101.2,LAFmax=083.0"
    line = body + b"*" + checksum_text("xor", "hex", body)
    r = parse(ROOT / "config/instruments/sound-level-meter.yaml", line)
    assert r.cause == Quality.GOOD and r.values == [78.4, 101.2, 83.0]


def test_dust_monitor_answer():
    body = b"PM10=0.128,PM2.5=0.061,TSP=0.201 mg/m3"
    r = parse(ROOT / "config/instruments/dust-monitor.yaml", body + b";" + checksum_text("sum8", "hex", body))
    assert r.cause == Quality.GOOD
    assert dict(zip(r.positions, r.values, strict=True)) == {0: 0.128, 1: 0.061, 2: 0.201}


def test_gamma_monitor_frame():
    text = b" 0.1234 uSv/h OK"
    frame = b"\x02" + text + checksum_text("crc16-modbus", "binary", text)
    assert len(frame) == 19
    path = ROOT / "config/instruments/gamma-dose-rate.yaml"
    r = parse(path, frame)
    assert r.cause == Quality.GOOD and r.values == [0.1234]
    assert parse(path, frame[:-1] + bytes([frame[-1] ^ 1])).cause == Quality.CHECKSUM
