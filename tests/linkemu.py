"""A link emulator for tests: a TCP proxy on loopback that behaves like a bad 4G link.

It forwards ``127.0.0.1:<port>`` to a target and can, at any time:

- add one-way latency (each chunk is delivered ``latency`` seconds after it was read),
- throttle each direction to ``rate`` bytes/s (1 Mbit/s = 125_000),
- ``drop()`` every open connection (RST-like: both sides closed at once),
- ``cut()`` the link (open connections dropped, new ones accepted and closed at once,
  like a VPN that is down) until ``restore()``,
- ``blackhole()`` it: packets vanish. Open connections stall (nothing more is delivered
  either way), new connections are accepted and then hear nothing, so only the
  client's own timeouts notice (a 4G cell lost, a VPN tunnel dead without a reset).
  ``restore()`` drops what stalled, as a NAT or tunnel that lost its state would.

It runs its own event loop in a thread, so sync and async tests can use it alike.
Counters: ``bytes_up`` (client → target), ``bytes_down``, ``connections``, ``drops``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any


class LinkEmulator:
    def __init__(self, target_host: str, target_port: int, *, latency: float = 0.0,
                 rate: float | None = None, chunk: int = 16384):
        self.target = (target_host, target_port)
        self.latency = latency
        self.rate = rate
        self.chunk = chunk
        self.port = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections = 0
        self.drops = 0
        self._cut = False
        self._hole = False
        self._flowing = asyncio.Event()  # clear while blackholed (loop side)
        self._held: set[asyncio.StreamWriter] = set()
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="linkemu", daemon=True)

    # ------------------------------------------------------------------ control (any thread)
    def start(self) -> LinkEmulator:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("link emulator did not start")
        return self

    def _call(self, fn: Any) -> None:
        fut = asyncio.run_coroutine_threadsafe(fn(), self._loop)
        fut.result(10)

    def drop(self) -> None:
        """Close every open connection now (the link hiccups)."""

        async def run() -> None:
            self._drop_all()

        self._call(run)

    def cut(self) -> None:
        """Take the link down: drop connections and refuse new ones until restore()."""
        self._cut = True
        self.drop()

    def blackhole(self) -> None:
        """Packets vanish until restore(): connections stall rather than close."""
        self._hole = True
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def restore(self) -> None:
        was_hole, self._cut, self._hole = self._hole, False, False
        if was_hole:

            async def run() -> None:
                self._flowing.set()
                self._drop_all()
                for w in list(self._held):
                    with contextlib.suppress(Exception):
                        w.transport.abort()
                self._held.clear()

            self._call(run)

    def set(self, *, latency: float | None = None, rate: float | None = -1.0) -> None:
        if latency is not None:
            self.latency = latency
        if rate != -1.0:
            self.rate = rate

    def stop(self) -> None:
        async def run() -> None:
            self._drop_all()
            if self._server is not None:
                self._server.close()

        with contextlib.suppress(RuntimeError):
            self._call(run)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> LinkEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ loop side
    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def boot() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self._flowing.set()
            self.port = self._server.sockets[0].getsockname()[1]

        self._loop.run_until_complete(boot())
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    def _drop_all(self) -> None:
        for a, b in list(self._conns):
            for w in (a, b):
                with contextlib.suppress(Exception):
                    w.transport.abort()
        if self._conns:
            self.drops += 1
        self._conns.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.transport.abort()
            return
        if self._hole:
            # accepted (the socket is local), then nothing: read and discard until closed
            self._held.add(writer)
            try:
                while await reader.read(65536):
                    pass
            except (ConnectionError, OSError):
                pass
            finally:
                self._held.discard(writer)
                with contextlib.suppress(Exception):
                    writer.transport.abort()
            return
        try:
            treader, twriter = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        pair = (writer, twriter)
        self._conns.add(pair)
        try:
            await asyncio.gather(self._pipe(reader, twriter, up=True), self._pipe(treader, writer, up=False))
        finally:
            self._conns.discard(pair)
            for w in (writer, twriter):
                with contextlib.suppress(Exception):
                    w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool) -> None:
        # a queue between reading and delivering models latency without serialising it
        q: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def deliver() -> None:
            next_free = time.monotonic()
            while True:
                item = await q.get()
                if item is None:
                    with contextlib.suppress(Exception):
                        writer.write_eof()
                    return
                due, data = item
                if self._hole:  # stalled: nothing is delivered until restore() drops us
                    await self._flowing.wait()
                if self.rate:
                    # serialisation delay at the link rate, on top of the propagation delay
                    next_free = max(next_free, time.monotonic()) + len(data) / self.rate
                    due = max(due, next_free)
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)

        task = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(self.chunk if not self.rate else min(self.chunk, 4096))
                if not data:
                    q.put_nowait(None)
                    break
                q.put_nowait((time.monotonic() + self.latency, data))
            await task
        except (ConnectionError, OSError):
            task.cancel()
        finally:
            if not task.done():
                with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                    await task
