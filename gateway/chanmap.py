"""The channel-table service: journals the channel table so central knows channels by name.

The document itself (its form, version, tags) is gateway/core/chantable.py. This
service journals it at start when the table differs from the last one in the journal,
and again every ``REFRESH_S`` (a day) while it runs, so journal retention or a lost
range never leaves central without one. It travels like every event (main lane, in
journal order, inside the signed envelopes, forwarded unchanged level by level); from
its sequence on, central tags the samples' points with the names (see docs/central.md).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.core.chantable import table_doc
from gateway.services import DaemonContext
from gateway.store.queries import last_channel_table

log = logging.getLogger(__name__)

REFRESH_S = 86400.0


class ChannelTableService:
    """Journals the channel table at start (when it changed) and every ``every_s``."""

    name = "channel_table"

    def __init__(self, ctx: DaemonContext, every_s: float = REFRESH_S):
        self.ctx = ctx
        self.every_s = every_s
        self.seq = 0
        self.version = ""
        self.last_ts = 0
        self.emitted = 0

    def current(self) -> dict[str, Any]:
        g = self.ctx.cfg.gateway
        return table_doc(self.ctx.table, g.id, g.site, self.ctx.clock())

    async def emit(self, doc: dict[str, Any]) -> None:
        self.seq = await self.ctx.journal.append_event(doc)
        self.version, self.last_ts = doc["table_version"], doc["ts"]
        self.emitted += 1

    async def start(self) -> None:
        doc = self.current()
        last = await self.ctx.journal.run_read(last_channel_table)
        if last is not None:
            seq, ev = last
            age = (doc["ts"] - int(ev.get("ts") or 0)) / 1e9
            if ev.get("table_version") == doc["table_version"] and 0 <= age < self.every_s:
                self.seq, self.version, self.last_ts = seq, doc["table_version"], int(ev["ts"])
                return
        await self.emit(doc)
        was = "" if last is None else f" (was {last[1].get('table_version')})"
        log.info("channel table %s (%d channels) journaled at seq %d%s", doc["table_version"],
                 len(doc["channels"]), self.seq, was)

    async def run(self) -> None:
        while True:
            left = self.every_s - (self.ctx.clock() - self.last_ts) / 1e9
            if left > 0:
                await asyncio.sleep(min(left, self.every_s))
                continue
            await self.emit(self.current())

    async def drain(self) -> None:
        """Nothing to deliver: the table is journaled at start."""

    async def stop(self) -> None:
        return None

    def stats(self) -> dict[str, Any]:
        return {"version": self.version, "seq": self.seq, "channels": len(self.ctx.table),
                "journaled": self.emitted}


def install(ctx: DaemonContext) -> None:
    """Add the channel-table service to a daemon (called once from Gateway.build_services)."""
    ctx.services.append(ChannelTableService(ctx))
