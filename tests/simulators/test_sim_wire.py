"""The simulators' wire code (simulators/wire.py) against vectors safegw did not write.

The simulators encode independently of the drivers so that a driver's mistake cannot
be mirrored by its test peer; these tests pin the simulators' side to published
frames and checksums, to pymodbus's own client-side register decoding, and then
cross-check it with the drivers' codec for every type and byte order.

Sources (each vector below names its own):

- [SL]  MODBUS over Serial Line, Specification and Implementation Guide V1.02
        (modbus.org, 2006), 6.2.2 and Appendix B "CRC Generation": the frame 02 07 is
        sent with its CRC 0x1241 as 41 12 (low byte first). Also in Modicon PI-MBUS-300.
- [AP]  The read/write examples of the MODBUS Application Protocol Specification
        (slave 0x11), as framed for RTU at simplymodbus.ca and in the ModbusDecoder
        README for Mdbus (a public file found through the code index; its repository
        was not recorded).
- [PM]  pymodbus-dev/pymodbus, test/message/test_rtu.py (``test_roundtrip`` frames)
        and test/client/test_client.py (``test_client_mixin_convert`` registers).
- [RC]  The CRC catalogue check value of CRC-16/MODBUS ("123456789" -> 0x4B37), as in
        kaitai-io/kaitai_struct_formats, common/checksum/crc/16/crc16_modbus.ksy.
- [NM]  NMEA 0183 sentence checksum (XOR of the bytes between '$' and '*'), with the
        widely quoted GPGGA example sentence ending in ``*47``.
"""

from __future__ import annotations

import math
import struct
from typing import Literal

import pytest
from pymodbus.client.mixin import ModbusClientMixin

from drivers.modbus import codec
from simulators.wire import checksum, checksum_field, crc16_modbus, encode_registers

ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")
TYPES = ("int16", "uint16", "int32", "uint32", "float32", "float64")


# ---------------------------------------------------------------------- CRC-16/MODBUS

# (whole RTU frame as published, source): the last two bytes are the CRC, low byte first
RTU_FRAMES = [
    ("02 07 41 12", "[SL] Appendix B example"),
    ("11 03 00 6B 00 03 76 87", "[AP] read holding registers, request"),
    ("11 03 06 AE 41 56 52 43 40 49 AD", "[AP] read holding registers, response; also [PM]"),
    ("11 01 00 13 00 25 0E 84", "[AP] read coils, request"),
    ("11 02 00 C4 00 16 BA A9", "[AP] read discrete inputs, request"),
    ("11 04 00 08 00 01 B2 98", "[AP] read input registers, request"),
    ("11 05 00 AC FF 00 4E 8B", "[AP] write single coil"),
    ("02 01 01 00 51 CC", "[PM] test_rtu.py"),
    ("01 01 03 01 00 0A ED 89", "[PM] test_rtu.py"),
]


@pytest.mark.parametrize(("frame", "source"), RTU_FRAMES)
def test_crc_of_published_rtu_frames(frame: str, source: str) -> None:
    data = bytes.fromhex(frame)
    body, crc = data[:-2], data[-2:]
    assert crc16_modbus(body).to_bytes(2, "little") == crc, source
    # an instrument that ends its frames with a Modbus CRC writes it the same way
    assert checksum_field("crc16-modbus", "binary", body) == crc, source


def test_crc_catalogue_check_value() -> None:
    assert crc16_modbus(b"123456789") == 0x4B37  # [RC]
    assert checksum_field("crc16-modbus", "hex", b"123456789") == b"4B37"


def test_a_flipped_bit_changes_the_crc() -> None:
    frame = bytes.fromhex("1103006B0003")
    for i in range(len(frame) * 8):
        flipped = bytearray(frame)
        flipped[i // 8] ^= 1 << (i % 8)
        assert crc16_modbus(bytes(flipped)) != 0x8776


# ---------------------------------------------------------------- instrument checksums

def test_xor_checksum_of_the_nmea_example() -> None:
    covered = b"GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
    assert checksum("xor", covered) == (0x47, 1)  # [NM]: the sentence ends in *47
    assert checksum_field("xor", "hex", covered) == b"47"
    assert checksum_field("xor", "binary", covered) == b"\x47"


def test_sum8_by_hand() -> None:
    # '1'..'9' are 0x31..0x39: 9 * 0x30 + 45 = 477 = 0x1DD, low byte 0xDD
    assert checksum("sum8", b"123456789") == (0xDD, 1)
    assert checksum_field("sum8", "hex", b"123456789") == b"DD"
    assert checksum_field("none", "hex", b"123456789") == b""


# ---------------------------------------------------------------- register encoding

# (type, value, registers in ABCD order as published by [PM] test_client_mixin_convert)
PYMODBUS_VECTORS = [
    ("int16", -27123, [0x960D]),
    ("uint32", 27123, [0x0000, 0x69F3]),
    ("uint32", 32145678, [0x01EA, 0x810E]),
    ("int32", -32145678, [0xFE15, 0x7EF2]),
    ("float32", 27123.5, [0x46D3, 0xE700]),
    ("float32", 3.141592, [0x4049, 0x0FD8]),
    ("float32", -3.141592, [0xC049, 0x0FD8]),
    ("float64", 27123.5, [0x40DA, 0x7CE0, 0x0000, 0x0000]),
    ("float64", 3.14159265358979, [0x4009, 0x21FB, 0x5444, 0x2D11]),
]


@pytest.mark.parametrize(("type_", "value", "words"), PYMODBUS_VECTORS)
def test_big_endian_registers_match_pymodbus_vectors(type_: str, value: float, words: list[int]) -> None:
    assert encode_registers(value, type_, "ABCD") == words


# float32 in the four orders, the words written out by hand from the IEEE 754 patterns:
# 123.456 is 0x42F6E979, -1.0 is 0xBF800000, 27123.5 is 0x46D3E700 ([PM]). In the
# order's name A is the most significant byte; words are as the registers hold them.
FLOAT_TABLE = {
    123.456: {"ABCD": [0x42F6, 0xE979], "CDAB": [0xE979, 0x42F6],
              "BADC": [0xF642, 0x79E9], "DCBA": [0x79E9, 0xF642]},
    -1.0: {"ABCD": [0xBF80, 0x0000], "CDAB": [0x0000, 0xBF80],
           "BADC": [0x80BF, 0x0000], "DCBA": [0x0000, 0x80BF]},
    27123.5: {"ABCD": [0x46D3, 0xE700], "CDAB": [0xE700, 0x46D3],
              "BADC": [0xD346, 0x00E7], "DCBA": [0x00E7, 0xD346]},
}


@pytest.mark.parametrize("value", list(FLOAT_TABLE))
@pytest.mark.parametrize("order", ORDERS)
def test_float32_byte_order_table(value: float, order: str) -> None:
    words = FLOAT_TABLE[value][order]
    assert encode_registers(value, "float32", order) == words
    assert codec.decode_words(words, "float32", order) == pytest.approx(value, rel=1e-7)


def test_a_modicon_float_from_a_device_log() -> None:
    # [AP] ModbusDecoder README: "Modicon" floats put the low word first (CDAB):
    # registers 51 24 45 B7 read as 0x45B75124 = 5866.143
    assert codec.decode_words([0x5124, 0x45B7], "float32", "CDAB") == pytest.approx(5866.143, abs=1e-3)
    assert encode_registers(struct.unpack(">f", bytes.fromhex("45B75124"))[0], "float32", "CDAB") == [
        0x5124, 0x45B7]


# ---------------------------------------------------------------- independent decoders

_PM_TYPE = {"int16": ModbusClientMixin.DATATYPE.INT16, "uint16": ModbusClientMixin.DATATYPE.UINT16,
            "int32": ModbusClientMixin.DATATYPE.INT32, "uint32": ModbusClientMixin.DATATYPE.UINT32,
            "float32": ModbusClientMixin.DATATYPE.FLOAT32, "float64": ModbusClientMixin.DATATYPE.FLOAT64}


def pymodbus_decode(words: list[int], type_: str, order: str) -> float:
    """pymodbus's client-side decoding. It knows word order only (big: ABCD, little:
    CDAB); BADC and DCBA are those two with the bytes of every register swapped."""
    if order in ("BADC", "DCBA"):
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    word_order: Literal["big", "little"] = "big" if order in ("ABCD", "BADC") else "little"
    return float(ModbusClientMixin.convert_from_registers(words, _PM_TYPE[type_],  # type: ignore[arg-type]
                                                          word_order=word_order))


def struct_decode(words: list[int], type_: str, order: str) -> float:
    """By hand: undo the order on the bytes, then unpack big-endian."""
    wire = b"".join(w.to_bytes(2, "big") for w in words)
    pairs = [wire[i:i + 2] for i in range(0, len(wire), 2)]
    be = {"ABCD": wire, "CDAB": b"".join(reversed(pairs)),
          "BADC": b"".join(p[::-1] for p in pairs), "DCBA": wire[::-1]}[order]
    fmt = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f", "float64": ">d"}
    return float(struct.unpack(fmt[type_], be)[0])


SAMPLES: dict[str, list[int] | list[float]] = {
    "int16": [0, 1, -1, 255, 256, -27123, 32767, -32768],
    "uint16": [0, 1, 255, 256, 0x1234, 65535],
    "int32": [0, -1, 0x12345678, -32145678, 2**31 - 1, -(2**31)],
    "uint32": [0, 1, 0x12345678, 32145678, 2**32 - 1],
    "float32": [0.0, -1.0, 1.5, 123.456, 27123.5, -3.141592, 1e-30, 3.0e38],
    "float64": [0.0, -1.0, 27123.5, 3.14159265358979, -1e300, 5e-324],
}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("type_", TYPES)
def test_every_type_and_order_against_pymodbus_struct_and_the_drivers(type_: str, order: str) -> None:
    for value in SAMPLES[type_]:
        words = encode_registers(value, type_, order)
        assert len(words) == codec.WIDTH[type_]
        # a float32 keeps about 7 significant digits; everything else is exact
        expect = struct.unpack(">f", struct.pack(">f", value))[0] if type_ == "float32" else value
        got = {"pymodbus": pymodbus_decode(words, type_, order),
               "struct": struct_decode(words, type_, order),
               "drivers": codec.decode_words(words, type_, order)}
        assert got == {k: expect for k in got}, (type_, order, value, [hex(w) for w in words])
        # and the drivers' own encoder (used by their tests) puts the same words out
        assert codec.encode(value, type_, order) == words


@pytest.mark.parametrize("order", ORDERS)
def test_scale_offset_and_clamping_match_the_drivers(order: str) -> None:
    # 20.9 %vol with scale 0.1 -> raw 209; decoding with the same scale gives it back
    for type_ in ("int16", "uint16", "int32", "uint32"):
        words = encode_registers(20.9, type_, order, scale=0.1)
        assert words == codec.encode(20.9, type_, order, scale=0.1)
        assert codec.decode_words(words, type_, order, scale=0.1) == pytest.approx(20.9)
    # -40..85 °C as (value + 40) / 0.01 in a uint16
    words = encode_registers(24.37, "uint16", order, scale=0.01, offset=-40.0)
    assert codec.decode_words(words, "uint16", order, scale=0.01, offset=-40.0) == pytest.approx(24.37)
    # a value beyond the type's range is clamped, as a transmitter saturates
    assert encode_registers(1e9, "int16", order) == codec.encode(1e9, "int16", order)
    assert struct_decode(encode_registers(-1e9, "uint32", order), "uint32", order) == 0
    assert encode_registers(1, "bool") == [1] and encode_registers(0, "bool") == [0]


def test_non_finite_floats_round_trip() -> None:
    for order in ORDERS:
        words = encode_registers(math.inf, "float32", order)
        assert codec.decode_words(words, "float32", order) == math.inf
        assert math.isnan(struct_decode(encode_registers(math.nan, "float64", order), "float64", order))


def test_unknown_byte_order_is_refused() -> None:
    with pytest.raises(ValueError, match="byte order"):
        encode_registers(1.0, "float32", "ACBD")
