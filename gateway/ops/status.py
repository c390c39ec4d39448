"""``safegw status``: the running daemon answers over a local Unix socket.

The daemon binds ``<state_dir>/status.sock`` (mode 0660: the service user and its group,
so an engineer in the ``safegw`` group needs no token and no network). A client sends one
line, ``status``, of at most ``MAX_REQUEST`` bytes within ``REQUEST_TIMEOUT_S``; the daemon
answers one JSON object and closes. The answer holds devices, consumers and their lag,
alarms, disk and the running config's hash and load time; never a secret, a token or a
key (only counts, names and states the viewer role already sees in ``/status``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.core.aio import within
from gateway.core.cliutil import EXIT_CONFIG, EXIT_FAIL, EXIT_OK, fit
from gateway.core.config import Config
from gateway.core.units import iso_ns
from gateway.services import DaemonContext, Service

log = logging.getLogger("safegw.status")

SOCKET_NAME = "status.sock"
SOCKET_MODE = 0o660
MAX_REQUEST = 64  # bytes of the one request line
REQUEST_TIMEOUT_S = 2.0
MAX_ANSWER = 4 << 20  # what a client reads at most
ALARMS_LISTED = 20


def config_hash(cfg: Config) -> str:
    """SHA-256 of the config as the daemon parsed it (so comments and layout do not count)."""
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()


def snapshot(daemon: DaemonContext, cfg_hash: str) -> dict[str, Any]:
    """What ``safegw status`` shows: cheap, from state the daemon already keeps."""
    now = daemon.clock()
    js = daemon.journal.stats()
    devices = [
        {
            "name": d.name, "protocol": d.protocol, "state": d.state, "last_error": d.last_error,
            "last_ok_age_s": round((now - d.last_ok_ns) / 1e9, 3) if d.last_ok_ns else None,
            "polls": d.polls, "errors": d.errors, "overruns": d.overruns,
        }
        for d in daemon.devices.values()
    ]
    active = daemon.rules.active()
    alarms = [
        {k: a.get(k) for k in ("channel", "level", "state", "since", "value", "limit")}
        for a in sorted(active, key=lambda a: -int(a.get("since") or 0))[:ALARMS_LISTED]
    ]
    try:
        du = shutil.disk_usage(daemon.state_dir)
        disk: dict[str, Any] = {"free_bytes": du.free, "total_bytes": du.total}
    except OSError as e:
        disk = {"error": f"{type(e).__name__}: {e.strerror or e}"}
    disk.update(journal_file_bytes=int(js.get("file_bytes") or 0),
                journal_quota_bytes=int(js.get("quota_bytes") or 0))
    services = {}
    for svc in daemon.services:
        try:
            s = svc.stats()
        except Exception as e:  # a service's stats must not take status down with it
            s = {"error": f"{type(e).__name__}: {e}"}
        services[svc.name] = {"lag_records": s.get("lag_records")} if isinstance(s, dict) else {}
    return {
        "gateway": {
            "id": daemon.cfg.gateway.id, "site": daemon.cfg.gateway.site, "version": __version__,
            "pid": os.getpid(), "started": iso_ns(daemon.started_ns), "now": iso_ns(now),
            "uptime_s": round((now - daemon.started_ns) / 1e9, 3),
        },
        "config": {"sha256": cfg_hash, "loaded": iso_ns(daemon.config_loaded_ns),
                   "text_sha256": daemon.config_sha256},
        "devices": devices,
        "journal": {k: js.get(k) for k in ("first_seq", "last_seq", "alive", "last_error",
                                           "dropped_records")},
        "consumers": {n: {"cursor": c.get("cursor"), "lag": c.get("lag")}
                      for n, c in sorted((js.get("consumers") or {}).items())},
        "alarms": {
            "active": sum(1 for a in active if str(a.get("state", "")).startswith("active")),
            "unacknowledged": sum(1 for a in active if "unacked" in str(a.get("state", ""))),
            "listed": alarms,
        },
        "disk": disk,
        "services": services,
    }


class StatusService:
    """Serves ``snapshot`` on ``<state_dir>/status.sock`` (a Service: gateway/services.py)."""

    name = "status"

    def __init__(self, daemon: DaemonContext) -> None:
        self.daemon = daemon
        self.path = Path(daemon.state_dir) / SOCKET_NAME
        self._hashed: tuple[object, str] = (None, "")  # (the config, its hash): a reload replaces it
        self.server: asyncio.AbstractServer | None = None
        self.answered = 0
        self.refused = 0

    def cfg_hash(self) -> str:
        """The hash of the config in force (it changes with a live reload)."""
        cfg = self.daemon.cfg
        if self._hashed[0] is not cfg:
            self._hashed = (cfg, config_hash(cfg))
        return self._hashed[1]

    async def start(self) -> None:
        # bind under a temporary name, set the mode, then rename into place: the socket is
        # never reachable with the umask's mode
        tmp = self.path.with_name(f".{SOCKET_NAME}.{os.getpid()}")
        try:
            for p in (tmp, self.path):
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISSOCK(p.lstat().st_mode):
                        p.unlink()  # left by a daemon that did not stop cleanly
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                with short_address(tmp) as addr:
                    sock.bind(addr)
                os.chmod(tmp, SOCKET_MODE)
                os.replace(tmp, self.path)
            except BaseException:
                sock.close()
                raise
            self.server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_REQUEST)
        except OSError as e:  # the gateway's work goes on without it; say so once
            log.error("status socket %s: %s; `safegw status` will not answer", self.path, e.strerror or e)

    async def run(self) -> None:
        if self.server is None:
            await asyncio.Event().wait()  # nothing to serve; stay until the daemon stops
        assert self.server is not None
        await self.server.serve_forever()

    async def drain(self) -> None:
        return None

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def stats(self) -> dict[str, Any]:
        return {"socket": str(self.path), "answered": self.answered, "refused": self.refused}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await within(reader.readuntil(b"\n"), REQUEST_TIMEOUT_S)
            except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                self.refused += 1
                writer.write(b'{"error": "send one line, \\"status\\", of at most 64 bytes"}\n')
                return
            if line.strip() != b"status":
                self.refused += 1
                writer.write(json.dumps({"error": f"unknown request {line.strip()[:32]!r}; "
                                                  "the only request is 'status'"}).encode() + b"\n")
                return
            writer.write(json.dumps(snapshot(self.daemon, self.cfg_hash()), default=str).encode() + b"\n")
            self.answered += 1
        except Exception:
            log.exception("status socket: request failed")
        finally:
            with contextlib.suppress(Exception):
                await within(writer.drain(), REQUEST_TIMEOUT_S)
            writer.close()


@contextlib.contextmanager
def short_address(path: Path) -> Iterator[str]:
    """An address for ``path`` that fits sun_path (108 bytes on Linux, unix(7)): the path
    itself when short, else ``/proc/self/fd/N/name`` through a descriptor of its folder."""
    if len(os.fsencode(str(path))) < 100 or not Path("/proc/self/fd").is_dir():
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def build_service(daemon: DaemonContext, _conf: object) -> Service:
    """Always on: keyed by the ``gateway`` section, which every config has."""
    return StatusService(daemon)


# ---------------------------------------------------------------------- client
class NotRunning(Exception):
    """No daemon answers at the socket."""


def ask(path: Path, timeout: float = 5.0) -> dict[str, Any]:
    """One request to the daemon's socket; NotRunning when nothing listens there."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            with short_address(path) as addr:
                s.connect(addr)
        except FileNotFoundError as e:
            raise NotRunning(f"the daemon is not running: no status socket at {path} (if it runs with "
                             "--state-dir, as the systemd unit does, give the same --state-dir)") from e
        except ConnectionRefusedError as e:
            raise NotRunning(f"the daemon is not running: nothing listens at {path} (a stale socket)") from e
        except PermissionError as e:
            raise NotRunning(f"cannot open {path}: permission denied; run as the service user "
                             "or a member of its group (safegw)") from e
        s.sendall(b"status\n")
        chunks, n = [], 0
        while n <= MAX_ANSWER:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
            n += len(b)
        if n > MAX_ANSWER:
            raise NotRunning(f"{path}: the answer is larger than {MAX_ANSWER} bytes")
    except TimeoutError as e:
        raise NotRunning(f"the daemon did not answer at {path} within {timeout:g} s") from e
    finally:
        s.close()
    out: dict[str, Any] = json.loads(b"".join(chunks))
    if "error" in out:
        raise NotRunning(f"{path}: {out['error']}")
    return out


def _age(s: float | None) -> str:
    if s is None:
        return "never"
    return f"{s:.1f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} TiB"


def render(st: dict[str, Any], on_disk_hash: str | None) -> str:
    g, c = st["gateway"], st["config"]
    lines = [f"safegw {g['version']}  gateway {g['id']} (site {g['site']})  pid {g['pid']}  "
             f"up {_age(g['uptime_s'])} since {g['started']}"]
    cfg = f"config sha256 {c['sha256'][:16]}… loaded {c['loaded']}"
    if on_disk_hash is not None:
        cfg += ("  (same as the file)" if on_disk_hash == c["sha256"]
                else "  (THE FILE ON DISK DIFFERS: systemctl reload safegw to apply it)")
    lines.append(cfg)
    lines.append("")
    lines.append(f"{fit('DEVICE', 20)} {fit('PROTOCOL', 11)} {fit('STATE', 9)} {fit('LAST OK', 8)} "
                 f"{fit('ERRORS', 7, right=True)}  LAST ERROR")
    for d in st["devices"]:
        lines.append(f"{fit(d['name'], 20)} {fit(d['protocol'], 11)} {fit(d['state'], 9)} "
                     f"{fit(_age(d['last_ok_age_s']), 8)} {fit(str(d['errors']), 7, right=True)}  "
                     f"{d['last_error'] or ''}")
    if not st["devices"]:
        lines.append("(no devices)")
    lines.append("")
    lines.append(f"{fit('CONSUMER', 28)} {fit('CURSOR', 10, right=True)} {fit('LAG', 10, right=True)}")
    for n, cons in st["consumers"].items():
        lines.append(f"{fit(n, 28)} {fit(str(cons['cursor']), 10, right=True)} "
                     f"{fit(str(cons['lag']), 10, right=True)}")
    j = st["journal"]
    lines.append(f"journal: seq {j['first_seq']}..{j['last_seq']}, "
                 f"{'writing' if j['alive'] else 'NOT WRITING: ' + str(j['last_error'])}, "
                 f"{j['dropped_records']} dropped by retention")
    a = st["alarms"]
    lines.append("")
    lines.append(f"alarms: {a['active']} active, {a['unacknowledged']} unacknowledged")
    for al in a["listed"]:
        lines.append(f"  {al['channel']:<16} {al['level']:<6} {al['state']:<20} "
                     f"value {al['value']} limit {al['limit']}")
    dk = st["disk"]
    lines.append("")
    if "error" in dk:
        lines.append(f"disk: {dk['error']}")
    else:
        lines.append(f"disk: {_bytes(dk['free_bytes'])} free of {_bytes(dk['total_bytes'])}; journal "
                     f"{_bytes(dk['journal_file_bytes'])} of its {_bytes(dk['journal_quota_bytes'])} quota")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.config import load
    from gateway.core.configcheck import ConfigError

    try:
        cfg = load(args.config)
    except ConfigError as e:
        for line in e.lines:
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    state_dir = Path(args.state_dir) if args.state_dir else Path(cfg.gateway.state_dir)
    try:
        st = ask(state_dir / SOCKET_NAME)
    except NotRunning as e:
        print(f"safegw status: {e}", file=sys.stderr)
        return EXIT_FAIL
    if args.json:
        st["config"]["file_sha256"] = config_hash(cfg)
        print(json.dumps(st, indent=2))
    else:
        print(render(st, config_hash(cfg)))
    return EXIT_OK


def add_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("status", help="ask the running daemon: devices, consumers, alarms, disk, config "
                                      "(exit 0, 1 not running, 2 bad config)")
    p.add_argument("-c", "--config", default=os.environ.get("SAFEGW_CONFIG", "/etc/safegw/gateway.yaml"),
                   help="default: $SAFEGW_CONFIG, else /etc/safegw/gateway.yaml")
    p.add_argument("--state-dir", help="override gateway.state_dir (as given to `safegw run`)")
    p.add_argument("--json", action="store_true", help="the daemon's answer as JSON")
    p.set_defaults(func=cmd_status)
