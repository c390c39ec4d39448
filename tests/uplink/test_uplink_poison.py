"""No record can stop the uplink: oversized records through the real gateway uplink
service and a real central over HTTPS, push and pull.

Every shape of oversized record is journaled between ordinary ones (and an alarm
behind it): a highly compressible 8 MB event and a 3 M-sample batch go alone in an
envelope of their own; a 70 MB event (above ``envelope.MAX_PAYLOAD`` decoded) is set
aside by the gateway; a central stricter than the gateway refuses an 8 MB event for
good (push: the gateway narrows the envelope and sets the record aside; pull: central
sets the range aside itself). Whatever happens to the oversized record, the records
behind it arrive exactly once and in order, a marker stands where a record was set
aside, the alarm lane keeps moving and the gateway's lag returns to 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.core.batch import Batch
from gateway.core.record import SAMPLES
from tests.fixtures.central import (
    T0,
    CentralSide,
    GatewaySide,
    alarm,
    batch,
    central_config,
    central_pub,
    make_keys,
    stored,
)
from tests.fixtures.helpers import async_wait_until
from uplink import envelope

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]
MB = 2**20


def register(i: int, size: int) -> dict[str, Any]:
    """An operator's register record of ``size`` bytes of 8 KB rows of text (compresses well)."""
    row = f"hidden danger {i} found at the north tank farm, valve 7; " * 150  # ~8 KB
    rows = [{"n": k, "text": row} for k in range(size // len(row) + 1)]
    return {"type": "register", "ts": T0 + i * 10**9, "register": "hidden_danger", "id": f"r{i}",
            "rows": rows}


def big_batch(n: int) -> Batch:
    ch = np.arange(n, dtype=np.int32) % 500
    ts = T0 + (np.arange(n, dtype=np.int64) // 500) * 10**6
    return Batch.build(ch, ts, np.round(20 + np.random.default_rng(1).normal(0, 2, n), 2), 0)


def big_alarm(i: int) -> dict[str, Any]:
    return {**alarm(i), "operator": "o" * (5 * MB)}


# shape -> (what to journal before the ordinary records behind it, set aside?)
SHAPES: dict[str, tuple[Any, bool]] = {
    "8mb_event": (lambda: [("e", register(1, 8 * MB))], False),
    "70mb_event": (lambda: [("e", register(1, 70 * MB))], True),
    "3m_samples": (lambda: [("b", big_batch(3_000_000))], False),
    "5mb_alarm_string": (lambda: [("e", big_alarm(1))], False),
    "run_500_big_500": (lambda: [*(("b", batch(i, 10)) for i in range(500)), ("e", register(1, 70 * MB))],
                        True),
}


def _key(kind: int, p: Any) -> tuple[Any, ...]:
    """What identifies a stored record: samples by size and first time, events by type
    and their distinguishing field (a marker by the sequence it stands for)."""
    if kind == SAMPLES:
        return ("samples", len(p), int(p.ts[0]) if len(p) else 0)
    if p.get("type") in ("uplink_rejected", "uplink_set_aside"):
        return (p["type"], p["seq"])
    return (p.get("type"), p.get("id"), p.get("value"), len(p.get("operator", "")))


async def _scenario(root: Path, mode: str, before: list[tuple[str, Any]], *, aside: bool,
                    strict: int = 0) -> int | None:
    """Journal ``before`` (its last record the oversized one; ``aside``: it must be set
    aside), an alarm and 500 small records behind it, and check what central stored.
    ``strict``: central's decode limit, below the protocol's. Returns how many times the
    push client narrowed its envelope (push with ``strict``)."""
    pubs = root / "pub"
    pubs.mkdir(parents=True)
    cpub = central_pub(root, "county", pubs)
    if mode == "pull":
        gw = await GatewaySide(root, "gw-1", pubs, [cpub]).start()
        src = {"id": "gw-1", "keys": str(gw.pub), "mode": "pull",
               "pull": {"url": f"https://127.0.0.1:{gw.port}", "tls_cert": str(gw.cert), "wait": "1s",
                        "retry_max": "1s"}}
        c = await CentralSide(central_config(root, "county", [src])).start()
    else:
        gpub = make_keys(root / "gw-1", "gw-1", pubs)
        c = await CentralSide(central_config(root, "county", [{"id": "gw-1", "keys": str(gpub),
                                                               "mode": "push"}])).start()
        gw = await GatewaySide(root, "gw-1", pubs, [cpub], mode="push", central_url=c.url, central_ca=c.cert,
                               retry_max="1s").start()
    if strict:  # a central that reads less than the gateway may send: it refuses for good
        c.node.ingester.max_payload = strict
    node = c.node
    order: list[tuple[int, tuple[Any, ...]]] = []  # (origin seq, what) in the order central stored them
    node.on_stored.append(lambda _o, recs: order.extend(
        (r.seq, _key(r.kind, r.batch() if r.kind == SAMPLES else r.event())) for r in recs))
    try:
        # committed together, so the uplink reads them as one range (narrowing is then
        # deterministic)
        big = (await gw.journal.append_many([x for _, x in before]))[-1]
        alarm_seq = await gw.journal.append_event(alarm(2))
        # the alarm lane keeps moving: the alarm right behind the oversized record arrives
        await async_wait_until(lambda: any(s == alarm_seq for s, _ in order), 60,
                               what=f"{mode}: the alarm behind the oversized record")
        for i in range(500):
            await gw.journal.append_batch(batch(1000 + i, 10))
        await gw.journal.append_event(alarm(3))

        def caught_up() -> bool:
            o = node.origins.get("gw-1")
            return bool(o and o.main >= gw.journal.last_seq and gw.svc.stats()["lag_records"] == 0)

        await async_wait_until(caught_up, 180, what=f"{mode}: everything behind the oversized record")

        # what central holds, against the gateway's journal: each record once, a marker
        # where the oversized record was set aside, and the samples in the gateway's
        # order (events may overtake them on the alarms lane)
        want: list[tuple[int, tuple[Any, ...]]] = []
        after = 0
        while recs := gw.journal.read_sync(after, 50):
            for r in recs:
                if r.seq == big and aside:
                    want.append((r.seq, ("uplink_rejected", r.seq)))
                else:
                    want.append((r.seq, _key(r.kind, r.batch() if r.kind == SAMPLES else r.event())))
            after = recs[-1].seq
        assert sorted(order) == want, f"{mode}: records lost or duplicated behind the oversized one"
        in_order = [seq for seq, what in order if what[0] == "samples"]
        assert in_order == sorted(in_order), f"{mode}: records out of order"
        got_items = stored(node, "gw-1")
        assert len(got_items) == len(want)
        markers = [p for k, p in got_items if k != SAMPLES and p.get("type") == "uplink_rejected"]
        if aside:
            assert len(markers) == 1 and markers[0]["seq"] == big, markers
            assert markers[0]["reason"], markers
            assert markers[0]["bytes"] > 0, markers
            if not (strict and mode == "pull"):
                # the gateway set it aside: its own journal says so, for the audit
                notes = [p for k, p in got_items if k != SAMPLES and p.get("type") == "uplink_set_aside"]
                assert [n["seq"] for n in notes] == [big], notes
        else:
            assert markers == []
        st = node.status_doc()["sources"]["gw-1"]
        assert st["rejected_total"] == 0, st
        if strict and mode == "push":
            assert st["refused"] > 0
            return gw.push.stats.narrowed
        return None
    finally:
        await gw.stop()
        await c.stop()


@pytest.mark.parametrize("mode", ["push", "pull"])
@pytest.mark.parametrize("shape", list(SHAPES))
async def test_oversized_record_does_not_stop_the_uplink(tmp_path: Path, mode: str, shape: str) -> None:
    make, aside = SHAPES[shape]
    await _scenario(tmp_path, mode, make(), aside=aside)


@pytest.mark.parametrize("mode", ["push", "pull"])
async def test_record_refused_for_good_upstream_is_set_aside(tmp_path: Path, mode: str) -> None:
    """Central refuses an 8 MB record for good (it decodes less than the gateway may
    send); push narrows the envelope to it and sets it aside, pull sets the range aside
    at central. 500 small records before it and 500 behind it arrive."""
    before = [*(("b", batch(i, 10)) for i in range(500)), ("e", register(1, 8 * MB))]
    await _scenario(tmp_path, mode, before, aside=True, strict=4 * MB)


async def test_push_narrows_the_refused_envelope_to_the_record(tmp_path: Path) -> None:
    """A 900 KB event travels with other records (an alarm on the alarms lane, small
    records on the main lane); central refuses every envelope with it for
    good: the gateway halves its envelopes until the event is alone, sets it aside,
    and the records on both sides of it arrive."""
    before = [*(("b", batch(i, 10)) for i in range(300)), ("e", alarm(1)), ("e", register(1, 900 * 2**10))]
    narrowed = await _scenario(tmp_path, "push", before, aside=True, strict=512 * 2**10)
    assert narrowed, narrowed


async def test_push_narrowing_lets_a_refused_range_through(tmp_path: Path) -> None:
    """Three 900 KB events in a row among small records: too much together for a strict
    central, each small enough alone; narrowing gets them all through, none set aside."""
    before = [*(("b", batch(i, 10)) for i in range(300)),
              *(("e", register(k, 900 * 2**10)) for k in range(1, 4))]
    narrowed = await _scenario(tmp_path, "push", before, aside=False, strict=2 * MB)
    assert narrowed, narrowed


def test_both_ends_share_the_payload_limit() -> None:
    assert envelope.MAX_PAYLOAD == 64 * MB
