"""Benchmark: journal → InfluxDB throughput of the historian, against a real influxd.

Workload (the issue's): 10,000 channels polled every second. A backlog of
``--seconds`` polls is journaled first (one record per poll, 10,000 samples sharing one
timestamp, values like real instruments: float32 registers, scaled integers, rounded
decimals, ~1% bad samples), then the ``influxdb`` service of a real Gateway drains it
into a private influxd (Debian 1.6.7) started on ephemeral ports. The drain is timed
from the service's start until its cursor reaches the journal's end.

A one-hour backlog (36M points) cannot drain in the 2 minutes a benchmark may take on
this machine, so by default a 60-second backlog (600k points) is measured and the
one-hour figure extrapolated from its rate (``backlog_drain_extrapolated: true``).

To tell the gateway's cost from the server's limit, the same server is then fed
pre-formatted, pre-compressed bodies of the same workload as fast as it takes them
(``server_points_per_s``: the ceiling on this machine, now), and the formatting alone
is timed on one core (``format_points_per_s``).

Last line: one JSON object (points_per_s, backlog_drain_s, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.app import Gateway
from gateway.config import loads
from gateway.core.batch import Batch, Quality
from gateway.historian import lineproto
from gateway.historian.service import HistorianService, build_service
from tests.fixtures.influxd import Influxd

KINDS = ["gas", "temperature", "pressure", "level", "humidity"]


def config_text(state: Path, url: str, channels: int, per_device: int, batch_points: int, gzip: bool) -> str:
    out = [f"""gateway:
  id: gw-bench
  site: "91370100MA3C000000"
  state_dir: {state}
journal:
  sync: normal
  quota: 20GB
  max_age: 3650d
influxdb:
  url: {url}
  database: bench
  batch_points: {batch_points}
  gzip: {str(gzip).lower()}
devices:"""]
    for d in range(channels // per_device):
        out.append(f"  - {{name: dev-{d:03d}, protocol: modbus-tcp, host: 127.0.0.1, enabled: false,"
                   " channels: [")
        chans = []
        for k in range(per_device):
            i = d * per_device + k
            chans.append(f"{{name: 'T{i:05d}', kind: {KINDS[i % 5]}, unit: 'u{i % 5}', "
                         f"address: 'holding:{2 * k}', type: float32, area: 'area-{i // 500}', "
                         f"hazard_source: 'HS-{i // 1000:02d}'}}")
        out.append("      " + ",\n      ".join(chans) + "]}")
    return "\n".join(out) + "\n"


def make_poll(n: int, ts: int, rng: np.random.Generator) -> Batch:
    v = rng.normal(50, 10, n)
    third = n // 3
    v[:third] = v[:third].astype(np.float32)  # float32 registers
    v[third:2 * third] = np.round(v[third:2 * third] * 10) * 0.1  # int16 x 0.1
    v[2 * third:] = np.round(v[2 * third:], 2)
    q = np.zeros(n, np.uint8)
    bad = rng.random(n) < 0.01
    q[bad] = Quality.TIMEOUT
    v[bad] = np.nan
    return Batch.build(np.arange(n), ts, v, q)


def bench_format(svc: HistorianService, polls: list[Batch]) -> float:
    series = svc.writer.series(len(polls[0]))
    t0 = time.perf_counter()
    n = 0
    for b in polls:
        for lo in range(0, len(b), 5000):
            lineproto.format_samples(b.select(slice(lo, lo + 5000)), series)  # type: ignore[arg-type]
            n += min(5000, len(b) - lo)
    return n / (time.perf_counter() - t0)


def server_ceiling(srv: Influxd, svc: HistorianService, args: argparse.Namespace, rng: np.random.Generator,
                   t0: int, polls: int = 10) -> float:
    """Points/s the server takes when bodies are ready in advance (one request at a time)."""
    series = svc.writer.series(args.channels)
    bodies = []
    for p in range(polls):
        b = make_poll(args.channels, t0 + p * 10**9, rng)
        for chunk in lineproto.split_lines(lineproto.format_samples(b, series), args.batch_points):
            bodies.append(zlib.compress(chunk, 1, wbits=31) if not args.no_gzip else chunk)
    headers = {} if args.no_gzip else {"Content-Encoding": "gzip"}
    with httpx.Client(timeout=60) as c:
        t = time.perf_counter()
        for body in bodies:
            r = c.post(srv.url + "/write", params={"db": "bench", "precision": "ns"}, content=body,
                       headers=headers)
            r.raise_for_status()
        return polls * args.channels / (time.perf_counter() - t)


async def run(args: argparse.Namespace) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-influx-"))
    srv = Influxd(tmp / "influxd")
    srv.start()
    try:
        cfg = loads(config_text(tmp / "state", srv.url, args.channels, 100, args.batch_points,
                                not args.no_gzip))
        gw = Gateway(cfg)
        rng = np.random.default_rng(1)
        t_start = (time.time_ns() // 10**9 - args.seconds - 60) * 10**9
        t0 = time.perf_counter()
        pending = []
        for s in range(args.seconds):
            pending.append(gw.journal.submit_batch(make_poll(args.channels, t_start + s * 10**9, rng)))
        for f in pending:
            f.result()
        fill_s = time.perf_counter() - t0
        n_points = args.seconds * args.channels
        assert cfg.influxdb is not None
        svc = build_service(gw, cfg.influxdb)
        fmt_rate = bench_format(svc, [make_poll(args.channels, t_start, rng) for _ in range(3)])
        await svc.start()
        t0 = time.perf_counter()
        task = asyncio.create_task(svc.run())
        last = gw.journal.last_seq
        first = gw.journal.first_seq if hasattr(gw.journal, "first_seq") else 1
        # steady state: from 20% of the backlog on (the first polls also create the series)
        mark = first + (last - first) // 5
        t_mark = None
        await svc.consumer.drain(target=mark)
        t_mark = time.perf_counter()
        await svc.consumer.drain(target=last)
        drain_s = time.perf_counter() - t0
        steady_pps = (last - mark) * args.channels / max(1e-9, time.perf_counter() - t_mark)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        st = svc.stats()
        await svc.stop()
        gw.journal.close()
        count = srv.rows("SELECT count(quality) FROM /.*/ WHERE time > 0", "bench")
        stored = sum(int(r["count"]) for r in count if r["_measurement"] in KINDS)
        ceiling = server_ceiling(srv, svc, args, rng, t_start + args.seconds * 10**9)
        pps = n_points / drain_s
        hour_points = 3600 * args.channels
        extrapolated = args.seconds < 3600
        return {
            "points_per_s": round(pps),
            "backlog_drain_s": round(hour_points / steady_pps if extrapolated else drain_s, 1),
            "steady_points_per_s": round(steady_pps),
            "backlog_drain_extrapolated": extrapolated,
            "measured_backlog_points": n_points,
            "measured_backlog_s": args.seconds,
            "measured_drain_s": round(drain_s, 2),
            "channels": args.channels,
            "batch_points": args.batch_points,
            "gzip": not args.no_gzip,
            "points_stored": stored,
            "requests": st["requests"],
            "bytes_sent": st["bytes_sent"],
            "server_points_per_s": round(ceiling),
            "share_of_server_ceiling": round(steady_pps / ceiling, 2),
            "format_points_per_s": round(fmt_rate),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "journal_fill_s": round(fill_s, 2),
            "influxd": "1.6.7 (Debian)",
            "cpus": os.cpu_count(),
        }
    finally:
        srv.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--channels", type=int, default=10_000)
    p.add_argument("--seconds", type=int, default=60, help="backlog length in polls (1 s each)")
    p.add_argument("--batch-points", type=int, default=5000)
    p.add_argument("--no-gzip", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    res = asyncio.run(run(args))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
