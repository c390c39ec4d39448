"""Benchmark: OPC-UA driver throughput against the OPC-UA simulator (separate process, loopback TCP).

1. **poll**: the real ``OpcUaPollDriver`` reads 1,000 and then 10,000 Double nodes, one
   bulk ``Read`` a cycle, back to back for ``--seconds`` each. ``values_per_s`` is
   nodes / median cycle time (decode, status codes, timestamps and the Batch
   included). The server's values are frozen meanwhile (a ``silent`` fault through
   the simulator's control line), so it only answers reads, and it answers them from
   a cache of encoded values (``fast_read``: asyncua's own server spends ≈ 50 CPU-µs
   a node, which would measure the simulator, not the gateway).
2. **subscribe**: the real ``OpcUaSubscribeDriver`` monitors the 10,000 nodes while the
   simulator rewrites ``--offered`` of them per second; ``notifications_per_s`` is
   what reached the sink. This figure is bounded by the (pure Python) server's write
   rate, reported next to it as ``offered_per_s``.

CPU is reported per value on both sides (this process: the driver; the simulator:
asyncua's server, which is what bounds the cycle time). Target: ≥ 20,000
values/s in poll mode with 10,000 nodes. Last line: one JSON object of medians.

    .venv/bin/python bench/poll_opcua.py [--nodes 10000] [--seconds 6] [--offered 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drivers.base import make_driver  # noqa: E402
from gateway.core.batch import Batch, Quality  # noqa: E402
from gateway.core.channels import ChannelTable  # noqa: E402
from gateway.core.config import Config  # noqa: E402


def gateway_config(endpoint: str, nodes: int, mode: str, state_dir: str) -> Config:
    chans = [{"name": f"B{k:06d}", "kind": "other", "node": f"ns=2;s=Bulk.{k:06d}"} for k in range(nodes)]
    dev: dict[str, Any] = {"name": "dcs", "protocol": "opcua", "endpoint": endpoint, "mode": mode,
                           "poll": "10s", "timeout": "10s", "channels": chans}
    if mode == "subscribe":
        dev.update({"sampling_interval": "250ms", "queue_size": 1})
    return Config.model_validate({"gateway": {"id": "bench", "site": "bench", "state_dir": state_dir},
                                  "devices": [dev]})


def driver(endpoint: str, nodes: int, mode: str, state_dir: str) -> Any:
    cfg = gateway_config(endpoint, nodes, mode, state_dir)
    return make_driver(cfg.devices[0], ChannelTable.from_config(cfg).by_device["dcs"])


class Sim:
    """``python -m simulators --control`` in its own process."""

    def __init__(self, nodes: int, offered: int, tmp: Path):
        tick = 0.25
        cfg = {"signals": {}, "tick": f"{int(tick * 1000)}ms",
               "devices": [{"name": "dcs", "protocol": "opcua", "bulk": nodes, "fast_read": True,
                            "bulk_update": max(1, int(offered * tick))}]}
        path = tmp / "sim.json"
        path.write_text(json.dumps(cfg))
        self.proc = subprocess.Popen([sys.executable, "-m", "simulators", "-c", str(path), "--control"],
                                     cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.offered_per_s = max(1, int(offered * tick)) / tick

    def ready(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            raise SystemExit(f"simulator did not start: {line!r}")
        return str(json.loads(line[6:])["dcs"]["endpoint"])

    def control(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if '"ok"' not in reply:
            raise SystemExit(f"simulator refused {msg}: {reply!r}")

    def cpu_s(self) -> float:
        """CPU seconds the simulator process has used (user + system)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def bench_poll(endpoint: str, nodes: int, seconds: float, state_dir: str) -> dict[str, float]:
    drv = driver(endpoint, nodes, "poll", state_dir)
    await drv.open()
    try:
        await drv.poll()  # warm-up
        times: list[float] = []
        cpu0 = time.process_time()
        t_end = time.perf_counter() + seconds
        good = 0
        while time.perf_counter() < t_end or len(times) < 3:
            t0 = time.perf_counter()
            b = await drv.poll()
            times.append(time.perf_counter() - t0)
            good += int((b.quality == Quality.GOOD).sum())
        cpu = time.process_time() - cpu0
        assert good == nodes * len(times), "every value must come back good"
        med = statistics.median(times)
        return {"values_per_s": nodes / med, "cycle_ms": med * 1e3, "cycles": len(times),
                "cpu_us_per_value": cpu / (nodes * len(times)) * 1e6}
    finally:
        await drv.close()


async def bench_subscribe(endpoint: str, nodes: int, seconds: float, state_dir: str) -> dict[str, float]:
    drv = driver(endpoint, nodes, "subscribe", state_dir)
    counts: list[tuple[float, int]] = []
    first = asyncio.Event()

    def sink(b: Batch) -> None:
        counts.append((time.perf_counter(), len(b)))
        if sum(n for _, n in counts) >= nodes:
            first.set()

    await drv.open()
    task = asyncio.create_task(drv.stream(sink))
    try:
        # the first publish carries every node's current value: wait for it, then measure
        await asyncio.wait_for(first.wait(), 60)
        counts.clear()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        dt = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        n = sum(k for _, k in counts)
        return {"notifications_per_s": n / dt, "publishes": len(counts),
                "cpu_us_per_notification": cpu / max(n, 1) * 1e6}
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await drv.close()


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-opcua-") as tmp:
        sim = Sim(args.nodes, args.offered, Path(tmp))
        try:
            endpoint = await asyncio.to_thread(sim.ready)
            startup = time.perf_counter() - t_start
            print(f"simulator with {args.nodes} nodes up in {startup:.1f}s: {endpoint}", flush=True)
            # keep inside two minutes on a busy machine: shorten the windows if startup was slow
            seconds = max(2.0, min(args.seconds, (100 - startup) / 4))
            await asyncio.to_thread(sim.control, {"fault": "dcs", "kind": "silent"})
            small = await bench_poll(endpoint, min(1000, args.nodes), seconds, tmp)
            print(f"poll 1,000 nodes: {small['values_per_s']:,.0f} values/s, "
                  f"cycle {small['cycle_ms']:.1f} ms", flush=True)
            sim_cpu0 = sim.cpu_s()
            big = await bench_poll(endpoint, args.nodes, seconds, tmp)
            server_us = (sim.cpu_s() - sim_cpu0) / (args.nodes * big["cycles"]) * 1e6
            print(f"poll {args.nodes:,} nodes: {big['values_per_s']:,.0f} values/s, "
                  f"cycle {big['cycle_ms']:.1f} ms, {big['cpu_us_per_value']:.1f} CPU-µs/value here, "
                  f"{server_us:.1f} in the simulator", flush=True)
            await asyncio.to_thread(sim.control, {"clear": "dcs"})
            sim_cpu0, t_sub = sim.cpu_s(), time.perf_counter()
            sub = await bench_subscribe(endpoint, args.nodes, seconds, tmp)
            # share of one core the simulator used while it was writing (it, not the driver, is the limit)
            sim_busy = (sim.cpu_s() - sim_cpu0) / (time.perf_counter() - t_sub)
            print(f"subscribe {args.nodes:,} nodes: {sub['notifications_per_s']:,.0f} notifications/s "
                  f"(server asked to change {sim.offered_per_s:,.0f}/s; simulator busy {sim_busy:.0%} "
                  "of a core, "
                  f"{sub['cpu_us_per_notification']:.1f} CPU-µs/notification here)", flush=True)
        finally:
            sim.stop()
    return {
        "values_per_s": round(big["values_per_s"]),
        "nodes": args.nodes,
        "poll_cycle_ms": round(big["cycle_ms"], 2),
        "cpu_us_per_value": round(big["cpu_us_per_value"], 2),
        "server_cpu_us_per_value": round(server_us, 2),
        "values_per_s_1k": round(small["values_per_s"]),
        "poll_cycle_ms_1k": round(small["cycle_ms"], 2),
        "notifications_per_s": round(sub["notifications_per_s"]),
        "offered_per_s": round(sim.offered_per_s),
        "simulator_core_share_subscribe": round(sim_busy, 2),
        "cpu_us_per_notification": round(sub["cpu_us_per_notification"], 2),
        "target_values_per_s": 20000,
        "seconds": round(time.perf_counter() - t_start, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=6.0, help="measuring window per figure")
    p.add_argument("--offered", type=int, default=10_000, help="value changes per second the server makes")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    print(json.dumps(asyncio.run(amain(args))))


if __name__ == "__main__":
    main()
