"""``safegw central -c central.yaml``: run a central sync node (or ``--check`` its config),
and ``safegw central -c central.yaml tokens add|rotate|revoke|list`` for the operators'
bearer tokens of ``GET /status`` (gateway/users.py's store: scrypt hashes, file 0600,
the token printed once and never logged)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from central.config import ConfigError, load, tokens_path

log = logging.getLogger(__name__)


def cmd_central(args: argparse.Namespace) -> int:
    if not getattr(args, "config", None):
        print("safegw central: give -c central.yaml", file=sys.stderr)
        return 2
    try:
        cfg = load(args.config)
    except ConfigError as e:
        for line in e.lines:
            print(line, file=sys.stdout if args.check else sys.stderr)
        return 2
    if args.state_dir:
        from pathlib import Path

        cfg.node.state_dir = Path(args.state_dir)
    if getattr(args, "central_cmd", None) == "tokens":
        return _tokens(args, cfg)
    if getattr(args, "central_cmd", None) == "config":
        from central import configs_cli

        return configs_cli.run(args, cfg)
    if getattr(args, "central_cmd", None) in ("history", "alarms", "late"):
        from central.query import run_cli

        return run_cli(args, cfg)
    if args.check:
        print(f"ok: central node {cfg.node.id}, {len(cfg.sources)} sources, state {cfg.state.backend}")
        return 0
    from gateway.core.cliutil import setup_logging

    setup_logging(args.log_level or cfg.node.log_level)
    from central.node import CentralNode

    async def main() -> None:
        node = CentralNode(cfg)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, node.stop)
        await node.start()
        try:
            await node.run()
        finally:
            await node.close()

    asyncio.run(main())
    return 0


def _tokens(args: argparse.Namespace, cfg: Any) -> int:
    from gateway.core.tokens import UserError, UserStore, print_users

    store = UserStore(tokens_path(cfg))
    try:
        if args.tokens_cmd in ("add", "rotate"):
            token = store.add(args.name, args.role, by="cli", rotate=args.tokens_cmd == "rotate")
            print(token)
            print(f"status token for {args.name} ({args.role}) in {store.path}; shown once: store it now",
                  file=sys.stderr)
        elif args.tokens_cmd == "revoke":
            store.revoke(args.name, by="cli")
            print(f"revoked {args.name}")
        else:
            print_users(store.users(), as_json=args.json)
    except (UserError, OSError) as e:
        print(f"safegw central tokens: {e}", file=sys.stderr)
        return 1
    return 0


def add_command(subparsers: Any) -> None:
    from gateway.core.tokens import ROLES

    p = subparsers.add_parser("central",
                              help="run a central sync node (pulls / receives gateways, forwards up)")
    p.add_argument("-c", "--config", help="central.yaml (required)")
    p.add_argument("--check", action="store_true", help="validate the config and exit (0 ok, 2 invalid)")
    p.add_argument("--state-dir", help="override node.state_dir")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="central_cmd", metavar="[tokens|config|history|alarms|late]")
    t = sub.add_parser("tokens", help="operators' bearer tokens for GET /status (add, rotate, revoke, list)")
    ts = t.add_subparsers(dest="tokens_cmd", metavar="ACTION")
    ts.required = True
    children = []
    for cmd, text in (("add", "create a token and print it once"),
                      ("rotate", "replace a name's token (the old one stops working)")):
        a = ts.add_parser(cmd, help=text)
        a.add_argument("name")
        a.add_argument("--role", choices=ROLES, default="viewer",
                       help="viewer reads /status (the only operator endpoint today)")
        children.append(a)
    r = ts.add_parser("revoke", help="revoke a name's token")
    r.add_argument("name")
    lst = ts.add_parser("list", help="list token names (never tokens or hashes)")
    lst.add_argument("--json", action="store_true")
    for child in (*children, r, lst):
        # accept -c after the action too (safegw central tokens add NAME -c FILE)
        child.add_argument("-c", "--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        child.add_argument("--state-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    from central import configs_cli
    from central.query import add_subcommands

    configs_cli.add_parser(sub)
    add_subcommands(sub)
    p.set_defaults(func=cmd_central)
