"""The modem simulator's own SMS PDU code (TS 23.040 / 23.038), apart from safegw's.

It reads SMS-SUBMIT strictly (``read_submit`` raises ``PduReject`` saying what is wrong)
and writes SMS-DELIVER (long ones with the 16-bit reference IEI 08, so the gateway's
reading of both references is exercised) and SMS-STATUS-REPORT. Bit packing is done on
strings of bits, unlike the gateway's integer arithmetic, so one cannot hide the other's
mistake.
"""

from __future__ import annotations

import time
from typing import Any

# TS 23.038 6.2.1 default alphabet and 6.2.1.1 extension table, as code point lists
_BASIC = [
    "@", "£", "$", "¥", "è", "é", "ù", "ì", "ò", "Ç", "\n", "Ø", "ø", "\r", "Å", "å",
    "Δ", "_", "Φ", "Γ", "Λ", "Ω", "Π", "Ψ", "Σ", "Θ", "Ξ", None, "Æ", "æ", "ß", "É",
    *" !\"#¤%&'()*+,-./0123456789:;<=>?",
    "¡", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ", "Ä", "Ö", "Ñ", "Ü", "§",
    "¿", *"abcdefghijklmnopqrstuvwxyz", "ä", "ö", "ñ", "ü", "à",
]
_EXT = {10: "\f", 20: "^", 40: "{", 41: "}", 47: "\\", 60: "[", 61: "~", 62: "]", 64: "|", 101: "€"}
_REV = {c: i for i, c in enumerate(_BASIC) if c is not None}
_REV_EXT = {c: i for i, c in _EXT.items()}


class PduReject(ValueError):
    pass


def _bcd(digits: str) -> bytes:
    d = digits + ("F" if len(digits) % 2 else "")
    return bytes.fromhex("".join(d[i + 1] + d[i] for i in range(0, len(d), 2)))


def _addr(number: str, *, smsc: bool = False) -> bytes:
    intl = number.startswith("+")
    digits = number.lstrip("+")
    body = bytes([0x91 if intl else 0x81]) + _bcd(digits)
    return bytes([len(body) if smsc else len(digits)]) + body


def _septets(text: str) -> list[int] | None:
    out: list[int] = []
    for c in text:
        if c in _REV:
            out.append(_REV[c])
        elif c in _REV_EXT:
            out += [27, _REV_EXT[c]]
        else:
            return None
    return out


def _pack(septets: list[int], skip_bits: int) -> bytes:
    bits = "".join(format(s, "07b")[::-1] for s in septets)  # each septet, LSB first
    bits = "0" * skip_bits + bits
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i:i + 8][::-1], 2) for i in range(0, len(bits), 8))


def _unpack(data: bytes, n: int, skip_bits: int) -> list[int]:
    bits = "".join(format(b, "08b")[::-1] for b in data)[skip_bits:]
    return [int(bits[7 * i:7 * i + 7][::-1], 2) for i in range(n)]


def _stamp(t: float) -> bytes:
    """TP-SCTS for local time t, zone +08 (China Standard Time)."""
    tm = time.gmtime(t + 8 * 3600)
    fields = [tm.tm_year % 100, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, 32]  # 32 quarters
    return bytes(((v % 10) << 4) | (v // 10) for v in fields)


def deliver_pdus(smsc: str, sender: str, text: str, ref: int, t: float) -> list[bytes]:
    """SMS-DELIVER PDUs (SC address first) for an incoming text; long ones with IEI 08."""
    sep = _septets(text)
    if sep is not None:
        chunks: list[Any] = [sep] if len(sep) <= 160 else [sep[i:i + 152] for i in range(0, len(sep), 152)]
        dcs = 0x00
    else:
        units = text.encode("utf-16-be")
        chunks = [units] if len(units) <= 140 else [units[i:i + 132] for i in range(0, len(units), 132)]
        dcs = 0x08
    out = []
    for n, chunk in enumerate(chunks, 1):
        udh = b"" if len(chunks) == 1 else bytes([6, 0x08, 4, ref >> 8, ref & 0xFF, len(chunks), n])
        first = 0x04 | (0x40 if udh else 0)  # SMS-DELIVER, TP-MMS: no more messages
        if dcs == 0x00:
            skip = (7 - len(udh) * 8 % 7) % 7 if udh else 0
            ud = _ud7(udh, chunk)
            udl = (len(udh) * 8 + skip) // 7 + len(chunk)
        else:
            ud = udh + chunk
            udl = len(ud)
        tpdu = bytes([first]) + _addr(sender) + bytes([0x00, dcs]) + _stamp(t) + bytes([udl]) + ud
        out.append(_addr(smsc, smsc=True) + tpdu)
    return out


def _ud7(udh: bytes, septets: list[int]) -> bytes:
    if not udh:
        return _pack(septets, 0)
    skip = (7 - len(udh) * 8 % 7) % 7
    packed = _pack(septets, len(udh) * 8 + skip)
    return udh + packed[len(udh):]


def status_report_pdu(smsc: str, mr: int, recipient: str, status: int, t: float) -> bytes:
    """SMS-STATUS-REPORT (TS 23.040 9.2.2.3), SC address first."""
    tpdu = bytes([0x06, mr]) + _addr(recipient) + _stamp(t) + _stamp(t) + bytes([status])
    return _addr(smsc, smsc=True) + tpdu


def read_submit(data: bytes, tpdu_len: int) -> dict[str, Any]:
    """An SMS-SUBMIT as the network would take it; PduReject says what is wrong."""
    if not data:
        raise PduReject("empty PDU")
    sca = data[0]
    if sca > 11:
        raise PduReject(f"SC address length {sca} > 11")
    tpdu = data[1 + sca:]
    if len(tpdu) != tpdu_len:
        raise PduReject(f"AT+CMGS={tpdu_len} but the TPDU has {len(tpdu)} octets")
    p = 0

    def take(n: int, what: str) -> bytes:
        nonlocal p
        if p + n > len(tpdu):
            raise PduReject(f"{what} missing (TPDU ends at octet {len(tpdu)})")
        b = tpdu[p:p + n]
        p += n
        return b

    fo = take(1, "first octet")[0]
    if fo & 0x03 != 0x01:
        raise PduReject(f"TP-MTI {fo & 3} is not SMS-SUBMIT")
    mr = take(1, "TP-MR")[0]
    ndig = take(1, "TP-DA length")[0]
    if not 1 <= ndig <= 20:
        raise PduReject(f"TP-DA of {ndig} digits")
    toa = take(1, "TP-DA type")[0]
    if not toa & 0x80 or (toa >> 4) & 7 not in (0, 1, 2):
        raise PduReject(f"TP-DA type of address 0x{toa:02X}")
    raw = take((ndig + 1) // 2, "TP-DA digits").hex().upper()
    swapped = "".join(raw[i + 1] + raw[i] for i in range(0, len(raw), 2))
    digits = swapped[:ndig]
    if not digits.isdigit() or (ndig % 2 and swapped[-1] != "F"):
        raise PduReject(f"TP-DA digits {swapped!r}")
    number = ("+" if (toa >> 4) & 7 == 1 else "") + digits
    pid = take(1, "TP-PID")[0]
    if pid != 0x00:
        raise PduReject(f"TP-PID 0x{pid:02X} (a plain SMS has 00)")
    dcs = take(1, "TP-DCS")[0]
    if dcs not in (0x00, 0x04, 0x08):
        raise PduReject(f"TP-DCS 0x{dcs:02X} not GSM 7-bit, 8-bit or UCS-2")
    vpf = (fo >> 3) & 3
    take({0: 0, 2: 1, 1: 7, 3: 7}[vpf], "TP-VP")
    udl = take(1, "TP-UDL")[0]
    ud = tpdu[p:]
    udhi = bool(fo & 0x40)
    if dcs == 0x00:
        if udl > 160 or len(ud) != (udl * 7 + 7) // 8:
            raise PduReject(f"TP-UDL {udl} septets but {len(ud)} octets of user data")
    elif udl > 140 or len(ud) != udl:
        raise PduReject(f"TP-UDL {udl} octets but {len(ud)} octets of user data")
    concat = None
    hdr = 0
    if udhi:
        if not ud or ud[0] + 1 > len(ud):
            raise PduReject("TP-UDH longer than the user data")
        hdr = ud[0] + 1
        ies = ud[1:hdr]
        i = 0
        while i < len(ies):
            if i + 2 > len(ies) or i + 2 + ies[i + 1] > len(ies):
                raise PduReject("TP-UDH information element cut short")
            iei, ln, val = ies[i], ies[i + 1], ies[i + 2:i + 2 + ies[i + 1]]
            if iei == 0x00 and ln == 3:
                concat = {"ref": val[0], "total": val[1], "seq": val[2]}
            elif iei == 0x08 and ln == 4:
                concat = {"ref": val[0] << 8 | val[1], "total": val[2], "seq": val[3]}
            elif iei in (0x00, 0x08):
                raise PduReject(f"concatenation element 0x{iei:02X} of length {ln}")
            i += 2 + ln
        if concat is not None and not 1 <= concat["seq"] <= concat["total"]:
            raise PduReject(f"part {concat['seq']} of {concat['total']}")
    if dcs == 0x00:
        skip = (7 - hdr * 8 % 7) % 7 if hdr else 0
        n = udl - (hdr * 8 + skip) // 7
        if n < 0:
            raise PduReject("TP-UDH longer than TP-UDL")
        sept = _unpack(ud[hdr:], n, skip)
        text, esc = [], False
        for s in sept:
            if esc:
                text.append(_EXT.get(s, " "))
                esc = False
            elif s == 27:
                esc = True
            else:
                text.append(_BASIC[s] or "")
        body = "".join(text)
    elif dcs == 0x08:
        b = ud[hdr:]
        if len(b) % 2:
            raise PduReject(f"UCS-2 user data of odd length {len(b)}")
        try:
            body = b.decode("utf-16-be")
        except UnicodeDecodeError:
            raise PduReject("UCS-2 user data is not valid UTF-16 (a lone surrogate)") from None
    else:
        body = ud[hdr:].hex()
    return {"number": number, "mr_field": mr, "dcs": dcs, "srr": bool(fo & 0x20), "concat": concat,
            "text": body, "vpf": vpf}
