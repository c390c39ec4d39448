"""Schema versions of safegw's SQLite files (the journal, the registers, central's state).

Each file carries its schema version in SQLite's ``PRAGMA user_version`` (a 32-bit
integer in the database header, written inside the transaction that changes it:
https://sqlite.org/pragma.html#pragma_user_version). At open, ``ensure_schema``:

- a new, empty file: creates the tables and stamps the current version, in one transaction;
- an older version: keeps a copy of the file (``NAME.vN.bak``, made through SQLite's
  backup API, so a WAL's committed pages are in it), runs every step from N+1 up in ONE
  transaction together with the new ``user_version``, and deletes the copy only after the
  commit. A crash or power cut mid-migration leaves the old file as it was (SQLite rolls
  the unfinished transaction back at the next open) and the copy beside it;
- a newer version (written by a newer safegw): refuses with ``SchemaTooNew`` and touches
  nothing, since an older program cannot know what the newer columns mean.

Version 0 is a file from before versions were carried (safegw ≤ the release that
introduced this module); the step to version 1 is each store's own ``CREATE ... IF NOT
EXISTS`` script, which is what every start did before.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

#: one migration step: SQL statements, or a function run inside the migration's transaction
Step = str | Callable[[sqlite3.Connection], None]


class SchemaTooNew(RuntimeError):
    """The file was written by a newer safegw: this one refuses to touch it."""


def statements(script: str) -> list[str]:
    """A script cut into single statements (``executescript`` would COMMIT the open
    transaction first, so a migration runs its statements one by one)."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        raise ValueError(f"incomplete SQL statement at the end of a schema script: {buf.strip()[:80]!r}")
    return out


def user_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def refuse_newer(db: sqlite3.Connection, path: Path, *, name: str, version: int) -> None:
    """Right after ``sqlite3.connect``, before any PRAGMA that writes (``journal_mode=WAL``
    rewrites the header): a file from a newer safegw is refused with not one byte changed."""
    found = user_version(db)
    if found > version:
        db.close()
        raise SchemaTooNew(_too_new(path, name, found, version))


def _has_tables(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type='table' LIMIT 1").fetchone() is not None


def _run(db: sqlite3.Connection, step: Step) -> None:
    if isinstance(step, str):
        for sql in statements(step):
            db.execute(sql)
    else:
        step(db)


def backup_path(path: Path, version: int) -> Path:
    return path.with_name(f"{path.name}.v{version}.bak")


def copy_db(src: sqlite3.Connection, dest: Path) -> None:
    """A consistent copy of an open database through SQLite's online backup API,
    created 0600 and synced to disk before it is relied on."""
    tmp = dest.with_name(dest.name + ".part")
    tmp.unlink(missing_ok=True)
    os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
    out = sqlite3.connect(tmp)
    try:
        src.backup(out)
        out.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
    finally:
        out.close()
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dest)


def ensure_schema(db: sqlite3.Connection, path: Path, *, name: str, version: int, create: str,
                  steps: Mapping[int, Step]) -> int:
    """Bring the open file ``db`` (at ``path``) to schema ``version``; returns the version
    it had (0 for a new file). ``create`` makes the current schema from nothing;
    ``steps[v]`` takes a file from ``v - 1`` to ``v``. ``db`` must be in autocommit mode
    (``isolation_level=None``)."""
    missing = [v for v in range(1, version + 1) if v not in steps]
    if missing:
        raise ValueError(f"{name}: no migration step to version(s) {missing}")
    found = user_version(db)
    if found == version:
        return found
    if found > version:
        raise SchemaTooNew(_too_new(path, name, found, version))
    db.execute("BEGIN IMMEDIATE")  # another process may be migrating the same file: wait for it
    try:
        found = user_version(db)  # as seen inside the write lock
        if found > version:
            raise SchemaTooNew(_too_new(path, name, found, version))
        if found == version:
            db.execute("COMMIT")
            return found
        if found == 0 and not _has_tables(db):
            _run(db, create)
            db.execute(f"PRAGMA user_version={int(version)}")
            db.execute("COMMIT")
            return 0
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("ROLLBACK")  # the copy reads the file as committed; the migration takes the lock again
    copy = backup_path(path, found)
    copy_db(db, copy)
    log.warning("%s: migrating the %s schema from version %d to %d (a copy of the old file is kept "
                "in %s until the migration is committed)", path, name, found, version, copy)
    db.execute("BEGIN IMMEDIATE")
    try:
        again = user_version(db)
        if again != found:  # another process migrated it meanwhile
            db.execute("COMMIT")
            copy.unlink(missing_ok=True)
            if again > version:
                raise SchemaTooNew(_too_new(path, name, again, version))
            return found
        for v in range(found + 1, version + 1):
            _run(db, steps[v])
        db.execute(f"PRAGMA user_version={int(version)}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        log.error("%s: the %s migration to version %d failed; the file is unchanged at version %d "
                  "(copy in %s)", path, name, version, found, copy)
        raise
    copy.unlink(missing_ok=True)
    log.warning("%s: %s schema now at version %d", path, name, version)
    return found


def _too_new(path: Path, name: str, found: int, version: int) -> str:
    return (f"{path}: the {name} schema is version {found}, newer than this safegw knows "
            f"(up to {version}); it was written by a newer safegw. Refusing to open it so as not "
            "to damage it: install that newer safegw again (a downgrade cannot read its files), "
            "or restore a backup made by this version.")
