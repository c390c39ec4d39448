"""The HJ 212 frame codec against frames published outside this project, decoded and
re-encoded byte for byte, and against a CRC written here from the standard's words.

Sources (each vector names its own):
- HJ 212-2017 appendix A's example (the 1062 "set real-time interval" frame, CRC 1C80),
  as quoted in dromara/hutool hutool-core/src/test/java/cn/hutool/core/io/checksum/CRC16Test.java
  (``ansiTest``: their "CRC16Ansi" is HJ 212's) and in xiaoyao9184/hj-t212-parser's tests;
  the printed standard itself was not at hand to compare.
- dromara/hutool, same file: a 2011 data segment whose HJ 212 CRC is 1e00 and whose Modbus
  CRC is 25fb (``modbusTest``): the two algorithms differ.
- liruoyu2008/HJ212Interpreter README.md: a 2011 frame, CRC F441.
- xiaoyao9184/hj-t212-parser (hj-t212-parser/src/test/.../DataDeserializerTest.java):
  a 2005-style 2011 frame without QN and Flag, CRC 4980.
- linqiu126/hcu hcusrc/l2codec/zhbhjt212msg.h: test frames whose CRCs were made with the
  *Modbus* CRC (``hcu_vm_calculate_crc_modbus``): a platform must refuse them.
"""

from __future__ import annotations

import pytest

from northbound.hj212 import codec
from northbound.hj212.codec import FrameError, Message, Reader, crc16

PUBLISHED = [
    # (frame, where it was published)
    (b"##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;"
     b"CP=&&RtdInterval=30&&1C80\r\n", "HJ 212-2017 appendix A, via dromara/hutool CRC16Test.ansiTest"),
    (b"##0162QN=20231008123340461;ST=22;CN=2011;PW=123456;MN=010000A8900016F000169DC0;Flag=5;"
     b"CP=&&DataTime=20231008123340;w01008-SampleTime=20231008123340,w01008-Rtd=123.456&&F441\r\n",
     "liruoyu2008/HJ212Interpreter README.md"),
    (b"##0139ST=32;CN=2011;PW=123456;MN=LD130133000015;CP=&&DataTime=20160824003817000;B01-Rtd=36.91;"
     b"011-Rtd=231.0,011-Flag=N;060-Rtd=1.803,060-Flag=N&&4980\r\n",
     "xiaoyao9184/hj-t212-parser DataDeserializerTest"),
]


def crc_from_the_text(data: bytes) -> int:
    """HJ 212-2017 appendix A in words: start with 0xFFFF; for each byte, shift the
    register right by 8 and XOR the byte in; then 8 times: shift right, and if the bit
    shifted out was 1, XOR 0xA001. Written bit by bit, independently of the codec's table."""
    reg = 0xFFFF
    for byte in data:
        reg = (reg >> 8) ^ byte
        for _ in range(8):
            out = reg & 1
            reg >>= 1
            if out:
                reg ^= 0xA001
    return reg


def modbus_crc(data: bytes) -> int:
    """The Modbus CRC (Modbus over serial line V1.02, 6.2.2): XOR the byte into the low byte."""
    reg = 0xFFFF
    for byte in data:
        reg ^= byte
        for _ in range(8):
            reg = (reg >> 1) ^ 0xA001 if reg & 1 else reg >> 1
    return reg


@pytest.mark.parametrize(("frame", "source"), PUBLISHED,
                         ids=["appendixA-1062", "interpreter-2011", "t212-2005"])
def test_published_frames_decode_and_encode_byte_for_byte(frame: bytes, source: str) -> None:
    msg = codec.parse(frame)
    assert codec.encode(msg) == frame, source
    seg = frame[6:-6]
    assert crc16(seg) == crc_from_the_text(seg) == int(frame[-6:-2], 16), source


def test_the_appendix_example_reads_as_the_standard_describes() -> None:
    msg = codec.parse(PUBLISHED[0][0])
    assert (msg.qn, msg.st, msg.cn, msg.pw, msg.mn, msg.flag) == (
        "20160801085857223", "32", "1062", "100000", "010000A8900016F000169DC0", 5)
    assert msg.wants_ack and msg.pnum is None
    assert msg.cp_items() == {"RtdInterval": "30"}


def test_hutool_vectors_tell_hj212_from_modbus() -> None:
    data = (b"QN=20160801085857223;ST=23;CN=2011;PW=123456;MN=010000A8900016F000169DC0;Flag=5;"
            b"CP=&&DataTime=20160801085857; LA-Rtd=50.1&&")
    assert crc16(data) == 0x1E00  # hutool CRC16Test.ansiTest
    assert modbus_crc(data) == 0x25FB  # hutool CRC16Test.modbusTest
    assert crc16(data) != modbus_crc(data)


@pytest.mark.parametrize("frame", [
    b"##0091QN=20170516010101001;ST=22;CN=1062;PW=123456;MN=ABCDEFG1234567;Flag=3;CP=&&RtdInterval=30&&EF98\r\n",
    b"##0077QN=20170516010101001;ST=22;CN=1061;PW=123456;MN=ABCDEFG1234567;Flag=3;CP=&&&&77E5\r\n",
])
def test_a_frame_with_a_modbus_crc_is_refused_and_says_why(frame: bytes) -> None:
    seg = frame[6:-6]
    assert modbus_crc(seg) == int(frame[-6:-2], 16)  # linqiu126/hcu made them with Modbus' CRC
    with pytest.raises(FrameError, match=r"offset \d+: CRC .* does not match the data \(computed ") as e:
        codec.parse(frame)
    assert e.value.qn == "20170516010101001"


@pytest.mark.parametrize(("frame", "why"), [
    (b"#0101QN=1", "starts with '##'"),
    (codec.frame(b"ABCDE"), "CP=&&"),
    (b"##9999" + b"x" * 20, "over the 1024-byte limit"),
    (b"##0015CN=2011;CP=&&&&0000\n\n", "ends with CR LF"),
    (b"##0016CN=2011;CP=&&&&0000\r\n", "length says 16"),
    (b"##0015CN=2011;CP=&&&&ZZZZ\r\n", "not 4 hex digits"),
])
def test_broken_packets_name_what_is_wrong(frame: bytes, why: str) -> None:
    with pytest.raises(FrameError, match=why.replace("(", r"\(")):
        codec.parse(frame)


def test_unknown_head_fields_and_long_values_are_refused() -> None:
    for seg, why in [(b"QN=1;XX=2;CN=2011;CP=&&&&", "unknown field"),
                     (b"MN=" + b"A" * 40 + b";CN=2011;CP=&&&&", "MN is 40 characters"),
                     (b"CN=2011;Flag=x;CP=&&&&", "not a number"),
                     (b"ST=22;CP=&&&&", "no CN")]:
        with pytest.raises(FrameError, match=why):
            codec.parse(codec.frame(seg))


def test_a_long_message_is_split_with_pnum_pno_and_each_part_fits() -> None:
    items = [f"a{i:05d}-Rtd={i * 1.5:.3f},a{i:05d}-Flag=N" for i in range(200)]
    head = Message("2011", "20260101000000000", "31", "123456", "MN0001",
                   codec.FLAG_VERSION_2017 | codec.FLAG_ACK)
    parts = codec.split(head, items, prefix="DataTime=20260101000000")
    assert len(parts) > 1
    got: list[str] = []
    for i, p in enumerate(parts, 1):
        pkt = codec.encode(p)
        assert len(pkt) - 12 <= codec.MAX_SEGMENT
        back = codec.parse(pkt)
        assert (back.pnum, back.pno, back.flag) == (len(parts), i, 7)  # D and A bits with the version
        assert back.cp.startswith("DataTime=20260101000000;")
        got += back.cp.split(";")[1:]
    assert got == items
    # a short one is not split
    one = codec.split(head, items[:3], prefix="DataTime=20260101000000")
    assert len(one) == 1 and one[0].pnum is None and one[0].flag == 5


def test_the_stream_reader_resyncs_after_garbage_and_bad_crc() -> None:
    good = PUBLISHED[0][0]
    bad = good[:-6] + b"0000\r\n"
    r = Reader()
    out = []
    stream = b"\x00\xffnoise" + bad + b"xx" + good + good[:30]
    for i in range(0, len(stream), 7):  # in small pieces, as TCP may deliver them
        out += r.feed(stream[i:i + 7])
    out += r.feed(good[30:])
    msgs = [o for o in out if isinstance(o, Message)]
    errs = [str(o) for o in out if isinstance(o, FrameError)]
    assert [m.cn for m in msgs] == ["1062", "1062"]
    assert any("CRC 0000 does not match" in e for e in errs)
    assert any("garbage" in e for e in errs)


def test_garbage_without_a_header_never_grows_the_buffer() -> None:
    r = Reader()
    for _ in range(1000):
        r.feed(b"x" * 4096)
    assert len(r._buf) <= 1


def test_the_batched_crc_agrees_with_the_text_on_every_length() -> None:
    import random

    rng = random.Random(7)
    for _ in range(200):
        segs = [bytes(rng.getrandbits(8) for _ in range(rng.choice([2, 3, 64, 500, 1023, 1024])))
                for _ in range(rng.randint(2, 8))]
        assert codec.crc16_many(segs) == [crc_from_the_text(s) for s in segs]
    frames = [f for f, _ in PUBLISHED]
    assert codec.encode_many([codec.parse(f) for f in frames]) == frames


def test_period_items_min_avg_max_cou_and_flags_by_hand() -> None:
    import numpy as np

    from gateway.core.batch import Quality
    from northbound.hj212 import uploads

    ns = 10**9
    # one 10-minute period (600 s), two points: a flow in m3/h with -Cou, a level
    slot = np.array([0, 0, 0, 1, 1], np.int32)
    ts = np.array([0, 60, 120, 0, 60], np.int64) * ns
    value = np.array([10.0, 20.0, 90.0, 1.0, 2.0])
    quality = np.array([Quality.GOOD, Quality.GOOD, Quality.MAINTENANCE, Quality.SENSOR_FAULT,
                        Quality.CALIBRATING], np.uint8)
    got = uploads.period_items(["w00000", "a01012"], [1, 2], ["h", None], 600.0,
                               np.zeros(5, np.int64), slot, ts, value, quality)
    # flow: the N samples only (10, 20): avg 15 m3/h over 1/6 h = 2.5 m3; the M sample left out
    # level: no N sample: over all that have a value, flag of the last (C)
    assert got == {0: ["w00000-Min=10.0,w00000-Avg=15.0,w00000-Max=20.0,w00000-Cou=2.5,w00000-Flag=N",
                       "a01012-Min=1.00,a01012-Avg=1.50,a01012-Max=2.00,a01012-Flag=C"]}
