"""The simulator configuration: strict pydantic models, YAML through gateway.yamlsrc.

A simulator file describes a plant: ``signals`` (one per simulated measurement, see
``simulators.scenario``), ``scenarios`` (scripted events by time offset) and
``devices`` (each serving some signals over one protocol)::

    seed: 7
    tick: 250ms
    signals:
      GT-101: {base: 0.5, noise: 0.3, resolution: 0.1, min: 0, max: 100}
    scenarios:
      - {kind: leak, signal: GT-101, start: 20s, rise: 30s, peak: 40, hold: 20s, fall: 30s, every: 3m}
      - {kind: silent, device: gas-bus, unit: 4, start: 90s, duration: 15s}
    devices:
      - name: gas-tcp
        protocol: modbus-tcp
        host: 127.0.0.1
        port: 15020            # 0 = any free port (tests); READY reports the real one
        units:
          - unit: 1
            points:
              - {signal: GT-101, address: input:0, type: int16, scale: 0.1}

Device kinds are a registry (``KINDS``: protocol → "module:Model"), so a protocol's
module brings its own device model and server. Every kind's model derives from
``SimDeviceBase`` and names its server class in ``server``
("module:Class", constructed as ``Server(model, plant)``; see ``simulators.runner``).
Each device is validated against its kind's model and errors are reported as
``FILE:LINE:COL: key.path: message`` like the gateway's config.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from gateway.core.config import ByteOrder, DataType, Strict, parse_modbus_address
from gateway.core.configcheck import ConfigError, explain, format_error, loc_path
from gateway.core.units import Duration, Number
from gateway.core.yamlsrc import Path_, Source, YamlError, load_file, load_text

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class Signal(Strict):
    """One simulated measurement. Value at time t (seconds since start)::

        base + drift·sin(2πt/drift_period + φ) + daily·cos(2π(hour(t) − daily_peak)/24)
             + noise·N(0,1)  [+ scenario effects], clamped to [min, max], rounded to resolution
    """

    base: Number = 0.0
    noise: Number = Field(default=0.0, ge=0, description="standard deviation of gaussian noise")
    drift: Number = Field(default=0.0, ge=0, description="amplitude of a slow wander")
    drift_period: Duration = Field(default=900.0, gt=0)
    daily: Number = Field(default=0.0, ge=0, description="amplitude of the daily cycle")
    daily_peak: Number = Field(default=14.0, ge=0, lt=24, description="hour of the daily maximum")
    resolution: Number = Field(default=0.0, ge=0, description="instrument resolution; 0 = none")
    min: Number | None = Field(default=None, description="instrument span low end (clamp)")
    max: Number | None = Field(default=None, description="instrument span high end (clamp)")


ScenarioKind = Literal["leak", "spike", "stuck", "set", "silent", "exception", "disconnect",
                       "restart", "bad_status", "garbage", "checksum", "partial"]
#: kinds that act on a signal's value / status, and kinds that act on a device
SIGNAL_KINDS = ("leak", "spike", "stuck", "set", "bad_status")
DEVICE_KINDS = ("silent", "exception", "disconnect", "restart", "garbage", "checksum", "partial")


class Scenario(Strict):
    """A scripted event: active from ``start`` for ``duration`` (leak: rise+hold+fall),
    repeated every ``every`` (optionally ``count`` times)."""

    kind: ScenarioKind
    signal: str | None = None
    device: str | None = None
    unit: int | None = Field(default=None, ge=0, le=255, description="one unit of a device (Modbus)")
    start: Duration = 0.0
    duration: Duration | None = None
    every: Duration | None = Field(default=None, gt=0)
    count: int | None = Field(default=None, ge=1)
    # leak: ramp up to `peak` over `rise`, hold, fall back over `fall` (added to the signal)
    rise: Duration = 0.0
    hold: Duration = 0.0
    fall: Duration = 0.0
    peak: Number = 0.0
    # spike (added) / set (replaces the value)
    value: Number = 0.0
    # exception: the Modbus exception code; bad_status: the OPC-UA status code name
    code: int = Field(default=4, ge=1, le=255)
    status: str = "BadSensorFailure"

    @model_validator(mode="after")
    def _targets(self) -> Scenario:
        if self.kind in SIGNAL_KINDS and not self.signal:
            raise ValueError(f"a {self.kind} scenario needs 'signal:'")
        if self.kind in DEVICE_KINDS and not self.device:
            raise ValueError(f"a {self.kind} scenario needs 'device:'")
        if self.kind == "leak":
            if self.rise + self.hold + self.fall <= 0:
                raise ValueError("a leak needs rise/hold/fall durations")
        elif self.duration is None:
            raise ValueError(f"a {self.kind} scenario needs 'duration:'")
        if self.every is not None and self.every < self.length:
            raise ValueError(f"every ({self.every:g}s) is shorter than the event ({self.length:g}s)")
        return self

    @property
    def length(self) -> float:
        if self.kind == "leak":
            return self.rise + self.hold + self.fall
        return float(self.duration or 0.0)


class SimDeviceBase(Strict):
    """Fields every simulated device has; kinds add theirs (``protocol`` is the tag)."""

    #: "module:Class" of the server that serves this kind
    server: ClassVar[str] = ""
    name: str = Field(pattern=_NAME)
    protocol: str


# --------------------------------------------------------------------- Modbus

class ModbusPoint(Strict):
    """A signal mapped onto registers/bits, encoded like the gateway decodes it:
    ``raw = (value − offset) / scale``."""

    signal: str | None = Field(default=None, description="signal name; or give 'value'")
    value: Number | None = Field(default=None, description="a constant instead of a signal")
    address: str
    type: DataType = "uint16"
    byte_order: ByteOrder = "ABCD"
    scale: Number = 1.0
    offset: Number = 0.0
    threshold: Number = Field(default=0.5, description="bool points: value >= threshold is 1")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        parse_modbus_address(v)
        return v

    @model_validator(mode="after")
    def _source(self) -> ModbusPoint:
        if (self.signal is None) == (self.value is None):
            raise ValueError("give exactly one of 'signal' or 'value'")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        return self


class ModbusUnit(Strict):
    unit: int = Field(ge=0, le=255)
    points: list[ModbusPoint] = Field(default_factory=list)
    size: int = Field(default=1000, ge=1, le=65536, description="registers/bits per table")
    baudrate: int | None = Field(default=None, ge=300, le=1_000_000,
                                 description="RTU: this unit's own rate (default: the line's); "
                                             "frames at another rate are garbage to it")


class ModbusTcpSim(SimDeviceBase):
    server: ClassVar[str] = "simulators.modbus:ModbusTcpServer"
    protocol: Literal["modbus-tcp"]
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 = any free port")
    units: list[ModbusUnit] = Field(min_length=1)


class ModbusRtuSim(SimDeviceBase):
    server: ClassVar[str] = "simulators.modbus:ModbusRtuServer"
    protocol: Literal["modbus-rtu"]
    link: Path = Field(description="the gateway's end of the pty pair (a symlink socat keeps)")
    baudrate: int = 9600
    replug_delay: Duration = Field(default=1.0, description="pause before re-creating a vanished pty pair")
    units: list[ModbusUnit] = Field(min_length=1)


#: protocol → "module:Model". Models are imported on first use.
KINDS: dict[str, str] = {
    "modbus-tcp": "simulators.config:ModbusTcpSim",
    "modbus-rtu": "simulators.config:ModbusRtuSim",
    "opcua": "simulators.opcua:OpcUaSim",
    "serial": "simulators.serial:SerialSim",
    "modem": "simulators.modem:ModemSim",
    "hj212-platform": "simulators.hj212_platform:Hj212PlatformSim",
}


def device_model(protocol: str) -> type[SimDeviceBase]:
    try:
        target = KINDS[protocol]
    except KeyError:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(KINDS)}") from None
    module, _, cls = target.partition(":")
    model: type[SimDeviceBase] = getattr(importlib.import_module(module), cls)
    return model


# --------------------------------------------------------------------- top level

class SimConfig(Strict):
    seed: int = 1
    tick: Duration = Field(default=0.25, gt=0, description="how often values are recomputed")
    signals: dict[str, Signal] = Field(default_factory=dict)
    scenarios: list[Scenario] = Field(default_factory=list)
    devices: list[dict[str, Any]] = Field(default_factory=list)

    # filled by validate(): each device validated against its kind's model
    _devices: list[SimDeviceBase] = []  # noqa: RUF012 - a pydantic private attribute

    @property
    def device_models(self) -> list[SimDeviceBase]:
        return self._devices


def _device_errors(src: Source, i: int, raw: dict[str, Any]) -> tuple[SimDeviceBase | None, list[str]]:
    base: Path_ = ("devices", i)
    proto = raw.get("protocol")
    if not isinstance(proto, str):
        return None, [format_error(src, base, f"a device needs 'protocol:', one of: {', '.join(KINDS)}")]
    try:
        model = device_model(proto)
    except ValueError as e:
        return None, [format_error(src, (*base, "protocol"), str(e))]
    except ImportError as e:
        return None, [format_error(src, (*base, "protocol"), f"{proto} simulators are not available: {e}")]
    try:
        return model.model_validate(raw), []
    except ValidationError as e:
        return None, [format_error(src, (*base, *loc_path(err["loc"])), explain(dict(err)))
                      for err in e.errors()]


def _cross(cfg: SimConfig, devs: list[SimDeviceBase]) -> list[tuple[Path_, str]]:
    errs: list[tuple[Path_, str]] = []
    names = {d.name for d in devs}
    seen: set[str] = set()
    for i, d in enumerate(devs):
        if d.name in seen:
            errs.append((("devices", i, "name"), f"device name {d.name!r} is used twice"))
        seen.add(d.name)
        for path, signal in _signal_refs(d):
            if signal not in cfg.signals:
                errs.append((("devices", i, *path), f"unknown signal {signal!r}; define it under 'signals:'"))
    for i, s in enumerate(cfg.scenarios):
        if s.signal is not None and s.signal not in cfg.signals:
            errs.append((("scenarios", i, "signal"), f"unknown signal {s.signal!r}"))
        if s.device is not None and s.device not in names:
            errs.append((("scenarios", i, "device"),
                         f"unknown device {s.device!r}; known: {', '.join(sorted(names))}"))
    return errs


def _signal_refs(dev: SimDeviceBase) -> list[tuple[Path_, str]]:
    """(path, signal) for every signal a device serves, found by walking its model."""
    out: list[tuple[Path_, str]] = []

    def walk(obj: Any, path: Path_) -> None:
        if isinstance(obj, BaseModel):
            for key in type(obj).model_fields:
                v = getattr(obj, key)
                if key == "signal" and isinstance(v, str):
                    out.append(((*path, key), v))
                else:
                    walk(v, (*path, key))
        elif isinstance(obj, list):
            for j, v in enumerate(obj):
                walk(v, (*path, j))

    walk(dev, ())
    return out


def validate(src: Source) -> SimConfig:
    if not isinstance(src.data, dict):
        raise ConfigError([f"{src.file}:1:1: (top): the file must be a mapping with 'signals:' "
                           "and 'devices:'"])
    try:
        cfg = SimConfig.model_validate(src.data)
    except ValidationError as e:
        raise ConfigError([format_error(src, loc_path(err["loc"]), explain(dict(err)))
                           for err in e.errors()]) from None
    lines: list[str] = []
    devs: list[SimDeviceBase] = []
    for i, raw in enumerate(cfg.devices):
        dev, errs = _device_errors(src, i, raw)
        lines += errs
        if dev is not None:
            devs.append(dev)
    if not lines:
        lines += [format_error(src, p, m) for p, m in _cross(cfg, devs)]
    if lines:
        raise ConfigError(lines)
    cfg._devices = devs
    return cfg


def load(path: str | Path) -> SimConfig:
    """Load a YAML file; a ``.json`` file (generated plants, e.g. the benchmark's farm) is read
    with the JSON parser, which is much faster for tens of thousands of points."""
    if str(path).endswith(".json"):
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError([f"{path}:1:1: {e}"]) from None
        return validate(Source(str(path), data))
    try:
        return validate(load_file(path))
    except YamlError as e:
        raise ConfigError([str(e)]) from None


def loads(text: str, file: str = "<string>") -> SimConfig:
    try:
        return validate(load_text(text, file))
    except YamlError as e:
        raise ConfigError([str(e)]) from None
