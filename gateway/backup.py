"""``safegw backup`` and ``safegw restore``: an online snapshot of a gateway (docs/operations.md).

The archive is a tar stream compressed with zstd. Every SQLite file of the state directory
is copied through SQLite's online backup API (``sqlite3.Connection.backup``), never as a
file copy, so a daemon writing at the same moment leaves each copy consistent. It holds:

- ``config.yaml``: the config file given with ``-c``;
- ``state/…``: the state directory: the registers, the uplink keys and the token store,
  the consumers' state files; the journal either whole (``--journal``) or as its cursors
  only (an empty journal whose cursors and sequence carry on where the old one stood);
- ``manifest.json``: format, gateway id, time, each file's size and SHA-256, the cursors.

Keys and tokens are secrets: the archive is then encrypted to a passphrase (scrypt,
RFC 7914, then ChaCha20-Poly1305 in 1 MiB chunks, RFC 8439; the chunk counter and a
last-chunk flag are in each nonce so chunks cannot be reordered, dropped or cut off).
Without a passphrase the backup is refused unless ``--no-secrets`` leaves them out.
The passphrase comes from a 0600 file (``--passphrase-file``) or a prompt, never an argument.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import struct
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from gateway.config import load_or_exit
from gateway.core.cliutil import EXIT_FAIL, EXIT_OK
from gateway.core.secrets import SecretFileError, read_secret
from gateway.store.schema import SCHEMA, SCHEMA_VERSION, private_db
from gateway.store.versions import SchemaTooNew, copy_db, refuse_newer

log = logging.getLogger(__name__)

FORMAT = "safegw-backup/1"
MAGIC = b"SAFEGW-BACKUP-ENC1\n"  # an encrypted archive begins with this line
CHUNK = 1 << 20
#: scrypt cost: N=2^17, r=8, p=1 (128 MiB, under a second here). RFC 7914 §2 leaves the
#: choice to the user; the `cryptography` docs suggest N=2^14 as a minimum for interactive
#: use. Stored in the header; a header asking more than the bounds below is refused.
SCRYPT_LOG2N, SCRYPT_R, SCRYPT_P = 17, 8, 1
MAX_LOG2N, MAX_R, MAX_P = 20, 16, 4
#: bounds on what restore will unpack (checked while reading, before any byte is written)
MAX_MEMBERS = 100_000
MAX_NAME = 400
MAX_MANIFEST = 16 * 2**20
MAX_PASSPHRASE = 1024
MIN_PASSPHRASE = 8

SQLITE_HEADER = b"SQLite format 3\x00"


class BackupError(Exception):
    """A backup or restore that cannot go on; the message says where and why."""


# --------------------------------------------------------------------------- encryption

def _kdf(passphrase: str, salt: bytes, log2n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=1 << log2n, r=r, p=p).derive(passphrase.encode())


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + struct.pack(">I", counter) + (b"\x01" if last else b"\x00")


class EncryptingWriter(io.RawIOBase):
    """A write-only stream that encrypts what it is given, chunk by chunk, into ``out``."""

    def __init__(self, out: IO[bytes], passphrase: str):
        salt, self._prefix = os.urandom(16), os.urandom(7)
        self._header = MAGIC + bytes([SCRYPT_LOG2N, SCRYPT_R, SCRYPT_P]) + salt + self._prefix
        self._aead = ChaCha20Poly1305(_kdf(passphrase, salt, SCRYPT_LOG2N, SCRYPT_R, SCRYPT_P))
        self._out = out
        self._buf = bytearray()
        self._n = 0
        out.write(self._header)

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._buf += bytes(b)
        while len(self._buf) > CHUNK:  # keep at least one byte back: the last chunk is flagged
            self._emit(bytes(self._buf[:CHUNK]), last=False)
            del self._buf[:CHUNK]
        return len(b)

    def _emit(self, data: bytes, *, last: bool) -> None:
        ct = self._aead.encrypt(_nonce(self._prefix, self._n, last), data, self._header)
        self._out.write(struct.pack(">I", len(ct)) + ct)
        self._n += 1

    def close(self) -> None:
        if not self.closed:
            self._emit(bytes(self._buf), last=True)
            self._buf.clear()
        super().close()


def decrypt_stream(src: IO[bytes], dest: IO[bytes], passphrase: str) -> None:
    """Undo ``EncryptingWriter``: read ``src`` from its header, write the plain bytes to ``dest``."""
    head = src.read(len(MAGIC) + 3 + 16 + 7)
    if len(head) < len(MAGIC) + 26 or not head.startswith(MAGIC):
        raise BackupError("not an encrypted safegw backup (bad header)")
    log2n, r, p = head[len(MAGIC):len(MAGIC) + 3]
    if not (10 <= log2n <= MAX_LOG2N and 1 <= r <= MAX_R and 1 <= p <= MAX_P):
        raise BackupError(f"encrypted backup: scrypt cost N=2^{log2n} r={r} p={p} is beyond what this "
                          f"safegw accepts (N ≤ 2^{MAX_LOG2N}, r ≤ {MAX_R}, p ≤ {MAX_P})")
    salt, prefix = head[len(MAGIC) + 3:len(MAGIC) + 19], head[len(MAGIC) + 19:]
    aead = ChaCha20Poly1305(_kdf(passphrase, salt, log2n, r, p))
    n = 0
    while True:
        lb = src.read(4)
        if len(lb) < 4:
            raise BackupError(f"encrypted backup cut off after chunk {n} (no last chunk)")
        size = struct.unpack(">I", lb)[0]
        if size < 16 or size > CHUNK + 16:
            raise BackupError(f"encrypted backup: chunk {n} claims {size} bytes (at most {CHUNK + 16})")
        ct = src.read(size)
        if len(ct) < size:
            raise BackupError(f"encrypted backup cut off inside chunk {n}")
        for last in (False, True):
            try:
                pt = aead.decrypt(_nonce(prefix, n, last), ct, head)
                break
            except InvalidTag:
                continue
        else:
            raise BackupError("wrong passphrase, or the archive was altered" if n == 0 else
                              f"encrypted backup: chunk {n} was altered")
        dest.write(pt)
        n += 1
        if last:
            if src.read(1):
                raise BackupError(f"encrypted backup: bytes after the last chunk ({n})")
            return


def read_passphrase(path: str | None, *, twice: bool) -> str:
    if path:
        try:
            pw = read_secret(Path(path), Path.cwd())
        except SecretFileError as e:
            raise BackupError(str(e)) from None
    elif sys.stdin.isatty():
        pw = getpass.getpass("backup passphrase: ")
        if twice and getpass.getpass("again: ") != pw:
            raise BackupError("the two passphrases differ")
    else:
        raise BackupError("no passphrase: give --passphrase-file FILE (mode 0600), or run on a terminal "
                          "to be asked")
    if not MIN_PASSPHRASE <= len(pw) <= MAX_PASSPHRASE:
        raise BackupError(f"the passphrase must have {MIN_PASSPHRASE} to {MAX_PASSPHRASE} characters")
    return pw


# --------------------------------------------------------------------------- snapshot

def _is_sqlite(p: Path) -> bool:
    with p.open("rb") as f:
        return f.read(16) == SQLITE_HEADER


def _is_secret(rel: PurePosixPath, users_file: str | None) -> bool:
    """Keys and tokens: the uplink key folder, the token stores, TLS private keys."""
    name = rel.name
    return (rel.parts[0] == "keys" or name in {"users.json", "tokens.json"} or name == users_file
            or name.endswith(".key") or "token" in name)


def _journal_cursors_only(src: Path, dest: Path) -> dict[str, int]:
    """An empty journal holding ``src``'s cursors and sequence, read in one transaction."""
    ro = sqlite3.connect(f"file:{src}?mode=ro", uri=True, isolation_level=None)
    try:
        refuse_newer(ro, src, name="journal", version=SCHEMA_VERSION)
        ro.execute("BEGIN")
        cursors = ro.execute("SELECT name, seq, updated FROM cursors ORDER BY name").fetchall()
        row = ro.execute("SELECT seq FROM sqlite_sequence WHERE name='records'").fetchone()
        top = ro.execute("SELECT MAX(seq) FROM records").fetchone()[0]
        ro.execute("COMMIT")
    finally:
        ro.close()
    last = max(row[0] if row else 0, top or 0)
    os.close(os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    db = sqlite3.connect(dest, isolation_level=None)
    try:
        db.execute("PRAGMA page_size=16384")
        db.executescript(SCHEMA)
        db.execute("BEGIN")
        db.executemany("INSERT INTO cursors(name, seq, updated) VALUES (?,?,?)", cursors)
        # AUTOINCREMENT's counter: the next record after restore is last + 1
        db.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('records', ?)", (last,))
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    finally:
        db.close()
    return {name: seq for name, seq, _ in cursors}


def _snapshot(state: Path, work: Path, *, journal: bool, secrets: bool,
              users_file: str | None) -> tuple[list[PurePosixPath], dict[str, int], list[str]]:
    """Copies of ``state`` into ``work``: SQLite files through the backup API, others as
    bytes. Returns the files, the journal's cursors, and what was left out."""
    files: list[PurePosixPath] = []
    skipped: list[str] = []
    cursors: dict[str, int] = {}
    for p in sorted(state.rglob("*")):
        rel = PurePosixPath(p.relative_to(state).as_posix())
        if p.is_symlink() or not p.is_file():
            continue
        if p.name.endswith(("-wal", "-shm", "-journal", ".part", ".lock")) or ".bak" in p.suffixes:
            continue  # a database's side files (in the backup copy), locks, migration copies
        if not secrets and _is_secret(rel, users_file):
            skipped.append(str(rel))
            continue
        out = work / "state" / Path(*rel.parts)
        try:
            found = _copy_one(p, rel, out, journal=journal)
        except (sqlite3.Error, OSError) as e:
            raise BackupError(f"{p}: cannot copy it into the snapshot at {out} ({e})") from e
        if found is not None:
            cursors = found
        files.append(PurePosixPath("state") / rel)
    return files, cursors, skipped


def _copy_one(p: Path, rel: PurePosixPath, out: Path, *, journal: bool) -> dict[str, int] | None:
    """One file of the state into the snapshot; the journal's cursors when it is the journal."""
    cursors: dict[str, int] | None = None
    out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if rel == PurePosixPath("journal.db") and not journal:
        cursors = _journal_cursors_only(p, out)
    elif _is_sqlite(p):
        src = sqlite3.connect(f"file:{p}?mode=ro", uri=True, isolation_level=None)
        try:
            src.execute("PRAGMA busy_timeout=10000")
            copy_db(src, out)
        finally:
            src.close()
        if rel == PurePosixPath("journal.db"):
            db = sqlite3.connect(out)
            cursors = dict(db.execute("SELECT name, seq FROM cursors").fetchall())
            db.close()
    else:
        fd = os.open(out, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with p.open("rb") as f, open(fd, "wb") as o:
            shutil.copyfileobj(f, o)
    return cursors


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_backup(config: Path, state: Path, out: Path, *, gateway_id: str, journal: bool,
                passphrase: str | None, users_file: str | None = None) -> dict[str, Any]:
    if not state.is_dir():
        raise BackupError(f"{state}: no such state directory (gateway.state_dir in {config})")
    secrets = passphrase is not None
    # the snapshot is made beside the archive: /tmp is often a small tmpfs, the journal is not
    with tempfile.TemporaryDirectory(prefix=".safegw-backup-", dir=out.parent) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o700)
        shutil.copyfile(config, work / "config.yaml")
        os.chmod(work / "config.yaml", 0o600)
        files, cursors, skipped = _snapshot(state, work, journal=journal, secrets=secrets,
                                            users_file=users_file)
        manifest = {
            "format": FORMAT, "gateway": gateway_id, "created_ns": time.time_ns(),
            "journal": "whole" if journal else "cursors", "secrets": secrets, "left_out": skipped,
            "cursors": cursors,
            "files": {str(f): {"size": (work / f).stat().st_size, "sha256": _sha256(work / f)}
                      for f in [PurePosixPath("config.yaml"), *files]},
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
        part = out.with_name(out.name + ".part")
        try:
            _write_archive(work, files, part, passphrase)
        except BaseException:
            part.unlink(missing_ok=True)  # a full disk or an interrupt leaves no half archive
            raise
        os.replace(part, out)
    return manifest


def _write_archive(work: Path, files: list[PurePosixPath], part: Path, passphrase: str | None) -> None:
    fd = os.open(part, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    with open(fd, "wb") as raw:
        sink: IO[bytes] = raw
        enc = EncryptingWriter(raw, passphrase) if passphrase is not None else None
        if enc is not None:
            sink = enc  # type: ignore[assignment]
        with zstandard.ZstdCompressor(level=3).stream_writer(sink, closefd=False) as z, \
                tarfile.open(fileobj=z, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for name in ["manifest.json", "config.yaml", *map(str, files)]:
                info = tar.gettarinfo(str(work / name), arcname=name)
                info.mode, info.uid, info.gid, info.uname, info.gname = 0o600, 0, 0, "", ""
                with (work / name).open("rb") as f:
                    tar.addfile(info, f)
        if enc is not None:
            enc.close()
        raw.flush()
        os.fsync(raw.fileno())


# --------------------------------------------------------------------------- restore

def _safe_name(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if len(name) > MAX_NAME or p.is_absolute() or ".." in p.parts or not p.parts or "\x00" in name:
        raise BackupError(f"archive member {name[:80]!r}: not a plain relative path")
    if p.parts[0] not in ("state",) and name not in ("manifest.json", "config.yaml"):
        raise BackupError(f"archive member {name[:80]!r}: not part of a safegw backup")
    return p


@contextlib.contextmanager
def _plain_archive(archive: Path, passphrase_file: str | None, tmp: Path) -> Iterator[Path]:
    """The archive's zstd-compressed tar, decrypted first when it is encrypted."""
    with archive.open("rb") as f:
        encrypted = f.read(len(MAGIC)) == MAGIC
    if not encrypted:
        yield archive
        return
    pw = read_passphrase(passphrase_file, twice=False)
    plain = tmp / "archive.tar.zst"
    with archive.open("rb") as src, open(os.open(plain, os.O_CREAT | os.O_WRONLY, 0o600), "wb") as dest:
        decrypt_stream(src, dest, pw)
    yield plain


def restore(archive: Path, config_out: Path, state: Path | None, *, force: bool,
            passphrase_file: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="safegw-restore-") as tmpd:
        tmp = Path(tmpd)
        os.chmod(tmp, 0o700)
        unpack = tmp / "unpack"
        unpack.mkdir(mode=0o700)
        with _plain_archive(archive, passphrase_file, tmp) as plain, plain.open("rb") as f, \
                zstandard.ZstdDecompressor().stream_reader(f) as z, tarfile.open(fileobj=z, mode="r|") as tar:
            count = 0
            for m in tar:
                count += 1
                if count > MAX_MEMBERS:
                    raise BackupError(f"{archive}: more than {MAX_MEMBERS} members")
                name = _safe_name(m.name)
                if not m.isfile():
                    raise BackupError(f"{archive}: member {m.name!r} is not a regular file")
                dest = unpack / Path(*name.parts)
                dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                src = tar.extractfile(m)
                assert src is not None
                with open(os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), "wb") as o:
                    shutil.copyfileobj(src, o)
        mpath = unpack / "manifest.json"
        try:
            if mpath.stat().st_size > MAX_MANIFEST:
                raise BackupError(f"{archive}: manifest.json is over {MAX_MANIFEST} bytes")
            manifest = json.loads(mpath.read_text())
        except (OSError, ValueError) as e:
            raise BackupError(f"{archive}: no readable manifest.json ({e})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise BackupError(f"{archive}: manifest.json format {got!r}, this safegw reads {FORMAT}")
        listed = manifest.get("files")
        if not isinstance(listed, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in listed.values()):
            raise BackupError(f"{archive}: manifest.json: 'files' is not a map of name to size and sha256")
        present = {str(p.relative_to(unpack)) for p in unpack.rglob("*") if p.is_file()} - {"manifest.json"}
        if present != set(listed):
            raise BackupError(f"{archive}: files differ from the manifest (missing "
                              f"{sorted(set(listed) - present)}, extra {sorted(present - set(listed))})")
        for name, meta in listed.items():
            if _sha256(unpack / name) != meta["sha256"]:
                raise BackupError(f"{archive}: {name} does not match its SHA-256 in the manifest")
        if state is None:
            import yaml

            doc = yaml.safe_load((unpack / "config.yaml").read_text()) or {}
            state = Path(str((doc.get("gateway") or {}).get("state_dir", "/var/lib/safegw")))
        if config_out.exists() and not force:
            raise BackupError(f"{config_out} exists; restore writes the backed-up config there "
                              "(--force replaces it)")
        if state.exists() and any(state.iterdir()) and not force:
            raise BackupError(f"{state} is not empty: restore goes onto a fresh state directory "
                              "(--force replaces the files it holds of the same names)")
        for p in sorted((unpack / "state").rglob("*")) if (unpack / "state").exists() else []:
            if p.is_file() and _is_sqlite(p):
                db = sqlite3.connect(p)
                try:
                    if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                        raise BackupError(f"{archive}: {p.relative_to(unpack)} fails SQLite's quick_check")
                finally:
                    db.close()
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(state, 0o700)
        for p in sorted((unpack / "state").rglob("*")) if (unpack / "state").exists() else []:
            if p.is_dir():
                continue
            target = state / p.relative_to(unpack / "state")
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if _is_sqlite(p):
                private_db(target)  # 0600 before anything is in it
                for side in ("-wal", "-shm"):
                    target.with_name(target.name + side).unlink(missing_ok=True)
            shutil.copyfile(p, target)
            os.chmod(target, 0o600)
        config_out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(unpack / "config.yaml", config_out)
        os.chmod(config_out, 0o600)
        manifest["state_dir"] = str(state)
        return dict(manifest)


# --------------------------------------------------------------------------- CLI

def cmd_backup(args: argparse.Namespace) -> int:
    cfg = load_or_exit(args.config)
    out = Path(args.output)
    try:
        if args.no_secrets:
            pw = None
        elif args.passphrase_file or sys.stdin.isatty():
            pw = read_passphrase(args.passphrase_file, twice=True)
        else:
            raise BackupError("the backup would hold the uplink keys and tokens: give --passphrase-file "
                              "FILE (mode 0600) to encrypt it, or --no-secrets to leave them out")
        users = cfg.api.users_file.name if cfg.api is not None and cfg.api.users_file else None
        m = make_backup(Path(args.config), Path(args.state_dir or cfg.gateway.state_dir), out,
                        gateway_id=cfg.gateway.id, journal=args.journal, passphrase=pw, users_file=users)
    except (BackupError, SchemaTooNew, sqlite3.Error, OSError) as e:
        print(f"safegw backup: {e}", file=sys.stderr)
        return EXIT_FAIL
    if m["secrets"]:
        what = "encrypted, with keys and tokens"
    else:
        what = "not encrypted, without " + (", ".join(m["left_out"]) or "secrets (none found)")
    print(f"{out}: {len(m['files'])} files, journal {m['journal']}, {what}; "
          f"cursors {json.dumps(m['cursors'])}")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    try:
        m = restore(Path(args.archive), Path(args.config), Path(args.state_dir) if args.state_dir else None,
                    force=args.force, passphrase_file=args.passphrase_file)
    except (BackupError, SchemaTooNew, sqlite3.Error, OSError, tarfile.TarError, zstandard.ZstdError) as e:
        print(f"safegw restore: {e}", file=sys.stderr)
        return EXIT_FAIL
    print(f"restored {len(m['files'])} files of gateway {m['gateway']} into {m['state_dir']} and "
          f"{args.config}; cursors {json.dumps(m['cursors'])}")
    print(f"next: safegw check -c {args.config} && safegw run -c {args.config}"
          + (f" --state-dir {m['state_dir']}" if args.state_dir else ""))
    return EXIT_OK


def add_backup(sub: Any) -> None:
    b = sub.add_parser("backup", help="online snapshot: config, registers, keys, tokens, cursors (journal)")
    b.add_argument("-c", "--config", required=True)
    b.add_argument("-o", "--output", required=True, help="archive to write (e.g. backup.tar.zst)")
    b.add_argument("--state-dir", help="override gateway.state_dir")
    b.add_argument("--journal", action="store_true", help="include the whole journal (default: its cursors)")
    b.add_argument("--passphrase-file", help="file (mode 0600) whose first line encrypts the archive")
    b.add_argument("--no-secrets", action="store_true", help="leave keys and tokens out; no encryption")
    b.set_defaults(func=cmd_backup)


def add_restore(sub: Any) -> None:
    r = sub.add_parser("restore", help="put a backup onto a fresh state directory")
    r.add_argument("archive")
    r.add_argument("-c", "--config", required=True, help="where to write the backed-up config")
    r.add_argument("--state-dir", help="restore here instead of the config's gateway.state_dir")
    r.add_argument("--passphrase-file", help="file (mode 0600) holding the passphrase")
    r.add_argument("--force", action="store_true", help="write over an existing config / non-empty state dir")
    r.set_defaults(func=cmd_restore)
