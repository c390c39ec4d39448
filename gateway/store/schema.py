"""The journal's file: its SQLite schema, and how it is opened (WAL, page size, sync
level) and kept private (0600 files in a 0700 folder, whatever the umask; the
registers and central's state use ``private_db`` too)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from gateway.store.versions import refuse_newer

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind    INTEGER NOT NULL,
    ts_min  INTEGER NOT NULL,
    ts_max  INTEGER NOT NULL,
    n       INTEGER NOT NULL,
    nbytes  INTEGER NOT NULL,
    codec   INTEGER NOT NULL,
    data    BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    name    TEXT PRIMARY KEY,
    seq     INTEGER NOT NULL,
    updated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key     TEXT PRIMARY KEY,
    value   INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta(key, value) VALUES ('bytes', 0);
"""

#: the journal's schema version (``PRAGMA user_version``; gateway/store/versions.py).
#: 0: a file from before versions (same tables). 1: SCHEMA above.
SCHEMA_VERSION = 1
#: migration steps: version → what takes a file from the version before to it
SCHEMA_STEPS: dict[int, str] = {1: SCHEMA}


def private_db(path: Path) -> None:
    """Before SQLite opens ``path``: its folder made 0700 when missing, the file made (or
    left) 0600 and an existing ``-wal``/``-shm`` too, whatever the umask: journals and
    registers hold personal data, for the service's user alone. SQLite gives the
    ``-wal``/``-shm`` it creates the database file's mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        # a file made before (0644 by an older version); another user's file is left as it is
        with contextlib.suppress(FileNotFoundError, PermissionError):
            if p.stat().st_mode & 0o077:
                os.chmod(p, 0o600)


class JournalUnusable(sqlite3.DatabaseError):
    """The journal file exists but is not a database SQLite can open (disk damage,
    another program's file). Nothing is deleted or repaired automatically."""


#: the page size of a new journal (an existing one keeps its own): larger pages keep a
#: 20 KB batch in few pages; smaller ones write less per commit (each commit rewrites at
#: least the last records page, the byte counter's and the sequence's: 3 pages)
PAGE_SIZE = 16384
PAGE_SIZES = (4096, 8192, 16384, 32768, 65536)


def connect(path: Path, sync: str, page_size: int = PAGE_SIZE) -> sqlite3.Connection:
    """The journal's writer connection (autocommit; the writer opens its transactions)."""
    if page_size not in PAGE_SIZES:
        raise ValueError(f"page_size must be one of {', '.join(map(str, PAGE_SIZES))}, not {page_size!r}")
    fresh = not path.exists() or path.stat().st_size == 0
    private_db(path)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    refuse_newer(db, path, name="journal", version=SCHEMA_VERSION)
    if fresh:
        # must precede the first table
        db.execute(f"PRAGMA page_size={page_size}")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={sync.upper()}")
    db.execute("PRAGMA wal_autocheckpoint=4096")
    # after a checkpoint, give the disk back beyond 64 MB of WAL
    db.execute("PRAGMA journal_size_limit=67108864")
    return db
