"""``safegw init``: a gateway's first start (docs/operations.md, "First start").

Writes a first config (gateway id, site code, state directory), makes the uplink key
pairs (uplink/keys.py: X25519 + Ed25519, and SM2 when gmssl-pyx is installed), makes the
first admin token (gateway/core/tokens.py: stored hashed, printed once), sets the modes
(state directory 0700, secrets 0600, config 0640) and prints the next steps. Run as
root where the package made the ``safegw`` service user, it hands what it made to that
user (state directory and its files safegw:safegw, the config root:safegw), so the
service can read its keys without a manual chown.

It refuses to overwrite a config, keys or tokens that exist, and says why: keys identify
this gateway to central (new ones cut it off until central has the new public bundle),
tokens are what operators log in with. ``--force`` replaces them, moving the old key
file and token store aside (``*.replaced-<time>``), never deleting them.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pwd
import re
import sys
import time
from pathlib import Path
from typing import Any

from gateway.core.cliutil import EXIT_CONFIG, EXIT_FAIL, EXIT_OK

SITE_MAX = 64
ADMIN_DEFAULT = "admin"
SERVICE_USER = "safegw"  # made by the package (systemd/safegw.sysusers); the units run as it


class InitRefused(Exception):
    pass


def _ask(prompt: str, default: str | None) -> str:
    got = input(f"{prompt}" + (f" [{default}]" if default else "") + ": ").strip()
    return got or (default or "")


def config_text(gw_id: str, site: str, state_dir: Path, suite: str) -> str:
    uplink = ("uplink: {suite: gm, cipher: sm4-gcm}   # the national suite (docs/security.md)\n"
              if suite == "gm" else
              "# uplink: {...}   # the encrypted link to central (docs/uplink.md)\n")
    return (
        "# safegw gateway config, written by `safegw init`. Check it with `safegw check -c FILE`.\n"
        "# Add devices (docs/configuration.md) and the uplink, then `systemctl restart safegw`.\n"
        f"gateway: {{id: {gw_id}, site: \"{site}\", state_dir: \"{state_dir}\"}}\n"
        "devices: []\n"
        "api: {listen: \"127.0.0.1:8080\"}   # the admin API; tokens: `safegw users`\n"
        + uplink
    )


def _aside(p: Path) -> Path:
    dest = p.with_name(f"{p.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
    os.replace(p, dest)
    return dest


def hand_to_service_user(state_dir: Path, config: Path, user: str = SERVICE_USER) -> str | None:
    """Run as root with the service user present: give it the state directory and
    everything in it, and its group the config. Returns what was done, or None when
    there is nothing to do (not root, or no such user: a developer's own run)."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None
    uid, gid = pw.pw_uid, pw.pw_gid
    # lchown: a symlink planted in the state directory must not hand over its target
    for d, dirs, files in os.walk(state_dir):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(d, name), uid, gid)
    os.lchown(state_dir, uid, gid)
    os.lchown(config, 0, gid)  # root writes it, the service reads it (0640)
    return f"handed {state_dir} and its files to {user}:{user}, {config} to root:{user}"


def run_init(*, config: Path, gw_id: str, site: str, state_dir: Path, suite: str, admin: str,
             force: bool, service_user: str = SERVICE_USER) -> tuple[str, list[str]]:
    """Everything ``safegw init`` does; returns the admin token and what was done."""
    from gateway.core.config import ID_PATTERN
    from gateway.core.tokens import UserError, UserStore
    from uplink import keys as keymod

    if not re.match(ID_PATTERN, gw_id):
        raise InitRefused(f"gateway id {gw_id!r}: 1-64 of letters, digits and . _ - (starting with a letter "
                          "or digit), as central knows it")
    if not site or len(site) > SITE_MAX or not site.isprintable() or '"' in site or "\\" in site:
        raise InitRefused(f"site code {site[:80]!r}: 1-{SITE_MAX} printable characters, no quotes "
                          "(the enterprise / site code, 统一社会信用代码)")
    if not state_dir.is_absolute():
        raise InitRefused(f"state directory {state_dir}: give an absolute path (the daemon's working "
                          "directory is not yours)")
    key_file = keymod.key_path(state_dir)
    users_file = state_dir / "users.json"
    # every refusal before anything is written
    problems = []
    if config.exists():
        problems.append(f"{config} exists (it may hold your devices)")
    if key_file.exists():
        problems.append(f"{key_file} exists: these keys identify the gateway to central; new ones cut "
                        "it off until central is given the new public bundle (`safegw keys rotate` adds "
                        "a set and keeps the old)")
    if users_file.exists() and UserStore(users_file).users():
        problems.append(f"{users_file} holds tokens people log in with; new ones lock them out "
                        "(`safegw users add/rotate` changes one user)")
    if suite == "gm" and importlib.util.find_spec("gmssl_pyx") is None:
        problems.append("the national suite needs SM2 keys and gmssl-pyx is not installed here "
                        "(install it, or choose --suite x25519-ed25519)")
        force = False  # not something --force can get past
    if problems and not force:
        raise InitRefused("refusing to overwrite:\n  " + "\n  ".join(problems)
                          + "\n(--force replaces them; old key and token files are moved aside, not deleted)")
    done: list[str] = []
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    config.parent.mkdir(parents=True, exist_ok=True)
    tmp = config.with_name(config.name + ".part")
    fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o640)
    with open(fd, "w", encoding="utf-8") as f:
        f.write(config_text(gw_id, site, state_dir, suite))
    os.chmod(tmp, 0o640)  # no secret in it; the safegw group reads it
    os.replace(tmp, config)
    done.append(f"wrote {config} (0640)")
    if key_file.exists():
        done.append(f"moved the old keys to {_aside(key_file)}")
    k = keymod.init(state_dir, gw_id)
    done.append(f"made uplink key set {k.kid} in {key_file} (0600)"
                + (" with SM2" if k.sm2 is not None else " (no SM2: gmssl-pyx not installed)"))
    if users_file.exists() and force:
        done.append(f"moved the old tokens to {_aside(users_file)}")
    try:
        token = UserStore(users_file).add(admin, "admin", by="init")
    except UserError as e:
        raise InitRefused(f"admin user {admin!r}: {e}") from None
    done.append(f"made admin user {admin!r}; its token is stored hashed in {users_file} (0600)")
    handed = hand_to_service_user(state_dir, config, service_user)
    if handed:
        done.append(handed)
    return token, done


def cmd_init(args: argparse.Namespace) -> int:
    from gateway.config import load
    from gateway.core.configcheck import ConfigError

    interactive = sys.stdin.isatty() and not args.yes
    gw_id, site, state, suite = args.id, args.site, args.state_dir, args.suite
    try:
        if interactive:
            gw_id = gw_id or _ask("gateway id (as central knows it)", None)
            site = site or _ask("site code (统一社会信用代码)", None)
            state = state or _ask("state directory", "/var/lib/safegw")
            suite = suite or _ask("uplink suite (x25519-ed25519 or gm)", "x25519-ed25519")
        missing = [f for f, v in (("--id", gw_id), ("--site", site)) if not v]
        if missing:
            raise InitRefused(f"give {' and '.join(missing)} (or run on a terminal to be asked)")
        if suite not in (None, "x25519-ed25519", "gm"):
            raise InitRefused(f"suite {suite!r}: x25519-ed25519 or gm")
        token, done = run_init(config=Path(args.config), gw_id=gw_id, site=site,
                               state_dir=Path(state or "/var/lib/safegw"), suite=suite or "x25519-ed25519",
                               admin=args.admin, force=args.force)
    except InitRefused as e:
        print(f"safegw init: {e}", file=sys.stderr)
        return EXIT_FAIL
    except (OSError, ValueError) as e:
        print(f"safegw init: {e}", file=sys.stderr)
        return EXIT_FAIL
    for line in done:
        print(line, file=sys.stderr)
    try:
        load(args.config)
    except ConfigError as e:
        for line in e.lines:
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    print(token)
    print(f"\nthe token above is for {args.admin!r} (role admin) and is shown only once: store it now.\n"
          "next:\n"
          f"  1. add your devices to {args.config}, then: safegw check -c {args.config}\n"
          f"  2. commission them: safegw read -c {args.config}\n"
          f"  3. give central this gateway's public keys: safegw keys show -c {args.config} -o gw.pub\n"
          "  4. start it: systemctl enable --now safegw\n"
          f"  5. back it up: safegw backup -c {args.config} -o backup.tar.zst --passphrase-file FILE",
          file=sys.stderr)
    return EXIT_OK


def add_command(sub: Any) -> None:
    p = sub.add_parser("init", help="first start: config, uplink keys, admin token (interactive or flags)")
    p.add_argument("-c", "--config", default="/etc/safegw/gateway.yaml", help="config file to write")
    p.add_argument("--id", help="gateway id, as central knows it")
    p.add_argument("--site", help="enterprise / site code")
    p.add_argument("--state-dir", help="state directory (default /var/lib/safegw)")
    p.add_argument("--suite", choices=["x25519-ed25519", "gm"], help="uplink cipher suite")
    p.add_argument("--admin", default=ADMIN_DEFAULT, help="name of the first admin user")
    p.add_argument("-y", "--yes", action="store_true", help="never ask (scripts); missing values are errors")
    p.add_argument("--force", action="store_true",
                   help="replace an existing config, keys and tokens (old files moved aside)")
    p.set_defaults(func=cmd_init)
