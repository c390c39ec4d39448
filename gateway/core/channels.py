"""The channel table: every configured channel numbered 0..N-1, with its metadata.

Every array in the core (rules state, live values) is indexed by this number. The
numbering follows the config file's order, so it is stable across restarts as long as
the file is; the journal stores indexes together with a table fingerprint so readers
can map them back to names.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gateway.core.batch import Quality
from gateway.core.config import ChannelBase, Config, device_channels


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    index: int
    name: str
    kind: str
    unit: str
    device: str
    spec: ChannelBase
    unit_id: int | None = None  # Modbus RTU unit on a shared bus


class ChannelTable:
    """Channels in config order, looked up by index or name."""

    def __init__(self, channels: list[ChannelInfo]):
        self.channels = channels
        self.by_name = {c.name: c for c in channels}
        self.by_device: dict[str, list[ChannelInfo]] = {}
        for c in channels:
            self.by_device.setdefault(c.device, []).append(c)

    @classmethod
    def from_config(cls, cfg: Config) -> ChannelTable:
        out: list[ChannelInfo] = []
        for dev in cfg.devices:
            for path, ch in device_channels(dev):
                unit_id = None
                if path[0] == "units":
                    unit_id = dev.units[int(path[1])].unit  # type: ignore[union-attr]
                out.append(ChannelInfo(len(out), ch.name, ch.kind, ch.unit, dev.name, ch, unit_id))
        return cls(out)

    def __len__(self) -> int:
        return len(self.channels)

    def __getitem__(self, i: int) -> ChannelInfo:
        return self.channels[i]

    def index(self, name: str) -> int:
        return self.by_name[name].index

    def names(self) -> list[str]:
        return [c.name for c in self.channels]

    def fingerprint(self) -> str:
        """Identifies the numbering (names in order), so stored indexes can be mapped back."""
        h = hashlib.sha256(json.dumps(self.names()).encode()).hexdigest()
        return h[:16]


class ChannelIndex(Mapping[str, int]):
    """Name → index over a table's own name dict: for the parts that look channels up by
    name (the rules engine), without a second dict of every name (~60 bytes a channel)."""

    def __init__(self, table: ChannelTable):
        self._by_name = table.by_name

    def __getitem__(self, name: str) -> int:
        return self._by_name[name].index

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)


class LiveTable:
    """The latest value, quality and time of every channel (what the demo and the API show)."""

    def __init__(self, n: int):
        self.value: npt.NDArray[np.float64] = np.full(n, np.nan)
        self.quality: npt.NDArray[np.uint8] = np.full(n, Quality.NO_DATA, dtype=np.uint8)
        self.ts: npt.NDArray[np.int64] = np.zeros(n, dtype=np.int64)
        self.samples = 0

    def update(self, channel: npt.NDArray[np.int32], ts: npt.NDArray[np.int64],
               value: npt.NDArray[np.float64], quality: npt.NDArray[np.uint8]) -> None:
        # keep only samples not older than what we have (out-of-order arrivals)
        newer = ts >= self.ts[channel]
        if not newer.all():
            channel, ts, value, quality = channel[newer], ts[newer], value[newer], quality[newer]
        self.value[channel] = value
        self.quality[channel] = quality
        self.ts[channel] = ts
        self.samples += len(channel)

    def clock_back(self, now_ns: int) -> None:
        """The clock went back (a step): times later than it are brought back to it, so the
        samples stamped after the step are shown rather than kept out as older."""
        np.minimum(self.ts, now_ns, out=self.ts)
