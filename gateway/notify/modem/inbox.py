"""Incoming SMS and delivery reports: read from the SIM, put together, handed over, deleted.

``Inbox.run`` is the modem's second task: it reads what ``+CMTI`` announced or a listing
found (``AT+CMGR``), reassembles long replies, hands each to the notify service's handler,
then deletes it (``AT+CMGD``); and matches status reports (``+CDS``) to the messages sent.
Its AT commands go through the modem's lock, between the sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.notify.base import InboundHandler
from gateway.notify.modem.at import CommandError, ModemError
from gateway.notify.modem.pdu import Deliver, PduError, StatusReport, decode_hex, decode_incoming

log = logging.getLogger(__name__)

REASSEMBLY_TTL = 600.0  # s: parts of a long incoming SMS wait this long for the others
REASSEMBLY_MAX = 32  # long incoming messages being put together at once
TRACKED_MAX = 512  # sent parts whose delivery report we wait for

DeliveryHandler = Callable[[str, bool, str], "Awaitable[None] | None"]  # (key, delivered, detail)


@dataclass
class _Long:
    parts: dict[int, str] = field(default_factory=dict)
    indexes: list[int] = field(default_factory=list)
    first: float = 0.0


class Inbox:
    def __init__(self, port: str, lock: asyncio.Lock, cmd: Callable[[str], Awaitable[list[str]]],
                 counts: dict[str, int]):
        self.port = port
        self.lock = lock
        self._cmd = cmd
        self.counts = counts
        self.handler: InboundHandler | None = None
        self.on_delivery: DeliveryHandler | None = None
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=256)
        self._long: dict[tuple[str, int, int], _Long] = {}
        self._tracked: OrderedDict[int, tuple[str, int]] = OrderedDict()  # mr -> (key, parts)
        self._delivery: OrderedDict[str, list[int]] = OrderedDict()  # key -> statuses seen
        self._told: set[str] = set()  # keys whose settled delivery was handed to on_delivery

    @property
    def partial(self) -> int:
        """Long messages waiting for parts."""
        return len(self._long)

    def track(self, key: str, mrs: list[int]) -> None:
        for mr in mrs:
            if mr >= 0:
                self._tracked[mr] = (key, len(mrs))
        self._delivery[key] = []  # a retry under the same key starts afresh
        self._told.discard(key)
        while len(self._tracked) > TRACKED_MAX:
            self._tracked.popitem(last=False)
        while len(self._delivery) > TRACKED_MAX:
            old, _ = self._delivery.popitem(last=False)
            self._told.discard(old)

    def delivery(self, key: str) -> str:
        """'delivered', 'failed', 'pending' or 'unknown' for a message sent with ``key``."""
        if key not in self._delivery:
            return "unknown"
        seen = self._delivery[key]
        if any(st >= 0x40 for st in seen):
            return "failed"
        parts = next((n for k, n in self._tracked.values() if k == key), 0)
        done = [st for st in seen if st < 0x20]
        return "delivered" if parts and len(done) >= parts else "pending"

    def queue(self, item: tuple[str, Any]) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            # the messages stay in the modem's store; the next listing picks them up
            log.warning("modem %s: inbound queue full, %s left for the next listing", self.port, item[0])

    async def run(self) -> None:
        while True:
            kind, arg = await self._queue.get()
            try:
                if kind == "read":
                    await self._read_stored(arg)
                elif kind == "list":
                    await self._list_stored()
                elif kind == "report":
                    await self.report(*arg)
            except ModemError as e:
                log.warning("modem %s: incoming %s: %s", self.port, kind, e)

    async def _list_stored(self) -> None:
        async with self.lock:
            lines = await self._cmd("AT+CMGL=4")  # all stored messages, PDU mode (TS 27.005 3.4.2)
        for ln in lines:
            m = re.match(r"^\+CMGL:\s*(\d+)", ln)
            if m:
                self.queue(("read", int(m.group(1))))

    async def _read_stored(self, index: int) -> None:
        async with self.lock:
            lines = await self._cmd(f"AT+CMGR={index}")
        found = next(((head, ln) for head, ln in itertools.pairwise(lines) if head.startswith("+CMGR:")),
                     None)
        if found is None:
            return  # an empty slot (already read and deleted)
        m = re.search(r",\s*(\d+)\s*$", found[0])  # +CMGR: <stat>,[<alpha>],<length>
        try:
            msg = decode_incoming(decode_hex(found[1]), int(m.group(1)) if m else None)
        except PduError as e:
            self.counts["inbound_bad"] += 1
            log.warning("modem %s: stored message %d is not a readable SMS (%s); deleted",
                        self.port, index, e)
            await self._delete([index])
            return
        if isinstance(msg, StatusReport):
            await self._report_decoded(msg)
            await self._delete([index])
            return
        await self._deliver(msg, index)

    async def _deliver(self, msg: Deliver, index: int) -> None:
        if msg.concat is None or msg.concat.total == 1:
            await self._hand_over(msg.sender, msg.text, [index])
            return
        c = msg.concat
        k = (msg.sender, c.ref, c.total)
        long = self._long.get(k)
        if long is None:
            if len(self._long) >= REASSEMBLY_MAX:
                await self.expire_long(force_oldest=True)
            long = self._long[k] = _Long(first=time.monotonic())
        long.parts[c.seq] = msg.text
        if index not in long.indexes:  # the listing at a status check may read it again
            long.indexes.append(index)
        if len(long.parts) == c.total:
            del self._long[k]
            text = "".join(long.parts[i] for i in sorted(long.parts))
            await self._hand_over(msg.sender, text, long.indexes)

    async def expire_long(self, *, force_oldest: bool = False) -> None:
        """Hand over what arrived of long messages whose other parts never came."""
        now = time.monotonic()
        old = [k for k, v in self._long.items() if now - v.first > REASSEMBLY_TTL]
        if force_oldest and not old and self._long:
            old = [min(self._long, key=lambda k: self._long[k].first)]
        for k in old:
            long = self._long.pop(k)
            text = "…".join(long.parts[i] for i in sorted(long.parts))
            log.warning("modem %s: long SMS from %s incomplete (%d of %d parts)", self.port, k[0],
                        len(long.parts), k[2])
            await self._hand_over(k[0], text, long.indexes)

    async def _hand_over(self, sender: str, text: str, indexes: list[int]) -> None:
        self.counts["inbound"] += 1
        handler = self.handler
        if handler is None:
            log.warning("modem %s: SMS from %s with no one to take it; deleted", self.port, sender)
        else:
            try:
                await handler(sender, text)
            except Exception:  # the service's bug must not leave the message in the SIM forever
                log.exception("modem %s: the inbound handler failed on an SMS from %s", self.port, sender)
        await self._delete(indexes)

    async def _delete(self, indexes: list[int]) -> None:
        async with self.lock:
            for i in indexes:
                with contextlib.suppress(CommandError):
                    await self._cmd(f"AT+CMGD={i}")

    async def report(self, pdu_hex: str, tpdu_len: int | None) -> None:
        try:
            msg = decode_incoming(decode_hex(pdu_hex), tpdu_len)
        except PduError as e:
            self.counts["inbound_bad"] += 1
            log.warning("modem %s: unreadable status report (%s)", self.port, e)
            return
        if isinstance(msg, StatusReport):
            await self._report_decoded(msg)

    async def _report_decoded(self, rep: StatusReport) -> None:
        entry = self._tracked.get(rep.mr)
        if entry is None:
            return
        key, _ = entry
        if not rep.final:
            return
        self._delivery.setdefault(key, []).append(rep.status)
        self.counts["delivered" if rep.delivered else "delivery_failed"] += 1
        state = self.delivery(key)
        cb = self.on_delivery
        if cb is not None and state in ("delivered", "failed") and key not in self._told:
            self._told.add(key)
            res = cb(key, state == "delivered", f"TP-ST 0x{rep.status:02X} from {rep.recipient}")
            if res is not None:
                await res
