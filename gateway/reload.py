"""Live reload of the daemon's config (``systemctl reload``/SIGHUP, ``POST /config/reload``,
and configuration from central): validate the new file fully, then apply only what changed.

- ``parse`` reads and validates a config as the daemon's start does (``gateway.config``'s
  checks, templates expanded afresh), and refuses what only a restart can change
  (``RESTART_ONLY``) with FILE:LINE:COL;
- ``plan`` compares the running config and table with the new ones: devices and channels
  added, removed, changed; which pollers must restart (``poll_view``: a channel's alarm or
  metadata change does not touch its poller) and which services (their section changed,
  or they hold the channel table and it changed: ``TABLE_USERS``);
- ``Reloader`` applies a plan to the running daemon (gateway/app.py's Gateway, seen through
  ``Host``): stops the pollers and services that go or change, swaps the table, live values
  and rules in one step of the event loop (alarm state carried by channel name,
  rules/carry.py), journals the ``config`` event and the new channel table in that same
  step (so every sample of the new numbering comes after them in the journal), then starts
  what is new. Pollers of unchanged devices keep running: their batches are renumbered
  into the new table (``remap``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from drivers.base import Driver, make_driver
from gateway.config import validate
from gateway.core import templates
from gateway.core.aio import within
from gateway.core.batch import Batch
from gateway.core.channels import ChannelTable, LiveTable
from gateway.core.chantable import table_doc
from gateway.core.config import Config
from gateway.core.configcheck import ConfigError, format_error
from gateway.core.secrets import SecretFileError
from gateway.core.yamlsrc import MAX_BYTES, Path_, YamlError, load_text
from gateway.services import DeviceState, ReloadResult, Service, ServiceFactory
from gateway.store.journal import Journal
from gateway.store.queries import last_channel_table, open_readonly
from rules.carry import carry
from rules.engine import RulesEngine

log = logging.getLogger(__name__)

#: what a live reload cannot change (the daemon's identity and its journal): a restart must
RESTART_ONLY: tuple[tuple[Path_, str], ...] = (
    (("gateway", "id"), "the gateway id names every journaled alarm and envelope"),
    (("gateway", "state_dir"), "the state directory holds the open journal and registers"),
    (("journal",), "the journal is open with these settings"),
)
#: channel keys that only the rules and the metadata read: changing them leaves the poller
RULE_ONLY = frozenset({"alarms", "preset", "exposure", "description", "hazard_source", "area",
                       "maintenance", "gas"})
#: services that keep the channel table they were built with: restarted when it changes
TABLE_USERS = frozenset({"influxdb", "mqtt", "regulators", "notify", "registers"})
#: the event type of an applied config in the journal
EVENT_TYPE = "config"
#: how long a changed service gets to deliver what is journaled before it restarts
SERVICE_DRAIN_S = 2.0
#: how long a stopping poller gets before its driver is closed anyway
POLLER_STOP_S = 5.0


class Refused(Exception):
    """The new config is not applied: ``lines`` say where and why (FILE:LINE:COL: ...)."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _at(cfg: Config, path: Path_) -> Any:
    v: Any = cfg
    for k in path:
        v = getattr(v, str(k))
    return v.model_dump(mode="json") if hasattr(v, "model_dump") else v


def parse(text: str | None, path: Path | None, running: Config, state_dir: Path | None) -> tuple[Config, str]:
    """The new config and its text, validated as at start; ``Refused`` otherwise.
    ``text`` None: read ``path``. ``state_dir``: the command line's override, kept."""
    file = str(path) if path is not None else "<string>"
    if text is None:
        if path is None:
            raise Refused(["<config>:1:1: the daemon was started without a config file: give the text"])
        try:
            if path.stat().st_size > MAX_BYTES:
                raise Refused([f"{file}:1:1: {path.stat().st_size:,} bytes is too large for a config file "
                               f"(at most {MAX_BYTES:,})"])
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise Refused([f"{file}:1:1: cannot read it: {e}"]) from None
    templates.clear_cache()  # a template file edited since start is read again
    try:
        src = load_text(text, file)
        cfg = validate(src)
    except YamlError as e:
        raise Refused([str(e)]) from None
    except ConfigError as e:
        raise Refused(list(e.lines)) from None
    if state_dir is not None:
        cfg.gateway.state_dir = state_dir
    errs = []
    for where, why in RESTART_ONLY:
        if _at(cfg, where) != _at(running, where):
            errs.append(format_error(src, where, f"changed from {_at(running, where)!r}: {why}; "
                                                "restart the daemon to apply it (a reload cannot)"))
    if errs:
        raise Refused(errs)
    return cfg, text


def _strip(v: Any) -> Any:
    """A device's dump without the channels' rule-only keys (see RULE_ONLY)."""
    if isinstance(v, dict):
        is_channel = "name" in v and "kind" in v
        return {k: _strip(x) for k, x in v.items() if not (is_channel and k in RULE_ONLY)}
    if isinstance(v, list):
        return [_strip(x) for x in v]
    return v


def poll_view(dev: Any) -> Any:
    """What a device's poller depends on: everything but alarm settings and metadata."""
    d = _strip(dev.model_dump(mode="json"))
    d.pop("maintenance", None)
    return d


def sections(cfg: Config) -> dict[str, Any]:
    return {k: _at(cfg, (k,)) for k in type(cfg).model_fields if k != "devices"}


@dataclass
class Plan:
    devices_added: list[str] = field(default_factory=list)
    devices_removed: list[str] = field(default_factory=list)
    devices_changed: list[str] = field(default_factory=list)  # pollers restarted
    channels_added: list[str] = field(default_factory=list)
    channels_removed: list[str] = field(default_factory=list)
    channels_changed: list[str] = field(default_factory=list)
    channels_moved: dict[str, list[int]] = field(default_factory=dict)  # name -> [old, new] index
    sections_changed: list[str] = field(default_factory=list)
    kept: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (old, new) index
    table_changed: bool = False

    def diff(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "devices": {"added": self.devices_added, "removed": self.devices_removed,
                        "changed": self.devices_changed},
            "channels": {"added": self.channels_added, "removed": self.channels_removed,
                         "changed": self.channels_changed, "moved": self.channels_moved},
            "sections": self.sections_changed,
        }
        return out if self.changed else {}

    @property
    def changed(self) -> bool:
        return bool(self.devices_added or self.devices_removed or self.devices_changed or self.channels_added
                    or self.channels_removed or self.channels_changed or self.channels_moved
                    or self.sections_changed or self.table_changed)


def plan(old: Config, new: Config, old_t: ChannelTable, new_t: ChannelTable) -> Plan:
    p = Plan()
    od, nd = {d.name: d for d in old.devices}, {d.name: d for d in new.devices}
    p.devices_added = [n for n in nd if n not in od]
    p.devices_removed = [n for n in od if n not in nd]
    p.devices_changed = [n for n in nd if n in od and poll_view(od[n]) != poll_view(nd[n])]
    for c in new_t.channels:
        o = old_t.by_name.get(c.name)
        if o is None:
            p.channels_added.append(c.name)
            continue
        p.kept[c.name] = (o.index, c.index)
        if o.index != c.index:
            p.channels_moved[c.name] = [o.index, c.index]
        if o.device != c.device or o.spec.model_dump(mode="json") != c.spec.model_dump(mode="json"):
            p.channels_changed.append(c.name)
    p.channels_removed = [c.name for c in old_t.channels if c.name not in new_t.by_name]
    os_, ns_ = sections(old), sections(new)
    p.sections_changed = [k for k in os_ if os_[k] != ns_[k]]
    p.table_changed = bool(p.channels_added or p.channels_removed or p.channels_changed or p.channels_moved)
    return p


class Host(Protocol):
    """What the reloader uses of the daemon (gateway/app.py's Gateway)."""

    cfg: Config
    table: ChannelTable
    live: LiveTable
    rules: RulesEngine
    journal: Journal
    devices: dict[str, DeviceState]
    drivers: dict[str, Driver]
    services: list[Service]
    clock: Callable[[], int]
    config_text: str
    config_sha256: str
    config_loaded_ns: int

    def emit_events(self, events: list[dict[str, Any]]) -> None: ...

    def stopping(self) -> bool: ...

    def start_poller(self, drv: Driver) -> None: ...

    def remap_pollers(self) -> None: ...

    async def stop_poller(self, name: str) -> None: ...

    def start_service(self, section: str, svc: Service) -> None: ...

    async def stop_service(self, section: str) -> Service | None: ...

    def service_of(self, section: str) -> Service | None: ...


def remap(drv: Driver, table: ChannelTable) -> np.ndarray | None:
    """Driver index → table index for a running driver, or None when they are the same."""
    idx = [c.index for c in drv.channels]
    if not idx:
        return None
    now = [table.by_name[c.name].index for c in drv.channels]
    if idx == now:
        return None
    out = np.full(max(idx) + 1, -1, np.int32)
    out[idx] = now
    return out


def renumber(batch: Batch, m: np.ndarray | None) -> Batch:
    if m is None or not len(batch):
        return batch
    return Batch(m[batch.channel], batch.ts, batch.value, batch.quality)


class Numbering:
    """Journaled samples renumbered into a table: the channel table journaled before them
    (a ``channel_table`` event) names their indexes; channels the table no longer has are
    left out. Without a journaled table (an old journal) they are taken as they are."""

    def __init__(self, doc: dict[str, Any] | None, table: ChannelTable):
        self.map: np.ndarray | None = None
        chans = doc.get("channels") if doc else None
        if isinstance(chans, list):
            m = np.full(len(chans), -1, np.int32)
            for i, c in enumerate(chans):
                at = table.by_name.get(c.get("name", "")) if isinstance(c, dict) else None
                m[i] = -1 if at is None else at.index
            if not np.array_equal(m, np.arange(len(chans))) or len(chans) != len(table):
                self.map = m

    @classmethod
    def before(cls, journal: Path, seq: int, table: ChannelTable) -> Numbering:
        """The numbering in force after sequence ``seq`` of a journal file."""
        try:
            db = open_readonly(journal)
        except FileNotFoundError:
            return cls(None, table)
        try:
            found = last_channel_table(db, seq)
        except sqlite3.Error as e:  # a journal being created: nothing to renumber
            log.warning("journal: could not read the channel table before seq %d: %s", seq, e)
            found = None
        finally:
            db.close()
        return cls(found[1] if found else None, table)

    def apply(self, b: Batch) -> Batch:
        if self.map is None or not len(b):
            return b
        ok = b.channel < len(self.map)
        m = np.where(ok, self.map[np.where(ok, b.channel, 0)], -1)
        keep = m >= 0
        if keep.all():
            return Batch(m.astype(np.int32), b.ts, b.value, b.quality)
        return Batch(m[keep].astype(np.int32), b.ts[keep], b.value[keep], b.quality[keep])


def config_event(sha: str, source: str, diff: dict[str, Any], ts: int, gateway_id: str) -> dict[str, Any]:
    return {"type": EVENT_TYPE, "ts": ts, "sha256": sha, "source": source, "gateway_id": gateway_id,
            "diff": diff}


class Reloader:
    """Serializes reloads and applies them to a running daemon."""

    def __init__(self, host: Host, path: Path | None, state_dir: Path | None, factories: dict[str, str]):
        self.host = host
        self.path = path
        self.state_dir = state_dir
        self.factories = factories
        self.lock = asyncio.Lock()
        self.applied = 0
        self.refused = 0
        self._later: set[asyncio.Task[None]] = set()

    async def reload(self, text: str | None, source: str) -> ReloadResult:
        h = self.host
        async with self.lock:
            if h.stopping():  # a stop came while this reload waited for the one before
                return ReloadResult(False, h.config_sha256, {}, "<config>:1:1: the daemon is stopping")
            try:
                cfg, new_text = await asyncio.to_thread(parse, text, self.path, h.cfg, self.state_dir)
            except Refused as e:
                self.refused += 1
                for line in e.lines:
                    log.error("config reload (%s) refused, the running config kept: %s", source, line)
                return ReloadResult(False, h.config_sha256, {}, "\n".join(e.lines))
            diff = await self._apply(cfg, new_text, source)
            self.applied += 1
            return ReloadResult(True, h.config_sha256, diff, None)

    async def _apply(self, cfg: Config, text: str, source: str) -> dict[str, Any]:
        h = self.host
        table = ChannelTable.from_config(cfg)
        p = plan(h.cfg, cfg, h.table, table)
        sha = sha256_text(text)
        # sources that go or change stop first: nothing of theirs comes after the swap
        for name in p.devices_removed + p.devices_changed:
            await h.stop_poller(name)
        restart = [s for s in self.factories if s in p.sections_changed
                   or (p.table_changed and s in TABLE_USERS and h.service_of(s) is not None)]
        for s in restart:
            if s != "api":
                await self._stop_service(s)
        # the swap: one step of the loop, no await
        rules = RulesEngine.for_gateway(cfg, table)
        reset = carry(h.rules, rules, p.kept)
        live = LiveTable(len(table))
        if p.kept:
            o = np.fromiter((v[0] for v in p.kept.values()), np.intp, len(p.kept))
            n = np.fromiter((v[1] for v in p.kept.values()), np.intp, len(p.kept))
            live.value[n], live.quality[n], live.ts[n] = h.live.value[o], h.live.quality[o], h.live.ts[o]
            live.samples = h.live.samples
        now = h.clock()
        diff = p.diff()
        if reset:
            diff["rules_reset"] = reset
        h.cfg, h.table, h.live, h.rules = cfg, table, live, rules
        h.config_text, h.config_sha256, h.config_loaded_ns = text, sha, now
        for name in p.devices_removed:
            h.devices.pop(name, None)
        events: list[dict[str, Any]] = [config_event(sha, source, diff, now, cfg.gateway.id)]
        if p.table_changed:
            events.append(table_doc(table, cfg.gateway.id, cfg.gateway.site, now))
        h.emit_events(events)
        h.remap_pollers()
        for dev in cfg.devices:
            if dev.name in p.devices_added or dev.name in p.devices_changed:
                h.devices[dev.name] = DeviceState(dev.name, dev.protocol, "ok" if dev.enabled else "disabled")
                if dev.enabled:
                    h.start_poller(make_driver(dev, table.by_device.get(dev.name, []), base_dir=cfg.base_dir))
        for svc in h.services:  # services that keep views of the table or rules rebuild them
            hook = getattr(svc, "on_reload", None)
            if callable(hook):
                hook()
        chan = h.service_of("channel_table")
        if chan is not None and p.table_changed:
            chan.version, chan.last_ts = events[-1]["table_version"], now  # type: ignore[attr-defined]
        for s in restart:
            if s == "api":  # the request asking for this reload may be served by it: after the answer
                t = asyncio.get_running_loop().create_task(self._start_service(s), name="reload[api]")
                self._later.add(t)
                t.add_done_callback(self._later.discard)
            else:
                await self._start_service(s)
        if p.changed:
            log.info("config reload (%s) applied, sha256 %s: devices +%d -%d ~%d, channels +%d -%d ~%d "
                     "(%d moved), sections changed: %s", source, sha[:16], len(p.devices_added),
                     len(p.devices_removed), len(p.devices_changed), len(p.channels_added),
                     len(p.channels_removed), len(p.channels_changed), len(p.channels_moved),
                     ", ".join(p.sections_changed) or "none")
        else:
            log.info("config reload (%s): nothing changed (sha256 %s)", source, sha[:16])
        return diff

    async def _stop_service(self, section: str) -> None:
        svc = self.host.service_of(section)
        if svc is None:
            return
        with contextlib.suppress(TimeoutError):
            await within(svc.drain(), SERVICE_DRAIN_S)  # deliver what is journaled, then stop
        await self.host.stop_service(section)

    async def _start_service(self, section: str) -> None:
        if section == "api":
            await self._stop_service(section)
        conf = getattr(self.host.cfg, section, None)
        if conf is None:
            return
        module, _, fn = self.factories[section].partition(":")
        factory: ServiceFactory = getattr(importlib.import_module(module), fn)
        try:
            svc = factory(self.host, conf)  # type: ignore[arg-type]
            if svc is None:
                return
            await svc.start()
        except (SecretFileError, OSError, ValueError) as e:
            # the rest of the config is in force: say loudly which part is not running
            log.error("config reload: service %s did not start: %s", section, e)
            return
        self.host.start_service(section, svc)
