"""Pulling: central fetches envelopes from the gateways (or lower nodes) it is configured
to pull, and hands them to ingest.

Each pull source held gets two lanes: alarms long-polled, main drained at full speed
with the next range prefetched while the current one is stored. A source that fails
backs off (with its state and last error in its status) without stalling the others.
With ``state.backend: postgres``, several workers share the sources through row
leases (``central.state.PgState.claim``); with SQLite this node holds them all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from central.config import SourceEntry
from central.ingest import GAP, REJECTED, IngestFn, SourceStatus
from central.state import PgState, State
from gateway.consumer import Backoff, Health
from uplink.sync import NET_ERRORS, Item, Peer, Signer, unpack_frames

log = logging.getLogger(__name__)


class Puller:
    """Holds this worker's pull sources (``tasks``: one per source, by id) and runs them.

    ``resolve`` turns a configured path (a pinned certificate) into a file path."""

    def __init__(self, *, sources: dict[str, SourceEntry], state: State, signer: Signer,
                 status: dict[str, SourceStatus], ingest: IngestFn, worker: str, lease_s: float,
                 resolve: Callable[[Path], Path]):
        self.sources = sources
        self.state = state
        self.signer = signer
        self.status = status
        self.ingest = ingest
        self.worker = worker
        self.lease_s = lease_s
        self.resolve = resolve
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def leases(self) -> None:
        """Hold pull sources: all of them (SQLite) or a fair share by lease (PostgreSQL)."""
        pull_ids = sorted(s.id for s in self.sources.values() if s.mode == "pull")
        lease = self.lease_s
        while True:
            try:
                mine = set(await self.state.claim(self.worker, pull_ids, lease))
            except Exception as e:  # psycopg.Error and friends: keep what we have, retry
                log.error("lease renewal failed: %s", e)
                mine = set(self.tasks)
            for sid in list(self.tasks):
                if sid not in mine:
                    log.info("worker %s: released %s", self.worker, sid)
                    self.tasks.pop(sid).cancel()
            for sid in sorted(mine - set(self.tasks)):
                log.info("worker %s: pulling %s", self.worker, sid)
                self.tasks[sid] = asyncio.create_task(self._source(self.sources[sid]), name=f"pull[{sid}]")
            if not isinstance(self.state, PgState):
                await asyncio.Event().wait()
            await asyncio.sleep(lease / 3)

    async def stop(self) -> None:
        """Cancel the pull tasks and wait for them."""
        for t in self.tasks.values():
            t.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()

    async def _source(self, src: SourceEntry) -> None:
        assert src.pull is not None
        st = self.status[src.id]
        st.positions = await self.state.positions(src.id)
        ca = self.resolve(src.pull.tls_cert) if src.pull.tls_cert else None
        peer = Peer(src.pull.url, self.signer, recipient=src.id, ca=ca, verify=src.pull.verify,
                    timeout_s=src.pull.timeout + src.pull.wait)
        # one health for both lanes: a source that goes down is one ERROR, not two
        health = Health(f"source {src.id}: pull from {src.pull.url}", logger=log)
        try:
            async with asyncio.TaskGroup() as tg:
                for lane in ("alarms", "main"):
                    tg.create_task(self._lane(src, peer, lane, health), name=f"pull[{src.id}/{lane}]")
        finally:
            await peer.close()
            st.state = "idle"

    async def _lane(self, src: SourceEntry, peer: Peer, lane: str, health: Health) -> None:
        """Fetch and ingest one lane; the main lane prefetches the next range while it
        stores the current one (``after`` = received, ``ack`` = stored), so the
        gateway seals while central opens."""
        assert src.pull is not None
        pull = src.pull
        st = self.status[src.id]
        backoff = Backoff(0.2, pull.retry_max)

        def stored_pos() -> int:
            pos = st.positions
            return max(pos["alarms"], pos["main"]) if lane == "alarms" else pos["main"]

        async def fetch(after: int) -> tuple[list[Item], int]:
            params = {"lane": lane, "after": after, "ack": min(after, st.positions[lane]),
                      "max_bytes": pull.max_bytes, "wait": f"{pull.wait:g}"}
            r = await peer.request("GET", "/sync/v1/envelopes", params)
            items = unpack_frames(r.content)
            try:
                head = int(r.headers.get("x-safegw-head", "0"))
            except ValueError:
                head = 0
            return items, head

        pending: asyncio.Task[tuple[list[Item], int]] | None = None
        try:
            while True:
                try:
                    if pending is not None:
                        items, head = await pending
                        pending = None
                    else:
                        items, head = await fetch(stored_pos())
                except NET_ERRORS as e:
                    pending = None
                    health.failed(e)
                    st.state, st.last_error = health.state, health.last_error
                    await backoff.sleep()
                    continue
                if not health.ok:
                    health.succeeded()
                    st.state, st.last_error = health.state, health.last_error
                st.last_contact_ns = time.time_ns()
                st.head = max(st.head, head)
                if not items:
                    backoff.reset()
                    continue
                if lane == "main":
                    pending = asyncio.create_task(fetch(items[-1].seq), name=f"prefetch[{src.id}]")
                verdicts = await self.ingest(src, items)
                if REJECTED in verdicts or GAP in verdicts:
                    if pending is not None:
                        pending.cancel()
                        await asyncio.gather(pending, return_exceptions=True)
                        pending = None
                    await backoff.sleep()
                else:
                    backoff.reset()
        finally:
            if pending is not None:
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
