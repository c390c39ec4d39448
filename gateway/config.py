"""The daemon's config loader: the core's models and checks, plus the checks of the parts
that run (drivers, rules), so ``safegw check`` reports everything the daemon would refuse.
"""

from __future__ import annotations

from pathlib import Path

from drivers.modbus.plan import check_config as modbus_checks
from gateway.core import configcheck
from gateway.core.cliutil import EXIT_CONFIG, print_config_errors
from gateway.core.config import Config
from gateway.core.config_notify import check_config as notify_checks
from gateway.core.config_regulators import check_config as regulator_checks
from gateway.core.configcheck import ConfigError, Source
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
WARNINGS = (rules_warnings,)

__all__ = ["CHECKS", "WARNINGS", "ConfigError", "check_warnings", "load", "load_or_exit", "loads", "validate"]


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


def load_or_exit(path: str) -> Config:
    """For commands: the config, or its errors on stderr and exit 2."""
    try:
        return load(path)
    except ConfigError as e:
        print_config_errors(e.lines)
        raise SystemExit(EXIT_CONFIG) from None
