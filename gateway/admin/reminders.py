"""The register store's service: it owns the store (registers.db in the state directory)
and raises due-date reminders (certificate expiry, next inspection, hidden-danger
deadlines) into the journal every ``registers.check_every``; the permits' timing
reminders every ``permits.check_every``; and it runs the permit alarm watch
(gateway/admin/permits/watch.py), which flags a permit in progress when an alarm hits
one of its channels.

With an ``api:`` section the admin API builds this service and runs it beside its
server (it serves the same store, and must stop it only after the server); without
one, the daemon runs it on its own, for the registers exist in the embedded default too.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.admin.permits.watch import PermitWatch
from gateway.admin.registers import RegisterStore, SchemaError, load_schemas
from gateway.core.config import RegistersSection
from gateway.services import DaemonContext

log = logging.getLogger(__name__)


def open_store(daemon: DaemonContext, registers: RegistersSection) -> RegisterStore:
    """The gateway's register store (registers.db in the state directory)."""
    types_file = registers.types_file
    if types_file is not None and not types_file.is_absolute():
        types_file = daemon.cfg.base_dir / types_file
    try:
        schemas = load_schemas(types_file)
    except SchemaError as e:
        raise RuntimeError("register types are invalid:\n" + "\n".join(e.lines)) from None
    return RegisterStore(
        daemon.state_dir / "registers.db",
        schemas=schemas,
        channels=daemon.table.by_name.keys(),
        clock=daemon.clock,
        remind_days=registers.remind_days,
        max_attachment=registers.max_attachment,
        personal_upstream=registers.personal_upstream,
    )


class RegisterService:
    name = "registers"

    def __init__(self, daemon: DaemonContext, section: RegistersSection):
        self.daemon = daemon
        self.section = section
        self.store = open_store(daemon, section)
        self.reminders = 0
        self.watch = PermitWatch(daemon.journal, self.store, daemon.table, daemon.emit_events)

    async def start(self) -> None:
        log.info("register reminders on (%d register types, no admin API)", len(self.store.types))

    async def run(self) -> None:
        """Checks due dates now and then every ``check_every``, the permits' timing rules
        every ``permits.check_every``, and watches the alarms for permits in progress."""
        self.watch.register()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._due_loop(), name="registers[due]")
            tg.create_task(self._permit_loop(), name="registers[permit-timing]")
            tg.create_task(self.watch.run(), name="registers[permit-watch]")

    async def _due_loop(self) -> None:
        while True:
            # looked up on every round (a test counts the checks by replacing it)
            await self.check_reminders()
            await asyncio.sleep(self.section.check_every)

    async def _permit_loop(self) -> None:
        while True:
            await self.check_permit_timing()
            await asyncio.sleep(self.daemon.cfg.permits.check_every)

    async def check_permit_timing(self) -> list[dict[str, Any]]:
        """The permits' timing reminders not raised before, journaled through the daemon."""
        try:
            events = await self.store.call(self.store.check_permit_timing)
        except Exception as e:  # sqlite trouble: say so, try again next time
            log.error("permit timing check failed: %s", e)
            return []
        if events:
            self.daemon.emit_events(events)
            self.reminders += len(events)
        return events

    async def check_reminders(self) -> list[dict[str, Any]]:
        """Due-date reminders not raised before, journaled through the daemon."""
        try:
            events = await self.store.call(self.store.check_reminders)
        except Exception as e:  # sqlite trouble: say so, try again next time
            log.error("register reminder check failed: %s", e)
            return []
        if events:
            self.daemon.emit_events(events)
            self.reminders += len(events)
        return events

    async def drain(self) -> None:
        """Nothing to deliver: reminders are journaled as they are raised."""

    async def stop(self) -> None:
        self.store.close()

    def stats(self) -> dict[str, Any]:
        return {"types": len(self.store.types), "reminders": self.reminders,
                "permit_watch": self.watch.stats()}


def build_service(daemon: DaemonContext, section: RegistersSection) -> RegisterService | None:
    if daemon.cfg.api is not None:
        return None  # the admin API builds this service and runs it beside its server
    return RegisterService(daemon, section)
