"""Level by level: gateway → county → province, forwarding the original signed envelopes.

The province opens every envelope itself (it is one of the recipients) and checks the
plant's own signature: the county cannot alter or invent a plant's data.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.core.record import SAMPLES, Record
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
from uplink import envelope, keys
from uplink.sync import Item

pytestmark = pytest.mark.timeout(120)


def _expected(n: int) -> list[tuple[int, int]]:
    return sample_keys([(SAMPLES, batch(i)) for i in range(n)])


@pytest.mark.parametrize("up_mode", ["pull", "push"])
async def test_three_levels_signature_checked_at_the_top(tmp_path: Path, up_mode: str) -> None:
    pubs = tmp_path / "pub"
    pubs.mkdir()
    county_pub = central_pub(tmp_path, "county", pubs)
    prov_pub = central_pub(tmp_path, "province", pubs)
    gw = GatewaySide(tmp_path, "gw-1", pubs, [county_pub, prov_pub])
    await gw.start()
    gsrc = {"id": "gw-1", "keys": str(gw.pub), "mode": "pull",
            "pull": {"url": f"https://127.0.0.1:{gw.port}", "tls_cert": str(gw.cert), "wait": "1s"}}
    province: CentralSide
    if up_mode == "pull":
        county = await CentralSide(central_config(
            tmp_path, "county", [gsrc], upstream={"mode": "pull", "keys": [str(prov_pub)]})).start()
        province = await CentralSide(central_config(tmp_path, "province", [
            {"id": "county", "keys": str(county_pub), "relay": True, "mode": "pull",
             "pull": {"url": county.url, "tls_cert": str(county.cert), "wait": "1s"}}],
            trust=[str(gw.pub)])).start()
    else:
        province = await CentralSide(central_config(tmp_path, "province", [
            {"id": "county", "keys": str(county_pub), "relay": True, "mode": "push"}],
            trust=[str(gw.pub)])).start()
        county = await CentralSide(central_config(
            tmp_path, "county", [gsrc], upstream={"mode": "push", "keys": [str(prov_pub)],
                                                  "url": province.url, "ca": str(province.cert)})).start()
    try:
        await gw.journal.append_many([batch(i) for i in range(15)])
        await gw.journal.append_event(alarm(99))
        await gw.journal.append_many([batch(i) for i in range(15, 30)])
        last = gw.journal.last_seq
        await async_wait_until(lambda: province.node.origins.get("gw-1")
                               and province.node.origins["gw-1"].main >= last, 30,
                               what="the province to hold everything")
        for node in (county.node, province.node):
            got = stored(node, "gw-1")
            assert sample_keys(got) == _expected(30)
            assert [e["value"] for e in events_of(got)] == [alarm(99)["value"]]
        st = province.node.status_doc()
        assert st["sources"]["county"]["rejected_total"] == 0
        assert st["origins"]["gw-1"]["main_seq"] == last
        # the county's outbox was acknowledged by the province
        await async_wait_until(lambda: county.node.outbox.position("main") >= county.node.outbox.head(), 10)

        # a county cannot forge or alter a plant's envelope on the way up
        relay = province.node.sources["county"]
        gk = keys.load(tmp_path / "gw-1")
        ck = keys.load(tmp_path / "county")
        recipients = [*keys.load_public(county_pub), *keys.load_public(prov_pub)]
        b = batch(500)
        r = [Record(last + 1, SAMPLES, b.ts_min, b.ts_max, len(b), b.to_bytes())]
        forged = envelope.seal(r, sender=keys.NodeKeys(gk.id, ck.x25519, ck.ed25519), recipients=recipients)
        assert await province.node.ingest(relay, [Item("main", 10**6, forged)]) == ["rejected"]
        genuine = bytearray(envelope.seal(r, sender=gk, recipients=recipients))
        genuine[len(genuine) // 2] ^= 0x40
        assert await province.node.ingest(relay, [Item("main", 10**6, bytes(genuine))]) == ["rejected"]
        assert province.node.status["county"].rejected == {"UnknownSender": 1, "BadSignature": 1}
    finally:
        await province.stop()
        await county.stop()
        await gw.stop()
