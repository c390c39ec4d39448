"""Crash test: SIGKILL the ingesting process at random moments, many times.

A worker (tests/fixtures/crash_worker.py) appends batches and events with several commits in
flight and prints every committed sequence with a checksum. We kill it with SIGKILL at
a random moment (sometimes while it is still opening the journal, i.e. during
recovery), then check with a fresh connection, before the next round restarts it:

- every record it reported committed is there, byte for byte (checksum);
- no sequence was ever reported twice for different content (nothing reused);
- every record in the journal is one the workers generated, and none twice;
- sequences are contiguous, and any hole is covered by a recorded gap (quota variant);
- the acknowledged cursor never went back.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.core.batch import Batch
from gateway.core.record import EVENT, SAMPLES, decode_data
from gateway.store.journal import Journal
from tests.fixtures.crash_worker import digest, event_bytes, make_batch, make_event
from tests.fixtures.sims import SimProcess

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Reported:
    records: dict[int, tuple[str, int, int, str]] = field(default_factory=dict)
    acked: int = 0
    lines: int = 0


def run_round(path: Path, run: int, rep: Reported, rng: random.Random, extra: list[str]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fixtures.crash_worker", str(path), str(run), *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
    )
    ready = threading.Event()
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("ready"):
                ready.set()
            lines.append(line)

    th = threading.Thread(target=pump, daemon=True)
    th.start()
    try:
        if rng.random() < 0.15:
            time.sleep(rng.uniform(0.0, 0.4))  # the kill may land during start-up / WAL recovery
        else:
            assert ready.wait(30), "worker did not start"
            time.sleep(rng.uniform(0.02, 0.6))  # the random moment of the crash
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    th.join(10)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    for line in lines:
        if not line.endswith("\n"):
            continue  # cut by the kill before its newline: never fully reported
        parts = line.split()
        if parts[0] in ("B", "E"):
            seq, r, i = int(parts[1]), int(parts[2]), int(parts[3])
            rec = (parts[0], r, i, parts[4])
            old = rep.records.get(seq)
            assert old is None or old == rec, f"sequence {seq} reported twice: {old} then {rec}"
            rep.records[seq] = rec
            rep.lines += 1
        elif parts[0] == "A":
            rep.acked = max(rep.acked, int(parts[1]))


def check(path: Path, rep: Reported, *, quota: bool) -> dict[str, int]:
    if not path.exists():  # killed before it even created the file
        assert not rep.records
        return {"records": 0, "last": 0, "gaps": 0}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT seq, kind, n, codec, data FROM records ORDER BY seq").fetchall()
        cursor = dict(db.execute("SELECT name, seq FROM cursors").fetchall()).get("uplink", 0)
        seq_row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='records'").fetchone()
        meta = db.execute("SELECT value FROM meta WHERE key='bytes'").fetchone()[0]
        nbytes = db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM records").fetchone()[0]
    finally:
        db.close()
    assert meta == nbytes, "byte counter out of step with the records"
    present: dict[int, str] = {}
    seen: set[tuple[str, int, int]] = set()
    gaps: list[dict] = []
    for seq, kind, _n, codec, data in rows:
        raw = decode_data(codec, data)
        if kind == SAMPLES:
            b = Batch.from_bytes(raw)
            run, i = int(b.value[0]), int(b.value[1])
            assert make_batch(run, i).to_bytes() == raw, f"record {seq} is not what was generated"
            key = ("B", run, i)
        else:
            assert kind == EVENT
            ev = json.loads(raw)
            if ev["type"] == "gap":
                gaps.append({**ev, "seq": seq})
                continue
            run, i = ev["run"], ev["i"]
            assert event_bytes(make_event(run, i)) == raw
            key = ("E", run, i)
        assert key not in seen, f"duplicate record {key} (second at seq {seq})"
        seen.add(key)
        present[seq] = digest(raw)
    seqs = [r[0] for r in rows]
    last = seq_row[0] if seq_row else 0
    if seqs:
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), "hole in the sequence"
        assert seqs[-1] == last
    if quota:
        assert len(gaps) <= 1
        covered = range(gaps[0]["from_seq"], gaps[0]["to_seq"] + 1) if gaps else range(0)
        if gaps:
            assert gaps[0]["seq"] == seqs[0] == gaps[0]["to_seq"] and gaps[0]["from_seq"] == 1
            assert gaps[0]["samples"] > 0
        else:
            assert not seqs or seqs[0] == 1
    else:
        assert not gaps
        covered = range(0)
        assert not seqs or seqs[0] == 1
    for seq, (_k, _r, _i, sha) in rep.records.items():
        if seq in covered and seq not in present:
            continue
        assert seq in present, f"reported-committed record {seq} is missing"
        assert present[seq] == sha, f"record {seq} differs from what was reported"
    assert cursor >= rep.acked, f"cursor went back: {cursor} < {rep.acked}"
    assert cursor <= last
    return {"records": len(rows), "last": last, "gaps": len(gaps)}


def crash_rounds(tmp_path: Path, rounds: int, extra: list[str], *, quota: bool, seed: int) -> None:
    path = tmp_path / "journal.db"
    rep = Reported()
    rng = random.Random(seed)
    deadline = time.monotonic() + 150
    facts: dict[str, int] = {}
    for run in range(rounds):
        run_round(path, run, rep, rng, extra)
        facts = check(path, rep, quota=quota)
        assert time.monotonic() < deadline, "crash test over its time bound"
    assert rep.lines > 100, "the worker hardly committed anything; the test proves little"
    # a clean restart through the Journal itself: opens without repair, continues the sequence
    with Journal(path, quota_bytes=10**12) as j:
        assert j.last_seq == facts["last"]
        assert j.submit_event({"type": "after", "ts": 1}).result() == facts["last"] + 1
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    print(f"crash test: {rounds} kills, {rep.lines} reported records, {facts}", file=sys.stderr)


def check_gateway_journal(path: Path, reported: dict[int, tuple[int, str]]) -> int:
    """Every reported record present and identical; contiguous sequences; no sample
    (channel, timestamp) twice, i.e. no batch journaled twice."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT seq, kind, codec, data FROM records ORDER BY seq").fetchall()
    finally:
        db.close()
    present: dict[int, str] = {}
    seen: set[tuple[int, int]] = set()
    for seq, kind, codec, data in rows:
        raw = decode_data(codec, data)
        present[seq] = digest(raw)
        if kind == SAMPLES:
            b = Batch.from_bytes(raw)
            pairs = set(zip(b.channel.tolist(), b.ts.tolist(), strict=True))
            assert not pairs & seen, f"record {seq} repeats samples already journaled"
            seen |= pairs
    seqs = [r[0] for r in rows]
    assert seqs == list(range(1, len(seqs) + 1)), "hole in the sequence"
    for seq, (_kind, sha) in reported.items():
        assert present.get(seq) == sha, f"reported-committed record {seq} missing or different"
    return len(rows)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_gateway_polling_simulators(tmp_path: Path, modbus_plant: SimProcess) -> None:
    """The real daemon, polling the Modbus simulators (TCP and RTU over a pty), killed
    at random moments 6 times: what it committed survives, nothing is journaled twice."""
    from tests.fixtures.sims import gateway_yaml

    cfg = tmp_path / "gw.yaml"
    cfg.write_text(gateway_yaml(modbus_plant, tmp_path / "state", poll="200ms"))
    path = tmp_path / "state" / "journal.db"
    reported: dict[int, tuple[int, str]] = {}
    rng = random.Random(3)
    deadline = time.monotonic() + 150
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-m", "tests.fixtures.crash_worker", "--gateway", str(cfg)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready = threading.Event()
        lines: list[str] = []

        def pump(p: subprocess.Popen[str] = proc, out: list[str] = lines,
                 ev: threading.Event = ready) -> None:
            assert p.stdout is not None
            for line in p.stdout:
                if line.startswith("ready"):
                    ev.set()
                out.append(line)

        th = threading.Thread(target=pump, daemon=True)
        th.start()
        try:
            if not ready.wait(30):
                proc.kill()
                raise AssertionError(f"gateway did not start: {proc.communicate()[1][-3000:]}")
            time.sleep(rng.uniform(0.5, 2.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        th.join(10)
        for line in lines:
            parts = line.split()
            if line.endswith("\n") and parts[0] == "G":
                seq, rec = int(parts[1]), (int(parts[2]), parts[3])
                assert reported.get(seq, rec) == rec, f"sequence {seq} reported twice"
                reported[seq] = rec
        check_gateway_journal(path, reported)
        assert time.monotonic() < deadline
    assert len(reported) > 20, "the gateway hardly committed anything"
    n = check_gateway_journal(path, reported)
    print(f"gateway crash test: 6 kills, {len(reported)} reported, {n} records", file=sys.stderr)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_loses_no_committed_batch(tmp_path: Path) -> None:
    crash_rounds(tmp_path, 20, ["--ack"], quota=False, seed=int(os.environ.get("CRASH_SEED", "1")))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_with_quota_gaps_are_recorded(tmp_path: Path) -> None:
    """A small quota with a consumer that never acknowledges: what retention drops is
    covered by the one (folded) gap record; everything else reported is intact."""
    crash_rounds(tmp_path, 6, ["--quota", "400000"], quota=True, seed=2)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_with_commit_cadence_loses_no_committed_batch(tmp_path: Path) -> None:
    """With a commit cadence (journal.commit_every) a commit still means on disk: every
    batch reported committed survives SIGKILL; the cadence only delays when it is taken."""
    crash_rounds(tmp_path, 8, ["--ack", "--inflight", "64", "--commit-every", "0.25"], quota=False, seed=3)
