"""The InfluxDB historian: a journal consumer that stores every sample, event and
5-minute statistic in InfluxDB, and catches up after outages.

Two layers:

- :class:`InfluxWriter` knows InfluxDB and nothing of the gateway: it formats Batches
  and events into line protocol (gateway/lineproto.py, in bulk), and delivers a body
  until the server took it: retrying with backoff on connection errors, timeouts and
  5xx; retrying slowly and loudly on 401/403; creating a missing database (v1) or
  naming what to create; and, on a 400, splitting the body in halves until the
  rejected lines are isolated, so the good ones are written and the stream moves on.
  central/ uses it to store what it receives (``InfluxWriter(section, tags_for_channel=...)``).
- :class:`HistorianService` is the gateway's ``influxdb`` service: it reads the journal
  after its cursor, batches by size and time, formats the next chunk while the
  previous one is on the wire, and advances its cursor only after the server
  acknowledged (204). Rejected lines become ``influx_rejected`` events in the journal.

Line protocol writes are idempotent (same series and timestamp overwrite), so a chunk
re-sent after a crash or a timeout never duplicates points. Schema: docs/historian.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import random
import re
import stat
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import numpy.typing as npt

from gateway.admin import registers
from gateway.core import chantable
from gateway.core.batch import Batch, Quality
from gateway.core.config import InfluxSection
from gateway.core.record import EVENT, SAMPLES, Record
from gateway.historian import lineproto

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger(__name__)

CONSUMER = "influxdb"
STATS_CONSUMER = "influxdb.stats"
REJECTED_EVENT = "influx_rejected"
#: rejected lines quoted in one influx_rejected event (the count covers all of them)
MAX_REJECTED_QUOTED = 20


class ConfigProblem(Exception):
    """Something the operator must fix (a secret file with loose permissions, ...)."""


def read_secret(path: Path, base_dir: Path | None = None) -> str:
    """A password or token from a file that only its owner can read (mode 0600)."""
    p = path if path.is_absolute() or base_dir is None else base_dir / path
    try:
        st = p.stat()
    except OSError as e:
        raise ConfigProblem(f"cannot read secret file {p}: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigProblem(f"secret file {p} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                            f"chmod 600 {p}")
    return p.read_text().strip()


# --------------------------------------------------------------------------- transports

@dataclass(slots=True)
class Reply:
    """What the server said to one write: status 0 means no answer (connection, timeout)."""

    status: int
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status in (200, 204)


def _error_text(text: str) -> str:
    try:
        doc = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(doc, dict):
        return str(doc.get("error") or doc.get("message") or text).strip()[:500]
    return text.strip()[:500]


class V1Transport:
    """``POST /write?db=&rp=&precision=ns`` (InfluxDB 1.x; 2.x/3.x v1 compatibility)."""

    def __init__(self, section: InfluxSection, *, password: str | None, token: str | None):
        self.section = section
        headers = {"User-Agent": "safegw-historian"}
        if token:
            headers["Authorization"] = f"Token {token}"
        auth = httpx.BasicAuth(section.username, password or "") if section.username and not token else None
        timeout = httpx.Timeout(section.timeout, connect=min(section.timeout, 5.0))
        self.client = httpx.AsyncClient(base_url=section.url.rstrip("/"), headers=headers, auth=auth,
                                        timeout=timeout)
        self.params = {"db": section.database, "precision": "ns"}
        if section.retention_policy:
            self.params["rp"] = section.retention_policy
        self.long_params = dict(self.params)
        if section.long_retention_policy:
            self.long_params["rp"] = section.long_retention_policy

    async def write(self, body: bytes, gzipped: bool, long: bool = False) -> Reply:
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        try:
            params = self.long_params if long else self.params
            r = await self.client.post("/write", params=params, content=body, headers=headers)
        except httpx.TimeoutException as e:
            return Reply(0, f"timeout: {type(e).__name__}")
        except httpx.HTTPError as e:
            return Reply(0, f"{type(e).__name__}: {e}")
        return Reply(r.status_code, "" if r.status_code in (200, 204) else _error_text(r.text))

    async def create_database(self) -> Reply:
        q = f'CREATE DATABASE "{self.section.database}"'
        try:
            r = await self.client.post("/query", params={"q": q})
        except httpx.HTTPError as e:
            return Reply(0, f"{type(e).__name__}: {e}")
        if r.status_code != 200:
            return Reply(r.status_code, _error_text(r.text))
        try:
            results = r.json().get("results", [])
        except ValueError:
            return Reply(500, r.text[:200])
        for res in results:
            if "error" in res:
                return Reply(403, str(res["error"]))
        return Reply(200)

    async def close(self) -> None:
        await self.client.aclose()


class V2Transport:
    """influxdb-client's write API (InfluxDB 2.x/3.x: ``/api/v2/write``), run in a thread.

    The client's own retries are off: the writer decides about retries and splitting."""

    def __init__(self, section: InfluxSection, *, token: str):
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.section = section
        self.bucket = section.bucket or ""
        self.long_bucket = section.long_bucket or self.bucket
        self.org = section.org or ""
        self.client = InfluxDBClient(url=section.url, token=token, org=self.org,
                                     timeout=int(section.timeout * 1000), enable_gzip=section.gzip,
                                     retries=False)
        self.api = self.client.write_api(write_options=SYNCHRONOUS)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="influx-v2")

    def _write(self, body: bytes, long: bool) -> Reply:
        from influxdb_client import WritePrecision
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError as Urllib3Error

        try:
            self.api.write(bucket=self.long_bucket if long else self.bucket, org=self.org, record=body,
                           write_precision=WritePrecision.NS)  # type: ignore[arg-type]
        except ApiException as e:
            return Reply(int(e.status or 0), _error_text(e.body or e.reason or ""))
        except (Urllib3Error, OSError) as e:
            return Reply(0, f"{type(e).__name__}: {e}")
        return Reply(204)

    async def write(self, body: bytes, gzipped: bool, long: bool = False) -> Reply:
        # the client compresses itself (enable_gzip), so it gets the plain body
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._write, body, long)

    async def create_database(self) -> Reply:
        return Reply(404, f"bucket {self.section.bucket!r} not found in org {self.section.org!r}")

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self.client.close)
        self._pool.shutdown(wait=False)


# --------------------------------------------------------------------------- the writer

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
                 base_dir: Path | None = None):
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
            event = {**event, "data": registers.redact(event["data"], paths, "omitted")}
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
        """Build the transport (reads the secret files). Raises ConfigProblem."""
        if self._transport is not None:
            return
        password, token = self._secrets()
        if self.section.api == "v2":
            if not token:
                raise ConfigProblem("influxdb api v2 needs a token (token or token_file)")
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
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
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
        backoff = 0.5
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
            await self._sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, self.section.max_backoff)

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


# --------------------------------------------------------------------------- statistics

@dataclass(slots=True)
class ClosedInterval:
    start_ns: int
    channels: npt.NDArray[np.int64]
    vmin: npt.NDArray[np.float64]
    vmax: npt.NDArray[np.float64]
    mean: npt.NDArray[np.float64]
    count: npt.NDArray[np.int64]
    total: npt.NDArray[np.int64]


class _Acc:
    __slots__ = ("count", "first_seq", "max", "min", "sum", "total")

    def __init__(self, n: int, seq: int):
        self.min = np.full(n, np.inf)
        self.max = np.full(n, -np.inf)
        self.sum = np.zeros(n)
        self.count = np.zeros(n, np.int64)
        self.total = np.zeros(n, np.int64)
        self.first_seq = seq

    def grow(self, n: int) -> None:
        if n <= len(self.min):
            return
        k = n - len(self.min)
        self.min = np.concatenate([self.min, np.full(k, np.inf)])
        self.max = np.concatenate([self.max, np.full(k, -np.inf)])
        self.sum = np.concatenate([self.sum, np.zeros(k)])
        self.count = np.concatenate([self.count, np.zeros(k, np.int64)])
        self.total = np.concatenate([self.total, np.zeros(k, np.int64)])


class IntervalStats:
    """Per-channel min, max, mean and count of good samples per fixed interval (5 min),
    accumulated vectorized from Batches.

    An interval closes once data ``grace`` past its end has been seen (or the clock
    passed it while the consumer is caught up). Samples for an interval already closed
    are counted in ``late_samples`` and left out: re-emitting the interval from them
    alone would overwrite the complete figures."""

    def __init__(self, interval_s: float = 300.0, grace_s: float = 10.0, closed_upto_ns: int = 0, n: int = 0):
        self.interval = int(interval_s * 1e9)
        self.grace = int(grace_s * 1e9)
        self.closed_upto = closed_upto_ns
        self.open: dict[int, _Acc] = {}
        self.high_water = 0
        self.late_samples = 0
        self.n = n

    def add(self, batch: Batch, seq: int) -> None:
        if not len(batch):
            return
        self.n = max(self.n, int(batch.channel.max()) + 1)
        start = batch.ts - batch.ts % self.interval
        lo, hi = int(start.min()), int(start.max())
        self.high_water = max(self.high_water, batch.ts_max)
        if hi < self.closed_upto:
            self.late_samples += len(batch)
            return
        good = (batch.quality < Quality.UNCERTAIN) & np.isfinite(batch.value)
        buckets = [lo] if lo == hi else np.unique(start).tolist()
        for b in buckets:
            if b < self.closed_upto:
                self.late_samples += int((start == b).sum())
                continue
            m = None if lo == hi else start == b
            acc = self.open.get(b)
            if acc is None:
                acc = self.open[b] = _Acc(self.n, seq)
            acc.grow(self.n)
            ch = batch.channel if m is None else batch.channel[m]
            np.add.at(acc.total, ch, 1)
            g = good if m is None else good & m
            chg = batch.channel[g]
            vg = batch.value[g]
            np.minimum.at(acc.min, chg, vg)
            np.maximum.at(acc.max, chg, vg)
            np.add.at(acc.sum, chg, vg)
            np.add.at(acc.count, chg, 1)

    def close(self, now_ns: int | None = None) -> list[ClosedInterval]:
        """Close intervals whose end + grace lies behind the data (or behind ``now_ns``)."""
        horizon = max(self.high_water, now_ns or 0)
        out = []
        for b in sorted(self.open):
            if b + self.interval + self.grace > horizon:
                break
            acc = self.open.pop(b)
            ch = np.flatnonzero(acc.total).astype(np.int64)
            cnt = acc.count[ch]
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = acc.sum[ch] / cnt
            out.append(ClosedInterval(b, ch, acc.min[ch], acc.max[ch], mean, cnt, acc.total[ch]))
            self.closed_upto = max(self.closed_upto, b + self.interval)
        return out

    def first_open_seq(self) -> int | None:
        return min((a.first_seq for a in self.open.values()), default=None)


# --------------------------------------------------------------------------- the service

@dataclass(slots=True)
class Chunk:
    upto: int  # last journal sequence in the chunk
    parts: list[Part]
    points: int
    records: int
    closed_upto: int | None  # statistics closed up to here (persist after delivery)
    stats_seq: int  # the statistics cursor may advance to here after delivery
    origin: str = "journal"


class HistorianService:
    """The gateway's ``influxdb`` service: journal → InfluxDB, cursor advanced on 204."""

    name = "influxdb"

    def __init__(self, gw: Gateway, section: InfluxSection):
        self.gw = gw
        self.section = section
        self.journal = gw.journal
        table = gw.table
        gcfg = gw.cfg.gateway
        base = {"gateway": gcfg.id, "site": gcfg.site}
        # the same tags central gives the points it writes from the channel_table event
        doc = chantable.table_doc(table, gcfg.id, gcfg.site, 0)

        def tags_for_channel(i: int) -> dict[str, Any]:
            return chantable.tags(doc, i)

        self.writer = InfluxWriter(section, tags_for_channel=tags_for_channel, base_tags=base,
                                   base_dir=gw.cfg.base_dir)
        self.n_channels = len(table)
        self.stats_path = Path(gw.state_dir) / "historian-stats.json"
        self.stats: IntervalStats | None = None
        self._fmt = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="influx-format")
        self.cursor = 0
        self.acked = asyncio.Condition()
        self._draining = False
        self._wake = asyncio.Event()
        self.chunks = 0
        self.ready = False
        self._ack_task: asyncio.Task[None] | None = None
        self.skipped_records = 0
        self._split_long = bool(section.long_retention_policy if section.api == "v1" else section.long_bucket)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        # registered even when the writer cannot open yet: the journal keeps the data for it
        self.cursor = self.journal.register(CONSUMER)
        if self.section.stats:
            self.journal.register(STATS_CONSUMER)
        log.info("influxdb historian: %s, cursor %d, lag %d", self.writer._target(), self.cursor,
                 self.journal.lag(CONSUMER))

    async def stop(self) -> None:
        await self.writer.close()
        self._fmt.shutdown(wait=False, cancel_futures=True)

    async def drain(self) -> None:
        """Deliver what is journaled now (the caller bounds the time)."""
        target = self.journal.last_seq
        self._draining = True
        self._wake.set()
        async with self.acked:
            await self.acked.wait_for(lambda: self.cursor >= target)

    def status(self) -> dict[str, Any]:
        return {**self.writer.status(), "cursor": self.cursor, "lag": self.journal.lag(CONSUMER),
                "late_stat_samples": self.stats.late_samples if self.stats else 0,
                "skipped_records": self.skipped_records}

    # ------------------------------------------------------------------ the loop
    async def run(self) -> None:
        while True:
            try:
                await self._run_once()
            except (ConfigProblem, OSError, RuntimeError, ValueError, TypeError, KeyError, IndexError) as e:
                # a bug or a broken record must not stop the gateway: say it, restart from the cursor
                log.exception("influxdb historian failed (%s); restarting from cursor %d", e, self.cursor)
                await asyncio.sleep(5.0)

    def _new_stats(self) -> None:
        if not self.section.stats:
            return
        closed = 0
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            closed = int(json.loads(self.stats_path.read_text())["closed_upto"])
        self.stats = IntervalStats(self.section.stats_every, grace_s=max(10.0, 2 * self.section.flush_every),
                                   closed_upto_ns=closed, n=self.n_channels)

    async def _open_writer(self) -> None:
        """Open the writer; a fixable problem (secret file permissions) is reported and
        retried, so the gateway keeps monitoring and the journal keeps the data meanwhile."""
        while True:
            try:
                self.writer.open()
                return
            except ConfigProblem as e:
                self.writer._set_state("config_error", f"{e}; not writing until fixed, the journal keeps "
                                       "everything")
                await asyncio.sleep(self.section.max_backoff)

    async def _run_once(self) -> None:
        await self._open_writer()
        self._new_stats()
        await self._replay_stats()
        self.ready = True
        pending: asyncio.Task[None] | None = None
        after = self.cursor
        try:
            while True:
                chunk = await self._next_chunk(after)
                if chunk is None:
                    continue
                after = chunk.upto
                if pending is not None:
                    await pending
                pending = asyncio.create_task(self._deliver(chunk), name="influxdb-write")
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pending
            if self._ack_task is not None:  # what was written gets acknowledged
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(self._ack_task)

    async def _replay_stats(self) -> None:
        """Rebuild the statistics of intervals still open at the last stop."""
        if self.stats is None:
            return
        s_cursor = self.journal.cursor(STATS_CONSUMER)
        if not self.stats_path.exists():
            # first start with statistics on (the file marks it); for a historian that ran
            # before without them, start from here rather than recompute the whole journal
            await asyncio.get_running_loop().run_in_executor(None, self._save_stats, 0)
            if self.cursor > 0:
                log.info("influxdb historian: statistics start at journal record %d", self.cursor)
                return
        loop = asyncio.get_running_loop()
        after = s_cursor
        while after < self.cursor:
            recs = await self.journal.read(after, 1000, max_samples=200_000)
            recs = [r for r in recs if r.seq <= self.cursor]
            if not recs:
                break
            await loop.run_in_executor(self._fmt, self._stats_only, recs)
            after = recs[-1].seq

    def _stats_only(self, recs: list[Record]) -> None:
        assert self.stats is not None
        for r in recs:
            if r.kind == SAMPLES:
                self.stats.add(r.batch(), r.seq)

    async def _next_chunk(self, after: int) -> Chunk | None:
        """Read records after ``after`` until a batch is full or ``flush_every`` passed
        since the first one arrived; format them (in the formatting thread)."""
        loop = asyncio.get_running_loop()
        limit_points = self.section.batch_points
        recs: list[Record] = []
        points = 0
        last = after
        deadline: float | None = None
        while True:
            got = await self.journal.read(last, 1000, max_samples=max(1, limit_points - points))
            if got:
                recs.extend(got)
                last = got[-1].seq
                points += sum(r.n if r.kind == SAMPLES else 1 for r in got)
                if deadline is None:
                    deadline = loop.time() + self.section.flush_every
            if points >= limit_points or (recs and self._draining):
                break
            if self.journal.last_seq > last:
                continue
            now = loop.time()
            timeout: float | None
            if recs:
                assert deadline is not None
                if now >= deadline:
                    break
                timeout = deadline - now
            else:
                timeout = self._stats_timeout()
            self._wake.clear()
            waiter = asyncio.ensure_future(self.journal.wait(last, timeout))
            woke = asyncio.ensure_future(self._wake.wait())
            done, _ = await asyncio.wait({waiter, woke}, return_when=asyncio.FIRST_COMPLETED)
            for t in (waiter, woke):
                if t not in done:
                    t.cancel()
            if not recs and not waiter in done and not self.journal.last_seq > last:  # noqa: E713
                # idle: close statistics intervals by the clock
                if self.stats is not None and self.stats.open:
                    return await loop.run_in_executor(self._fmt, self._format, [], last, True)
                if self._draining and last >= self.journal.last_seq:
                    async with self.acked:
                        self.acked.notify_all()
        caught_up = self.journal.last_seq <= last
        return await loop.run_in_executor(self._fmt, self._format, recs, last, caught_up)

    def _stats_timeout(self) -> float | None:
        if self.stats is None or not self.stats.open:
            return None
        end = min(self.stats.open) + self.stats.interval + self.stats.grace
        return max(0.05, (end - time.time_ns()) / 1e9)

    def _format(self, recs: list[Record], upto: int, caught_up: bool) -> Chunk:
        parts: list[tuple[bytes, int]] = []  # raw samples, with their line counts
        long: list[tuple[bytes, int]] = []  # events, alarms, statistics: kept longer when so configured
        step = self.section.batch_points
        points = 0
        w = self.writer
        for r in recs:
            if r.kind == SAMPLES:
                try:
                    b = r.batch()
                except ValueError as e:  # a damaged record must not block the stream
                    log.error("journal record %d holds no readable batch (%s); skipped", r.seq, e)
                    self.skipped_records += 1
                    continue
                if len(b) and (int(b.ts.min()) < 0 or int(b.channel.min()) < 0):
                    ok = (b.ts >= 0) & (b.channel >= 0)
                    log.error("journal record %d: %d sample(s) with a time before 1970 or a negative "
                              "channel cannot be stored; skipped", r.seq, int((~ok).sum()))
                    b = b.select(ok)
                if not len(b):
                    continue
                series = w.series(max(self.n_channels, int(b.channel.max()) + 1))
                for lo in range(0, len(b), step):  # request-sized pieces: no need to find line ends
                    piece = b if len(b) <= step else Batch(b.channel[lo:lo + step], b.ts[lo:lo + step],
                                                           b.value[lo:lo + step], b.quality[lo:lo + step])
                    parts.append((w.format_batch(piece, series), len(piece)))
                points += len(b)
                if self.stats is not None:
                    self.stats.add(b, r.seq)
            elif r.kind == EVENT:
                ev: Any = None
                with contextlib.suppress(ValueError):
                    ev = r.event()
                if not isinstance(ev, dict):
                    log.error("journal record %d is not a JSON object event; skipped", r.seq)
                    self.skipped_records += 1
                    continue
                long.append((w.format_event(ev, seq=r.seq, ts_ns=r.ts_min), 1))
                points += 1
        closed_upto = None
        stats_seq = upto
        if self.stats is not None:
            closed = self.stats.close(time.time_ns() if caught_up else None)
            if closed:
                long.append((w.format_stats(closed), sum(len(c.channels) for c in closed)))
                points += sum(len(c.channels) for c in closed)
                closed_upto = self.stats.closed_upto
            first_open = self.stats.first_open_seq()
            if first_open is not None:
                stats_seq = min(upto, first_open - 1)
        prepared = w.prepare_segments(parts) + w.prepare_segments(long, long=self._split_long)
        return Chunk(upto, prepared, points, len(recs), closed_upto, stats_seq)

    async def _deliver(self, chunk: Chunk) -> None:
        if chunk.parts:
            rejected = await self.writer.write_prepared(chunk.parts)
            if rejected.count:
                self._report_rejected(rejected, chunk)
        # the acknowledgement (a journal commit, an fsync) need not hold up the next write:
        # chain it behind the previous one so cursors still advance in order
        self._ack_task = asyncio.create_task(self._ack(chunk, self._ack_task), name="influxdb-ack")

    async def _ack(self, chunk: Chunk, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await previous
        if chunk.closed_upto is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._save_stats, chunk.closed_upto)
        if chunk.upto > self.cursor:
            await self.journal.ack(CONSUMER, chunk.upto)
        if self.stats is not None and chunk.stats_seq > self.journal.cursor(STATS_CONSUMER):
            await self.journal.ack(STATS_CONSUMER, chunk.stats_seq)
        self.chunks += 1
        async with self.acked:
            self.cursor = max(self.cursor, chunk.upto)
            self.acked.notify_all()

    def _report_rejected(self, rejected: Rejected, chunk: Chunk) -> None:
        # an influx_rejected event that is itself rejected is only logged: no loop
        own = [ln for ln in rejected.lines if b"type=" + REJECTED_EVENT.encode() in ln]
        if own and len(own) == len(rejected.lines):
            log.error("influxdb refused the record of its own rejections: %s", rejected.messages)
            return
        log.error("influxdb refused %d point(s) of journal records up to %d: %s", rejected.count, chunk.upto,
                  "; ".join(rejected.messages))
        self.gw.emit_events([{
            "type": REJECTED_EVENT, "ts": time.time_ns(), "count": rejected.count,
            "message": "; ".join(rejected.messages), "upto_seq": chunk.upto,
            "lines": [ln.decode(errors="replace") for ln in rejected.lines],
        }])

    def _save_stats(self, closed_upto: int) -> None:
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"closed_upto": closed_upto}))
        os.replace(tmp, self.stats_path)


def build_service(gw: Gateway, section: InfluxSection) -> HistorianService:
    return HistorianService(gw, section)
