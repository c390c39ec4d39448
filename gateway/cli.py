"""The ``safegw`` command line.

Core commands live here (check, run, read, demo, sim). Commands that belong to one
part of the system (history, keys, central, users) are registered by that part
through ``COMMANDS`` below, each a function ``add_command(subparsers)`` that adds its
parser and sets ``func`` to a handler taking the parsed args and returning an exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from pathlib import Path

from gateway import __version__
from gateway.config import check_warnings, load, load_or_exit
from gateway.core.cliutil import EXIT_CONFIG, EXIT_FAIL, EXIT_OK, setup_logging
from gateway.core.configcheck import ConfigError

log = logging.getLogger("safegw")

EXIT_BROKEN_PIPE = 141

#: command name → "module:add_command". Imported only when that command (or the
#: full help) is asked for, so `safegw check` does not pay for FastAPI or httpx.
COMMANDS: dict[str, str] = {
    "history": "gateway.historian.history:add_command",
    "keys": "uplink.keys_cli:add_command",
    "central": "central.cli:add_command",
    "users": "gateway.admin.users:add_command",
    "notify": "gateway.notify.cli:add_command",
    "scan": "gateway.scan_cli:add_command",
    "status": "gateway.ops.status:add_command",
    "doctor": "gateway.ops.doctor:add_command",
    "points": "gateway.points.cli:add_command",
    "templates": "gateway.points.templates_cli:add_command",
    "init": "gateway.init_cmd:add_command",
    "backup": "gateway.backup:add_backup",
    "restore": "gateway.backup:add_restore",
}


# ---------------------------------------------------------------------- check
def cmd_check(args: argparse.Namespace) -> int:
    try:
        cfg = load(args.config)
    except ConfigError as e:
        for line in e.lines:
            print(line)
        return EXIT_CONFIG
    from gateway.core.channels import ChannelTable

    n = len(ChannelTable.from_config(cfg))
    warned = check_warnings(args.config, cfg)
    for line in warned:
        print(line)
    print(f"ok: {len(cfg.devices)} devices, {n} channels" + (f", {len(warned)} warnings" if warned else ""))
    if args.verbose:
        from gateway.core.config_regulators import unmapped_channels

        for name, chans in unmapped_channels(cfg).items():
            print(f"regulator {name}: {len(chans)} channel(s) not sent (no point mapping)"
                  + (": " + ", ".join(chans) if chans else ""))
    return EXIT_OK


# ---------------------------------------------------------------------- run
def cmd_run(args: argparse.Namespace) -> int:
    from gateway.core.malloc import cap_arenas

    cap_arenas()  # before any thread starts: a few threads need not hold a heap each
    cfg = load_or_exit(args.config, apart=True)  # the parse's peak memory stays in a child
    if args.state_dir:
        cfg.gateway.state_dir = Path(args.state_dir)
    setup_logging(args.log_level or cfg.gateway.log_level)
    from gateway.app import Gateway, install_signal_handlers

    async def main() -> None:
        gw = Gateway(cfg, config_path=args.config,
                     state_dir_override=Path(args.state_dir) if args.state_dir else None)
        install_signal_handlers(gw)
        await gw.run(drain_s=args.drain)
        # The journal is closed: everything taken is on disk and every consumer resumes
        # from its cursor. Leave now rather than wait for threads a library may still
        # have blocked in I/O (influxdb-client's write waits out its own 30 s timeout):
        # the stop must stay within the drain time (asyncio.run and the interpreter's
        # exit would join them).
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(EXIT_OK)

    from gateway.store.versions import SchemaTooNew

    refused: list[BaseException] = []
    try:
        asyncio.run(main())
    except* SchemaTooNew as eg:  # a file from a newer safegw: say so, no traceback, touch nothing
        refused.extend(eg.exceptions)
    for e in refused:
        log.error("%s", e)
    return EXIT_FAIL if refused else EXIT_OK


# ---------------------------------------------------------------------- read
def cmd_read(args: argparse.Namespace) -> int:
    cfg = load_or_exit(args.config)
    setup_logging("WARNING")
    from gateway.commission import read_once

    return asyncio.run(read_once(cfg, device=args.device, as_json=args.json))


# ---------------------------------------------------------------------- demo / sim
def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(seconds=args.seconds, state_dir=args.state_dir, config=args.config,
                    sim_config=args.sim_config, log_level=args.log_level or "ERROR")


def cmd_sim(args: argparse.Namespace) -> int:
    from simulators.__main__ import main as sim_main

    argv = ["-c", args.config]
    if args.seconds:
        argv += ["--seconds", str(args.seconds)]
    return sim_main(argv)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="safegw", description="Safety-monitoring gateway for industrial plants")
    p.add_argument("--version", action="version", version=f"safegw {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("check", help="validate a config file (exit 0 ok, 2 invalid)")
    c.add_argument("-c", "--config", required=True)
    c.add_argument("-v", "--verbose", action="store_true",
                   help="also list, per regulator adapter, the channels it does not send")
    c.set_defaults(func=cmd_check)

    r = sub.add_parser("run", help="run the gateway daemon")
    r.add_argument("-c", "--config", required=True)
    r.add_argument("--state-dir", help="override gateway.state_dir")
    r.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    r.add_argument("--drain", type=float, default=5.0, help="seconds to drain sinks on stop")
    r.set_defaults(func=cmd_run)

    rd = sub.add_parser("read", help="poll every device once and print each channel (commissioning)")
    rd.add_argument("-c", "--config", required=True)
    rd.add_argument("--device", help="only this device")
    rd.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rd.set_defaults(func=cmd_read)

    d = sub.add_parser("demo", help="run the bundled plant simulators and the gateway, with a live table")
    d.add_argument("--seconds", type=float, default=None, help="stop after N seconds (default: until Ctrl-C)")
    d.add_argument("--state-dir", default=None, help="where the demo keeps its journal (default: a temp dir)")
    d.add_argument("--config", default=None, help="gateway config (default: config/demo.yaml)")
    d.add_argument("--sim-config", default=None, help="simulator config (default: config/sim-demo.yaml)")
    d.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("sim", help="run plant simulators (Modbus TCP/RTU, OPC-UA, serial)")
    s.add_argument("-c", "--config", required=True)
    s.add_argument("--seconds", type=float, default=None)
    s.set_defaults(func=cmd_sim)

    words = sys.argv[1:] if argv is None else argv
    wanted = next((w for w in words if not w.startswith("-")), None)
    for name, target in COMMANDS.items():
        if wanted is not None and wanted != name and wanted in {*COMMANDS, *sub.choices}:
            continue
        module, _, fn = target.partition(":")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:  # that part is not built yet
                continue
            raise
        getattr(mod, fn)(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe often shows only at this flush
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # the reader went away (`safegw read --json | head -1`): no traceback. As Python's
        # docs advise, point stdout at devnull so the interpreter's last flush is quiet.
        # 141 (128 + SIGPIPE) is what a shell shows for a command the pipe ended, so a
        # script with pipefail learns that not all of the output was read; 0 would claim it was.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    return code


if __name__ == "__main__":
    raise SystemExit(main())
