"""``safegw backup`` / ``safegw restore`` (gateway/backup.py) through the CLI, against a
real daemon subprocess polling the Modbus simulators.

The archive's plain form is checked with tools the project did not write: GNU tar and
the zstd command line (``tar --zstd -tvf``) list the unencrypted archive. The snapshot
is taken while the daemon commits records; the restored files are compared with the
originals row by row (journal records, registers) and byte for byte (keys, tokens)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zstandard

from gateway.admin.registers.db import open_db
from gateway.cli import main
from gateway.core.batch import Batch
from gateway.store.journal import Journal
from tests.fixtures.helpers import db_rows as rows
from tests.fixtures.helpers import journal_last_seq as last_seq
from tests.fixtures.helpers import mount_tmpfs, wait_until
from tests.fixtures.sims import SimProcess, gateway_yaml

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT, env=ENV, text=True,
                          capture_output=True, timeout=120, input=stdin if stdin is not None else "")


def inproc(*args: str) -> subprocess.CompletedProcess[str]:
    """The same command run in this process (a CLI subprocess costs seconds under load)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def plant_state(tmp_path: Path, modbus_plant: SimProcess) -> tuple[Path, Path, Path]:
    """A config, a state dir with keys, a token, registers; a passphrase file."""
    state = tmp_path / "state"
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(gateway_yaml(modbus_plant, state, poll="200ms"))
    # the real commands, in this process (each CLI subprocess costs seconds under load)
    assert main(["keys", "init", "-c", str(cfg)]) == 0
    assert main(["users", "add", "ops", "--role", "operator", "-c", str(cfg)]) == 0
    db = open_db(state / "registers.db")
    for i in range(30):
        db.execute("INSERT INTO records(type, version, state, created_ns, created_by, updated_ns, updated_by,"
                   " data) VALUES ('hot-work', 1, 'open', ?, 'ann', ?, 'ann', ?)",
                   (i, i, json.dumps({"n": i, "who": "张三"})))
    db.close()
    pw = tmp_path / "pw"
    pw.write_text("correct horse battery\n")
    pw.chmod(0o600)
    return cfg, state, pw


def start(cfg: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(cfg), *extra], cwd=ROOT,
                            env=ENV, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(p: subprocess.Popen[str]) -> str:
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err[-3000:]
    return err


Plant = tuple[Path, Path, Path]


def test_backup_during_ingest_restores_identical_and_carries_on(tmp_path: Path, plant_state: Plant) -> None:
    cfg, state, pw = plant_state
    jpath = state / "journal.db"
    gw = start(cfg)
    try:
        wait_until(lambda: last_seq(jpath) >= 5, timeout=30, what="the daemon's first records")
        db = sqlite3.connect(jpath)  # a consumer's cursor, as the uplink would keep it
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("INSERT OR REPLACE INTO cursors VALUES ('uplink', 3, 1)")
        db.commit()
        db.close()
        archive = tmp_path / "full.tar.zst"
        r = cli("backup", "-c", str(cfg), "-o", str(archive), "--journal", "--passphrase-file", str(pw))
        assert r.returncode == 0, r.stderr
        n_at_backup = last_seq(jpath)
        # the daemon kept on writing meanwhile and after
        wait_until(lambda: last_seq(jpath) > n_at_backup + 3, timeout=30, what="records after the backup")
    finally:
        stop(gw)
    assert archive.stat().st_mode & 0o777 == 0o600
    assert b"hot-work" not in archive.read_bytes() and b"node.json" not in archive.read_bytes()

    cfg2, state2 = tmp_path / "restored.yaml", tmp_path / "fresh" / "state"
    r = cli("restore", str(archive), "-c", str(cfg2), "--state-dir", str(state2),
            "--passphrase-file", str(pw))
    assert r.returncode == 0, r.stderr
    assert cfg2.read_bytes() == cfg.read_bytes()
    j2 = state2 / "journal.db"
    restored = rows(j2, "SELECT * FROM records ORDER BY seq")
    assert len(restored) >= 5
    top = int(restored[-1][0])
    # a consistent prefix of what the daemon wrote: every record byte for byte, no gap
    assert restored == rows(jpath, f"SELECT * FROM records WHERE seq <= {top} ORDER BY seq")
    assert [r[0] for r in restored] == list(range(int(restored[0][0]), top + 1))
    cursors = dict(rows(j2, "SELECT name, seq FROM cursors"))
    final = dict(rows(jpath, "SELECT name, seq FROM cursors"))
    assert cursors["uplink"] == 3 and set(cursors) == set(final)
    # taken in the same snapshot as the records: no cursor beyond the last record, none ahead of later
    assert all(cursors[k] <= top and cursors[k] <= final[k] for k in cursors), (cursors, final, top)
    assert f"cursors {json.dumps(cursors, sort_keys=False)}" in r.stdout or json.loads(
        r.stdout.split("cursors ", 1)[1].splitlines()[0]) == cursors
    q = "SELECT * FROM records ORDER BY id"
    assert rows(state2 / "registers.db", q) == rows(state / "registers.db", q)
    for rel in ("keys/node.json", "users.json"):
        assert (state2 / rel).read_bytes() == (state / rel).read_bytes()
    for p in state2.rglob("*"):
        assert p.stat().st_mode & 0o777 == (0o700 if p.is_dir() else 0o600), p
    assert state2.stat().st_mode & 0o777 == 0o700

    # the restored gateway starts and carries on after the last restored record
    gw2 = start(cfg, "--state-dir", str(state2))
    try:
        wait_until(lambda: last_seq(j2) > top + 2, timeout=30, what="the restored daemon's new records")
    finally:
        stop(gw2)
    assert rows(j2, f"SELECT * FROM records WHERE seq <= {top} ORDER BY seq") == restored
    after = dict(rows(j2, "SELECT name, seq FROM cursors"))
    assert after["uplink"] == 3  # nobody consumes it here: left where the backup had it
    assert all(after[k] >= cursors[k] for k in cursors)  # the consumers resumed from their cursors


def test_cursors_only_backup_continues_the_sequence(tmp_path: Path, plant_state: Plant) -> None:
    cfg, state, _ = plant_state
    jpath = state / "journal.db"
    gw = start(cfg)
    try:
        wait_until(lambda: last_seq(jpath) >= 3, timeout=30, what="the daemon's first records")
        archive = tmp_path / "cur.tar.zst"
        r = cli("backup", "-c", str(cfg), "-o", str(archive), "--no-secrets")
        assert r.returncode == 0, r.stderr
    finally:
        stop(gw)
    # the plain archive is an ordinary zstd-compressed tar: GNU tar and zstd list it
    listing = subprocess.run(["tar", "--zstd", "-tvf", str(archive)], capture_output=True, text=True,
                             check=True)
    names = {line.split()[-1] for line in listing.stdout.splitlines()}
    assert {"manifest.json", "config.yaml", "state/journal.db", "state/registers.db"} <= names
    assert not any("keys/" in n or "users.json" in n for n in names), names  # secrets left out
    manifest = json.loads(zstd_tar_member(archive, "manifest.json"))
    assert manifest["journal"] == "cursors" and "users.json" in manifest["left_out"]
    state2 = tmp_path / "s2"
    r = cli("restore", str(archive), "-c", str(tmp_path / "r.yaml"), "--state-dir", str(state2))
    assert r.returncode == 0, r.stderr
    j2 = state2 / "journal.db"
    assert rows(j2, "SELECT COUNT(*) FROM records") == [(0,)]
    seq_then = rows(j2, "SELECT seq FROM sqlite_sequence WHERE name='records'")[0][0]
    assert seq_then >= 3
    gw2 = start(cfg, "--state-dir", str(state2))
    try:
        wait_until(lambda: last_seq(j2) > 0, timeout=30, what="the restored daemon's first record")
    finally:
        stop(gw2)
    assert rows(j2, "SELECT MIN(seq) FROM records")[0][0] == seq_then + 1  # the sequence carries on


def zstd_tar_member(archive: Path, name: str) -> bytes:
    with archive.open("rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as z, \
            tarfile.open(fileobj=z, mode="r|") as tar:
        for m in tar:
            if m.name == name:
                fo = tar.extractfile(m)
                assert fo is not None
                return fo.read()
    raise AssertionError(f"{name} not in {archive}")


def test_refusals_and_damage(tmp_path: Path, plant_state: Plant) -> None:
    cfg, state, pw = plant_state
    archive = tmp_path / "a.tar.zst"
    # no passphrase and no --no-secrets: refused, nothing written
    r = inproc("backup", "-c", str(cfg), "-o", str(archive))
    assert r.returncode == 1 and "--no-secrets" in r.stderr and "--passphrase-file" in r.stderr
    assert not archive.exists()
    # a passphrase file readable by others is refused
    loose = tmp_path / "loose"
    loose.write_text("correct horse battery\n")
    loose.chmod(0o644)
    r = inproc("backup", "-c", str(cfg), "-o", str(archive), "--passphrase-file", str(loose))
    assert r.returncode == 1 and "readable by others" in r.stderr
    r = inproc("backup", "-c", str(cfg), "-o", str(archive), "--passphrase-file", str(pw))
    assert r.returncode == 0, r.stderr
    data = archive.read_bytes()

    def restore(blob: bytes, pwfile: Path, dest: str) -> tuple[int, str]:
        a = tmp_path / f"{dest}.tar.zst"
        a.write_bytes(blob)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):  # the real command, in this process
            code = main(["restore", str(a), "-c", str(tmp_path / f"{dest}.yaml"), "--state-dir",
                         str(tmp_path / dest), "--passphrase-file", str(pwfile)])
        return code, err.getvalue()

    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n")
    wrong.chmod(0o600)
    code, err = restore(data, wrong, "w")
    assert code == 1 and "wrong passphrase" in err
    code, err = restore(data[:-10], pw, "t")
    assert code == 1 and "cut off" in err
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 1
    code, err = restore(bytes(flipped), pw, "f")
    assert code == 1 and "chunk 0 was altered" not in err and "was altered" in err, err
    for d in ("w", "t", "f"):  # nothing restored from a bad archive
        assert not (tmp_path / d).exists() and not (tmp_path / f"{d}.yaml").exists()
    # a non-empty state dir is refused without --force, and says so
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    r = inproc("restore", str(archive), "-c", str(tmp_path / "b.yaml"), "--state-dir", str(busy),
            "--passphrase-file", str(pw))
    assert r.returncode == 1 and "not empty" in r.stderr and "--force" in r.stderr
    r = inproc("restore", str(archive), "-c", str(tmp_path / "b.yaml"), "--state-dir", str(busy),
            "--passphrase-file", str(pw), "--force")
    assert r.returncode == 0, r.stderr
    assert (busy / "keys" / "node.json").read_bytes() == (state / "keys" / "node.json").read_bytes()


def test_hostile_archive_member_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    a = tmp_path / "evil.tar.zst"
    a.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
    r = inproc("restore", str(a), "-c", str(tmp_path / "c.yaml"), "--state-dir", str(tmp_path / "s"))
    assert r.returncode == 1 and "not a plain relative path" in r.stderr
    assert not (tmp_path.parent / "escape").exists()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MB tmpfs for the archive (needs root; skipped otherwise)."""
    yield from mount_tmpfs(tmp_path, "1m")


def test_full_disk_leaves_no_half_archive_and_the_state_untouched(tmp_path: Path, small_tmpfs: Path) -> None:
    state = tmp_path / "state"
    rng = np.random.default_rng(7)
    with Journal(state / "journal.db", compress=False) as j:  # ~3 MB of noise: does not fit in 1 MB
        for i in range(30):
            n = 4000
            j.append_sync([Batch.build(np.arange(n) % 50, 10**18 + i * n + np.arange(n), rng.normal(0, 1, n),
                                       np.zeros(n, dtype=np.uint8))])
        j.register("uplink")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f'gateway: {{id: gw, site: "S", state_dir: "{state}"}}\ndevices: []\n')
    before = rows(state / "journal.db", "SELECT * FROM records ORDER BY seq")
    out = small_tmpfs / "b.tar.zst"
    r = inproc("backup", "-c", str(cfg), "-o", str(out), "--journal", "--no-secrets")
    assert r.returncode == 1 and "journal.db: cannot copy it" in r.stderr, r.stderr
    assert "disk is full" in r.stderr or "No space left" in r.stderr, r.stderr
    assert list(small_tmpfs.iterdir()) == []  # neither the archive nor its .part
    assert rows(state / "journal.db", "SELECT * FROM records ORDER BY seq") == before


def test_bad_manifest_is_refused_with_the_reason(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("manifest.json", b'{"format": "safegw-backup/1", "files": [1, 2]}'),
                           ("config.yaml", b"gateway: {}\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    a = tmp_path / "bad.tar.zst"
    a.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
    r = inproc("restore", str(a), "-c", str(tmp_path / "c.yaml"), "--state-dir", str(tmp_path / "s"))
    assert r.returncode == 1 and "'files' is not a map" in r.stderr
    assert not (tmp_path / "s").exists() and not (tmp_path / "c.yaml").exists()
