"""Benchmark: what one sample costs VictoriaMetrics and central's formatter, per write format.

The same samples (G gateways × C channels × P polls, values at 0.01 resolution, the
bench/central_scale.py tags) are formatted as central formats an envelope of P polls
(line protocol: ``lineproto.format_samples``; JSON import: ``vmimport.format_import``),
then posted to a fresh victoria-metrics (the flags of tests/fixtures/victoria.py),
after one warm-up poll per series so the series exist (a running central writes to
known series). Per format and round:

- ``vm_cpu_us_per_sample``: victoria-metrics' CPU (user + system, /proc) from the
  first post to the end of a forced flush, ÷ samples;
- ``format_us_per_sample``: CPU of formatting the envelopes in this process (one core;
  the per-gateway series tables, which central caches, are built untimed);
- ``bytes_per_sample``: body bytes ÷ samples.

Samples are checked by counting them back. Formats alternate, rounds repeat; medians.

    .venv/bin/python bench/vm_ingest.py [--gateways 1000 --channels 200 --polls 9 --rounds 3]

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from central import vmimport
from gateway.core.batch import Batch
from gateway.historian import lineproto
from tests.fixtures.victoria import VictoriaMetrics

PATHS = {"influx": "/write", "json": "/api/v1/import"}
BODY_BYTES = 16 * 2**20  # central's default batch_bytes


def tags(g: int, i: int) -> dict[str, Any]:
    kinds = ["gas", "temperature", "pressure", "level"]
    return {"gateway": f"gw-{g:05d}", "site": "91370100MA3C000000", "device": f"d{i // 50}",
            "channel": f"CH{i:03d}", "kind": kinds[i % 4], "unit": "u", "area": f"a{i % 8}",
            "hazard_source": f"HS-{i % 3}"}


def cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def bodies(fmt: str, gateways: int, channels: int, polls: range, t0: int) -> tuple[list[bytes], float]:
    """Each gateway's polls formatted as one envelope, gathered into writes of ~16 MB."""
    ch = np.arange(channels, dtype=np.int32)
    out: list[bytes] = []
    cur: list[bytes] = []
    size = 0
    fmt_s = 0.0
    for g in range(gateways):
        rng = np.random.default_rng(g)
        level = np.round(rng.uniform(0, 100, (len(polls), channels)), 2)
        b = Batch.concat([Batch.build(ch, np.full(channels, t0 + s * 10**9, np.int64), level[k], 0)
                          for k, s in enumerate(polls)])
        tag_sets = [tags(g, i) for i in range(channels)]
        # the series tables are built once per gateway and table in central (cached): not timed
        if fmt == "json":
            js = vmimport.ImportSeries("safegw", tag_sets)
            t = time.process_time()
            body = vmimport.format_import(b, js)
        else:
            st = lineproto.SeriesTable(lineproto.series_key("safegw", tg) for tg in tag_sets)
            t = time.process_time()
            body = lineproto.format_samples(b, st)
        fmt_s += time.process_time() - t
        cur.append(body)
        size += len(body)
        if size >= BODY_BYTES:
            out.append(b"".join(cur))
            cur, size = [], 0
    if cur:
        out.append(b"".join(cur))
    return out, fmt_s


def one(fmt: str, a: argparse.Namespace, t0: int) -> dict[str, float]:
    warm, _ = bodies(fmt, a.gateways, a.channels, range(1), t0)
    main, fmt_s = bodies(fmt, a.gateways, a.channels, range(1, a.polls + 1), t0)
    n = a.gateways * a.channels * a.polls
    root = Path(tempfile.mkdtemp(prefix="vm-ingest-"))
    vm = VictoriaMetrics(root / "vm")
    vm.start()
    try:
        assert vm.proc is not None
        with httpx.Client(timeout=600) as c:
            def post(body: bytes) -> None:
                c.post(vm.url + PATHS[fmt], content=body).raise_for_status()

            for b in warm:
                post(b)
            vm.flush()
            c0, w0 = cpu_s(vm.proc.pid), time.perf_counter()
            with cf.ThreadPoolExecutor(2) as ex:  # central's default concurrency
                list(ex.map(post, main))
            vm.flush()
            c1, w1 = cpu_s(vm.proc.pid), time.perf_counter()
        q = f"sum(count_over_time(safegw_value[{a.polls + 60}s]))"
        counted = int(float(vm.query(q, at_s=t0 / 1e9 + a.polls + 30)[0]["value"][1]))
        if counted != n + a.gateways * a.channels:
            raise SystemExit(f"{fmt}: VictoriaMetrics holds {counted} samples, "
                             f"{n + a.gateways * a.channels} were sent")
    finally:
        vm.stop()
        shutil.rmtree(root, ignore_errors=True)
    return {"vm_cpu_us_per_sample": (c1 - c0) / n * 1e6, "vm_wall_s": w1 - w0,
            "format_us_per_sample": fmt_s / n * 1e6, "bytes_per_sample": sum(map(len, main)) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gateways", type=int, default=1000)
    ap.add_argument("--channels", type=int, default=200)
    ap.add_argument("--polls", type=int, default=9, help="polls an envelope (samples a series a write)")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    t0 = (time.time_ns() // 10**9 - 3600) * 10**9
    runs: dict[str, list[dict[str, float]]] = {"influx": [], "json": []}
    loads = [os.getloadavg()[0]]
    for _ in range(a.rounds):
        for fmt in runs:
            r = one(fmt, a, t0)
            runs[fmt].append(r)
            loads.append(os.getloadavg()[0])
            print(fmt, json.dumps({k: round(v, 3) for k, v in r.items()}), f"load {loads[-1]:.1f}",
                  file=sys.stderr)
    out: dict[str, Any] = {"gateways": a.gateways, "channels": a.channels, "polls": a.polls,
                           "rounds": a.rounds, "load_avg_1m": [round(min(loads), 1), round(max(loads), 1)]}
    for fmt, rs in runs.items():
        out[fmt] = {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
