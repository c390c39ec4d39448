"""SMS in PDU mode: SMS-SUBMIT out, SMS-DELIVER and SMS-STATUS-REPORT in (pure, no I/O).

Written from 3GPP TS 23.040 (the TPDUs, section 9.2) and TS 23.038 (the alphabets and the
data coding scheme). A text that the GSM 7-bit default alphabet (with its extension table)
can hold goes as 7-bit, 160 characters a part; anything else, Chinese in particular, as
UCS-2, 70 characters a part. A longer text becomes concatenated parts carrying the
8-bit-reference information element (IEI 00, TS 23.040 9.2.3.24.1): 153 septets or 67 UCS-2
characters a part; a part never splits an escape sequence or a surrogate pair.

The hex PDUs that ``AT+CMGS`` takes and ``+CMGR``/``+CDS`` give carry the service centre
address first (TS 27.005 3.1: "<pdu>": SC address then the TPDU); the length in
``AT+CMGS=<length>`` counts the TPDU only.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

# TS 23.038 6.2.1: the default alphabet, by septet value (0x1B is the escape to the extension)
GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# TS 23.038 6.2.1.1: the extension table (after 0x1B)
GSM7_EXT = {0x0A: "\f", 0x14: "^", 0x28: "{", 0x29: "}", 0x2F: "\\", 0x3C: "[", 0x3D: "~",
            0x3E: "]", 0x40: "|", 0x65: "€"}
_ENC_BASIC = {ch: i for i, ch in enumerate(GSM7_BASIC) if i != 0x1B}
_ENC_EXT = {ch: i for i, ch in GSM7_EXT.items()}

ESC = 0x1B
SINGLE_SEPTETS = 160  # TS 23.040 9.2.3.16: 140 octets of user data
PART_SEPTETS = 153  # 160 - 7 septets for a 6-octet UDH (with one fill bit)
SINGLE_UCS2 = 70
PART_UCS2 = 67  # (140 - 6) / 2
MAX_PARTS = 255  # the concatenation IE counts parts in one octet
#: TS 23.040 9.2.3.12.1, relative format: 167 = 12 h + (167 - 143) x 30 min = 24 h.
#: An alarm SMS older than a day is worse than none: the network may drop it then.
VALIDITY_24H = 0xA7

DCS_GSM7 = 0x00
DCS_8BIT = 0x04
DCS_UCS2 = 0x08


class TooLong(ValueError):
    """The text needs more concatenated parts than allowed."""


class PduError(ValueError):
    """A PDU that cannot be decoded: ``where`` names the field, the message says why."""

    def __init__(self, where: str, why: str):
        super().__init__(f"{where}: {why}")
        self.where = where


# --------------------------------------------------------------------------- alphabets

def gsm7_septets(text: str) -> list[int] | None:
    """The text as default-alphabet septets (escapes included), or None if it needs UCS-2."""
    out: list[int] = []
    for ch in text:
        v = _ENC_BASIC.get(ch)
        if v is not None:
            out.append(v)
            continue
        e = _ENC_EXT.get(ch)
        if e is None:
            return None
        out += (ESC, e)
    return out


def gsm7_text(septets: list[int]) -> str:
    out = []
    esc = False
    for s in septets:
        if esc:
            # TS 23.038 6.2.1.1: an unknown extension shows the default alphabet's character
            out.append(GSM7_EXT.get(s, GSM7_BASIC[s] if s != ESC else " "))
            esc = False
        elif s == ESC:
            esc = True
        else:
            out.append(GSM7_BASIC[s])
    return "".join(out)


def pack7(septets: list[int], fill_bits: int = 0) -> bytes:
    """Septets packed into octets, least significant bit first, after ``fill_bits`` zero bits."""
    acc = 0
    nbits = fill_bits
    out = bytearray()
    for s in septets:
        acc |= (s & 0x7F) << nbits
        nbits += 7
        while nbits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8
    if nbits:
        out.append(acc & 0xFF)
    return bytes(out)


def unpack7(data: bytes, count: int, fill_bits: int = 0) -> list[int]:
    """``count`` septets from packed octets, skipping ``fill_bits`` first."""
    if (fill_bits + 7 * count + 7) // 8 > len(data):
        raise PduError("TP-UD", f"{count} septets need more than the {len(data)} octets present")
    val = int.from_bytes(data, "little")
    return [(val >> (fill_bits + 7 * i)) & 0x7F for i in range(count)]


def _ucs2_units(text: str) -> bytes:
    return text.encode("utf-16-be")


# --------------------------------------------------------------------------- addresses

def encode_address(number: str) -> bytes:
    """TP-DA: digit count, type of address (0x91 international for a leading '+', else
    0x81 unknown/ISDN, TS 23.040 9.1.2.5) and the digits as swapped semi-octets."""
    digits = number[1:] if number.startswith("+") else number
    if not digits or not digits.isdigit() or not digits.isascii() or len(digits) > 20:
        raise ValueError(f"{number!r} is not a phone number (digits only after an optional '+', at most 20)")
    toa = 0x91 if number.startswith("+") else 0x81
    return bytes([len(digits), toa]) + _semi_octets(digits)


def _semi_octets(digits: str) -> bytes:
    if len(digits) % 2:
        digits += "F"
    return bytes(int(digits[i + 1] + digits[i], 16) for i in range(0, len(digits), 2))


def _digits(raw: bytes, count: int, where: str) -> str:
    s = []
    for b in raw:
        s.append(b & 0x0F)
        s.append(b >> 4)
    s = s[:count]
    table = "0123456789*#abc"
    if any(d == 0x0F for d in s):
        raise PduError(where, "a filler semi-octet inside the number")
    return "".join(table[d] for d in s)


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int, where: str) -> bytes:
        if self.pos + n > len(self.data):
            raise PduError(where, f"the PDU ends at octet {len(self.data)}; {n} more were expected "
                                  f"at octet {self.pos}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def octet(self, where: str) -> int:
        return self.take(1, where)[0]

    def rest(self) -> bytes:
        b = self.data[self.pos:]
        self.pos = len(self.data)
        return b


def _address(r: _Reader, where: str, *, sc: bool = False) -> str:
    """An address field; ``sc``: the service centre's, whose length counts octets."""
    n = r.octet(where)
    if sc:
        if n == 0:
            return ""
        toa = r.octet(where)
        raw = r.take(n - 1, where)
        count = 2 * len(raw) - (1 if raw and raw[-1] >> 4 == 0x0F else 0)
    else:
        if n > 20:
            raise PduError(where, f"address length {n} digits exceeds 20 (TS 23.040 9.1.2.5)")
        toa = r.octet(where)
        raw = r.take((n + 1) // 2, where)
        count = n
    if not toa & 0x80:
        raise PduError(where, f"type of address 0x{toa:02X} lacks its extension bit")
    if (toa >> 4) & 0x07 == 0x05:  # alphanumeric, packed in 7-bit (TS 23.040 9.1.2.5)
        return gsm7_text(unpack7(raw, count * 4 // 7))
    digits = _digits(raw, count, where)
    return ("+" if (toa >> 4) & 0x07 == 0x01 else "") + digits


def _timestamp(raw: bytes) -> dt.datetime | None:
    """TP-SCTS / TP-DT (TS 23.040 9.2.3.11): swapped semi-octets, zone in quarter hours."""
    sw = [((b & 0x0F) * 10 + (b >> 4)) for b in raw[:6]]
    tzb = raw[6]
    quarters = (tzb & 0x07) * 10 + (tzb >> 4)
    if tzb & 0x08:
        quarters = -quarters
    try:
        return dt.datetime((1900 if sw[0] >= 90 else 2000) + sw[0], sw[1], sw[2], sw[3], sw[4], sw[5],
                           tzinfo=dt.timezone(dt.timedelta(minutes=15 * quarters)))
    except ValueError:
        return None  # a malformed stamp does not make the message unreadable


# --------------------------------------------------------------------------- SMS-SUBMIT

@dataclass(frozen=True)
class SubmitPart:
    pdu: bytes  # SC address (00: the SIM's) followed by the TPDU
    tpdu_len: int  # what AT+CMGS=<length> takes

    @property
    def hex(self) -> str:
        return self.pdu.hex().upper()


def split_text(text: str) -> tuple[int, list[bytes | list[int]]]:
    """The data coding scheme and the text's parts (septet lists or UCS-2 octets)."""
    sept = gsm7_septets(text)
    if sept is not None:
        if len(sept) <= SINGLE_SEPTETS:
            return DCS_GSM7, [sept]
        parts: list[bytes | list[int]] = []
        i = 0
        while i < len(sept):
            end = min(i + PART_SEPTETS, len(sept))
            if end < len(sept) and sept[end - 1] == ESC:
                end -= 1  # never cut between an escape and its character
            parts.append(sept[i:end])
            i = end
        return DCS_GSM7, parts
    units = _ucs2_units(text)
    if len(units) <= 2 * SINGLE_UCS2:
        return DCS_UCS2, [units]
    parts = []
    i = 0
    while i < len(units):
        end = min(i + 2 * PART_UCS2, len(units))
        if end < len(units) and 0xD8 <= units[end - 2] <= 0xDB:
            end -= 2  # a high surrogate stays with its low one
        parts.append(units[i:end])
        i = end
    return DCS_UCS2, parts


def encode_submit(number: str, text: str, *, ref: int = 0, status_report: bool = False,
                  validity: int | None = VALIDITY_24H, max_parts: int = MAX_PARTS) -> list[SubmitPart]:
    """SMS-SUBMIT PDUs for ``text`` to ``number`` (TS 23.040 9.2.2.2), concatenated with
    reference ``ref`` (0..255) when it needs more than one part. Raises ValueError for a bad
    number or a text needing more than ``max_parts`` parts."""
    da = encode_address(number)
    dcs, parts = split_text(text)
    if len(parts) > min(max_parts, MAX_PARTS):
        raise TooLong(f"the text needs {len(parts)} SMS parts, more than the {max_parts} allowed")
    out = []
    for seq, body in enumerate(parts, 1):
        udh = b"" if len(parts) == 1 else bytes([5, 0x00, 3, ref & 0xFF, len(parts), seq])
        first = 0x01  # TP-MTI = SMS-SUBMIT
        if validity is not None:
            first |= 0x10  # TP-VPF = relative
        if status_report:
            first |= 0x20  # TP-SRR
        if udh:
            first |= 0x40  # TP-UDHI
        if dcs == DCS_GSM7:
            assert isinstance(body, list)
            fill = (7 - (len(udh) * 8) % 7) % 7 if udh else 0
            udh_septets = (len(udh) * 8 + fill) // 7
            udl = udh_septets + len(body)
            ud = udh + pack7(body, fill)
        else:
            assert isinstance(body, bytes)
            udl = len(udh) + len(body)
            ud = udh + body
        tpdu = bytes([first, 0x00]) + da + bytes([0x00, dcs])
        if validity is not None:
            tpdu += bytes([validity])
        tpdu += bytes([udl]) + ud
        out.append(SubmitPart(b"\x00" + tpdu, len(tpdu)))
    return out


# --------------------------------------------------------------------------- incoming

@dataclass(frozen=True)
class Concat:
    ref: int
    total: int
    seq: int


@dataclass(frozen=True)
class Deliver:
    sender: str
    text: str
    timestamp: dt.datetime | None
    concat: Concat | None
    smsc: str = ""


@dataclass(frozen=True)
class StatusReport:
    mr: int  # the TP-MR that +CMGS returned for the part
    recipient: str
    status: int  # TP-ST (TS 23.040 9.2.3.15)
    discharged: dt.datetime | None

    @property
    def delivered(self) -> bool:
        return self.status < 0x20

    @property
    def final(self) -> bool:
        """False while the service centre still tries (0x20..0x3F)."""
        return not 0x20 <= self.status < 0x40


def _alphabet(dcs: int) -> str:
    """TS 23.038 section 4: 'gsm7', '8bit' or 'ucs2'; compressed or reserved groups refused."""
    group = dcs >> 4
    if group <= 0x07:  # general data coding (00xx) and automatic deletion (01xx)
        if dcs & 0x20:
            raise PduError("TP-DCS", f"0x{dcs:02X}: compressed text is not supported")
        alpha = (dcs >> 2) & 0x03
        return ("gsm7", "8bit", "ucs2")[alpha] if alpha != 3 else _reserved(dcs)
    if group in (0x0C, 0x0D):
        return "gsm7"
    if group == 0x0E:
        return "ucs2"
    if group == 0x0F:
        return "8bit" if dcs & 0x04 else "gsm7"
    return _reserved(dcs)


def _reserved(dcs: int) -> str:
    raise PduError("TP-DCS", f"0x{dcs:02X} is a reserved coding group")


def _user_data(r: _Reader, dcs: int, udhi: bool) -> tuple[str, Concat | None]:
    udl = r.octet("TP-UDL")
    alpha = _alphabet(dcs)
    data = r.rest()
    if alpha != "gsm7" and len(data) != udl:
        raise PduError("TP-UDL", f"says {udl} octets, {len(data)} follow")
    if alpha == "gsm7" and len(data) != (udl * 7 + 7) // 8:
        raise PduError("TP-UDL", f"says {udl} septets ({(udl * 7 + 7) // 8} octets), {len(data)} follow")
    concat = None
    hlen = 0
    if udhi:
        if not data:
            raise PduError("TP-UDH", "TP-UDHI is set but there is no user data")
        hlen = data[0] + 1
        if hlen > len(data):
            raise PduError("TP-UDH", f"header length {data[0]} runs past the user data")
        concat = _concat(data[1:hlen])
    if alpha == "gsm7":
        fill = (7 - (hlen * 8) % 7) % 7 if hlen else 0
        skip = (hlen * 8 + fill) // 7
        if skip > udl:
            raise PduError("TP-UDH", "header longer than the user data")
        sept = unpack7(data[hlen:], udl - skip, fill)
        return gsm7_text(sept), concat
    body = data[hlen:]
    if alpha == "ucs2":
        if len(body) % 2:
            raise PduError("TP-UD", f"UCS-2 text of odd length {len(body)}")
        try:
            return body.decode("utf-16-be"), concat
        except UnicodeDecodeError as e:
            raise PduError("TP-UD", f"bad UCS-2 at octet {e.start}: a lone surrogate") from None
    return body.hex(), concat  # 8-bit data is no text: keep it readable as hex


def _concat(ies: bytes) -> Concat | None:
    i = 0
    found = None
    while i < len(ies):
        if i + 2 > len(ies):
            raise PduError("TP-UDH", f"information element at {i} is cut short")
        iei, ln = ies[i], ies[i + 1]
        val = ies[i + 2:i + 2 + ln]
        if len(val) != ln:
            raise PduError("TP-UDH", f"information element 0x{iei:02X} runs past the header")
        if iei == 0x00 and ln == 3:
            found = Concat(val[0], val[1], val[2])
        elif iei == 0x08 and ln == 4:
            found = Concat(int.from_bytes(val[:2], "big"), val[2], val[3])
        i += 2 + ln
    if found is not None and not (1 <= found.seq <= found.total):
        raise PduError("TP-UDH", f"part {found.seq} of {found.total}")
    return found


def decode_incoming(pdu: bytes, tpdu_len: int | None = None) -> Deliver | StatusReport:
    """An SMS-DELIVER or SMS-STATUS-REPORT as +CMGR/+CMGL/+CDS give it: SC address first
    (TS 27.005 3.1). Some modems leave the SC address out of +CDS; ``tpdu_len``, the
    <length> the modem announced, tells: a PDU of exactly that many octets has none."""
    r = _Reader(pdu)
    smsc = "" if tpdu_len is not None and len(pdu) == tpdu_len else _address(r, "SC address", sc=True)
    first = r.octet("first octet")
    mti = first & 0x03
    if mti == 0x00:
        sender = _address(r, "TP-OA")
        r.octet("TP-PID")
        dcs = r.octet("TP-DCS")
        scts = _timestamp(r.take(7, "TP-SCTS"))
        text, concat = _user_data(r, dcs, bool(first & 0x40))
        return Deliver(sender, text, scts, concat, smsc)
    if mti == 0x02:
        mr = r.octet("TP-MR")
        recipient = _address(r, "TP-RA")
        r.take(7, "TP-SCTS")
        discharged = _timestamp(r.take(7, "TP-DT"))
        status = r.octet("TP-ST")
        return StatusReport(mr, recipient, status, discharged)
    raise PduError("TP-MTI", f"message type {mti} is neither SMS-DELIVER nor SMS-STATUS-REPORT")


def decode_hex(text: str) -> bytes:
    t = text.strip()
    if len(t) % 2:
        raise PduError("PDU", f"odd number of hex digits ({len(t)})")
    try:
        return bytes.fromhex(t)
    except ValueError:
        raise PduError("PDU", "not hexadecimal") from None
