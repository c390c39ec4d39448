"""The daemon's config loader: the core's models and checks, plus the checks of the parts
that run (drivers, rules), so ``safegw check`` reports everything the daemon would refuse.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import selectors
import signal
import time
from pathlib import Path

from drivers.modbus.plan import check_config as modbus_checks
from gateway.core import configcheck
from gateway.core.cliutil import EXIT_CONFIG, print_config_errors
from gateway.core.config import Config
from gateway.core.config_notify import check_config as notify_checks
from gateway.core.config_regulators import check_config as regulator_checks
from gateway.core.configcheck import ConfigError, Source
from gateway.core.hj212_codes import config_warnings as hj212_code_warnings
from gateway.core.yamlsrc import Path_
from rules.settings import check_config as rules_checks
from rules.settings import config_warnings as rules_warnings


def uplink_checks(cfg: Config) -> list[tuple[Path_, str]]:
    """The central public keys the uplink encrypts to must be there (found only at start
    otherwise, by which time the engineer has left the site)."""
    errs: list[tuple[Path_, str]] = []
    if cfg.uplink is not None:
        if cfg.uplink.suite == "gm":
            from gateway.core.gmcrypto import sm2_available

            if not sm2_available():
                errs.append((("uplink", "suite"), "suite gm needs the SM2 library gmssl-pyx, not installed "
                             "here: pip install 'safegw[gm]' (docs/security.md)"))
        for i, p in enumerate(cfg.uplink.central_keys):
            if not cfg.path(p).is_file():
                errs.append((("uplink", "central_keys", i), f"no file {cfg.path(p)}: copy central's public "
                             "key bundle there (safegw keys show on the central node)"))
            elif cfg.uplink.suite == "gm":
                errs += _gm_bundle_checks(cfg.path(p), ("uplink", "central_keys", i))
    return errs


def _gm_bundle_checks(path: Path, where: Path_) -> list[tuple[Path_, str]]:
    """The gm suite encrypts to central's SM2 keys: a bundle without one would fail at start."""
    from uplink.keys import KeyFileError, load_public

    try:
        pubs = load_public(path)
    except KeyFileError as e:
        return [(where, str(e))]
    nodes = dict.fromkeys(pk.id for pk in pubs)
    with_sm2 = {pk.id for pk in pubs if pk.sm2 is not None}
    return [(where, f"suite gm: no key set of {n} in {path} has an SM2 key; {n} must run "
                    "'safegw keys rotate' and hand out its new bundle") for n in nodes if n not in with_sm2]


CHECKS = (modbus_checks, rules_checks, uplink_checks, notify_checks, regulator_checks)
#: what ``safegw check`` prints as warnings: allowed, but against a standard (exit stays 0)
WARNINGS = (rules_warnings, hj212_code_warnings)

__all__ = ["CHECKS", "WARNINGS", "ConfigError", "check_warnings", "load", "load_apart", "load_or_exit",
           "loads", "validate"]

log = logging.getLogger(__name__)


def check_warnings(path: str | Path, cfg: Config) -> list[str]:
    """The warnings for a valid config, as ``FILE:LINE:COL: key.path: warning: ...``."""
    src = configcheck.load_file(path)
    found = [(src.where(p), configcheck.format_error(src, p, msg)) for w in WARNINGS for p, msg in w(cfg)]
    return [line for _, line in sorted(found, key=lambda f: (f[0].line, f[0].col))]


def validate(src: Source) -> Config:
    return configcheck.validate(src, CHECKS)


def load(path: str | Path) -> Config:
    return configcheck.load(path, CHECKS)


def loads(text: str, file: str = "<string>") -> Config:
    return configcheck.loads(text, file, CHECKS)


#: the longest a child may take to parse (50,000 channels take ~15 s on a slow PC); past it,
#: it is killed and the config is parsed in the daemon itself
APART_TIMEOUT_S = 300.0


def _read_all(fd: int, pid: int, timeout_s: float) -> bytes:
    """Everything the child writes to ``fd`` until it closes it; b"" (and the child killed)
    when that takes longer than ``timeout_s`` (a child stuck on a lock copied at fork)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    os.kill(pid, signal.SIGKILL)
                    return b""
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
        finally:
            os.close(fd)


def load_apart(path: str | Path) -> Config:
    """``load(path)`` done in a short-lived child process (fork), the result handed back pickled.

    Parsing a large plant's YAML peaks at several times what the models keep (the node
    tree, every value's position, pydantic's intermediates), and CPython keeps most of that
    memory after it is freed (its arenas stay pinned by the few objects that live on): a
    10,000-channel daemon kept about 30 MB for nothing (bench/footprint.py). A child's peak
    goes back to the system when it exits. Config errors come back as the same ConfigError.
    Without fork, or should the child fail for any other reason, the config is loaded here
    as before. Call it before starting threads (the daemon does, first thing).
    """
    if not hasattr(os, "fork"):
        return load(path)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's cleanups
        code = 1
        try:
            # the parent's objects are not the child's garbage: collections that walk them
            # would copy every page of the parent's heap (copy-on-write) for nothing
            gc.freeze()
            os.close(r)
            try:
                out: tuple[str, object] = ("ok", load(path))
            except ConfigError as e:
                out = ("config", e.lines)
            with os.fdopen(w, "wb") as f:
                f.write(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    data = _read_all(r, pid, APART_TIMEOUT_S)
    _, status = os.waitpid(pid, 0)
    if status != 0 or not data:
        log.warning("config: loading it in a child process failed (status %d); loading it here", status)
        return load(path)
    kind, value = pickle.loads(data)  # our own child's output, through a private pipe
    if kind == "config":
        raise ConfigError(value)
    assert isinstance(value, Config)
    return value


def load_or_exit(path: str, *, apart: bool = False) -> Config:
    """For commands: the config, or its errors on stderr and exit 2. ``apart``: parsed in
    a child process (``load_apart``), for the long-running daemon."""
    try:
        return load_apart(path) if apart else load(path)
    except ConfigError as e:
        print_config_errors(e.lines)
        raise SystemExit(EXIT_CONFIG) from None
