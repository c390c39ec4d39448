"""``safegw doctor``: checks the machine the gateway runs on and prints what to fix.

Each check gives one or more findings: ``ok``, ``warn`` (works now, fix soon) or ``fail``
(fix it). Exit 0 when nothing fails (warnings are printed), 1 when something fails, 2 when
the config cannot be read. The checks:

- clock: synchronised? (``timedatectl``, else ``chronyc tracking``, else the kernel's
  ``adjtimex`` state: TIME_ERROR means not synchronised; adjtimex(2)).
- disk: free space on the state directory's file system against what the journal may
  still grow to (its quota less what it holds now).
- serial ports: every configured RTU/serial device's port exists, is a character device
  and is readable and writable here.
- servers: every configured server (any ``host``/``port`` pair or ``*url`` outside
  ``devices``: MQTT, InfluxDB, central, the regulators' platforms, notify robots and SMTP)
  accepts a TCP connection within ``--timeout``.
- certificates: every configured certificate file parses and is not expired (warn within
  ``--cert-days``); key, password and token files, the uplink's node keys and the token
  store in the state directory are not readable by group or others.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from gateway.core.cliutil import EXIT_CONFIG, EXIT_FAIL, EXIT_OK
from gateway.core.config import Config

DEFAULT_PORTS = {"http": 80, "https": 443, "mqtt": 1883, "mqtts": 8883, "smtp": 25, "smtps": 465}
#: config keys whose files hold something secret: they must be 0600 (or 0400)
SECRET_WORDS = ("key", "password", "token", "secret")
#: config keys whose files are certificates
CERT_WORDS = ("cert", "certificate", "ca")
TIME_ERROR = 5  # adjtimex(2): "the system clock is not synchronized to a reliable server"


@dataclass
class Finding:
    check: str
    level: str  # ok | warn | fail
    what: str
    fix: str = ""


# ---------------------------------------------------------------------- walking the config
def _walk(obj: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any, Any]]:
    """(key path, owner model, value) for every field of the config, depth first."""
    if isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            v = getattr(obj, name, None)
            yield (*path, name), obj, v
            yield from _walk(v, (*path, name))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _walk(v, (*path, str(i)))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, (*path, str(k)))


def servers(cfg: Config) -> list[tuple[str, str, int]]:
    """(where in the config, host, port) of every server the gateway connects to."""
    out: list[tuple[str, str, int]] = []
    for path, owner, v in _walk(cfg):
        if path[0] in ("devices", "gateway", "api"):  # devices: `safegw read`; api: we listen
            continue
        key = path[-1]
        if key == "host" and isinstance(v, str) and isinstance(getattr(owner, "port", None), int):
            out.append((".".join(path[:-1]), v, int(owner.port)))
        elif key.endswith("url") and isinstance(v, str) and "://" in v:
            u = urlsplit(v)
            port = u.port or DEFAULT_PORTS.get(u.scheme)
            if u.hostname and port:
                out.append((".".join(path), u.hostname, port))
    return sorted(set(out))


def files(cfg: Config) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """(where, path) of configured secret files and of certificate files."""
    secrets: list[tuple[str, Path]] = []
    certs: list[tuple[str, Path]] = []
    for path, _owner, v in _walk(cfg):
        if not isinstance(v, Path):
            continue
        key = path[-1] if not path[-1].isdigit() else path[-2]
        where = ".".join(path)
        if key == "central_keys":  # central's public keys
            continue
        if any(w in key for w in SECRET_WORDS):
            secrets.append((where, cfg.path(v)))
        elif any(key == w or key.endswith("_" + w) or key.startswith(w + "_") for w in CERT_WORDS):
            certs.append((where, cfg.path(v)))
    return secrets, certs


# ---------------------------------------------------------------------- checks
def check_clock() -> list[Finding]:
    fix = "enable time sync: `timedatectl set-ntp true` (systemd-timesyncd) or install chrony"
    if shutil.which("timedatectl"):
        r = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                           capture_output=True, text=True, timeout=10)
        if r.returncode == 0 and r.stdout.strip() in ("yes", "no"):
            if r.stdout.strip() == "yes":
                return [Finding("clock", "ok", "synchronised (timedatectl)")]
            return [Finding("clock", "fail", "not synchronised (timedatectl: NTPSynchronized=no)", fix)]
    if shutil.which("chronyc"):
        r = subprocess.run(["chronyc", "-n", "tracking"], capture_output=True, text=True, timeout=10)
        if r.returncode == 0:
            leap = next((ln.split(":", 1)[1].strip() for ln in r.stdout.splitlines()
                         if ln.startswith("Leap status")), "")
            if leap and leap != "Not synchronised":
                return [Finding("clock", "ok", f"synchronised (chrony: {leap})")]
            return [Finding("clock", "fail", f"not synchronised (chrony: {leap or 'no leap status'})", fix)]
    state = adjtimex_state()
    if state is None:
        return [Finding("clock", "warn", "cannot tell: no timedatectl, chronyc or adjtimex here", fix)]
    if state == TIME_ERROR:
        return [Finding("clock", "fail", "not synchronised (kernel adjtimex state TIME_ERROR)", fix)]
    return [Finding("clock", "ok", f"synchronised (kernel adjtimex state {state})")]


def adjtimex_state() -> int | None:
    """The kernel clock's state, read-only (modes 0); None where libc has no adjtimex."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        fn = libc.adjtimex
    except (OSError, AttributeError, TypeError):
        return None
    buf = ctypes.create_string_buffer(512)  # struct timex is 208 bytes on x86-64; modes (0) first
    state = int(fn(buf))
    return None if state < 0 else state


def check_disk(cfg: Config, state_dir: Path) -> list[Finding]:
    quota = int(cfg.journal.quota)
    where = state_dir if state_dir.exists() else state_dir.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError as e:
        return [Finding("disk", "fail", f"{where}: {e.strerror or e}", "create the state directory")]
    jpath = state_dir / "journal.db"
    held = sum(p.stat().st_size for p in (jpath, jpath.with_name("journal.db-wal")) if p.exists())
    need = max(0, quota - held)
    text = (f"{free / 1e9:.2f} GB free on {where}; the journal holds {held / 1e9:.2f} GB "
            f"of its {quota / 1e9:.2f} GB quota")
    if free < need:
        return [Finding("disk", "fail", text + f": {(need - free) / 1e9:.2f} GB short",
                        f"free space on {where}, or lower journal.quota "
                        f"below {(held + free) * 0.8 / 1e9:.2f} GB")]
    if free < need * 1.2:
        return [Finding("disk", "warn", text + ": less than 20 % to spare",
                        "free space or lower journal.quota")]
    return [Finding("disk", "ok", text)]


def check_serial(cfg: Config) -> list[Finding]:
    out = []
    for d in cfg.devices:
        port = getattr(d, "port", None)
        if not isinstance(port, str):
            continue  # a TCP device
        p = Path(port)
        where = f"device {d.name}: {port}"
        try:
            st = p.stat()
        except FileNotFoundError:
            out.append(Finding("serial", "fail", f"{where} does not exist",
                               "plug the adapter in, or fix the port (ls /dev/serial/by-id/)"))
            continue
        except PermissionError:
            out.append(Finding("serial", "fail", f"{where}: permission denied", "add the user to its group"))
            continue
        if not stat.S_ISCHR(st.st_mode):
            out.append(Finding("serial", "fail", f"{where} is not a character device", "point it at the tty"))
        elif not os.access(p, os.R_OK | os.W_OK):
            try:
                import grp
                group = grp.getgrgid(st.st_gid).gr_name
            except (KeyError, ImportError):
                group = str(st.st_gid)
            out.append(Finding("serial", "fail", f"{where}: not readable and writable by this user",
                               f"add the service user to group {group} (the unit's SupplementaryGroups=)"))
        else:
            out.append(Finding("serial", "ok", f"{where} readable and writable"))
    return out


def check_servers(cfg: Config, timeout: float) -> list[Finding]:
    out = []
    for where, host, port in servers(cfg):
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
            out.append(Finding("servers", "ok", f"{where}: {host}:{port} reachable"))
        except OSError as e:
            why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__)
            out.append(Finding("servers", "fail", f"{where}: {host}:{port} {why}",
                               "start the server, or fix the address, firewall or route"))
    return out


def state_secrets(cfg: Config, state_dir: Path) -> list[tuple[str, Path]]:
    """Secret files the daemon keeps in its state directory, where they exist: the uplink's
    node keys (uplink/keys.py) and the token store (hashed tokens and user names)."""
    from uplink.keys import key_path

    users = cfg.path(cfg.api.users_file) if cfg.api and cfg.api.users_file else state_dir / "users.json"
    found = [("uplink node keys", key_path(state_dir)), ("token store", users)]
    return [(w, p) for w, p in found if p.exists()]


def check_files(cfg: Config, *, cert_days: int, now: datetime | None = None,
                state_dir: Path | None = None) -> list[Finding]:
    from cryptography import x509

    now = now or datetime.now(UTC)
    secrets, certs = files(cfg)
    if state_dir is not None:
        secrets += state_secrets(cfg, state_dir)
    out = []
    for where, p in secrets:
        try:
            mode = stat.S_IMODE(p.stat().st_mode)
        except OSError as e:
            out.append(Finding("files", "fail", f"{where}: {p}: {e.strerror or e}",
                               "create it or fix the path"))
            continue
        if mode & 0o077:
            out.append(Finding("files", "fail",
                               f"{where}: {p} has mode {mode:04o}, readable by group or others",
                               f"chmod 600 {p}"))
        else:
            out.append(Finding("files", "ok", f"{where}: {p} mode {mode:04o}"))
    for where, p in certs:
        try:
            data = p.read_bytes()[: 1 << 20]
        except OSError as e:
            out.append(Finding("certs", "fail", f"{where}: {p}: {e.strerror or e}",
                               "create it or fix the path"))
            continue
        try:
            found = x509.load_pem_x509_certificates(data) if b"-----BEGIN" in data else \
                [x509.load_der_x509_certificate(data)]
        except ValueError as e:
            out.append(Finding("certs", "fail", f"{where}: {p} is not a certificate ({e})", "replace it"))
            continue
        for c in found:
            end = c.not_valid_after_utc
            name = c.subject.rfc4514_string() or "(no subject)"
            days = (end - now).total_seconds() / 86400
            if days < 0:
                out.append(Finding("certs", "fail", f"{where}: {p} ({name}) expired {end:%Y-%m-%d}",
                                   "renew the certificate"))
            elif days < cert_days:
                out.append(Finding("certs", "warn", f"{where}: {p} ({name}) expires {end:%Y-%m-%d}, "
                                   f"in {days:.0f} days", "renew it soon"))
            elif c.not_valid_before_utc > now:
                out.append(Finding("certs", "fail", f"{where}: {p} ({name}) not valid before "
                                   f"{c.not_valid_before_utc:%Y-%m-%d}",
                                   "check the clock or the certificate"))
            else:
                out.append(Finding("certs", "ok",
                                   f"{where}: {p} ({name}) valid until {end:%Y-%m-%d}"))
    return out


CHECKS = ("clock", "disk", "serial", "servers", "files")


def run_checks(cfg: Config, state_dir: Path, *, timeout: float = 3.0, cert_days: int = 30,
               skip: frozenset[str] = frozenset()) -> list[Finding]:
    out: list[Finding] = []
    for name in CHECKS:
        if name in skip:
            continue
        if name == "clock":
            out += check_clock()
        elif name == "disk":
            out += check_disk(cfg, state_dir)
        elif name == "serial":
            out += check_serial(cfg)
        elif name == "servers":
            out += check_servers(cfg, timeout)
        else:
            out += check_files(cfg, cert_days=cert_days, state_dir=state_dir)
    return out


def _bounded(lo: float, hi: float, kind: type = float) -> Any:
    def parse(text: str) -> Any:
        v = kind(text)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{text}: give {lo:g} to {hi:g}")
        return v
    return parse


def cmd_doctor(args: argparse.Namespace) -> int:
    from gateway.config import load
    from gateway.core.configcheck import ConfigError

    try:
        cfg = load(args.config)
    except ConfigError as e:
        for line in e.lines:
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    state_dir = Path(args.state_dir) if args.state_dir else Path(cfg.gateway.state_dir)
    found = run_checks(cfg, state_dir, timeout=args.timeout, cert_days=args.cert_days,
                       skip=frozenset(args.skip or ()))
    mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    for f in found:
        if f.level == "ok" and args.quiet:
            continue
        print(f"{mark[f.level]} {f.check:<8} {f.what}")
        if f.fix and f.level != "ok":
            print(f"     {'':<8} fix: {f.fix}")
    fails = sum(f.level == "fail" for f in found)
    warns = sum(f.level == "warn" for f in found)
    print(f"{fails} to fix, {warns} warning(s), {len(found) - fails - warns} ok")
    return EXIT_FAIL if fails else EXIT_OK


def add_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("doctor", help="check clock, disk, serial ports, servers, certificates and key modes "
                                      "(exit 0 ok, 1 something to fix, 2 bad config)")
    p.add_argument("-c", "--config", default=os.environ.get("SAFEGW_CONFIG", "/etc/safegw/gateway.yaml"),
                   help="default: $SAFEGW_CONFIG, else /etc/safegw/gateway.yaml")
    p.add_argument("--state-dir", help="override gateway.state_dir (as given to `safegw run`)")
    p.add_argument("--timeout", type=_bounded(0.05, 60), default=3.0,
                   help="seconds to wait for each server (default 3)")
    p.add_argument("--cert-days", type=_bounded(0, 3650, int), default=30,
                   help="warn when a certificate expires sooner (default 30)")
    p.add_argument("--skip", action="append", choices=CHECKS, help="leave a check out (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only what to fix")
    p.set_defaults(func=cmd_doctor)
