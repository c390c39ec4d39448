"""The scenario engine: what every simulated sensor reads at time t, and which faults are on.

Protocol servers (Modbus, OPC-UA, serial) do not invent values: each tick they ask
the plant. Everything is a pure function of ``(seed, t)``, with ``t`` in seconds since
the simulator started, so a run is reproducible and a test can compute what a device
must be serving at any moment.

API::

    from simulators.config import load
    from simulators.scenario import Plant, Fault

    cfg = load("config/sim-demo.yaml")
    plant = Plant.from_config(cfg)            # or Plant(signals, scenarios, seed=..., tick=...)
    plant.values(t)       -> dict[str, float] # every signal at t (noise, drift, daily cycle,
                                              # scenarios, clamped to the span, quantized)
    plant.value(name, t)  -> float
    plant.array(t)        -> np.ndarray       # the same, in plant.names order (fast path)
    plant.device_fault(device, t, unit=None) -> Fault | None
                                              # Fault.kind: 'silent' (no answer), 'exception'
                                              # (answer with Fault.code), 'disconnect' (drop
                                              # connections, refuse new ones), 'restart'
                                              # (OPC-UA: server goes away and comes back)
    plant.signal_status(name, t) -> str | None
                                              # a bad status to report for that signal
                                              # (OPC-UA status code name, e.g. 'BadSensorFailure')
    plant.force_fault(device, Fault | None, unit=None)  # manual override (tests, --control)
    plant.force_value(name, value | None)     # pin a signal to a value, None releases it
    plant.reset_overrides()                   # drop every forced fault and value

Signals (``simulators.config.Signal``): ``base`` + slow drift (a sine of period
``drift_period`` with a seeded phase) + daily cycle (peak at ``daily_peak`` o'clock,
local time of day taken as ``t0_hour + t/3600``) + gaussian ``noise`` (one draw per
``tick``, so a value is stable within a tick and the same for every caller), then
scenario effects, clamped to ``[min, max]`` and rounded to ``resolution``.

Scenarios (``simulators.config.Scenario``), each active in windows
``[start + k·every, start + k·every + length)``:

- ``leak``: adds a ramp 0 → ``peak`` over ``rise``, holds ``hold``, falls over ``fall``;
- ``spike``: adds ``value`` for ``duration``;
- ``set``: replaces the value with ``value``;
- ``stuck``: freezes the signal at its value when the window opened;
- ``bad_status``: the signal reports status ``status`` (value unchanged);
- ``silent`` / ``exception`` / ``disconnect`` / ``restart``: device faults (``unit`` narrows a
  Modbus fault to one unit id; ``code`` is the Modbus exception code).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from simulators.config import DEVICE_KINDS, Scenario, Signal, SimConfig

FaultKind = str  # 'silent' | 'exception' | 'disconnect' | 'restart'


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    code: int = 4
    unit: int | None = None  # None: the whole device


def window(sc: Scenario, t: float) -> float | None:
    """Seconds since the active window of ``sc`` opened, or None when it is not active."""
    if t < sc.start:
        return None
    since = t - sc.start
    k = 0
    if sc.every is not None:
        k = int(since // sc.every)
        since -= k * sc.every
    if sc.count is not None and k >= sc.count:
        return None
    if sc.every is None and since >= sc.length:
        return None
    return since if since < sc.length else None


def leak_shape(sc: Scenario, since: float) -> float:
    """The leak's added amount ``since`` seconds into its window."""
    if since < sc.rise:
        return sc.peak * since / sc.rise
    since -= sc.rise
    if since < sc.hold:
        return sc.peak
    since -= sc.hold
    if since < sc.fall:
        return sc.peak * (1.0 - since / sc.fall)
    return 0.0


class Plant:
    """Signals and scenarios of one simulated plant."""

    def __init__(self, signals: dict[str, Signal], scenarios: Iterable[Scenario] = (), *,
                 seed: int = 1, tick: float = 0.25, t0_hour: float = 8.0):
        self.signals = dict(signals)
        self.names: list[str] = list(self.signals)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.scenarios = list(scenarios)
        self.seed = seed
        self.tick = tick
        self.t0_hour = t0_hour
        sigs = [self.signals[n] for n in self.names]
        self._base = np.array([s.base for s in sigs], dtype=np.float64)
        self._noise = np.array([s.noise for s in sigs], dtype=np.float64)
        self._drift = np.array([s.drift for s in sigs], dtype=np.float64)
        self._drift_w = np.array([2 * math.pi / s.drift_period for s in sigs], dtype=np.float64)
        self._daily = np.array([s.daily for s in sigs], dtype=np.float64)
        self._daily_peak = np.array([s.daily_peak for s in sigs], dtype=np.float64)
        self._res = np.array([s.resolution for s in sigs], dtype=np.float64)
        self._lo = np.array([-np.inf if s.min is None else s.min for s in sigs], dtype=np.float64)
        self._hi = np.array([np.inf if s.max is None else s.max for s in sigs], dtype=np.float64)
        self._phase = np.random.default_rng([seed, 0x5eed]).uniform(0, 2 * math.pi, len(sigs))
        self._value_sc = [s for s in self.scenarios if s.kind in ("leak", "spike", "set")]
        self._stuck_sc = [s for s in self.scenarios if s.kind == "stuck"]
        self._status_sc = [s for s in self.scenarios if s.kind == "bad_status"]
        self._device_sc = [s for s in self.scenarios
                           if s.kind in DEVICE_KINDS]
        self._forced_values: dict[str, float] = {}
        self._forced_faults: dict[tuple[str, int | None], Fault] = {}

    @classmethod
    def from_config(cls, cfg: SimConfig, *, seed: int | None = None) -> Plant:
        return cls(cfg.signals, cfg.scenarios, seed=cfg.seed if seed is None else seed, tick=cfg.tick)

    # ------------------------------------------------------------------ values
    def _raw(self, t: float) -> npt.NDArray[np.float64]:
        """Signals at t with value scenarios applied, before stuck/clamp/quantize."""
        k = int(t // self.tick)
        noise = np.random.default_rng([self.seed, k]).standard_normal(len(self.names))
        hour = (self.t0_hour + t / 3600.0) % 24.0
        v = (self._base
             + self._drift * np.sin(self._drift_w * t + self._phase)
             + self._daily * np.cos(2 * math.pi * (hour - self._daily_peak) / 24.0)
             + self._noise * noise)
        for sc in self._value_sc:
            since = window(sc, t)
            if since is None:
                continue
            i = self.index[sc.signal]  # type: ignore[index]
            if sc.kind == "leak":
                v[i] += leak_shape(sc, since)
            elif sc.kind == "spike":
                v[i] += sc.value
            else:
                v[i] = sc.value
        return v

    def _finish(self, v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        v = np.clip(v, self._lo, self._hi)
        q = self._res > 0
        if q.any():
            # the second round drops binary noise: 14*0.1 is 1.4000000000000001
            v[q] = np.round(np.round(v[q] / self._res[q]) * self._res[q], 9)
            # rounding can step just outside the span
            v = np.clip(v, self._lo, self._hi)
        return v

    def array(self, t: float) -> npt.NDArray[np.float64]:
        """Every signal at t, in ``self.names`` order."""
        v = self._raw(t)
        for sc in self._stuck_sc:
            since = window(sc, t)
            if since is not None:
                i = self.index[sc.signal]  # type: ignore[index]
                v[i] = self._raw(t - since)[i]
        v = self._finish(v)
        for name, val in self._forced_values.items():
            v[self.index[name]] = val
        return v

    def values(self, t: float) -> dict[str, float]:
        return dict(zip(self.names, self.array(t).tolist(), strict=True))

    def value(self, name: str, t: float) -> float:
        return float(self.array(t)[self.index[name]])

    # ------------------------------------------------------------------ faults
    def device_fault(self, device: str, t: float, unit: int | None = None) -> Fault | None:
        """The fault a device (or one of its units) shows at t, or None.

        A whole-device fault applies to every unit; a unit fault only to that unit.
        Manual overrides (force_fault) win over scripted ones.
        """
        f = self._forced_faults.get((device, None))
        if f is None and unit is not None:
            f = self._forced_faults.get((device, unit))
        if f is not None:
            return f
        for sc in self._device_sc:
            if sc.device != device or (sc.unit is not None and sc.unit != unit):
                continue
            if window(sc, t) is not None:
                return Fault(sc.kind, sc.code, sc.unit)
        return None

    def signal_status(self, name: str, t: float) -> str | None:
        for sc in self._status_sc:
            if sc.signal == name and window(sc, t) is not None:
                return sc.status
        return None

    def force_fault(self, device: str, fault: Fault | None, unit: int | None = None) -> None:
        key = (device, unit)
        if fault is None:
            self._forced_faults.pop(key, None)
        else:
            self._forced_faults[key] = fault

    def reset_overrides(self) -> None:
        """Drop every force_fault / force_value: back to the scripted plant."""
        self._forced_faults.clear()
        self._forced_values.clear()

    def force_value(self, name: str, value: float | None) -> None:
        if name not in self.index:
            raise KeyError(f"unknown signal {name!r}")
        if value is None:
            self._forced_values.pop(name, None)
        else:
            self._forced_values[name] = float(value)
