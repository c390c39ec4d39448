"""The notify service's state file (``notify-state.json`` in the state directory): open
alarms with their escalation step and due time, the outbox, held digests and the keys
already delivered. Written whole, atomically (a temporary file, fsync, rename), owner-only
(it names people and what they were told)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def load_state(path: Path) -> dict[str, Any]:
    """The saved state, or an empty one (a missing file; an unreadable one, said loudly)."""
    empty: dict[str, Any] = {"alarms": {}, "outbox": [], "digests": {}, "sent": []}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return empty
    except (OSError, ValueError) as e:
        log.error("notify: %s unreadable (%s); starting without open escalations", path, e)
        return empty
    if not isinstance(doc, dict):
        log.error("notify: %s is not a state document; starting without open escalations", path)
        return empty
    for k, v in empty.items():
        doc.setdefault(k, v)
    n = len(doc["alarms"])
    if n or doc["outbox"]:
        log.info("notify: resuming %d open alarm(s), %d message(s) in the outbox", n, len(doc["outbox"]))
    return doc


def write_state(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
