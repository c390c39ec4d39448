"""Codec tables: hex register words → values, every type × byte order, hand-computed.

The vectors were worked out by hand from the IEEE-754 / two's-complement bit patterns
(e.g. 10.0f = 0x41200000: sign 0, exponent 130, mantissa 0x200000), then laid out in
each byte order: ABCD as is, CDAB words swapped, BADC bytes swapped in each word,
DCBA fully reversed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from drivers.modbus.codec import ChannelSlot, Layout, decode_words, encode, encode_raw, pack_bits, permutation
from gateway.core.batch import Quality

# (type, byte order, words on the wire, value)
TABLE = [
    # float32 10.0 = 41 20 00 00
    ("float32", "ABCD", [0x4120, 0x0000], 10.0),
    ("float32", "CDAB", [0x0000, 0x4120], 10.0),
    ("float32", "BADC", [0x2041, 0x0000], 10.0),
    ("float32", "DCBA", [0x0000, 0x2041], 10.0),
    # float32 -1.5 = BF C0 00 00
    ("float32", "ABCD", [0xBFC0, 0x0000], -1.5),
    ("float32", "CDAB", [0x0000, 0xBFC0], -1.5),
    ("float32", "BADC", [0xC0BF, 0x0000], -1.5),
    ("float32", "DCBA", [0x0000, 0xC0BF], -1.5),
    # float32 123.456 = 42 F6 E9 79 (the value is the nearest float32)
    ("float32", "ABCD", [0x42F6, 0xE979], float(np.float32(123.456))),
    ("float32", "CDAB", [0xE979, 0x42F6], float(np.float32(123.456))),
    ("float32", "BADC", [0xF642, 0x79E9], float(np.float32(123.456))),
    ("float32", "DCBA", [0x79E9, 0xF642], float(np.float32(123.456))),
    # int32 0x12345678 = 305419896
    ("int32", "ABCD", [0x1234, 0x5678], 305419896),
    ("int32", "CDAB", [0x5678, 0x1234], 305419896),
    ("int32", "BADC", [0x3412, 0x7856], 305419896),
    ("int32", "DCBA", [0x7856, 0x3412], 305419896),
    # int32 -2 = FF FF FF FE
    ("int32", "ABCD", [0xFFFF, 0xFFFE], -2),
    ("int32", "CDAB", [0xFFFE, 0xFFFF], -2),
    ("int32", "BADC", [0xFFFF, 0xFEFF], -2),
    ("int32", "DCBA", [0xFEFF, 0xFFFF], -2),
    # uint32 0x89ABCDEF = 2309737967 (high bit set: must not come out negative)
    ("uint32", "ABCD", [0x89AB, 0xCDEF], 2309737967),
    ("uint32", "CDAB", [0xCDEF, 0x89AB], 2309737967),
    ("uint32", "BADC", [0xAB89, 0xEFCD], 2309737967),
    ("uint32", "DCBA", [0xEFCD, 0xAB89], 2309737967),
    # int16 / uint16 0xFF38: -200 signed, 65336 unsigned
    ("int16", "ABCD", [0xFF38], -200),
    ("int16", "BADC", [0x38FF], -200),
    ("uint16", "ABCD", [0xFF38], 65336),
    ("uint16", "BADC", [0x38FF], 65336),
    ("int16", "ABCD", [0x7FFF], 32767),
    ("int16", "ABCD", [0x8000], -32768),
    ("uint16", "ABCD", [0x0000], 0),
    # float64 123.456 = 40 5E DD 2F 1A 9F BE 77
    ("float64", "ABCD", [0x405E, 0xDD2F, 0x1A9F, 0xBE77], 123.456),
    ("float64", "CDAB", [0xBE77, 0x1A9F, 0xDD2F, 0x405E], 123.456),
    ("float64", "BADC", [0x5E40, 0x2FDD, 0x9F1A, 0x77BE], 123.456),
    ("float64", "DCBA", [0x77BE, 0x9F1A, 0x2FDD, 0x5E40], 123.456),
    # float64 1.0 = 3F F0 00 00 00 00 00 00
    ("float64", "ABCD", [0x3FF0, 0, 0, 0], 1.0),
    ("float64", "CDAB", [0, 0, 0, 0x3FF0], 1.0),
    ("float64", "BADC", [0xF03F, 0, 0, 0], 1.0),
    ("float64", "DCBA", [0, 0, 0, 0xF03F], 1.0),
]


@pytest.mark.parametrize(("type_", "order", "words", "value"), TABLE)
def test_decode_table(type_: str, order: str, words: list[int], value: float) -> None:
    assert decode_words(words, type_, order) == value


@pytest.mark.parametrize(("type_", "order", "words", "value"), TABLE)
def test_encode_is_the_inverse(type_: str, order: str, words: list[int], value: float) -> None:
    assert encode_raw(value, type_, order) == words


def test_permutations_are_byte_positions() -> None:
    assert permutation("ABCD", 2).tolist() == [0, 1, 2, 3]
    assert permutation("CDAB", 2).tolist() == [2, 3, 0, 1]
    assert permutation("BADC", 2).tolist() == [1, 0, 3, 2]
    assert permutation("DCBA", 2).tolist() == [3, 2, 1, 0]
    assert permutation("CDAB", 4).tolist() == [6, 7, 4, 5, 2, 3, 0, 1]
    with pytest.raises(ValueError, match="byte order"):
        permutation("ACBD", 2)


@pytest.mark.parametrize(("words", "type_", "scale", "offset", "value"), [
    ([0x00FA], "int16", 0.1, 0.0, 25.0),       # 250 × 0.1
    ([0x00FA], "int16", 0.1, -10.0, 15.0),     # 250 × 0.1 − 10
    ([0xFF38], "int16", 0.5, 0.0, -100.0),     # −200 × 0.5
    ([0x0FA0], "uint16", 0.01, 4.0, 44.0),     # 4000 × 0.01 + 4 (a 4-20 mA style offset)
    ([0x4120, 0x0000], "float32", 2.0, 1.0, 21.0),
])
def test_scale_and_offset(words: list[int], type_: str, scale: float, offset: float, value: float) -> None:
    assert decode_words(words, type_, scale=scale, offset=offset) == pytest.approx(value, abs=1e-12)
    assert encode(value, type_, "ABCD", scale, offset) == words


@pytest.mark.parametrize(("word", "bit", "value"), [
    (0x0001, 0, 1), (0x0001, 1, 0), (0x8000, 15, 1), (0x8000, 7, 0),
    (0x0100, 8, 1), (0x0100, 7, 0), (0x0080, 7, 1), (0x0080, 8, 0), (0xFFFE, 0, 0),
])
def test_register_bits(word: int, bit: int, value: int) -> None:
    assert decode_words([word], "bool", bit=bit) == value


def test_register_bits_low_byte_first_device() -> None:
    # a BADC device sends 0x0001 as 01 00: bit 0 is in the first byte on the wire
    assert decode_words([0x0100], "bool", "BADC", bit=0) == 1
    assert decode_words([0x0100], "bool", "BADC", bit=8) == 0


def test_integer_encode_rounds_and_saturates() -> None:
    assert encode(12.34, "int16", scale=0.1) == [123]
    assert encode(-1.0, "uint16") == [0]
    assert encode(1e9, "int16") == [0x7FFF]
    assert encode(-1e9, "int16") == [0x8000]


def test_pack_bits_is_lsb_first() -> None:
    # coils 0..9 = 1,0,1,1,0,0,0,0, 0,1 → CD 01 would be wrong; Modbus: 0x0D, 0x02
    assert pack_bits([bool(b) for b in (1, 0, 1, 1, 0, 0, 0, 0, 0, 1)]) == bytes([0x0D, 0x02])


def test_layout_groups_decode_a_mixed_buffer() -> None:
    # buffer: float32 CDAB 10.0 | int16 -200 | uint32 ABCD 2309737967 | coil byte 0b00000100
    buf = bytes.fromhex("0000 4120 ff38 89ab cdef 04".replace(" ", ""))
    slots = [
        ChannelSlot(0, "float32", "CDAB"),
        ChannelSlot(4, "int16", scale=0.1),
        ChannelSlot(6, "uint32"),
        ChannelSlot(10, "bool", bit=2),
        ChannelSlot(10, "bool", bit=1),
    ]
    out = Layout(slots).decode(np.frombuffer(buf, np.uint8))
    assert out.tolist() == [10.0, pytest.approx(-20.0), 2309737967.0, 1.0, 0.0]


def test_quality_marks_out_of_range_and_non_finite() -> None:
    slots = [ChannelSlot(0, "float32", range=(0.0, 100.0)), ChannelSlot(4, "float32", range=(0.0, 100.0)),
             ChannelSlot(8, "float32"), ChannelSlot(12, "float32", range=(0.0, 100.0))]
    # 10.0 | 123.456 (above span) | NaN 7FC00000 | 10.0 but its read failed
    buf = bytes.fromhex("41200000" "42f6e979" "7fc00000" "41200000")
    lay = Layout(slots)
    v = lay.decode(np.frombuffer(buf, np.uint8))
    base = np.array([0, 0, 0, Quality.TIMEOUT], dtype=np.uint8)
    q = lay.quality(v, base)
    assert q.tolist() == [Quality.GOOD, Quality.OUT_OF_RANGE, Quality.SENSOR_FAULT, Quality.TIMEOUT]
    assert math.isnan(v[2])
