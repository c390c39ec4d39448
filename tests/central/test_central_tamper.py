"""Central refuses what it must: tampered envelopes (every byte flipped in turn), wrong keys,
another gateway's data, replayed or unsigned requests; duplicates are ignored, holes refetched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.core.record import SAMPLES, Record
from tests.fixtures.central import (
    CentralSide,
    alarm,
    batch,
    central_config,
    central_pub,
    make_keys,
    sample_keys,
    stored,
)
from uplink import envelope, keys
from uplink.auth import H_SIG
from uplink.sync import Item, Peer, PeerError, Signer, pack_frames

pytestmark = pytest.mark.timeout(120)


def recs(first: int, n: int, per: int = 20) -> list[Record]:
    out = []
    for k in range(n):
        b = batch(first + k, per)
        out.append(Record(first + k, SAMPLES, b.ts_min, b.ts_max, len(b), b.to_bytes()))
    return out


@pytest.fixture
async def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    pubs = tmp_path / "pub"
    pubs.mkdir()
    cpub = central_pub(tmp_path, "county", pubs)
    gpub = make_keys(tmp_path / "gw-1", "gw-1", pubs)
    opub = make_keys(tmp_path / "gw-2", "gw-2", pubs)
    cfg = central_config(tmp_path, "county", [{"id": "gw-1", "keys": str(gpub), "mode": "push"},
                                              {"id": "gw-2", "keys": str(opub), "mode": "push"}])
    c = await CentralSide(cfg).start()
    gk = keys.load(tmp_path / "gw-1")
    central_keys = keys.load_public(cpub)
    yield c, gk, central_keys, tmp_path
    await c.stop()


async def test_every_flipped_byte_is_rejected(setup) -> None:  # type: ignore[no-untyped-def]
    c, gk, ck, _ = setup
    node = c.node
    src = node.sources["gw-1"]
    good = envelope.seal(recs(1, 2, 4), sender=gk, recipients=ck)
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0x01
        v = await node.ingest(src, [Item("main", 2, bytes(bad))])
        assert v == ["rejected"], f"byte {i} flipped was accepted"
    st = node.status["gw-1"]
    assert sum(st.rejected.values()) == len(good)
    assert stored(node, "gw-1") == []
    assert await node.ingest(src, [Item("main", 2, good)]) == ["accepted"]
    # a replay of the same envelope, and an overlapping re-send, are ignored
    assert await node.ingest(src, [Item("main", 2, good)]) == ["duplicate"]
    again = envelope.seal(recs(1, 2, 4), sender=gk, recipients=ck)
    assert await node.ingest(src, [Item("main", 2, again)]) == ["duplicate"]
    assert len(sample_keys(stored(node, "gw-1"))) == 8
    assert st.duplicates == 2


async def test_wrong_keys_and_wrong_origin(setup) -> None:  # type: ignore[no-untyped-def]
    c, gk, ck, tmp = setup
    node = c.node
    # a stranger who calls itself gw-1: unknown key
    fake = keys.NodeKeys.generate("gw-1")
    v = await node.ingest(node.sources["gw-1"], [Item("main", 1, envelope.seal(recs(1, 1), sender=fake,
                                                                                 recipients=ck))])
    assert v == ["rejected"]
    assert node.status["gw-1"].rejected == {"UnknownSender": 1}
    # gw-2's genuine envelope delivered by gw-1's connection: not gw-1's to send
    g2 = keys.load(tmp / "gw-2")
    v = await node.ingest(node.sources["gw-1"], [Item("main", 1, envelope.seal(recs(1, 1), sender=g2,
                                                                                 recipients=ck))])
    assert v == ["rejected"]
    assert node.status["gw-1"].rejected.get("wrong_origin") == 1
    # addressed to someone else: central cannot read it
    other = keys.NodeKeys.generate("province")
    v = await node.ingest(node.sources["gw-1"], [Item("main", 1, envelope.seal(
        recs(1, 1), sender=gk, recipients=[other.public]))])
    assert v == ["rejected"]
    assert node.status["gw-1"].rejected.get("NotForMe") == 1


async def test_hole_is_refused_then_filled(setup) -> None:  # type: ignore[no-untyped-def]
    c, gk, ck, _ = setup
    node = c.node
    src = node.sources["gw-1"]
    e1 = envelope.seal(recs(1, 3), sender=gk, recipients=ck)
    e3 = envelope.seal(recs(7, 3), sender=gk, recipients=ck)
    e2 = envelope.seal(recs(4, 3), sender=gk, recipients=ck)
    assert await node.ingest(src, [Item("main", 3, e1), Item("main", 9, e3)]) == ["accepted", "gap"]
    assert node.origins["gw-1"].main == 3
    assert node.status["gw-1"].positions["main"] == 3
    assert await node.ingest(src, [Item("main", 6, e2), Item("main", 9, e3)]) == ["accepted", "accepted"]
    keys_ = sample_keys(stored(node, "gw-1"))
    exp = sample_keys([(SAMPLES, batch(i, 20)) for i in range(1, 10)])
    assert keys_ == exp


async def test_alarm_lane_then_main_lane_stores_once(setup) -> None:  # type: ignore[no-untyped-def]
    c, gk, ck, _ = setup
    node = c.node
    src = node.sources["gw-1"]
    b = recs(1, 2)
    ev = alarm(5)
    data = json.dumps(ev, separators=(",", ":")).encode()
    er = Record(3, 2, ev["ts"], ev["ts"], 1, data)
    b4 = recs(4, 1)
    early = envelope.seal([er], sender=gk, recipients=ck)
    assert await node.ingest(src, [Item("alarms", 3, early)]) == ["accepted"]
    main = envelope.seal([*b, er, *b4], sender=gk, recipients=ck)
    assert await node.ingest(src, [Item("main", 4, main)]) == ["accepted"]
    got = stored(node, "gw-1")
    kinds = [k for k, _ in got]
    assert kinds == [2, 1, 1, 1], "the alarm first, then the samples, and the alarm only once"
    assert node.origins["gw-1"].early == set()


async def test_push_requests_must_be_signed_fresh_and_unique(setup) -> None:  # type: ignore[no-untyped-def]
    c, gk, ck, _ = setup
    body = pack_frames([Item("main", 1, envelope.seal(recs(1, 1), sender=gk, recipients=ck))])
    peer = Peer(c.url, Signer(gk.ed25519, gk.kid), recipient="county", ca=c.cert)
    try:
        r = await peer.request("POST", "/sync/v1/push", {"head": 1, "first": 1}, body)
        assert r.json()["cursors"]["main"] == 1
        # the same request again (captured and replayed): refused
        target = "/sync/v1/push?head=1&first=1"
        headers = peer.signer.headers("POST", target, body, to="county")
        r1 = await peer.client.post(c.url + target, content=body, headers=headers)
        assert r1.status_code == 200
        r2 = await peer.client.post(c.url + target, content=body, headers=headers)
        assert r2.status_code == 401 and r2.json()["error"] == "replay"
        # a body changed after signing
        headers = peer.signer.headers("POST", target, body, to="county")
        r3 = await peer.client.post(c.url + target, content=body + b"x", headers=headers)
        assert r3.status_code == 401 and r3.json()["error"] == "bad_signature"
        # no signature at all, and a signature by an unknown key
        r4 = await peer.client.post(c.url + target, content=body)
        assert r4.status_code == 401
        stranger = keys.NodeKeys.generate("gw-9")
        bad = Peer(c.url, Signer(stranger.ed25519, stranger.kid), recipient="county", ca=c.cert)
        with pytest.raises(PeerError, match="401"):
            await bad.request("POST", "/sync/v1/push", {"head": 1}, body)
        await bad.close()
        # forged signature header value
        headers = peer.signer.headers("POST", target, body, to="county")
        headers[H_SIG] = headers[H_SIG][:-4] + "AAA="
        r5 = await peer.client.post(c.url + target, content=body, headers=headers)
        assert r5.status_code == 401
        rej = c.node.push_verifier.rejected
        assert rej.get("replay") == 1 and rej.get("bad_signature", 0) >= 2 and rej.get("unknown_key") == 1
        assert len(sample_keys(stored(c.node, "gw-1"))) == 20
        # status shows it (GET /status needs an operator's token now: read the node's own)
        assert c.node.status["gw-1"].duplicates >= 1
    finally:
        await peer.close()


async def test_pusher_backs_off_when_central_cannot_read_it(tmp_path: Path) -> None:
    """A gateway that encrypts to the wrong key: refused every time, but never hammered."""
    from tests.fixtures.central import GatewaySide
    from tests.fixtures.helpers import async_wait_until

    pubs = tmp_path / "pub"
    pubs.mkdir()
    central_pub(tmp_path, "county", pubs)
    wrong = make_keys(tmp_path / "elsewhere", "elsewhere", pubs)
    gpub = make_keys(tmp_path / "gw-1", "gw-1", pubs)
    c = await CentralSide(central_config(tmp_path, "county",
                                         [{"id": "gw-1", "keys": str(gpub), "mode": "push"}])).start()
    gw = GatewaySide(tmp_path, "gw-1", pubs, [wrong], mode="push", central_url=c.url, central_ca=c.cert,
                     retry_max="1s", central_id="county")
    try:
        await gw.journal.append_many([batch(i, 20) for i in range(3)])
        await gw.start()
        push = gw.svc.push
        assert push is not None
        await async_wait_until(lambda: push.stats.rewinds >= 2, 10, what="two refusals")
        n0 = push.stats.requests
        loop = __import__("asyncio").get_running_loop()
        t0 = loop.time()
        await async_wait_until(lambda: push.stats.requests >= n0 + 2, 10)
        # backoff doubles from 0.2 s: two more attempts take a while, not a busy loop
        assert loop.time() - t0 > 0.3
        assert c.node.status["gw-1"].rejected.get("NotForMe", 0) >= 2
        assert stored(c.node, "gw-1") == []
        assert gw.journal.cursor("uplink") == 0, "the gateway counted refused data as delivered"
    finally:
        await gw.stop()
        await c.stop()


async def test_crash_between_store_and_cursor_stores_once(tmp_path: Path) -> None:
    pubs = tmp_path / "pub"
    pubs.mkdir()
    cpub = central_pub(tmp_path, "county", pubs)
    gpub = make_keys(tmp_path / "gw-1", "gw-1", pubs)
    cfg = central_config(tmp_path, "county", [{"id": "gw-1", "keys": str(gpub), "mode": "push"}])
    gk, ck = keys.load(tmp_path / "gw-1"), keys.load_public(cpub)
    c = await CentralSide(cfg).start()
    node = c.node
    src = node.sources["gw-1"]
    assert await node.ingest(src, [Item("main", 3, envelope.seal(recs(1, 3), sender=gk, recipients=ck))]) \
        == ["accepted"]

    async def power_cut(commit: object) -> bool:
        raise RuntimeError("power cut")

    # the records reach the journal, the cursor commit does not happen
    node.state.commit = power_cut  # type: ignore[method-assign,assignment]
    with pytest.raises(RuntimeError, match="power cut"):
        await node.ingest(src, [Item("main", 5, envelope.seal(recs(4, 2), sender=gk, recipients=ck))])
    await c.stop()
    c = await CentralSide(cfg).start()
    try:
        node = c.node
        assert node.origins["gw-1"].main == 3
        # the gateway sends the range again, longer this time
        v = await node.ingest(node.sources["gw-1"],
                              [Item("main", 7, envelope.seal(recs(4, 4), sender=gk, recipients=ck))])
        assert v == ["accepted"]
        got = sample_keys(stored(node, "gw-1"))
        assert got == sample_keys([(SAMPLES, batch(i, 20)) for i in range(1, 8)]), "stored twice or lost"
        assert node.origins["gw-1"].early == set()
    finally:
        await c.stop()
