"""Schema versions of the SQLite files (gateway/store/versions.py): a file made the old way
(before versions) migrates forward keeping every byte of its rows; a file claiming a newer
version is refused untouched with a message saying why; a SIGKILL in the middle of a
migration leaves the old file usable. ``PRAGMA user_version`` is SQLite's own header field
(https://sqlite.org/pragma.html#pragma_user_version), read here with plain sqlite3."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from central.state import SqliteState
from gateway.admin.registers.db import open_db
from gateway.store.journal import Journal
from gateway.store.versions import SchemaTooNew, backup_path
from tests.fixtures.crash_worker import make_batch

ROOT = Path(__file__).resolve().parents[2]

# The journal's tables exactly as safegw wrote them before schema versions (commit 9948768):
# created here the old way, with executescript and no user_version.
OLD_JOURNAL = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kind INTEGER NOT NULL, ts_min INTEGER NOT NULL,
    ts_max INTEGER NOT NULL, n INTEGER NOT NULL, nbytes INTEGER NOT NULL, codec INTEGER NOT NULL,
    data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS cursors (name TEXT PRIMARY KEY, seq INTEGER NOT NULL, updated INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta(key, value) VALUES ('bytes', 0);
"""


def old_journal(path: Path, n: int = 20) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    db.executescript(OLD_JOURNAL)
    for i in range(1, n + 1):
        data = hashlib.sha256(str(i).encode()).digest() * 4
        db.execute("INSERT INTO records(kind, ts_min, ts_max, n, nbytes, codec, data) VALUES (1,?,?,1,?,0,?)",
                   (i, i, len(data), data))
    db.execute("INSERT INTO cursors VALUES ('uplink', 7, 1)")
    db.execute("UPDATE meta SET value=? WHERE key='bytes'", (n * 128,))
    db.commit()
    rows = db.execute("SELECT * FROM records ORDER BY seq").fetchall()
    db.close()
    return rows


def version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_journal_made_before_versions_migrates_keeping_rows(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    rows = old_journal(path)
    assert version(path) == 0
    with Journal(path) as j:
        assert j.cursor("uplink") == 7
        assert j.last_seq == 20
        j.append_sync([make_batch(1, 99)])
    assert version(path) == 1
    db = sqlite3.connect(path)
    assert db.execute("SELECT * FROM records WHERE seq<=20 ORDER BY seq").fetchall() == rows
    db.close()
    assert not backup_path(path, 0).exists()  # the copy goes once the migration is committed


def test_new_journal_is_stamped(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    Journal(path).close()
    assert version(path) == 1


def test_registers_made_before_versions_gain_missing_tables(tmp_path: Path) -> None:
    path = tmp_path / "registers.db"
    db = sqlite3.connect(path)  # an early registers file: records only, no audit/reminders tables
    db.executescript("""CREATE TABLE records (id INTEGER PRIMARY KEY AUTOINCREMENT, type TEXT NOT NULL,
        version INTEGER NOT NULL, state TEXT, archived INTEGER NOT NULL DEFAULT 0,
        created_ns INTEGER NOT NULL, created_by TEXT NOT NULL, updated_ns INTEGER NOT NULL,
        updated_by TEXT NOT NULL, data TEXT NOT NULL);
        INSERT INTO records VALUES (1, 'hot-work', 1, 'open', 0, 5, 'ann', 5, 'ann', '{"who": "张三"}');""")
    db.close()
    db = open_db(path)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"records", "changes", "attachments", "reminders", "audit"} <= tables
        assert db.execute("SELECT data FROM records WHERE id=1").fetchone()[0] == '{"who": "张三"}'
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    finally:
        db.close()


@pytest.mark.parametrize("store", ["journal", "registers", "central"])
def test_newer_schema_is_refused_untouched(tmp_path: Path, store: str) -> None:
    path = tmp_path / f"{store}.db"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE future (x BLOB); INSERT INTO future VALUES (x'0102');"
                     "PRAGMA user_version=2;")
    db.close()
    before = sha(path)
    with pytest.raises(SchemaTooNew) as e:
        if store == "journal":
            Journal(path)
        elif store == "registers":
            open_db(path)
        else:
            SqliteState(path)._connect()
    msg = str(e.value)
    assert str(path) in msg and "version 2" in msg and "newer safegw" in msg and "up to 1" in msg
    assert sha(path) == before
    assert version(path) == 2


def test_daemon_refuses_newer_journal_with_the_message(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    db = sqlite3.connect(state / "journal.db")
    db.executescript(OLD_JOURNAL + "PRAGMA user_version=5;")
    db.close()
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"gateway: {{id: gw1, site: \"S1\", state_dir: \"{state}\"}}\ndevices: []\n")
    p = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "-c", str(cfg)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode != 0
    out = p.stdout + p.stderr
    assert "journal schema is version 5" in out and "newer safegw" in out, out[-2000:]
    assert version(state / "journal.db") == 5


def test_sigkill_mid_migration_leaves_old_file_usable(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    rows = old_journal(path)
    p = subprocess.Popen([sys.executable, "-m", "tests.fixtures.migrate_worker", str(path)], cwd=ROOT,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "migrating"  # inside the migration's transaction
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    copy = backup_path(path, 0)
    assert copy.exists() and copy.stat().st_mode & 0o777 == 0o600
    for f in (path, copy):  # the file (SQLite rolls the hot journal back) and the copy hold the old rows
        db = sqlite3.connect(f)
        assert db.execute("PRAGMA user_version").fetchone()[0] == 0
        assert db.execute("SELECT * FROM records ORDER BY seq").fetchall() == rows
        assert db.execute("SELECT name, seq FROM cursors").fetchall() == [("uplink", 7)]
        db.close()
    with Journal(path) as j:  # the real migration then goes through
        assert j.cursor("uplink") == 7
    assert version(path) == 1
    assert not copy.exists()
