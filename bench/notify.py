"""Benchmark: alarms to people through the notify service.

Two figures, each with the real daemon (``Gateway``: journal, rules engine, notify
service) and a webhook receiver over real HTTPS (simulators/robots.py) in this process:

- ``latency_p99_ms``: from an alarm's transition (the sample's time that raised it) to
  the receiver holding the message. ``--alarms`` alarms, one every ``--every``, each on a
  channel of its own, rate limit and flood detection opened wide (the path, not the
  pacing, is measured). Reference in the same run: the same receiver's latency for a bare
  signed POST from httpx (``ref_post_p50_ms``). Target ≤ 1,000 ms.
- ``flood_messages``: the messages one recipient gets for a 500-alarm flood over 60 s,
  with the default rate limit (5 a minute), flood detection (ISA-18.2: more than 10 in 10
  minutes) and digest interval (30 s); the bench checks that the messages, digests
  included, name all 500 alarms. Target ≤ 10.

    .venv/bin/python bench/notify.py [--alarms 200] [--every 50ms] [--flood 500] [--flood-over 60s]

The default run takes about 100 s (the flood lasts a minute, its last digest comes up to
30 s later).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from gateway.app import Gateway  # noqa: E402
from gateway.config import loads  # noqa: E402
from gateway.core.batch import Batch  # noqa: E402
from gateway.core.units import parse_duration  # noqa: E402
from simulators.robots import RobotReceiver  # noqa: E402


def config(state: Path, hook: RobotReceiver, n: int, *, wide_open: bool) -> str:
    chans = "".join(
        f'      - {{name: GX-{i}, kind: gas, unit: "%LEL", address: "input:{i}", type: int16, '
        f"scale: 0.1, area: 罐区, alarms: {{h: 25}}}}\n"
        for i in range(n)
    )
    limits = (
        "  rate_limit: {messages: 1000, per: 1m}\n  flood: {alarms: 10000, window: 10m}\n"
        if wide_open
        else ""
    )
    return f"""
gateway: {{id: gw-bench, site: "91370100MA3C000000", name: 一号罐区, state_dir: "{state}"}}
journal: {{sync: normal}}
devices:
  - name: plc
    protocol: modbus-tcp
    host: 127.0.0.1
    port: 1502
    enabled: false
    channels:
{chans}
notify:
  channels:
    - {{type: webhook, name: hook, url: "{hook.url}", ca_file: "{hook.ca}", timeout: 5s}}
  recipients:
    - {{name: 值班员}}
  routes:
    - {{name: gas, match: {{kinds: [gas]}}, to: [值班员], cleared: false}}
{limits}"""


async def run_gateway(gw: Gateway) -> asyncio.Task[None]:
    ready = asyncio.Event()
    task = asyncio.create_task(gw.run(drain_s=2.0, on_ready=ready.set))
    await ready.wait()
    return task


async def stop(gw: Gateway, task: asyncio.Task[None]) -> None:
    gw.stop()
    await asyncio.wait({task}, timeout=20)


def raise_one(gw: Gateway, i: int) -> int:
    ts = gw.clock()
    gw.ingest(Batch.build(np.array([gw.table.by_name[f"GX-{i}"].index]), ts, np.array([30.0]), 0))
    return ts


async def wait_for(cond: Any, timeout: float) -> bool:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


async def latency(tmp: Path, alarms: int, every: float) -> dict[str, Any]:
    hook = RobotReceiver("webhook").start()
    try:
        # the reference: a bare POST to the same receiver, same TLS, timed the same
        # way (from just before the request to the receiver holding it)
        async with httpx.AsyncClient(verify=str(hook.ca)) as c:
            ref = []
            for _ in range(50):
                t0 = time.time()
                r = await c.post(hook.url, json={"bench": True})
                r.raise_for_status()
                ref.append((hook.messages[-1]["wall"] - t0) * 1000)
        hook.messages.clear()
        gw = Gateway(loads(config(tmp / "lat", hook, alarms, wide_open=True)))
        task = await run_gateway(gw)
        sent: dict[str, int] = {}
        for i in range(alarms):
            sent[f"GX-{i}"] = raise_one(gw, i)
            await asyncio.sleep(every)
        ok = await wait_for(lambda: len(hook.messages) >= alarms, 30)
        await stop(gw, task)
        lat = [(m["wall"] - sent[m["doc"]["fields"]["alarm"]["channel"]] / 1e9) * 1000 for m in hook.messages]
        return {
            "latency_p50_ms": round(statistics.median(lat), 1),
            "latency_p99_ms": round(pct(lat, 99), 1),
            "latency_max_ms": round(max(lat), 1),
            "latency_alarms": len(lat),
            "latency_all_delivered": ok,
            "ref_post_p50_ms": round(statistics.median(ref), 2),
            "ref_post_p99_ms": round(pct(ref, 99), 2),
        }
    finally:
        hook.stop()


async def flood(tmp: Path, n: int, over: float) -> dict[str, Any]:
    hook = RobotReceiver("webhook").start()
    try:
        gw = Gateway(loads(config(tmp / "flood", hook, n, wide_open=False)))
        task = await run_gateway(gw)
        t0 = time.monotonic()
        for i in range(n):
            raise_one(gw, i)
            await asyncio.sleep(max(0.0, t0 + (i + 1) * over / n - time.monotonic()))

        def named() -> set[str]:
            out = set()
            for m in hook.messages:
                d = m["doc"]
                if d["kind"] == "digest":
                    out |= {it["channel"] for it in d["fields"]["alarms"]}
                else:
                    out.add(d["fields"]["alarm"]["channel"])
            return out

        complete = await wait_for(lambda: len(named()) >= n, 120)
        await stop(gw, task)
        kinds = [m["doc"]["kind"] for m in hook.messages]
        return {
            "flood_alarms": n,
            "flood_over_s": over,
            "flood_messages": len(kinds),
            "flood_digests": kinds.count("digest"),
            "flood_individual": kinds.count("alarm"),
            "flood_named": len(named()),
            "flood_all_named": complete,
            "flood_wall_s": round(time.monotonic() - t0, 1),
        }
    finally:
        hook.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alarms", type=int, default=200)
    ap.add_argument("--every", default="50ms")
    ap.add_argument("--flood", type=int, default=500)
    ap.add_argument("--flood-over", default="60s")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-notify-") as d:
        os.chmod(d, 0o700)
        fig: dict[str, Any] = {}
        fig.update(asyncio.run(latency(Path(d), a.alarms, parse_duration(a.every))))
        print(
            f"latency over {fig['latency_alarms']} alarms: p50 {fig['latency_p50_ms']} ms, "
            f"p99 {fig['latency_p99_ms']} ms (a bare POST: {fig['ref_post_p50_ms']} ms)",
            file=sys.stderr,
        )
        fig.update(asyncio.run(flood(Path(d), a.flood, parse_duration(a.flood_over))))
        print(
            f"flood of {fig['flood_alarms']} alarms in {fig['flood_over_s']:g} s: {fig['flood_messages']} "
            f"messages ({fig['flood_digests']} digests), {fig['flood_named']} alarms named",
            file=sys.stderr,
        )
    fig["targets"] = {"latency_p99_ms": 1000, "flood_messages": 10}
    fig["ok"] = bool(fig["latency_p99_ms"] <= 1000 and fig["flood_messages"] <= 10 and fig["flood_all_named"])
    print(json.dumps(fig, ensure_ascii=False))


if __name__ == "__main__":
    main()
