"""The ``safegw keys`` command: make, show, rotate and retire this node's uplink key sets.

The key files themselves (format, permissions, rotation) are ``uplink/keys.py``; this
module adds the command line on top, and finds the state directory and node id in a
gateway config (validated, like ``safegw check``) or a central config (read leniently).
Registered in ``gateway/cli.py``'s ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from uplink.keys import KeyFileError, init, key_path, load_all, public_bundle, retire, rotate


class _ConfigProblem(KeyFileError):
    """The config named with -c is invalid (exit code 2, like ``safegw check``)."""



def _state_and_id(args: argparse.Namespace) -> tuple[Path, str | None]:
    """State dir and node id from --state-dir/--id, else from the config file."""
    state_dir: Path | None = Path(args.state_dir) if args.state_dir else None
    node_id: str | None = args.id
    if args.config and (state_dir is None or node_id is None):
        cfg_state, cfg_id = _from_config(args.config)
        state_dir = state_dir or cfg_state
        node_id = node_id or cfg_id
    if state_dir is None:
        raise KeyFileError("say where the keys live: -c CONFIG or --state-dir DIR")
    return state_dir, node_id


def _from_config(path: str) -> tuple[Path | None, str | None]:
    """Read the node id and state dir of a gateway config, or of a central config.

    The gateway config is validated strictly; a central config (another schema) is read
    leniently for its ``id`` and ``state_dir``, wherever its top-level section keeps them.
    """
    from gateway.config import load
    from gateway.core.configcheck import ConfigError

    try:
        cfg = load(path)
        return cfg.gateway.state_dir, cfg.gateway.id
    except ConfigError as err:
        try:
            doc = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError):
            doc = None
        if isinstance(doc, dict) and "gateway" not in doc:  # a gateway config must be valid
            for section in ("central", "node", None):
                d = doc.get(section) if section else doc
                if isinstance(d, dict) and isinstance(d.get("id"), str):
                    sd = d.get("state_dir") or doc.get("state_dir")
                    return (Path(sd) if sd else None), d["id"]
        raise _ConfigProblem("\n".join(err.lines)) from None


def cmd_keys(args: argparse.Namespace) -> int:
    try:
        state_dir, node_id = _state_and_id(args)
        if args.action == "init":
            if not node_id:
                raise KeyFileError("no node id: give --id or -c CONFIG")
            try:
                keys = init(state_dir, node_id)
            except FileExistsError as e:
                print(f"safegw keys: {e}", file=sys.stderr)
                return 1
            print(f"made keys for {node_id} in {key_path(state_dir)} (kid {keys.kid})", file=sys.stderr)
            print(public_bundle(keys), end="")
            return 0
        if args.action == "rotate":
            keys = rotate(state_dir)
            print(f"new current key set {keys.kid}; old sets kept (retire them with "
                  f"'safegw keys retire KID' once every peer has the new one)", file=sys.stderr)
            print(public_bundle(load_all(state_dir)), end="")
            return 0
        if args.action == "retire":
            if not args.kid:
                raise KeyFileError("which kid? 'safegw keys retire KID'")
            retire(state_dir, args.kid)
            print(public_bundle(load_all(state_dir)), end="")
            return 0
        # show
        sets = load_all(state_dir)
        if not sets:
            print(f"safegw keys: no keys in {key_path(state_dir)}; run 'safegw keys init'", file=sys.stderr)
            return 1
        text = public_bundle(sets)
        if args.output:
            Path(args.output).write_text(text)
        print(text, end="")
        return 0
    except _ConfigProblem as e:
        print(e, file=sys.stderr)
        return 2
    except KeyFileError as e:
        print(f"safegw keys: {e}", file=sys.stderr)
        return 1


def add_command(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "keys", help="make and show this node's uplink key pairs (X25519 + Ed25519 + SM2)",
        description="Key pairs for the encrypted uplink: X25519 and Ed25519 for the standard suite, "
                    "SM2 for the national suite (uplink.suite: gm). 'init' makes them (files 0600, never "
                    "overwritten), 'show' prints the public keys and fingerprints to hand to the "
                    "other side, 'rotate' adds a new current set keeping the old ones, 'retire KID' "
                    "drops an old set. A key set made before SM2 existed gets one by 'rotate'.")
    p.add_argument("action", choices=["init", "show", "rotate", "retire"])
    p.add_argument("kid", nargs="?", help="key id (for retire)")
    p.add_argument("-c", "--config", help="gateway (or central) config: its id and state_dir")
    p.add_argument("--state-dir", help="state directory (overrides the config's)")
    p.add_argument("--id", help="node id (overrides the config's)")
    p.add_argument("-o", "--output", help="show: also write the public bundle to this file")
    p.set_defaults(func=cmd_keys)
