"""A real outage of minutes on the uplink: the link blackholes (packets vanish, nothing
resets), as when a 4G cell is lost or a VPN tunnel dies silently. Open requests hang
until the uplink's own timeouts give up; new connections hear nothing.

Pull and push run side by side (two gateways, one central each) through one two-minute
blackhole. Meanwhile both gateways keep journaling samples and raise an alarm. Nothing
is stored while the link is dead; when it comes back, every record arrives exactly
once and in order. (Alarms overtaking a backlog: tests/central/test_central_faults.py.)

This is the one test that takes minutes of wall time; the other fault tests scale
their cuts to seconds (tests/central/test_central_faults.py).
"""

from __future__ import annotations

import asyncio
import time
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
    events_of,
    make_keys,
    sample_keys,
    stored,
)
from tests.fixtures.helpers import async_wait_until
from tests.fixtures.linkemu import LinkEmulator

OUTAGE_S = 120.0
PER = 100
pytestmark = [pytest.mark.timeout(OUTAGE_S + 180), pytest.mark.slow]


async def _scenario(root: Path, mode: str, outage: asyncio.Event, back: asyncio.Event,
                    during: asyncio.Event) -> dict[str, Any]:
    pubs = root / "pub"
    pubs.mkdir(parents=True)
    cpub = central_pub(root, "county", pubs)
    timeouts = {"timeout": "5s", "retry_max": "2s"}
    if mode == "pull":
        gw = GatewaySide(root, "gw-1", pubs, [cpub])
        await gw.start()
        link = LinkEmulator("127.0.0.1", gw.port, latency=0.02).start()
        src = {"id": "gw-1", "keys": str(gw.pub), "mode": "pull",
               "pull": {"url": f"https://127.0.0.1:{link.port}", "tls_cert": str(gw.cert), "wait": "1s",
                        **timeouts}}
        c = CentralSide(central_config(root, "county", [src]))
        await c.start()
    else:
        gpub = make_keys(root / "gw-1", "gw-1", pubs)
        c = CentralSide(central_config(root, "county", [{"id": "gw-1", "keys": str(gpub), "mode": "push"}]))
        await c.start()
        link = LinkEmulator("127.0.0.1", c.node.port, latency=0.02).start()
        gw = GatewaySide(root, "gw-1", pubs, [cpub], mode="push", central_url=f"https://127.0.0.1:{link.port}",
                         central_ca=c.cert, **timeouts)
        await gw.start()
    node = c.node
    order: list[tuple[int, int]] = []  # (kind, seq) in the order central stored them
    node.on_stored.append(lambda _o, recs: order.extend((r.kind, r.seq) for r in recs))
    n = 0
    try:
        # before: the link works
        for _ in range(5):
            await gw.journal.append_batch(batch(n, PER))
            n += 1
        await async_wait_until(lambda: node.origins.get("gw-1") and node.origins["gw-1"].main
                               >= gw.journal.last_seq, 30, what=f"{mode}: the first records")
        if mode == "push":  # and the gateway heard so (central stores before it answers)
            await async_wait_until(lambda: gw.push.pos["main"] >= gw.journal.last_seq, 30,
                                   what="push: central's cursor before the outage")
        await outage.wait()
        link.blackhole()
        t_cut = time.monotonic()
        stored_at_cut = len(order)
        sealed_at_cut = gw.svc.source.sealed_envelopes
        # during: the plant goes on; one batch every 2 s, and an alarm half way
        alarm_seq = None
        while time.monotonic() - t_cut < OUTAGE_S:
            await gw.journal.append_batch(batch(n, PER))
            n += 1
            if alarm_seq is None and time.monotonic() - t_cut > OUTAGE_S / 2:
                alarm_seq = await gw.journal.append_event(alarm(7))
            await asyncio.sleep(2.0)
        assert alarm_seq is not None
        during.set()
        await back.wait()
        stalled = len(order) - stored_at_cut
        sealed_in_outage = gw.svc.source.sealed_envelopes - sealed_at_cut
        failures_in_outage = gw.push.stats.failures if mode == "push" else 0
        link.restore()
        # after: everything arrives once, in order
        await async_wait_until(lambda: node.origins["gw-1"].main >= gw.journal.last_seq, 90,
                               what=f"{mode}: catching up after the outage")
        t_caught_up = time.monotonic() - t_cut - OUTAGE_S
        got = stored(node, "gw-1")
        want: list[tuple[int, int]] = []
        for i in range(n):
            b = batch(i, PER)
            want.extend(zip(b.ts.tolist(), b.channel.tolist(), strict=True))
        assert sample_keys(got) == want, f"{mode}: samples lost, duplicated or out of order"
        assert [e["value"] for e in events_of(got)] == [alarm(7)["value"]], f"{mode}: alarm not exactly once"
        assert [s for k, s in order if k != SAMPLES] == [alarm_seq]
        st = node.status_doc()["sources"]["gw-1"]
        assert st["rejected_total"] == 0
        if mode == "push":
            # retries during the outage resend what was sealed, they do not seal it again:
            # one main envelope, then the alarm's (the alarms lane goes first), whatever
            # the number of attempts
            assert failures_in_outage >= 10, failures_in_outage
            assert sealed_in_outage <= 2, (sealed_in_outage, failures_in_outage)
            # central stores before its answer is back at the gateway: wait for the answer
            await async_wait_until(lambda: gw.push.pos["main"] >= gw.journal.last_seq, 30,
                                   what="push: the gateway hears central's cursor")
            sealed, sent = gw.svc.source.sealed_envelopes, gw.push.stats.sent_envelopes
            # what was sealed and not sent: the main envelope the alarm overtook
            assert sealed - sent <= 1, (sealed, sent)
        return {"mode": mode, "stored_during_outage": stalled, "catch_up_s": round(t_caught_up, 1),
                "samples": len(want), "gateway": gw.svc.stats()}
    finally:
        await c.stop()
        await gw.stop()
        link.stop()


async def test_two_minute_blackhole_pull_and_push(tmp_path: Path) -> None:
    outage, back = asyncio.Event(), asyncio.Event()
    during = {m: asyncio.Event() for m in ("pull", "push")}
    runs = [asyncio.create_task(_scenario(tmp_path / m, m, outage, back, during[m]))
            for m in ("pull", "push")]

    async def conduct() -> None:
        outage.set()
        await asyncio.gather(*(e.wait() for e in during.values()))
        back.set()

    done = await asyncio.gather(conduct(), *runs)
    for res in done[1:]:
        assert res["stored_during_outage"] == 0, f"{res['mode']}: records got through a dead link"
        print(res)
