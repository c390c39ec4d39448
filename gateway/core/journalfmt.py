"""Log lines for journald when the daemon runs under systemd (``JOURNAL_STREAM`` set).

No systemd Python binding is used: ``systemd-python`` ships no wheel (it builds against
libsystemd-dev, which an offline plant PC's virtualenv cannot count on) and writing the
journal's native protocol here would be a protocol of our own. So, as systemd documents
for services that log to their standard streams (systemd.exec(5) ``SyslogLevelPrefix=``,
sd-daemon(3) ``SD_ERR`` and friends), each line starts with ``<N>``, its syslog priority,
which journald turns into ``PRIORITY=N``; ``SYSLOG_IDENTIFIER`` comes from the unit
(``SyslogIdentifier=``, else the executable's name) and ``_PID``/``_SYSTEMD_UNIT`` from
journald itself. The structured fields a record carries (``extra={"device": ...}``) follow
the message as ``key=value`` pairs, quoted when they hold spaces, so that
``journalctl -u safegw -g 'device=plc'`` finds them. The timestamp is journald's own.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

#: the record attributes written as key=value after the message
FIELDS = ("device", "channel", "consumer")

#: Python level → syslog priority (RFC 5424 6.2.1: 3 error, 4 warning, 6 informational, 7 debug)
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def _priority(levelno: int) -> int:
    for level in sorted(_PRIORITY, reverse=True):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


def _value(v: object) -> str:
    s = str(v).replace("\n", " ")[:200]
    return '"' + s.replace('"', "'") + '"' if (" " in s or not s or "=" in s) else s


class JournalFormatter(logging.Formatter):
    """``<prio>logger: message key=value …`` with no timestamp (journald stamps each line)."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = " ".join(f"{k}={_value(getattr(record, k))}" for k in FIELDS
                          if getattr(record, k, None) is not None)
        head, nl, rest = text.partition("\n")
        prio = _priority(record.levelno)
        # a traceback's lines each become a journal entry: give each the record's priority
        tail = "".join(f"\n<{prio}>{line}" for line in rest.split("\n")) if nl else ""
        return f"<{prio}>{head}{' ' + fields if fields else ''}{tail}"


def under_journald(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (stderr) is the journal stream systemd gave us: JOURNAL_STREAM is
    ``device:inode`` of it (systemd.exec(5), "$JOURNAL_STREAM"); a child that inherited the
    variable but writes elsewhere (a pipe, a file) must keep the plain format."""
    js = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = js.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)
