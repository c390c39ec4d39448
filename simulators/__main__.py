"""``python -m simulators -c config/sim-demo.yaml [--seconds N] [--control]``

Starts every simulated device of the file, then prints exactly one line
``READY {"device": endpoint, ...}`` on stdout (flushed) once all of them serve, and
runs until SIGTERM/SIGINT or ``--seconds``. With ``--control`` it also reads JSON
control lines on stdin (see simulators.runner) and answers each with one JSON line.
Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from gateway.core.configcheck import ConfigError
from simulators.config import load
from simulators.runner import Simulator

log = logging.getLogger("simulators")


async def _control(sim: Simulator) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        if not line.strip():
            continue
        reply = sim.control(line.decode())
        if "ok" in reply:
            await sim.tick()
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


async def _amain(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    sim = Simulator(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sim.stop)
    try:
        endpoints = await sim.start()
    except (OSError, RuntimeError) as e:
        print(f"simulators: cannot start: {e}", file=sys.stderr)
        await sim.close()
        return 1
    sys.stdout.write("READY " + json.dumps(endpoints, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    ctl = asyncio.create_task(_control(sim), name="control") if args.control else None
    try:
        await sim.run(args.seconds)
    finally:
        if ctl is not None:
            ctl.cancel()
        await sim.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulators", description="plant sensor simulators")
    p.add_argument("-c", "--config", required=True, help="simulator YAML (e.g. config/sim-demo.yaml)")
    p.add_argument("--seconds", type=float, default=None, help="stop after N seconds")
    p.add_argument("--control", action="store_true", help="read JSON control lines on stdin")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(_amain(args))
    except ConfigError as e:
        for line in e.lines:
            print(line, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
