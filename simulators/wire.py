"""How the simulated devices put values on the wire, written from the protocol texts
and independently of the drivers' codecs: if a driver misreads a byte order, a
checksum or a scaling, a simulator that shared its code would agree with it and the
tests would pass. Plain ``struct`` and bit loops here, numpy gathers in the drivers.

The HTTP stand-ins (robots, the mem-iot and provincial platforms) share their serving
here too: ``PostServer`` (a threaded HTTP(S) server on 127.0.0.1 handing each POST to
its simulator), ``Faults`` (the faults on demand), ``PostStandIn`` (their common control:
start, stop, fail, hang), ``answer_json`` and ``by_hand`` (a simulator run from the shell).
What each checks stays in its own module.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import logging
import socket
import ssl
import struct
import tempfile
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

#: registers a type fills, and its big-endian struct format
_FORMATS = {"int16": (1, ">h"), "uint16": (1, ">H"), "int32": (2, ">i"), "uint32": (2, ">I"),
            "float32": (2, ">f"), "float64": (4, ">d")}
_INT_RANGE = {"int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
              "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1)}


def _order(be: bytes, byte_order: str) -> bytes:
    """Big-endian bytes (A first) → the device's order of them. CDAB: the words in reverse
    order, each big-endian; BADC: bytes swapped in each word; DCBA: all reversed."""
    words = [be[i:i + 2] for i in range(0, len(be), 2)]
    if byte_order == "ABCD":
        return be
    if byte_order == "CDAB":
        return b"".join(reversed(words))
    if byte_order == "BADC":
        return b"".join(w[::-1] for w in words)
    if byte_order == "DCBA":
        return be[::-1]
    raise ValueError(f"unknown byte order {byte_order!r}")


def encode_registers(value: float, type_: str, byte_order: str = "ABCD", scale: float = 1.0,
                     offset: float = 0.0) -> list[int]:
    """An engineering value → the register words a device holds for it
    (``raw = (value - offset) / scale``, integers rounded and clamped to the type)."""
    raw = (value - offset) / scale
    if type_ == "bool":
        return [1 if raw else 0]
    n, fmt = _FORMATS[type_]
    if type_ in _INT_RANGE:
        lo, hi = _INT_RANGE[type_]
        packed = struct.pack(fmt, int(min(max(round(raw), lo), hi)))
    else:
        packed = struct.pack(fmt, raw)
    wire = _order(packed, byte_order)
    return list(struct.unpack(f">{n}H", wire))


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS, bit by bit: reflected polynomial 0xA001, initial value 0xFFFF
    (Modbus over serial line, V1.02, 6.2.2)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def checksum(kind: str, covered: bytes) -> tuple[int, int]:
    """(value, width in bytes) of an instrument's checksum over ``covered``."""
    if kind == "sum8":
        return sum(covered) & 0xFF, 1
    if kind == "xor":
        x = 0
        for b in covered:
            x ^= b
        return x, 1
    if kind == "crc16-modbus":
        return crc16_modbus(covered), 2
    raise ValueError(f"unknown checksum {kind!r}")


def checksum_field(kind: str, fmt: str, covered: bytes) -> bytes:
    """The checksum as the instrument writes it: upper-case hex text, or raw bytes
    (low byte first, as Modbus sends its CRC)."""
    if kind == "none":
        return b""
    value, width = checksum(kind, covered)
    if fmt == "hex":
        return f"{value:0{2 * width}X}".encode("ascii")
    return value.to_bytes(width, "little")


def control_bytes(text: str) -> bytes:
    """A control string from YAML (``\\r\\n``, ``\\x02``, written literally or not) as bytes."""
    if "\\" in text:
        text = codecs.decode(text, "unicode_escape")
    return text.encode("latin-1")


class PostServer:
    """An HTTP/1.1 server on 127.0.0.1 (``port`` 0: an ephemeral one) that hands each POST
    to ``handle`` in a thread of its own; HTTPS with ``certs`` (certificate, key files).
    Its request log goes to ``log`` at DEBUG, after ``label`` (None: no request log)."""

    def __init__(self, handle: Callable[[BaseHTTPRequestHandler], None], *, name: str, port: int = 0,
                 certs: tuple[Path, Path] | None = None, log: logging.Logger | None = None,
                 label: str = ""):
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                if log is not None:
                    log.debug("%s: " + format, label, *args)

            def setup(self) -> None:
                super().setup()
                with outer._lock:
                    outer._conns.add(self.connection)

            def finish(self) -> None:
                with outer._lock:
                    outer._conns.discard(self.connection)
                super().finish()

            def do_POST(self) -> None:
                handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        if certs is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*certs)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, drop_connections: bool = False) -> None:
        """Stop accepting; with ``drop_connections`` also shut every open connection
        (kept-alive ones too: the peer is gone), else those are served until they close."""
        self.server.shutdown()
        self.server.server_close()
        if not drop_connections:
            return
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                c.close()


class Faults:
    """Faults on demand: a queue of (kind, value) the next requests take one each, and a
    hang (every request held up to ``hang_s`` seconds, or until the hang is lifted)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[tuple[str, int]] = []
        self.hang_s = 0.0
        self._release = threading.Event()
        self._release.set()

    def add(self, kind: str, value: int, times: int = 1) -> None:
        with self._lock:
            self._queue += [(kind, value)] * times

    def take(self) -> tuple[str, int] | None:
        """The next request's fault, if any."""
        with self._lock:
            return self._queue.pop(0) if self._queue else None

    def hang(self, seconds: float) -> None:
        """Hold every request this long (0: answer at once, and let the held ones go)."""
        self.hang_s = seconds
        if seconds:
            self._release.clear()
        else:
            self._release.set()

    def held(self) -> bool:
        """Hold this request while a hang is set; whether it was held."""
        if not self.hang_s:
            return False
        self._release.wait(self.hang_s)
        return True

    def lift(self) -> None:
        """Let every held request go (at a stop)."""
        self._release.set()


def answer_json(h: BaseHTTPRequestHandler, status: int, doc: dict[str, Any], *,
                content_type: str = "application/json") -> None:
    """Answer a request with ``doc`` as JSON (UTF-8, not escaped)."""
    body = json.dumps(doc, ensure_ascii=False).encode()
    h.send_response(status)
    h.send_header("Content-Type", content_type)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


class PostStandIn:
    """The control side the HTTP stand-ins share. A subclass sets ``_server`` and
    ``_faults`` (and ``_tmp``, a folder removed at the stop); ``_drop_on_stop`` drops the
    open connections at the stop too. The second kind of fault (a vendor's or platform's
    error code in a 200) is the subclass's own."""

    _server: PostServer
    _faults: Faults
    _tmp: tempfile.TemporaryDirectory[str] | None = None
    _drop_on_stop = False

    def start(self) -> Self:
        self._server.start()
        return self

    def stop(self) -> None:
        self._faults.lift()
        self._server.stop(drop_connections=self._drop_on_stop)
        if self._tmp is not None:
            self._tmp.cleanup()

    def fail(self, status: int, times: int = 1) -> None:
        """Answer the next ``times`` requests with this HTTP status."""
        self._faults.add("http", status, times)

    def hang(self, seconds: float) -> None:
        """Hold every request this long (0: answer at once); what follows is the stand-in's."""
        self._faults.hang(seconds)


def by_hand(ready: dict[str, Any], stop: Callable[[], None]) -> int:
    """A simulator run from the shell: print ``READY`` and ``ready`` as JSON (what a client
    needs to reach it), serve until Ctrl-C, then ``stop``."""
    print("READY " + json.dumps(ready), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop()
    return 0
