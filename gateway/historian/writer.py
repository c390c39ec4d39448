"""The InfluxDB writer: formats samples, events and statistics into line protocol and
delivers bodies until the server took them. It knows InfluxDB and nothing of the
gateway's journal: the gateway's historian (gateway/historian/service.py) and central
(what it receives from the gateways) both write through it
(``InfluxWriter(section, tags_for_channel=...)``).

Delivery retries with backoff on connection errors, timeouts and 5xx; retries slowly
and loudly on 401/403; creates a missing database (v1) or names what to create; and,
on a 400, splits the body in halves until the rejected lines are isolated, so the
good ones are written and the stream moves on. Line protocol writes are idempotent
(same series and timestamp overwrite), so a body sent again never duplicates points.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gateway.consumer import Backoff
from gateway.core.aio import within
from gateway.core.batch import Batch
from gateway.core.config import InfluxSection
from gateway.core.personal import redact
from gateway.core.secrets import SecretFileError, read_secret
from gateway.historian import lineproto
from gateway.historian.stats import ClosedInterval
from gateway.historian.transports import Reply, V1Transport, V2Transport

log = logging.getLogger(__name__)

#: rejected lines quoted in one influx_rejected event (the count covers all of them)
MAX_REJECTED_QUOTED = 20


_POINT_ERRORS = ("partial write", "unable to parse", "failed to parse", "failure writing points")
_NOT_POINT_ERRORS = re.compile(r"database not found|retention policy not found|bucket .*not found|"
                               r"authoriz|permission|unauthori[sz]ed", re.I)


def _is_point_error(message: str) -> bool:
    """A refusal of some lines (split and skip them), not of the whole request."""
    return message.startswith(_POINT_ERRORS) or not _NOT_POINT_ERRORS.search(message)


#: event keys that become tags when they hold text: low-cardinality names to select by
_EVENT_TAGS = frozenset({"channel", "device", "kind", "unit", "level", "state", "rule", "priority",
                         "transition", "register"})


@dataclass(slots=True)
class Part:
    """One request's worth of lines, and its gzip body when the writer compresses."""

    raw: bytes
    gz: bytes | None = None
    long: bool = False  # for the long-retention target
    lines: int = 0  # 0: unknown, counted when needed


@dataclass(slots=True)
class Rejected:
    lines: list[bytes] = field(default_factory=list)
    count: int = 0
    messages: list[str] = field(default_factory=list)

    def add(self, line: bytes, message: str) -> None:
        self.count += 1
        if len(self.lines) < MAX_REJECTED_QUOTED:
            self.lines.append(line)
        if message not in self.messages and len(self.messages) < 5:
            self.messages.append(message)


class InfluxWriter:
    """Formats samples and events into line protocol and delivers bodies to InfluxDB.

    ``tags_for_channel(index)`` gives a channel's tags (``kind`` picks the measurement
    when ``measurement: per_kind``); ``base_tags`` go on every point (gateway, site)."""

    def __init__(self, section: InfluxSection, *,
                 tags_for_channel: Callable[[int], Mapping[str, Any]] | None = None,
                 base_tags: Mapping[str, Any] | None = None,
                 channel_name: Callable[[int], str | None] | None = None,
                 base_dir: Path = Path(".")):
        self.section = section
        self.tags_for_channel = tags_for_channel or (lambda i: {"channel": str(i)})
        self.channel_name = channel_name
        self.base_tags = {**(base_tags or {}), **section.tags}
        self.base_dir = base_dir
        self._series: lineproto.SeriesTable | None = None
        self._stats_series: lineproto.SeriesTable | None = None
        self._transport: V1Transport | V2Transport | None = None
        self._stop = asyncio.Event()
        # state for status() and for logging state changes once
        self.state = "idle"  # idle | ok | retrying | unauthorized | no_database | config_error
        self.last_error: str | None = None
        self.points_written = 0
        self.bytes_sent = 0
        self.requests = 0
        self.failures = 0
        self.rejected_points = 0
        self.last_ok_ns = 0
        self._last_loud = 0.0

    # ------------------------------------------------------------------ series
    def channel_tags(self, index: int) -> dict[str, Any]:
        return {**self.base_tags, **self.tags_for_channel(index)}

    def _measurement(self, tags: Mapping[str, Any]) -> str:
        if self.section.measurement == "per_kind":
            return str(tags.get("kind") or self.section.measurement_name)
        return self.section.measurement_name

    def make_series(self, n: int) -> lineproto.SeriesTable:
        keys = []
        for i in range(n):
            tags = self.channel_tags(i)
            keys.append(lineproto.series_key(self._measurement(tags), tags))
        return lineproto.SeriesTable(keys)

    def make_stats_series(self, n: int) -> lineproto.SeriesTable:
        return lineproto.SeriesTable(
            lineproto.series_key(self.section.stats_measurement, self.channel_tags(i)) for i in range(n))

    def series(self, n: int) -> lineproto.SeriesTable:
        if self._series is None or len(self._series) < n:
            self._series = self.make_series(max(n, 2 * len(self._series or [])))
        return self._series

    def stats_series(self, n: int) -> lineproto.SeriesTable:
        if self._stats_series is None or len(self._stats_series) < n:
            self._stats_series = self.make_stats_series(max(n, 2 * len(self._stats_series or [])))
        return self._stats_series

    # ------------------------------------------------------------------ formatting
    def format_batch(self, batch: Batch, series: lineproto.SeriesTable | None = None) -> bytes:
        if not len(batch):
            return b""
        return lineproto.format_samples(batch, series or self.series(int(batch.channel.max()) + 1))

    def format_event(self, event: Mapping[str, Any], *, seq: int | None = None,
                     ts_ns: int | None = None) -> bytes:
        etype = str(event.get("type") or "event")
        s = self.section
        meas = s.alarms_measurement if etype.startswith("alarm") else s.events_measurement
        tags: dict[str, Any] = {**self.base_tags, "type": etype}
        fields: dict[str, Any] = {}
        index = event.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            index = None
        personal = event.get("personal")
        if etype == "register" and isinstance(personal, list) and isinstance(event.get("data"), dict):
            # ID card and phone numbers stay out of the time-series store
            paths = [p for p in personal if isinstance(p, str)]
            event = {**event, "data": redact(event["data"], paths, "omitted")}
        for k, v in event.items():
            if k in ("type", "ts", "index", "personal"):
                continue
            if k == "channel" and isinstance(v, int) and not isinstance(v, bool):
                index = v
                continue
            if k in _EVENT_TAGS and isinstance(v, str):
                tags[k] = v
                continue
            fields[k] = v
        if index is not None:
            # the channel's place in the plant, as on its samples
            ctags = self.channel_tags(index)
            if tags.get("channel") in (None, ctags.get("channel")):
                for tk in ("channel", "device", "kind", "unit", "area", "hazard_source"):
                    if ctags.get(tk) is not None:
                        tags.setdefault(tk, ctags[tk])
        if seq is not None:
            fields["journal_seq"] = seq
        ts = event.get("ts")
        ts = int(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) and ts > 0 else ts_ns
        if ts is None:
            ts = time.time_ns()
        return lineproto.format_event(meas, tags, fields, ts)

    def format_stats(self, closed: list[ClosedInterval]) -> bytes:
        parts = []
        for c in closed:
            if len(c.channels):
                series = self.stats_series(int(c.channels.max()) + 1)
                parts.append(lineproto.format_stats(series, c.channels, c.start_ns, c.vmin, c.vmax,
                                                     c.mean, c.count, c.total))
        return b"".join(parts)

    # ------------------------------------------------------------------ delivery
    def _secrets(self) -> tuple[str | None, str | None]:
        s = self.section
        password = s.password
        token = s.token
        if s.password_file is not None:
            password = read_secret(s.password_file, self.base_dir)
        if s.token_file is not None:
            token = read_secret(s.token_file, self.base_dir)
        return password, token

    def open(self) -> None:
        """Build the transport (reads the secret files). Raises SecretFileError."""
        if self._transport is not None:
            return
        password, token = self._secrets()
        if self.section.api == "v2":
            if not token:
                raise SecretFileError("influxdb api v2 needs a token (token or token_file): it is empty")
            self._transport = V2Transport(self.section, token=token)
        else:
            self._transport = V1Transport(self.section, password=password, token=token)

    async def close(self) -> None:
        self._stop.set()
        if self._transport is not None:
            await self._transport.close()
            self._transport = None

    def _target(self) -> str:
        s = self.section
        if s.api == "v2":
            return f"{s.url} bucket {s.bucket!r} (org {s.org!r})"
        rp = f", retention policy {s.retention_policy!r}" if s.retention_policy else ""
        return f"{s.url} database {s.database!r}{rp}"

    def _set_state(self, state: str, error: str | None) -> None:
        prev = self.state
        self.state, self.last_error = state, error
        now = time.monotonic()
        if state == "ok":
            if prev not in ("ok", "idle"):
                log.info("influxdb %s: writing again", self._target())
            return
        # log a new failure at ERROR; repeat an unchanged one at ERROR only every 10 minutes
        if state != prev or now - self._last_loud > 600:
            self._last_loud = now
            log.error("influxdb %s: %s", self._target(), error)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await within(self._stop.wait(), seconds)
        if self._stop.is_set():
            raise asyncio.CancelledError

    @property
    def gzips(self) -> bool:
        """Whether this writer compresses bodies itself (v2: the client does)."""
        return self.section.gzip and self.section.api == "v1"

    def prepare(self, body: bytes, *, long: bool = False) -> list[Part]:
        """Cut a body into requests of at most ``batch_points`` lines and compress them.
        CPU only, thread-safe: run it off the event loop, ahead of the writes. ``long``:
        for the long-retention target (statistics, alarms, events)."""
        return [Part(c, _gzip(c) if self.gzips else None, long, lineproto.count_lines(c))
                for c in lineproto.split_lines(body, self.section.batch_points)]

    def prepare_segments(self, segments: list[tuple[bytes, int]], *, long: bool = False) -> list[Part]:
        """Like :meth:`prepare` for bodies whose line counts are known (no scanning):
        adjacent segments are joined up to ``batch_points`` lines a request."""
        limit = self.section.batch_points
        parts: list[Part] = []
        group: list[bytes] = []
        lines = 0

        def flush() -> None:
            nonlocal group, lines
            if group:
                raw = b"".join(group)
                parts.append(Part(raw, _gzip(raw) if self.gzips else None, long, lines))
            group, lines = [], 0

        for body, n in segments:
            if not n:
                continue
            if n > limit:
                flush()
                parts.extend(self.prepare(body, long=long))
                continue
            if lines + n > limit:
                flush()
            group.append(body)
            lines += n
        flush()
        return parts

    async def _post_once(self, body: bytes, compressed: bytes | None = None, long: bool = False) -> Reply:
        assert self._transport is not None
        payload = body
        gz = self.gzips
        if gz and compressed is not None:
            payload = compressed
        elif gz:  # zlib releases the GIL: compress off the loop; wbits=31 makes a gzip member
            payload = await asyncio.get_running_loop().run_in_executor(None, _gzip, body)
        self.requests += 1
        reply = await self._transport.write(payload, gz, long)
        if reply.ok:
            self.bytes_sent += len(payload)
        return reply

    async def _post_until_answered(self, body: bytes, compressed: bytes | None = None,
                                   long: bool = False) -> Reply:
        """Post until the server accepted the body or rejected its content (400/413/422).

        Transient failures back off exponentially up to ``max_backoff``; auth failures and
        a missing database retry every ``max_backoff`` with an ERROR."""
        self.open()
        backoff = Backoff(0.5, self.section.max_backoff)
        while True:
            reply = await self._post_once(body, compressed, long)
            st = reply.status
            if reply.ok:
                self._set_state("ok", None)
                self.last_ok_ns = time.time_ns()
                return reply
            self.failures += 1
            if st in (400, 413, 422) and _is_point_error(reply.message):
                return reply
            if st in (401, 403):
                self._set_state("unauthorized", f"HTTP {st} {reply.message or 'unauthorized'}: check the "
                                "credentials (username/password or token); nothing is dropped, retrying")
                await self._sleep(self.section.max_backoff)
                continue
            if st == 404 or (st in (400, 500) and "not found" in reply.message):
                if await self._create_database(reply, long):
                    continue
                await self._sleep(self.section.max_backoff)
                continue
            # 0 (connection refused, timeout), 5xx, 429, anything else: back off and retry
            what = f"HTTP {st}: {reply.message}" if st else reply.message
            self._set_state("retrying", f"write failed ({what}); the journal keeps everything, retrying")
            await self._sleep(backoff.next())

    async def _create_database(self, reply: Reply, long: bool = False) -> bool:
        s = self.section
        assert self._transport is not None
        if s.api == "v2":
            self._set_state("no_database", f"{reply.message}; create it: influx bucket create -n {s.bucket} "
                            f"-o {s.org} (and give the token write access to it)")
            return False
        if "retention policy" in reply.message:
            rp = s.long_retention_policy if long else s.retention_policy
            self._set_state("no_database", f"{reply.message}; create it: CREATE RETENTION POLICY "
                            f"\"{rp}\" ON \"{s.database}\" DURATION <d> REPLICATION 1")
            return False
        if s.create_database:
            created = await self._transport.create_database()
            if created.ok:
                log.info("influxdb %s: created database %r", s.url, s.database)
                return True
            why = created.message or f"HTTP {created.status}"
        else:
            why = "create_database is off"
        self._set_state("no_database", f"database {s.database!r} does not exist and was not created ({why}); "
                        f"create it as an admin: CREATE DATABASE \"{s.database}\"")
        return False

    async def write(self, body: bytes, *, long: bool = False) -> Rejected:
        """Deliver ``body`` (complete lines); returns the lines the server refused.

        Returns only when every line was either written or refused by the server; runs
        until cancelled while the server is unreachable."""
        parts = await asyncio.get_running_loop().run_in_executor(None, lambda: self.prepare(body, long=long))
        return await self.write_prepared(parts)

    async def write_prepared(self, parts: list[Part]) -> Rejected:
        """Deliver parts made by :meth:`prepare` (see :meth:`write`)."""
        rejected = Rejected()
        for p in parts:
            await self._write_split(p.raw, rejected, p.lines or None, p.gz, p.long)
        return rejected

    async def _write_split(self, body: bytes, rejected: Rejected, n_lines: int | None,
                           compressed: bytes | None = None, long: bool = False) -> None:
        reply = await self._post_until_answered(body, compressed, long)
        n = lineproto.count_lines(body) if n_lines is None else n_lines
        if reply.ok:
            self.points_written += n
            return
        if n <= 1:
            line = body.rstrip(b"\n")
            rejected.add(line, reply.message or f"HTTP {reply.status}")
            self.rejected_points += 1
            log.debug("influxdb refused a line (%s): %s", reply.message,
                        line[:300].decode(errors="replace"))
            return
        # split at the line end nearest the middle, write both halves
        half = n // 2
        cut = _nth_newline(body, half) + 1
        await self._write_split(body[:cut], rejected, half, None, long)
        await self._write_split(body[cut:], rejected, n - half, None, long)

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state, "last_error": self.last_error, "target": self._target(),
            "points_written": self.points_written, "bytes_sent": self.bytes_sent,
            "requests": self.requests, "failures": self.failures,
            "rejected_points": self.rejected_points, "last_ok_ns": self.last_ok_ns,
        }


def _nth_newline(body: bytes, n: int) -> int:
    arr = np.frombuffer(body, np.uint8)
    return int(np.flatnonzero(arr == 10)[n - 1])


def _gzip(body: bytes) -> bytes:
    return zlib.compress(body, 1, wbits=31)
