"""Where an HJ 212 history request's samples come from: the journal, or InfluxDB for a
range the journal no longer holds (docs/regulators.md, "History from InfluxDB").

The journal answers when it still holds the range's start: it is complete and carries
every quality, while InfluxDB may lag the historian's cursor. Else InfluxDB, when the
gateway has an ``influxdb:`` section (``DaemonContext.influx_samples``: the daemon runs
the historian's query code, which ``northbound/`` may not import); the journal again, with
what it has, when InfluxDB is down or holds nothing of the range.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.core.batch import Batch
from gateway.services import HistoryUnavailable, InfluxSamples
from gateway.store.journal import Journal
from gateway.store.queries import oldest_sample_ts, samples_between
from northbound.hj212.uploads import LocalTime

log = logging.getLogger(__name__)


class HistorySource:
    """The samples of one adapter's mapped channels for history answers."""

    def __init__(self, name: str, journal: Journal, channels: npt.NDArray[np.int32],
                 named: list[tuple[int, str]], influx: InfluxSamples | None, local: LocalTime,
                 max_samples: int):
        self.name, self.journal, self.channels, self.named = name, journal, channels, named
        self.influx, self.local, self.max_samples = influx, local, max_samples

    async def samples(self, start_ns: int, end_ns: int) -> tuple[Batch, str]:
        """The samples in [start, end) and which source gave them (for the log)."""
        def journal(db: Any) -> tuple[int | None, tuple[Batch, bool]]:
            return oldest_sample_ts(db), samples_between(db, start_ns, end_ns, self.channels,
                                                         max_samples=self.max_samples)

        oldest, (b, _) = await self.journal.run_read(journal)
        if self.influx is None or (oldest is not None and oldest <= start_ns):
            return b, "the journal"
        try:
            got = await self.influx(self.named, start_ns, end_ns, self.max_samples)
        except HistoryUnavailable as e:
            log.warning("%s: history from %s: the journal holds samples from %s only and InfluxDB did not "
                        "answer (%s); answered from the journal", self.name, self.local.datetime(start_ns),
                        self.local.datetime(oldest) if oldest else "-", e)
            return b, "the journal (InfluxDB unavailable)"
        if not len(got):
            log.info("%s: history from %s: InfluxDB holds no samples of the range; answered from the journal",
                     self.name, self.local.datetime(start_ns))
            return b, "the journal (InfluxDB holds none)"
        return got, "InfluxDB"
