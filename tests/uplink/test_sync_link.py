"""The metered link: token bucket rate and priority, monthly budget and its counters,
request signing, frames."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.fixtures.helpers import async_wait_until
from uplink.auth import AuthError, Verifier, sign_headers
from uplink.link import PRIO_ALARMS, PRIO_BULK, Link, TokenBucket
from uplink.sync import FrameError, Item, pack_frames, unpack_frames


async def test_bucket_holds_the_rate() -> None:
    b = TokenBucket(100_000.0, burst=10_000.0)
    t0 = time.monotonic()
    for _ in range(10):
        await b.take(10_000)
    dt = time.monotonic() - t0
    # 100 kB at 100 kB/s: the 10 kB burst and one request sent on credit (a request
    # goes as soon as the bucket is positive, its debt delays the next) leave 80 kB
    # to wait for: 0.8 s, and not much more
    assert 0.78 <= dt < 2.5, dt


async def test_alarms_overtake_bulk_waiters() -> None:
    b = TokenBucket(50_000.0, burst=5_000.0)
    await b.take(50_000)  # into debt: the next waiters queue
    order: list[str] = []

    async def go(name: str, prio: int) -> None:
        await b.take(1_000, prio)
        order.append(name)

    bulk = [asyncio.create_task(go(f"bulk{i}", PRIO_BULK)) for i in range(3)]
    # the alarm comes after all three bulk requests are queued (and none has gone yet)
    await async_wait_until(lambda: len(b._waiters) == 3, 5, what="the bulk requests to queue")
    assert order == []
    alarm = asyncio.create_task(go("alarm", PRIO_ALARMS))
    await asyncio.gather(*bulk, alarm)
    assert order[0] == "alarm", order


async def test_no_cap_means_no_wait() -> None:
    b = TokenBucket(None)
    t0 = time.monotonic()
    for _ in range(1000):
        await b.take(10**6)
    assert time.monotonic() - t0 < 0.5


def test_budget_blocks_bulk_not_alarms_and_persists(tmp_path: Path) -> None:
    now = [1_764_000_000.0]  # 2025-11-24
    link = Link(tmp_path, rate=None, monthly_budget=1000, clock=lambda: now[0])
    assert link.allow("main")
    link.count_out(600)
    assert link.allow("main")
    link.count_out(600)
    assert not link.allow("main")
    assert link.allow("alarms")
    assert link.stats()["budget_blocked"] is True
    link.save()
    doc = json.loads((tmp_path / "uplink-link.json").read_text())
    assert doc["month_bytes"] == 1200
    # a restart keeps the month's count
    again = Link(tmp_path, rate=None, monthly_budget=1000, clock=lambda: now[0])
    assert again.month_bytes == 1200 and not again.allow("main")
    # next month: the budget is fresh
    now[0] += 31 * 86400
    assert again.allow("main")
    assert again.month_bytes == 0
    assert again.total_bytes_out == 1200


def test_signed_requests() -> None:
    key = Ed25519PrivateKey.generate()
    now = [10**18]
    v = Verifier({"k1": key.public_key()}, node_id="gw-1", window_s=60, clock=lambda: now[0])
    h = sign_headers(key, "k1", "GET", "/sync/v1/envelopes?after=5", b"", to="gw-1", now_ns=now[0])
    assert v.verify("GET", "/sync/v1/envelopes?after=5", b"", h) == "k1"
    with pytest.raises(AuthError, match="replay"):
        v.verify("GET", "/sync/v1/envelopes?after=5", b"", h)
    h = sign_headers(key, "k1", "GET", "/sync/v1/envelopes?after=5", b"", to="gw-1", now_ns=now[0])
    with pytest.raises(AuthError, match="bad_signature"):
        v.verify("GET", "/sync/v1/envelopes?after=6", b"", h)  # query changed
    h = sign_headers(key, "k1", "POST", "/sync/v1/ack", b'{"seq":1}', to="gw-1", now_ns=now[0] - 61 * 10**9)
    with pytest.raises(AuthError, match="stale"):
        v.verify("POST", "/sync/v1/ack", b'{"seq":1}', h)
    other = Ed25519PrivateKey.generate()
    h = sign_headers(other, "k1", "GET", "/x", b"", to="gw-1", now_ns=now[0])
    with pytest.raises(AuthError, match="bad_signature"):
        v.verify("GET", "/x", b"", h)
    h = sign_headers(other, "k2", "GET", "/x", b"", to="gw-1", now_ns=now[0])
    with pytest.raises(AuthError, match="unknown_key"):
        v.verify("GET", "/x", b"", h)
    with pytest.raises(AuthError, match="unsigned"):
        v.verify("GET", "/x", b"", {})
    assert v.rejected == {"replay": 1, "bad_signature": 2, "stale": 1, "unknown_key": 1, "unsigned": 1}


def test_frames_round_trip_and_truncation() -> None:
    items = [Item("main", 7, b"abc"), Item("alarms", 9, b""), Item("main", 2**40, b"x" * 1000)]
    data = pack_frames(items)
    back = unpack_frames(data)
    assert [(i.lane, i.seq, i.data) for i in back] == [(i.lane, i.seq, i.data) for i in items]
    for cut in (1, 5, len(data) - 1):
        with pytest.raises(FrameError):
            unpack_frames(data[:cut])
    with pytest.raises(FrameError):
        unpack_frames(b"\x07" + data[1:])
