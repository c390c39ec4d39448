"""How the simulated devices put values on the wire, written from the protocol texts
and independently of the drivers' codecs: if a driver misreads a byte order, a
checksum or a scaling, a simulator that shared its code would agree with it and the
tests would pass. Plain ``struct`` and bit loops here, numpy gathers in the drivers.
"""

from __future__ import annotations

import codecs
import struct

#: registers a type fills, and its big-endian struct format
_FORMATS = {"int16": (1, ">h"), "uint16": (1, ">H"), "int32": (2, ">i"), "uint32": (2, ">I"),
            "float32": (2, ">f"), "float64": (4, ">d")}
_INT_RANGE = {"int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
              "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1)}


def _order(be: bytes, byte_order: str) -> bytes:
    """Big-endian bytes (A first) → the device's order of them. CDAB: the words in reverse
    order, each big-endian; BADC: bytes swapped in each word; DCBA: all reversed."""
    words = [be[i:i + 2] for i in range(0, len(be), 2)]
    if byte_order == "ABCD":
        return be
    if byte_order == "CDAB":
        return b"".join(reversed(words))
    if byte_order == "BADC":
        return b"".join(w[::-1] for w in words)
    if byte_order == "DCBA":
        return be[::-1]
    raise ValueError(f"unknown byte order {byte_order!r}")


def encode_registers(value: float, type_: str, byte_order: str = "ABCD", scale: float = 1.0,
                     offset: float = 0.0) -> list[int]:
    """An engineering value → the register words a device holds for it
    (``raw = (value - offset) / scale``, integers rounded and clamped to the type)."""
    raw = (value - offset) / scale
    if type_ == "bool":
        return [1 if raw else 0]
    n, fmt = _FORMATS[type_]
    if type_ in _INT_RANGE:
        lo, hi = _INT_RANGE[type_]
        packed = struct.pack(fmt, int(min(max(round(raw), lo), hi)))
    else:
        packed = struct.pack(fmt, raw)
    wire = _order(packed, byte_order)
    return list(struct.unpack(f">{n}H", wire))


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS, bit by bit: reflected polynomial 0xA001, initial value 0xFFFF
    (Modbus over serial line, V1.02, 6.2.2)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def checksum(kind: str, covered: bytes) -> tuple[int, int]:
    """(value, width in bytes) of an instrument's checksum over ``covered``."""
    if kind == "sum8":
        return sum(covered) & 0xFF, 1
    if kind == "xor":
        x = 0
        for b in covered:
            x ^= b
        return x, 1
    if kind == "crc16-modbus":
        return crc16_modbus(covered), 2
    raise ValueError(f"unknown checksum {kind!r}")


def checksum_field(kind: str, fmt: str, covered: bytes) -> bytes:
    """The checksum as the instrument writes it: upper-case hex text, or raw bytes
    (low byte first, as Modbus sends its CRC)."""
    if kind == "none":
        return b""
    value, width = checksum(kind, covered)
    if fmt == "hex":
        return f"{value:0{2 * width}X}".encode("ascii")
    return value.to_bytes(width, "little")


def control_bytes(text: str) -> bytes:
    """A control string from YAML (``\\r\\n``, ``\\x02``, written literally or not) as bytes."""
    if "\\" in text:
        text = codecs.decode(text, "unicode_escape")
    return text.encode("latin-1")
