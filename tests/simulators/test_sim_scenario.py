"""The scenario engine: signals, scripted scenarios, faults; and the simulator config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.core.configcheck import ConfigError
from simulators.config import load, loads
from simulators.scenario import Fault, Plant

ROOT = Path(__file__).resolve().parents[2]

BASE = """
seed: 11
tick: 1s
signals:
  A: {base: 10}
  N: {base: 50, noise: 2, resolution: 0.5, min: 0, max: 100}
  C: {base: 99, noise: 5, min: 0, max: 100}
scenarios:
%s
devices:
  - {name: dev, protocol: modbus-tcp, units: [{unit: 1, points: [{signal: A, address: input:0}]},
                                              {unit: 2, points: [{signal: N, address: input:0}]}]}
"""


def plant(scenarios: str = "  []", seed: int | None = None) -> Plant:
    text = BASE % scenarios if scenarios.strip() != "[]" else BASE.replace("scenarios:\n%s\n", "")
    return Plant.from_config(loads(text), seed=seed)


def test_values_are_deterministic_per_seed_and_time() -> None:
    a, b, c = plant(), plant(), plant(seed=12)
    ts = [0.0, 0.5, 1.0, 17.3, 3600.0]
    assert [a.values(t) for t in ts] == [b.values(t) for t in ts]
    assert [a.values(t)["N"] for t in ts] != [c.values(t)["N"] for t in ts]
    # noise is drawn once per tick: stable within a tick, new in the next
    assert a.value("N", 5.1) == a.value("N", 5.9)


def test_noise_resolution_and_span() -> None:
    p = plant()
    n = np.array([p.value("N", float(t)) for t in range(2000)])
    assert 1.6 < n.std() < 2.4 and abs(n.mean() - 50) < 0.3
    assert np.allclose(n * 2, np.round(n * 2))  # multiples of the 0.5 resolution
    c = np.array([p.value("C", float(t)) for t in range(500)])
    assert c.max() == 100.0 and (c <= 100).all()  # clamped to the instrument span


def test_leak_ramps_holds_falls_and_repeats() -> None:
    p = plant("  - {kind: leak, signal: A, start: 10s, rise: 10s, peak: 40, hold: 5s, fall: 20s, "
              "every: 100s}")
    assert p.value("A", 9.9) == 10
    assert p.value("A", 15) == pytest.approx(30)  # half way up
    assert p.value("A", 22) == pytest.approx(50)  # holding at peak
    assert p.value("A", 35) == pytest.approx(30)  # half way down
    assert p.value("A", 45.5) == 10  # over
    assert p.value("A", 115) == pytest.approx(30)  # the next one


def test_spike_set_and_count() -> None:
    p = plant("  - {kind: spike, signal: A, start: 5s, duration: 2s, value: 7, every: 10s, count: 2}\n"
              "  - {kind: set, signal: N, start: 1s, duration: 1s, value: 3}")
    assert [p.value("A", t) for t in (4.9, 5, 6.9, 7, 15, 25)] == [10, 17, 17, 10, 17, 10]
    assert p.value("N", 1.5) == 3


def test_stuck_sensor_freezes_at_window_start() -> None:
    p = plant("  - {kind: stuck, signal: N, start: 20s, duration: 30s}")
    frozen = {p.value("N", float(t)) for t in range(20, 50)}
    assert frozen == {p.value("N", 20.0)}
    assert len({p.value("N", float(t)) for t in range(50, 80)}) > 1


def test_device_faults_by_time_and_unit() -> None:
    p = plant("  - {kind: silent, device: dev, unit: 2, start: 10s, duration: 5s}\n"
              "  - {kind: exception, device: dev, code: 6, start: 30s, duration: 5s}\n"
              "  - {kind: bad_status, signal: A, start: 40s, duration: 1s, status: BadCommunicationError}")
    assert p.device_fault("dev", 12, unit=2) == Fault("silent", 4, 2)
    assert p.device_fault("dev", 12, unit=1) is None
    assert p.device_fault("dev", 16, unit=2) is None
    assert p.device_fault("dev", 31, unit=1) == Fault("exception", 6, None)
    assert p.device_fault("other", 31) is None
    assert p.signal_status("A", 40.5) == "BadCommunicationError"
    assert p.signal_status("A", 41.5) is None


def test_forced_faults_and_values_override() -> None:
    p = plant()
    p.force_fault("dev", Fault("silent"), unit=1)
    assert p.device_fault("dev", 0, unit=1) == Fault("silent")
    assert p.device_fault("dev", 0, unit=2) is None
    p.force_fault("dev", None, unit=1)
    assert p.device_fault("dev", 0, unit=1) is None
    p.force_value("A", 42)
    assert p.value("A", 3) == 42
    p.force_value("A", None)
    assert p.value("A", 3) == 10
    with pytest.raises(KeyError):
        p.force_value("nope", 1)


@pytest.mark.parametrize(("scenarios", "expect"), [
    ("  - {kind: leak, signal: Z, rise: 1s}", "scenarios[0].signal: unknown signal 'Z'"),
    ("  - {kind: silent, device: nope, duration: 1s}", "scenarios[0].device: unknown device 'nope'"),
    ("  - {kind: spike, signal: A}", "a spike scenario needs 'duration:'"),
    ("  - {kind: silent, duration: 1s}", "a silent scenario needs 'device:'"),
    ("  - {kind: leak, signal: A, rise: 10s, every: 5s}", "every (5s) is shorter than the event (10s)"),
    ("  - {kind: melt, signal: A}", "scenarios[0].kind"),
])
def test_bad_scenarios_are_reported(scenarios: str, expect: str) -> None:
    with pytest.raises(ConfigError) as ei:
        loads(BASE % scenarios, "sim.yaml")
    assert any(expect in line and line.startswith("sim.yaml:") for line in ei.value.lines), ei.value.lines


def test_device_errors_name_file_line_and_path() -> None:
    text = """signals: {A: {base: 1}}
devices:
  - name: d
    protocol: modbus-tcp
    units:
      - unit: 1
        points:
          - {signal: B, address: input:0}
          - {signal: A, address: "input:x"}
  - {name: e, protocol: profibus}
"""
    with pytest.raises(ConfigError) as ei:
        loads(text, "sim.yaml")
    lines = ei.value.lines
    assert any(ln.startswith("sim.yaml:9:") and "devices[0].units[0].points[1].address" in ln for ln in lines)
    assert any(ln.startswith("sim.yaml:10:") and "unknown protocol 'profibus'" in ln and "modbus-rtu" in ln
               for ln in lines), lines


def test_demo_plant_crosses_its_alarm_limits() -> None:
    """The demo's leak must take GT-101 past h (20) and hh (40) and back, every 3 minutes."""
    from gateway.config import load as load_gateway
    from gateway.core.config import device_channels

    sim = load(ROOT / "config" / "sim-demo.yaml")
    gw = load_gateway(ROOT / "config" / "demo.yaml")
    p = Plant.from_config(sim)
    from rules.settings import resolve

    # the limits as the gateway applies them (presets resolved: AT-201 takes gbt50493's)
    limits = {c.name: resolve(c) for d in gw.devices for _, c in device_channels(d)}
    ts = np.arange(0, 360, 0.5)
    names = ("GT-101", "AT-201", "AT-301", "PT-101", "LT-101")
    series = {n: np.array([p.value(n, float(t)) for t in ts]) for n in names}
    for name, s in series.items():
        a = limits[name]
        if name == "AT-301":  # oxygen falls
            assert s.min() < a.l and s[:20].min() > a.l
        else:
            assert s.max() > a.h, f"{name} never passes {a.h}"
            assert s[:20].max() < a.h, f"{name} starts in alarm"
    # the leak repeats: GT-101 is above hh in both 3-minute periods
    gt = series["GT-101"]
    assert (gt[ts < 180] > 40).any() and (gt[ts >= 180] > 40).any()
