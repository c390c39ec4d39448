"""Register reminders when the admin API is off.

With an ``api:`` section the API service owns the register store and checks due dates
(it serves the same store). Without one, the registers still exist in the embedded
default and their due dates (certificate expiry, next inspection, hidden-danger
deadlines) must still raise reminder events into the journal: this service does that.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from gateway.admin.registers import RegisterStore, SchemaError, load_schemas
from gateway.core.config import RegistersSection

log = logging.getLogger(__name__)


def open_store(gw: Any, registers: RegistersSection) -> RegisterStore:
    """The gateway's register store (registers.db in the state directory)."""
    base = gw.cfg.base_dir
    types_file = registers.types_file
    if types_file is not None and not types_file.is_absolute():
        types_file = base / types_file
    try:
        schemas = load_schemas(types_file)
    except SchemaError as e:
        raise RuntimeError("register types are invalid:\n" + "\n".join(e.lines)) from None
    store = RegisterStore(
        Path(gw.cfg.gateway.state_dir) / "registers.db",
        schemas=schemas,
        channels=gw.table.names(),
        clock=gw.clock,
        remind_days=registers.remind_days,
        max_attachment=registers.max_attachment,
        personal_upstream=registers.personal_upstream,
    )
    gw.registers = store
    return store


async def check_reminders(gw: Any, store: RegisterStore) -> list[dict[str, Any]]:
    """Due-date reminders not raised before, journaled through the gateway."""
    try:
        events = await store.call(store.check_reminders)
    except Exception as e:  # sqlite trouble: say so, try again next time
        log.error("register reminder check failed: %s", e)
        return []
    if events:
        gw.emit_events(events)
    return events


class ReminderService:
    name = "registers"

    def __init__(self, gw: Any, section: RegistersSection):
        self.gw = gw
        self.section = section
        self.store = open_store(gw, section)
        self.reminders = 0

    async def start(self) -> None:
        log.info("register reminders on (%d register types, no admin API)", len(self.store.types))

    async def run(self) -> None:
        while True:
            self.reminders += len(await check_reminders(self.gw, self.store))
            await asyncio.sleep(self.section.check_every)

    async def stop(self) -> None:
        self.store.close()


def build_service(gw: Any, section: RegistersSection) -> ReminderService | None:
    if getattr(gw.cfg, "api", None) is not None:
        return None  # the API service owns the store and the reminders
    return ReminderService(gw, section)
