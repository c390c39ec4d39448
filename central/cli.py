"""``safegw central -c central.yaml``: run a central sync node (or ``--check`` its config)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from central.config import ConfigError, load

log = logging.getLogger(__name__)


def cmd_central(args: argparse.Namespace) -> int:
    try:
        cfg = load(args.config)
    except ConfigError as e:
        for line in e.lines:
            print(line, file=sys.stdout if args.check else sys.stderr)
        return 2
    if args.check:
        print(f"ok: central node {cfg.node.id}, {len(cfg.sources)} sources, state {cfg.state.backend}")
        return 0
    if args.state_dir:
        from pathlib import Path

        cfg.node.state_dir = Path(args.state_dir)
    from gateway.cli import setup_logging

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


def add_command(subparsers: Any) -> None:
    p = subparsers.add_parser("central",
                              help="run a central sync node (pulls / receives gateways, forwards up)")
    p.add_argument("-c", "--config", required=True, help="central.yaml")
    p.add_argument("--check", action="store_true", help="validate the config and exit (0 ok, 2 invalid)")
    p.add_argument("--state-dir", help="override node.state_dir")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_central)
