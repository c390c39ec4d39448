"""Benchmark: Modbus TCP polling from simulated devices into the journal.

N simulated devices × M float32 channels, polled every P seconds by the real
Gateway (drivers, rules, live table, journal with its default durable settings) for
T seconds. The device farm runs in separate processes (``python -m simulators``,
several of them), so the gateway process's CPU is the gateway's alone; it is
measured with ``time.process_time`` (all threads: event loop and journal writer)
over the measured window, after a warm-up.

Every value is checked afterwards: each channel serves a distinct constant
(device × 10000 + channel + 0.25, exact in float32), so a sample counts only when
it is in the journal, good, and carries its own channel's value.

Defaults are the issue's target workload: 50 devices × 1000 float32 channels at
500 ms = 100,000 tags/s offered. Targets: ≥ 100,000 tags/s sustained, ≤ 5 CPU-µs
a tag in the gateway process. Last line: one JSON object.

    .venv/bin/python bench/poll_modbus.py [--devices 50] [--channels 1000] [--poll 0.5]
        [--seconds 20] [--warmup 3] [--sim-procs 2] [--pipeline 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.app import Gateway  # noqa: E402
from gateway.core.config import Config  # noqa: E402
from gateway.core.record import SAMPLES  # noqa: E402


def expected(dev: int, ch: int) -> float:
    return dev * 10000 + ch + 0.25


def sim_config(devices: list[int], channels: int) -> str:
    """The farm's simulator config, as JSON (the simulators read .json files fast)."""
    devs = [{"name": f"dev{d}", "protocol": "modbus-tcp", "port": 0,
             "units": [{"unit": 1, "size": 2 * channels + 8,
                        "points": [{"value": expected(d, c), "address": f"input:{2 * c}", "type": "float32"}
                                   for c in range(channels)]}]}
            for d in devices]
    return json.dumps({"signals": {}, "tick": "5s", "devices": devs})


def start_sims(n_dev: int, channels: int, procs: int, tmp: Path) -> tuple[list[subprocess.Popen[str]],
                                                                           dict[str, Any]]:
    groups = [list(range(i, n_dev, procs)) for i in range(procs)]
    started: list[subprocess.Popen[str]] = []
    for i, g in enumerate(groups):
        if not g:
            continue
        cfg = tmp / f"sim{i}.json"
        cfg.write_text(sim_config(g, channels))
        started.append(subprocess.Popen([sys.executable, "-m", "simulators", "-c", str(cfg)], cwd=ROOT,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
    endpoints: dict[str, Any] = {}
    for p in started:
        assert p.stdout is not None
        line = p.stdout.readline()
        if not line.startswith("READY "):
            raise SystemExit(f"simulator failed to start: {line!r}")
        endpoints.update(json.loads(line[6:]))
    return started, endpoints


def gateway_config(endpoints: dict[str, Any], n_dev: int, channels: int, poll: float, pipeline: int,
                   state: Path) -> Any:
    devices = []
    for d in range(n_dev):
        ep = endpoints[f"dev{d}"]
        devices.append({
            "name": f"dev{d}", "protocol": "modbus-tcp", "host": ep["host"], "port": ep["port"],
            "poll": f"{poll}s", "timeout": f"{poll}s", "retries": 0, "pipeline": pipeline,
            "channels": [{"name": f"d{d}.c{c}", "kind": "other", "address": f"input:{2 * c}",
                          "type": "float32"}
                         for c in range(channels)],
        })
    data = {"gateway": {"id": "bench", "site": "BENCH", "state_dir": str(state)}, "devices": devices}
    # the models only: this generated config is valid by construction, and the file-level
    # cross checks take tens of seconds on 50,000 channels (register overlaps are quadratic)
    return Config.model_validate(data)


async def run(args: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    gw = Gateway(cfg)
    task = asyncio.create_task(gw.run(drain_s=1.0))
    await asyncio.sleep(args.warmup)
    t0_ns, cpu0, wall0 = time.time_ns(), time.process_time(), time.monotonic()
    await asyncio.sleep(args.seconds)
    t1_ns, cpu1, wall1 = time.time_ns(), time.process_time(), time.monotonic()
    overruns = sum(s.overruns for s in gw.devices.values())
    errors = sum(s.errors for s in gw.devices.values())
    poll_ms = [s.last_poll_ms for s in gw.devices.values()]
    gw.stop()
    await task
    return {"t0": t0_ns, "t1": t1_ns, "cpu": cpu1 - cpu0, "wall": wall1 - wall0, "overruns": overruns,
            "errors": errors, "poll_ms_median": float(np.median(poll_ms)), "table": gw.table}


def check_journal(state: Path, table: Any, t0: int, t1: int) -> dict[str, Any]:
    from gateway.store.journal import Journal

    exp = np.array([expected(int(c.device[3:]), int(c.name.split(".c")[1])) for c in table.channels])
    good = wrong = bad = in_window = 0
    edges = np.arange(t0, t1 + 1, 10**9, dtype=np.int64)  # whole seconds of the window
    per_s = np.zeros(len(edges) - 1, dtype=np.int64)
    with Journal(state / "journal.db") as j:
        after = 0
        while True:
            recs = j.read_sync(after, 2000, kinds=(SAMPLES,))
            if not recs:
                break
            for r in recs:
                b = r.batch()
                ok_q = b.quality == 0
                ok_v = b.value == exp[b.channel]
                good += int((ok_q & ok_v).sum())
                wrong += int((ok_q & ~ok_v).sum())
                bad += int((~ok_q).sum())
                win = (b.ts >= t0) & (b.ts < t1) & ok_q & ok_v
                in_window += int(win.sum())
                per_s += np.histogram(b.ts[win], bins=edges)[0]
            after = recs[-1].seq
    return {"good": good, "wrong": wrong, "bad": bad, "in_window": in_window, "per_s": per_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--channels", type=int, default=1000)
    p.add_argument("--poll", type=float, default=0.5)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--sim-procs", type=int, default=2)
    p.add_argument("--pipeline", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="bench-poll-"))
    sims: list[subprocess.Popen[str]] = []
    try:
        t_start = time.monotonic()
        sims, endpoints = start_sims(args.devices, args.channels, args.sim_procs, tmp)
        cfg = gateway_config(endpoints, args.devices, args.channels, args.poll, args.pipeline, tmp / "state")
        print(f"farm up in {time.monotonic() - t_start:.1f}s: {args.devices} devices × {args.channels} "
              "float32 "
              f"in {len(sims)} processes; polling every {args.poll}s for {args.seconds}s", file=sys.stderr)
        r = asyncio.run(run(args, cfg))
        chk = check_journal(tmp / "state", r["table"], r["t0"], r["t1"])
    finally:
        for s in sims:
            s.terminate()
        for s in sims:
            try:
                s.wait(10)
            except subprocess.TimeoutExpired:
                s.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    window_s = (r["t1"] - r["t0"]) / 1e9
    tags = chk["in_window"]
    out = {
        "bench": "poll_modbus",
        "devices": args.devices, "channels_per_device": args.channels, "poll_s": args.poll,
        "offered_tags_per_s": round(args.devices * args.channels / args.poll),
        "seconds": round(window_s, 2),
        # median of the window's whole seconds; the mean over the window next to it
        "tags_per_s": int(np.median(chk["per_s"])) if len(chk["per_s"]) else 0,
        "tags_per_s_mean": round(tags / window_s),
        "tags_per_s_min": int(chk["per_s"].min()) if len(chk["per_s"]) else 0,
        "cpu_us_per_tag": round(r["cpu"] * 1e6 / tags, 3) if tags else None,
        "cpu_cores_gateway": round(r["cpu"] / r["wall"], 3),
        "values_checked": chk["good"] + chk["wrong"],
        "values_wrong": chk["wrong"],
        "samples_bad": chk["bad"],
        "overruns": r["overruns"],
        "device_errors": r["errors"],
        "poll_ms_median": round(r["poll_ms_median"], 2),
        "sim_processes": len(sims), "pipeline": args.pipeline, "cpus": os.cpu_count(),
    }
    print(json.dumps(out))
    return 0 if chk["wrong"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
