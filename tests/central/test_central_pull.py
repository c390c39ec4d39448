"""Gateway → central over real HTTPS on loopback: pull and push, exactly once, in order."""

from __future__ import annotations

from pathlib import Path

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
    sample_keys,
    stored,
)
from tests.fixtures.helpers import async_wait_until

pytestmark = pytest.mark.timeout(120)


def expected_keys(n_batches: int, per: int = 100) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for i in range(n_batches):
        b = batch(i, per)
        out.extend(zip(b.ts.tolist(), b.channel.tolist(), strict=True))
    return out


async def _setup(tmp_path: Path, mode: str) -> tuple[GatewaySide, CentralSide]:
    pubs = tmp_path / "pub"
    pubs.mkdir()
    cpub = central_pub(tmp_path, "county", pubs)
    if mode == "pull":
        gw = GatewaySide(tmp_path, "gw-1", pubs, [cpub])
        await gw.start()
        src = {"id": "gw-1", "keys": str(gw.pub), "mode": "pull",
               "pull": {"url": f"https://127.0.0.1:{gw.port}", "tls_cert": str(gw.cert), "wait": "2s"}}
        c = await CentralSide(central_config(tmp_path, "county", [src])).start()
    else:
        # central first (the gateway must know its address and certificate)
        from tests.fixtures.central import make_keys

        gpub = make_keys(tmp_path / "gw-1", "gw-1", pubs)
        src = {"id": "gw-1", "keys": str(gpub), "mode": "push"}
        c = await CentralSide(central_config(tmp_path, "county", [src])).start()
        gw = GatewaySide(tmp_path, "gw-1", pubs, [cpub], mode="push", central_url=c.url, central_ca=c.cert)
        await gw.start()
    return gw, c


@pytest.mark.parametrize("mode", ["pull", "push"])
async def test_everything_arrives_once_in_order(tmp_path: Path, mode: str) -> None:
    gw, c = await _setup(tmp_path, mode)
    try:
        items: list[object] = []
        for i in range(40):
            items.append(batch(i))
            if i % 10 == 5:
                items.append(alarm(i))
        await gw.journal.append_many(items)  # type: ignore[arg-type]
        await async_wait_until(lambda: c.node.origins.get("gw-1") and c.node.origins["gw-1"].main
                               >= gw.journal.last_seq, 20, what="central to catch up")
        got = stored(c.node, "gw-1")
        assert sample_keys(got) == expected_keys(40)
        ev = events_of(got)
        assert [e["value"] for e in ev] == [alarm(i)["value"] for i in range(40) if i % 10 == 5]
        # more later: the long poll / push loop picks it up without a restart
        await gw.journal.append_many([batch(40), alarm(41)])
        await async_wait_until(lambda: c.node.origins["gw-1"].main >= gw.journal.last_seq, 20)
        got = stored(c.node, "gw-1")
        assert sample_keys(got) == expected_keys(41)
        assert len(events_of(got)) == 5
        # the gateway's cursor moved only to what central stored
        await async_wait_until(lambda: gw.journal.cursor("uplink") == gw.journal.last_seq, 10,
                               what="gateway cursor to follow central's ack")
        st = c.node.status_doc()["sources"]["gw-1"]
        assert st["rejected_total"] == 0
        assert st["records"] == gw.journal.last_seq
        assert sum(1 for k, _ in got if k == SAMPLES) == 41
    finally:
        await c.stop()
        await gw.stop()


async def test_central_restart_resumes_from_its_cursor(tmp_path: Path) -> None:
    gw, c = await _setup(tmp_path, "pull")
    try:
        await gw.journal.append_many([batch(i) for i in range(10)])
        await async_wait_until(lambda: c.node.origins.get("gw-1") and c.node.origins["gw-1"].main == 10, 20)
        await c.stop()
        await gw.journal.append_many([batch(i) for i in range(10, 20)])
        c = await CentralSide(c.cfg).start()
        await async_wait_until(lambda: c.node.origins["gw-1"].main == 20, 20)
        assert sample_keys(stored(c.node, "gw-1")) == expected_keys(20)
    finally:
        await c.stop()
        await gw.stop()


async def test_central_stores_into_influxdb(tmp_path: Path, influxd) -> None:  # type: ignore[no-untyped-def]
    from tests.fixtures.influxd import unique_db

    db = unique_db("central")
    pubs = tmp_path / "pub"
    pubs.mkdir()
    cpub = central_pub(tmp_path, "county", pubs)
    gw = GatewaySide(tmp_path, "gw-1", pubs, [cpub])
    await gw.start()
    src = {"id": "gw-1", "keys": str(gw.pub), "mode": "pull",
           "pull": {"url": f"https://127.0.0.1:{gw.port}", "tls_cert": str(gw.cert), "wait": "1s"}}
    c = await CentralSide(central_config(tmp_path, "county", [src], influxdb={
        "url": influxd.url, "database": db, "measurement": "single", "flush_every": "100ms"})).start()
    try:
        await gw.journal.append_many([batch(i) for i in range(5)])
        await gw.journal.append_event(alarm(3))

        def count() -> int:
            try:
                rows = influxd.rows('SELECT count(*) FROM /.*/ WHERE "gateway"=\'gw-1\'', db)
            except RuntimeError:
                return 0
            return sum(int(v) for r in rows for k, v in r.items() if k.startswith("count_") and v)

        await async_wait_until(lambda: count() >= 501, 30, interval=0.2, what="points in InfluxDB")
        rows = influxd.rows('SELECT * FROM /.*/ WHERE "gateway"=\'gw-1\'', db)
        samples = [r for r in rows if r["_measurement"] not in ("alarms", "events")]
        assert len(samples) == 500, len(samples)
        assert any(r["_measurement"] == "alarms" for r in rows), "the alarm is not in InfluxDB"
        # the points are visible a moment before the writer has taken the 204 and moved on
        await async_wait_until(lambda: c.node.status_doc()["influxdb"]["gw-1"]["lag"] == 0, 10,
                               what="central's InfluxDB writer to catch up")
    finally:
        await c.stop()
        await gw.stop()
