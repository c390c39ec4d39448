"""The modem's AT command line: one command at a time, each bounded in time, URCs on the side.

The port is opened with pyserial (exclusive, so a second program on the same AT port is
refused rather than garbling both) and read without threads: the event loop watches its
file descriptor. Lines end in CR LF (ITU-T V.250 5.7.1 with ATS3/ATS4 at their defaults).
A command's answer is its information lines and one final result code; lines that arrive
while no command waits, and the unsolicited codes that can arrive at any time (``+CMTI``,
``+CDS`` with its PDU line, ``RING``, ...), go to ``on_urc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Callable
from typing import Any

import serial

from gateway.core.aio import within

log = logging.getLogger(__name__)

#: final result codes (V.250 5.7.1 and TS 27.007 9.2, TS 27.005 3.2.5)
FINAL_OK = ("OK",)
FINAL_FAIL = ("ERROR", "NO CARRIER", "BUSY", "NO ANSWER", "NO DIALTONE")
#: codes that arrive on their own even while a command waits (TS 27.005 3.4.1, 27.007 6.2)
URC_PREFIXES = ("+CMTI:", "+CDS:", "+CDSI:", "RING", "+CRING:", "+CLIP:")
MAX_LINE = 1024  # a PDU line is at most 2 x (12 + 164) hex digits; anything longer is noise
MAX_INFO_LINES = 256  # +CMGL of a full SIM: 2 lines a message


class ModemError(Exception):
    """Base of what the AT line raises."""


class PortGone(ModemError):
    """The port is missing or vanished (modem unplugged, USB reset); ``sent``: it went
    while waiting for the answer to an SMS whose PDU had been written."""

    sent = False


class CommandTimeout(ModemError):
    """No final result code within the command's time; ``sent``: an SMS PDU had gone out."""

    def __init__(self, message: str, *, sent: bool = False):
        super().__init__(message)
        self.sent = sent


class CommandError(ModemError):
    """The modem answered ERROR, +CME ERROR, +CMS ERROR, BUSY, NO CARRIER, ..."""

    def __init__(self, command: str, result: str):
        self.command = command
        self.result = result
        self.code: int | None = None
        self.kind = result
        for prefix in ("+CME ERROR:", "+CMS ERROR:"):
            if result.startswith(prefix):
                self.kind = prefix[:-1]
                with contextlib.suppress(ValueError):
                    self.code = int(result[len(prefix):].strip())
        super().__init__(f"{command}: {result}")


def _shown(cmd: str) -> str:
    """The command as errors and logs may show it: never the PIN."""
    return re.sub(r"^(AT\+CPIN=).*$", r'\1"****"', cmd, flags=re.IGNORECASE)


UrcHandler = Callable[[str, str | None], None]  # (line, the PDU line of a +CDS or None)


class AtPort:
    """One AT port. ``command`` serializes itself; callers need no lock of their own for
    single commands (the modem layer holds one around multi-command sequences)."""

    def __init__(self, port: str, baud: int, on_urc: UrcHandler, on_lost: Callable[[str], None]):
        self.port = port
        self.baud = baud
        self.on_urc = on_urc
        self.on_lost = on_lost
        self._ser: serial.Serial | None = None
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buf = b""
        self._lock = asyncio.Lock()
        self._pending: asyncio.Future[str] | None = None  # resolves to the final result code
        self._info: list[str] = []
        self._echo: str | None = None
        self._prompt: asyncio.Future[None] | None = None
        self._cds_header: str | None = None

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    async def open(self) -> None:
        await self.close()
        try:
            ser = serial.serial_for_url(self.port, do_not_open=True, baudrate=self.baud, timeout=0,
                                        write_timeout=2.0)
            if hasattr(ser, "exclusive"):
                ser.exclusive = True
            ser.open()
            fd = ser.fileno()
        except (serial.SerialException, OSError, ValueError, AttributeError) as e:
            raise PortGone(f"modem port {self.port}: {e}") from e
        with contextlib.suppress(serial.SerialException, OSError):
            ser.reset_input_buffer()
        self._ser, self._fd, self._buf = ser, fd, b""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._readable)

    async def close(self) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
        self._fd = None
        if self._ser is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                self._ser.close()
            self._ser = None
        self._fail_pending(PortGone(f"modem port {self.port} closed"))

    def _fail_pending(self, exc: Exception) -> None:
        for fut in (self._pending, self._prompt):
            if fut is not None and not fut.done():
                fut.set_exception(exc)

    def _lost(self, why: str) -> None:
        if self._fd is None:
            return
        log.error("modem port %s lost: %s", self.port, why)
        assert self._loop is not None
        self._loop.remove_reader(self._fd)
        self._fd = None
        if self._ser is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                self._ser.close()
            self._ser = None
        self._fail_pending(PortGone(f"modem port {self.port} lost: {why}"))
        self.on_lost(why)

    # ------------------------------------------------------------------ reading
    def _readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError as e:  # EIO: the USB device or the pty went away
            self._lost(e.strerror or str(e))
            return
        if not data:
            self._lost("end of file")
            return
        self._buf += data
        if self._prompt is not None and not self._prompt.done() and b"> " in self._buf:
            # the SMS prompt (TS 27.005 3.5.1) comes without a line end
            before, _, self._buf = self._buf.partition(b"> ")
            self._prompt.set_result(None)
            self._buf = before + self._buf
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                if len(self._buf) > MAX_LINE:
                    log.warning("modem %s: %d bytes without a line end dropped", self.port, len(self._buf))
                    self._buf = b""
                return
            raw, self._buf = self._buf[:i], self._buf[i + 1:]
            line = raw[:MAX_LINE].decode("ascii", "replace").strip()
            if line:
                self._line(line)

    def _line(self, line: str) -> None:
        if self._cds_header is not None:  # the PDU line after a +CDS: header
            header, self._cds_header = self._cds_header, None
            self.on_urc(header, line)
            return
        if line.startswith(URC_PREFIXES):
            if line.startswith("+CDS:"):
                self._cds_header = line
            else:
                self.on_urc(line, None)
            return
        fut = self._pending
        if fut is None or fut.done():
            self.on_urc(line, None)  # NO CARRIER after a call, or a late answer
            return
        if self._echo is not None and line == self._echo:
            self._echo = None  # the command echoed before ATE0 took effect
            return
        if line in FINAL_OK or line in FINAL_FAIL or line.startswith(("+CME ERROR:", "+CMS ERROR:")):
            fut.set_result(line)
        elif len(self._info) < MAX_INFO_LINES:
            self._info.append(line)

    # ------------------------------------------------------------------ commands
    async def command(self, cmd: str, timeout: float, *, pdu: str | None = None) -> list[str]:  # noqa: ASYNC109
        """Send ``cmd``; return its information lines once OK came. With ``pdu``, wait for
        the ``> `` prompt, then send the PDU and Ctrl-Z (AT+CMGS in PDU mode)."""
        shown = _shown(cmd)
        async with self._lock:
            if self._ser is None or self._fd is None:
                raise PortGone(f"modem port {self.port} is not open")
            loop = asyncio.get_running_loop()
            self._info = []
            self._echo = cmd
            self._pending = loop.create_future()
            self._prompt = loop.create_future() if pdu is not None else None
            try:
                self._write(cmd.encode("ascii") + b"\r")
                if pdu is not None:
                    prompt = self._prompt
                    assert prompt is not None
                    futs: set[asyncio.Future[Any]] = {prompt, self._pending}
                    done, _ = await asyncio.wait(futs, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                    if self._pending.done():  # ERROR instead of a prompt, or the port lost
                        prompt.cancel()
                        raise CommandError(shown, self._pending.result())
                    if not done:
                        prompt.cancel()
                        self._write(b"\x1b")  # leave the prompt: ESC cancels (TS 27.005 3.5.1)
                        raise CommandTimeout(f"{shown}: no '> ' prompt within {timeout:g} s")
                    prompt.result()
                    self._write(pdu.encode("ascii") + b"\x1a")
                try:
                    result = await within(self._pending, timeout)
                except PortGone as e:
                    e.sent = pdu is not None
                    raise
                except TimeoutError:
                    raise CommandTimeout(f"{shown}: no answer within {timeout:g} s",
                                         sent=pdu is not None) from None
                if result not in FINAL_OK:
                    raise CommandError(shown, result)
                return list(self._info)
            except asyncio.CancelledError:
                if self._prompt is not None and not self._prompt.done() and self._ser is not None:
                    with contextlib.suppress(PortGone):
                        self._write(b"\x1b")  # leave the '> ' prompt: the next command is no PDU
                raise
            finally:
                for fut in (self._pending, self._prompt):  # an exception nobody awaited: mark it seen
                    if fut is not None and fut.done() and not fut.cancelled():
                        fut.exception()
                self._pending = None
                self._prompt = None
                self._echo = None

    def _write(self, data: bytes) -> None:
        if self._ser is None:
            raise PortGone(f"modem port {self.port} is not open")
        try:
            self._ser.write(data)
        except (serial.SerialException, OSError) as e:
            self._lost(str(e))
            raise PortGone(f"modem port {self.port}: write failed: {e}") from e
