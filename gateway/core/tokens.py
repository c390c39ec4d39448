"""API users and their bearer tokens, shared by the admin API and central.

A token is ``sgw_<key id>_<secret>``; it is shown once, when created, and stored only
as an scrypt hash (with its own salt) in ``<state_dir>/users.json`` (mode 0600, written
atomically). The key id lets the daemon find the one hash to check without trying
them all. Checking scrypt costs tens of milliseconds by design, so the daemon keeps
the verified tokens it has seen in memory (keyed by a SHA-256 of the token, never the
token itself) and drops that cache whenever the file changes (a revoke takes effect on
the next request, also when done with the CLI while the daemon runs).

Roles: viewer (reads), operator (acknowledges and shelves alarms, edits registers),
admin (everything, and users).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.core.units import iso_now

log = logging.getLogger(__name__)

ROLES = ("viewer", "operator", "admin")
RANK = {r: i for i, r in enumerate(ROLES)}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_TOKEN = re.compile(r"^sgw_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")

# scrypt cost: 2**14 × 8 × 128 B = 16 MiB and ~40 ms a check; OWASP's minimum for scrypt
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


class UserError(Exception):
    pass


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    key_id: str

    def can(self, role: str) -> bool:
        return RANK[self.role] >= RANK[role]


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def hash_secret(secret: str, salt: bytes | None = None, n: int = SCRYPT_N) -> str:
    salt = salt or os.urandom(16)
    h = hashlib.scrypt(secret.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 2**20, dklen=32)
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(h)}"


def check_secret(secret: str, stored: str) -> bool:
    try:
        alg, n, r, p, salt, want = stored.split("$")
        if alg != "scrypt":
            return False
        got = hashlib.scrypt(
            secret.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=64 * 2**20,
            dklen=32,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(want))




class UserStore:
    """The users file: read on demand, rewritten atomically under a lock."""

    def __init__(self, path: str | Path, *, scrypt_n: int = SCRYPT_N):
        self.path = Path(path)
        self.scrypt_n = scrypt_n
        self._lock = threading.Lock()
        self._mtime: int | None = None
        self._users: list[dict[str, Any]] = []
        self._verified: dict[bytes, Principal] = {}

    # ------------------------------------------------------------------ file
    def _stat(self) -> int | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns ^ st.st_size ^ st.st_ino

    def _load(self) -> None:
        m = self._stat()
        if m == self._mtime:
            return
        users: list[dict[str, Any]] = []
        if m is not None:
            try:
                doc = json.loads(self.path.read_text())
                users = list(doc.get("users", []))
            except (OSError, ValueError) as e:
                log.error("users file %s unreadable: %s; refusing every token until fixed", self.path, e)
        with self._lock:
            self._users = users
            self._verified.clear()  # revocations take effect at once
            self._mtime = m

    @contextlib.contextmanager
    def _locked_write(self) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.path.with_name(self.path.name + ".lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._mtime = None
            self._load()
            users = [dict(u) for u in self._users]
            yield users
            tmp = self.path.with_name(self.path.name + ".tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({"users": users}, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            os.chmod(self.path, 0o600)
            self._mtime = None
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            os.close(lock)

    # ------------------------------------------------------------------ management
    def users(self) -> list[dict[str, Any]]:
        """Public view: no hashes."""
        self._load()
        return [
            {k: u.get(k) for k in ("name", "role", "key_id", "created", "created_by", "revoked")}
            for u in self._users
        ]

    def add(self, name: str, role: str, *, by: str = "cli", rotate: bool = False) -> str:
        """Create (or with ``rotate`` replace) a user's token; returns the token, shown once."""
        if not _NAME.match(name or ""):
            raise UserError(
                "user names are 1-64 of letters, digits and . _ @ - (starting with a letter or digit)"
            )
        if role not in ROLES:
            raise UserError(f"role must be one of {', '.join(ROLES)}")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        entry = {
            "name": name,
            "role": role,
            "key_id": key_id,
            "hash": hash_secret(secret, n=self.scrypt_n),
            "created": iso_now(),
            "created_by": by,
            "revoked": None,
        }
        with self._locked_write() as users:
            live = [u for u in users if u["name"] == name and not u.get("revoked")]
            if live and not rotate:
                raise UserError(f"user {name!r} exists; revoke it first or rotate its token")
            for u in live:
                u["revoked"] = iso_now()
            users.append(entry)
        log.info("user %s (%s) token created by %s", name, role, by)
        return f"sgw_{key_id}_{secret}"

    def revoke(self, name: str, *, by: str = "cli") -> int:
        n = 0
        with self._locked_write() as users:
            for u in users:
                if u["name"] == name and not u.get("revoked"):
                    u["revoked"] = iso_now()
                    n += 1
            if not n:
                raise UserError(f"no active user {name!r}")
        log.info("user %s revoked by %s", name, by)
        return n

    # ------------------------------------------------------------------ checking
    def cached(self, token: str) -> Principal | None:
        """A token verified before (cheap); None means: call ``verify`` (slow)."""
        self._load()
        return self._verified.get(hashlib.sha256(token.encode()).digest())

    def verify(self, token: str) -> Principal | None:
        """Full check (scrypt): call off the event loop."""
        self._load()
        digest = hashlib.sha256(token.encode()).digest()
        p = self._verified.get(digest)
        if p is not None:
            return p
        m = _TOKEN.match(token)
        if m is None:
            return None
        key_id, secret = m.groups()
        with self._lock:
            users = self._users
        for u in users:
            if u.get("key_id") == key_id and not u.get("revoked") and u.get("role") in ROLES:
                if check_secret(secret, u.get("hash", "")):
                    p = Principal(u["name"], u["role"], key_id)
                    with self._lock:
                        if len(self._verified) > 1000:
                            self._verified.clear()
                        self._verified[digest] = p
                    return p
                return None
        return None


class FailureLimiter:
    """Lock out a client address after too many failed token checks.

    ``max_failures`` failures within ``window`` seconds lock the address for ``lockout``
    seconds: during that time its new (unverified) tokens are refused without running
    scrypt. Tokens verified before keep working, so an operator already signed in on a
    shared control-room address is not locked out of acknowledging alarms by a guesser.
    ``clock`` is monotonic seconds (injected for tests)."""

    def __init__(self, max_failures: int, window: float, lockout: float, *,
                 clock: Any = None, max_clients: int = 10_000):
        import time

        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.clock = clock or time.monotonic
        self.max_clients = max_clients
        self._fails: dict[str, list[float]] = {}
        self._until: dict[str, float] = {}
        self.lockouts = 0

    def retry_after(self, client: str) -> float:
        """Seconds the client is still locked out for (0: not locked)."""
        until = self._until.get(client)
        if until is None:
            return 0.0
        left = until - self.clock()
        if left <= 0:
            del self._until[client]
            return 0.0
        return left

    def fail(self, client: str) -> bool:
        """Record a failed check; True when this failure locks the client out."""
        if self.max_failures <= 0:
            return False
        now = self.clock()
        if len(self._fails) >= self.max_clients and client not in self._fails:
            # bounded memory under a spray of addresses: forget the stale ones
            self._fails = {c: f for c, f in self._fails.items() if f and f[-1] > now - self.window}
            if len(self._fails) >= self.max_clients:
                self._fails.clear()
        fails = [t for t in self._fails.get(client, []) if t > now - self.window]
        fails.append(now)
        if len(fails) >= self.max_failures:
            self._fails.pop(client, None)
            self._until[client] = now + self.lockout
            self.lockouts += 1
            return True
        self._fails[client] = fails
        return False


async def check_token(store: UserStore, limiter: FailureLimiter, slots: Any, token: str,
                      client: str) -> tuple[Principal | None, float]:
    """A bearer token behind the lockout of its client address: ``(principal, 0)`` when
    good; ``(None, seconds)`` while the address is locked out (nothing checked); ``(None,
    0)`` when bad (counted, and logged once when it locks the address). ``slots`` (an
    asyncio.Semaphore) bounds the scrypt checks running at once, which run off the loop."""
    import asyncio

    p = store.cached(token)
    if p is not None:
        return p, 0.0
    wait = limiter.retry_after(client)
    if wait > 0:
        return None, wait
    if len(token) < 200:
        async with slots:
            p = await asyncio.get_running_loop().run_in_executor(None, store.verify, token)
    if p is None and limiter.fail(client):
        log.warning("%d failed token checks from %s within %.0f s; its new tokens are refused for %.0f s",
                    limiter.max_failures, client, limiter.window, limiter.lockout)
    return p, 0.0


def print_users(rows: list[dict[str, Any]], *, as_json: bool) -> None:
    """The ``list`` of ``safegw users`` and ``safegw central tokens``: never tokens or hashes."""
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'NAME':20} {'ROLE':9} {'KEY':13} {'CREATED':21} STATUS")
    for u in rows:
        status = f"revoked {u['revoked']}" if u["revoked"] else "active"
        print(f"{u['name']:20} {u['role']:9} {u['key_id']:13} {u['created']:21} {status}")
