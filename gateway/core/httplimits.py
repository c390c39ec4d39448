"""Limits every HTTP listener of safegw applies before a request reaches its app.

Two parts, used by the admin API (gateway/admin/api.py) and by central (central/node.py):

- ``BodyLimit``, a pure ASGI middleware: counts a request body's bytes while it is read
  (a declared Content-Length and chunked bodies alike) and answers 413 as soon as the
  route's limit is passed, before authentication and before anything parses the body;
  a client that stops sending its body for ``idle_timeout_s`` gets 408.
- ``uvicorn_limits()``, the uvicorn settings of a listener: a 16 KiB limit on a request's
  head (request line and headers; more is a 431), the keep-alive timeout, a timeout for
  a client that trickles its head, and X-Forwarded-For honoured only from configured
  proxy addresses. uvicorn 0.55 has no head timeout, and its h11 limit
  (``h11_max_incomplete_event_size``) only bounds a head still incomplete, not one that
  arrives whole: ``HeadLimitH11`` adds both.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.core.aio import within

#: the largest request head (request line and headers) a listener reads
MAX_HEADER_BYTES = 16 * 1024
#: seconds a client has to send a request's whole head once it has connected (or sent
#: the first byte of its next request on a kept-alive connection)
HEADER_TIMEOUT_S = 10.0
#: seconds a request body may pause between two of its chunks
BODY_IDLE_TIMEOUT_S = 30.0

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class HeadLimitH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline and a size limit for the request head.

    uvicorn arms no timer while it waits for a request's head: a client that connects
    and sends nothing, or one header byte every few seconds (slowloris), would hold its
    connection and buffers for ever. Here a timer runs from the connection (or from the
    first byte of a next request) until h11 has parsed the whole head; when it fires,
    the connection is closed. A head over ``max_head_bytes`` gets 431 and a close."""

    header_timeout_s = HEADER_TIMEOUT_S
    max_head_bytes = MAX_HEADER_BYTES
    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            end = data.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end + 4
            if self._head_bytes > self.max_head_bytes:
                self._disarm()
                self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                     b"content-type: text/plain\r\ncontent-length: 26\r\n"
                                     b"connection: close\r\n\r\nrequest head over 16 KiB\r\n")
                self.transport.close()
                return
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            if self._head_timer is None:
                self._arm()
        else:
            self._head_bytes = 0
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("closed a connection that sent no complete request head in %gs",
                             self.header_timeout_s)
            self.transport.close()


def uvicorn_limits(*, trusted_proxies: Sequence[str] = (), keep_alive_s: float = 5.0,
                   header_timeout_s: float = HEADER_TIMEOUT_S) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``: the h11 protocol with the head timeout,
    the head size limit, the keep-alive timeout, and proxy headers (X-Forwarded-For,
    X-Forwarded-Proto) trusted only from ``trusted_proxies`` (addresses or networks);
    none given, they are ignored from everyone, loopback included (uvicorn's default
    trusts 127.0.0.1, which lets any local process pick the client address the lockout
    and the audit trail see)."""
    protocol = type("HeadLimitH11", (HeadLimitH11,), {"header_timeout_s": header_timeout_s})
    return {
        "http": protocol,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "timeout_keep_alive": max(1, round(keep_alive_s)),
        "proxy_headers": bool(trusted_proxies),
        "forwarded_allow_ips": list(trusted_proxies) if trusted_proxies else None,
    }


class BodyLimit:
    """Pure ASGI middleware: request bodies up to ``default`` bytes, or a route's own limit.

    ``routes`` are (method, path regex, limit), the first full match wins. The bytes are
    counted as the app reads them, so nothing larger than the limit is ever buffered; past
    it, the client gets 413 (with ``Connection: close``, so the rest of the upload is not
    read) and the app sees the client as gone. A body declared larger than the limit is
    refused before the app runs."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], *, default: int,
                 routes: Sequence[tuple[str, str, int]] = (),
                 idle_timeout_s: float = BODY_IDLE_TIMEOUT_S):
        self.app = app
        self.default = default
        self.routes = [(m.upper(), re.compile(p), n) for m, p, n in routes]
        self.idle_timeout_s = idle_timeout_s

    def limit(self, method: str, path: str) -> int:
        for m, pattern, n in self.routes:
            if m == method and pattern.fullmatch(path):
                return n
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["method"], scope["path"])
        declared = None
        for k, v in scope["headers"]:
            if k == b"content-length":
                declared = v
        if declared is not None:
            if not declared.isdigit() or len(declared) > 18:
                await _answer(send, 400, "bad Content-Length")
                return
            if int(declared) > limit:
                await _answer(send, 413, f"body is {int(declared)} bytes; the limit here is {limit}")
                return
        refused = False
        more = True
        total = 0

        async def receive_() -> Message:
            nonlocal refused, more, total
            if refused:
                return {"type": "http.disconnect"}
            if not more:
                return await receive()  # the body is read: only a disconnect can come
            try:
                msg = await within(receive(), self.idle_timeout_s)
            except TimeoutError:
                refused = True
                await _answer(send, 408, f"the body stopped arriving for {self.idle_timeout_s:g}s")
                return {"type": "http.disconnect"}
            if msg["type"] == "http.request":
                total += len(msg.get("body", b""))
                more = bool(msg.get("more_body", False))
                if total > limit:
                    refused = True
                    await _answer(send, 413, f"body exceeds the limit here of {limit} bytes")
                    return {"type": "http.disconnect"}
            return msg

        async def send_(msg: Message) -> None:
            if not refused:  # once refused, the app's own answer (to a "disconnect") is dropped
                await send(msg)

        try:
            await self.app(scope, receive_, send_)
        except Exception:
            # the app fails on the "disconnect" it was handed (Starlette raises
            # ClientDisconnect): that is the refusal already answered, not an error
            if not refused:
                raise


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    # Connection: close, so the rest of a refused upload is not read
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
