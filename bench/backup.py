"""Benchmark: ``safegw backup --journal`` of a journal of ``--mb`` MB of records.

Measures, in this process, ``make_backup`` (SQLite backup API copy, zstd tar, and with a
passphrase scrypt + ChaCha20-Poly1305) against the reference measured in the same run:
a plain ``shutil.copyfile`` of the same journal file (what a file copy would cost, without
its consistency). Reports medians of ``--runs`` runs, in MB/s of journal.

    .venv/bin/python bench/backup.py [--mb 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from gateway.backup import make_backup  # noqa: E402
from gateway.core.batch import Batch  # noqa: E402
from gateway.store.journal import Journal  # noqa: E402


def fill(path: Path, mb: int) -> int:
    rng = np.random.default_rng(1)
    with Journal(path, quota_bytes=10 * mb * 10**6, sync="off") as j:
        while j.bytes < mb * 10**6:
            n = 2000
            b = Batch.build(np.arange(n) % 500, 1_700_000_000 * 10**9 + np.arange(n) * 10**6,
                            rng.normal(50, 10, n), np.zeros(n, dtype=np.uint8))
            j.append_sync([b] * 20)
        return int(j.bytes)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        state = tmp / "state"
        payload = fill(state / "journal.db", a.mb)
        size = (state / "journal.db").stat().st_size
        cfg = tmp / "gw.yaml"
        cfg.write_text(f'gateway: {{id: gw, site: "S", state_dir: "{state}"}}\ndevices: []\n')
        res: dict[str, list[float]] = {"file_copy": [], "backup_plain": [], "backup_encrypted": []}
        for i in range(a.runs):
            t = time.perf_counter()
            shutil.copyfile(state / "journal.db", tmp / "copy.db")
            with open(tmp / "copy.db", "rb") as f:
                os.fsync(f.fileno())
            res["file_copy"].append(time.perf_counter() - t)
            for kind, pw in (("backup_plain", None), ("backup_encrypted", "bench passphrase")):
                out = tmp / f"{kind}-{i}.tar.zst"
                t = time.perf_counter()
                make_backup(cfg, state, out, gateway_id="gw", journal=True, passphrase=pw)
                res[kind].append(time.perf_counter() - t)
                out.unlink()
        med = {k: statistics.median(v) for k, v in res.items()}
        for k, v in med.items():
            print(f"{k:18s} median {v:7.3f} s  {size / 1e6 / v:8.1f} MB/s")
        print(json.dumps({"bench": "backup", "journal_file_mb": round(size / 1e6, 1),
                          "payload_mb": round(payload / 1e6, 1), "runs": a.runs,
                          **{f"{k}_median_s": round(v, 3) for k, v in med.items()},
                          "backup_plain_vs_copy": round(med["backup_plain"] / med["file_copy"], 2),
                          "backup_encrypted_vs_copy": round(med["backup_encrypted"] / med["file_copy"], 2)}))


if __name__ == "__main__":
    main()
