"""The national suite end to end: a gateway sealing with ``suite: gm`` (SM2 key transport
and signature, SM3, SM4-GCM), pulled over real HTTPS by a county that pushes upward to a
province; each level checks the plant's SM2 signature itself. A node configured for the
other suite, or holding another key, refuses clearly and stores nothing; once put right,
everything the gateway kept arrives.
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


def _pull(gw: GatewaySide, **extra: str) -> dict[str, object]:
    return {"id": gw.id, "keys": str(gw.pub), "mode": "pull",
            "pull": {"url": f"https://127.0.0.1:{gw.port}", "tls_cert": str(gw.cert), "wait": "1s"}, **extra}


async def test_gm_suite_three_levels_sm2_checked_at_each(tmp_path: Path) -> None:
    pubs = tmp_path / "pub"
    pubs.mkdir()
    county_pub = central_pub(tmp_path, "county", pubs)
    prov_pub = central_pub(tmp_path, "province", pubs)
    gw = await GatewaySide(tmp_path, "gw-1", pubs, [county_pub, prov_pub], suite="gm").start()
    province = await CentralSide(central_config(tmp_path, "province", [
        {"id": "county", "keys": str(county_pub), "relay": True, "mode": "push", "suite": "gm"}],
        trust=[str(gw.pub)])).start()
    county = await CentralSide(central_config(
        tmp_path, "county", [_pull(gw, suite="gm")],
        upstream={"mode": "push", "keys": [str(prov_pub)], "url": province.url,
                  "ca": str(province.cert)})).start()
    try:
        await gw.journal.append_many([batch(i) for i in range(10)])
        await gw.journal.append_event(alarm(7))
        await gw.journal.append_many([batch(i) for i in range(10, 20)])
        last = gw.journal.last_seq
        await async_wait_until(lambda: province.node.origins.get("gw-1")
                               and province.node.origins["gw-1"].main >= last, 30,
                               what="the province to hold everything")
        want = sample_keys([(SAMPLES, batch(i)) for i in range(20)])
        for node in (county.node, province.node):
            got = stored(node, "gw-1")
            assert sample_keys(got) == want
            assert [e["value"] for e in events_of(got)] == [alarm(7)["value"]]
            assert not any(s.rejected for s in node.status.values())
        assert gw.svc.stats()["suite"] == "gm"
        assert province.node.status_doc()["sources"]["county"]["suite"] == "gm"

        # what travelled was gm-suite envelopes, forwarded unchanged: peek at the county's outbox
        frames = await county.node.state.outbox_read("main", 0, 2**20)
        assert frames and all(envelope.peek_header(f.data).suite == "gm" for f in frames)

        # the county cannot pass off its own SM2 signature as the plant's
        gk = keys.load(tmp_path / "gw-1")
        ck = keys.load(tmp_path / "county")
        recipients = [*keys.load_public(county_pub), *keys.load_public(prov_pub)]
        b = batch(500)
        r = [Record(last + 1, SAMPLES, b.ts_min, b.ts_max, len(b), b.to_bytes())]
        genuine = envelope.seal(r, sender=gk, recipients=recipients, suite="gm")
        assert ck.sm2 is not None
        forged = genuine[:-64] + ck.sm2.sign(genuine[:-64])
        relay = province.node.sources["county"]
        assert await province.node.ingest(relay, [Item("main", 10**6, forged)]) == ["rejected"]
        assert province.node.status["county"].rejected == {"BadSignature": 1}
        assert "SM2 signature of gw-1" in (province.node.status["county"].last_error or "")
    finally:
        await county.stop()
        await province.stop()
        await gw.stop()


async def test_wrong_suite_and_wrong_key_are_refused_clearly(tmp_path: Path) -> None:
    pubs = tmp_path / "pub"
    pubs.mkdir()
    county_pub = central_pub(tmp_path, "county", pubs)
    gw = await GatewaySide(tmp_path, "gw-1", pubs, [county_pub], suite="gm").start()
    # a second gateway's bundle filed under gw-1's name: the key central holds is not gw-1's
    other = keys.init(tmp_path / "other", "gw-1")
    stale = pubs / "stale.pub.yaml"
    keys.save_public(stale, other)
    county = await CentralSide(central_config(tmp_path, "county", [
        _pull(gw)])).start()  # the source entry left at the default suite
    try:
        await gw.journal.append_many([batch(i) for i in range(3)])
        st = county.node.status["gw-1"]
        await async_wait_until(lambda: st.rejected.get("WrongSuite", 0) >= 1, 30, what="a WrongSuite refusal")
        assert "uses suite gm; this node accepts x25519-ed25519" in (st.last_error or "")
        assert stored(county.node, "gw-1") == []
    finally:
        await county.stop()
    county = await CentralSide(central_config(tmp_path, "county", [  # same node, restarted
        {**_pull(gw, suite="gm"), "keys": str(stale)}])).start()
    try:
        st = county.node.status["gw-1"]
        await async_wait_until(lambda: st.rejected.get("UnknownSender", 0) >= 1, 30,
                               what="an UnknownSender refusal")
        assert "is not trusted here" in (st.last_error or "")
        assert stored(county.node, "gw-1") == []
    finally:
        await county.stop()
    # configuration put right (suite any, while other plants migrate; the right bundle):
    # what was refused twice was kept by the gateway's journal and arrives now, in order
    county = await CentralSide(central_config(tmp_path, "county", [_pull(gw, suite="any")])).start()
    try:
        last = gw.journal.last_seq
        await async_wait_until(lambda: county.node.origins.get("gw-1")
                               and county.node.origins["gw-1"].main >= last, 30, what="the backlog")
        want = sample_keys([(SAMPLES, batch(i)) for i in range(3)])
        assert sample_keys(stored(county.node, "gw-1")) == want
    finally:
        await county.stop()
        await gw.stop()


def test_gateway_refuses_to_start_gm_without_sm2_keys(tmp_path: Path) -> None:
    pubs = tmp_path / "pub"
    pubs.mkdir()
    old = keys.NodeKeys.generate("county", sm2=False)  # a central node not rotated since
    old_pub = pubs / "county.pub.yaml"
    keys.save_public(old_pub, old)
    with pytest.raises(ValueError, match=r"central key bundle\(s\) without an SM2 key: county"):
        GatewaySide(tmp_path, "gw-1", pubs, [old_pub], suite="gm")
    # central rotated: its bundle lists the new set (with SM2) and the old one; gm seals to the new
    new = keys.NodeKeys.generate("county")
    keys.save_public(old_pub, [new, old])
    gw = GatewaySide(tmp_path, "gw-1", pubs, [old_pub], suite="gm")
    try:
        assert [r.kid for r in gw.svc.recipients] == [new.kid]
    finally:
        gw.journal.close()
