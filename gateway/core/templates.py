"""Device templates: a device model described once, expanded into channels by the loader.

A template file (``config/templates/<name>.yaml``, or a path relative to the config) lists
a model's points: registers, types, byte orders, kinds, units, ranges, status words broken
into bits, default alarm presets. A device names it::

    - name: gas-ctl-1
      protocol: modbus-tcp
      host: 10.0.0.8
      template: gas-controller-8ch     # or units: [{unit: 3, template: ..., prefix: ...}]
      prefix: GC1.
      overrides: {ch1.gas: {alarms: {h: 25, hh: 50}}}
      channels: [...]                  # own channels too: they come first

Expansion happens on the YAML data before the models see it, so the daemon, ``check``
and ``read`` all get the same channels. Errors in a template are reported at its own
FILE:LINE:COL; errors in an expanded channel at the device's ``template:`` (or the
override's) line.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, field_validator

from gateway.core.config import ID_PATTERN, AlarmSettings, ModbusChannel, parse_modbus_address
from gateway.core.strict import Strict
from gateway.core.yamlsrc import Mark, Path_, Source, YamlError, dotted, load_file

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "config" / "templates"
MAX_POINTS = 2000
POINT_KEYS = set(ModbusChannel.model_fields) - {"name"}


class TemplatePoint(Strict):
    """One point; any ModbusChannel setting but the name, which is ``prefix + suffix``."""

    suffix: str = Field(min_length=1, max_length=64, pattern=r"^[^\s/#+]+$")
    bits: dict[int, str] | None = Field(default=None, description="a status word: bit → suffix of a "
                                        "bool channel (kind status) read from that bit")
    model_config = ConfigDict(extra="allow")  # the channel settings, checked against ModbusChannel

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: dict[int, str] | None) -> dict[int, str] | None:
        if v is not None and any(not 0 <= b <= 15 for b in v):
            raise ValueError("bits are numbered 0-15")
        return v


class Template(Strict):
    template: str = Field(pattern=ID_PATTERN)
    description: str = Field(max_length=500)
    source: str = Field(min_length=1, max_length=2000, description="the public manual the register map "
                        "comes from (title, edition, page or URL)")
    confirmed: str = Field(description="what was confirmed from that source and what was not")
    points: list[TemplatePoint] = Field(min_length=1, max_length=MAX_POINTS)


@dataclass
class Loaded:
    src: Source
    model: Template
    channels: list[tuple[str, dict[str, Any], Path_]]  # (suffix, channel settings, path in the template)


_CACHE: dict[Path, Loaded] = {}


def clear_cache() -> None:
    """Forget the templates read so far (a live reload reads them again from disk)."""
    _CACHE.clear()


def template_path(name: str, base_dir: Path) -> Path:
    if "/" in name or name.endswith((".yaml", ".yml")):
        p = Path(name).expanduser()
        return p if p.is_absolute() else base_dir / p
    return TEMPLATE_DIR / f"{name}.yaml"


def available() -> list[Path]:
    return sorted(TEMPLATE_DIR.glob("*.yaml"))


class TemplateError(Exception):
    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


def _plain(err: dict[str, Any]) -> str:
    return str(err["msg"]).removeprefix("Value error, ")


def load_template(path: Path, explain: Callable[[dict[str, Any]], str] = _plain) -> Loaded:
    """Read, check and expand a template file; errors as ``FILE:LINE:COL: path: message``.
    ``explain`` words a pydantic error (configcheck passes its own: this module may not
    import configcheck, which calls it)."""
    key = path.resolve()
    if key in _CACHE:
        return _CACHE[key]
    try:
        src = load_file(path)
    except YamlError as e:
        raise TemplateError([str(e)]) from None
    except OSError as e:
        raise TemplateError([f"{path}:1:1: (file): {e.strerror}"]) from None

    def at(p: Path_, msg: str) -> str:
        m = src.where(p)
        return f"{src.file}:{m.line}:{m.col}: {dotted(src.real_path(p) or p)}: {msg}"

    try:
        model = Template.model_validate(src.data)
    except ValidationError as e:
        raise TemplateError([at(tuple(err["loc"]), explain(dict(err))) for err in e.errors()]) from None
    errors: list[str] = []
    channels: list[tuple[str, dict[str, Any], Path_]] = []
    seen: set[str] = set()
    for i, pt in enumerate(model.points):
        here: Path_ = ("points", i)
        settings = {k: v for k, v in (pt.model_extra or {}).items()}
        unknown = set(settings) - POINT_KEYS
        if unknown:
            errors.append(at((*here, sorted(unknown)[0]), f"unknown key; a point takes suffix, bits and "
                             f"the channel settings: {', '.join(sorted(POINT_KEYS))}"))
            continue
        expanded = [(pt.suffix, settings)]
        if pt.bits:
            try:
                func, reg, bit = parse_modbus_address(str(settings.get("address", "")))
            except ValueError as e:
                errors.append(at((*here, "address"), str(e)))
                continue
            if func not in ("holding", "input") or bit is not None:
                errors.append(at((*here, "bits"), "bits break up a whole holding or input register"))
                continue
            for b, name in sorted(pt.bits.items()):
                expanded.append((f"{pt.suffix}.{name}", {"kind": "status", "address": f"{func}:{reg}.{b}",
                                                          "type": "bool"}))
        for suffix, s in expanded:
            if suffix in seen:
                errors.append(at((*here, "suffix"), f"suffix {suffix!r} appears twice"))
                continue
            seen.add(suffix)
            try:
                ModbusChannel.model_validate({"name": "t" + suffix, **s})
            except ValidationError as e:
                err = e.errors()[0]
                errors.append(at((*here, *err["loc"]), explain(dict(err))))
                continue
            channels.append((suffix, s, here))
    if errors:
        raise TemplateError(errors)
    loaded = Loaded(src, model, channels)
    _CACHE[key] = loaded
    return loaded


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k == "alarms" and isinstance(v, dict) and isinstance(out.get("alarms"), dict):
            out["alarms"] = {**out["alarms"], **v}
        else:
            out[k] = v
    return out


def _expand_one(holder: dict[str, Any], path: Path_, src: Source, base_dir: Path,
                explain: Callable[[dict[str, Any]], str]) -> list[str]:
    """Replace ``template/prefix/overrides`` in a device (or RTU unit) by its channels."""
    name = holder.pop("template")
    prefix = holder.pop("prefix", "")
    overrides = holder.pop("overrides", None) or {}
    tmark = src.key_marks.get((*path, "template"), src.where((*path, "template")))

    def err(p: Path_, msg: str, mark: Mark | None = None) -> str:
        m = mark or src.where(p)
        return f"{src.file}:{m.line}:{m.col}: {dotted(p)}: {msg}"

    if not isinstance(name, str) or not isinstance(prefix, str) or not isinstance(overrides, dict):
        return [err((*path, "template"), "template: a name or path; prefix: text; overrides: a mapping of "
                                         "point suffix to settings", tmark)]
    p = template_path(name, base_dir)
    if not p.is_file():
        known = ", ".join(t.stem for t in available())
        return [err((*path, "template"), f"no template {name!r} (no file {p}); shipped: {known}", tmark)]
    try:
        t = load_template(p, explain)
    except TemplateError as e:
        return [f"{src.file}:{tmark.line}:{tmark.col}: {dotted((*path, 'template'))}: template {name!r} "
                "is invalid:", *("  " + line for line in e.lines)]
    suffixes = {s for s, _, _ in t.channels}
    errors = [err((*path, "overrides", k), f"template {name} has no point {k!r}; its points: "
                  + ", ".join(sorted(suffixes)), src.key_marks.get((*path, "overrides", k)))
              for k in overrides if k not in suffixes]
    errors += [err((*path, "overrides", k), "give a mapping of channel settings")
               for k, v in overrides.items() if not isinstance(v, dict)]
    if errors:
        return errors
    # the device's own channels first: their marks (and so their error lines) stay as written
    own = holder.get("channels") or []
    chans: list[dict[str, Any]] = list(own) if isinstance(own, list) else []
    src.marks.setdefault((*path, "channels"), tmark)
    for suffix, settings, _ in t.channels:
        over = overrides.get(suffix)
        if over is not None and over.get("enabled") is False:
            continue  # a point the plant did not wire
        merged = _merge(settings, {k: v for k, v in (over or {}).items() if k != "enabled"})
        merged = {"name": f"{prefix}{suffix}", **merged}
        cpath: Path_ = (*path, "channels", len(chans))
        src.marks[cpath] = src.where((*path, "overrides", suffix)) if over is not None else tmark
        chans.append(merged)
    holder["channels"] = chans
    return []


def expand_templates(src: Source, base_dir: Path,
                     explain: Callable[[dict[str, Any]], str] = _plain) -> list[str]:
    """Expand every ``template:`` of ``devices`` in place; the error lines, if any."""
    devices = src.data.get("devices") if isinstance(src.data, dict) else None
    if not isinstance(devices, list):
        return []
    errors: list[str] = []
    for i, dev in enumerate(devices):
        if not isinstance(dev, dict):
            continue
        if "template" in dev:
            errors += _expand_one(dev, ("devices", i), src, base_dir, explain)
        for u, unit in enumerate(dev.get("units") or []):
            if isinstance(unit, dict) and "template" in unit:
                errors += _expand_one(unit, ("devices", i, "units", u), src, base_dir, explain)
    return errors


__all__ = ["AlarmSettings", "Template", "TemplateError", "available", "expand_templates", "load_template"]
