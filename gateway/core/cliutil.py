"""What every safegw command shares: exit codes and logging set-up (the gateway's
commands, central's and the simulators')."""

from __future__ import annotations

import logging
import sys

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_CONFIG = 2


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pymodbus logs raw frames with tracebacks at ERROR; the gateway reports faults itself
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    for noisy in ("asyncua", "uvicorn.access", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def print_config_errors(lines: list[str]) -> None:
    for line in lines:
        print(line, file=sys.stderr)
