"""The gateway's pull server over real HTTPS: info, envelopes, ack, long poll, refusals."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.fixtures.central import GatewaySide, alarm, batch, central_pub
from tests.fixtures.helpers import async_wait_until
from uplink import envelope, keys
from uplink.sync import Peer, PeerError, Signer, unpack_frames

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    pubs = tmp_path / "pub"
    pubs.mkdir()
    cpub = central_pub(tmp_path, "county", pubs)
    gw = await GatewaySide(tmp_path, "gw-1", pubs, [cpub], max_samples=150).start()
    ck = keys.load(tmp_path / "county")
    peer = Peer(f"https://127.0.0.1:{gw.port}", Signer(ck.ed25519, ck.kid), recipient="gw-1", ca=gw.cert)
    yield gw, peer, ck
    await peer.close()
    await gw.stop()


async def test_envelopes_lanes_and_ack(served) -> None:  # type: ignore[no-untyped-def]
    gw, peer, ck = served
    await gw.journal.append_many([batch(0), batch(1), alarm(1), batch(2)])
    trust = keys.TrustStore(keys.load_public(gw.pub))
    r = await peer.request("GET", "/sync/v1/envelopes", {"lane": "main", "after": 0})
    items = unpack_frames(r.content)
    # an envelope closes once it holds 150 samples: records 1-2, then 3 (the event) and 4
    assert [i.seq for i in items] == [2, 4]
    opened = [envelope.open_envelope(i.data, recipient=ck, trusted=trust) for i in items]
    assert [r.seq for o in opened for r in o.records] == [1, 2, 3, 4]
    assert r.headers["x-safegw-head"] == "4"
    r1 = await peer.request("GET", "/sync/v1/envelopes", {"lane": "main", "after": 0, "max": 1})
    assert [i.seq for i in unpack_frames(r1.content)] == [2]
    r = await peer.request("GET", "/sync/v1/envelopes", {"lane": "alarms", "after": 0})
    (a,) = unpack_frames(r.content)
    assert a.seq == 3
    assert envelope.open_envelope(a.data, recipient=ck, trusted=trust).records[0].event() == alarm(1)
    # nothing acknowledged yet: the cursor has not moved
    assert gw.journal.cursor("uplink") == 0
    r = await peer.request("POST", "/sync/v1/ack", body=b'{"lane": "main", "seq": 3}')
    assert r.json() == {"cursor": 3}
    # asking after 4 acknowledges 4 (the puller stored it); ack= says it explicitly
    await peer.request("GET", "/sync/v1/envelopes", {"lane": "main", "after": 4, "ack": 3})
    assert gw.journal.cursor("uplink") == 3
    await peer.request("GET", "/sync/v1/envelopes", {"lane": "main", "after": 4})
    assert gw.journal.cursor("uplink") == 4
    info = (await peer.request("GET", "/sync/v1/info")).json()
    assert info["id"] == "gw-1" and info["cursors"]["main"] == 4 and info["head"] == 4


async def test_long_poll_returns_when_data_comes(served) -> None:  # type: ignore[no-untyped-def]
    gw, peer, _ = served
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    task = asyncio.create_task(peer.request("GET", "/sync/v1/envelopes",
                                            {"lane": "alarms", "after": 0, "wait": "10"}))
    # the server took the request, found nothing and is holding it, waiting on the journal
    assert gw.svc.server is not None
    await async_wait_until(lambda: gw.svc.server.requests == 1 and gw.journal._listeners, 10,
                           what="the server to hold the long poll")
    assert not task.done()
    await gw.journal.append_event(alarm(2))
    r = await asyncio.wait_for(task, 5)
    assert len(unpack_frames(r.content)) == 1
    assert loop.time() - t0 < 5
    # and an empty long poll ends after its wait
    r = await peer.request("GET", "/sync/v1/envelopes", {"lane": "alarms", "after": 1, "wait": "0.3"})
    assert r.content == b""


async def test_refusals(served) -> None:  # type: ignore[no-untyped-def]
    gw, peer, _ = served
    for params in ({"lane": "nope"}, {"after": "x"}, {"after": -1}):
        with pytest.raises(PeerError, match="400"):
            await peer.request("GET", "/sync/v1/envelopes", params)
    with pytest.raises(PeerError, match="400"):
        await peer.request("POST", "/sync/v1/ack", body=b'{"lane": "main"}')
    stranger = keys.NodeKeys.generate("county")  # right name, wrong key
    bad = Peer(peer.base, Signer(stranger.ed25519, stranger.kid), recipient="gw-1", ca=gw.cert)
    try:
        with pytest.raises(PeerError, match="401"):
            await bad.request("GET", "/sync/v1/envelopes", {"after": 0})
    finally:
        await bad.close()
    r = await peer.client.get(peer.base + "/sync/v1/info")
    assert r.status_code == 401
    assert gw.svc.stats()["refused"] == {"unknown_key": 1, "unsigned": 1}


async def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    from tests.fixtures.central import central_pub as cp

    pubs = tmp_path / "pub"
    pubs.mkdir()
    cpub = cp(tmp_path, "county", pubs)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        gw = GatewaySide(tmp_path, "gw-1", pubs, [cpub])
        gw.svc.listener.config.port = port  # type: ignore[union-attr]
        with pytest.raises(OSError, match="cannot listen"):
            await gw.svc.start()
        gw.journal.close()
