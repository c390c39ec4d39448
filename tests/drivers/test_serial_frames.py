"""The pure serial frame parser: checksums with known vectors, framing, value extraction."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.serial.frames import (
    ChannelSpec,
    FrameParser,
    Framer,
    FrameSpec,
    checksum_text,
    crc16_modbus,
    sum8,
    unescape,
    xor8,
)
from gateway.core.batch import Quality


@pytest.mark.parametrize(("fn", "data", "want"), [
    (crc16_modbus, b"123456789", 0x4B37),               # the CRC catalogue's check value
    (crc16_modbus, bytes.fromhex("010300000002"), 0x0BC4),  # Modbus read request: C4 0B on the wire
    (sum8, b"123456789", 0xDD),
    (sum8, b"\xff\x01", 0x00),
    (xor8, b"123456789", 0x31),
    (xor8, b"GPRMC,092750.000,A,5321.6802,N,00630.3372,W,0.02,31.66,280511,,,A", 0x43),  # NMEA
])
def test_checksum_vectors(fn, data, want):
    assert fn(data) == want


def test_checksum_text_forms():
    assert checksum_text("crc16-modbus", "binary", bytes.fromhex("010300000002")) == bytes.fromhex("C40B")
    assert checksum_text("crc16-modbus", "hex", b"123456789") == b"4B37"
    assert checksum_text("xor", "hex", b"123456789") == b"31"
    assert checksum_text("none", "hex", b"x") == b""


def test_unescape_literal_and_real():
    assert unescape("\\r\\n") == b"\r\n"
    assert unescape("\r\n") == b"\r\n"
    assert unescape("\\x02") == b"\x02"
    assert unescape("MEAS?\\r") == b"MEAS?\r"


def test_framer_terminator_keeps_tail_and_drops_overflow():
    f = Framer(terminator=b"\r\n", max_length=16)
    assert f.feed(b"A=1\r\nB=") == [b"A=1"]
    assert f.pending == 2
    assert f.feed(b"2\r\n\r\n") == [b"B=2", b""]
    assert f.feed(b"x" * 40) == []
    assert f.overflow == 1 and f.overflow_bytes == 40 and f.pending == 0
    assert f.feed(b"C=3\r") == []
    assert f.feed(b"\n") == [b"C=3"]  # terminator split across reads


def test_framer_fixed_length_with_start_resyncs():
    f = Framer(length=6, start=b"\x02")
    assert f.feed(b"junk\x02ABCDE\x02AB") == [b"\x02ABCDE"]
    assert f.overflow_bytes == 4
    assert f.feed(b"CDE") == [b"\x02ABCDE"]
    f2 = Framer(length=4)
    assert f2.feed(b"abcdefghij") == [b"abcd", b"efgh"]
    assert f2.clear() == b"ij"


def _sound_meter(checksum="xor"):
    return FrameSpec(terminator=b"\r\n", checksum=checksum, checksum_separator=b"*",
                     pattern=r"LAeq=(?P<laeq>[0-9.]+),LCpk=(?P<lcpk>[0-9.]+)",
                     channels=[ChannelSpec(group="laeq"), ChannelSpec(group="lcpk")])


def test_parse_good_frame_with_groups():
    p = FrameParser(_sound_meter())
    body = b"LAeq=065.3,LCpk=098.1"
    r = p.parse(body + b"*" + checksum_text("xor", "hex", body))
    assert r.cause == Quality.GOOD
    assert r.positions == [0, 1] and r.values == [65.3, 98.1]


@pytest.mark.parametrize("kind", ["sum8", "xor", "crc16-modbus"])
@pytest.mark.parametrize("fmt", ["hex", "binary"])
def test_each_checksum_accepts_good_and_rejects_bad(kind, fmt):
    spec = FrameSpec(terminator=b"\r\n", checksum=kind, checksum_format=fmt,
                     channels=[ChannelSpec(pattern=r"V=(?P<value>[-0-9.]+)")])
    p = FrameParser(spec)
    body = b"V=12.5;"
    good = body + checksum_text(kind, fmt, body)
    assert p.parse(good).values == [12.5]
    corrupt = b"V=12.6;" + good[len(body):]
    r = p.parse(corrupt)
    assert r.cause == Quality.CHECKSUM and r.positions == [] and "checksum" in r.detail


def test_checksum_from_skips_start_and_separator_is_checked():
    spec = FrameSpec(terminator=b"\r\n", start=b"$", checksum="xor", checksum_from=1,
                     checksum_separator=b"*", channels=[ChannelSpec(field=(7, 17))])
    p = FrameParser(spec)
    line = b"$GPRMC,092750.000,A,5321.6802,N,00630.3372,W,0.02,31.66,280511,,,A*43"
    assert p.parse(line).values == [92750.0]
    assert p.parse(b"noise" + line).values == [92750.0]  # junk before the start marker is dropped
    assert p.garbage_bytes == 5
    assert p.parse(line.replace(b"*43", b"*44")).cause == Quality.CHECKSUM
    assert p.parse(line.replace(b"*", b"#")).cause == Quality.PARSE  # no separator: garbage
    assert p.parse(line.replace(b"*43", b"*4G")).cause == Quality.PARSE
    assert p.parse(b"GPRMC,no start").cause == Quality.PARSE


def test_channel_patterns_absent_vs_not_a_number():
    spec = FrameSpec(channels=[ChannelSpec(pattern=r"PM10=(?P<value>\S+)"),
                               ChannelSpec(pattern=r"PM2\.5=(?P<value>\S+)")])
    p = FrameParser(spec)
    r = p.parse(b"PM10=0.123 mg/m3")
    assert r.cause == Quality.GOOD and r.positions == [0]  # PM2.5 not in this line: not an error
    r = p.parse(b"PM10=---- PM2.5=0.05")
    assert r.cause == Quality.GOOD and r.positions == [1] and r.bad == [0]
    r = p.parse(b"\x00\x13garbage")
    assert r.cause == Quality.PARSE and r.detail == "no channel matched"


def test_fixed_width_fields_and_short_frame():
    spec = FrameSpec(terminator=None, length=20,
                     channels=[ChannelSpec(field=(0, 8)), ChannelSpec(field=(8, 16))])
    p = FrameParser(spec)
    r = p.parse(b"  0.125 +1.5E-02 uSv")
    assert r.values == [0.125, 0.015]
    r = p.parse(b"  0.125 ")
    assert r.positions == [0] and r.bad == [1]


def test_non_ascii_is_parse_error():
    p = FrameParser(FrameSpec(channels=[ChannelSpec(pattern=r"(?P<value>\d+)")]))
    assert p.parse(b"\xff\xfe12").cause == Quality.PARSE


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="group"):
        FrameParser(FrameSpec(pattern=r"(?P<a>\d)", channels=[ChannelSpec(group="b")]))
    with pytest.raises(ValueError, match="value"):
        FrameParser(FrameSpec(channels=[ChannelSpec(pattern=r"(\d)")]))
    with pytest.raises(ValueError):
        Framer(terminator=b"\n", length=3)


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=20),
       st.lists(st.integers(min_value=1, max_value=17), min_size=1, max_size=30))
def test_stream_split_anywhere_gives_the_same_frames(values, cuts):
    """However the port chops the byte stream, the frames and values come out the same."""
    spec = FrameSpec(terminator=b"\r\n", checksum="crc16-modbus", checksum_separator=b"|",
                     channels=[ChannelSpec(pattern=r"X=(?P<value>\S+)")])
    data = b""
    for v in values:
        body = f"X={v!r}".encode()
        data += body + b"|" + checksum_text("crc16-modbus", "hex", body) + b"\r\n"
    framer, parser = spec.framer(), FrameParser(spec)
    out: list[float] = []
    pos, k = 0, 0
    while pos < len(data):
        n = cuts[k % len(cuts)]
        k += 1
        for f in framer.feed(data[pos:pos + n]):
            r = parser.parse(f)
            assert r.cause == Quality.GOOD
            out.extend(r.values)
        pos += n
    assert len(out) == len(values)
    assert all(math.isclose(a, b) for a, b in zip(out, values, strict=True))
