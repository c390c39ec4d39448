"""Benchmark: samples per second through gateway → central at full speed over loopback HTTPS.

A gateway process holds a journal pre-filled with a backlog (default 2,000,000 samples
over 1,000 channels, values at 0.01 resolution) and serves it in pull mode; the central
node (this process) pulls, verifies, decrypts, decodes and stores it into its own
journal. Each run starts central with an empty state, so the same backlog is pulled
again; the figure is the median over runs. Bytes per sample count the envelopes on
the wire (headers, encryption and signature included; HTTP/TLS framing not).

    .venv/bin/python bench/uplink.py [--samples N] [--runs 3] [--mode pull|push]

Last line: JSON with samples_per_s (median), bytes_per_sample, and the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

T0 = 1_764_000_000 * 10**9


def backlog(n_samples: int, channels: int, per_batch: int) -> list[Any]:
    from gateway.core.batch import Batch

    rng = np.random.default_rng(7)
    level = rng.uniform(0, 100, channels)
    out = []
    rows = per_batch // channels
    t = 0
    for _ in range(n_samples // per_batch):
        level = level + rng.normal(0, 0.05, channels)
        vals = np.round(level[None, :] + rng.normal(0, 0.02, (rows, channels)), 2).ravel()
        ch = np.tile(np.arange(channels, dtype=np.int32), rows)
        ts = T0 + (t + np.repeat(np.arange(rows, dtype=np.int64), channels)) * 10**9
        t += rows
        out.append(Batch.build(ch, ts, vals, 0))
    return out


def _gateway(root: str, central_pub: str, mode: str, url: str | None, ca: str | None, n: int, channels: int,
             per_batch: int, q: Any) -> None:
    asyncio.run(_gateway_main(Path(root), Path(central_pub), mode, url, ca, n, channels, per_batch, q))


async def _gateway_main(root: Path, central_pub: Path, mode: str, url: str | None, ca: str | None, n: int,
                        channels: int, per_batch: int, q: Any) -> None:
    from gateway.core.config import UplinkSection
    from gateway.store.journal import Journal
    from uplink import keys
    from uplink.sync import UplinkService

    sd = root / "gw"
    k = keys.load_or_none(sd) or keys.init(sd, "gw-bench")
    keys.save_public(root / "gw.pub.yaml", k)
    j = Journal(sd / "journal.db", sync="normal")
    if j.last_seq == 0:
        items = backlog(n, channels, per_batch)
        for i in range(0, len(items), 50):
            await j.append_many(items[i:i + 50])
    sec = UplinkSection(mode=mode, listen="127.0.0.1:0", central_keys=[central_pub], central_url=url,
                        ca=Path(ca) if ca else None)
    gw = SimpleNamespace(cfg=SimpleNamespace(gateway=SimpleNamespace(id="gw-bench"), base_dir=root),
                         state_dir=sd, journal=j)
    svc = UplinkService(gw, sec)
    await svc.start()
    port = svc.listener.port if svc.listener else 0
    q.put({"port": port, "cert": str(sd / "tls.crt"), "pub": str(root / "gw.pub.yaml"), "last": j.last_seq})
    await svc.run()


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _run_central(root: Path, run: int, gwinfo: dict[str, Any], mode: str, max_bytes: int,
                       gw_pid: int) -> dict[str, Any]:
    from central.config import CentralConfig
    from central.node import CentralNode

    src: dict[str, Any] = {"id": "gw-bench", "keys": gwinfo["pub"], "mode": mode}
    if mode == "pull":
        src["pull"] = {"url": f"https://127.0.0.1:{gwinfo['port']}", "tls_cert": gwinfo["cert"], "wait": "1s",
                       "max_bytes": max_bytes}
    sd = root / f"central-{run}"
    if run:
        # same identity (the gateway encrypted to it), empty state
        import shutil

        shutil.copytree(root / "central-0" / "keys", sd / "keys")
    cfg = CentralConfig.model_validate({"node": {"id": "county", "state_dir": str(sd)},
                                        "listen": {"address": "127.0.0.1:0"}, "sources": [src]})
    node = CentralNode(cfg)
    await node.start()
    t0 = time.perf_counter()
    c0, g0 = time.process_time(), _proc_cpu(gw_pid)
    task = asyncio.create_task(node.run())
    last = gwinfo["last"]
    while True:
        c = node.origins.get("gw-bench")
        if c is not None and c.main >= last:
            break
        await asyncio.sleep(0.005)
    dt = time.perf_counter() - t0
    cpu_c, cpu_g = time.process_time() - c0, _proc_cpu(gw_pid) - g0
    st = node.status["gw-bench"]
    out = {"seconds": round(dt, 3), "samples": st.samples, "bytes": st.bytes_in, "envelopes": st.envelopes,
           "cpu_central_s": round(cpu_c, 3), "cpu_gateway_s": round(cpu_g, 3)}
    node.stop()
    await task
    await node.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2_000_000)
    ap.add_argument("--channels", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=10_000, help="samples per journal record")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mode", choices=["pull"], default="pull")
    ap.add_argument("--max-bytes", type=int, default=2 * 2**20, help="bytes per pull response")
    args = ap.parse_args(argv)
    from uplink import keys

    root = Path(tempfile.mkdtemp(prefix="safegw-bench-uplink-"))
    ck = keys.init(root / "central-0", "county")
    keys.save_public(root / "county.pub.yaml", ck)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    t_fill = time.perf_counter()
    p = ctx.Process(target=_gateway, args=(str(root), str(root / "county.pub.yaml"), args.mode, None, None,
                                           args.samples, args.channels, args.batch, q), daemon=True)
    p.start()
    try:
        info = q.get(timeout=300)
        print(f"gateway ready: {info['last']} records, backlog made in {time.perf_counter() - t_fill:.1f}s",
              flush=True)
        runs = []
        for r in range(args.runs):
            res = asyncio.run(_run_central(root, r, info, args.mode, args.max_bytes, p.pid or 0))
            res["samples_per_s"] = round(res["samples"] / res["seconds"])
            # what two otherwise idle cores would give: the busier side bounds the pipeline
            res["samples_per_cpu_s_bottleneck"] = round(
                res["samples"] / max(res["cpu_central_s"], res["cpu_gateway_s"], 1e-9))
            res["bytes_per_sample"] = round(res["bytes"] / max(1, res["samples"]), 3)
            print(f"run {r}: {res}", flush=True)
            runs.append(res)
    finally:
        p.terminate()
        p.join(10)
    fig = {
        "samples_per_s": round(statistics.median(r["samples_per_s"] for r in runs)),
        "bytes_per_sample": statistics.median(r["bytes_per_sample"] for r in runs),
        "samples_per_cpu_s_bottleneck": round(
            statistics.median(r["samples_per_cpu_s_bottleneck"] for r in runs)),
        "load_avg_1m": round(__import__("os").getloadavg()[0], 2),
        "samples": args.samples, "channels": args.channels, "mode": args.mode, "transport": "https-loopback",
        "runs": runs,
    }
    print(json.dumps(fig))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
