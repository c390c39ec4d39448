"""HJ 212 benchmark: points sent a second, and how long one day of backlog takes.

1. ``points_per_s``: real-time data (CN 2011) built by the adapter's own path (journal
   records → ``Builder`` windows → CP items → split packets with the HJ 212 CRC) for
   ``--channels`` mapped channels polled every second, and written to the platform
   simulator (``simulators/hj212_platform.py``, another process, which checks every
   packet's length and CRC) over loopback TCP, no acknowledgement awaited. The
   reference, measured in the same run: the same packets, prebuilt, only written
   (``send_only_points_per_s``), and building alone (``build_only_points_per_s``).
   Median of ``--runs``. Target: ≥ 200,000 points/s on one core.
2. ``backlog_drain_s``: a journal holding one day of the demo plant (config/demo.yaml,
   every channel every second) that the platform never got; the adapter (the real
   ``Hj212Platform``, defaults: real-time every 30 s, minutes every 10 min, hours, the
   day; 9014 awaited for every message) starts against the simulator and sends it all:
   seconds from start until nothing is left to send, and the messages acknowledged.

Last line: one JSON object. ``.venv/bin/python bench/hj212.py`` (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.config import load  # noqa: E402
from gateway.core.batch import Batch, Quality  # noqa: E402
from gateway.core.channels import ChannelTable  # noqa: E402
from gateway.core.config_regulators import Hj212Adapter  # noqa: E402
from gateway.core.config_regulators import PointMap as PointConfig  # noqa: E402
from gateway.core.record import SAMPLES, Record  # noqa: E402
from gateway.store.journal import Journal  # noqa: E402
from northbound.base import PointMap  # noqa: E402
from northbound.hj212 import codec  # noqa: E402
from northbound.hj212.adapter import Hj212Platform  # noqa: E402
from northbound.hj212.builder import Builder  # noqa: E402
from northbound.hj212.uploads import LocalTime  # noqa: E402

NS = 10**9
MN, PW = "BENCH0000000001", "123456"


def start_platform(tmp: Path) -> tuple[subprocess.Popen[str], int]:
    cfg = tmp / "platform.yaml"
    cfg.write_text("devices:\n  - {name: platform, protocol: hj212-platform, port: 0}\n")
    p = subprocess.Popen([sys.executable, "-m", "simulators", "-c", str(cfg)], cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line.startswith("READY "):
        raise SystemExit(f"platform simulator did not start: {line!r}")
    return p, int(json.loads(line[6:])["platform"]["port"])


def synthetic_table(n: int) -> tuple[ChannelTable, list[PointConfig]]:
    chans = ", ".join(f"{{name: C{i}, kind: gas, unit: ppm, address: 'input:{i}', type: int16}}"
                      for i in range(n))
    text = ("gateway: {id: b, site: s}\ndevices:\n  - {name: d, protocol: modbus-tcp, host: 127.0.0.1, "
            f"port: 1, poll: 1s, channels: [{chans}]}}\n")
    f = Path(tempfile.mkstemp(suffix=".yaml")[1])
    f.write_text(text)
    table = ChannelTable.from_config(load(f))
    f.unlink()
    return table, [PointConfig(channel=f"C{i}", code=f"a{i:05d}", decimals=3) for i in range(n)]


def records(n_channels: int, seconds: int, t0: int) -> list[Record]:
    rng = np.random.default_rng(1)
    out = []
    ch = np.arange(n_channels, dtype=np.int32)
    for s in range(seconds):
        q = np.where(rng.random(n_channels) < 0.02, Quality.COMMS, Quality.GOOD).astype(np.uint8)
        b = Batch.build(ch, t0 + s * NS, np.round(rng.random(n_channels) * 100, 3), q)
        out.append(Record(s + 1, SAMPLES, t0 + s * NS, t0 + s * NS, n_channels, b.to_bytes()))
    return out


def build(points: PointMap, recs: list[Record]) -> tuple[list[bytes], int]:
    local = LocalTime("+08:00")
    b = Builder(points, local, rtd_interval=1.0, late=0.0, periods={}, sent_until={})
    packets, n = [], 0
    head = codec.Message("2011", "", "22", PW, MN, codec.FLAG_VERSION_2017)
    ms = 0
    for r in recs:
        ups, _, _ = b.feed(r)
        for up in ups:
            ms += 1
            head.qn = local.qn(up.start_ns + ms * 1_000_000)
            packets += codec.encode_many(codec.split(head, up.items,
                                                     prefix=f"DataTime={local.datetime(up.start_ns)}"))
            n += len(up.items)
    return packets, n


async def send(port: int, packets: list[bytes]) -> None:
    """Write the packets, then one that asks for a 9014 and wait for it: the simulator has
    then read and checked every packet before it (one TCP stream, in order)."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    for p in packets:
        w.write(p)
        if w.transport.get_write_buffer_size() > 1 << 20:
            await w.drain()
    qn = "20991231235959999"
    w.write(codec.encode(codec.Message("2011", qn, "22", PW, MN, codec.FLAG_VERSION_2017 | codec.FLAG_ACK,
                                       "DataTime=20991231235959")))
    await w.drain()
    got = b""
    while f"QN={qn};ST=91;CN=9014".encode() not in got:
        chunk = await r.read(4096)
        if not chunk:
            raise SystemExit("the platform simulator closed the connection")
        got = got[-200:] + chunk
    w.close()
    await w.wait_closed()


async def build_and_send(port: int, points: PointMap, recs: list[Record]) -> int:
    packets, n = build(points, recs)  # the adapter builds a window, then writes it: same work
    await send(port, packets)
    return n


def points_per_s(port: int, n_channels: int, seconds: int, runs: int) -> dict[str, float]:
    table, pts = synthetic_table(n_channels)
    points = PointMap(pts, table)
    recs = records(n_channels, seconds, time.time_ns() // NS * NS - seconds * NS)
    full, cpu, build_only, build_cpu, send_only = [], [], [], [], []
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        n = asyncio.run(build_and_send(port, points, recs))
        full.append(n / (time.perf_counter() - t))
        cpu.append(n / (time.process_time() - c))
        t, c = time.perf_counter(), time.process_time()
        packets, n = build(points, recs)
        build_only.append(n / (time.perf_counter() - t))
        build_cpu.append(n / (time.process_time() - c))
        t = time.perf_counter()
        asyncio.run(send(port, packets))
        send_only.append(n / (time.perf_counter() - t))
    med = statistics.median
    return {"points_per_s": med(full), "points_per_cpu_s": med(cpu),
            "build_only_points_per_s": med(build_only), "build_only_points_per_cpu_s": med(build_cpu),
            "send_only_points_per_s": med(send_only),
            "points_per_run": n}


def demo_day(path: Path, table: ChannelTable, t0: int) -> int:
    """One day of every demo channel every second, one record a minute holding every
    device's polls (the gateway makes one per device and poll; fewer, larger records make
    the journal quicker to fill and keep the samples in time order; the adapter's work per
    sample is the same)."""
    rng = np.random.default_rng(2)
    n = 0
    with Journal(path, quota_bytes=10**11) as j:
        futs = []
        ch = np.array([c.index for c in table.channels], np.int32)
        for minute in range(1440):
            ts = t0 + (minute * 60 + np.arange(60, dtype=np.int64)) * NS
            cc = np.tile(ch, 60)
            tt = np.repeat(ts, len(ch))
            v = np.round(rng.random(len(cc)) * 50, 2)
            futs.append(j.submit_batch(Batch.build(cc, tt, v, np.zeros(len(cc), np.uint8))))
            n += len(cc)
            if len(futs) > 64:
                futs.pop(0).result(60)
        for f in futs:
            f.result(60)
    return n


async def drain(path: Path, table: ChannelTable, port: int, state: Path) -> tuple[float, int, int]:
    cfg = Hj212Adapter(type="hj212", name="bench", host="127.0.0.1", port=port, mn=MN, password=PW,
                       start="oldest",
                       points=[PointConfig(channel=c.name, code=f"a{c.index:05d}") for c in table.channels])
    with Journal(path, quota_bytes=10**11) as j:
        ad = Hj212Platform(cfg, j, PointMap(cfg.points, table), PW, state, time.time_ns)
        await ad.start()
        t = time.perf_counter()
        task = asyncio.create_task(ad.run())
        await ad.idle.wait()  # the journal was filled before: idle = everything sendable went
        took = time.perf_counter() - t
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await ad.stop()
        if ad.builder.late_samples:
            raise SystemExit(f"{ad.builder.late_samples} samples came late: the backlog is not the day")
        return took, ad.stats_.acked, ad.stats_.points_sent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, default=200, help="mapped channels for points_per_s")
    ap.add_argument("--seconds", type=int, default=600, help="seconds of data for points_per_s")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-backlog", action="store_true", help="skip backlog_drain_s")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        proc, port = start_platform(tmp)
        try:
            out: dict[str, float | int] = dict(points_per_s(port, args.channels, args.seconds, args.runs))
            print(f"points: {out['points_per_s']:,.0f}/s built and sent, wall clock, the simulator checking "
                  f"them in another process ({out['points_per_cpu_s']:,.0f} per CPU-second of the sender); "
                  f"reference: build only {out['build_only_points_per_s']:,.0f}/s, prebuilt packets sent "
                  f"only {out['send_only_points_per_s']:,.0f}/s; median of {args.runs}", flush=True)
            if not args.no_backlog:
                table = ChannelTable.from_config(load(ROOT / "config" / "demo.yaml"))
                t0 = (time.time_ns() // NS // 86400 - 2) * 86400 * NS - 8 * 3600 * NS  # a whole Beijing day
                t = time.perf_counter()
                n = demo_day(tmp / "journal.db", table, t0)
                print(f"backlog: one day of {len(table)} channels, {n:,} samples journaled in "
                      f"{time.perf_counter() - t:.1f} s", flush=True)
                took, acked, pts = asyncio.run(drain(tmp / "journal.db", table, port, tmp / "state"))
                print(f"backlog: drained in {took:.1f} s: {acked} messages acknowledged, {pts:,} points",
                      flush=True)
                out.update({"backlog_drain_s": took, "backlog_messages": acked, "backlog_points": pts,
                            "backlog_samples": n})
        finally:
            proc.terminate()
            proc.wait(10)
    out["target_points_per_s"] = 200_000
    print(json.dumps(out))


if __name__ == "__main__":
    main()
