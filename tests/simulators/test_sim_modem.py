"""The modem simulator (simulators/modem.py): strict about PDUs, right about what it sends.

Talked to as a person would, with raw AT lines on the pty (no safegw code on this side).
Accepted PDUs are published examples:
- "hellohello" SMS-SUBMIT, 0011000B916407281553F80000AA0AE8329BFD4697D9EC37 — "SMS messages and
  the PDU format" (dreamfabric.com, mirrored at
  http://www.turbocontrol.com/CoolStuff/SMS%20messages%20and%20the%20PDU%20format.htm);
- UCS-2 "hello", 0001000B813124819396F300080A00680065006C006C006F — Neoway N11 AT manual
  (https://www.easymanua.ls/neoway/n11-v2/manual?p=131).
What the simulator sends (SMS-DELIVER) is read with smspdudecoder (PyPI), not with its own code.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import serial
from smspdudecoder.easy import read_incoming_sms

from simulators.modem import ModemServer, ModemSim
from tests.fixtures.helpers import async_wait_until, wait_until
from tests.fixtures.sims import SimProcess

HELLO = "0011000B916407281553F80000AA0AE8329BFD4697D9EC37"
NEOWAY = "0001000B813124819396F300080A00680065006C006C006F"


class Terminal:
    """The gateway's end of the pty, read by the event loop: what a terminal program shows."""

    def __init__(self, link: Path):
        self.fd = os.open(link, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.seen = ""
        asyncio.get_running_loop().add_reader(self.fd, self._read)

    def _read(self) -> None:
        try:
            self.seen += os.read(self.fd, 4096).decode("ascii", "replace")
        except BlockingIOError:
            pass

    async def send(self, text: str, until: str, timeout: float = 5.0) -> str:  # noqa: ASYNC109
        start = len(self.seen)
        os.write(self.fd, text.encode("ascii"))
        await async_wait_until(lambda: until in self.seen[start:], timeout, what=repr(until))
        return self.seen[start:]

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[tuple[ModemServer, Terminal]]:
    srv = ModemServer(ModemSim(name="modem", protocol="modem", link=tmp_path / "tty"))
    await srv.start()
    term = Terminal(tmp_path / "tty")
    await term.send("ATE0\r", "OK")
    await term.send("AT+CMEE=1\r", "OK")
    yield srv, term
    term.close()
    await srv.stop()


async def submit(term: Terminal, pdu: str, length: int | None = None) -> str:
    n = length if length is not None else len(pdu) // 2 - 1 - int(pdu[:2], 16)
    await term.send(f"AT+CMGS={n}\r", "> ")
    out = await term.send(pdu + "\x1a", "\r\n", 5.0)
    await async_wait_until(lambda: re.search(r"(OK|ERROR[^\r]*)\r\n", term.seen[-80:]), 5, what="final")
    return out + term.seen[-80:]


async def test_published_submits_are_accepted(sim: tuple[ModemServer, Terminal]) -> None:
    srv, term = sim
    assert "+CMGS: 1" in await submit(term, HELLO)
    assert "+CMGS: 2" in await submit(term, NEOWAY)
    assert [(r["number"], r["text"], r["dcs"]) for r in srv.received] == \
        [("+46708251358", "hellohello", 0x00), ("13421839693", "hello", 0x08)]


@pytest.mark.parametrize(("pdu", "length", "why"), [
    (HELLO, 22, "AT+CMGS=22 but the TPDU has 23"),  # bad length
    ("0010" + HELLO[4:], None, "not SMS-SUBMIT"),  # TP-MTI 00
    (HELLO.replace("AA0AE8", "AA0BE8"), None, "TP-UDL 11 septets"),  # UDL disagrees
    (NEOWAY[:-2], None, "TP-UDL 10 octets but 9"),  # UCS-2 cut short
    (NEOWAY[:-2].replace("0A0068", "090068"), None, "odd length"),  # UCS-2 of odd length
    (NEOWAY.replace("00680065", "D8000065"), None, "lone surrogate"),  # bad UCS-2
    (HELLO.replace("0000AA", "0024AA"), None, "TP-DCS 0x24"),  # compressed
    (HELLO.replace("0000AA", "4100AA"), None, "TP-PID 0x41"),  # replace short message type 1
    (HELLO[:-1], 23, "hex digits"),  # odd number of hex digits
    ("0051000B916407281553F80008AA0A050003010300" + "00680065", None, "part 0 of 3"),
])
async def test_malformed_pdus_get_cms_error_304(sim: tuple[ModemServer, Terminal], pdu: str,
                                                length: int | None, why: str) -> None:
    srv, term = sim
    if length is None:
        length = len(pdu) // 2 - 1
    out = await submit(term, pdu, length)
    assert "+CMS ERROR: 304" in out
    assert not srv.received and why in srv.rejected[-1]["why"], srv.rejected


async def test_what_it_sends_reads_right_elsewhere(sim: tuple[ModemServer, Terminal]) -> None:
    srv, term = sim
    long = "收到报警，值班员已到储罐区现场，GT-101 读数正在下降，请安全员复核。" * 4
    idx = srv.inject("+8613900139000", long) + srv.inject("10086", "A7K3 ok [yes]!")
    parts = []
    for i in idx:
        out = await term.send(f"AT+CMGR={i}\r", "OK")
        m = re.search(r"\+CMGR: 0,,(\d+)\r\n([0-9A-F]+)\r\n", out)
        assert m, out
        pdu = m.group(2)
        assert int(m.group(1)) == len(pdu) // 2 - 1 - int(pdu[:2], 16)  # TPDU length (TS 27.005 3.4.3)
        parts.append(read_incoming_sms(pdu))
    long_parts = [p for p in parts if p["partial"]]
    assert len(long_parts) == len(idx) - 1 >= 3
    assert {p["partial"]["parts_count"] for p in long_parts} == {len(long_parts)}
    in_order = sorted(long_parts, key=lambda p: p["partial"]["part_number"])
    assert "".join(p["content"] for p in in_order) == long
    # 16 septets fill 14 octets exactly: smspdudecoder reads septets from the octet count,
    # so 7 spare bits would show to it as a trailing '@'
    assert (parts[-1]["sender"], parts[-1]["content"]) == ("10086", "A7K3 ok [yes]!")
    assert "+CMTI: \"SM\"," in term.seen


async def test_no_sim_error_and_pin(tmp_path: Path) -> None:
    srv = ModemServer(ModemSim(name="modem", protocol="modem", link=tmp_path / "tty", pin="1357"))
    await srv.start()
    term = Terminal(tmp_path / "tty")
    try:
        await term.send("AT+CMEE=1\r", "OK")
        assert "+CPIN: SIM PIN" in await term.send("AT+CPIN?\r", "OK")
        assert "+CMS ERROR: 311" in await term.send("AT+CMGS=23\r", "ERROR")  # locked: no SMS
        assert "+CME ERROR: 16" in await term.send('AT+CPIN="0000"\r', "ERROR")
        assert srv.tries == 2
        await term.send('AT+CPIN="1357"\r', "OK")
        assert "+CPIN: READY" in await term.send("AT+CPIN?\r", "OK")
        await srv.set_fault("nosim")
        assert "+CME ERROR: 10" in await term.send("AT+CPIN?\r", "ERROR")
        await srv.set_fault("error")
        assert "ERROR" in await term.send("AT\r", "ERROR")
        await srv.set_fault(None)
        assert "OK" in await term.send("AT\r", "OK")
    finally:
        term.close()
        await srv.stop()


MODEM_SIM = """
tick: 100ms
devices:
  - name: modem
    protocol: modem
    link: "{tmp}/ttyModem"
"""


def test_usable_by_hand(sim_factory: object) -> None:
    """``python -m simulators -c FILE --control``, a terminal on the port, control lines on stdin."""
    proc: SimProcess = sim_factory(MODEM_SIM)  # type: ignore[operator]
    port = proc.endpoints["modem"]["port"]
    with serial.Serial(port, 115200, timeout=0.2) as ser:
        def ask(line: str, until: bytes) -> bytes:
            ser.write(line.encode() + b"\r")
            seen = bytearray()

            def more() -> bool:
                seen.extend(ser.read(256))
                return until in seen

            wait_until(more, 5, what=line)
            return bytes(seen)

        assert b"OK" in ask("ATE0", b"OK")
        assert b"+CSQ: 20,99" in ask("AT+CSQ", b"OK")
        assert proc.control(device="modem", inject={"from": "10086", "text": "确认 A7K3"})["ok"]
        m = re.search(rb"\+CMGR: 0,,\d+\r\n([0-9A-F]+)\r\n", ask("AT+CMGR=0", b"OK"))
        assert m
        pdu = m.group(1).decode()
        assert read_incoming_sms(pdu)["content"] == "确认 A7K3"
        ser.write(f"AT+CMGS={len(HELLO) // 2 - 1}\r".encode())
        wait_until(lambda: b"> " in ser.read(64), 5, what="prompt")
        ser.write(HELLO.encode() + b"\x1a")
        wait_until(lambda: b"OK" in ser.read(64), 5, what="+CMGS")
    got = proc.control(device="modem", received=True)
    assert [r["text"] for r in got["received"]] == ["hellohello"]
    with pytest.raises(RuntimeError, match="no server 'nonesuch'"):
        proc.control(device="nonesuch", received=True)


def test_shipped_example_config_loads() -> None:
    from simulators.config import load

    cfg = load(Path(__file__).resolve().parents[2] / "config" / "sim-modem.yaml")
    (model,) = cfg.device_models
    assert isinstance(model, ModemSim) and model.pin == "1234"
