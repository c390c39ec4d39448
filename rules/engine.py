"""Rules engine facade used by the gateway (placeholder until the rules issue lands).

Contract: ``RulesEngine(table)``; ``process(batch) -> list[event dict]`` for each
ingested batch; ``tick(now_ns) -> list[event dict]`` once a second for timers.
Events are JSON-able dicts with at least ``type`` and ``ts`` (ns).
"""

from __future__ import annotations

from typing import Any

from gateway.batch import Batch
from gateway.channels import ChannelTable


class RulesEngine:
    def __init__(self, table: ChannelTable):
        self.table = table

    def process(self, batch: Batch) -> list[dict[str, Any]]:
        return []

    def tick(self, now_ns: int) -> list[dict[str, Any]]:
        return []
