"""Modbus simulators → the real gateway daemon → central, over HTTPS through the link
emulator (latency, 1 Mbit/s, dropped connections, a cut link), in pull and push mode.

Central must end up with exactly the gateway's journal: every record once, in order,
the alarm the rules raised included. The cut lasts 1.5 s here ("minutes" in the field).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.config import loads
from gateway.core.record import SAMPLES
from tests.fixtures.central import CentralSide, central_config, central_pub, make_keys, stored
from tests.fixtures.helpers import async_wait_until
from tests.fixtures.linkemu import LinkEmulator

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def _gateway_cfg(sims: Any, state_dir: Path, uplink: str) -> Any:
    from tests.fixtures.sims import gateway_yaml

    text = gateway_yaml(sims, state_dir, poll="200ms")
    # an alarm that trips at once: GT-1 reads 12.5 %LEL
    text = text.replace("type: int16, scale: 0.1}", "type: int16, scale: 0.1, alarms: {h: 10}}")
    return loads(text + uplink)


def _journal_items(j: Any) -> list[tuple[int, Any]]:
    out = []
    for r in j.read_sync(0, 1_000_000):
        out.append((r.kind, r.batch() if r.kind == SAMPLES else r.event()))
    return out


def _same(a: list[tuple[int, Any]], b: list[tuple[int, Any]]) -> bool:
    """Same samples in the same order, same events in the same order. Events may sit
    earlier in central's journal than in the gateway's: the alarms lane overtakes. A
    channel table does not: central stores it at its place among the samples."""
    sa = [p for k, p in a if k == SAMPLES]
    sb = [p for k, p in b if k == SAMPLES]
    ea = [p for k, p in a if k != SAMPLES and p.get("type") != "channel_table"]
    eb = [p for k, p in b if k != SAMPLES and p.get("type") != "channel_table"]
    return (len(sa) == len(sb) and all(x.equals(y) for x, y in zip(sa, sb, strict=True)) and ea == eb
            and _tables_placed(a) == _tables_placed(b))


def _tables_placed(items: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """Each channel table with the number of sample records before it."""
    out, n = [], 0
    for k, p in items:
        if k == SAMPLES:
            n += 1
        elif p.get("type") == "channel_table":
            out.append((n, p))
    return out


def _records_upto(path: Path, seq: int) -> list[Any]:
    from gateway.store.journal import Journal

    j = Journal(path, sync="normal")
    try:
        return [r for r in j.read_sync(0, 1_000_000) if r.seq <= seq]
    finally:
        j.close()


@pytest.mark.parametrize("mode", ["pull", "push"])
async def test_plant_to_central_through_a_bad_link(tmp_path: Path, modbus_plant: Any, mode: str) -> None:
    pubs = tmp_path / "pub"
    pubs.mkdir()
    cpub = central_pub(tmp_path, "county", pubs)
    gw_dir = tmp_path / "gw-test"
    gpub = make_keys(gw_dir, "gw-test", pubs)
    c: CentralSide
    link: LinkEmulator
    if mode == "push":
        c = await CentralSide(central_config(tmp_path, "county",
                                             [{"id": "gw-test", "keys": str(gpub), "mode": "push"}])).start()
        link = LinkEmulator("127.0.0.1", c.node.port, latency=0.02, rate=125_000).start()
        up = (f"uplink: {{mode: push, central_url: 'https://127.0.0.1:{link.port}', ca: '{c.cert}', "
              f"central_keys: ['{cpub}'], retry_max: 300ms, timeout: 5s}}\n")
        gw = Gateway(_gateway_cfg(modbus_plant, gw_dir, up))
    else:
        up = f"uplink: {{mode: pull, listen: '127.0.0.1:0', central_keys: ['{cpub}']}}\n"
        gw = Gateway(_gateway_cfg(modbus_plant, gw_dir, up))
    run = asyncio.create_task(gw.run(drain_s=10.0))
    try:
        await async_wait_until(lambda: any(s.name == "uplink" for s in gw.services), 20,
                               what="the uplink service")
        svc = next(s for s in gw.services if s.name == "uplink")
        if mode == "pull":
            await async_wait_until(lambda: svc.listener.server.started, 10)  # type: ignore[attr-defined]
            link = LinkEmulator("127.0.0.1", svc.listener.port, latency=0.02, rate=125_000).start()  # type: ignore[attr-defined]
            src = {"id": "gw-test", "keys": str(gpub), "mode": "pull",
                   "pull": {"url": f"https://127.0.0.1:{link.port}", "tls_cert": str(gw_dir / "tls.crt"),
                            "wait": "1s", "timeout": "5s", "retry_max": "300ms"}}
            c = await CentralSide(central_config(tmp_path, "county", [src])).start()
        node = c.node
        await async_wait_until(lambda: node.origins.get("gw-test") and node.origins["gw-test"].main > 5, 20,
                               what="first data at central")
        # a hiccup, then the link back (a new connection through it), then the cut
        link.drop()
        n = link.connections
        await async_wait_until(lambda: link.connections > n, 10, what="a reconnection after the drop")
        link.cut()
        await asyncio.sleep(1.5)  # the outage itself ("minutes" in the field): the plant keeps producing
        link.restore()
        # the link is used again after the cut, then drops once more
        n = link.connections
        await async_wait_until(lambda: link.connections > n, 10, what="a reconnection after the cut")
        link.drop()
        snapshot = gw.journal.last_seq
        await async_wait_until(lambda: node.origins["gw-test"].main >= snapshot, 30,
                               what="central to catch up after the cut")
        gw.stop()
        await asyncio.wait_for(run, 30)
        held = node.origins["gw-test"].main
        want = [(r.kind, r.batch() if r.kind == SAMPLES else r.event())
                for r in _records_upto(gw.journal.path, held)]
        got = stored(node, "gw-test")
        assert _same(got, want), "central's copy differs from the gateway's journal"
        assert any(k != SAMPLES and p.get("type") == "alarm" for k, p in got), "the alarm did not travel"
        # the daemon journaled its channel table first, and central holds it there
        assert _tables_placed(got)[:1] == [(0, _tables_placed(want)[0][1])], "no channel table"
        assert node.status_doc()["sources"]["gw-test"]["rejected_total"] == 0
        assert link.drops >= 1
    finally:
        if not run.done():
            gw.stop()
            await asyncio.gather(run, return_exceptions=True)
        await c.stop()
        link.stop()
