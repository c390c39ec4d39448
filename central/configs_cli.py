"""``safegw central -c central.yaml config push --gateway ID FILE`` and ``config list``.

``push`` checks the file (bounded YAML, a mapping, ``gateway.id`` = ID), signs it with
this node's key as the next version for that gateway and stores it in the node's
``configs.db``; the running node delivers it over the sync link (central/configs.py).
``list`` prints per gateway the newest version issued, delivered and the last result.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from central.config import CentralConfig
from central.configs import ConfigStore, IssueError, check_text
from uplink import configdoc, keys


def add_parser(sub: Any) -> None:
    c = sub.add_parser("config", help="issue a config to a gateway (delivered over the sync link), list them")
    cs = c.add_subparsers(dest="config_cmd", metavar="ACTION")
    cs.required = True
    p = cs.add_parser("push", help="sign FILE as the next config version of gateway ID")
    p.add_argument("--gateway", required=True, help="the gateway's id (a source of this node)")
    p.add_argument("file", help="the gateway's config (YAML)")
    lst = cs.add_parser("list", help="per gateway: version issued, delivered, last result")
    lst.add_argument("--json", action="store_true")
    for child in (p, lst):
        child.add_argument("-c", "--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        child.add_argument("--state-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def run(args: argparse.Namespace, cfg: CentralConfig) -> int:
    store = ConfigStore(Path(cfg.node.state_dir) / "configs.db")
    try:
        if args.config_cmd == "push":
            return _push(args, cfg, store)
        rows = store.status_sync()
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        print(f"{'GATEWAY':24} {'ISSUED':>7} {'DELIVERED':>9}  LAST RESULT")
        for g, d in sorted(rows.items()):
            issued = d["issued"]["version"] if d["issued"] else "-"
            delivered = d["delivered"]["version"] if d["delivered"] else "-"
            r = d["last_result"]
            last = "-"
            if r:
                last = f"v{r['version']} {r['result']}" + (f": {r['reason']}" if r["reason"] else "")
            print(f"{g:24} {issued:>7} {delivered:>9}  {last}")
        return 0
    finally:
        store.close()


def _push(args: argparse.Namespace, cfg: CentralConfig, store: ConfigStore) -> int:
    src = next((s for s in cfg.sources if s.id == args.gateway), None)
    if src is None:
        print(f"safegw central config push: {args.gateway!r} is not among this node's sources "
              f"({', '.join(s.id for s in cfg.sources) or 'none'})", file=sys.stderr)
        return 2
    path = Path(args.file)
    try:
        size = path.stat().st_size
        if size > configdoc.MAX_TEXT:  # bounded before it is read
            raise IssueError(f"{path}: {size} bytes is more than {configdoc.MAX_TEXT} for a config")
        text = path.read_text(encoding="utf-8")
        check_text(text, args.gateway, str(path))
        node = keys.load(cfg.node.state_dir)
        alg = "sm2-sm3" if src.suite == "gm" else "ed25519"
        version, sha = store.issue_sync(args.gateway, text, signer=node, alg=alg, by="cli")
    except (IssueError, configdoc.ConfigDocError, OSError, UnicodeDecodeError, keys.KeyFileError,
            ValueError) as e:
        print(f"safegw central config push: {e}", file=sys.stderr)
        return 2
    print(f"config v{version} for {args.gateway} issued (sha256 {sha}, {alg}); the node delivers it over "
          "the sync link")
    return 0
