"""An HJ 212-2017 platform (the authority's data centre) over real TCP, for tests and by hand.

It accepts stations' connections, checks every packet's length and CRC (its own code,
written from the standard, not the gateway's), reassembles split messages (PNUM/PNO),
answers uploads that ask for it with 9014 (or withholds it, to test resends), records
what it received, and sends commands and history requests to a station.

In a simulator file (``safegw sim -c FILE`` / ``python -m simulators -c FILE --control``)::

    devices:
      - name: platform
        protocol: hj212-platform
        port: 0                 # 0 = any free port; READY reports it
        ack: true               # answer 9014 to uploads with the A bit
        record: /tmp/hj212.jsonl   # optional: every message received, one JSON line each

Control lines (``--control``, one JSON object a line, answered with one)::

    {"to": "platform", "ack": false}                       # withhold 9014 from now on
    {"to": "platform", "command": "2061", "mn": "MN1", "pw": "123456",
     "cp": "BeginTime=20261207100000;EndTime=20261207110000"}   # → {"ok": true, "qn": ...}
    {"to": "platform", "raw": "anything"}                   # send bytes as they are
    {"to": "platform", "received": 0}                       # messages from index 0 on
    {"to": "platform", "errors": true}                      # the packets it refused, and why
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from simulators.config import SimDeviceBase
from simulators.scenario import Plant

log = logging.getLogger(__name__)

MAX_SEGMENT = 1024  # HJ 212-2017 table 3: a data segment is 0-1024 bytes
HEAD = re.compile(rb"##(\d{4})")


def _step(x: int) -> int:
    """HJ 212-2017 appendix A's inner loop: 8 right shifts, 0xA001 in when a 1 falls out."""
    for _ in range(8):
        x = (x >> 1) ^ 0xA001 if x & 1 else x >> 1
    return x


#: the inner loop for every value it can start from: (reg >> 8) ^ byte is below 256
_STEP = [_step(i) for i in range(256)]


def crc(data: bytes) -> int:
    """HJ 212-2017 appendix A: reg = 0xFFFF; per byte reg = (reg >> 8) ^ byte, then the
    8 shifts (looked up: a benchmark sends this simulator hundreds of thousands of points a second)."""
    reg = 0xFFFF
    step = _STEP
    for b in data:
        reg = step[(reg >> 8) ^ b]
    return reg


def packet(segment: str) -> bytes:
    seg = segment.encode("ascii")
    return b"##%04d%s%04X\r\n" % (len(seg), seg, crc(seg))


def fields(seg: str) -> dict[str, str]:
    """The head fields and ``CP`` (the text between ``CP=&&`` and the last ``&&``)."""
    at = seg.index("CP=&&")
    out = dict(p.split("=", 1) for p in seg[:at].rstrip(";").split(";") if "=" in p)
    out["CP"] = seg[at + 5:-2]
    return out


def _key(msg: dict[str, Any]) -> tuple[str, str, str, str]:
    m = re.match(r"DataTime=(\d+)", msg.get("cp") or "")
    return (msg["mn"], msg["qn"], msg["cn"], m.group(1) if m else "")


class Hj212PlatformSim(SimDeviceBase):
    server: ClassVar[str] = "simulators.hj212_platform:PlatformServer"
    protocol: Literal["hj212-platform"]
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 = any free port")
    ack: bool = Field(default=True, description="answer 9014 to uploads that ask for it")
    record: Path | None = Field(default=None, description="append every message received here (JSON lines)")


class PlatformServer:
    def __init__(self, model: Hj212PlatformSim, plant: Plant | None = None):
        self.model = model
        self.name = model.name
        self.ack = model.ack
        self.received: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._parts: dict[tuple[str, str], dict[int, str]] = {}
        self._conns: dict[str, asyncio.StreamWriter] = {}  # MN → the station's connection
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        #: the record file, opened for appending: one os.write per message, so that a reader
        #: never meets half a line another message's write has not finished
        self._record: int | None = None
        if model.record:  # plant data: created private
            self._record = os.open(model.record, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._qn_ms = 0
        #: (MN, QN, CN, DataTime) of every message taken, also by an earlier run recording
        #: to the same file: a resend of one is marked a duplicate (platforms de-duplicate
        #: by QN; a history answer's messages share the request's QN, so DataTime counts)
        self._seen: set[tuple[str, str, str, str]] = set()
        if model.record and model.record.exists():
            for line in model.record.read_text().splitlines(keepends=True):
                if not line.endswith("\n"):  # the last line of a run that was killed mid-write
                    break
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    doc = json.loads(line)
                    self._seen.add(_key(doc))

    async def start(self) -> dict[str, Any]:
        self._server = await asyncio.start_server(self._serve, self.model.host, self.model.port)
        host, port = self._server.sockets[0].getsockname()[:2]
        return {"host": host, "port": port}

    async def update(self, t: float, values: dict[str, float]) -> None:
        return None

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        if self._server is not None:
            with contextlib.suppress(OSError):
                await self._server.wait_closed()
        if self._record is not None:
            os.close(self._record)
            self._record = None

    # ------------------------------------------------------------------ receiving
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        buf = b""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                buf += data
                buf = self._frames(buf, writer)
        except OSError:
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    def _frames(self, buf: bytes, writer: asyncio.StreamWriter) -> bytes:
        while True:
            at = buf.find(b"##")
            if at < 0:
                if buf.strip(b"#"):
                    self._error(f"garbage: {buf[:40]!r}")
                return buf[-1:] if buf.endswith(b"#") else b""
            if at:
                self._error(f"garbage before a packet: {buf[:min(at, 40)]!r}")
                buf = buf[at:]
            if len(buf) < 6:
                return buf
            m = HEAD.match(buf)
            if not m or int(m.group(1)) > MAX_SEGMENT:
                self._error(f"bad length field {buf[2:6]!r}")
                buf = buf[2:]
                continue
            n = int(m.group(1))
            if len(buf) < n + 12:
                return buf
            pkt, buf = buf[:n + 12], buf[n + 12:]
            seg, tail = pkt[6:6 + n], pkt[6 + n:]
            if not tail.endswith(b"\r\n"):
                self._error(f"packet without CR LF after its CRC: {pkt[-8:]!r}")
                continue
            if tail[:4].upper() != b"%04X" % crc(seg):
                self._error(f"CRC {tail[:4]!r} wrong (want {crc(seg):04X}) in {seg[:60]!r}")
                continue
            try:
                self._message(fields(seg.decode("ascii")), writer)
            except (ValueError, UnicodeDecodeError) as e:
                self._error(f"unreadable data segment {seg[:60]!r}: {e}")

    def _error(self, what: str) -> None:
        log.warning("platform %s: %s", self.name, what)
        self.errors.append(what)

    def _message(self, f: dict[str, str], writer: asyncio.StreamWriter) -> None:
        mn, qn = f.get("MN", ""), f.get("QN", "")
        self._conns[mn] = writer
        cp = f["CP"]
        if "PNUM" in f:
            parts = self._parts.setdefault((mn, qn), {})
            parts[int(f["PNO"])] = cp
            if len(parts) < int(f["PNUM"]):
                return
            del self._parts[(mn, qn)]
            # every part repeats DataTime: keep it once
            first, *rest = (parts[i] for i in sorted(parts))
            cp = ";".join([first, *(p.split(";", 1)[1] if ";" in p else "" for p in rest)])
            f = {**f, "CP": cp, "parts": str(len(parts))}
        msg = {"n": len(self.received), "cn": f.get("CN"), "qn": qn, "st": f.get("ST"), "mn": mn,
               "pw": f.get("PW"), "flag": f.get("Flag"), "cp": cp, "parts": int(f.get("parts", 1)),
               "at": time.time()}
        msg["duplicate"] = _key(msg) in self._seen
        self._seen.add(_key(msg))
        self.received.append(msg)
        if self._record is not None:
            os.write(self._record, (json.dumps(msg) + "\n").encode())
        wants = f.get("Flag", "").isdigit() and int(f["Flag"]) & 1
        if self.ack and wants and f.get("CN") not in ("9011", "9012", "9013", "9014"):
            writer.write(packet(f"QN={qn};ST=91;CN=9014;PW={f.get('PW', '')};MN={mn};Flag=4;CP=&&&&"))

    # ------------------------------------------------------------------ sending
    def _next_qn(self) -> str:
        ms = max(int(time.time() * 1000), self._qn_ms + 1)
        self._qn_ms = ms
        return time.strftime("%Y%m%d%H%M%S", time.gmtime(ms // 1000 + 8 * 3600)) + f"{ms % 1000:03d}"

    def send_command(self, cn: str, cp: str = "", *, mn: str | None = None, pw: str = "123456",
                     st: str = "32", flag: int = 5, qn: str | None = None) -> str:
        """Send a command to the station ``mn`` (default: the last one heard); returns its QN."""
        if mn is None:
            if not self._conns:
                raise RuntimeError("no station has sent anything yet")
            mn = next(reversed(self._conns))
        w = self._conns.get(mn)
        if w is None or w.is_closing():
            raise RuntimeError(f"station {mn} is not connected")
        qn = qn or self._next_qn()
        w.write(packet(f"QN={qn};ST={st};CN={cn};PW={pw};MN={mn};Flag={flag};CP=&&{cp}&&"))
        return qn

    def send_raw(self, data: bytes, mn: str | None = None) -> None:
        writers = [self._conns[mn]] if mn else list(self._writers)
        for w in writers:
            w.write(data)

    def control(self, msg: dict[str, Any]) -> dict[str, Any]:
        if "ack" in msg:
            self.ack = bool(msg["ack"])
            return {"ok": True}
        if "command" in msg:
            qn = self.send_command(str(msg["command"]), str(msg.get("cp", "")), mn=msg.get("mn"),
                                   pw=str(msg.get("pw", "123456")), st=str(msg.get("st", "32")),
                                   flag=int(msg.get("flag", 5)))
            return {"ok": True, "qn": qn}
        if "raw" in msg:
            self.send_raw(str(msg["raw"]).encode("latin-1"), msg.get("mn"))
            return {"ok": True}
        if "received" in msg:
            return {"ok": True, "messages": self.received[int(msg["received"]):]}
        if "errors" in msg:
            return {"ok": True, "errors": self.errors}
        return {"error": f"unknown platform control: {sorted(msg)}"}
