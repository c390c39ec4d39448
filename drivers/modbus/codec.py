"""Register words ↔ values, vectorized with numpy. Pure: no I/O, no clock.

Modbus sends each 16-bit register big-endian. Multi-register values are laid out by
the device in one of four byte orders, named after the bytes of the big-endian value
``A B C D`` (for float64 the same pattern extends over eight bytes):

=====  ==========================  ===================================
order  wire bytes of 0x41200000    meaning
=====  ==========================  ===================================
ABCD   41 20 00 00                 big-endian, high word first
CDAB   00 00 41 20                 words swapped ("word swap", common)
BADC   20 41 00 00                 bytes swapped inside each word
DCBA   00 00 20 41                 fully little-endian
=====  ==========================  ===================================

A decode *layout* says, for every channel, where its bytes sit in one poll's response
buffer (all responses of a poll are copied into one buffer at fixed offsets). The
buffer is decoded in one gather per (type, byte order) group: fancy-index the bytes
into big-endian order, ``view`` them as the wire type, convert to float64, then
``value = raw × scale + offset``. Bits (coils, discrete inputs, register bits) are a
byte position and a shift.

Scaling keeps the sign of a zero (a float −0.0 with no offset stays −0.0: adding a
0.0 offset would turn it into +0.0), and a product too large for float64 is not a
numpy warning on stderr: it is flagged (``Layout.overflowed``, which the driver counts)
and the value, now infinite, is a ``SENSOR_FAULT`` like any non-finite reading.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field

import numpy as np
import numpy.typing as npt

from gateway.core.batch import Quality

#: registers a type fills
WIDTH = {"bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4}
#: big-endian numpy dtype of each type
WIRE_DTYPE = {"int16": ">i2", "uint16": ">u2", "int32": ">i4", "uint32": ">u4", "float32": ">f4",
              "float64": ">f8"}
INT_LIMITS = {"int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1), "int32": (-(2**31), 2**31 - 1),
              "uint32": (0, 2**32 - 1)}


def permutation(byte_order: str, words: int) -> npt.NDArray[np.intp]:
    """Wire byte positions, in big-endian order, for a value of ``words`` registers.

    ``wire[permutation(order, w)]`` gives the big-endian bytes of the value.
    """
    n = 2 * words
    if byte_order == "ABCD":
        p = list(range(n))
    elif byte_order == "CDAB":
        p = [2 * j + b for j in reversed(range(words)) for b in (0, 1)]
    elif byte_order == "BADC":
        p = [2 * j + b for j in range(words) for b in (1, 0)]
    elif byte_order == "DCBA":
        p = list(reversed(range(n)))
    else:
        raise ValueError(f"unknown byte order {byte_order!r}; use ABCD, CDAB, BADC or DCBA")
    return np.array(p, dtype=np.intp)


# ------------------------------------------------------------------ encoding (simulators, tests)

def encode_raw(raw: float | int, type_: str, byte_order: str = "ABCD") -> list[int]:
    """One raw value → its register words as the device would send them."""
    if type_ == "bool":
        return [1 if raw else 0]
    words = WIDTH[type_]
    if type_ in INT_LIMITS:
        lo, hi = INT_LIMITS[type_]
        raw = int(min(max(round(raw), lo), hi))
    be = np.frombuffer(np.array([raw], dtype=WIRE_DTYPE[type_]).tobytes(), dtype=np.uint8)
    wire = np.empty_like(be)
    wire[permutation(byte_order, words)] = be  # inverse of the decode gather
    return [int(x) for x in wire.view(">u2")]


def encode(value: float, type_: str, byte_order: str = "ABCD", scale: float = 1.0,
           offset: float = 0.0) -> list[int]:
    """An engineering value → register words (the inverse of decoding with scale/offset)."""
    raw = (value - offset) / scale
    return encode_raw(raw, type_, byte_order)


def words_to_bytes(words: list[int] | npt.NDArray[np.uint16]) -> bytes:
    return np.asarray(words, dtype=">u2").tobytes()


def pack_bits(bits: list[bool] | npt.NDArray[np.bool_]) -> bytes:
    """Coil / discrete status bits as Modbus packs them: LSB first in each byte."""
    return np.packbits(np.asarray(bits, dtype=np.uint8), bitorder="little").tobytes()


# ------------------------------------------------------------------ decoding

@dataclass(frozen=True)
class ChannelSlot:
    """Where one channel's data sits in a poll's response buffer."""

    byte_offset: int  # first byte of its registers, or the byte holding its bit
    type: str
    byte_order: str = "ABCD"
    bit: int | None = None  # bit shift inside the byte at byte_offset (bools)
    scale: float = 1.0
    offset: float = 0.0
    range: tuple[float, float] | None = None


@dataclass
class _Group:
    pos: npt.NDArray[np.intp]  # positions in the channel list
    idx: npt.NDArray[np.intp]  # (n, nbytes) gather matrix, or (n,) for bits
    dtype: str | None  # wire dtype; None for bits
    shift: npt.NDArray[np.uint8] | None = None


@dataclass
class Layout:
    """Decodes a whole poll's response buffer into channel values in one pass per group."""

    #: the slots are read once, into arrays, and not kept (a poll reads only the arrays)
    slots: InitVar[list[ChannelSlot]]
    groups: list[_Group] = field(default_factory=list)

    def __post_init__(self, slots: list[ChannelSlot]) -> None:
        n = len(slots)
        self.scale = np.array([s.scale for s in slots], dtype=np.float64)
        self.offset = np.array([s.offset for s in slots], dtype=np.float64)
        self.identity = bool(np.all(self.scale == 1.0) and np.all(self.offset == 0.0))
        self.lo = np.array([s.range[0] if s.range else -np.inf for s in slots], dtype=np.float64)
        self.hi = np.array([s.range[1] if s.range else np.inf for s in slots], dtype=np.float64)
        self.has_range = any(s.range is not None for s in slots)
        keys: dict[tuple[str, str], list[int]] = {}
        for i, s in enumerate(slots):
            keys.setdefault((s.type, s.byte_order if s.type != "bool" else ""), []).append(i)
        for (type_, order), members in keys.items():
            pos = np.array(members, dtype=np.intp)
            starts = np.array([slots[i].byte_offset for i in members], dtype=np.intp)
            if type_ == "bool":
                shift = np.array([slots[i].bit or 0 for i in members], dtype=np.uint8)
                self.groups.append(_Group(pos, starts, None, shift))
            else:
                perm = permutation(order, WIDTH[type_])
                self.groups.append(_Group(pos, starts[:, None] + perm[None, :], WIRE_DTYPE[type_]))
        self.n = n
        self.has_offset = self.offset != 0.0
        #: the values whose raw × scale + offset overflowed float64 in the last decode
        self.overflowed = np.zeros(n, dtype=bool)

    def decode(self, buf: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
        """Values (float64, scaled) of every slot, from a response buffer (uint8 array)."""
        out = np.empty(self.n, dtype=np.float64)
        for g in self.groups:
            if g.dtype is None:
                assert g.shift is not None
                out[g.pos] = (buf[g.idx] >> g.shift) & 1
            else:
                out[g.pos] = buf[g.idx].view(g.dtype)[:, 0]
        if not self.identity:
            with np.errstate(over="ignore", invalid="ignore"):
                finite = np.isfinite(out)
                out *= self.scale
                # only where there is an offset: -0.0 + 0.0 is +0.0
                np.add(out, self.offset, out=out, where=self.has_offset)
            self.overflowed = finite & ~np.isfinite(out)
        return out

    def quality(self, values: npt.NDArray[np.float64], base: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """Per-channel quality: ``base`` (from the request outcome), then value checks on good ones.

        Non-finite floats from the device are a sensor fault; outside the channel's
        ``range`` is out of range.
        """
        q = base.copy()
        good = q < Quality.BAD
        bad_value = ~np.isfinite(values)
        if bad_value.any():
            q[good & bad_value] = Quality.SENSOR_FAULT
        if self.has_range:
            with np.errstate(invalid="ignore"):
                oor = (values < self.lo) | (values > self.hi)
            q[good & ~bad_value & oor] = Quality.OUT_OF_RANGE
        return q


def decode_words(words: list[int], type_: str, byte_order: str = "ABCD", *, bit: int | None = None,
                 scale: float = 1.0, offset: float = 0.0) -> float:
    """One value from its register words (convenience for tests and tools; not the hot path)."""
    buf = np.frombuffer(words_to_bytes(words), dtype=np.uint8)
    if type_ == "bool":
        b = bit or 0
        # bit k of a big-endian register: byte 1 holds bits 0-7, byte 0 bits 8-15
        slot = ChannelSlot(1 - b // 8 if byte_order in ("ABCD", "CDAB") else b // 8, "bool", bit=b % 8,
                           scale=scale, offset=offset)
    else:
        slot = ChannelSlot(0, type_, byte_order, scale=scale, offset=offset)
    return float(Layout([slot]).decode(buf)[0])
