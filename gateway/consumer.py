"""The journal consumer, written once: the pieces every service that delivers the
journal somewhere is built from (the InfluxDB historian, MQTT alarms, the uplink's
lanes, central's InfluxDB writers, and the notifiers to come).

- ``Backoff``: exponential delays with jitter and a cap, reset after a success.
- ``Health``: ok or failing; the first failure is logged at ERROR with its reason, the
  recovery at INFO with how long it lasted, repeats not at all.
- ``AckWindow``: deliveries in flight (many publishes awaiting their PUBACKs); the
  cursor may pass a record only once it and everything before it are done.
- ``JournalConsumer``: one named cursor in the journal; reads bounded chunks after it
  (or after any position a pipelined consumer has read ahead to), waits for new
  records without polling (the journal wakes it on commit), acks forward only,
  ``drain`` with a deadline, ``stats``. ``run`` is the plain read → deliver → ack
  loop for a subclass that implements ``deliver``; windowed and pipelined consumers
  keep their own loop and use ``read(after=...)``, ``wait(after=...)`` and ``ack``.

See "Writing a journal consumer" in docs/journal.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

from gateway.core.record import Record
from gateway.store.journal import Journal

log = logging.getLogger(__name__)


class Backoff:
    """Delays that double from ``first`` up to ``cap`` seconds, each ±20 % (so that many
    clients that failed together do not retry together); ``reset`` after a success."""

    def __init__(self, first: float = 0.2, cap: float = 30.0):
        self.first, self.cap = first, cap
        self.delay = first

    def next(self) -> float:
        d = self.delay * random.uniform(0.8, 1.2)
        self.delay = min(self.cap, self.delay * 2)
        return d

    def reset(self) -> None:
        self.delay = self.first

    async def sleep(self) -> None:
        await asyncio.sleep(self.next())


class Health:
    """Whether a delivery target works, logged as state changes, not repetitions.

    ``what`` names the target in the log (``"uplink push to https://central:8443"``);
    ``logger`` is the owner's, so the lines carry the owner's module name."""

    def __init__(self, what: str, *, logger: logging.Logger = log):
        self.what = what
        self.log = logger
        self.state = "starting"  # starting | ok | failing
        self.failures = 0
        self.last_error: str | None = None
        self.last_ok_ns = 0
        self._failing_since = 0.0

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def failed(self, error: BaseException | str) -> None:
        msg = error if isinstance(error, str) else (str(error) or type(error).__name__)
        self.failures += 1
        if self.state != "failing":
            self.log.error("%s failed: %s", self.what, msg)
            self._failing_since = time.monotonic()
        self.state, self.last_error = "failing", msg

    def succeeded(self) -> None:
        if self.state == "failing":
            self.log.info("%s is working again (failed for %.1f s, %d failure(s) so far)", self.what,
                          time.monotonic() - self._failing_since, self.failures)
        elif self.state == "starting":
            self.log.info("%s is working", self.what)
        self.state, self.last_error = "ok", None
        self.last_ok_ns = time.time_ns()


@dataclass(slots=True)
class Slot:
    """One delivery in flight: the journal sequence it covers, and whether it is done."""

    seq: int
    done: bool = False


class AckWindow:
    """Deliveries in flight in journal order, acknowledged in any order.

    ``add`` a slot per delivery (``done=True`` for a record with nothing to wait for,
    or for a horizon: every record up to it was read and needs nothing); mark slots
    done as the target confirms them; ``advance`` gives the sequence the cursor may
    move to: the end of the contiguous prefix of done slots."""

    def __init__(self) -> None:
        self._slots: deque[Slot] = deque()

    def add(self, seq: int, *, done: bool = False) -> Slot:
        slot = Slot(seq, done)
        self._slots.append(slot)
        return slot

    def advance(self) -> int | None:
        upto = None
        while self._slots and self._slots[0].done:
            upto = self._slots.popleft().seq
        return upto

    def __len__(self) -> int:
        return len(self._slots)


class JournalConsumer:
    """One named journal cursor and the reading, waiting and acknowledging around it.

    ``kinds`` restricts reads to record kinds (``(EVENT,)``); ``max_records`` and
    ``max_samples`` bound a chunk. ``register()`` must be called (from ``start``) before
    the consumer holds retention to account and before the first read."""

    #: what ``run`` counts as a failed delivery (backed off and retried from the cursor)
    errors: ClassVar[tuple[type[BaseException], ...]] = (OSError, asyncio.TimeoutError)

    def __init__(self, journal: Journal, name: str, *, start: str = "oldest", max_records: int = 1000,
                 max_samples: int | None = None, kinds: tuple[int, ...] | None = None,
                 what: str | None = None, logger: logging.Logger = log,
                 backoff: Backoff | None = None, idle_wait_s: float | None = None):
        self.journal = journal
        self.name = name
        self.start = start
        self.max_records = max_records
        self.max_samples = max_samples
        self.kinds = kinds
        self.health = Health(what or f"journal consumer {name}", logger=logger)
        self.backoff = backoff or Backoff()
        self.idle_wait_s = idle_wait_s
        self.delivered = 0
        self._acked = asyncio.Condition()

    # ------------------------------------------------------------------ cursor
    def register(self) -> int:
        """Declare this consumer to the journal (it now holds retention to account);
        returns the cursor to resume from."""
        return self.journal.register(self.name, start=self.start)

    @property
    def cursor(self) -> int:
        return self.journal.cursor(self.name)

    def lag(self) -> int:
        return self.journal.lag(self.name)

    async def ack(self, seq: int, *, records: int | None = None) -> bool:
        """Move the cursor to ``seq`` once the target holds everything up to it;
        ``records``: how many records that delivered (default: the sequences passed).
        Never moves back, never past the journal's end; returns whether it moved."""
        seq = min(seq, self.journal.last_seq)
        before = self.cursor
        if seq <= before:
            return False
        await self.journal.ack(self.name, seq)
        self.delivered += seq - before if records is None else records
        async with self._acked:
            self._acked.notify_all()
        return True

    # ------------------------------------------------------------------ reading
    async def read(self, after: int | None = None, *, max_records: int | None = None,
                   max_samples: int | None = None) -> list[Record]:
        """Records after ``after`` (default: the cursor), a bounded chunk, oldest first.
        A pipelined consumer reads ahead from where its last read ended."""
        start = self.cursor if after is None else after
        return await self.journal.read(start, max_records or self.max_records,
                                       max_samples=max_samples or self.max_samples, kinds=self.kinds)

    def read_sync(self, after: int, *, max_records: int | None = None,
                  max_samples: int | None = None) -> list[Record]:
        """``read`` for a consumer that reads on its own thread (sealing, formatting)."""
        return self.journal.read_sync(after, max_records or self.max_records,
                                      max_samples=max_samples or self.max_samples, kinds=self.kinds)

    async def wait(self, after: int | None = None, timeout: float | None = None,  # noqa: ASYNC109
                   *, wake: asyncio.Event | None = None, events_only: bool = False) -> bool:
        """Until a record after ``after`` (default: the cursor) is committed, ``timeout``
        passes, or ``wake`` is set (the owner has other work: a PUBACK, a drain).
        Returns whether there is such a record. The journal wakes it on commit
        (``events_only``: on a commit with an event; commits of samples alone do not)."""
        after = self.cursor if after is None else after
        if wake is None:
            return await self.journal.wait(after, timeout, events_only=events_only)
        if wake.is_set():
            return self.journal.last_seq > after
        waiter = asyncio.ensure_future(self.journal.wait(after, timeout, events_only=events_only))
        woke = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait({waiter, woke}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (waiter, woke):
                f.cancel()
            await asyncio.gather(waiter, woke, return_exceptions=True)
        return self.journal.last_seq > after

    async def drain(self, timeout: float | None = None, *, target: int | None = None) -> bool:  # noqa: ASYNC109
        """Wait until the cursor reaches ``target`` (default: the journal's end now), at
        most ``timeout`` seconds; returns whether it did. Delivery is the owner's: this
        only watches the acknowledgements."""
        target = self.journal.last_seq if target is None else target
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                async with self._acked:
                    await self._acked.wait_for(lambda: self.cursor >= target)
        return self.cursor >= target

    # ------------------------------------------------------------------ the plain loop
    async def deliver(self, records: list[Record]) -> None:
        """Hand ``records`` to the target; return once it holds them (raise one of
        ``errors`` when it does not). Subclasses that use ``run`` implement it."""
        raise NotImplementedError(f"{type(self).__name__} delivers through its own loop, not run()")

    async def run(self) -> None:
        """Read after the cursor, deliver, ack; on failure back off and retry the same
        chunk (so nothing is lost, and nothing is acked twice)."""
        while True:
            # with a kinds filter the records after the cursor may all be of other kinds:
            # those are passed by acknowledging up to the end seen before the read, else
            # the cursor would hold retention back and wait() would never block
            end = self.journal.last_seq
            records = await self.read()
            if not records:
                if self.kinds is not None and end > self.cursor:
                    await self.ack(end, records=0)
                await self.wait(after=max(end, self.cursor), timeout=self.idle_wait_s)
                continue
            try:
                await self.deliver(records)
            except self.errors as e:
                self.health.failed(e)
                await self.backoff.sleep()
                continue
            self.health.succeeded()
            self.backoff.reset()
            await self.ack(records[-1].seq, records=len(records))

    def stats(self) -> dict[str, Any]:
        h = self.health
        return {"name": self.name, "cursor": self.cursor, "lag": self.lag(), "delivered": self.delivered,
                "failures": h.failures, "last_error": h.last_error, "state": h.state}
