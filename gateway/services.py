"""The daemon's parts and what they may rely on.

A part of the daemon (historian, MQTT, uplink, admin API, reminders, channel table,
and the regulator adapters and notifiers to come) is a ``Service``: it is built from
its config section by a factory listed in ``gateway.app.SERVICES``, started before
the sources (``start``), run in the daemon's task group (``run``), given a bounded
time to deliver what is already journaled at shutdown (``drain``), then stopped
(``stop``). ``stats`` is what ``/status`` and ``/metrics`` show of it. A service that
keeps views of the channel table or the rules may have ``on_reload()``, called after a
live reload swapped them (one whose section changed is restarted instead).

A service sees the daemon through ``DaemonContext``: the config, the journal, the
channel table, the live values, the rules engine, the clock and ``emit_events``; not
the daemon object's other insides. ``reload_config`` applies a new config live
(gateway/reload.py); ``ReloadResult`` is its answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gateway.core.batch import Batch
from gateway.core.channels import ChannelTable, LiveTable
from gateway.core.config import Config
from gateway.store.journal import Journal
from rules.engine import RulesEngine


@dataclass(frozen=True)
class ReloadResult:
    """What a live reload did (``DaemonContext.reload_config``)."""

    ok: bool
    #: SHA-256 of the config text now in force (the old one when refused)
    sha256: str
    #: what changed (empty when refused or when nothing changed)
    diff: dict[str, Any]
    #: ``FILE:LINE:COL: message`` lines when refused
    error: str | None


class HistoryUnavailable(Exception):
    """``DaemonContext.influx_samples`` could not answer: no ``influxdb:`` section, or the
    server did not answer or refused; the text says which."""


#: (channels as (index, name), start ns, end ns, at most this many samples) → their samples
#: in [start, end) from InfluxDB, or ``HistoryUnavailable``
InfluxSamples = Callable[[list[tuple[int, str]], int, int, int], Awaitable[Batch]]


@dataclass
class DeviceState:
    """What the daemon knows of one device: shown in /status and /metrics."""

    name: str
    protocol: str
    state: str = "starting"  # starting | ok | failing | disabled
    last_error: str | None = None
    last_ok_ns: int = 0
    polls: int = 0
    errors: int = 0
    overruns: int = 0
    samples: int = 0
    last_poll_ms: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


class Service(Protocol):
    name: str

    async def start(self) -> None: ...

    async def run(self) -> None: ...

    async def drain(self) -> None:
        """Deliver what is already journaled, as far as it goes; bounded by the caller."""
        ...

    async def stop(self) -> None: ...

    def stats(self) -> dict[str, Any]:
        """Counters and state for /status and /metrics (JSON-able, cheap)."""
        ...


class DaemonContext(Protocol):
    """What a service may use of the daemon."""

    cfg: Config
    journal: Journal
    table: ChannelTable
    live: LiveTable
    rules: RulesEngine
    state_dir: Path
    services: list[Service]
    started_ns: int
    #: per device: state, last error, poll counters (for /status and /metrics)
    devices: dict[str, DeviceState]
    ingested_batches: int
    ingest_errors: int
    #: ns since the epoch (injectable in tests)
    clock: Callable[[], int]
    #: the text of the config in force and its SHA-256 ("" when started from a model alone)
    config_text: str
    config_sha256: str
    #: when the config in force was applied (ns since the epoch)
    config_loaded_ns: int
    #: the file the config came from (None when given as text): a config from central replaces it
    config_path: Path | None

    def emit_events(self, events: list[dict[str, Any]]) -> None:
        """Journal events made outside the rules tick (operator commands, registers)."""
        ...

    async def influx_samples(self, channels: list[tuple[int, str]], start_ns: int, end_ns: int,
                             max_samples: int) -> Batch:
        """Raw samples of ``channels`` ((index, name) pairs) in [start, end) from the
        ``influxdb:`` section's server (the historian's own query code), for services that
        must answer for ranges the journal no longer holds (the HJ 212 history requests).
        Raises ``HistoryUnavailable`` (no section, server down, refused)."""
        ...


    async def reload_config(self, text: str | None = None, *, source: str) -> ReloadResult:
        """Validate a new config fully and apply only its difference, live. ``text`` None:
        re-read the config file; with ``text``: that text, as if it were the file (relative
        paths against the file's folder), the file itself left as it is. ``source`` says
        who asked (``sighup``, ``api:<user>``, ``central``). Reloads are serialized."""
        ...


#: (context, config section) → the service, or None when the section asks for none
ServiceFactory = Callable[[DaemonContext, Any], "Service | None"]
