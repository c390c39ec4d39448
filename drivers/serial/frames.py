"""Serial instrument frames: cut a byte stream into frames, check them, pull values out.

Pure: no I/O, no clock. The driver feeds whatever bytes the port gave it to a
``Framer`` and hands each frame to a ``FrameParser``; both are table-tested and
benchmarked on their own (``bench/serial.py``).

Frame layout, as an instrument engineer describes it in the config::

    [start] body [separator checksum] terminator        (terminator framing)
    [start] body [separator checksum]                   (fixed length: ``length`` bytes)

- ``start`` (optional) marks the beginning: bytes before it are line noise and
  are dropped (counted as garbage), so a frame survives junk in front of it.
- The checksum covers the frame from ``checksum_from`` (e.g. 1 to skip ``$`` or
  STX) up to the separator (or up to the checksum when there is none). ``hex`` puts
  it as 2 (sum8, xor) or 4 (crc16-modbus) hex digits, most significant first;
  ``binary`` as 1 or 2 raw bytes, CRC low byte first (Modbus order).
- Values come from a device-level regex with named groups (``group``), a
  per-channel regex with a ``(?P<value>...)`` group (``pattern``), or fixed-width
  columns ``[start, end)`` of the frame (``field``).

Only a well-formed frame whose checksum disagrees is a checksum error; a frame
without room for its checksum, without the separator, or with a checksum that is
not hex is garbage (a parse error).

A channel whose pattern does not match a frame is simply not in that frame (an
instrument may send several kinds of lines); a frame that carries no channel at
all is a parse error, and a matched value that is not a number is a parse error
for that channel only.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from functools import reduce
from operator import xor
from typing import Literal

from gateway.core.batch import Quality

ChecksumKind = Literal["none", "sum8", "xor", "crc16-modbus"]
ChecksumFormat = Literal["hex", "binary"]

GOOD = int(Quality.GOOD)
PARSE = int(Quality.PARSE)
CHECKSUM = int(Quality.CHECKSUM)

# --------------------------------------------------------------------------- checksums


def sum8(data: bytes) -> int:
    """Sum of the bytes modulo 256."""
    return sum(data) & 0xFF


def xor8(data: bytes) -> int:
    """XOR of the bytes (NMEA-style)."""
    return reduce(xor, data, 0)


def _crc16_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc16_table()


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF)."""
    crc = 0xFFFF
    t = _CRC_TABLE
    for b in data:
        crc = (crc >> 8) ^ t[(crc ^ b) & 0xFF]
    return crc


CHECKSUMS = {"sum8": (sum8, 1), "xor": (xor8, 1), "crc16-modbus": (crc16_modbus, 2)}


def checksum_text(kind: ChecksumKind, fmt: ChecksumFormat, covered: bytes) -> bytes:
    """The checksum field as it appears on the wire (for simulators and tests)."""
    if kind == "none":
        return b""
    fn, width = CHECKSUMS[kind]
    value = fn(covered)
    if fmt == "hex":
        return f"{value:0{2 * width}X}".encode("ascii")
    return value.to_bytes(width, "little")


def unescape(text: str) -> bytes:
    """Control strings from YAML as bytes: ``\\r``, ``\\n``, ``\\x02`` written literally work too.

    A double-quoted YAML string has already turned ``"\\r\\n"`` into CR LF; a
    single-quoted one has not, and the engineer meant the same thing.
    """
    if "\\" in text:
        text = codecs.decode(text, "unicode_escape")
    return text.encode("latin-1")


# --------------------------------------------------------------------------- framing


class Framer:
    """Cuts a byte stream into frames (terminator dropped). Keeps the incomplete tail.

    ``overflow`` counts tails that grew past ``max_length`` without a terminator
    (a stuck line or a wrong terminator in the config); their bytes are dropped.
    """

    __slots__ = ("_buf", "length", "max_length", "overflow", "overflow_bytes", "start", "terminator")

    def __init__(self, *, terminator: bytes | None = None, length: int | None = None,
                 start: bytes | None = None, max_length: int = 1024):
        if (terminator is None) == (length is None):
            raise ValueError("give exactly one of terminator or length")
        if terminator == b"":
            raise ValueError("the terminator cannot be empty")
        self.terminator = terminator
        self.length = length
        self.start = start or None
        self.max_length = max(max_length, length or 0)
        self._buf = b""
        self.overflow = 0
        self.overflow_bytes = 0

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)

    def clear(self) -> bytes:
        """Drop and return the incomplete tail (a partial frame after a silence)."""
        tail, self._buf = self._buf, b""
        return tail

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data if self._buf else data
        if self.terminator is not None:
            frames = buf.split(self.terminator)
            tail = frames.pop()
            if len(tail) > self.max_length:
                self.overflow += 1
                self.overflow_bytes += len(tail)
                tail = b""
            self._buf = tail
            return frames
        # fixed length
        n = self.length
        assert n is not None
        out: list[bytes] = []
        if self.start is None:
            whole = len(buf) - len(buf) % n
            out = [buf[i:i + n] for i in range(0, whole, n)]
            self._buf = buf[whole:]
            return out
        pos = 0
        start = self.start
        while True:
            i = buf.find(start, pos)
            if i < 0:
                # keep a possible start marker cut in two
                keep = len(start) - 1
                if len(buf) - pos > keep:
                    self.overflow_bytes += len(buf) - pos - keep
                    pos = len(buf) - keep
                break
            if i > pos:
                self.overflow_bytes += i - pos
            if i + n > len(buf):
                pos = i
                break
            out.append(buf[i:i + n])
            pos = i + n
        self._buf = buf[pos:]
        return out


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """How one channel's value is found in a frame (exactly one of the three)."""

    group: str | None = None
    pattern: str | None = None
    field: tuple[int, int] | None = None


@dataclass(slots=True)
class FrameSpec:
    terminator: bytes | None = b"\r\n"
    length: int | None = None
    start: bytes | None = None
    checksum: ChecksumKind = "none"
    checksum_format: ChecksumFormat = "hex"
    checksum_from: int = 0
    checksum_separator: bytes | None = None
    pattern: str | None = None
    encoding: str = "ascii"
    max_length: int = 1024
    channels: list[ChannelSpec] = field(default_factory=list)

    def framer(self) -> Framer:
        return Framer(terminator=self.terminator, length=self.length, start=self.start,
                      max_length=self.max_length)


class ParseResult:
    """What one frame gave: its cause (GOOD, CHECKSUM, PARSE) and per-channel hits.

    ``positions``/``values`` are the channels found with a number; ``bad`` the
    channels found with something that is not a number.
    """

    __slots__ = ("bad", "cause", "detail", "positions", "values")

    def __init__(self, cause: int, positions: list[int], values: list[float], bad: list[int],
                 detail: str = ""):
        self.cause = cause
        self.positions = positions
        self.values = values
        self.bad = bad
        self.detail = detail

    def __repr__(self) -> str:
        return (f"ParseResult(cause=0x{self.cause:02x}, positions={self.positions}, values={self.values}, "
                f"bad={self.bad}, detail={self.detail!r})")


class FrameParser:
    """Checks one frame and extracts the channels' raw values (before scale/offset)."""

    def __init__(self, spec: FrameSpec):
        self.spec = spec
        self.encoding = spec.encoding
        self.start = spec.start
        self.device_rx = re.compile(spec.pattern) if spec.pattern else None
        self.group_channels: list[tuple[int, str]] = []
        self.pattern_channels: list[tuple[int, re.Pattern[str]]] = []
        self.field_channels: list[tuple[int, int, int]] = []
        for i, ch in enumerate(spec.channels):
            if ch.group is not None:
                if self.device_rx is None:
                    raise ValueError(f"channel {i}: 'group' needs the device's frame pattern")
                if ch.group not in self.device_rx.groupindex:
                    raise ValueError(f"channel {i}: group {ch.group!r} is not in the frame pattern")
                self.group_channels.append((i, ch.group))
            elif ch.pattern is not None:
                rx = re.compile(ch.pattern)
                if "value" not in rx.groupindex:
                    raise ValueError(f"channel {i}: the pattern needs a (?P<value>...) group")
                self.pattern_channels.append((i, rx))
            elif ch.field is not None:
                self.field_channels.append((i, ch.field[0], ch.field[1]))
            else:
                raise ValueError(f"channel {i}: give one of group, pattern or field")
        if spec.checksum != "none":
            self.ck_fn, width = CHECKSUMS[spec.checksum]
            self.ck_len = 2 * width if spec.checksum_format == "hex" else width
        else:
            self.ck_len = 0
        self.ck_hex = spec.checksum_format == "hex"
        self.ck_from = spec.checksum_from
        self.sep = spec.checksum_separator or b""
        self.garbage_bytes = 0  # junk seen before a start marker

    def parse(self, frame: bytes) -> ParseResult:
        if self.start is not None:
            i = frame.rfind(self.start)
            if i < 0:
                return ParseResult(PARSE, [], [], [], "no start marker")
            if i:
                self.garbage_bytes += i
                frame = frame[i:]
        if self.ck_len:
            n = self.ck_len
            sep = self.sep
            body_end = len(frame) - n - len(sep)
            if body_end < self.ck_from:
                return ParseResult(PARSE, [], [], [], "frame too short for its checksum")
            if sep and frame[body_end:body_end + len(sep)] != sep:
                return ParseResult(PARSE, [], [], [], "checksum separator missing")
            got_raw = frame[len(frame) - n:]
            if self.ck_hex:
                try:
                    got = int(got_raw, 16)
                except ValueError:
                    return ParseResult(PARSE, [], [], [], f"checksum {got_raw!r} is not hex")
            else:
                got = int.from_bytes(got_raw, "little")
            want = self.ck_fn(frame[self.ck_from:body_end])
            if got != want:
                return ParseResult(CHECKSUM, [], [], [], f"checksum {got:X} != computed {want:X}")
            frame = frame[:body_end]
        try:
            text = frame.decode(self.encoding)
        except UnicodeDecodeError:
            return ParseResult(PARSE, [], [], [], f"not {self.encoding} text")
        positions: list[int] = []
        values: list[float] = []
        bad: list[int] = []
        if self.device_rx is not None:
            m = self.device_rx.search(text)
            if m is not None:
                for i, g in self.group_channels:
                    s = m.group(g)
                    if s is None:
                        continue
                    try:
                        values.append(float(s))
                        positions.append(i)
                    except ValueError:
                        bad.append(i)
        for i, rx in self.pattern_channels:
            m = rx.search(text)
            if m is None:
                continue
            s = m.group("value")
            if s is None:
                continue
            try:
                values.append(float(s))
                positions.append(i)
            except ValueError:
                bad.append(i)
        if self.field_channels:
            n = len(text)
            for i, a, b in self.field_channels:
                if b > n:
                    bad.append(i)
                    continue
                try:
                    values.append(float(text[a:b]))
                    positions.append(i)
                except ValueError:
                    bad.append(i)
        if not positions and not bad:
            return ParseResult(PARSE, [], [], [], "no channel matched")
        return ParseResult(GOOD, positions, values, bad)
