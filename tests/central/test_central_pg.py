"""Several central workers share gateways through PostgreSQL row leases (real server).

Two workers, four gateways: each worker pulls a fair share; when one worker stops, the
other takes its gateways over once the leases expire, and every sample is stored
exactly once across the two workers' journals (each worker keeps its own journal; the
shared truth is the cursor in PostgreSQL).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from central.state import Commit, PgState
from gateway.core.record import SAMPLES
from tests.fixtures.central import (
    CentralSide,
    GatewaySide,
    batch,
    central_config,
    central_pub,
    sample_keys,
    stored,
)
from tests.fixtures.helpers import async_wait_until

pytestmark = pytest.mark.timeout(120)


async def test_leases_split_and_fail_over(tmp_path: Path, pg_dsn: str) -> None:
    pubs = tmp_path / "pub"
    pubs.mkdir()
    # both workers are the same logical node "county": same keys
    cpub = central_pub(tmp_path, "county-a", pubs)
    (tmp_path / "county-b").mkdir()
    import shutil

    shutil.copytree(tmp_path / "county-a" / "keys", tmp_path / "county-b" / "keys")
    gws = []
    for k in range(4):
        g = GatewaySide(tmp_path, f"gw-{k}", pubs, [cpub])
        await g.start()
        gws.append(g)
    sources = [{"id": g.id, "keys": str(g.pub), "mode": "pull",
                "pull": {"url": f"https://127.0.0.1:{g.port}", "tls_cert": str(g.cert), "wait": "500ms"}}
               for g in gws]

    def cfg(worker: str):  # type: ignore[no-untyped-def]
        c = central_config(tmp_path, f"county-{worker}", sources,
                           state={"backend": "postgres", "dsn": pg_dsn, "worker": worker, "lease": "2s"})
        return c

    a = await CentralSide(cfg("a")).start()
    b = await CentralSide(cfg("b")).start()
    try:
        for g in gws:
            await g.journal.append_many([batch(i) for i in range(10)])
        await async_wait_until(lambda: len(a.node.puller.tasks) == 2 and len(b.node.puller.tasks) == 2, 20,
                               what="the workers to split the gateways 2 + 2")
        assert set(a.node.puller.tasks).isdisjoint(b.node.puller.tasks)

        def held(n: int) -> bool:
            return all(sum(len(sample_keys(stored(w.node, g.id))) for w in (a, b)) == n * 100 for g in gws)

        await async_wait_until(lambda: held(10), 20, what="all gateways pulled")
        # worker a goes away without releasing (as if killed): b takes over after the lease
        a_had = set(a.node.puller.tasks)
        for t in a.node.puller.tasks.values():
            t.cancel()
        a.node.puller.tasks.clear()
        a.task.cancel()  # type: ignore[union-attr]
        await asyncio.gather(a.task, return_exceptions=True)  # type: ignore[arg-type]
        for g in gws:
            await g.journal.append_many([batch(i) for i in range(10, 20)])
        await async_wait_until(lambda: len(b.node.puller.tasks) == 4, 20, what="b to take over a's gateways")
        await async_wait_until(lambda: held(20), 30, what="everything stored after fail-over")
        for g in gws:
            mine = sample_keys(stored(a.node, g.id)) + sample_keys(stored(b.node, g.id))
            assert sorted(mine) == sorted(sample_keys([(SAMPLES, batch(i)) for i in range(20)])), \
                f"{g.id}: lost or duplicated across workers"
        assert a_had <= set(b.node.puller.tasks)
    finally:
        await b.stop()
        await a.node.close()
        for g in gws:
            await g.stop()


async def test_cursor_compare_and_set(pg_dsn: str) -> None:
    """Two workers racing on one envelope: the second commit is refused."""
    s1, s2 = PgState(pg_dsn), PgState(pg_dsn)
    await s1.open()
    await s2.open()
    try:
        c = Commit("gw", "main", 5, "gw", 0, 5, 0, [])
        assert await s1.commit(c) is True
        assert await s2.commit(c) is False
        assert (await s2.origin("gw"))[0] == 5
        got = await s1.claim("w1", ["x", "y", "z"], 5.0)
        got2 = await s2.claim("w2", ["x", "y", "z"], 5.0)
        assert set(got).isdisjoint(got2) and len(got) + len(got2) == 3
    finally:
        await s1.close()
        await s2.close()
