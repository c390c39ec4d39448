"""The gateway's pull listener as an attacker on the VPN meets it, over real TLS sockets:
bodies refused while they arrive (chunked too) before the signature is checked, request
heads bounded in size and time, every query and body number bounded (400 naming it),
and a signed request valid only at the node it names."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.central import CentralSide, GatewaySide, central_config, central_pub, make_keys
from tests.fixtures.fuzz import rss
from tests.fixtures.rawhttp import chunked_upload, read_status, tls_connect
from uplink import keys
from uplink.sync import Peer, PeerError, Signer

pytestmark = pytest.mark.timeout(60)

MiB = 2**20


def _chunked_post(port: int, path: str, total: int) -> tuple[int | None, int]:
    """POSTs up to ``total`` bytes as chunks, unsigned, stopping when the server answers or
    hangs up; returns its status and the bytes sent."""
    with tls_connect(port) as s:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        sent, early = chunked_upload(s, head, total)
        return read_status(s, data=early)[0], sent


@pytest.fixture
async def gw(tmp_path: Path):  # type: ignore[no-untyped-def]
    pubs = tmp_path / "pub"
    pubs.mkdir()
    cpub = central_pub(tmp_path, "county", pubs)
    side = GatewaySide(tmp_path, "gw-a", pubs, [cpub])
    # a short head timeout, so the trickle test need not wait the default 10 s
    side.svc.listener.config.http.header_timeout_s = 0.5  # type: ignore[union-attr]
    await side.start()
    ck = keys.load(tmp_path / "county")
    peer = Peer(f"https://127.0.0.1:{side.port}", Signer(ck.ed25519, ck.kid), recipient="gw-a", ca=side.cert)
    yield side, peer, ck
    await peer.close()
    await side.stop()


async def test_an_unsigned_chunked_ack_is_refused_while_it_arrives(gw) -> None:  # type: ignore[no-untyped-def]
    side, _, _ = gw
    rss0 = rss()
    status, sent = await asyncio.to_thread(_chunked_post, side.port, "/sync/v1/ack", 64 * MiB)
    assert status == 413
    assert sent < 4 * MiB, f"{sent >> 20} MiB went before the refusal"
    assert rss() - rss0 < 32 * MiB
    # a GET has no body at all; a declared one is refused before it is sent
    async with httpx.AsyncClient(verify=False, base_url=f"https://127.0.0.1:{side.port}") as h:
        r = await h.request("GET", "/sync/v1/envelopes?after=0", content=b"x" * 100)
        assert r.status_code == 413


async def test_heads_are_bounded_in_size_and_time(gw) -> None:  # type: ignore[no-untyped-def]
    side, _, _ = gw
    async with httpx.AsyncClient(verify=False, base_url=f"https://127.0.0.1:{side.port}") as h:
        r = await h.get("/sync/v1/info", headers={"X-Junk": "a" * 60_000})
        assert r.status_code == 431

    def trickle() -> tuple[int | None, float]:
        with tls_connect(side.port) as s:
            t0 = time.monotonic()
            s.sendall(b"GET /sync/v1/info HTTP/1.1\r\nHost: x\r\n")
            try:
                for _ in range(50):
                    time.sleep(0.1)
                    s.sendall(b"X-Slow: a\r\n")
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass
            return read_status(s)[0], time.monotonic() - t0

    status, took = await asyncio.to_thread(trickle)
    assert status is None and took < 3, (status, took)  # cut off after the 0.5 s head timeout


async def test_every_number_is_bounded(gw) -> None:  # type: ignore[no-untyped-def]
    side, peer, _ = gw
    big = "9" * 23
    for name, value in (("after", big), ("after", "-1"), ("ack", big), ("max", big), ("max_bytes", big),
                        ("after", "9" * 5000), ("wait", "nan"), ("wait", "1e999"), ("wait", "x")):
        with pytest.raises(PeerError, match=rf"400.*{name}"):
            await peer.request("GET", "/sync/v1/envelopes", {"lane": "main", name: value})
    for seq in (int(big), -1, "3", True, 1.5):
        body = json.dumps({"lane": "main", "seq": seq}).encode()
        with pytest.raises(PeerError, match=r"400.*seq"):
            await peer.request("POST", "/sync/v1/ack", body=body)
    r = await peer.request("GET", "/sync/v1/envelopes", {"lane": "main", "after": 2**63 - 1, "wait": "0"})
    assert r.content == b""
    # a signature header's time that no clock has: refused, not a 500
    target = "/sync/v1/info"
    h = peer.signer.headers("GET", target, to="gw-a")
    h["x-safegw-time"] = "9" * 40
    r = await peer.client.get(peer.base + target, headers=h)
    assert r.status_code == 401 and r.json()["error"] == "malformed"
    assert side.journal.cursor("uplink") == 0  # none of it acknowledged anything


async def test_a_request_signed_for_one_gateway_is_refused_by_another(  # type: ignore[no-untyped-def]
        gw, tmp_path: Path) -> None:
    side_a, peer_a, _ = gw
    # gateway B trusts the same central key as A
    pubs = tmp_path / "pub"
    side_b = await GatewaySide(tmp_path, "gw-b", pubs, [pubs / "county.pub.yaml"]).start()
    try:
        target = "/sync/v1/envelopes?lane=main&after=0"
        captured = peer_a.signer.headers("GET", target, to="gw-a")
        async with httpx.AsyncClient(verify=False) as h:
            r = await h.get(f"https://127.0.0.1:{side_b.port}{target}", headers=captured)
            assert r.status_code == 401 and r.json()["error"] == "wrong_recipient"
            # naming B instead breaks the signature
            forged = {**captured, "x-safegw-to": "gw-b"}
            r = await h.get(f"https://127.0.0.1:{side_b.port}{target}", headers=forged)
            assert r.status_code == 401 and r.json()["error"] == "bad_signature"
            r = await h.get(f"https://127.0.0.1:{side_a.port}{target}", headers=captured)
            assert r.status_code == 200
            r = await h.get(f"https://127.0.0.1:{side_a.port}{target}", headers=captured)
            assert r.status_code == 401 and r.json()["error"] == "replay"  # and still only once
        assert side_b.svc.stats()["refused"] == {"wrong_recipient": 1, "bad_signature": 1}
    finally:
        await side_b.stop()


async def test_a_push_signed_for_another_central_is_refused(tmp_path: Path) -> None:
    pubs = tmp_path / "pub"
    pubs.mkdir()
    central_pub(tmp_path, "county", pubs)
    gpub = make_keys(tmp_path / "gw-1", "gw-1", pubs)
    gk = keys.load(tmp_path / "gw-1")
    c = await CentralSide(central_config(tmp_path, "county",
                                         [{"id": "gw-1", "keys": str(gpub), "mode": "push"}])).start()
    peers: list[Any] = []
    try:
        for to, ok in (("county-2", False), ("county", True)):
            peer = Peer(c.url, Signer(gk.ed25519, gk.kid), recipient=to, ca=c.cert)
            peers.append(peer)
            if ok:
                r = await peer.request("POST", "/sync/v1/push", {"head": 0, "first": 0})
                assert "cursors" in r.json()
            else:
                with pytest.raises(PeerError, match=r"401.*wrong_recipient"):
                    await peer.request("POST", "/sync/v1/push", {"head": 0, "first": 0})
    finally:
        for p in peers:
            await p.close()
        await c.stop()


# --------------------------------------------------------------------------- fuzz
@pytest.fixture
def daemon(tmp_path: Path) -> Any:
    """The real daemon, polling a simulated plant, with its uplink listener in pull mode
    (trusting the key of central node "county"), in a thread of this process."""
    from tests.fixtures.daemon import SIM_PLANT, Daemon
    from tests.fixtures.daemon import gateway_yaml as daemon_yaml
    from tests.fixtures.sims import SimProcess

    (tmp_path / "sim.yaml").write_text(SIM_PLANT)
    sim = SimProcess(tmp_path / "sim.yaml")
    pubs = tmp_path / "pub"
    pubs.mkdir()
    cpub = central_pub(tmp_path, "county", pubs)
    state = tmp_path / "state"
    uplink = f"uplink: {{mode: pull, listen: '127.0.0.1:0', central_keys: ['{cpub}']}}"
    d = Daemon(daemon_yaml(*sim.tcp("plc"), state, extra=uplink)).start()
    try:
        yield d, keys.load(tmp_path / "county")
    finally:
        d.stop()
        sim.stop()


# the daemon in this process draws jitter from ``random`` while hypothesis generates (it
# warns about that), and the 5000-digit query makes the strategies' repr large
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
def test_uplink_listener_fuzz(daemon: Any) -> None:
    """Hypothesis against the gateway's pull listener (derandomized, 1500 examples, about
    20 s): junk, chunked and oversized bodies, long heads, huge numbers and bad, missing
    or valid signatures. No 5xx; the process's RSS grows less than the shared fuzz
    bound (``RSS_BOUND``, 150 MiB; one 300 MB body would pass it); the plant is
    journaled throughout."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from tests.fixtures.fuzz import SETTINGS, Tally, bodies, headers_st, send
    from tests.fixtures.helpers import wait_until
    from uplink.auth import sign_headers

    d, ck = daemon
    svc = next(s for s in d.gw.services if s.name == "uplink")
    seq0 = d.gw.journal.last_seq
    tally = Tally()
    client = httpx.Client(base_url=f"https://127.0.0.1:{svc.listener.port}", verify=False, timeout=30)
    big = "9" * 23
    queries = st.sampled_from(["", "lane=main&after=0", f"after={big}", f"lane=alarms&after=0&ack={big}",
                               "after=-1", "lane=x", f"max={big}", f"max_bytes={big}", "wait=nan",
                               "wait=1e999", "wait=-5", "after=" + "9" * 5000, f"after=0&wait={big}"])

    # half the examples are well-signed pull requests with hostile numbers (what only a
    # holder of the central key can send), half anything at all
    pulls = st.tuples(st.just("GET"), st.just("/sync/v1/envelopes"), queries, st.just((None, {})),
                      st.just({}), st.just("valid"))
    anything = st.tuples(
        st.sampled_from(["POST", "GET"]),
        st.sampled_from(["/sync/v1/ack", "/sync/v1/envelopes", "/sync/v1/info", "/sync/v1/push"]),
        queries,
        st.one_of(bodies(), st.sampled_from([
            (b'{"lane": "main", "seq": ' + big.encode() + b"}", {}), (b'{"lane": "main", "seq": 0}', {}),
            (b'{"lane": "main", "seq": [[[[1]]]]}', {})])),
        headers_st, st.sampled_from(["none", "valid", "other-node", "junk"]))

    @settings(SETTINGS, max_examples=1500)
    @given(request=st.one_of(pulls, anything))
    def run(request: tuple[str, str, str, Any, dict[str, str], str]) -> None:
        method, path, query, body, headers, signed = request
        target = path + ("?" + query if query else "")
        content, extra = body if method == "POST" else (None, {})
        h = {**headers, **extra}
        if signed == "junk":
            h.update({"x-safegw-key": ck.kid, "x-safegw-to": "gw-api", "x-safegw-time": "9" * 40,
                      "x-safegw-nonce": "n" * 100, "x-safegw-signature": "a" * 100})
        elif signed != "none":
            signed_body = content if isinstance(content, bytes) else b""
            to = "gw-api" if signed == "valid" else "gw-other"
            h.update(sign_headers(ck.ed25519, ck.kid, method, target, signed_body, to=to))
        tally.note(method, target, send(client, method, target, content, h))

    with client:
        run()
    tally.check({200, 400, 401, 413, 431})
    wait_until(lambda: d.gw.journal.last_seq > seq0, 10, what="the journal to move on")
    seq1 = d.gw.journal.last_seq
    wait_until(lambda: d.gw.journal.last_seq > seq1, 10, what="the journal to keep moving")
