"""Gateway → central through a bad link (tests/fixtures/linkemu.py): latency, 1 Mbit/s, dropped
connections and a cut link. Everything must arrive exactly once, in order, alarms ahead
of the backlog.

Durations are scaled down for the suite: the link is cut for 2 s (not minutes) and
the bandwidth cap is set low (16 kB/s) so a backlog of 60,000 samples takes several
seconds to drain, long enough for alarms raised meanwhile to overtake it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.core.record import SAMPLES
from tests.fixtures.central import (
    CentralSide,
    GatewaySide,
    alarm,
    batch,
    central_config,
    central_pub,
    make_keys,
)
from tests.fixtures.helpers import async_wait_until
from tests.fixtures.linkemu import LinkEmulator

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

BACKLOG = 300  # batches of 200 samples
PER = 200
CAP = 16_000  # bytes/s on the gateway's uplink


def _expected() -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for i in range(BACKLOG + 20):
        b = batch(i, PER)
        out.extend(zip(b.ts.tolist(), b.channel.tolist(), strict=True))
    return out


@pytest.mark.parametrize("mode", ["pull", "push"])
async def test_bad_link_exactly_once_alarms_first(tmp_path: Path, mode: str) -> None:
    pubs = tmp_path / "pub"
    pubs.mkdir()
    cpub = central_pub(tmp_path, "county", pubs)
    link: LinkEmulator
    order: list[tuple[str, int, int]] = []  # (what, seq-ish, main cursor when stored)

    if mode == "pull":
        gw = GatewaySide(tmp_path, "gw-1", pubs, [cpub], bandwidth=CAP)
        await gw.start()
        link = LinkEmulator("127.0.0.1", gw.port, latency=0.03, rate=125_000).start()
        src = {"id": "gw-1", "keys": str(gw.pub), "mode": "pull",
               "pull": {"url": f"https://127.0.0.1:{link.port}", "tls_cert": str(gw.cert), "wait": "1s",
                        "timeout": "5s", "retry_max": "500ms"}}
        cfg = central_config(tmp_path, "county", [src])
    else:
        gpub = make_keys(tmp_path / "gw-1", "gw-1", pubs)
        cfg = central_config(tmp_path, "county", [{"id": "gw-1", "keys": str(gpub), "mode": "push"}])
    # the outage: a backlog is waiting before central (or the link) is there
    gw_journal_items: list[Any] = [batch(i, PER) for i in range(BACKLOG)]
    c = CentralSide(cfg)
    if mode == "push":
        await c.start()
        link = LinkEmulator("127.0.0.1", c.node.port, latency=0.03, rate=125_000).start()
        gw = GatewaySide(tmp_path, "gw-1", pubs, [cpub], mode="push", central_url=f"https://127.0.0.1:{link.port}",
                         central_ca=c.cert, bandwidth=CAP, timeout="5s", retry_max="500ms")
    await gw.journal.append_many(gw_journal_items)
    backlog_last = gw.journal.last_seq

    def on_stored(origin: str, recs: list[Any]) -> None:
        cur = c.node.origins[origin].main
        for r in recs:
            order.append(("samples" if r.kind == SAMPLES else "event", r.seq, cur))

    c.node.on_stored.append(on_stored)
    try:
        if mode == "pull":
            await c.start()
        else:
            await gw.start()
        node = c.node
        await async_wait_until(lambda: node.origins.get("gw-1") and node.origins["gw-1"].main > 0, 20,
                               what="the drain to begin")
        stored_alarms: dict[int, int] = {}  # seq -> main cursor when it was stored

        def alarm_seen(origin: str, recs: list[Any]) -> None:
            for r in recs:
                if r.kind != SAMPLES:
                    stored_alarms[r.seq] = node.origins[origin].main

        node.on_stored.append(alarm_seen)
        # an alarm raised while the backlog drains overtakes it
        a1 = await gw.journal.append_event(alarm(1000))
        await async_wait_until(lambda: a1 in stored_alarms, 10, what="the alarm to overtake the backlog")
        assert stored_alarms[a1] < backlog_last, "the alarm waited for the backlog"
        # the link hiccups, then goes down; alarms raised meanwhile go first once it is back
        link.drop()
        n = link.connections
        await async_wait_until(lambda: link.connections > n, 10, what="a reconnection after the hiccup")
        link.drop()
        link.cut()
        a2 = await gw.journal.append_event(alarm(1001))
        a3 = await gw.journal.append_event(alarm(1002))
        await asyncio.sleep(2.0)  # "for minutes", scaled to seconds
        link.restore()
        await async_wait_until(lambda: a3 in stored_alarms, 20, what="alarms after the cut")
        for a in (a2, a3):
            assert stored_alarms[a] < a, f"alarm {a} came through the main lane, behind the backlog"
        assert node.origins["gw-1"].main < backlog_last, "backlog already drained: test too weak"
        alarm_seqs = [a1, a2, a3]
        await gw.journal.append_many([batch(i, PER) for i in range(BACKLOG, BACKLOG + 20)])
        await async_wait_until(lambda: node.origins["gw-1"].main >= gw.journal.last_seq, 90,
                               what="central to catch up after the outage")
        from tests.fixtures.central import events_of, sample_keys, stored

        got = stored(node, "gw-1")
        assert sample_keys(got) == _expected(), "samples lost, duplicated or out of order"
        ev = events_of(got)
        assert [e["value"] for e in ev] == [alarm(1000 + k)["value"] for k in range(3)], \
            "alarms not exactly once"
        for s in alarm_seqs:
            assert [o[0] for o in order if o[1] == s] == ["event"]
        assert link.drops >= 1
        st = node.status_doc()["sources"]["gw-1"]
        assert st["rejected_total"] == 0
        # the cap held (with slack for TLS/HTTP overhead and the burst)
        stats = gw.svc.stats()
        assert stats["link"]["bytes_out_total"] > 0
        print("uplink stats:", stats)
    finally:
        await c.stop()
        await gw.stop()
        link.stop()


async def test_monthly_budget_holds_samples_not_alarms(tmp_path: Path) -> None:
    pubs = tmp_path / "pub"
    pubs.mkdir()
    cpub = central_pub(tmp_path, "county", pubs)
    gpub = make_keys(tmp_path / "gw-1", "gw-1", pubs)
    c = await CentralSide(central_config(tmp_path, "county",
                                         [{"id": "gw-1", "keys": str(gpub), "mode": "push"}])).start()
    gw = GatewaySide(tmp_path, "gw-1", pubs, [cpub], mode="push", central_url=c.url, central_ca=c.cert,
                     monthly_budget="3KB", max_bytes="2KB", max_records=1)
    try:
        await gw.journal.append_many([batch(i, PER) for i in range(10)])
        await gw.start()
        node = c.node
        await async_wait_until(lambda: gw.svc.link.budget_blocked, 10, what="the budget to run out")
        held = node.origins["gw-1"].main
        assert 0 < held < 10
        a = await gw.journal.append_event(alarm(7))
        await async_wait_until(lambda: node.origins["gw-1"].alarms >= a, 10,
                               what="the alarm despite the budget")
        # the pusher had its chance at the samples: with central's answer to the alarm in
        # hand it went round again (main lane: over budget) and is waiting for new records
        push = gw.svc.push
        assert push is not None
        await async_wait_until(lambda: push.pos["alarms"] >= a and gw.journal._listeners, 10,
                               what="the pusher to go idle after the alarm")
        assert node.origins["gw-1"].main == held, "samples went over budget"
        st = gw.svc.stats()["link"]
        assert st["budget_blocked"] and st["month_bytes"] >= 3000
    finally:
        await gw.stop()
        await c.stop()
