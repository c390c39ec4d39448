"""Alarms during the work: a journal consumer (cursor ``permits``) that reads the alarm
events and, when one is raised or escalated on a channel of a permit in progress (a
channel it names, or a gas channel of its area), flags and suspends that permit. The
flag is journaled like a reminder (``{"type": "reminder", "rule": "permit_flagged"}``),
so MQTT and the notifiers carry it to the people on the work site; the permit resumes
only through ``resume``, which runs a new gas analysis.

It reads from its own cursor and acks only after the store has written the flags, so an
alarm journaled while the gateway was stopping is still acted on after the restart. A
new cursor starts at the journal's end: alarms older than the watch are history.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import Any, ClassVar

from gateway.admin.registers import Conflict, NotFound, RegisterStore
from gateway.consumer import JournalConsumer
from gateway.core.channels import ChannelTable
from gateway.core.record import EVENT, Record
from gateway.store.journal import Journal

log = logging.getLogger(__name__)

CONSUMER = "permits"
#: alarm transitions that flag a permit (a clear, an ack or a shelve does not)
FLAGGING = ("raise", "escalate")
#: with no event, the watch still moves its cursor past the samples this often (its ack
#: commits; retention writes a gap for an active consumer only past its cursor)
IDLE_ACK_S = 60.0


def alarm_hits(records: list[Record]) -> list[dict[str, Any]]:
    """The alarm events among ``records`` that flag a permit (raise or escalate, not
    maintenance); records that are not JSON objects are skipped."""
    out = []
    for r in records:
        if not r.data.startswith(b'{"type":"alarm"'):
            continue
        try:
            ev = r.event()
        except ValueError:
            continue
        if (
            ev.get("transition") in FLAGGING
            and ev.get("rule") != "maintenance"
            and isinstance(ev.get("channel"), str)
        ):
            out.append(ev)
    return out


class PermitWatch(JournalConsumer):
    errors: ClassVar[tuple[type[BaseException], ...]] = (OSError, sqlite3.Error)

    def __init__(
        self,
        journal: Journal,
        store: RegisterStore,
        table: ChannelTable,
        emit: Callable[[list[dict[str, Any]]], None],
    ):
        super().__init__(
            journal, CONSUMER, start="end", kinds=(EVENT,), what="permit alarm watch", logger=log,
            idle_wait_s=IDLE_ACK_S,
        )
        self.store = store
        self.table = table
        self.emit = emit
        self.flags = 0

    def _area(self, channel: str) -> str | None:
        c = self.table.by_name.get(channel)
        return c.spec.area if c is not None and c.kind == "gas" else None

    async def deliver(self, records: list[Record]) -> None:
        hits = alarm_hits(records)
        if not hits:
            return
        open_permits = await self.store.call(self.store.permits_in_progress)
        for ev in hits:
            ch = ev["channel"]
            area = self._area(ch)
            for rtype, rid, channels, p_area in open_permits:
                if ch in channels or (area is not None and p_area == area):
                    try:
                        events = await self.store.call(self.store.flag_alarm, rtype, rid, ev)
                    except (NotFound, Conflict) as e:  # gone meanwhile: nothing to flag
                        log.info("permit %s %d not flagged: %s", rtype, rid, e)
                        continue
                    if events:
                        self.emit(events)
                        self.flags += 1

    async def run(self) -> None:
        """Read the events after the cursor, flag, ack. The cursor also passes the sample
        records in between (up to the journal's end seen before the read), so the watch
        does not hold retention back. Only a commit with an event wakes the watch: the
        polls' sample commits do not (no read, no ack, no commit of its cursor each
        time); it passes them when the next event comes, or after ``IDLE_ACK_S``."""
        while True:
            horizon = self.journal.last_seq
            records = await self.read()
            if records:
                try:
                    await self.deliver(records)
                except self.errors as e:
                    self.health.failed(e)
                    await self.backoff.sleep()
                    continue
                self.health.succeeded()
                self.backoff.reset()
            full = len(records) >= self.max_records
            upto = records[-1].seq if full else max(horizon, records[-1].seq if records else 0)
            await self.ack(upto, records=len(records))
            if not full:
                await self.wait(timeout=self.idle_wait_s, events_only=True)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "flags": self.flags}
