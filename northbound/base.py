"""What every northbound adapter shares: the point mapping and the adapter's counters.

``PointMap`` turns the config's ``points:`` into arrays indexed by channel: which
channels an adapter sends (the others are not sent at all), under which code, with
which unit conversion (``sent = value × scale + offset``) and how many decimals. It
works on whole ``Batch`` arrays: no per-sample Python objects.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from gateway.core.batch import Batch
from gateway.core.channels import ChannelTable
from gateway.core.config_regulators import PointMap as PointConfig


class PointMap:
    """The mapped channels of one adapter, as arrays over the channel table."""

    def __init__(self, points: list[PointConfig], table: ChannelTable):
        self.points = points
        n = len(table)
        #: channel index → slot in ``points`` (-1: not sent)
        self.slot_of = np.full(max(n, 1), -1, np.int32)
        for i, p in enumerate(points):
            if p.channel in table.by_name:
                self.slot_of[table.index(p.channel)] = i
        self.codes = [p.code for p in points]
        self.scale = np.array([p.scale for p in points], np.float64)
        self.offset = np.array([p.offset for p in points], np.float64)
        self.decimals = [p.decimals for p in points]
        self.channels = np.array([table.index(p.channel) if p.channel in table.by_name else -1
                                  for p in points], np.int32)
        self.unmapped = [c.name for c in table.channels if self.slot_of[c.index] < 0]

    def __len__(self) -> int:
        return len(self.points)

    def select(self, b: Batch) -> tuple[npt.NDArray[np.int32], Batch]:
        """The samples of mapped channels: (slot of each, the samples with values converted)."""
        ch = b.channel
        inside = (ch >= 0) & (ch < len(self.slot_of))
        slot = np.where(inside, self.slot_of[np.clip(ch, 0, len(self.slot_of) - 1)], -1)
        m = slot >= 0
        if not m.any():
            return np.empty(0, np.int32), Batch.empty()
        s = slot[m]
        value = b.value[m] * self.scale[s] + self.offset[s]
        return s.astype(np.int32), Batch(b.channel[m], b.ts[m], value, b.quality[m])


@dataclass
class AdapterStats:
    """Counters an adapter shows in /status and /metrics."""

    connected: bool = False
    connects: int = 0
    messages_sent: int = 0
    packets_sent: int = 0
    points_sent: int = 0
    acked: int = 0
    resends: int = 0
    kept_for_later: int = 0
    commands: int = 0
    bad_frames: int = 0
    gaps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d.update(self.extra)
        return d


#: a platform's answer body is read at most this far
MAX_ANSWER = 64 * 1024


class PlatformRefused(Exception):
    """The platform answered, but did not accept the upload (HTTP status or its code)."""


async def post_json(client: httpx.AsyncClient, url: str, body: bytes, headers: Mapping[str, str],
                    ok_codes: Iterable[Any]) -> None:
    """One POST of a JSON body; returns once the platform accepted it (2xx, and a ``code``
    in its answer, if any, among ``ok_codes``), else raises PlatformRefused. The answer is
    read at most MAX_ANSWER bytes far."""
    async with client.stream("POST", url, content=body, headers=dict(headers)) as resp:
        answer = b""
        async for piece in resp.aiter_bytes():
            answer += piece
            if len(answer) > MAX_ANSWER:
                break
        status = resp.status_code
    text = answer[:MAX_ANSWER].decode("utf-8", "replace")
    if not 200 <= status < 300:
        raise PlatformRefused(f"HTTP {status}: {text[:200]!r}")
    try:
        doc = json.loads(text) if text.strip() else None
    except ValueError:
        doc = None
    if isinstance(doc, dict) and "code" in doc and str(doc["code"]) not in {str(c) for c in ok_codes}:
        msg = doc.get("msg", doc.get("message", ""))
        raise PlatformRefused(f"platform code {doc['code']!r}: {str(msg)[:200]!r}")
