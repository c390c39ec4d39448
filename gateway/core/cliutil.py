"""What every safegw command shares: exit codes, logging set-up (the gateway's
commands, central's and the simulators') and text tables padded by display width.

A terminal gives East Asian wide and fullwidth characters (channel names and units
such as 甲烷 or ％) two columns and combining marks none, so tables are padded with
``display_width``, not ``len()``: the stdlib's Unicode tables, no wcwidth needed."""

from __future__ import annotations

import logging
import sys
import unicodedata

from gateway.core.journalfmt import JournalFormatter, under_journald

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_CONFIG = 2


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if under_journald(sys.stderr):  # under systemd: priorities and key=value fields for journald
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JournalFormatter())
    # pymodbus logs raw frames with tracebacks at ERROR; the gateway reports faults itself
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    for noisy in ("asyncua", "uvicorn.access", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # asyncua logs a whole traceback at ERROR each time an OPC-UA server goes away
    # ("Publish iteration crashed", ConnectionError); the driver reports the lost
    # connection itself in one line and reconnects. A logger's filter does not see its
    # children's records, so the handlers filter them.
    for handler in logging.getLogger().handlers:
        if _library_tracebacks not in handler.filters:
            handler.addFilter(_library_tracebacks)


def _library_tracebacks(record: logging.LogRecord) -> bool:
    """asyncua's records with a traceback: one line at WARNING, shown only if the
    command's level lets WARNING through."""
    if not record.name.startswith("asyncua") or not (record.exc_info or record.exc_text):
        return True
    exc = record.exc_info[1] if record.exc_info else None
    if exc is not None:
        record.msg, record.args = f"{record.getMessage()}: {type(exc).__name__}: {exc}", None
    record.exc_info, record.exc_text = None, None
    record.levelno, record.levelname = logging.WARNING, "WARNING"
    return logging.getLogger().isEnabledFor(logging.WARNING)


def print_config_errors(lines: list[str]) -> None:
    for line in lines:
        print(line, file=sys.stderr)


def display_width(text: str) -> int:
    """Terminal columns of ``text``: wide and fullwidth characters take two, combining marks none."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
               for c in text)


def fit(text: str, width: int, *, right: bool = False) -> str:
    """``text`` padded (on the right, or the left with ``right``) or cut with "…" to ``width`` columns."""
    w = display_width(text)
    if w > width:
        out, used = [], 0
        for c in text:
            cw = display_width(c)
            if used + cw > width - 1:
                break
            out.append(c)
            used += cw
        text, w = "".join(out) + ("…" if width > 0 else ""), used + (width > 0)
    fill = " " * (width - w)
    return fill + text if right else text + fill
