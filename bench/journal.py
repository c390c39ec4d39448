"""Journal benchmark: durable ingest rate, and restart time on a 1 GB journal.

1. Ingest: batches of 1,000 samples (one poll of 1,000 channels: one timestamp,
   plausible values with three decimals, a few bad qualities) are submitted with at most
   ``--window`` batches in flight, as the gateway does; a sample counts once the future
   of its batch resolved, i.e. once its transaction is committed with the journal's
   default ``synchronous=FULL`` (fsync of the WAL on every group commit) and zstd
   compression. Repeated ``--runs`` times; the median is reported.
2. Restart: a journal file of ``--restart-gb`` GB is built (uncompressed batches, quickly,
   with synchronous=OFF: only its size matters), then a fresh process times
   ``Journal(path)`` from the call to ready (writer thread up, counters loaded), after
   a clean close and after ``kill -9`` of a process that was writing (WAL recovery).
   Medians of ``--runs``.

Prints progress, then as its last line one JSON object with at least ``samples_per_s``
and ``restart_s`` (the worse of the clean and the kill -9 restart). Cleans up its files.

    .venv/bin/python bench/journal.py            # the issue's target workload
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.core.batch import Batch  # noqa: E402
from gateway.store.journal import Journal  # noqa: E402

T0 = 1_780_000_000 * 10**9


def poll_batches(n_channels: int, count: int, seed: int = 1) -> list[Batch]:
    """``count`` polls of ``n_channels`` channels (built before timing starts)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 100, n_channels)
    ch = np.arange(n_channels, dtype=np.int32)
    out = []
    for i in range(count):
        value = np.round(base + rng.normal(0, 0.5, n_channels), 3)
        q = np.zeros(n_channels, np.uint8)
        q[rng.integers(0, n_channels, 3)] = 0x81
        out.append(Batch.build(ch, T0 + i * 10**9 + rng.integers(0, 10**6), value, q))
    return out


def ingest_run(path: Path, batches: list[Batch], seconds: float, window: int) -> dict[str, float]:
    j = Journal(path)
    pending: collections.deque = collections.deque()
    done_batches = 0
    samples = 0
    t0 = time.perf_counter()
    c0 = time.process_time()
    deadline = t0 + seconds
    k = 0
    try:
        while time.perf_counter() < deadline:
            pending.append(j.submit_batch(batches[k % len(batches)]))
            k += 1
            if len(pending) >= window:
                pending.popleft().result()
                done_batches += 1
        while pending:
            pending.popleft().result()
            done_batches += 1
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        samples = done_batches * len(batches[0])
        commits = j.commits
    finally:
        j.close()
    return {"samples_per_s": samples / elapsed, "batches": done_batches, "commits": commits,
            "cpu_us_per_batch": cpu / max(done_batches, 1) * 1e6,
            "seconds": elapsed, "file_mb": path.stat().st_size / 1e6}


def build_big(path: Path, gb: float) -> float:
    """A journal of ``gb`` GB on disk; returns seconds taken."""
    t = time.perf_counter()
    batches = poll_batches(1000, 64, seed=7)
    j = Journal(path, sync="off", compress=False, quota_bytes=10**13)
    target = gb * 1e9
    k = 0
    try:
        while True:
            futs = [j.submit_batch(batches[(k + i) % len(batches)]) for i in range(2000)]
            k += 2000
            futs[-1].result()
            if path.stat().st_size + _wal(path) >= target:
                break
    finally:
        j.close()
    return time.perf_counter() - t


def _wal(path: Path) -> int:
    w = path.with_name(path.name + "-wal")
    return w.stat().st_size if w.exists() else 0


_OPEN = """
import sys, time, json
t_start = time.perf_counter()
sys.path.insert(0, {root!r})
from gateway.store.journal import Journal
t_import = time.perf_counter()
j = Journal({path!r}, quota_bytes=10**13)
t_ready = time.perf_counter()
last = j.last_seq
j.close()
print(json.dumps({{"open_s": t_ready - t_import, "process_s": t_ready - t_start, "last_seq": last}}))
"""

_WRITE_FOREVER = """
import sys, time
sys.path.insert(0, {root!r})
import numpy as np
from gateway.core.batch import Batch
from gateway.store.journal import Journal
j = Journal({path!r}, quota_bytes=10**13)
b = Batch.build(np.arange(1000), time.time_ns(), np.random.default_rng(0).random(1000), 0)
print("writing", flush=True)
while True:
    futs = [j.submit_batch(b) for _ in range(200)]
    futs[-1].result()
"""


def timed_open(path: Path) -> dict[str, float]:
    r = subprocess.run([sys.executable, "-c", _OPEN.format(root=str(ROOT), path=str(path))],
                       capture_output=True, text=True, timeout=120, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def crash_while_writing(path: Path, seconds: float) -> None:
    p = subprocess.Popen([sys.executable, "-c", _WRITE_FOREVER.format(root=str(ROOT), path=str(path))],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    p.stdout.readline()  # "writing"
    time.sleep(seconds)  # let the WAL grow, then kill -9 at whatever moment this is
    p.send_signal(signal.SIGKILL)
    p.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of one ingest run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--window", type=int, default=64, help="batches in flight")
    ap.add_argument("--restart-gb", type=float, default=1.0)
    ap.add_argument("--dir", default=None, help="where to put the journals (default: a temp dir)")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="safegw-bench-journal-", dir=args.dir))
    try:
        batches = poll_batches(1000, 200)
        runs = []
        for r in range(args.runs):
            res = ingest_run(work / f"ingest{r}.db", batches, args.seconds, args.window)
            runs.append(res)
            print(f"ingest run {r + 1}: {res['samples_per_s']:,.0f} samples/s durable "
                  f"({res['batches']} batches in {res['commits']} commits, {res['seconds']:.1f}s, "
                  f"{res['file_mb']:.0f} MB, {res['cpu_us_per_batch']:.0f} CPU-µs a batch in all threads)",
                  flush=True)
            for f in work.glob(f"ingest{r}.db*"):
                f.unlink()

        big = work / "big.db"
        built = build_big(big, args.restart_gb)
        size = big.stat().st_size + _wal(big)
        print(f"built a {size / 1e9:.2f} GB journal in {built:.1f}s", flush=True)
        clean = [timed_open(big) for _ in range(args.runs)]
        for c in clean:
            print(f"restart after clean close: Journal() ready in {c['open_s'] * 1e3:.1f} ms "
                  f"(whole process {c['process_s']:.2f}s)", flush=True)
        crashed = []
        for _ in range(args.runs):
            crash_while_writing(big, 1.5)
            wal = _wal(big)
            res = timed_open(big)
            crashed.append(res)
            print(f"restart after kill -9 (WAL {wal / 1e6:.0f} MB): Journal() ready in "
                  f"{res['open_s'] * 1e3:.1f} ms (whole process {res['process_s']:.2f}s)", flush=True)
        size = big.stat().st_size + _wal(big)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    restart_clean = med(c["open_s"] for c in clean)
    restart_crash = med(c["open_s"] for c in crashed)
    out = {
        "samples_per_s": round(med(r["samples_per_s"] for r in runs)),
        "batch_samples": 1000,
        "sync": "full",
        "compress": True,
        "window": args.window,
        "commits_per_s": round(med(r["commits"] / r["seconds"] for r in runs), 1),
        # load-independent: CPU time of the whole process (producer, encoder, writer) per
        # 1,000-sample batch; 1e9 / this = samples/s one free core could sustain
        "cpu_us_per_batch": round(med(r["cpu_us_per_batch"] for r in runs), 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "restart_s": round(max(restart_clean, restart_crash), 4),
        "restart_clean_s": round(restart_clean, 4),
        "restart_after_kill_s": round(restart_crash, 4),
        "restart_process_s": round(med(c["process_s"] for c in crashed), 3),
        "journal_gb": round(size / 1e9, 2),
        "target_samples_per_s": 2_000_000,
        "target_restart_s": 1.0,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
