"""A 4G modem on a pty pair: the AT commands safegw uses for SMS and voice, strictly.

``socat pty,raw,echo=0,link=<link>.sim pty,raw,echo=0,link=<link>``: the simulator
answers on ``<link>.sim``; the gateway (or a person with ``picocom``/``screen``) opens
``<link>`` as it would the modem's AT port /dev/ttyUSB2::

    - name: modem
      protocol: modem
      link: /tmp/safegw-demo/ttyModem
      pin: "1234"              # the SIM asks for this PIN (omit: no PIN)
      delivery_reports: true   # +CDS after each part sent with TP-SRR
      answer: ring             # a call: ring (never answered), answer, busy, unreachable

Commands (3GPP TS 27.007 / 27.005, ITU-T V.250): AT, ATE0/1, AT+CMEE, AT+CGMI, AT+CGMM,
AT+CPIN? / AT+CPIN="...", AT+CMGF, AT+CNMI, AT+CSQ, AT+CREG?, AT+CEREG?, AT+CMGS (PDU
mode only), AT+CMGR, AT+CMGD, AT+CMGL, ATD<number>;, AT+CLCC, ATH. Anything else: ERROR.

It is strict about SMS-SUBMIT (TS 23.040 9.2.2.2): a PDU whose length disagrees with
AT+CMGS, whose TP fields are not those of an SMS-SUBMIT, whose user data length
disagrees with the octets sent, or whose UCS-2 text is not valid UTF-16 is answered
``+CMS ERROR: 304`` and noted in ``rejected``. Every accepted PDU is kept in ``received``
(hex, with the simulator's own reading of it).

Faults (control lines or scenarios, by device name): ``error`` (every command answers
ERROR), ``nosim`` (the SIM is gone: +CME ERROR: 10), ``silent`` (no answers), ``stall``
(takes an SMS's PDU, sends it, but never answers the +CMGS),
``disconnect`` (the pty pair disappears, as an unplugged USB modem, and comes back when
the fault ends). Device control lines (``python -m simulators --control``)::

    {"device": "modem", "inject": {"from": "+8613800138000", "text": "确认 A7"}}
    {"device": "modem", "received": true}      # -> {"ok": true, "received": [...], "calls": [...]}
    {"device": "modem", "answer": "answer"}    # how the next calls go
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from gateway.core.units import Duration
from simulators.config import SimDeviceBase
from simulators.modem_pdu import PduReject, deliver_pdus, read_submit, status_report_pdu
from simulators.pty import close_fd, open_pty_pair, stop_socat, write_fd
from simulators.scenario import Plant

log = logging.getLogger(__name__)

class ModemSim(SimDeviceBase):
    server: ClassVar[str] = "simulators.modem:ModemServer"
    protocol: Literal["modem"]
    link: Path = Field(description="the gateway's end of the pty pair (a symlink socat keeps)")
    pin: str | None = Field(default=None, pattern=r"^[0-9]{4,8}$",
                            description="the SIM's PIN; none: unlocked")
    pin_tries: int = Field(default=3, ge=1, le=3)
    registration: int = Field(default=1, ge=0, le=5,
                              description="+CREG <stat>: 1 home, 5 roaming, 2 searching")
    rssi: int = Field(default=20, ge=0, le=99, description="+CSQ <rssi>")
    delivery_reports: bool = True
    cnmi_reports: bool = Field(default=True, description="AT+CNMI accepts <ds>=1 (+CDS); false: ERROR")
    report_status: int = Field(default=0, ge=0, le=255, description="TP-ST of the delivery reports")
    report_delay: Duration = 0.05
    answer: Literal["ring", "answer", "busy", "unreachable"] = "ring"
    smsc: str = Field(default="+8613800100500", pattern=r"^\+?[0-9]{3,20}$")
    storage: int = Field(default=30, ge=1, le=255, description="SMS slots on the SIM")
    replug_delay: Duration = Field(default=0.5, description="pause before a vanished pty pair comes back")


class ModemServer:
    """The modem (see module doc). In tests it can be used in-process too."""

    def __init__(self, model: ModemSim, plant: Plant | None = None):
        self.model = model
        self.name = model.name
        self.plant = plant
        self.link = Path(model.link)
        self.sim_link = Path(str(model.link) + ".sim")
        self.proc: asyncio.subprocess.Process | None = None
        self.fd: int | None = None
        self.rx = b""
        self.echo = True
        self.cmee = 0
        self.cmgf = 0
        self.cnmi_ds = 0
        self.sim = "SIM PIN" if model.pin else "READY"
        self.tries = model.pin_tries
        self.answer = model.answer
        self.fault: str | None = None
        self.received: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []
        self.commands: list[str] = []
        self.store: dict[int, tuple[int, str]] = {}  # index -> (stat, pdu hex)
        self.calls: list[dict[str, Any]] = []
        self.mr = 0
        self.inject_ref = 0x1200
        self._prompt_len: int | None = None
        self._call: dict[str, Any] | None = None
        self._stopping = False
        self._unplugged = False
        self._timers: list[asyncio.TimerHandle] = []

    # ------------------------------------------------------------------ the pty pair
    async def start(self) -> dict[str, Any]:
        await self._plug()
        return {"protocol": "modem", "port": str(self.link), "sim_port": str(self.sim_link),
                "socat_pid": self.proc.pid if self.proc else None}

    async def _plug(self) -> None:
        self.proc, self.fd = await open_pty_pair(self.link, self.sim_link)
        self.rx = b""
        self._unplugged = False
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    async def unplug(self) -> None:
        close_fd(self.fd)
        self.fd = None
        self._unplugged = True
        await stop_socat(self.proc)
        for p in (self.link, self.sim_link):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    async def replug(self) -> None:
        self.echo, self.cmee, self.cnmi_ds = True, 0, 0  # a modem that lost power starts afresh
        await self._plug()

    async def update(self, t: float, values: dict[str, float]) -> None:
        f = self.plant.device_fault(self.name, t) if self.plant is not None else None
        await self.set_fault(f.kind if f is not None else None)

    async def set_fault(self, kind: str | None) -> None:
        self.fault = kind
        if kind == "disconnect" and not self._unplugged:
            await self.unplug()
        elif kind != "disconnect" and self._unplugged and not self._stopping:
            try:
                await self.replug()
            except (OSError, RuntimeError) as e:
                log.warning("modem sim %s: cannot re-create the pty pair: %s", self.name, e)

    async def stop(self) -> None:
        self._stopping = True
        for h in self._timers:
            h.cancel()
        await self.unplug()

    # ------------------------------------------------------------------ control
    def control(self, msg: dict[str, Any]) -> dict[str, Any]:
        if "inject" in msg:
            inj = msg["inject"]
            idx = self.inject(str(inj["from"]), str(inj["text"]))
            return {"ok": True, "indexes": idx}
        if msg.get("received"):
            return {"ok": True, "received": self.received, "rejected": self.rejected, "calls": self.calls}
        if "answer" in msg:
            if msg["answer"] not in ("ring", "answer", "busy", "unreachable"):
                return {"error": f"answer: {msg['answer']!r}"}
            self.answer = msg["answer"]
            return {"ok": True}
        return {"error": f"unknown modem control: {sorted(msg)}"}

    def inject(self, sender: str, text: str) -> list[int]:
        """An SMS arrives: stored on the SIM, announced with +CMTI (TS 27.005 3.4.1)."""
        self.inject_ref = (self.inject_ref + 1) & 0xFFFF
        idx = []
        for pdu in deliver_pdus(self.model.smsc, sender, text, self.inject_ref, time.time()):
            free = next((i for i in range(self.model.storage) if i not in self.store), None)
            if free is None:
                log.warning("modem sim %s: SIM storage full, message dropped", self.name)
                break
            self.store[free] = (0, pdu.hex().upper())
            idx.append(free)
            self._urc(f'+CMTI: "SM",{free}')
        return idx

    # ------------------------------------------------------------------ the line
    def _send(self, text: str) -> None:
        err = write_fd(self.fd, text.encode("ascii"))
        if err is not None:
            log.info("modem sim %s: write failed: %s", self.name, err)

    def _urc(self, line: str) -> None:
        if self.fault not in ("silent", "disconnect"):
            self._send(f"\r\n{line}\r\n")

    def _readable(self) -> None:
        if self.fd is None:
            return
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            close_fd(self.fd)
            self.fd = None
            return
        if self.fault in ("silent", "disconnect"):
            return
        if self.echo:
            self._send(data.decode("ascii", "replace"))
        self.rx = (self.rx + data)[-8192:]
        while True:
            if self._prompt_len is not None:
                m = re.search(rb"[\x1a\x1b]", self.rx)
                if m is None:
                    return
                body, end, self.rx = self.rx[:m.start()], self.rx[m.start():m.start() + 1], self.rx[m.end():]
                n, self._prompt_len = self._prompt_len, None
                if end == b"\x1b":
                    self._send("\r\nOK\r\n")  # cancelled
                else:
                    reply = self._cmgs(body.decode("ascii", "replace").strip(), n)
                    if self.fault != "stall":
                        self._final(reply)
                continue
            i = self.rx.find(b"\r")
            if i < 0:
                return
            line, self.rx = self.rx[:i].decode("ascii", "replace").strip(), self.rx[i + 1:]
            if line:
                self.commands.append(line)
                answer = self._command(line)
                if answer is not None:
                    self._final(answer)

    def _final(self, lines: list[str]) -> None:
        """Information text as one block, then the result code (V.250 5.7.1; TS 27.005 shows
        +CMGR's header and PDU on consecutive lines)."""
        *info, final = lines
        block = "\r\n" + "\r\n".join(info) + "\r\n" if info else ""
        self._send(f"{block}\r\n{final}\r\n")

    def _err(self, code: int, kind: str = "CME") -> list[str]:
        return [f"+{kind} ERROR: {code}"] if self.cmee or kind == "CMS" else ["ERROR"]

    def _command(self, line: str) -> list[str] | None:
        if self.fault == "error":
            return ["ERROR"]
        up = line.upper()
        if not up.startswith("AT"):
            return ["ERROR"]
        cmd = up[2:]
        if cmd == "":
            return ["OK"]
        if cmd in ("E0", "E1", "E"):
            self.echo = cmd == "E1"
            return ["OK"]
        if m := re.fullmatch(r"\+CMEE=([012])", cmd):
            self.cmee = int(m.group(1))
            return ["OK"]
        if cmd == "+CGMI":
            return ["safegw", "OK"]
        if cmd == "+CGMM":
            return ["modem-simulator", "OK"]
        sim = "ABSENT" if self.fault == "nosim" else self.sim
        if cmd == "+CPIN?":
            if sim == "ABSENT":
                return self._err(10)
            return [f"+CPIN: {sim}", "OK"]
        if m := re.fullmatch(r'\+CPIN="?([0-9]+)"?', cmd):
            if sim != "SIM PIN":
                return self._err(3)  # operation not allowed
            if m.group(1) == self.model.pin:
                self.sim, self.tries = "READY", self.model.pin_tries
                return ["OK"]
            self.tries -= 1
            if self.tries <= 0:
                self.sim = "SIM PUK"
            return self._err(16)
        if m := re.fullmatch(r"\+CMGF=([01])", cmd):
            self.cmgf = int(m.group(1))
            return ["OK"]
        if m := re.fullmatch(r"\+CNMI=(\d),(\d),(\d),(\d),(\d)", cmd):
            if int(m.group(4)) and not self.model.cnmi_reports:
                return self._err(303, "CMS")  # operation not supported
            self.cnmi_ds = int(m.group(4))
            return ["OK"]
        if cmd == "+CSQ":
            return [f"+CSQ: {self.model.rssi},99", "OK"]
        if cmd in ("+CREG?", "+CEREG?"):
            stat = self.model.registration if sim == "READY" else 0
            return [f"{cmd[:-1]}: 0,{stat}", "OK"]
        if sim != "READY" and (cmd.startswith(("+CMG", "D")) or cmd == "+CLCC"):
            return self._err({"ABSENT": 310, "SIM PIN": 311}.get(sim, 316), "CMS")
        if m := re.fullmatch(r"\+CMGS=(\d+)", cmd):
            if self.cmgf != 0:
                return self._err(302, "CMS")  # text mode: not offered by this modem
            n = int(m.group(1))
            if not 7 <= n <= 164:
                return self._err(304, "CMS")
            self._prompt_len = n
            self._send("\r\n> ")
            return None
        if m := re.fullmatch(r"\+CMGR=(\d+)", cmd):
            i = int(m.group(1))
            if i >= self.model.storage:
                return self._err(321, "CMS")
            if i not in self.store:
                return ["OK"]
            stat, pdu = self.store[i]
            self.store[i] = (1, pdu)  # now read
            return [f"+CMGR: {stat},,{len(pdu) // 2 - 1 - int(pdu[:2], 16)}", pdu, "OK"]
        if m := re.fullmatch(r"\+CMGD=(\d+)(?:,\d)?", cmd):
            self.store.pop(int(m.group(1)), None)
            return ["OK"]
        if m := re.fullmatch(r"\+CMGL=([0-4])", cmd):
            want = int(m.group(1))
            out = []
            for i, (stat, pdu) in sorted(self.store.items()):
                if want == 4 or want == stat:
                    out += [f"+CMGL: {i},{stat},,{len(pdu) // 2 - 1 - int(pdu[:2], 16)}", pdu]
            return [*out, "OK"]
        if m := re.fullmatch(r"D(\+?[0-9]{1,20});", cmd):
            return self._dial(m.group(1))
        if cmd == "+CLCC":
            c = self._call
            if c is None:
                return ["OK"]
            toa = 145 if c["number"].startswith("+") else 129
            return [f'+CLCC: 1,0,{c["stat"]},0,0,"{c["number"]}",{toa}', "OK"]
        if cmd in ("H", "H0", "+CHUP"):
            if self._call is not None:
                self._call["hung_up"] = True
                self._call = None
            return ["OK"]
        return ["ERROR"]

    # ------------------------------------------------------------------ SMS and calls
    def _cmgs(self, hexpdu: str, n: int) -> list[str]:
        try:
            if not re.fullmatch(r"(?:[0-9A-Fa-f]{2})+", hexpdu):
                raise PduReject("not an even number of hex digits")
            info = read_submit(bytes.fromhex(hexpdu), n)
        except PduReject as e:
            self.rejected.append({"pdu": hexpdu[:400], "why": str(e)})
            log.info("modem sim %s: PDU rejected: %s", self.name, e)
            return self._err(304, "CMS")
        if self.model.registration not in (1, 5):
            return self._err(331, "CMS")
        self.mr = (self.mr + 1) % 256
        mr = self.mr
        self.received.append({"pdu": hexpdu.upper(), "mr": mr, **info})
        if info["srr"] and self.model.delivery_reports and self.cnmi_ds == 1:
            rep = status_report_pdu(self.model.smsc, mr, info["number"], self.model.report_status,
                                    time.time())
            self._later(self.model.report_delay, self._urc,
                        f"+CDS: {len(rep) - 1 - rep[0]}\r\n{rep.hex().upper()}")
        return [f"+CMGS: {mr}", "OK"]

    def _later(self, delay: float, fn: Any, *args: Any) -> None:
        """Something the modem does on its own a little later; stop() cancels what is pending
        (the last 256: anything older has long fired, and firing after stop writes nowhere)."""
        self._timers = [*self._timers[-255:], asyncio.get_running_loop().call_later(delay, fn, *args)]

    def _dial(self, number: str) -> list[str]:
        if self._call is not None:
            return ["ERROR"]
        call: dict[str, Any] = {"number": number, "stat": 2, "hung_up": False, "answered": False}
        self.calls.append(call)
        if self.answer == "unreachable":
            call["stat"] = -1
            return ["NO CARRIER"]
        self._call = call

        def alerting() -> None:
            if self._call is call:
                call["stat"] = 3
                if self.answer == "answer":
                    self._later(0.2, answered)

        def answered() -> None:
            if self._call is call:
                call["stat"], call["answered"] = 0, True

        def busy() -> None:
            if self._call is call:
                self._call = None
                self._urc("BUSY")

        # busy: the far end is in another call, so it never rings
        self._later(0.1, busy if self.answer == "busy" else alerting)
        return ["OK"]
