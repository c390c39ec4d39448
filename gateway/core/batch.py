"""The Batch: columnar samples as drivers hand them on, and the quality codes.

A Batch is four parallel numpy arrays (channel index, timestamp in ns since the epoch
UTC, value, quality). There are no per-sample Python objects on the hot path: drivers
build arrays, the rules core and the journal consume arrays.

Quality is one byte: the top two bits are the class (good / uncertain / bad), the
low six bits the cause. ``quality >= BAD`` selects bad samples in one comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

CHANNEL_DTYPE = np.dtype(np.int32)
TS_DTYPE = np.dtype(np.int64)
VALUE_DTYPE = np.dtype(np.float64)
QUALITY_DTYPE = np.dtype(np.uint8)
SAMPLE_BYTES = 4 + 8 + 8 + 1


class Quality(IntEnum):
    """Sample quality: class in the top two bits, cause in the low six."""

    GOOD = 0x00
    # uncertain: the value is there but should not be trusted for process alarms
    UNCERTAIN = 0x40
    CALIBRATING = 0x41
    MAINTENANCE = 0x42
    SUBSTITUTED = 0x43
    UNCERTAIN_STATUS = 0x44  # OPC-UA Uncertain* status code
    # bad: no usable value
    BAD = 0x80
    TIMEOUT = 0x81
    COMMS = 0x82
    OUT_OF_RANGE = 0x83
    SENSOR_FAULT = 0x84
    DEVICE_EXCEPTION = 0x85  # Modbus exception response
    CONFIG = 0x86  # address / node does not exist on the device
    CHECKSUM = 0x87
    PARSE = 0x88
    BAD_STATUS = 0x89  # OPC-UA Bad* status code
    NO_DATA = 0x8A  # never received since start

    @property
    def is_good(self) -> bool:
        return self < Quality.UNCERTAIN

    @property
    def is_bad(self) -> bool:
        return self >= Quality.BAD

    @property
    def label(self) -> str:
        return _LABELS.get(self, self.name.lower())


_LABELS = {
    Quality.GOOD: "good",
    Quality.UNCERTAIN: "uncertain",
    Quality.BAD: "bad",
}


def quality_label(code: int) -> str:
    """Human label for a quality byte, tolerant of codes this version does not know."""
    try:
        return Quality(code).label
    except ValueError:
        if code >= Quality.BAD:
            return f"bad(0x{code:02x})"
        if code >= Quality.UNCERTAIN:
            return f"uncertain(0x{code:02x})"
        return "good"


@dataclass(slots=True)
class Batch:
    """Samples from one poll or one notification burst, as parallel arrays."""

    channel: npt.NDArray[np.int32]
    ts: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    quality: npt.NDArray[np.uint8]

    def __post_init__(self) -> None:
        n = len(self.channel)
        if not (len(self.ts) == len(self.value) == len(self.quality) == n):
            raise ValueError(
                f"batch arrays differ in length: channel={n} ts={len(self.ts)} "
                f"value={len(self.value)} quality={len(self.quality)}"
            )

    @classmethod
    def build(
        cls,
        channel: npt.ArrayLike,
        ts: npt.ArrayLike,
        value: npt.ArrayLike,
        quality: npt.ArrayLike,
    ) -> Batch:
        """Make a batch from array-likes; scalars for ts/quality broadcast over channels."""
        ch = np.ascontiguousarray(channel, dtype=CHANNEL_DTYPE)
        n = len(ch)
        return cls(
            ch,
            np.ascontiguousarray(np.broadcast_to(np.asarray(ts, dtype=TS_DTYPE), (n,))),
            np.ascontiguousarray(np.broadcast_to(np.asarray(value, dtype=VALUE_DTYPE), (n,))),
            np.ascontiguousarray(np.broadcast_to(np.asarray(quality, dtype=QUALITY_DTYPE), (n,))),
        )

    @classmethod
    def empty(cls) -> Batch:
        return cls.build([], [], [], [])

    @classmethod
    def bad(cls, channels: npt.ArrayLike, ts_ns: int, cause: int) -> Batch:
        """All the given channels bad at one time, value NaN."""
        return cls.build(channels, ts_ns, np.nan, cause)

    def __len__(self) -> int:
        return len(self.channel)

    @property
    def ts_min(self) -> int:
        return int(self.ts.min()) if len(self) else 0

    @property
    def ts_max(self) -> int:
        return int(self.ts.max()) if len(self) else 0

    def select(self, mask: npt.NDArray[np.bool_]) -> Batch:
        return Batch(self.channel[mask], self.ts[mask], self.value[mask], self.quality[mask])

    @staticmethod
    def concat(batches: list[Batch]) -> Batch:
        if not batches:
            return Batch.empty()
        if len(batches) == 1:
            return batches[0]
        return Batch(
            np.concatenate([b.channel for b in batches]),
            np.concatenate([b.ts for b in batches]),
            np.concatenate([b.value for b in batches]),
            np.concatenate([b.quality for b in batches]),
        )

    # --- columnar bytes, as the journal stores them --------------------------------
    def to_bytes(self) -> bytes:
        """Columnar little-endian layout: channel[n] i4, ts[n] i8, value[n] f8, quality[n] u1."""
        return b"".join(
            (
                self.channel.astype("<i4", copy=False).tobytes(),
                self.ts.astype("<i8", copy=False).tobytes(),
                self.value.astype("<f8", copy=False).tobytes(),
                self.quality.tobytes(),
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> Batch:
        if len(data) % SAMPLE_BYTES:
            raise ValueError(f"batch payload of {len(data)} bytes is not a multiple of {SAMPLE_BYTES}")
        n = len(data) // SAMPLE_BYTES
        buf = memoryview(data)
        ch = np.frombuffer(buf, "<i4", n, 0)
        ts = np.frombuffer(buf, "<i8", n, 4 * n)
        val = np.frombuffer(buf, "<f8", n, 12 * n)
        q = np.frombuffer(buf, np.uint8, n, 20 * n)
        return cls(
            ch.astype(CHANNEL_DTYPE), ts.astype(TS_DTYPE), val.astype(VALUE_DTYPE), q.copy()
        )

    def equals(self, other: Batch) -> bool:
        """Exact equality, NaN == NaN (what a round trip must preserve)."""
        return (
            np.array_equal(self.channel, other.channel)
            and np.array_equal(self.ts, other.ts)
            and np.array_equal(self.value, other.value, equal_nan=True)
            and np.array_equal(self.quality, other.quality)
        )
