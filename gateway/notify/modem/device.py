"""The modem: its state (SIM, PIN, registration, signal), SMS out and in, voice calls.

A supervisor task opens the AT port, initializes the modem and re-reads its state every
``check_interval``; a port that vanishes is reopened with backoff. Nothing here raises
for a delivery failure: sends return a :class:`SendResult` whose ``detail`` says what the
modem said, and the state is in :meth:`Modem.stats` for /status and /metrics.

A wrong PIN is tried once: a few wrong tries (three on the SIMs seen in practice; the
count is the card's, not confirmed here from ETSI TS 102 221) block the SIM until its PUK
is entered (``+CPIN: SIM PUK``, TS 27.007 8.3), which needs a person on site.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from pathlib import Path
from typing import Any

from gateway.core.aio import wait_event, within
from gateway.core.config_modem import ModemChannelSettings
from gateway.core.secrets import SecretFileError, read_secret
from gateway.notify.base import SendResult
from gateway.notify.modem.at import AtPort, CommandError, CommandTimeout, ModemError, PortGone
from gateway.notify.modem.inbox import Inbox
from gateway.notify.modem.pdu import TooLong, encode_submit

log = logging.getLogger(__name__)

QUICK = 10.0  # seconds: a status query never needs the full command timeout
BACKOFF_MAX = 30.0

#: TS 27.007 7.2 <stat> of +CREG / +CEREG
REG_STATES = {0: "not_registered", 1: "home", 2: "searching", 3: "denied", 4: "unknown", 5: "roaming",
              6: "home_sms_only", 7: "roaming_sms_only"}
REGISTERED = {"home", "roaming", "home_sms_only", "roaming_sms_only"}
#: TS 27.005 3.2.5 <err> of +CMS ERROR: (name, worth retrying later)
CMS_ERRORS = {
    300: ("ME failure", True), 301: ("SMS service of ME reserved", False),
    302: ("operation not allowed", False), 303: ("operation not supported", False),
    304: ("invalid PDU mode parameter", False),
    305: ("invalid text mode parameter", False), 310: ("SIM not inserted", True),
    311: ("SIM PIN required", False), 312: ("PH-SIM PIN required", False), 313: ("SIM failure", True),
    314: ("SIM busy", True), 315: ("SIM wrong", False), 316: ("SIM PUK required", False),
    320: ("memory failure", True), 322: ("memory full", True), 330: ("SMSC address unknown", False),
    331: ("no network service", True), 332: ("network timeout", True), 500: ("unknown error", True),
}
#: TS 27.007 9.2.1 <err> of +CME ERROR: the ones about the SIM
CME_SIM = {10: "no_sim", 11: "pin_required", 12: "puk_required", 13: "sim_failure", 14: "sim_busy",
           15: "sim_wrong", 16: "pin_rejected"}


class Modem:
    """One modem on one AT port, shared by the channels configured on that port."""

    def __init__(self, settings: ModemChannelSettings, base_dir: Path):
        self.s = settings
        self.base_dir = base_dir
        self.at = AtPort(settings.port, settings.baud, self._urc, self._port_lost)
        self.lock = asyncio.Lock()  # one multi-command sequence at a time (SMS parts, a read)
        self.call_lock = asyncio.Lock()
        self.state = "starting"  # ready, no_port, no_sim, pin_required, pin_rejected, ... error
        self.sim = "unknown"
        self.registration = "unknown"
        self.rssi: int | None = None
        self.last_error = ""
        self.info: dict[str, str] = {}
        self.reports = "off"  # delivery reports: on, off (not asked for), unsupported (modem refused)
        self.counts = {"sms_sent": 0, "sms_parts_sent": 0, "sms_failed": 0, "sms_truncated": 0,
                       "calls": 0, "calls_answered": 0, "calls_failed": 0, "delivered": 0,
                       "delivery_failed": 0, "inbound": 0, "inbound_bad": 0, "port_opens": 0,
                       "port_lost": 0}
        self._ref = 0
        self.inbox = Inbox(settings.port, self.lock, self._cmd, self.counts)
        self._lost = asyncio.Event()
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._users = 0
        self._pin_tried = False
        self._pin_rejected = False
        self._sim_error = ""  # why the PIN was not entered or was refused
        self._call_end: asyncio.Event = asyncio.Event()
        self._call_result = ""

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._users += 1
        if self._tasks:
            return
        self._stop.clear()
        self._tasks = [asyncio.create_task(self._supervise(), name=f"modem[{self.s.port}]"),
                       asyncio.create_task(self.inbox.run(), name=f"modem-in[{self.s.port}]")]

    async def stop(self) -> None:
        self._users -= 1
        if self._users > 0:
            return
        self._stop.set()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        await self.at.close()

    async def wait_ready(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Until the modem is ready (tests, ``notify test``); False after ``timeout``."""
        return await wait_event(self._ready, timeout)

    async def _supervise(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            if not self.at.is_open:
                try:
                    await self.at.open()
                except PortGone as e:
                    self._set_state("no_port", str(e))
                    await wait_event(self._stop, backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                self.counts["port_opens"] += 1
                self._lost.clear()
                try:
                    await self._init()
                except ModemError as e:
                    state = "no_port" if not self.at.is_open else (
                        "not_answering" if isinstance(e, CommandTimeout) else "error")
                    self._set_state(state, f"initialization: {e}")
                    await self.at.close()
                    await wait_event(self._stop, backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                backoff = 1.0
            else:
                try:
                    await self.refresh()
                except CommandTimeout as e:
                    # a hung modem: say so, and open the port afresh (a USB modem often
                    # answers again after its port is reopened)
                    self._set_state("not_answering", str(e))
                    await self.at.close()
                    continue
                except ModemError as e:
                    self._set_state("error", f"status check: {e}")
            await self.inbox.expire_long()
            lost = asyncio.ensure_future(self._lost.wait())
            stop = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({lost, stop}, timeout=self.s.check_interval,
                               return_when=asyncio.FIRST_COMPLETED)
            lost.cancel()
            stop.cancel()

    def _port_lost(self, why: str) -> None:
        self.counts["port_lost"] += 1
        self._set_state("no_port", f"port lost: {why}")
        self._lost.set()

    def _set_state(self, state: str, error: str = "") -> None:
        if state != self.state:
            if state == "ready":
                log.info("modem %s: ready (%s, %s)", self.s.port, self.registration, self.signal_text())
            else:
                log.error("modem %s: %s%s", self.s.port, state, f": {error}" if error else "")
        self.state = state
        if state == "ready":
            self._ready.set()
        else:
            self._ready.clear()
        if error:
            self.last_error = error

    async def _cmd(self, cmd: str, timeout: float = QUICK) -> list[str]:  # noqa: ASYNC109
        return await self.at.command(cmd, min(timeout, self.s.timeout))

    async def _init(self) -> None:
        async with self.lock:
            await self._cmd("ATE0")
            await self._cmd("AT+CMEE=1")  # numeric +CME ERROR codes (TS 27.007 9.1)
            for key, cmd in (("manufacturer", "AT+CGMI"), ("model", "AT+CGMM")):
                with contextlib.suppress(CommandError):
                    lines = await self._cmd(cmd)
                    self.info[key] = lines[0][:64] if lines else ""
            await self._check_sim(unlock=True)
            if self.sim == "ready":
                await self._sms_setup()
        await self.refresh()

    async def _sms_setup(self) -> None:
        """PDU mode (TS 27.005 3.2.3) and new-message indications (3.4.1): new messages as
        +CMTI indexes, status reports as +CDS. A modem that refuses <ds>=1 gets none, and
        the SMS then ask for no report; one that refuses <mode>=2 gets <mode>=1."""
        await self._cmd("AT+CMGF=0")
        wanted = [1, 0] if self.s.delivery_reports else [0]
        for ds in wanted:
            for mode in (2, 1):
                try:
                    await self._cmd(f"AT+CNMI={mode},1,0,{ds},0")
                except CommandError:
                    continue
                self.reports = "on" if ds else ("unsupported" if self.s.delivery_reports else "off")
                return
        # no indications at all: replies are still found by the listing at every status check
        self.reports = "unsupported" if self.s.delivery_reports else "off"
        log.warning("modem %s: refuses every AT+CNMI setting; replies are read every %g s",
                    self.s.port, self.s.check_interval)

    async def _check_sim(self, *, unlock: bool) -> None:
        try:
            lines = await self._cmd("AT+CPIN?")
        except CommandError as e:
            if e.kind == "+CME ERROR" and e.code in CME_SIM:
                self.sim = CME_SIM[e.code]
                return
            raise
        status = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("+CPIN:")), "")
        if status == "READY":
            self.sim = "ready"
        elif status == "SIM PIN":
            self.sim = "pin_rejected" if self._pin_rejected else "pin_required"
            if unlock and self.s.pin_file is not None and not self._pin_tried:
                await self._enter_pin()
        elif status == "SIM PUK":
            self.sim = "puk_required"
        else:
            self.sim = f"locked ({status[:32]})"

    async def _enter_pin(self) -> None:
        assert self.s.pin_file is not None
        try:
            pin = read_secret(self.s.pin_file, self.base_dir)
        except SecretFileError as e:
            self._sim_error = str(e)
            return
        if not (pin.isdigit() and 4 <= len(pin) <= 8):
            self._sim_error = f"the PIN in {self.s.pin_file} is not 4 to 8 digits"
            return
        self._pin_tried = True  # once per start: a second wrong try moves towards the PUK
        try:
            await self._cmd(f'AT+CPIN="{pin}"')
        except CommandError as e:
            self.sim = "pin_rejected"
            self._pin_rejected = True
            self._sim_error = f"the SIM refused the PIN from {self.s.pin_file} ({e.result}); not tried again"
            return
        # the SIM needs a moment after the PIN before it answers READY
        for _ in range(20):
            await self._check_sim(unlock=False)
            if self.sim == "ready":
                return
            await asyncio.sleep(0.25)

    async def refresh(self) -> None:
        """Read SIM, registration and signal (TS 27.007 8.3, 7.2, 8.5)."""
        async with self.lock:
            if self.sim != "ready":
                await self._check_sim(unlock=True)
                if self.sim == "ready":
                    await self._sms_setup()
            regs = []
            for cmd in ("AT+CREG?", "AT+CEREG?"):
                try:
                    lines = await self._cmd(cmd)
                except CommandError:
                    continue  # a 2G-only modem has no +CEREG
                for ln in lines:
                    m = re.match(r"^\+C?E?REG:\s*\d+\s*,\s*(\d+)", ln)
                    if m:
                        regs.append(REG_STATES.get(int(m.group(1)), "unknown"))
            self.registration = next((r for r in regs if r in REGISTERED), regs[0] if regs else "unknown")
            try:
                lines = await self._cmd("AT+CSQ")
                m = next((m for ln in lines if (m := re.match(r"^\+CSQ:\s*(\d+)\s*,", ln))), None)
                self.rssi = int(m.group(1)) if m else None
            except CommandError:
                self.rssi = None
        if self.sim == "ready":
            # what arrived while nobody listened, or whose +CMTI was lost (port reopened)
            self.inbox.queue(("list", None))
        if self.sim != "ready":
            why = f"SIM: {self.sim}" + (f"; {self._sim_error}" if self._sim_error else "")
            self._set_state(self.sim, why)
        elif self.registration not in REGISTERED:
            self._set_state("not_registered", f"network registration: {self.registration}")
        else:
            self._set_state("ready")

    def signal_dbm(self) -> int | None:
        """TS 27.007 8.5: <rssi> 0 = -113 dBm or less, 2 dBm a step, 31 = -51 dBm or more, 99 unknown."""
        if self.rssi is None or not 0 <= self.rssi <= 31:
            return None
        return -113 + 2 * self.rssi

    def signal_text(self) -> str:
        dbm = self.signal_dbm()
        return "signal unknown" if dbm is None else f"signal {dbm} dBm"

    # ------------------------------------------------------------------ sending
    def _unusable(self) -> SendResult | None:
        if not self.at.is_open:
            return SendResult(False, f"modem port {self.s.port} unavailable: {self.last_error}", retry=True)
        if self.sim != "ready":
            retry = self.sim not in ("pin_rejected", "puk_required", "pin_required")
            return SendResult(False, f"modem SIM not usable: {self.sim}", retry=retry)
        return None

    async def send_sms(self, key: str, number: str, text: str, max_parts: int) -> SendResult:
        t0 = time.monotonic()
        bad = self._unusable()
        if bad is not None:
            self.counts["sms_failed"] += 1
            return bad
        truncated = False
        self._ref = (self._ref + 1) % 256
        parts = None
        while parts is None:
            try:
                parts = encode_submit(number, text, ref=self._ref, status_report=self.reports == "on",
                                      max_parts=max_parts)
            except TooLong:
                text = text[:max(1, len(text) * 9 // 10 - 1)] + "…"  # shorten until it fits
                truncated = True
            except ValueError as e:
                self.counts["sms_failed"] += 1
                return SendResult(False, f"cannot encode the SMS: {e}")
        mrs: list[int] = []
        async with self.lock:
            for i, part in enumerate(parts, 1):
                try:
                    lines = await self.at.command(f"AT+CMGS={part.tpdu_len}", self.s.timeout, pdu=part.hex)
                except CommandTimeout as e:
                    self.counts["sms_failed"] += 1
                    return SendResult(False, f"part {i}/{len(parts)}: {e}", time.monotonic() - t0,
                                      retry=True, ambiguous=e.sent or i > 1)
                except CommandError as e:
                    self.counts["sms_failed"] += 1
                    name, retry = ("", True)
                    if e.kind == "+CMS ERROR":
                        name, retry = CMS_ERRORS.get(e.code or -1, ("", True))
                    why = f"{e.result} ({name})" if name else e.result
                    return SendResult(False, f"part {i}/{len(parts)}: the modem answered {why}",
                                      time.monotonic() - t0, retry=retry)
                except PortGone as e:
                    self.counts["sms_failed"] += 1
                    return SendResult(False, f"part {i}/{len(parts)}: {e}", time.monotonic() - t0,
                                      retry=True, ambiguous=e.sent or i > 1)
                mr = next((int(m.group(1)) for ln in lines if (m := re.match(r"^\+CMGS:\s*(\d+)", ln))), -1)
                mrs.append(mr)
        self.counts["sms_sent"] += 1
        self.counts["sms_parts_sent"] += len(parts)
        if truncated:
            self.counts["sms_truncated"] += 1
        if self.reports == "on":
            self.inbox.track(key, mrs)
        detail = f"{len(parts)} part{'s' if len(parts) > 1 else ''}, mr={','.join(map(str, mrs))}"
        if truncated:
            detail += f", cut to {max_parts} parts"
        return SendResult(True, detail, time.monotonic() - t0)

    # ------------------------------------------------------------------ voice
    async def call(self, number: str, ring: float) -> SendResult:
        """Dial, let it ring for ``ring`` seconds (less if answered or refused), hang up."""
        t0 = time.monotonic()
        bad = self._unusable()
        if bad is not None:
            self.counts["calls_failed"] += 1
            return bad
        if not re.fullmatch(r"\+?[0-9]{1,20}", number):
            self.counts["calls_failed"] += 1
            return SendResult(False, f"{number!r} is not a phone number")
        async with self.call_lock:
            self.counts["calls"] += 1
            self._call_end = asyncio.Event()
            self._call_result = ""
            alerted = answered = False
            try:
                async with self.lock:
                    await self.at.command(f"ATD{number};", self.s.timeout)  # V.250 6.3.1; ';' = voice
                deadline = t0 + ring
                while not self._call_end.is_set():  # the call's state once a second, and once at the end
                    async with self.lock:
                        lines = await self._cmd("AT+CLCC")  # TS 27.007 7.18: <stat> 0 active, 3 alerting
                    states = [int(m.group(1)) for ln in lines
                              if (m := re.match(r"^\+CLCC:\s*\d+\s*,\s*0\s*,\s*(\d+)", ln))]
                    alerted = alerted or 3 in states or 0 in states
                    answered = 0 in states
                    left = deadline - time.monotonic()
                    if answered or left <= 0 or (not states and (alerted or time.monotonic() - t0 > 5)):
                        break  # answered, rang long enough, or the call is gone
                    await wait_event(self._call_end, min(1.0, left))
            except CommandError as e:
                self._call_result = e.result
            except (CommandTimeout, PortGone) as e:
                self.counts["calls_failed"] += 1
                await self._hang_up()
                return SendResult(False, f"call: {e}", time.monotonic() - t0, retry=True)
            except asyncio.CancelledError:
                # the caller's own deadline: still hang up, or the phone rings on
                with contextlib.suppress(TimeoutError):
                    await within(self._hang_up(), 3.0)
                raise
            await self._hang_up()
            took = time.monotonic() - t0
            if answered:
                self.counts["calls_answered"] += 1
                return SendResult(True, f"answered after {took:.0f} s", took)
            if self._call_result == "BUSY":  # in another call, or declined: not reached
                self.counts["calls_failed"] += 1
                return SendResult(False, "call: BUSY", took, retry=True)
            if alerted:
                return SendResult(True, f"rang {took:.0f} s, not answered", took)
            self.counts["calls_failed"] += 1
            why = self._call_result or "no ringing"
            return SendResult(False, f"call did not ring: {why}", took, retry=True)

    async def _hang_up(self) -> None:
        with contextlib.suppress(ModemError):
            async with self.lock:
                await self._cmd("ATH")  # V.250 6.3.6

    # ------------------------------------------------------------------ incoming
    def _urc(self, line: str, pdu: str | None) -> None:
        if line.startswith("+CMTI:"):  # +CMTI: "SM",3 (TS 27.005 3.4.1)
            m = re.search(r",\s*(\d+)\s*$", line)
            if m:
                self.inbox.queue(("read", int(m.group(1))))
        elif line.startswith("+CDS:") and pdu is not None:  # +CDS: <length> then the PDU line
            m = re.match(r"^\+CDS:\s*(\d+)", line)
            self.inbox.queue(("report", (pdu, int(m.group(1)) if m else None)))
        elif line in ("NO CARRIER", "BUSY", "NO ANSWER"):
            self._call_result = line
            self._call_end.set()

    # ------------------------------------------------------------------ stats
    def stats(self) -> dict[str, Any]:
        dbm = self.signal_dbm()
        return {"state": self.state, "port": self.s.port, "sim": self.sim, "registration": self.registration,
                "delivery_reports": self.reports,
                "signal_dbm": dbm if dbm is not None else "unknown", "csq": self.rssi if self.rssi is not None
                else "unknown", "last_error": self.last_error, **self.counts,
                "inbound_partial": self.inbox.partial, **{f"modem_{k}": v for k, v in self.info.items()}}
