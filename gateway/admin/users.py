"""The ``safegw users`` command: API users and their bearer tokens (gateway/core/tokens.py)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from gateway.core.tokens import ROLES, UserError, UserStore, print_users


def store_for(args: argparse.Namespace) -> tuple[UserStore, Path]:
    if args.state_dir:
        state = Path(args.state_dir)
        return UserStore(state / "users.json"), state
    if not args.config:
        raise UserError("give -c CONFIG (or --state-dir DIR)")
    from gateway.config import load_or_exit

    cfg = load_or_exit(args.config)
    state = Path(cfg.gateway.state_dir)
    path = cfg.api.users_file if cfg.api is not None and cfg.api.users_file else state / "users.json"
    return UserStore(path), state


def _handler(args: argparse.Namespace) -> int:
    from gateway.admin.registers import audit_offline

    try:
        store, state = store_for(args)
        actor = f"cli:{os.environ.get('USER') or os.getuid()}"
        if args.users_cmd in ("add", "rotate"):
            token = store.add(args.name, args.role, by=actor, rotate=args.users_cmd == "rotate")
            audit_offline(
                state, actor, "CLI", f"users {args.users_cmd}", {"user": args.name, "role": args.role}
            )
            print(token)
            print(f"token for {args.name} ({args.role}); shown once: store it now", file=sys.stderr)
        elif args.users_cmd == "revoke":
            store.revoke(args.name, by=actor)
            audit_offline(state, actor, "CLI", "users revoke", {"user": args.name})
            print(f"revoked {args.name}")
        else:
            print_users(store.users(), as_json=args.json)
    except UserError as e:
        print(f"safegw users: {e}", file=sys.stderr)
        return 1
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("users", help="API users and tokens (add, list, revoke, rotate)")
    p.add_argument("-c", "--config", help="gateway config (the users file is in its state_dir)")
    p.add_argument("--state-dir", help="state directory instead of -c")
    us = p.add_subparsers(dest="users_cmd", metavar="ACTION")
    us.required = True
    for cmd, text in (
        ("add", "create a user and print its token once"),
        ("rotate", "replace a user's token (the old one stops working)"),
    ):
        a = us.add_parser(cmd, help=text)
        a.add_argument("name")
        a.add_argument("--role", choices=ROLES, required=True)
    r = us.add_parser("revoke", help="revoke a user's token")
    r.add_argument("name")
    lst = us.add_parser("list", help="list users (never tokens)")
    lst.add_argument("--json", action="store_true")
    for child in (*(us.choices[c] for c in ("add", "rotate")), r, lst):
        # accept -c after the action too (safegw users add NAME --role viewer -c FILE)
        child.add_argument("-c", "--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        child.add_argument("--state-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.set_defaults(func=_handler)
