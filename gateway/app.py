"""The daemon: builds the data path from a Config and runs it in one structured event loop.

Start order: journal, then sinks (historian, MQTT, uplink, API: the *services*),
then sources (one poller task per device). Stop order is the reverse, with a bounded
drain so consumers can deliver what is already journaled. Each task is named after
what it serves (``poll[tank-farm-plc]``). A live reload (SIGHUP, the API, central)
starts and stops pollers and services in the same task group (gateway/reload.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from drivers.base import DeviceUnavailable, Driver, make_driver
from gateway import chanmap, reload
from gateway.core.aio import within
from gateway.core.batch import Batch, Quality
from gateway.core.channels import ChannelTable, LiveTable
from gateway.core.chantable import is_table_record
from gateway.core.config import Config
from gateway.core.record import EVENT, SAMPLES
from gateway.core.secrets import SecretFileError
from gateway.sdnotify import Notifier
from gateway.services import DeviceState, HistoryUnavailable, ReloadResult, Service, ServiceFactory
from gateway.store.journal import Journal

log = logging.getLogger(__name__)

#: how long a service may take to stop once its drain is over (closing sockets, files)
STOP_GRACE_S = 1.0
#: the least time the last batches get to commit at a stop, even when the sources' stop
#: took the whole drain time
FLUSH_FLOOR_S = 1.0

#: most journaled samples replayed into the rules at start (about 2-4 s of CPU)
WARM_MAX_SAMPLES = 20_000_000


#: config section → factory "module:function" taking (DaemonContext, section) and
#: returning a Service (a ServiceFactory). Imported only when the section is present.
SERVICES: dict[str, str] = {
    "influxdb": "gateway.historian.service:build_service",
    "mqtt": "uplink.mqtt:build_service",
    "uplink": "uplink.sync:build_service",
    "api": "gateway.admin.api:build_service",
    "registers": "gateway.admin.reminders:build_service",
    "notify": "gateway.notify.service:build_service",
    "regulators": "northbound.service:build_service",
    "gateway": "gateway.ops.status:build_service",  # always on: the `safegw status` socket
}


def _cause(e: BaseException) -> int:
    """The quality a failed poll gives its channels."""
    if isinstance(e, DeviceUnavailable):
        return e.cause
    return Quality.TIMEOUT if isinstance(e, TimeoutError) else Quality.COMMS


def _jitter(seconds: float) -> float:
    return seconds * random.uniform(0.8, 1.2)


class Gateway:
    """Owns the channel table, live values, journal, rules, services and pollers."""

    def __init__(self, cfg: Config, *, clock: Callable[[], int] = time.time_ns,
                 config_path: str | Path | None = None, config_text: str | None = None,
                 state_dir_override: Path | None = None):
        self.cfg = cfg
        self.clock = clock
        path = Path(config_path).resolve() if config_path is not None else None
        #: the file the config came from (None when given as text): what a config from central replaces
        self.config_path = path
        if config_text is None and path is not None:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                config_text = path.read_text(encoding="utf-8")
        #: the config in force: its text and SHA-256 (of the text), and when it was applied
        self.config_text = config_text or ""
        self.config_sha256 = reload.sha256_text(config_text) if config_text is not None else ""
        self.config_loaded_ns = clock()
        self.reloader = reload.Reloader(self, path, state_dir_override, SERVICES)
        self.table = ChannelTable.from_config(cfg)
        self.live = LiveTable(len(self.table))
        self.state_dir = Path(cfg.gateway.state_dir)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # journal, registers, keys: owner-only
        j = cfg.journal
        self.journal = Journal(self.state_dir / "journal.db", quota_bytes=j.quota, max_age_s=j.max_age,
                               sync=j.sync, compress=j.compress, commit_every_s=j.commit_every,
                               page_size=j.page_size)
        from rules.engine import RulesEngine

        self.rules = RulesEngine.for_gateway(cfg, self.table)
        # alarm states survive a restart: rebuilt from the journaled alarm events
        after = 0
        while recs := self.journal.read_sync(after, 5000, kinds=(2,)):
            self.rules.restore(r.event() for r in recs)
            after = recs[-1].seq
        # ... and trend buckets, exposure (TWA 8 h, STEL 15 min) and timers from the samples
        self._warm_rules(clock())
        self.devices: dict[str, DeviceState] = {
            d.name: DeviceState(d.name, d.protocol, "ok" if d.enabled else "disabled") for d in cfg.devices
        }
        self.drivers: dict[str, Driver] = {}
        self.services: list[Service] = []
        self._by_section: dict[str, Service] = {}
        self._svc_tasks: dict[int, asyncio.Task[None]] = {}  # id(service) -> its run task
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self._remap: dict[str, Any] = {}  # device -> driver index to table index (after a reload)
        self._tg: asyncio.TaskGroup | None = None
        self.notifier = Notifier()
        self.ingested_batches = 0
        self.ingest_errors = 0
        self._journal_failing = False
        self._stop = asyncio.Event()
        self._pending: set[Any] = set()
        self.started_ns = clock()

    def _warm_rules(self, now: int) -> None:
        """Replay the journaled samples of the rules' window (8 h), the newest
        WARM_MAX_SAMPLES of them at most, so a restart of a large plant does not keep
        the pollers waiting for minutes; STEL (15 min) and trends are rebuilt first."""
        since = now - self.rules.warm_window_ns
        after, planned, oldest, cut = self.journal.seq_before_newest(since, WARM_MAX_SAMPLES)
        if not planned:
            return
        t0 = time.monotonic()
        warmed = self.rules.warm(self._journal_samples(after, since), now)
        took = time.monotonic() - t0
        rebuilt = f"rebuilt trend and exposure from {warmed} journaled samples in {took:.1f} s"
        if cut and oldest is not None:
            log.warning("rules: %s, the newest %.1f h of the 8-h window (at most %d samples at start); "
                        "TWA before that is not counted until the window refills", rebuilt,
                        (now - oldest) / 3.6e12, WARM_MAX_SAMPLES)
        else:
            log.info("rules: %s", rebuilt)

    def _journal_samples(self, after: int, since_ns: int) -> Iterator[Batch]:
        """Journaled sample batches after sequence ``after`` ending at or after ``since_ns``,
        numbered as this table (a reload or another config may have numbered them otherwise:
        each is read by the channel table journaled before it, channels matched by name)."""
        numbering = reload.Numbering.before(self.state_dir / "journal.db", after, self.table)
        while recs := self.journal.read_sync(after, 500, kinds=(SAMPLES, EVENT)):
            for r in recs:
                if r.kind == EVENT:
                    if is_table_record(r):
                        numbering = reload.Numbering(r.event(), self.table)
                elif r.ts_max >= since_ns:
                    yield numbering.apply(r.batch())
            after = recs[-1].seq

    # ------------------------------------------------------------------ data path
    def ingest(self, batch: Batch) -> None:
        """Rules, live values, and the journal, for one batch. Called on the loop."""
        if not len(batch):
            return
        events = self.rules.process(batch)
        self.live.update(batch.channel, batch.ts, batch.value, batch.quality)
        fut = self.journal.submit_many([batch, *events])
        self.ingested_batches += 1
        self._pending.add(fut)
        fut.add_done_callback(self._committed)

    def _committed(self, fut: Any) -> None:
        # runs on the journal's writer thread
        self._pending.discard(fut)
        if fut.cancelled():
            return
        if fut.exception() is not None:
            self.ingest_errors += 1
            if not self._journal_failing:  # once per failure streak, not per batch
                log.error("journal refused a batch (further refusals not logged): %s", fut.exception())
            self._journal_failing = True
        elif self._journal_failing:
            self._journal_failing = False
            log.info("journal takes batches again (%d refused in all)", self.ingest_errors)

    def emit_events(self, events: list[dict[str, Any]]) -> None:
        """Journal events raised outside a batch (timers, operator actions, registers)."""
        if events:
            fut = self.journal.submit_many(list(events))
            self._pending.add(fut)
            fut.add_done_callback(self._committed)

    async def influx_samples(self, channels: list[tuple[int, str]], start_ns: int, end_ns: int,
                             max_samples: int) -> Batch:
        """DaemonContext.influx_samples: the historian's query code, against the config in force."""
        from gateway.historian.history import HistoryError, influx_samples
        if self.cfg.influxdb is None:
            raise HistoryUnavailable("no influxdb: section")
        try:
            return await influx_samples(self.cfg, channels, start_ns, end_ns, max_samples)
        except HistoryError as e:
            raise HistoryUnavailable(str(e)) from None

    async def flush(self) -> None:
        """Wait until everything ingested so far is committed."""
        pending = [asyncio.wrap_future(f) for f in list(self._pending)]
        if pending:
            self.journal.commit_now()  # no waiting out the commit cadence
            await asyncio.gather(*pending, return_exceptions=True)

    # ------------------------------------------------------------------ pollers
    def _fail(self, st: DeviceState, drv: Driver, err: BaseException, cause: int) -> None:
        st.errors += 1
        msg = str(err) or type(err).__name__
        if st.state != "failing":
            log.error("device %s failed: %s", st.name, msg, extra={"device": st.name})
        st.state, st.last_error = "failing", msg
        self.ingest(reload.renumber(drv.bad(self.clock(), cause), self._remap.get(st.name)))

    def _recovered(self, st: DeviceState) -> None:
        if st.state == "failing":
            log.info("device %s recovered", st.name, extra={"device": st.name})
        st.state, st.last_error = "ok", None

    async def _poll_device(self, drv: Driver) -> None:
        dev = drv.device
        st = self.devices[dev.name]
        loop = asyncio.get_running_loop()
        backoff = dev.poll
        max_backoff = max(60.0, dev.poll)
        connected = False
        next_due = loop.time()
        while not self._stop.is_set():
            if not connected:
                try:
                    await within(drv.open(), max(dev.timeout * (dev.retries + 1), 1.0) + 5)
                    connected = True
                except DeviceUnavailable as e:
                    self._fail(st, drv, e, e.cause)
                except (OSError, TimeoutError) as e:
                    self._fail(st, drv, e, Quality.TIMEOUT if isinstance(e, TimeoutError) else Quality.COMMS)
                if not connected:
                    await drv.close()
                    await self._sleep(_jitter(backoff))
                    backoff = min(backoff * 2, max_backoff)
                    next_due = loop.time()
                    continue
            if drv.streaming:
                st.info = drv.info  # the driver keeps it current while it streams
                try:
                    self._recovered(st)
                    await drv.stream(lambda b: self.ingest(reload.renumber(b, self._remap.get(dev.name))))
                except DeviceUnavailable as e:
                    self._fail(st, drv, e, e.cause)
                except (OSError, TimeoutError) as e:
                    self._fail(st, drv, e, Quality.COMMS)
                connected = False
                await drv.close()
                await self._sleep(_jitter(backoff))
                backoff = min(backoff * 2, max_backoff)
                continue
            # polled: wait for the slot, skipping slots we already missed (overrun)
            now = loop.time()
            if now > next_due + dev.poll:
                missed = int((now - next_due) // dev.poll)
                st.overruns += missed
                log.warning("device %s: poll overran, skipped %d cycle(s)", st.name, missed,
                            extra={"device": st.name})
                next_due += missed * dev.poll
            if next_due > now:
                await self._sleep(next_due - now)
                if self._stop.is_set():
                    break
            next_due += dev.poll
            t0 = loop.time()
            try:
                # a driver may know better (an RS-485 bus: every unit may cost its own timeout)
                budget = getattr(drv, "poll_budget_s", None) or dev.timeout * (dev.retries + 1) + dev.poll
                batch = await within(drv.poll(), budget)
            except (DeviceUnavailable, OSError, TimeoutError) as e:
                self._fail(st, drv, e, _cause(e))
                connected = False
                await drv.close()
                await self._sleep(_jitter(backoff))
                backoff = min(backoff * 2, max_backoff)
                next_due = loop.time()
                continue
            st.last_poll_ms = (loop.time() - t0) * 1e3
            st.polls += 1
            st.samples += len(batch)
            st.info = drv.info
            backoff = dev.poll
            if len(batch) and (batch.quality < Quality.BAD).any():
                st.last_ok_ns = self.clock()
                self._recovered(st)
            elif len(batch):
                # every channel bad but the device answered (e.g. all exception codes)
                if st.state != "failing":
                    log.error("device %s: every channel bad (cause 0x%02x)", st.name, int(batch.quality[0]),
                              extra={"device": st.name})
                st.state = "failing"
                st.last_error = f"all channels bad (0x{int(batch.quality[0]):02x})"
            self.ingest(reload.renumber(batch, self._remap.get(dev.name)))
        await drv.close()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await within(self._stop.wait(), max(0.0, seconds))

    async def _timers(self) -> None:
        """Clock-driven work: rules timers (stale, delays), retention, watchdog."""
        last_retention = 0.0
        last_now = 0
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            now = self.clock()
            if now < last_now:
                # a clock step back (NTP): the rules bring their times back in tick()
                log.warning("clock went back %.3f s: live values and rules follow it", (last_now - now) / 1e9)
                self.live.clock_back(now)
            last_now = now
            self.emit_events(self.rules.tick(now))
            if loop.time() - last_retention > 60:
                last_retention = loop.time()
                try:
                    await self.journal.enforce_retention()
                except Exception as e:  # sqlite errors: keep the daemon up, say it loudly
                    log.error("journal retention failed: %s", e)
            if self.journal.alive:  # a dead journal writer should get us restarted
                self.notifier.watchdog()
            wd = self.notifier.watchdog_s
            await self._sleep(1.0 if wd is None else min(1.0, wd / 3))

    # ------------------------------------------------------------------ lifecycle
    def build_services(self) -> None:
        for section, target in SERVICES.items():
            conf = getattr(self.cfg, section, None)
            if conf is None:
                continue
            module, _, fn = target.partition(":")
            factory: ServiceFactory = getattr(importlib.import_module(module), fn)
            try:
                svc = factory(self, conf)
            except SecretFileError as e:  # the operator must fix it: say which section, then stop
                log.error("%s: %s", section, e)
                raise
            if svc is not None:
                self.services.append(svc)
                self._by_section[section] = svc
        chanmap.install(self)  # journals the channel table for central (docs/central.md)

    def stop(self) -> None:
        self._stop.set()

    def stopping(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------------ live reload
    async def reload_config(self, text: str | None = None, *, source: str) -> ReloadResult:
        """Validate a new config and apply its difference live (gateway/reload.py)."""
        if self._tg is None or self._stop.is_set():
            log.warning("config reload (%s) refused: the daemon is starting or stopping", source)
            return ReloadResult(False, self.config_sha256, {},
                                "<config>:1:1: the daemon is starting or stopping: try again")
        return await self.reloader.reload(text, source)

    def start_poller(self, drv: Driver) -> None:
        assert self._tg is not None
        name = drv.device.name
        self.drivers[name] = drv
        self._remap.pop(name, None)
        self._pollers[name] = self._tg.create_task(self._poll_device(drv), name=f"poll[{name}]")

    async def stop_poller(self, name: str) -> None:
        task, drv = self._pollers.pop(name, None), self.drivers.pop(name, None)
        self._remap.pop(name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if drv is not None:
            try:
                await within(drv.close(), reload.POLLER_STOP_S)
            except (TimeoutError, OSError) as e:
                log.warning("device %s: its driver did not close cleanly: %s", name, e or type(e).__name__)

    def remap_pollers(self) -> None:
        """After the table changed: batches of the running drivers renumbered into it."""
        for name, drv in self.drivers.items():
            m = reload.remap(drv, self.table)
            if m is None:
                self._remap.pop(name, None)
            else:
                self._remap[name] = m

    def service_of(self, section: str) -> Service | None:
        if section == "channel_table":
            return next((s for s in self.services if s.name == "channel_table"), None)
        return self._by_section.get(section)

    def start_service(self, section: str, svc: Service) -> None:
        assert self._tg is not None
        self.services.append(svc)
        self._by_section[section] = svc
        self._svc_tasks[id(svc)] = self._tg.create_task(svc.run(), name=f"service[{svc.name}]")

    async def stop_service(self, section: str) -> Service | None:
        svc = self._by_section.pop(section, None)
        if svc is None:
            return None
        task = self._svc_tasks.pop(id(svc), None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._stop_services([svc])
        self.services.remove(svc)
        return svc

    async def run(self, *, drain_s: float = 5.0, on_ready: Callable[[], None] | None = None) -> None:
        """Run until stop() (or SIGTERM/SIGINT when installed by the CLI)."""
        started: list[Service] = []
        try:
            self.build_services()
            for svc in self.services:
                await svc.start()
                started.append(svc)
            self.services = started  # a reload adds and removes services here
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for svc in started:
                    self._svc_tasks[id(svc)] = tg.create_task(svc.run(), name=f"service[{svc.name}]")
                timers = tg.create_task(self._timers(), name="timers")
                for dev in self.cfg.devices:
                    if dev.enabled:
                        self.start_poller(make_driver(dev, self.table.by_device.get(dev.name, []),
                                                      base_dir=self.cfg.base_dir))
                self.emit_events([reload.config_event(self.config_sha256, "start", {}, self.clock(),
                                                      self.cfg.gateway.id)])
                self.notifier.ready(f"{len(self._pollers)} devices, {len(self.table)} channels")
                log.info("safegw %s running: %d devices, %d channels, state in %s",
                         self.cfg.gateway.id, len(self._pollers), len(self.table), self.state_dir)
                if on_ready is not None:
                    on_ready()
                await self._stop.wait()
                # the whole stop shares one deadline: the drain time (the sources' stop,
                # the last commits and the sinks' delivery each take what is left of it)
                deadline = asyncio.get_running_loop().time() + drain_s

                def left() -> float:
                    return max(0.0, deadline - asyncio.get_running_loop().time())

                self.notifier.stopping()
                log.info("stopping: sources first")
                async with self.reloader.lock:  # a reload under way finishes first
                    pollers = list(self._pollers.values())
                # sources stop by themselves on _stop; give them the poll timeout, then cancel
                _done, pending = (await asyncio.wait(pollers, timeout=min(2.0, left())) if pollers
                                  else (set(), set()))
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                try:
                    # the last batches' commit gets a floor: it is what makes them taken
                    await within(self.flush(), max(left(), FLUSH_FLOOR_S))
                except TimeoutError:
                    log.error("journal did not commit the last batches within %.1fs; it commits them "
                              "as it closes", drain_s)
                timers.cancel()
                # sinks: bounded drain of what is already journaled
                await self._drain(started, left())
                for t in self._svc_tasks.values():
                    t.cancel()
        finally:
            await self._stop_services(started)
            self.journal.close()
            log.info("stopped")

    async def _stop_services(self, services: list[Service]) -> None:
        """Stop every service at once, each within the stop grace (they have had their
        drain already): one that hangs does not hold the others or the journal's close."""

        async def stop(svc: Service) -> None:
            try:
                await within(svc.stop(), STOP_GRACE_S)
            except (TimeoutError, OSError, RuntimeError) as e:
                log.warning("service %s did not stop cleanly: %s", svc.name, e or type(e).__name__)

        await asyncio.gather(*(stop(s) for s in reversed(services)))

    async def _drain(self, services: list[Service], timeout_s: float) -> None:
        coros = [s.drain() for s in services]
        if coros:
            try:
                await within(asyncio.gather(*coros, return_exceptions=True), timeout_s)
            except TimeoutError:
                log.warning("drain did not finish in time; the journal keeps the rest for next time")


def install_signal_handlers(gw: Gateway) -> None:
    """First SIGTERM/SIGINT: orderly stop with a bounded drain. A second one: leave now
    (everything committed is safe in the journal; consumers resume from their cursors)."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if gw._stop.is_set():
            log.warning("second %s: exiting without drain", signal.Signals(signum).name)
            os._exit(128 + signum)
        gw.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    reloads: set[asyncio.Task[ReloadResult]] = set()

    def on_hup() -> None:  # systemctl reload: re-read the file (serialized with other reloads)
        t = loop.create_task(gw.reload_config(source="sighup"), name="reload[sighup]")
        reloads.add(t)
        t.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
