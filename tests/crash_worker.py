"""Crash-test worker: ingests generated batches into a journal and reports each commit.

Run as ``python -m tests.crash_worker JOURNAL RUN [--quota BYTES] [--ack]``. It opens
the journal (the "restart" after the previous round's SIGKILL), prints ``ready
LAST_SEQ``, then appends batches (and now and then a batch plus an event in one
``append_many``) with several appends in flight, as the gateway does. After each
commit it prints, line-buffered, one line per record::

    B SEQ RUN I SHA      a batch (RUN, I identify it; SHA = sha256 of its bytes, 16 hex)
    E SEQ RUN I SHA      an event
    A SEQ                the cursor 'uplink' was acknowledged up to SEQ (with --ack)

The test kills it with SIGKILL at a random moment and checks the journal afterwards.
Content is a pure function of (RUN, I), so the checker can regenerate it.

``python -m tests.crash_worker --gateway CONFIG`` instead runs the real daemon
(``Gateway(cfg).run()``) polling the Modbus simulators, and reports what it commits::

    G SEQ KIND SHA       a record the gateway's journal committed (KIND 1 samples, 2 event)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from typing import Any

import numpy as np

from gateway.core.batch import Batch
from gateway.store.journal import Journal

T0 = 1_700_000_000 * 10**9


def make_batch(run: int, i: int) -> Batch:
    rng = np.random.default_rng(run * 1_000_003 + i)
    n = int(rng.integers(2, 600))
    value = rng.normal(50, 10, n)
    value[0], value[1] = run, i  # the batch names itself
    q = rng.choice(np.array([0, 0, 0, 0x81, 0x85], dtype=np.uint8), n)
    return Batch.build(np.arange(n), T0 + (run * 10**6 + i) * 10**6 + np.arange(n), value, q)


def make_event(run: int, i: int) -> dict[str, Any]:
    return {"type": "crash-test", "ts": T0 + (run * 10**6 + i) * 10**6, "run": run, "i": i,
            "text": "告警 alarm"}


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def event_bytes(ev: dict[str, Any]) -> bytes:
    return json.dumps(ev, separators=(",", ":"), ensure_ascii=False).encode()


async def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("journal")
    ap.add_argument("run", type=int)
    ap.add_argument("--quota", type=int, default=2 * 10**9)
    ap.add_argument("--ack", action="store_true")
    ap.add_argument("--inflight", type=int, default=8)
    args = ap.parse_args(argv)
    j = Journal(args.journal, quota_bytes=args.quota, max_age_s=10**9)
    j.register("uplink")
    out = sys.stdout
    print("ready", j.last_seq, flush=True)
    sem = asyncio.Semaphore(args.inflight)
    i = 0

    async def one(i: int) -> None:
        b = make_batch(args.run, i)
        try:
            if i % 10 == 9:
                ev = make_event(args.run, i)
                s_b, s_e = await j.append_many([b, ev])
                out.write(f"B {s_b} {args.run} {i} {digest(b.to_bytes())}\n"
                          f"E {s_e} {args.run} {i} {digest(event_bytes(ev))}\n")
            else:
                s_b = await j.append_batch(b)
                out.write(f"B {s_b} {args.run} {i} {digest(b.to_bytes())}\n")
            out.flush()
            if args.ack and i % 25 == 24:
                await j.ack("uplink", s_b)
                out.write(f"A {s_b}\n")
                out.flush()
        finally:
            sem.release()

    tasks: set[asyncio.Task[None]] = set()
    while True:  # until killed
        await sem.acquire()
        t = asyncio.create_task(one(i))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        i += 1


async def run_gateway(config: str) -> None:
    """The real daemon; every commit of its journal is reported as it resolves."""
    import threading

    from gateway.app import Gateway, install_signal_handlers
    from gateway.config import load

    gw = Gateway(load(config))
    lock = threading.Lock()
    submit = gw.journal.submit_many

    def reporting_submit(items: list[Any]) -> Any:
        fut = submit(items)
        kinds = [1 if isinstance(x, Batch) else 2 for x in items]
        data = [x.to_bytes() if isinstance(x, Batch) else event_bytes(x) for x in items]

        def done(f: Any) -> None:
            if f.exception() is None:
                with lock:
                    sys.stdout.write("".join(f"G {s} {k} {digest(d)}\n"
                                             for s, k, d in zip(f.result(), kinds, data, strict=True)))
                    sys.stdout.flush()

        fut.add_done_callback(done)
        return fut

    gw.journal.submit_many = reporting_submit  # type: ignore[method-assign]
    install_signal_handlers(gw)
    print("ready", gw.journal.last_seq, flush=True)
    await gw.run()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--gateway"]:
        asyncio.run(run_gateway(sys.argv[2]))
    else:
        asyncio.run(main(sys.argv[1:]))
