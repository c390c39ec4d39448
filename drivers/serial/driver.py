"""Serial instrument driver: one port, one instrument, streaming or polled.

The port is opened with pyserial (so settings, locking and URLs behave as plant
engineers know them) and then read without threads: the event loop watches the
file descriptor, so a silent or babbling instrument never blocks its neighbours.

- *Streaming* instruments (no ``frame.request``) talk on their own: every good
  frame becomes samples at once (receive time); a bad frame (checksum, garbage)
  makes every channel bad with its cause until the next good one; no good frame
  for ``timeout`` makes them bad (TIMEOUT, or the cause of the bad frames seen),
  repeated every ``poll`` while it lasts.
- *Polled* instruments get ``frame.request`` each cycle and answer with one or
  more frames, gathered until every channel has a value or ``timeout`` passes.

A port that disappears (USB adapter unplugged, terminal server gone) raises
``DeviceUnavailable``; the gateway retries ``open()`` with backoff until it is back.
Counters for frames, bad frames, partial frames, garbage and silences are in
``driver.info``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections import deque
from typing import Any

import numpy as np
import serial

from drivers.base import DeviceUnavailable, Driver, stamp
from drivers.serial.frames import GOOD, ChannelSpec, FrameParser, FrameSpec, unescape
from gateway.core.aio import within
from gateway.core.batch import Batch, Quality
from gateway.core.channels import ChannelInfo

log = logging.getLogger(__name__)

_READ_CHUNK = 4096
#: a serial device server port: tcp://host:port or socket://host:port (pyserial's name)
_TCP_PORT = re.compile(r"^(?:tcp|socket)://(\[[^\]]+\]|[^:/]+):(\d+)/?$")
_OVERFLOW = b"<overflow>"  # identity-compared marker, never a real frame object


def frame_spec(dev: Any) -> FrameSpec:
    """The pure parser's spec from a SerialDevice config section."""
    f = dev.frame
    chans = [ChannelSpec(group=c.group, pattern=c.pattern,
                         field=tuple(c.field) if c.field is not None else None) for c in dev.channels]
    return FrameSpec(
        terminator=unescape(f.terminator) if f.terminator is not None else None,
        length=f.length,
        start=unescape(f.start) if f.start else None,
        checksum=f.checksum,
        checksum_format=f.checksum_format,
        checksum_from=f.checksum_from,
        checksum_separator=unescape(f.checksum_separator) if f.checksum_separator else None,
        pattern=f.pattern,
        encoding=f.encoding,
        max_length=f.max_length,
        channels=chans,
    )


class SerialDriver(Driver):
    """Base of both flavours; ``SerialDriver(device, channels)`` returns the right one."""

    def __new__(cls, device: Any, channels: list[ChannelInfo]) -> SerialDriver:
        if cls is SerialDriver:
            cls = SerialStreamDriver if device.frame.request is None else SerialPollDriver
        return super().__new__(cls)

    def __init__(self, device: Any, channels: list[ChannelInfo]):
        super().__init__(device, channels)
        # channels follow the device's config order, which is the spec order
        self.spec = frame_spec(device)
        self.parser = FrameParser(self.spec)
        self.framer = self.spec.framer()
        specs = [c.spec for c in channels]
        self.scale = np.array([s.scale for s in specs], dtype=np.float64)
        self.offset = np.array([s.offset for s in specs], dtype=np.float64)
        self.lo = np.array([s.range[0] if s.range else -np.inf for s in specs], dtype=np.float64)
        self.hi = np.array([s.range[1] if s.range else np.inf for s in specs], dtype=np.float64)
        self.request = unescape(device.frame.request) if device.frame.request is not None else None
        self.gap = float(device.frame.gap)
        self._ser: serial.Serial | None = None
        self._tcp: asyncio.Transport | None = None
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # (receive ns, frame); None marks a partial frame, _OVERFLOW a run without terminator
        self._frames: deque[tuple[int, bytes | None]] = deque()
        self._bytes_since_frame = 0
        self._wake = asyncio.Event()
        self._error: BaseException | None = None
        self._gap_timer: asyncio.TimerHandle | None = None
        self._last_byte = 0.0
        self._first_frame = True
        self._bad_logged = False
        self.info.update({
            "port": device.port, "mode": "poll" if self.request is not None else "stream",
            "timestamps": "receive", "opens": 0, "bytes": 0, "frames": 0, "good_frames": 0,
            "checksum_errors": 0, "parse_errors": 0, "partial_frames": 0, "garbage_bytes": 0,
            "overflows": 0, "timeouts": 0, "last_error": None, "last_bad_frame": None,
        })

    # ------------------------------------------------------------------ port
    async def open(self) -> None:
        dev = self.device
        await self.close()
        m = _TCP_PORT.match(dev.port)
        if m is not None:
            await self._open_tcp(m.group(1).strip("[]"), int(m.group(2)))
            return
        try:
            ser = serial.serial_for_url(dev.port, do_not_open=True, baudrate=dev.baudrate,
                                        bytesize=dev.bytesize, parity=dev.parity, stopbits=dev.stopbits,
                                        timeout=0, write_timeout=dev.timeout)
            if hasattr(ser, "exclusive"):
                ser.exclusive = True  # a second program on the port garbles both
            ser.open()
        except (serial.SerialException, OSError, ValueError) as e:
            raise DeviceUnavailable(f"serial port {dev.port}: {e}", Quality.COMMS) from e
        try:
            fd = ser.fileno()
        except (AttributeError, OSError, ValueError) as e:
            ser.close()
            raise DeviceUnavailable(f"serial port {dev.port}: cannot be watched without threads ({e})",
                                    Quality.COMMS) from e
        with _suppress_serial():
            ser.reset_input_buffer()  # stale bytes from before we were listening
        self._ser, self._fd = ser, fd
        self._opened()
        assert self._loop is not None
        self._loop.add_reader(fd, self._readable)

    async def _open_tcp(self, host: str, port: int) -> None:
        """A serial device server (terminal server) in TCP server mode: raw bytes over TCP.

        Baud rate, parity and framing bits are the device server's settings."""
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await within(loop.create_connection(lambda: _TcpFeed(self), host, port),
                                        max(self.device.timeout, 1.0))
        except (OSError, TimeoutError) as e:
            raise DeviceUnavailable(f"serial device server {host}:{port}: {e or type(e).__name__}",
                                    Quality.COMMS) from e
        self._tcp = transport
        self._opened()

    def _opened(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._error = None
        self._frames.clear()
        self.framer.clear()
        self._first_frame = True
        self._wake = asyncio.Event()
        self.info["opens"] += 1
        if self.info["opens"] > 1:
            log.info("serial %s: port %s open again", self.name, self.device.port)

    def _write(self, data: bytes) -> None:
        """Send a request; drop whatever the port holds from before (late answers)."""
        if self._tcp is not None:
            if self._tcp.is_closing():
                raise OSError("connection closed")
            self._tcp.write(data)
            return
        assert self._ser is not None
        self._ser.reset_input_buffer()
        self._ser.write(data)

    async def close(self) -> None:
        if self._gap_timer is not None:
            self._gap_timer.cancel()
            self._gap_timer = None
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
        self._fd = None
        if self._ser is not None:
            with _suppress_serial():
                self._ser.close()
            self._ser = None
        if self._tcp is not None:
            self._tcp.abort()
            self._tcp = None

    def _readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as e:  # EIO: the adapter or the pty went away
            self._lost(e)
            return
        if not data:
            self._lost(OSError("end of file on the port (device disconnected?)"))
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        ts = stamp()
        self.info["bytes"] += len(data)
        framer = self.framer
        before = framer.overflow
        self._bytes_since_frame += len(data)
        for f in framer.feed(data):
            if f:  # blank lines (CR LF pairs, keep-alives) carry nothing
                self._frames.append((ts, f))
        if framer.overflow != before:
            # a run of bytes with no terminator: garbage, and the channels should say so
            self.info["overflows"] += framer.overflow - before
            self._frames.append((ts, _OVERFLOW))
        self.info["garbage_bytes"] = framer.overflow_bytes + self.parser.garbage_bytes
        assert self._loop is not None
        self._last_byte = self._loop.time()
        if framer.pending and self._gap_timer is None:
            self._gap_timer = self._loop.call_later(self.gap, self._gap_check)
        if self._frames:
            self._wake.set()

    def _gap_check(self) -> None:
        """A frame started but its bytes stopped coming: drop it as partial."""
        self._gap_timer = None
        if not self.framer.pending or self._loop is None:
            return
        quiet = self._loop.time() - self._last_byte
        if quiet < self.gap:
            self._gap_timer = self._loop.call_later(self.gap - quiet, self._gap_check)
            return
        tail = self.framer.clear()
        self.info["last_bad_frame"] = _show(tail)
        self._frames.append((stamp(), None))
        self._wake.set()

    def _lost(self, err: BaseException) -> None:
        self._error = err
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None
        self._wake.set()

    def _check_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise DeviceUnavailable(f"serial port {self.device.port}: {err}", Quality.COMMS)

    # ------------------------------------------------------------------ frames → samples
    def _take(self, pos: list[int], ts: list[int], raw: list[float], q: list[int]) -> tuple[int, int, bool]:
        """Parse queued frames into the lists. Returns (last bad cause or 0, good frames, got partial)."""
        bad_cause = 0
        good = 0
        partial = False
        n = len(self.channels)
        frames = self._frames
        info = self.info
        while frames:
            t, frame = frames.popleft()
            if frame is None:
                info["partial_frames"] += 1
                partial = True
                continue
            self._bytes_since_frame = 0
            if frame is _OVERFLOW:
                info["last_error"] = f"no terminator within {self.spec.max_length} bytes"
                bad_cause = int(Quality.PARSE)
                pos.extend(range(n))
                raw.extend([np.nan] * n)
                ts.extend([t] * n)
                q.extend([bad_cause] * n)
                continue
            info["frames"] += 1
            r = self.parser.parse(frame)
            if r.cause == GOOD:
                good += 1
                info["good_frames"] += 1
                self._first_frame = False
                pos.extend(r.positions)
                raw.extend(r.values)
                ts.extend([t] * len(r.positions))
                q.extend([GOOD] * len(r.positions))
                if r.bad:
                    pos.extend(r.bad)
                    raw.extend([np.nan] * len(r.bad))
                    ts.extend([t] * len(r.bad))
                    q.extend([int(Quality.PARSE)] * len(r.bad))
                continue
            if self._first_frame:
                # we started listening mid-frame: the first cut is partial, not a fault
                self._first_frame = False
                info["partial_frames"] += 1
                continue
            if r.cause == Quality.CHECKSUM:
                info["checksum_errors"] += 1
            else:
                info["parse_errors"] += 1
            info["last_bad_frame"] = _show(frame)
            info["last_error"] = r.detail
            bad_cause = r.cause
            if not self._bad_logged:
                self._bad_logged = True
                log.warning("serial %s: bad frame (%s): %s", self.name, r.detail, _show(frame))
            pos.extend(range(n))
            raw.extend([np.nan] * n)
            ts.extend([t] * n)
            q.extend([r.cause] * n)
        self.info["garbage_bytes"] = self.framer.overflow_bytes + self.parser.garbage_bytes
        if good and self._bad_logged and not bad_cause:
            self._bad_logged = False
            log.info("serial %s: good frames again", self.name)
        return bad_cause, good, partial

    def _batch(self, pos: list[int], ts: list[int], raw: list[float], q: list[int]) -> Batch:
        p = np.asarray(pos, dtype=np.intp)
        value = np.asarray(raw, dtype=np.float64) * self.scale[p] + self.offset[p]
        quality = np.asarray(q, dtype=np.uint8)
        out = (quality == GOOD) & ((value < self.lo[p]) | (value > self.hi[p]))
        if out.any():
            quality[out] = Quality.OUT_OF_RANGE
        return Batch(self.indexes[p], np.asarray(ts, dtype=np.int64), value, quality)


class SerialStreamDriver(SerialDriver):
    """An instrument that talks on its own (no request)."""

    streaming = True

    async def stream(self, sink: Any) -> None:
        if self._ser is None and self._tcp is None:
            await self.open()
        loop = asyncio.get_running_loop()
        dev = self.device
        deadline = loop.time() + dev.timeout
        window_cause = 0  # why the frames since the last good one were bad
        while True:
            self._check_error()
            now = loop.time()
            if not self._frames:
                try:
                    await within(self._wake.wait(), max(0.0, deadline - now))
                except TimeoutError:
                    pass
                self._wake.clear()
                self._check_error()
            pos: list[int] = []
            ts: list[int] = []
            raw: list[float] = []
            q: list[int] = []
            bad_cause, good, partial = self._take(pos, ts, raw, q)
            if good:
                deadline = loop.time() + dev.timeout
                window_cause = 0
            if bad_cause:
                window_cause = bad_cause
            elif partial and not good:
                window_cause = window_cause or int(Quality.PARSE)
            if pos:
                sink(self._batch(pos, ts, raw, q))
            if loop.time() >= deadline:
                # nothing good within the timeout: say so, then again every poll period
                cause = window_cause or int(Quality.PARSE if self._bytes_since_frame else Quality.TIMEOUT)
                self._bytes_since_frame = 0
                if cause == Quality.TIMEOUT:
                    self.info["timeouts"] += 1
                    if self.info["last_error"] != "silent":
                        log.warning("serial %s: no frame within %.1fs", self.name, dev.timeout)
                    self.info["last_error"] = "silent"
                sink(self.bad(stamp(), cause))
                deadline = loop.time() + dev.poll


class SerialPollDriver(SerialDriver):
    """An instrument that answers a request each cycle."""

    streaming = False

    async def poll(self) -> Batch:
        if self._ser is None and self._tcp is None:
            await self.open()
        assert self.request is not None
        loop = asyncio.get_running_loop()
        dev = self.device
        want = len(self.channels)
        pos: list[int] = []
        ts: list[int] = []
        raw: list[float] = []
        q: list[int] = []
        cause = 0
        for _attempt in range(dev.retries + 1):
            self._check_error()
            # a late answer to the previous request must not count for this one
            self._frames.clear()
            self.framer.clear()
            self._first_frame = False
            try:
                self._write(self.request)
            except (serial.SerialException, OSError) as e:
                raise DeviceUnavailable(f"serial port {dev.port}: write failed: {e}", Quality.COMMS) from e
            deadline = loop.time() + dev.timeout
            seen: set[int] = set()
            while len(seen) < want:
                left = deadline - loop.time()
                if left <= 0:
                    break
                if not self._frames:
                    try:
                        await within(self._wake.wait(), left)
                    except TimeoutError:
                        break
                    finally:
                        self._wake.clear()
                self._check_error()
                n0 = len(pos)
                bad_cause, _good, partial = self._take(pos, ts, raw, q)
                if bad_cause:
                    cause = bad_cause
                elif partial and not cause:
                    cause = int(Quality.PARSE)
                for i in range(n0, len(pos)):
                    if q[i] == GOOD:
                        seen.add(pos[i])
            if seen:
                break
            if not pos:
                self.info["timeouts"] += 1
        now = stamp()
        got = {p for p, qq in zip(pos, q, strict=True) if qq == GOOD}
        missing = [i for i in range(want) if i not in got]
        if missing:
            why = cause or int(Quality.TIMEOUT)
            if why == Quality.TIMEOUT and not pos:
                self.info["last_error"] = "no answer"
            pos.extend(missing)
            raw.extend([np.nan] * len(missing))
            ts.extend([now] * len(missing))
            q.extend([why] * len(missing))
        # one sample per channel per cycle: keep the last of each (the freshest answer)
        keep: dict[int, int] = {}
        for i, p in enumerate(pos):
            if q[i] == GOOD or p not in keep or q[keep[p]] != GOOD:
                keep[p] = i
        idx = sorted(keep.values())
        return self._batch([pos[i] for i in idx], [ts[i] for i in idx], [raw[i] for i in idx],
                           [q[i] for i in idx])


def _show(frame: bytes, limit: int = 80) -> str:
    """A bad frame for logs and status pages: printable, bounded."""
    s = repr(frame[:limit])
    return s + ("…" if len(frame) > limit else "")


def _suppress_serial() -> contextlib.suppress:
    return contextlib.suppress(serial.SerialException, OSError)


class _TcpFeed(asyncio.Protocol):
    """Bytes from a serial device server into the driver's framer."""

    def __init__(self, drv: SerialDriver):
        self.drv = drv
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.drv._feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.drv._tcp is not None and self.drv._tcp is not self.transport:
            return  # an old connection we closed ourselves
        self.drv._lost(exc or OSError("the device server closed the connection"))
