"""The registers' SQLite file: its tables, how it is opened (owner-only, WAL, full sync),
and the audit records written from outside the daemon (the ``safegw users`` CLI)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from gateway.store.schema import private_db
from gateway.store.versions import ensure_schema, refuse_newer

# --------------------------------------------------------------------------- the store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    type        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    state       TEXT,
    archived    INTEGER NOT NULL DEFAULT 0,
    created_ns  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    updated_ns  INTEGER NOT NULL,
    updated_by  TEXT NOT NULL,
    data        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_type ON records(type, archived, id);
CREATE TABLE IF NOT EXISTS changes (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    record   INTEGER NOT NULL,
    type     TEXT NOT NULL,
    version  INTEGER NOT NULL,
    ts       INTEGER NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    before   TEXT,
    after    TEXT,
    comment  TEXT
);
CREATE INDEX IF NOT EXISTS changes_by_record ON changes(record, seq);
CREATE TABLE IF NOT EXISTS attachments (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    record    INTEGER NOT NULL,
    type      TEXT NOT NULL,
    filename  TEXT NOT NULL,
    mime      TEXT NOT NULL,
    size      INTEGER NOT NULL,
    sha256    TEXT NOT NULL,
    ts        INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    archived  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS reminders (
    type       TEXT NOT NULL,
    record     INTEGER NOT NULL,
    field      TEXT NOT NULL,
    due        TEXT NOT NULL,
    threshold  INTEGER NOT NULL,
    ts         INTEGER NOT NULL,
    PRIMARY KEY (type, record, field, due, threshold)
);
CREATE TABLE IF NOT EXISTS audit (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    role    TEXT,
    method  TEXT NOT NULL,
    path    TEXT NOT NULL,
    status  INTEGER NOT NULL,
    remote  TEXT,
    detail  TEXT
);
"""

#: the registers' schema version (``PRAGMA user_version``; gateway/store/versions.py).
#: 0: a file from before versions (tables added over time by CREATE IF NOT EXISTS).
#: 1: _SCHEMA above; the step to it creates whatever table an older file lacks.
SCHEMA_VERSION = 1
SCHEMA_STEPS: dict[int, str] = {1: _SCHEMA}


def open_db(path: Path) -> sqlite3.Connection:
    private_db(path)  # personal data (names, ID numbers, phones): owner-only
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    refuse_newer(db, Path(path), name="registers", version=SCHEMA_VERSION)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=5000")
    try:
        ensure_schema(db, Path(path), name="registers", version=SCHEMA_VERSION, create=_SCHEMA,
                      steps=SCHEMA_STEPS)
    except BaseException:
        db.close()
        raise
    return db


def audit_offline(state_dir: Path, actor: str, method: str, path: str, detail: dict[str, Any]) -> None:
    """Record an action taken outside the daemon (the ``safegw users`` CLI)."""
    db = open_db(Path(state_dir) / "registers.db")
    try:
        db.execute(
            "INSERT INTO audit(ts, actor, role, method, path, status, remote, detail) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (time.time_ns(), actor, "cli", method, path, 0, "local", json.dumps(detail, ensure_ascii=False)),
        )
    finally:
        db.close()
