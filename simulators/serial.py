"""Serial instrument simulators: ASCII/binary instruments talking on a pty pair.

``socat pty,raw,echo=0,link=<link>.sim pty,raw,echo=0,link=<link>``: the simulator
writes to ``<link>.sim``, the gateway opens ``<link>`` as it would ``/dev/ttyUSB0``.
An instrument either streams a frame every ``interval`` or answers ``request``::

    - name: noise-1
      protocol: serial
      link: /tmp/safegw-demo/noise1
      interval: 1s
      template: "LAeq={0:05.1f},LCpk={1:05.1f}"    # str.format, one argument per signal
      signals: [N-01.LAeq, N-01.LCpk]
      checksum: xor
      checksum_separator: "*"
      garbage_rate: 0.02                            # 2% of frames preceded by line noise

Frames are built with the same rules the gateway parses them with
(``drivers.serial.frames``): [start] body [separator checksum] terminator, or a
fixed ``length`` (body padded with spaces).

Faults (scenarios or control lines, by device name): ``silent`` (no frames, no
answers), ``garbage`` (noise instead of frames), ``checksum`` (wrong checksums),
``partial`` (frames cut in half), ``disconnect`` (the pty pair disappears, as an
unplugged USB adapter, and comes back when the fault ends). ``garbage_rate`` and
``checksum_error_rate`` add background noise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from gateway.core.units import Duration
from simulators.config import SimDeviceBase
from simulators.pty import close_fd, open_pty_pair, stop_socat, write_fd
from simulators.scenario import Plant
from simulators.wire import checksum_field, control_bytes

log = logging.getLogger(__name__)


class SerialSim(SimDeviceBase):
    server: ClassVar[str] = "simulators.serial:SerialServer"
    protocol: Literal["serial"]
    link: Path = Field(description="the gateway's end of the pty pair (a symlink socat keeps)")
    signals: list[str] = Field(default_factory=list, description="values for the template, in order")
    template: str = Field(description="frame body, str.format with one positional argument per signal")
    interval: Duration = Field(default=1.0, description="streaming: one frame every interval")
    request: str | None = Field(default=None, description="polled: answer when this arrives")
    answer_delay: Duration = 0.0
    terminator: str | None = "\r\n"
    length: int | None = Field(default=None, ge=1)
    start: str | None = None
    checksum: Literal["none", "sum8", "xor", "crc16-modbus"] = "none"
    checksum_format: Literal["hex", "binary"] = "hex"
    checksum_from: int = Field(default=0, ge=0)
    checksum_separator: str | None = None
    encoding: str = "ascii"
    garbage_rate: float = Field(default=0.0, ge=0, le=1, description="share of frames preceded by noise")
    checksum_error_rate: float = Field(default=0.0, ge=0, le=1, description="share of frames, bad checksum")
    replug_delay: Duration = Field(default=0.5, description="pause before a vanished pty pair comes back")

    @model_validator(mode="after")
    def _check(self) -> SerialSim:
        try:
            self.template.format(*([0.0] * len(self.signals)))
        except (IndexError, KeyError, ValueError) as e:
            raise ValueError(f"template does not format with {len(self.signals)} signal(s): {e}") from None
        if (self.terminator is None) == (self.length is None):
            raise ValueError("give exactly one of terminator or length")
        return self


def build_frame(m: SerialSim, values: list[float], *, bad_checksum: bool = False) -> bytes:
    """One frame as the instrument sends it."""
    body = m.template.format(*values).encode(m.encoding)
    start = control_bytes(m.start) if m.start else b""
    sep = control_bytes(m.checksum_separator) if m.checksum_separator else b""
    covered = (start + body)[m.checksum_from:]
    ck = checksum_field(m.checksum, m.checksum_format, covered)
    if bad_checksum and ck:
        ck = bytes(ck[:-1]) + (b"0" if ck[-1:] != b"0" else b"1") if m.checksum_format == "hex" \
            else bytes(ck[:-1]) + bytes([(ck[-1] + 1) & 0xFF])
    frame = start + body + (sep + ck if ck else b"")
    if m.length is not None:
        if len(frame) < m.length:
            # pad inside the body so the checksum still sits at the end
            pad = b" " * (m.length - len(frame))
            body = body + pad
            covered = (start + body)[m.checksum_from:]
            ck2 = checksum_field(m.checksum, m.checksum_format, covered)
            if bad_checksum and ck2:
                ck2 = ck
            frame = start + body + (sep + ck2 if ck2 else b"")
        return frame[:m.length]
    return frame + control_bytes(m.terminator or "")


class SerialServer:
    """One instrument on a pty pair (see module doc)."""

    def __init__(self, model: SerialSim, plant: Plant):
        self.model = model
        self.name = model.name
        self.plant = plant
        self.link = Path(model.link)
        self.sim_link = Path(str(model.link) + ".sim")
        self.proc: asyncio.subprocess.Process | None = None
        self.fd: int | None = None
        self.rx = b""
        self.request = control_bytes(model.request) if model.request is not None else None
        self.values: list[float] = [0.0] * len(model.signals)
        self.fault: str | None = None
        self.rng = random.Random(f"{plant.seed}:{model.name}")
        self.frames_sent = 0
        self.replugs = 0
        self._stream: asyncio.Task[None] | None = None
        self._stopping = False
        self._unplugged = False
        self._cut = False

    # ------------------------------------------------------------------ the pty pair
    async def _plug(self) -> None:
        self.proc, fd = await open_pty_pair(self.link, self.sim_link)
        loop = asyncio.get_running_loop()
        self.fd = fd
        self.rx = b""
        loop.add_reader(fd, self._readable)
        self._unplugged = False

    async def unplug(self) -> None:
        """Pull the adapter: the pty pair and its links disappear."""
        self._close_fd()
        self._unplugged = True
        await stop_socat(self.proc)
        for p in (self.link, self.sim_link):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    async def replug(self) -> None:
        await self._plug()
        self.replugs += 1

    def _close_fd(self) -> None:
        close_fd(self.fd)
        self.fd = None

    # ------------------------------------------------------------------ talking
    def _readable(self) -> None:
        if self.fd is None:
            return
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            self._close_fd()
            return
        if not data or self.request is None:
            return
        self.rx = (self.rx + data)[-4096:]
        while self.request in self.rx:
            _, _, self.rx = self.rx.partition(self.request)
            if self.fault in ("silent", "disconnect"):
                continue
            if self.model.answer_delay:
                asyncio.get_running_loop().call_later(self.model.answer_delay, self._send_one)
            else:
                self._send_one()

    def _send_one(self) -> None:
        m = self.model
        fault = self.fault
        if fault in ("silent", "disconnect") or self.fd is None:
            return
        if fault == "garbage":
            self._write(self._noise(m.length or 24) + (control_bytes(m.terminator) if m.terminator else b""))
            return
        rate = m.checksum_error_rate
        bad_ck = fault == "checksum" or (rate > 0 and self.rng.random() < rate)
        frame = build_frame(m, self.values, bad_checksum=bad_ck)
        if m.garbage_rate > 0 and self.rng.random() < m.garbage_rate:
            # line noise on its own "line", so the next frame is clean
            self._write(self._noise(8) + (control_bytes(m.terminator) if m.terminator else b""))
        if fault == "partial":
            # every other frame cut in half, as an instrument that resets mid-line
            self._cut = not self._cut
            if self._cut:
                frame = frame[:max(1, len(frame) // 2)]
        self._write(frame)
        self.frames_sent += 1

    def _noise(self, n: int) -> bytes:
        # no terminator bytes inside: noise must not cut real frames
        term = set(control_bytes(self.model.terminator)) if self.model.terminator else set()
        return bytes(b for b in self.rng.randbytes(n * 2) if b not in term)[:n]

    def _write(self, data: bytes) -> None:
        err = write_fd(self.fd, data)
        if err is not None:
            log.debug("%s: write failed: %s", self.name, err)

    async def _streamer(self) -> None:
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while not self._stopping:
            self._send_one()
            next_t += self.model.interval
            now = loop.time()
            if next_t < now:
                next_t = now + self.model.interval
            await asyncio.sleep(next_t - now)

    # ------------------------------------------------------------------ runner contract
    async def start(self) -> dict[str, Any]:
        await self._plug()
        if self.request is None:
            self._stream = asyncio.create_task(self._streamer(), name=f"serial-sim[{self.name}]")
        return self.endpoint()

    def endpoint(self) -> dict[str, Any]:
        return {"protocol": "serial", "port": str(self.link), "sim_port": str(self.sim_link),
                "socat_pid": self.proc.pid if self.proc else None,
                "mode": "stream" if self.request is None else "poll"}

    async def update(self, t: float, values: dict[str, float]) -> None:
        self.values = [values[s] for s in self.model.signals]
        f = self.plant.device_fault(self.name, t)
        self.fault = f.kind if f is not None else None
        if self.fault == "disconnect" and not self._unplugged:
            log.info("serial sim %s: adapter unplugged", self.name)
            await self.unplug()
        elif self.fault != "disconnect" and self._unplugged and not self._stopping:
            log.info("serial sim %s: adapter plugged back", self.name)
            try:
                await self.replug()
            except (OSError, RuntimeError) as e:
                log.warning("serial sim %s: cannot re-create the pty pair: %s", self.name, e)

    async def stop(self) -> None:
        self._stopping = True
        if self._stream is not None:
            self._stream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stream
        await self.unplug()
