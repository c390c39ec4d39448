"""systemd's notify protocol (READY=1, STOPPING=1, WATCHDOG=1), without a dependency.

With ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` in the
abstract namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``):
the service must send ``WATCHDOG=1`` more often than that or be killed and restarted.
Without those variables every call is a no-op, so the daemon runs the same by hand.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self) -> None:
        addr = os.environ.get("NOTIFY_SOCKET")
        self._addr: str | None = None
        self._sock: socket.socket | None = None
        if addr:
            self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
            # non-blocking: with the manager's queue full (10 datagrams by default) a blocking
            # send would stop the event loop, and every poll with it; a message is dropped
            # (and said once) instead
            kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            self._sock = socket.socket(socket.AF_UNIX, kind)
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        self.watchdog_s: float | None = None
        if usec and (pid is None or pid == str(os.getpid())):
            try:
                self.watchdog_s = int(usec) / 1e6 or None
            except ValueError:
                log.warning("ignoring WATCHDOG_USEC=%r: not a number", usec)
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, state: str) -> None:
        if self._sock is None or self._addr is None:
            return
        try:
            self._sock.sendto(state.encode(), self._addr)
        except OSError as e:
            if not self._failing:  # once, not at every watchdog ping
                log.warning("sd_notify %s failed: %s", state.split("=")[0], e)
            self._failing = True
        else:
            if self._failing:
                log.info("sd_notify works again")
            self._failing = False

    def ready(self, status: str = "") -> None:
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        """A keep-alive, only when the manager asked for them (WATCHDOG_USEC)."""
        if self.watchdog_s is not None:
            self.notify("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")
