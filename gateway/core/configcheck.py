"""Checking a config: the checks across fields, and the ``FILE:LINE:COL: key.path:
message`` report every config loader of safegw prints (the gateway's, central's, the
simulators').

``validate`` runs the pydantic models, then the checks across fields (duplicate channel
names, two devices on one serial port, a float32 on one register, a poll faster than its
timeout, ...), then any further checks a caller passes (the daemon adds its drivers' and
its rules'). Errors come out in file order, each at the line and column of the key to fix.
"""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from gateway.core.config import (
    ID_PATTERN,
    NODEID,
    PROTOCOLS,
    REG_WIDTH,
    Config,
    ModbusChannel,
    ModbusRtuDevice,
    ModbusTcpDevice,
    OpcUaChannel,
    OpcUaDevice,
    SerialChannel,
    SerialDevice,
    device_channels,
    parse_modbus_address,
)
from gateway.core.yamlsrc import Mark, Path_, Source, YamlError, dotted, load_file, load_text

#: a further check: the valid config → (path, message) for each problem
Check = Callable[[Config], Iterable[tuple[Path_, str]]]

# --------------------------------------------------------------------------- the report

class ConfigError(Exception):
    """One or more problems in a config file; ``lines`` are ready to print."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


_PATTERN_HELP = {
    ID_PATTERN: "use letters, digits, '.', '_' and '-' (at most 64, starting with a letter or digit)",
    r"^[^\s/#+]+$": "no spaces, '/', '#' or '+' in a channel name (they break MQTT topics and InfluxDB keys)",
}


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, list, Annotated, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in get_args(annotation):
        out.extend(_models_in(arg))
    return out


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model that holds the key at ``loc`` (pydantic's error location)."""
    cands: list[type[BaseModel]] = [Config]
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        tagged = [c for c in cands if "protocol" in c.model_fields
                  and part in get_args(c.model_fields["protocol"].annotation)]
        if tagged:
            cands = tagged
            continue
        nxt: list[type[BaseModel]] = []
        for c in cands:
            if part in c.model_fields:
                nxt.extend(_models_in(c.model_fields[part].annotation))
        cands = nxt
    return cands[0] if len(cands) == 1 else None


def _unknown_key(err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    key = str(loc[-1]) if loc else "?"
    model = _model_at(loc)
    if model is None:
        return "unknown key; check the spelling against the reference config (config/reference.yaml)"
    valid = list(model.model_fields)
    close = closest(key, valid)
    hint = f"did you mean {close!r}? " if close else ""
    return f"unknown key {key!r}; {hint}valid here: {', '.join(valid)}"


def closest(word: str, options: list[str], cutoff: float = 0.6) -> str | None:
    """The option most like ``word``; on a tie the first in the options' order (difflib's
    get_close_matches takes the largest string, so 'flaot' got 'float64', not 'float32')."""
    best, score = None, cutoff
    for o in options:
        r = difflib.SequenceMatcher(None, word, o).ratio()
        if r > score or (best is None and r == score):
            best, score = o, r
    return best


def explain(err: dict[str, Any]) -> str:
    t, msg = err["type"], err["msg"]
    ctx = err.get("ctx") or {}
    msg = msg.replace("Input should be", "must be")
    if t == "extra_forbidden":
        return _unknown_key(err)
    if t == "missing":
        return "required key is missing"
    tag_key = _tag_key(err)
    if tag_key != "protocol" and t in ("union_tag_invalid", "union_tag_not_found"):
        # another tagged union than the devices' (regulators: type)
        known = str(ctx.get("expected_tags", "")).replace("'", "")
        if t == "union_tag_invalid":
            return f"unknown {tag_key} {str(ctx.get('tag'))[:40]!r}; known: {known}"
        return f"'{tag_key}:' is missing" + (f"; one of: {known}" if known else "")
    if t == "union_tag_invalid":
        return (f"unknown protocol {ctx.get('tag')!r}; known protocols: {', '.join(PROTOCOLS)}")
    if t == "union_tag_not_found":
        return f"a device needs 'protocol:', one of: {', '.join(PROTOCOLS)}"
    if t == "string_pattern_mismatch" and ctx.get("pattern") in _PATTERN_HELP:
        return f"{_PATTERN_HELP[ctx['pattern']]} (got {err.get('input')!r})"
    if t == "literal_error":
        got = err.get("input")
        options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        close = closest(got, options) if isinstance(got, str) else None
        return f"{msg} (got {got!r}" + (f"; did you mean {close!r}?)" if close else ")")
    if t.startswith("value_error"):
        return msg.removeprefix("Value error, ")
    return f"{msg} (got {err.get('input')!r})" if "input" in err and not isinstance(
        err.get("input"), dict | list) else msg


def _tag_key(err: dict[str, Any]) -> str:
    """The key a tagged union is told apart by (``protocol`` for devices, ``type`` ...)."""
    return str((err.get("ctx") or {}).get("discriminator", "protocol")).strip("'")


def loc_path(loc: tuple[Any, ...]) -> Path_:
    return tuple(p for p in loc if isinstance(p, str | int))


def format_error(src: Source, path: Path_, message: str, mark: Mark | None = None) -> str:
    m = mark or src.where(path)
    shown = src.real_path(path)
    # keep the trailing key for unknown / missing keys so the path names it
    if path and path[-1] not in shown and isinstance(path[-1], str):
        shown = (*shown, path[-1])
    return f"{src.file}:{m.line}:{m.col}: {dotted(shown)}: {message}"



def _cross_check(cfg: Config) -> list[tuple[Path_, str]]:
    errs: list[tuple[Path_, str]] = []
    seen_ch: dict[str, Path_] = {}
    seen_dev: dict[str, int] = {}
    seen_port: dict[str, int] = {}
    for di, dev in enumerate(cfg.devices):
        dpath: Path_ = ("devices", di)
        if dev.name in seen_dev:
            errs.append(((*dpath, "name"),
                         f"device name {dev.name!r} is already used by devices[{seen_dev[dev.name]}]"))
        seen_dev.setdefault(dev.name, di)
        if dev.poll < dev.timeout:
            errs.append(((*dpath, "poll"), f"poll interval {dev.poll:g}s is shorter than the timeout "
                         f"{dev.timeout:g}s; make poll >= timeout"))
        if dev.poll <= 0:
            errs.append(((*dpath, "poll"), "poll interval must be > 0"))
        if isinstance(dev, ModbusRtuDevice | SerialDevice):
            if dev.port in seen_port:
                errs.append(((*dpath, "port"),
                             f"serial port {dev.port} is already used by devices[{seen_port[dev.port]}]; "
                             "put several units of one RS-485 line under one device's 'units:'"))
            seen_port.setdefault(dev.port, di)
        if isinstance(dev, ModbusRtuDevice):
            units = [u.unit for u in dev.units]
            for ui, u in enumerate(dev.units):
                if units.index(u.unit) != ui:
                    errs.append(((*dpath, "units", ui, "unit"),
                                 f"unit id {u.unit} appears twice on this bus"))
        for cpath, ch in device_channels(dev):
            full = (*dpath, *cpath)
            if ch.name in seen_ch:
                errs.append(((*full, "name"),
                             f"duplicate channel name {ch.name!r} (first at {dotted(seen_ch[ch.name])})"))
            seen_ch.setdefault(ch.name, full)
            if isinstance(ch, ModbusChannel):
                try:
                    func, _reg, bit = parse_modbus_address(ch.address)
                except ValueError as e:
                    errs.append(((*full, "address"), str(e)))
                    continue
                if func in ("coil", "discrete") and ch.type != "bool":
                    errs.append(((*full, "type"),
                                 f"{func} addresses hold single bits: type must be bool, not {ch.type}"))
                if bit is not None and ch.type != "bool":
                    errs.append(((*full, "type"), f"a register bit (.{bit}) is a bool, not {ch.type}"))
                if func in ("holding", "input") and ch.type == "bool" and bit is None:
                    errs.append(((*full, "address"), "a bool in a register needs its bit: e.g. holding:20.3"))
                # a bit sits in one register (or is a coil/discrete): a word order means
                # nothing there; BADC on a register bit says the device sends the low byte
                # first (bit k is still bit k of the register's value, docs/modbus.md)
                if REG_WIDTH[ch.type] == 1 and ch.byte_order in ("CDAB", "DCBA"):
                    what = "a bool is one bit" if ch.type == "bool" else f"{ch.type} fills one register"
                    errs.append(((*full, "byte_order"),
                                 f"{what}: word orders CDAB/DCBA need two or more registers; "
                                 "use ABCD or BADC"))
            if isinstance(ch, OpcUaChannel) and (ch.node is None) == (ch.browse_path is None):
                errs.append((full, "give exactly one of 'node' (a NodeId) or 'browse_path'"))
            elif isinstance(ch, OpcUaChannel) and ch.node is not None and not NODEID.match(ch.node):
                errs.append(((*full, "node"), f"{ch.node!r} is not a NodeId; write ns=2;s=R201.PT01, "
                             "ns=2;i=1001 or ns=2;g=<guid>"))
            if isinstance(ch, SerialChannel) and isinstance(dev, SerialDevice):
                ways = sum(x is not None for x in (ch.group, ch.pattern, ch.field))
                if ways != 1:
                    errs.append((full, "give exactly one of 'group' (in the device's frame.pattern), "
                                 "'pattern' (a regex with (?P<value>...)) or 'field' ([start, end])"))
                if ch.group is not None and not dev.frame.pattern:
                    errs.append(((*full, "group"), "'group' needs frame.pattern on the device"))
                for key, pat in (("pattern", ch.pattern),):
                    if pat is not None:
                        try:
                            rx = re.compile(pat)
                        except re.error as e:
                            errs.append(((*full, key), f"bad regular expression: {e}"))
                        else:
                            if "value" not in rx.groupindex:
                                errs.append(((*full, key), "the regex needs a (?P<value>...) group"))
            a = ch.alarms
            if a is not None:
                order = [(k, getattr(a, k)) for k in ("ll", "l", "h", "hh")]
                set_ = [(k, v) for k, v in order if v is not None]
                for (k1, v1), (k2, v2) in itertools.pairwise(set_):
                    if not v1 < v2:
                        errs.append(((*full, "alarms", k2), f"limits must rise ll < l < h < hh: "
                                     f"{k1}={v1:g} is not below {k2}={v2:g}"))
                if a.trend is not None and a.trend.predict is not None and a.h is None and a.hh is None:
                    errs.append(((*full, "alarms", "trend", "predict"),
                                 "prediction needs a high limit (h or hh)"))
    if isinstance(cfg.devices, list) and not cfg.devices:
        pass
    for di, dev in enumerate(cfg.devices):
        if isinstance(dev, SerialDevice):
            f = dev.frame
            if (f.terminator is None) == (f.length is None):
                errs.append((("devices", di, "frame"),
                             "give exactly one of frame.terminator or frame.length"))
            if f.pattern is not None:
                try:
                    re.compile(f.pattern)
                except re.error as e:
                    errs.append((("devices", di, "frame", "pattern"), f"bad regular expression: {e}"))
                else:
                    groups = re.compile(f.pattern).groupindex
                    for ci, ch in enumerate(dev.channels):
                        if ch.group is not None and ch.group not in groups:
                            errs.append((("devices", di, "channels", ci, "group"),
                                         f"no group (?P<{ch.group}>...) "
                                         f"in frame.pattern; it has: {', '.join(groups) or 'none'}"))
            for ci, ch in enumerate(dev.channels):
                if ch.field is not None and not 0 <= ch.field[0] < ch.field[1]:
                    errs.append((("devices", di, "channels", ci, "field"), "field is [start, end) with "
                                 "0 <= start < end"))
        if isinstance(dev, OpcUaDevice):
            sec = dev.security
            if (sec.policy == "None") != (sec.mode == "None"):
                errs.append((("devices", di, "security"), "policy and mode go together: both None, or a "
                             "policy with Sign / SignAndEncrypt"))
            elif sec.policy != "None":
                for key in ("certificate", "private_key"):
                    if getattr(sec, key) is None:
                        errs.append((("devices", di, "security", key), f"security {sec.policy} needs the "
                                     f"client's {key.replace('_', ' ')}"))
            if dev.password is not None and dev.password_file is not None:
                errs.append((("devices", di, "password"), "give password or password_file, not both"))
            if (dev.password is not None or dev.password_file is not None) and not dev.username:
                errs.append((("devices", di, "username"), "a password needs a username"))
    return errs



# --------------------------------------------------------------------------- loading

def _register_overlaps(cfg: Config) -> list[tuple[Path_, str]]:
    """Registers claimed twice on one device (and unit): how a float32 (or int32, ...)
    mapped to one register shows up. A value takes 1 (16-bit), 2 (32-bit) or 4 (float64)
    consecutive registers; the next value may start only after them. Channels on the very
    same register with the same width (bits of one status word, a register read twice)
    are fine."""
    errs: list[tuple[Path_, str]] = []
    for di, dev in enumerate(cfg.devices):
        if not isinstance(dev, ModbusTcpDevice | ModbusRtuDevice):
            continue
        spans: dict[tuple[Any, str], list[tuple[int, int, str, str, Path_]]] = {}
        for cpath, ch in device_channels(dev):
            if not isinstance(ch, ModbusChannel):
                continue
            try:
                func, reg, bit = parse_modbus_address(ch.address)
            except ValueError:
                continue  # reported by _cross_check
            if func not in ("holding", "input"):
                continue
            width = 1 if bit is not None or ch.type == "bool" else REG_WIDTH.get(ch.type, 1)
            full = ("devices", di, *cpath)
            if reg + width - 1 > 65535:
                errs.append(((*full, "address"), f"a {ch.type} takes {width} registers: {func}:{reg} would "
                             f"need {reg}-{reg + width - 1}, beyond 65535"))
                continue
            unit = cpath[1] if cpath[0] == "units" else None
            spans.setdefault((unit, func), []).append((reg, width, ch.name, ch.type, full))
        for (_unit, func), items in spans.items():
            items.sort(key=lambda s: (s[0], s[4]))
            for k, (reg, width, _name, _type, full) in enumerate(items):
                # sorted by register and no value is wider than 4 registers: only the
                # few items just before this one can overlap it
                j = k
                while j > 0 and items[j - 1][0] > reg - 4:
                    j -= 1
                for reg0, width0, name0, type0, _full0 in items[j:k]:
                    if (reg0, width0) == (reg, width) or reg0 + width0 <= reg:
                        continue
                    errs.append(((*full, "address"), f"register {func}:{reg} is already taken by {name0!r}, "
                                 f"a {type0} at {func}:{reg0} that spans {width0} registers "
                                 f"({reg0}-{reg0 + width0 - 1}); move this channel to {func}:{reg0 + width0} "
                                 f"or later, or check the type of {name0!r}"))
                    break
    return errs


def _prune(data: Any, bad: set[Path_], here: Path_ = ()) -> tuple[Any, dict[Path_, list[int]]]:
    """A copy of ``data`` without the list items / keys at the ``bad`` paths, and for each
    list that lost items (keyed by its path in the copy) the original index of each item."""
    maps: dict[Path_, list[int]] = {}
    if isinstance(data, dict):
        out: dict[Any, Any] = {}
        for k, v in data.items():
            if (*here, k) in bad:
                continue
            out[k], sub = _prune(v, bad, (*here, k))
            maps.update(sub)
        return out, maps
    if isinstance(data, list):
        keep = [i for i in range(len(data)) if (*here, i) not in bad]
        items = []
        for new_i, i in enumerate(keep):
            item, sub = _prune(data[i], bad, (*here, i))
            items.append(item)
            # sub-paths were built with the original index; re-key them by the new one
            for p, m in sub.items():
                maps[(*here, new_i, *p[len(here) + 1:])] = m
        if len(keep) != len(data):
            maps[here] = keep
        return items, maps
    return data, maps


def _unprune(path: Path_, maps: dict[Path_, list[int]]) -> Path_:
    """A path in the pruned copy → the same place in the original document."""
    out: Path_ = ()
    cur: Path_ = ()
    for part in path:
        orig = maps[cur][part] if isinstance(part, int) and cur in maps else part
        cur = (*cur, part)
        out = (*out, orig)
    return out


def _culprit(src: Source, loc: Path_) -> Path_ | None:
    """What to leave out so the rest of the file can still be cross-checked: the channel
    (or device, or key) an error is in."""
    path = src.real_path(loc)
    for k in range(len(path) - 2, -1, -1):
        if path[k] == "channels" and isinstance(path[k + 1], int):
            return path[: k + 2]
    if len(path) >= 2 and path[0] == "devices" and isinstance(path[1], int):
        return path[:2]
    if loc and loc[0] == "devices":
        return ("devices",)
    if path and path[0] in ("gateway",):
        return None  # required: nothing left to check without it (see below)
    if loc and isinstance(loc[0], str):
        return (loc[0],)
    return None


def _partial_cross_check(src: Source, errors: list[dict[str, Any]],
                         checks: Iterable[Check]) -> list[tuple[Path_, str]]:
    """Cross-check what is valid in a file that has schema errors: leave out each broken
    channel, device or section, validate the rest, check it, and map the paths back."""
    bad: set[Path_] = set()
    for err in errors:
        loc = loc_path(tuple(err["loc"]))
        culprit = _culprit(src, loc)
        if culprit is None:
            if src.real_path(loc)[:1] == ("gateway",):
                # the gateway section is required but not cross-checked: stand in for it
                continue
            return []
        bad.add(culprit)
    data, maps = _prune(src.data, bad)
    if isinstance(data, dict) and any(p[:1] == ("gateway",) for p in
                                      (src.real_path(loc_path(tuple(e["loc"]))) for e in errors)):
        data["gateway"] = {"id": "x", "site": "x"}
    try:
        cfg = Config.model_validate(data)
    except ValidationError:
        return []  # still broken: the schema errors are all we can say
    cfg.base_dir = base_dir_of(src)
    out: list[tuple[Path_, str]] = []
    for path, msg in all_checks(cfg, checks):
        out.append((_unprune(path, maps), msg))
    return out


def base_dir_of(src: Source) -> Path:
    """The folder relative paths in a config resolve against: the file's own."""
    return Path(src.file).resolve().parent if src.file != "<string>" else Path.cwd()


def all_checks(cfg: Config, checks: Iterable[Check]) -> list[tuple[Path_, str]]:
    out = [*_cross_check(cfg), *_register_overlaps(cfg)]
    for check in checks:
        out.extend(check(cfg))
    return out


def validate(src: Source, checks: Iterable[Check] = ()) -> Config:
    """Models, then cross checks; raise ConfigError with every problem found, in file order.

    When the models find errors, the cross checks still run on the parts that are valid
    (broken channels, devices or sections left out), so one run reports everything.
    """
    if not isinstance(src.data, dict):
        raise ConfigError([f"{src.file}:1:1: (top): the file must be a mapping with a 'gateway:' section"])
    from gateway.core.templates import expand_templates  # deferred: templates imports config

    template_errors = expand_templates(src, base_dir_of(src), explain)
    if template_errors:
        raise ConfigError(template_errors)
    found: list[tuple[int, int, int, str]] = []

    def add(path: Path_, message: str, at_key: bool = False) -> None:
        m = src.key_marks.get(src.real_path(path), src.where(path)) if at_key else src.where(path)
        found.append((m.line, m.col, len(found), format_error(src, path, message, m)))

    cfg: Config | None = None
    try:
        cfg = Config.model_validate(src.data)
    except ValidationError as e:
        errors: list[dict[str, Any]] = [dict(err) for err in e.errors()]
        for err in errors:
            path = loc_path(tuple(err["loc"]))
            real = src.real_path(path)
            if err["type"] == "string_type" and real in src.texts:
                text = src.texts[real]
                add(path, f"write it in quotes, \"{text}\", to keep it as text: "
                          f"unquoted, YAML reads {text} as "
                          f"the number {err.get('input')!r}")
                continue
            if err["type"] == "union_tag_invalid":
                path = (*real, _tag_key(err))  # point at the tag's value (protocol:, type:)
            add(path, explain(err), at_key=err["type"] == "extra_forbidden")
        for path, msg in _partial_cross_check(src, errors, checks):
            add(path, msg)
    else:
        cfg.base_dir = base_dir_of(src)
        for path, msg in all_checks(cfg, checks):
            add(path, msg)
    if found or cfg is None:
        raise ConfigError([line for *_, line in sorted(found)])
    return cfg


def load(path: str | Path, checks: Iterable[Check] = ()) -> Config:
    try:
        return validate(load_file(path), checks)
    except YamlError as e:
        raise ConfigError([str(e)]) from None


def loads(text: str, file: str = "<string>", checks: Iterable[Check] = ()) -> Config:
    try:
        return validate(load_text(text, file), checks)
    except YamlError as e:
        raise ConfigError([str(e)]) from None

