"""HJ 212-2017 frames: build and parse, no I/O, no clock.

A communication packet (HJ 212-2017, 6.3 "通讯包结构组成", table 3) is::

    ##  LLLL  <data segment>  CCCC  \\r\\n

``LLLL``: the data segment's length in bytes, four decimal digits; ``CCCC``: the CRC of
the data segment, four hexadecimal digits; the segment is at most ``MAX_SEGMENT``
bytes. The data segment (6.3.2, table 4) is ``QN=…;ST=…;CN=…;PW=…;MN=…;Flag=…;``
(``PNUM=…;PNO=…;`` when the message is split) then ``CP=&&…&&``.

The CRC is the standard's own (its appendix A gives it in C): the register starts at
0xFFFF; for every byte, ``reg = (reg >> 8) ^ byte`` and then eight right shifts with
0xA001 fed back when the bit shifted out is 1. Only the high byte of the register
survives into the next byte, so it is *not* the Modbus CRC (``reg ^= byte``), though
both use 0xA001; ``tests/northbound/test_hj212_codec.py`` checks it against frames
published outside this project. Because ``(reg >> 8) ^ byte`` is below 256, one byte's
step is a single lookup ``reg = TABLE[(reg >> 8) ^ byte]``, and the state carried
from byte to byte is 8 bits: ``crc16`` runs on that.

Flag (6.3.3, table 5): bits ``V5…V0 D A``: A = 1 asks the receiver to acknowledge,
D = 1 says the packet is one part of a split message (PNUM/PNO present), V = 000001 for
HJ 212-2017. So 4 (no ack), 5 (ack), 6/7 (split, without/with ack).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

#: the longest data segment a packet may carry (HJ 212-2017 table 3: "数据段 0–1024",
#: as public implementations reproduce it; clause 6.3.1 unconfirmed against the printed text)
MAX_SEGMENT = 1024
#: version bits of HJ 212-2017 (table 5: V5..V0 = 000001), already shifted into place
FLAG_VERSION_2017 = 1 << 2
FLAG_ACK = 0x01
FLAG_SPLIT = 0x02
#: longest QN, ST, CN, PW, MN we accept in what we parse (table 4 as reproduced by public
#: implementations: 20, 5, 7, 9, 27 characters *including* the "XX=" name; unconfirmed)
FIELD_MAX = {"QN": 17, "ST": 2, "CN": 4, "PW": 6, "MN": 24, "Flag": 3, "PNUM": 4, "PNO": 4}
#: the bytes a whole packet may take: header, length, segment, CRC, CR LF
MAX_PACKET = 2 + 4 + MAX_SEGMENT + 4 + 2


def _table() -> tuple[list[int], bytes]:
    full = []
    for i in range(256):
        r = i
        for _ in range(8):
            r = (r >> 1) ^ 0xA001 if r & 1 else r >> 1
        full.append(r)
    return full, bytes(t >> 8 for t in full)


_TABLE, _HIGH = _table()


def _powers(n: int) -> np.ndarray:
    """``P[k][x]``: the 8-bit state after k steps of ``s = HIGH[s ^ 0]`` from ``x``. The step
    ``s → HIGH[s ^ b]`` is linear over GF(2) (a CRC table is: T[a ^ b] = T[a] ^ T[b]), so
    the state after the bytes b_1..b_m is ``P[m][s_0] ^ P[m][b_1] ^ P[m-1][b_2] ^ … ^ P[1][b_m]``:
    each byte's share depends only on its distance from the end, and numpy sums them."""
    high = np.frombuffer(_HIGH, np.uint8)
    out = np.empty((n + 1, 256), np.uint8)
    out[0] = np.arange(256, dtype=np.uint8)
    for k in range(1, n + 1):
        out[k] = high[out[k - 1]]
    return out


_POW = _powers(MAX_SEGMENT)
_POW_FLAT = _POW.reshape(-1)
_TABLE_NP = np.array(_TABLE, np.uint16)


def crc16(data: bytes) -> int:
    """The HJ 212 CRC of ``data`` (see the module docstring), byte by byte."""
    if not data:
        return 0xFFFF
    high = _HIGH
    s = 0xFF
    for b in data[:-1]:
        s = high[s ^ b]
    return _TABLE[s ^ data[-1]]


def crc16_many(segments: list[bytes]) -> list[int]:
    """``crc16`` of each segment (each at most ``MAX_SEGMENT`` bytes, none empty), all at
    once with numpy: the state before a segment's last byte is the XOR of every earlier
    byte's share (``_powers``), summed per segment by one ``reduceat``."""
    if len(segments) < 2 or sum(map(len, segments)) < 256:
        return [crc16(s) for s in segments]
    lens = np.fromiter(map(len, segments), np.int64, len(segments))
    if lens.min() < 2 or lens.max() > MAX_SEGMENT:
        return [crc16(s) for s in segments]
    data = np.frombuffer(b"".join(segments), np.uint8)
    starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
    ends = starts + lens  # one past each segment's last byte
    # a byte's distance (in steps) from its segment's last byte: that byte's own step
    # counts, the last byte is looked up apart, so byte j of a segment ending at e is e-1-j
    dist = np.repeat(ends - 1, lens) - np.arange(len(data), dtype=np.int64)
    share = _POW_FLAT[dist * 256 + data]  # the last byte of each: row 0, its own value
    last = data[ends - 1]
    share[ends - 1] = 0
    states = np.bitwise_xor.reduceat(share, starts) ^ _POW[lens - 1, 0xFF]
    return _TABLE_NP[states ^ last].tolist()  # type: ignore[no-any-return]


class FrameError(ValueError):
    """A packet that is not HJ 212: says what is wrong and where (byte offset). ``qn``:
    the packet's QN when it could still be read (to answer a bad CRC with 9011 QnRtn=9)."""

    qn: str | None = None


@dataclass(slots=True)
class Message:
    """One data segment's fields; ``cp`` is the text between ``CP=&&`` and ``&&``."""

    cn: str
    qn: str = ""
    st: str = ""
    pw: str = ""
    mn: str = ""
    #: None: no Flag field (HJ/T 212-2005 frames have none)
    flag: int | None = FLAG_VERSION_2017
    cp: str = ""
    pnum: int | None = None
    pno: int | None = None
    #: the head fields in the order they came (parsing only): "QN", "ST", ...
    order: list[str] = field(default_factory=list)

    @property
    def wants_ack(self) -> bool:
        return bool((self.flag or 0) & FLAG_ACK)

    def segment(self) -> str:
        head = []
        if self.qn:
            head.append(f"QN={self.qn}")
        head.append(f"ST={self.st}")
        head.append(f"CN={self.cn}")
        head.append(f"PW={self.pw}")
        head.append(f"MN={self.mn}")
        if self.flag is not None:
            head.append(f"Flag={self.flag}")
        if self.pnum is not None:
            head.append(f"PNUM={self.pnum};PNO={self.pno}")
        return ";".join(head) + f";CP=&&{self.cp}&&"

    def cp_items(self) -> dict[str, str]:
        """``CP`` as key → value (``k=v`` pairs split on ``;`` and ``,``; a repeated key keeps
        the last). For commands: ``BeginTime``, ``RtdInterval``, ``SystemTime``, ``QnRtn``."""
        out = {}
        for part in re.split("[;,]", self.cp):
            if part:
                k, sep, v = part.partition("=")
                if sep:
                    out[k] = v
        return out


def frame(segment: str | bytes) -> bytes:
    """``##LLLL<segment>CCCC\\r\\n``; the segment must fit (``MAX_SEGMENT``), be ASCII."""
    seg = segment.encode("ascii") if isinstance(segment, str) else segment
    if len(seg) > MAX_SEGMENT:
        raise FrameError(f"data segment of {len(seg)} bytes is over the {MAX_SEGMENT}-byte limit: split it")
    return b"##%04d%s%04X\r\n" % (len(seg), seg, crc16(seg))


def encode(msg: Message) -> bytes:
    return frame(msg.segment())


def encode_many(msgs: list[Message]) -> list[bytes]:
    """``encode`` of each, the CRCs computed together (``crc16_many``)."""
    segs = [m.segment().encode("ascii") for m in msgs]
    for s in segs:
        if len(s) > MAX_SEGMENT:
            raise FrameError(f"data segment of {len(s)} bytes is over the {MAX_SEGMENT}-byte limit: split it")
    return [b"##%04d%s%04X\r\n" % (len(s), s, c) for s, c in zip(segs, crc16_many(segs), strict=True)]


def split(msg: Message, items: list[str], *, prefix: str = "", limit: int = MAX_SEGMENT) -> list[Message]:
    """``msg`` with ``CP = prefix + ';'.join(items)`` as one message if its segment fits
    in ``limit``, else as parts (PNUM/PNO, the D bit set), each with ``prefix`` and as
    many whole items as fit. An item that cannot fit alone is an error."""
    def cp_of(part: list[str]) -> str:
        return prefix + (";" if prefix and part else "") + ";".join(part)

    flag = FLAG_VERSION_2017 if msg.flag is None else msg.flag
    whole = Message(msg.cn, msg.qn, msg.st, msg.pw, msg.mn, flag, cp_of(items))
    if len(whole.segment()) <= limit:
        return [whole]
    # the head of a part: PNUM/PNO of up to 4 digits each, the split bit
    probe = Message(msg.cn, msg.qn, msg.st, msg.pw, msg.mn, flag | FLAG_SPLIT, "", 9999, 9999)
    room = limit - len(probe.segment()) - len(prefix) - 1
    parts: list[list[str]] = []
    part: list[str] = []
    used = -1  # n items take their lengths plus n - 1 separators
    for it, n in zip(items, map(len, items), strict=True):
        if used + 1 + n > room:
            if n > room:
                raise FrameError(f"one item of {n} characters cannot fit a packet ({it[:40]}…)")
            parts.append(part)
            part, used = [], -1
        used += 1 + n
        part.append(it)
    parts.append(part)
    n = len(parts)
    return [Message(msg.cn, msg.qn, msg.st, msg.pw, msg.mn, flag | FLAG_SPLIT, cp_of(p), n, i + 1)
            for i, p in enumerate(parts)]


_HEAD = re.compile(rb"##(\d{4})")
_QN = re.compile(rb"(?:^|;)QN=(\d{17});")


def parse(packet: bytes) -> Message:
    """One whole packet (``##`` … ``\\r\\n``) → Message; FrameError says what is wrong."""
    if len(packet) > MAX_PACKET:
        raise FrameError(f"packet of {len(packet)} bytes is longer than any HJ 212 packet ({MAX_PACKET})")
    m = _HEAD.match(packet)
    if not m:
        raise FrameError(f"offset 0: a packet starts with '##' and 4 digits, not {packet[:6]!r}")
    n = int(m.group(1))
    if n > MAX_SEGMENT:
        raise FrameError(f"offset 2: data length {n} is over the {MAX_SEGMENT}-byte limit")
    if len(packet) != 6 + n + 6:
        raise FrameError(f"offset 2: data length says {n} bytes, the packet holds {len(packet) - 12}")
    seg, crc_text, tail = packet[6:6 + n], packet[6 + n:10 + n], packet[10 + n:]
    if tail != b"\r\n":
        raise FrameError(f"offset {10 + n}: a packet ends with CR LF, not {tail!r}")
    try:
        got = int(crc_text, 16)
    except ValueError:
        raise FrameError(f"offset {6 + n}: CRC {crc_text!r} is not 4 hex digits") from None
    want = crc16(seg)
    if got != want:
        err = FrameError(f"offset {6 + n}: CRC {crc_text.decode('ascii', 'replace')} does not match the data "
                         f"(computed {want:04X})")
        qn = _QN.search(seg)
        err.qn = qn.group(1).decode("ascii") if qn else None
        raise err
    return parse_segment(seg)


def parse_segment(seg: bytes) -> Message:
    try:
        text = seg.decode("ascii")
    except UnicodeDecodeError as e:
        raise FrameError(f"offset {6 + e.start}: data segment is not ASCII") from None
    cp_at = text.find("CP=&&")
    if cp_at < 0 or not text.endswith("&&") or len(text) < cp_at + 7:
        raise FrameError("data segment has no CP=&&…&& at its end")
    msg = Message(cn="", flag=None)
    for part in text[:cp_at].rstrip(";").split(";"):
        k, sep, v = part.partition("=")
        if not sep or k not in FIELD_MAX:
            raise FrameError(f"data segment: unknown field {part[:30]!r} (known: {', '.join(FIELD_MAX)}, CP)")
        if len(v) > FIELD_MAX[k]:
            raise FrameError(f"data segment: {k} is {len(v)} characters, at most {FIELD_MAX[k]}")
        msg.order.append(k)
        if k == "QN":
            msg.qn = v
        elif k == "ST":
            msg.st = v
        elif k == "CN":
            msg.cn = v
        elif k == "PW":
            msg.pw = v
        elif k == "MN":
            msg.mn = v
        else:
            if not v.isdigit():
                raise FrameError(f"data segment: {k}={v!r} is not a number")
            if k == "Flag":
                msg.flag = int(v)
            elif k == "PNUM":
                msg.pnum = int(v)
            else:
                msg.pno = int(v)
    if not msg.cn:
        raise FrameError("data segment has no CN")
    msg.cp = text[cp_at + 5:-2]
    return msg


class Reader:
    """Packets out of a byte stream: ``feed`` bytes, get whole packets and the errors of
    what could not be one (the stream resynchronises on the next ``##``). The buffer is
    bounded: garbage without ``##`` never grows it past ``MAX_PACKET``."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message | FrameError]:
        buf = self._buf
        buf += data
        out: list[Message | FrameError] = []
        while True:
            start = buf.find(b"##")
            if start < 0:
                if len(buf) > 1:
                    out.append(FrameError(f"{len(buf) - 1} bytes of garbage skipped "
                                          f"({bytes(buf[:20])!r}…)"))
                    del buf[:len(buf) - 1]  # a lone '#' may start the next header
                return out
            if start:
                out.append(FrameError(f"{start} bytes of garbage before '##' skipped ({bytes(buf[:20])!r})"))
                del buf[:start]
            if len(buf) < 6:
                return out
            head = bytes(buf[2:6])
            if not head.isdigit() or int(head) > MAX_SEGMENT:
                out.append(FrameError(f"bad data length {head!r} after '##'; skipped to the next '##'"))
                del buf[:2]
                continue
            total = 6 + int(head) + 6
            if len(buf) < total:
                return out
            pkt = bytes(buf[:total])
            try:
                out.append(parse(pkt))
                del buf[:total]
            except FrameError as e:
                out.append(e)
                # a packet whose length and CR LF hold is dropped whole; otherwise resync
                # on the next '##', which may start a real packet inside what was read
                del buf[:total if pkt.endswith(b"\r\n") else 2]
