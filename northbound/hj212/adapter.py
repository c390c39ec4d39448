"""One HJ 212-2017 platform: a long TCP connection, uploads from the journal with the
platform's 9014 acknowledgement, and the platform's commands.

Delivery (HJ 212-2017 6.5 "通讯流程"): an upload with the A bit set in Flag waits for
the platform's data response (CN 9014) carrying the same QN; after ``ack_timeout``
(OverTime) it is sent again, up to ``retries`` (ReCount) times; then it is kept for
later (tried again after ``retry_later``) and the uploads after it go on. The journal
cursor ``regulator.<name>`` never passes a record whose messages are not all
acknowledged, so nothing kept for later is lost across a restart. While the connection
is down nothing is sent and no retries are spent: the backlog waits in the journal and
goes out in order once the platform is back.

Commands from the platform (answered with 9011 "request response", QnRtn; then the
data, then 9012 "execution result", ExeRtn; 2012 with 9013):
1011/1012 get/set the time, 1061/1062 get/set the real-time interval, 2011/2012
start/stop real-time data, 2051/2061/2031 history (BeginTime/EndTime) from the journal.
A frame with a bad CRC gets 9011 QnRtn=9 when its QN can be read, an unknown CN
QnRtn=8, a wrong PW 3, a wrong MN 4; garbage is logged and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.consumer import Backoff, Health, JournalConsumer
from gateway.core.config_regulators import Hj212Adapter as Hj212Config
from gateway.core.record import EVENT, SAMPLES
from gateway.services import InfluxSamples
from gateway.store.journal import Journal
from gateway.store.queries import samples_between
from northbound.base import AdapterStats, PointMap
from northbound.hj212 import codec
from northbound.hj212.builder import CN_DAY, CN_HOUR, CN_MINUTE, CN_RTD, Builder, Closing, Hold, Upload
from northbound.hj212.codec import FLAG_ACK, FLAG_VERSION_2017, FrameError, Message
from northbound.hj212.history import HistorySource
from northbound.hj212.uploads import NS, LocalTime

log = logging.getLogger(__name__)

ST_REPLY = "91"  # system interaction (HJ 212-2017 6.6.1, the ST table)
HISTORY_CNS = {CN_MINUTE: "minute", CN_HOUR: "hour", CN_DAY: "day"}
#: samples one period closing or history answer reads at most from the journal
MAX_PERIOD_SAMPLES = 5_000_000
#: a history request covers at most this long (s)
HISTORY_MAX_SPAN = 31 * 86400
#: uploads kept for later, at most, before reading more of the journal waits
LATER_MAX = 10_000
READ_BYTES = 4096


class _Out:
    """An upload on its way: its packets (same QN), and what acknowledges it."""

    __slots__ = ("due", "packets", "qn", "tries", "upload")

    def __init__(self, upload: Upload, qn: str, packets: list[bytes]):
        self.upload, self.qn, self.packets = upload, qn, packets
        self.tries = 0
        self.due = 0.0


class Hj212Platform:
    """The adapter for one platform (a ``regulators:`` entry of type hj212)."""

    def __init__(self, cfg: Hj212Config, journal: Journal, points: PointMap, password: str, state_dir: Path,
                 clock: Callable[[], int], influx: InfluxSamples | None = None):
        self.cfg = cfg
        self.name = cfg.name
        self.journal = journal
        self.points = points
        self.pw = password
        self.clock = clock
        self.local = LocalTime(cfg.utc_offset)
        # history answers: the journal, or InfluxDB (tagged by channel name) for older ranges
        named = [(int(i), p.channel) for i, p in zip(points.channels.tolist(), points.points, strict=True)
                 if i >= 0]
        self.history = HistorySource(cfg.name, journal, points.channels, named, influx, self.local,
                                     MAX_PERIOD_SAMPLES)
        self.consumer = JournalConsumer(journal, f"regulator.{cfg.name}", kinds=(SAMPLES, EVENT),
                                        max_records=200, logger=log, start=cfg.start,
                                        what=f"HJ 212 platform {cfg.name} ({cfg.host}:{cfg.port})")
        self.health: Health = self.consumer.health
        self.state_path = state_dir / "regulators" / f"{cfg.name}.hj212.json"
        self.stats_ = AdapterStats()
        self.rtd_interval = cfg.rtd_interval
        periods: dict[str, float] = {}
        if cfg.minute_interval:
            periods[CN_MINUTE] = cfg.minute_interval
        if cfg.hourly:
            periods[CN_HOUR] = 3600.0
        if cfg.daily:
            periods[CN_DAY] = 86400.0
        self.periods = periods
        self.builder = Builder(points, self.local, rtd_interval=cfg.rtd_interval, late=cfg.late,
                               periods=periods, sent_until=self._load_state())
        if not cfg.realtime:
            self.builder.stop_realtime(0)
        self._writer: asyncio.StreamWriter | None = None
        self._connected = asyncio.Event()
        self._wlock = asyncio.Lock()
        self._acks: dict[str, asyncio.Future[None]] = {}
        self._holds: deque[Hold] = deque()
        self._later: deque[_Out] = deque()
        self._commands: asyncio.Queue[Message] = asyncio.Queue(maxsize=100)
        self._last_qn_ms = 0
        self._bad_logged = False
        self._saved_at = 0.0
        #: set while the upload loop waits for new records with nothing in flight
        self.idle = asyncio.Event()

    # ------------------------------------------------------------------ state file
    def _load_state(self) -> dict[str, int]:
        try:
            doc = json.loads(self.state_path.read_text())
            return {str(k): int(v) for k, v in doc.get("sent_until", {}).items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as e:
            log.error("%s: state file %s unreadable (%s): periods are sent again from the journal's cursor",
                      self.name, self.state_path, e)
            return {}

    def _save_state(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.state_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"sent_until": self.builder.sent_until}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.consumer.register()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._connect_loop(), name=f"hj212-link[{self.name}]")
            tg.create_task(self._upload_loop(), name=f"hj212-upload[{self.name}]")
            tg.create_task(self._command_loop(), name=f"hj212-commands[{self.name}]")

    async def stop(self) -> None:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self._save_state)
        w = self._writer
        if w is not None:
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()

    def stats(self) -> dict[str, Any]:
        d = self.stats_.as_dict()
        d.update(self.consumer.stats())
        d.update({"platform": f"{self.cfg.host}:{self.cfg.port}", "mn": self.cfg.mn,
                  "realtime": self.builder.realtime, "rtd_interval_s": self.rtd_interval,
                  "awaiting_ack": len(self._acks),
                  "later": len(self._later), "unmapped_channels": len(self.points.unmapped),
                  "late_samples": self.builder.late_samples, "gaps": self.builder.gaps})
        return d

    # ------------------------------------------------------------------ connection
    async def _connect_loop(self) -> None:
        backoff = Backoff(0.2, self.cfg.reconnect_max)
        while True:
            try:
                async with asyncio.timeout(self.cfg.connect_timeout):
                    reader, writer = await asyncio.open_connection(self.cfg.host, self.cfg.port)
            except (OSError, TimeoutError) as e:
                self.health.failed(f"connect: {e or type(e).__name__}")
                await backoff.sleep()
                continue
            self._writer = writer
            self.stats_.connected = True
            self.stats_.connects += 1
            self._bad_logged = False
            self.health.succeeded()
            backoff.reset()
            self._connected.set()
            try:
                await self._read_loop(reader)
                self.health.failed("the platform closed the connection")
            except OSError as e:
                self.health.failed(f"connection lost: {e}")
            finally:
                self._connected.clear()
                self._writer = None
                self.stats_.connected = False
                writer.close()
                for fut in self._acks.values():
                    if not fut.done():
                        fut.set_exception(ConnectionError("connection lost"))
            await backoff.sleep()

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        frames = codec.Reader()
        while True:
            data = await reader.read(READ_BYTES)
            if not data:
                return
            for item in frames.feed(data):
                if isinstance(item, FrameError):
                    await self._bad_frame(item)
                else:
                    self._dispatch(item)

    async def _bad_frame(self, e: FrameError) -> None:
        self.stats_.bad_frames += 1
        level = logging.DEBUG if self._bad_logged else logging.WARNING
        self._bad_logged = True
        log.log(level, "%s: bad frame from the platform: %s", self.name, e)
        qn = getattr(e, "qn", None)
        if qn and "CRC" in str(e):
            await self._reply_quiet("9011", qn, "QnRtn=9")

    def _dispatch(self, msg: Message) -> None:
        if msg.cn == "9014":
            fut = self._acks.get(msg.qn)
            if fut is not None and not fut.done():
                fut.set_result(None)
            return
        try:
            self._commands.put_nowait(msg)
        except asyncio.QueueFull:
            log.warning("%s: the platform sends commands faster than they are answered; %s (QN %s) dropped",
                        self.name, msg.cn, msg.qn)

    async def _send(self, data: bytes) -> None:
        async with self._wlock:
            w = self._writer
            if w is None:
                raise ConnectionError("not connected")
            w.write(data)
            await w.drain()

    # ------------------------------------------------------------------ uploads
    def _next_qn(self) -> str:
        ms = self.clock() // 1_000_000
        if ms <= self._last_qn_ms:
            ms = self._last_qn_ms + 1  # QNs identify messages: never two alike
        self._last_qn_ms = ms
        return self.local.qn(ms * 1_000_000)

    def _packets(self, cn: str, qn: str, prefix: str, items: list[str], *, ack: bool) -> list[bytes]:
        flag = FLAG_VERSION_2017 | (FLAG_ACK if ack else 0)
        head = Message(cn, qn, self.cfg.st, self.pw, self.cfg.mn, flag)
        return codec.encode_many(codec.split(head, items, prefix=prefix))

    def _out(self, up: Upload) -> _Out:
        qn = self._next_qn()
        prefix = f"DataTime={self.local.datetime(up.start_ns)}"
        return _Out(up, qn, self._packets(up.cn, qn, prefix, up.items, ack=self.cfg.ack))

    async def _upload_loop(self) -> None:
        read_after = self.consumer.cursor
        while True:
            await self._retry_due()
            if len(self._later) >= LATER_MAX:
                await asyncio.sleep(self.cfg.retry_later)
                continue
            records = await self.consumer.read(after=read_after)
            if not records:
                self.idle.set()
                await self.consumer.wait(after=read_after, timeout=self._next_due())
                self.idle.clear()
                continue
            for rec in records:
                ups, closings, hold = self.builder.feed(rec)
                self._holds.append(hold)
                for up in ups:
                    await self._deliver(self._out(up))
                for c in closings:
                    for up in await self._period_uploads(c):
                        await self._deliver(self._out(up))
                hold.pending -= 1
                read_after = rec.seq
                await self._advance()

    def _next_due(self) -> float | None:
        if not self._later:
            return None
        return max(0.05, self._later[0].due - asyncio.get_running_loop().time())

    async def _period_uploads(self, c: Closing) -> list[Upload]:
        pn = int(c.period_s * NS)
        b, cut = await self.journal.run_read(lambda db: samples_between(
            db, c.starts[0], c.starts[-1] + pn, self.points.channels, max_samples=MAX_PERIOD_SAMPLES))
        if cut:
            log.warning("%s: %s data from %s: more than %d samples; the periods summarise the first ones",
                        self.name, c.cn, self.local.datetime(c.starts[0]), MAX_PERIOD_SAMPLES)
        ups = self.builder.period_uploads(c, b)
        c.hold.pending += len(ups) - 1
        if not ups:
            self.builder.sent_until[c.cn] = max(self.builder.sent_until.get(c.cn, 0), c.starts[-1] + pn)
        return ups

    async def _deliver(self, out: _Out) -> None:
        """Send until acknowledged; after ``retries`` resends keep it for later."""
        if await self._attempt(out):
            await self._done(out)
        else:
            self.stats_.kept_for_later += 1
            out.due = asyncio.get_running_loop().time() + self.cfg.retry_later
            self._later.append(out)
            log.warning("%s: no data response to %s QN %s after %d tries; kept for later", self.name,
                        out.upload.cn, out.qn, out.tries)

    async def _attempt(self, out: _Out) -> bool:
        tries_left = self.cfg.retries + 1
        while tries_left > 0:
            await self._connected.wait()
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[None] = loop.create_future()
            self._acks[out.qn] = fut
            try:
                for pkt in out.packets:
                    await self._send(pkt)
                self.stats_.packets_sent += len(out.packets)
                self.stats_.messages_sent += 1
                self.stats_.points_sent += len(out.upload.items)
                out.tries += 1
                if out.tries > 1:
                    self.stats_.resends += 1
                if not self.cfg.ack:
                    return True
                async with asyncio.timeout(self.cfg.ack_timeout):
                    await fut
                return True
            except TimeoutError:
                tries_left -= 1
            except (ConnectionError, OSError):
                continue  # not the platform's answer: wait for the link, spend no try
            finally:
                self._acks.pop(out.qn, None)
        return False

    async def _retry_due(self) -> None:
        now = asyncio.get_running_loop().time()
        while self._later and self._later[0].due <= now and self._connected.is_set():
            out = self._later.popleft()
            if await self._attempt(out):
                await self._done(out)
            else:
                out.due = asyncio.get_running_loop().time() + self.cfg.retry_later
                self._later.append(out)
                return

    async def _done(self, out: _Out) -> None:
        self.stats_.acked += 1
        up = out.upload
        su = self.builder.sent_until
        if up.end_ns > su.get(up.cn, 0):
            su[up.cn] = up.end_ns
            # periods: always (a day's data sent twice is noticed); real-time windows at most
            # once a second (a crash may then send up to a second's windows again)
            now = asyncio.get_running_loop().time()
            if up.cn != CN_RTD or now - self._saved_at >= 1.0:
                self._saved_at = now
                await asyncio.to_thread(self._save_state)
        for h in up.holds:
            h.pending -= 1
        await self._advance()

    async def _advance(self) -> None:
        upto = None
        while self._holds and self._holds[0].pending <= 0:
            upto = self._holds.popleft().seq
        if upto is not None:
            await self.consumer.ack(upto)

    # ------------------------------------------------------------------ commands
    async def _command_loop(self) -> None:
        while True:
            msg = await self._commands.get()
            self.stats_.commands += 1
            try:
                await self._command(msg)
            except (ConnectionError, OSError) as e:
                log.warning("%s: answer to %s (QN %s) not sent: %s", self.name, msg.cn, msg.qn, e)

    async def _reply(self, cn: str, qn: str, cp: str, st: str = ST_REPLY) -> None:
        await self._send(codec.encode(Message(cn, qn, st, self.pw, self.cfg.mn, FLAG_VERSION_2017, cp)))

    async def _reply_quiet(self, cn: str, qn: str, cp: str) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self._reply(cn, qn, cp)

    async def _command(self, msg: Message) -> None:
        cn, qn = msg.cn, msg.qn
        if msg.pw != self.pw:
            log.warning("%s: %s (QN %s) refused: wrong PW", self.name, cn, qn)
            return await self._reply("9011", qn, "QnRtn=3")
        if msg.mn != self.cfg.mn:
            log.warning("%s: %s (QN %s) refused: MN %r is not this station's", self.name, cn, qn, msg.mn[:24])
            return await self._reply("9011", qn, "QnRtn=4")
        cp = msg.cp_items()
        if cn == "1011":
            await self._reply("9011", qn, "QnRtn=1")
            pol = cp.get("PolId", "")
            pol = f"PolId={pol};" if re.fullmatch(r"[A-Za-z0-9]{1,20}", pol) else ""
            now = self.local.datetime(self.clock())
            await self._reply("1011", qn, f"{pol}SystemTime={now}", st=self.cfg.st)
            await self._reply("9012", qn, "ExeRtn=1")
        elif cn == "1012":
            await self._reply("9011", qn, "QnRtn=1")
            await self._reply("9012", qn, f"ExeRtn={self._set_time(cp.get('SystemTime', ''))}")
        elif cn == "1061":
            await self._reply("9011", qn, "QnRtn=1")
            await self._reply("1061", qn, f"RtdInterval={int(self.rtd_interval)}", st=self.cfg.st)
            await self._reply("9012", qn, "ExeRtn=1")
        elif cn == "1062":
            await self._reply("9011", qn, "QnRtn=1")
            await self._reply("9012", qn, f"ExeRtn={self._set_rtd_interval(cp.get('RtdInterval', ''))}")
        elif cn == "2011":
            await self._reply("9011", qn, "QnRtn=1")
            if not self.builder.realtime:
                log.info("%s: the platform starts real-time data (2011)", self.name)
            self.builder.start_realtime(self.clock())
        elif cn == "2012":
            if self.builder.realtime:
                log.info("%s: the platform stops real-time data (2012)", self.name)
            self.builder.stop_realtime(self.clock())
            await self._reply("9013", qn, "")
        elif cn in HISTORY_CNS:
            await self._history(msg, cp)
        else:
            log.warning("%s: unknown command CN=%s (QN %s) answered QnRtn=8", self.name, cn[:8], qn)
            await self._reply("9011", qn, "QnRtn=8")

    def _set_time(self, text: str) -> int:
        """The gateway keeps its clock by NTP: a platform's time is accepted when close
        (ExeRtn 1), else logged and refused (ExeRtn 2), never applied."""
        try:
            theirs = self.local.parse(text)
        except ValueError as e:
            log.warning("%s: set time (1012): %s", self.name, e)
            return 3
        diff = abs(theirs - self.clock()) / NS
        if diff <= self.cfg.time_tolerance:
            return 1
        log.error("%s: the platform says the time is %s, %.0f s from ours; the gateway does not set "
                  "its clock from a platform: check its NTP", self.name, text, diff)
        return 2

    def _set_rtd_interval(self, text: str) -> int:
        if not text.isdigit() or not 30 <= int(text) <= 3600 or 86400 % int(text):
            log.warning("%s: real-time interval %r refused (30-3600 s, dividing a day)", self.name, text[:10])
            return 3
        self.rtd_interval = float(text)
        self.builder.rtd_interval = self.rtd_interval
        log.info("%s: the platform sets the real-time interval to %s s", self.name, text)
        return 1

    async def _history(self, msg: Message, cp: dict[str, str]) -> None:
        cn, qn = msg.cn, msg.qn
        period = self.periods.get(cn) or {CN_MINUTE: 60.0, CN_HOUR: 3600.0, CN_DAY: 86400.0}[cn]
        try:
            begin = self.local.parse(cp.get("BeginTime", ""))
            end = self.local.parse(cp.get("EndTime", ""))
        except ValueError as e:
            log.warning("%s: history request %s (QN %s): %s", self.name, cn, qn, e)
            return await self._reply("9011", qn, "QnRtn=2")
        if end < begin or (end - begin) > HISTORY_MAX_SPAN * NS:
            log.warning("%s: history request %s (QN %s) for %s-%s refused: at most %d days, end after begin",
                        self.name, cn, qn, cp["BeginTime"], cp["EndTime"], HISTORY_MAX_SPAN // 86400)
            return await self._reply("9011", qn, "QnRtn=2")
        await self._reply("9011", qn, "QnRtn=1")
        pn = int(period * NS)
        first = int(self.local.period_start(begin, period))
        starts = list(range(first, int(self.local.period_start(end, period)) + 1, pn))
        starts = [s for s in starts if begin <= s <= end]
        ups: list[Upload] = []
        source = "-"
        if starts:
            b, source = await self.history.samples(starts[0], starts[-1] + pn)
            ups = self.builder.period_uploads(Closing(cn, period, starts, Hold(0)), b)
        for up in ups:
            prefix = f"DataTime={self.local.datetime(up.start_ns)}"
            for pkt in self._packets(cn, qn, prefix, up.items, ack=False):
                await self._send(pkt)
        log.info("%s: history %s %s-%s answered from %s with %d period(s)", self.name, cn, cp["BeginTime"],
                 cp["EndTime"], source, len(ups))
        await self._reply("9012", qn, "ExeRtn=1" if ups else "ExeRtn=100")
