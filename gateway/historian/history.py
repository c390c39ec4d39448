"""A channel's history: from InfluxDB when it is configured, else from the journal.

:func:`query_history` is what the admin API exposes and what ``safegw history``
prints. Raw samples come back as (time, value, quality); with ``every`` the values are
aggregated per interval as (time, mean, min, max, count), where only samples with a
value count (bad ones carry none, see docs/historian.md).

The journal keeps far less than InfluxDB (``journal.max_age`` and ``journal.quota``,
30 days / 2 GB by default): an answer from it says so in ``note``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import json
import math
import re
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from gateway.core import display
from gateway.core.batch import Batch, Quality, quality_label
from gateway.core.config import Config, InfluxSection
from gateway.core.display import Rendering
from gateway.core.secrets import SecretFileError, read_secret
from gateway.core.units import iso_ns, parse_duration
from gateway.store import queries

RAW_COLUMNS = ["time", "value", "quality"]
AGG_COLUMNS = ["time", "mean", "min", "max", "count"]
MAX_ROWS_DEFAULT = 100_000


class HistoryError(Exception):
    """The history could not be read (unknown channel, unreachable server, ...)."""


@dataclass
class History:
    channel: str
    source: str  # "influxdb" | "journal"
    start_ns: int
    end_ns: int
    every_s: float | None
    columns: list[str]
    rows: list[list[Any]]  # time in ns first
    note: str | None = None
    truncated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel, "source": self.source, "from": fmt_ns(self.start_ns),
            "to": fmt_ns(self.end_ns), "every_s": self.every_s, "note": self.note,
            "truncated": self.truncated, "columns": self.columns,
            "rows": [dict(zip(self.columns, r, strict=True)) for r in self.rows],
        }


# --------------------------------------------------------------------------- times

_REL = re.compile(r"^\s*(?:now)?\s*(?:([+-])\s*([0-9.]+\s*[a-zµ]+))?\s*$", re.I)


def parse_time(text: str, now_ns: int | None = None) -> int:
    """``now``, ``-1h``, ``now-30m``, ISO 8601 (naive = UTC), or epoch seconds → ns since the epoch."""
    now = time.time_ns() if now_ns is None else now_ns
    s = text.strip()
    m = _REL.match(s)
    if m and (s.lower().startswith("now") or m.group(1)):
        if not m.group(1):
            return now
        secs = parse_duration(m.group(2).replace(" ", ""))
        delta = round(secs * 1e9)
        return now - delta if m.group(1) == "-" else now + delta
    if re.fullmatch(r"[0-9]+", s):
        return int(s) * 10**9 if int(s) < 10**11 else int(s)  # epoch seconds, or already ns
    if re.fullmatch(r"[0-9]+\.[0-9]+", s):
        return round(float(s) * 1e9)
    iso = s.replace(" ", "T", 1) if re.match(r"^\d{4}-\d\d-\d\d \d", s) else s
    frac_ns = 0
    fm = re.search(r"\.(\d+)", iso)
    if fm and len(fm.group(1)) > 6:  # datetime keeps microseconds: carry the rest ourselves
        digits = fm.group(1)
        frac_ns = int(digits[:9].ljust(9, "0")) % 1000
        iso = iso[: fm.start(1)] + digits[:6] + iso[fm.end(1):]
    try:
        d = dt.datetime.fromisoformat(iso.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise HistoryError(f"{text!r} is not a time: write ISO 8601 (2026-11-28T08:00:00Z, "
                           "naive times are UTC), 'now', or a relative time like -1h, -30m, now-2d") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    seconds = int(d.timestamp() // 1)
    return seconds * 10**9 + d.microsecond * 1000 + frac_ns


def fmt_ns(ns: int) -> str:
    """Times in history output keep their nanoseconds (the journal's resolution)."""
    return iso_ns(ns, digits=9)


# --------------------------------------------------------------------------- channel lookup

@dataclass(slots=True)
class ChannelRef:
    index: int
    name: str
    kind: str
    unit: str


def find_channel(cfg: Config, name: str) -> ChannelRef:
    from gateway.core.channels import ChannelTable

    table = ChannelTable.from_config(cfg)
    try:
        c = table.by_name[name]
    except KeyError:
        close = [n for n in table.names() if name.lower() in n.lower()][:5]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise HistoryError(f"no channel {name!r} in the config{hint}") from None
    return ChannelRef(c.index, c.name, c.kind, c.unit)


def channel_rendering(cfg: Config, name: str) -> Rendering:
    """How a person reads the channel's numbers (gateway/core/display.py)."""
    from gateway.core.channels import ChannelTable

    c = ChannelTable.from_config(cfg).by_name.get(name)
    return display.rendering_of(c.spec) if c is not None else Rendering()


# --------------------------------------------------------------------------- InfluxDB

def _influxql_str(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _influxql_ident(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _measurement(sec: InfluxSection, ch: ChannelRef) -> str:
    return ch.kind if sec.measurement == "per_kind" else sec.measurement_name


def influxql_for(sec: InfluxSection, gateway_id: str, ch: ChannelRef, start_ns: int, end_ns: int,
                 every_s: float | None, limit: int, newest: bool = False) -> str:
    src = _influxql_ident(_measurement(sec, ch))
    if sec.retention_policy:
        src = f"{_influxql_ident(sec.retention_policy)}.{src}"
    where = (f"channel = {_influxql_str(ch.name)} AND gateway = {_influxql_str(gateway_id)} "
             f"AND time >= {int(start_ns)} AND time < {int(end_ns)}")
    order = "ORDER BY time DESC" if newest else "ORDER BY time"
    if every_s:
        every = f"{max(1, round(every_s * 1e9))}ns"
        return (f"SELECT mean(value), min(value), max(value), count(value) FROM {src} WHERE {where} "
                f"GROUP BY time({every}) fill(none) {order} LIMIT {limit + 1}")
    return f"SELECT value, quality FROM {src} WHERE {where} {order} LIMIT {limit + 1}"


def _secrets(sec: InfluxSection, base_dir: Path) -> tuple[str | None, str | None]:
    try:
        pw = read_secret(sec.password_file, base_dir) if sec.password_file else sec.password
        tok = read_secret(sec.token_file, base_dir) if sec.token_file else sec.token
    except SecretFileError as e:
        raise HistoryError(str(e)) from None
    return pw, tok


async def _from_influx_v1(sec: InfluxSection, q: str, base_dir: Path) -> list[list[Any]]:
    pw, tok = _secrets(sec, base_dir)
    headers = {"Authorization": f"Token {tok}"} if tok else {}
    auth = httpx.BasicAuth(sec.username, pw or "") if sec.username and not tok else None
    params = {"db": sec.database, "q": q, "epoch": "ns"}
    try:
        async with httpx.AsyncClient(timeout=sec.timeout, headers=headers, auth=auth) as client:
            r = await client.get(sec.url.rstrip("/") + "/query", params=params)
    except httpx.HTTPError as e:
        raise HistoryError(f"InfluxDB at {sec.url} did not answer ({type(e).__name__}: {e}); "
                           "try --source journal") from None
    if r.status_code != 200:
        raise HistoryError(f"InfluxDB at {sec.url} answered HTTP {r.status_code}: {r.text.strip()[:300]}")
    out: list[list[Any]] = []
    for res in r.json().get("results", []):
        if "error" in res:
            if "database not found" in res["error"]:
                return []
            raise HistoryError(f"InfluxDB: {res['error']}")
        for s in res.get("series", []):
            out.extend(s["values"])
    return out


def _flux_for(sec: InfluxSection, gateway_id: str, ch: ChannelRef, start_ns: int, end_ns: int,
              every_s: float | None) -> str:
    def fs(s: str) -> str:
        return json.dumps(s)

    base = (f"from(bucket: {fs(sec.bucket or '')})"
            f" |> range(start: time(v: {int(start_ns)}), stop: time(v: {int(end_ns)}))"
            f" |> filter(fn: (r) => r._measurement == {fs(_measurement(sec, ch))}"
            f" and r.channel == {fs(ch.name)} and r.gateway == {fs(gateway_id)})")
    if not every_s:
        return (base + ' |> filter(fn: (r) => r._field == "value" or r._field == "quality")'
                ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")'
                ' |> keep(columns: ["_time", "value", "quality"])')
    every = f"{max(1, round(every_s * 1e9))}ns"
    parts = []
    for fn in ("mean", "min", "max", "count"):
        parts.append(f'{fn} = {base} |> filter(fn: (r) => r._field == "value")'
                     f' |> aggregateWindow(every: {every}, fn: {fn}, createEmpty: false, timeSrc: "_start")'
                     f' |> set(key: "_field", value: "{fn}")')
    return "\n".join(parts) + (
        "\nunion(tables: [mean, min, max, count])"
        ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")'
        ' |> keep(columns: ["_time", "mean", "min", "max", "count"])')


def _from_influx_v2_sync(sec: InfluxSection, flux: str, base_dir: Path,
                         every: bool) -> list[list[Any]]:
    from influxdb_client import Dialect, InfluxDBClient
    from influxdb_client.rest import ApiException
    from urllib3.exceptions import HTTPError as Urllib3Error

    _, tok = _secrets(sec, base_dir)
    cols = AGG_COLUMNS[1:] if every else RAW_COLUMNS[1:]
    out = []
    try:
        with InfluxDBClient(url=sec.url, token=tok or "", org=sec.org or "",
                            timeout=int(sec.timeout * 1000)) as client:
            # plain CSV, times as RFC3339Nano text: the client's record objects would cut
            # them to microseconds (datetime)
            it = client.query_api().query_csv(flux, org=sec.org or "", dialect=Dialect(
                header=True, annotations=[], date_time_format="RFC3339Nano"))
            header: list[str] | None = None
            for row in it:
                if not row or not any(row):
                    header = None  # a blank line separates tables; each has its header
                    continue
                if header is None:
                    header = row
                    continue
                rec = dict(zip(header, row, strict=False))
                if "_time" not in rec:
                    continue
                vals: list[Any] = [parse_time(rec["_time"])]
                for c in cols:
                    v = rec.get(c, "")
                    vals.append(None if v == "" else float(v))
                out.append(vals)
    except ApiException as e:
        raise HistoryError(f"InfluxDB at {sec.url} answered HTTP {e.status}: {e.body or e.reason}") from None
    except (Urllib3Error, OSError) as e:
        raise HistoryError(f"InfluxDB at {sec.url} did not answer ({e}); try --source journal") from None
    out.sort(key=lambda r: r[0])
    return out


# --------------------------------------------------------------------------- journal

def _journal_samples(db: sqlite3.Connection, index: int, start_ns: int, end_ns: int, name: str | None = None
                     ) -> tuple[Batch, int | None]:
    """Samples of one channel in [start, end) from the journal (by ``name`` across
    renumberings when given); and the oldest time it holds."""
    b, _ = queries.channel_samples(db, index, start_ns, end_ns, name=name)
    return b, queries.oldest_sample_ts(db)


def aggregate(b: Batch, start_ns: int, every_s: float) -> list[list[Any]]:
    """mean/min/max/count of the samples that carry a value, per interval (vectorized)."""
    usable = (b.quality < Quality.BAD) & np.isfinite(b.value)
    ts, v = b.ts[usable], b.value[usable]
    if not len(ts):
        return []
    step = max(1, round(every_s * 1e9))
    # InfluxDB aligns GROUP BY time() intervals to the epoch; do the same
    order = np.argsort(ts, kind="stable")
    ts, v = ts[order], v[order]
    key = ts - ts % step
    uniq, starts, counts = np.unique(key, return_index=True, return_counts=True)
    sums = np.add.reduceat(v, starts)
    mins = np.minimum.reduceat(v, starts)
    maxs = np.maximum.reduceat(v, starts)
    return [[int(t), float(s / c), float(lo), float(hi), int(c)]
            for t, s, lo, hi, c in zip(uniq, sums, mins, maxs, counts, strict=True)]


def _open_journal_ro(path: Path) -> sqlite3.Connection:
    try:
        return queries.open_readonly(path)
    except FileNotFoundError:
        raise HistoryError(f"no journal at {path} (has the gateway run with this state_dir?)") from None


def _journal_note(cfg: Config, oldest: int | None) -> str:
    j = cfg.journal
    days = j.max_age / 86400
    held = f"; it holds samples from {fmt_ns(oldest)}" if oldest else "; it holds no samples"
    return (f"from the journal, which keeps only {days:g} days and {j.quota / 1e9:g} GB "
            f"(journal.max_age, journal.quota){held}. Configure influxdb: for long-term history.")


# --------------------------------------------------------------------------- the query

ReadRunner = Callable[[Callable[[sqlite3.Connection], Any]], Any]


async def query_history(cfg: Config, channel: str, start_ns: int, end_ns: int,
                        every_s: float | None = None, *, source: str = "auto",
                        limit: int = MAX_ROWS_DEFAULT, run_read: ReadRunner | None = None,
                        newest: bool = False) -> History:
    """A channel's values in [start, end) as a :class:`History`.

    ``source``: ``auto`` (InfluxDB when configured, else the journal), ``influxdb`` or
    ``journal``. Inside the gateway pass ``run_read=gw.journal.run_read`` so journal
    reads use the journal's reader thread; otherwise the file is opened read-only.
    Rows come oldest first; beyond ``limit`` the oldest are kept, or the newest with
    ``newest=True`` (``truncated`` says so)."""
    if end_ns <= start_ns:
        raise HistoryError("--to must be after --from")
    if every_s is not None and every_s <= 0:
        raise HistoryError("--every must be a positive duration")
    ch = find_channel(cfg, channel)
    sec = cfg.influxdb
    use_influx = source == "influxdb" or (source == "auto" and sec is not None)
    if use_influx:
        if sec is None:
            raise HistoryError("no influxdb: section in the config")
        base_dir = cfg.base_dir
        if sec.api == "v2":
            flux = _flux_for(sec, cfg.gateway.id, ch, start_ns, end_ns, every_s)
            rows = await asyncio.to_thread(_from_influx_v2_sync, sec, flux, base_dir, bool(every_s))
        else:
            q = influxql_for(sec, cfg.gateway.id, ch, start_ns, end_ns, every_s, limit, newest)
            rows = await _from_influx_v1(sec, q, base_dir)
            if newest:
                rows.reverse()
        if every_s:
            rows = [[int(r[0]), _f(r[1]), _f(r[2]), _f(r[3]), int(r[4] or 0)] for r in rows]
        else:
            rows = [[int(r[0]), _f(r[1]), int(r[2]) if r[2] is not None else None] for r in rows]
        truncated = len(rows) > limit
        cols = AGG_COLUMNS if every_s else RAW_COLUMNS
        return History(ch.name, "influxdb", start_ns, end_ns, every_s, cols,
                       _cut(rows, limit, newest), None, truncated, {"unit": ch.unit, "kind": ch.kind})

    def work(db: sqlite3.Connection) -> tuple[Batch, int | None]:
        return _journal_samples(db, ch.index, start_ns, end_ns, ch.name)

    if run_read is not None:
        b, oldest = await run_read(work)
    else:
        db = _open_journal_ro(Path(cfg.gateway.state_dir) / "journal.db")
        try:
            b, oldest = await asyncio.to_thread(work, db)
        finally:
            db.close()
    if every_s:
        rows = aggregate(b, start_ns, every_s)
    else:
        rows = [[int(t), (float(v) if math.isfinite(v) and q < Quality.BAD else None), int(q)]
                for t, v, q in zip(b.ts.tolist(), b.value.tolist(), b.quality.tolist(), strict=True)]
    truncated = len(rows) > limit
    return History(ch.name, "journal", start_ns, end_ns, every_s, AGG_COLUMNS if every_s else RAW_COLUMNS,
                   _cut(rows, limit, newest), _journal_note(cfg, oldest), truncated,
                   {"unit": ch.unit, "kind": ch.kind})


async def influx_samples(cfg: Config, channels: list[tuple[int, str]], start_ns: int, end_ns: int,
                         max_samples: int) -> Batch:
    """The raw samples of several channels in [start, end) from InfluxDB, as one Batch
    (channel = the given index, value NaN where InfluxDB holds the quality alone), at most
    ``max_samples`` in all (the earliest of each channel first). For the daemon's
    ``influx_samples`` (gateway/services.py): the regulator adapters' history answers.
    Raises ``HistoryError`` when there is no ``influxdb:`` section or it does not answer."""
    ch: list[int] = []
    ts: list[int] = []
    val: list[float] = []
    qual: list[int] = []
    for index, name in channels:
        left = max_samples - len(ts)
        if left <= 0:
            break
        h = await query_history(cfg, name, start_ns, end_ns, source="influxdb", limit=left)
        for t, v, q in h.rows:
            ch.append(index)
            ts.append(int(t))
            val.append(math.nan if v is None else float(v))
            # a point written without its quality field (not by safegw): a value is taken as good
            qual.append(int(q) if q is not None else (Quality.GOOD if v is not None else Quality.NO_DATA))
    if not ts:
        return Batch.empty()
    return Batch.build(ch, ts, val, qual)


def _cut(rows: list[list[Any]], limit: int, newest: bool) -> list[list[Any]]:
    if len(rows) <= limit:
        return rows
    return rows[len(rows) - limit:] if newest else rows[:limit]


async def query_api(gw: Any, channel: str, start_ns: int, end_ns: int, *, every: float | None = None,
                    limit: int = 10_000) -> dict[str, Any]:
    """The admin API's ``GET /history/{channel}`` (gateway/api.py): ``to`` inclusive, the
    newest ``limit`` points, points as ``{ts, value, quality, quality_code}`` or, with
    ``every``, ``{ts, mean, min, max, n}``."""
    h = await query_history(gw.cfg, channel, start_ns, end_ns + 1, every, limit=limit,
                            run_read=gw.journal.run_read, newest=True)
    points: list[dict[str, Any]] = []
    if every:
        for t, mean, lo, hi, n in h.rows:
            points.append({"ts": fmt_ns(t), "mean": mean, "min": lo, "max": hi, "n": n})
    else:
        for t, v, q in h.rows:
            points.append({"ts": fmt_ns(t), "value": v, "quality": None if q is None else quality_label(q),
                           "quality_code": q})
    out: dict[str, Any] = {"channel": h.channel, "from": fmt_ns(start_ns), "to": fmt_ns(end_ns),
                           "source": h.source, "every_s": every, "truncated": h.truncated, "points": points}
    if h.note:
        out["note"] = h.note
    return out


def _f(v: Any) -> float | None:
    return None if v is None else float(v)


# --------------------------------------------------------------------------- printing

def _cell(col: str, v: Any, shown: Rendering | None = None) -> str:
    if v is None:
        return ""
    if col == "time":
        return fmt_ns(v)
    if col == "quality":
        return quality_label(int(v))
    if isinstance(v, float):
        if shown is None:
            return repr(v)
        # the table is read by a person: readings as the channel shows them, a mean (a figure
        # derived from them) at 6 significant digits (gateway/core/display.py)
        return display.text(display.figure(v) if col == "mean" else shown.value(v))
    return str(v)


def render(h: History, fmt: str, out: Any = None, shown: Rendering | None = None) -> None:
    """Print a history as a table (for a person: numbers by ``shown``, the channel's
    rendering, when given), CSV or JSON (both exact, for further work)."""
    out = out or sys.stdout
    if fmt == "json":
        doc = h.as_dict()
        for r in doc["rows"]:
            r["ts"] = r["time"]
            r["time"] = fmt_ns(r["time"])
            if "quality" in r and r["quality"] is not None:
                r["quality_label"] = quality_label(r["quality"])
        json.dump(doc, out, ensure_ascii=False)
        out.write("\n")
        return
    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow([*h.columns, *(["quality_code"] if "quality" in h.columns else [])])
        for r in h.rows:
            line = [_cell(c, v) for c, v in zip(h.columns, r, strict=True)]
            if "quality" in h.columns:
                line.append("" if r[2] is None else str(r[2]))
            w.writerow(line)
        return
    head = [c if c != "time" else "time (UTC)" for c in h.columns]
    cells = [[_cell(c, v, shown) for c, v in zip(h.columns, r, strict=True)] for r in h.rows]
    widths = [len(hd) for hd in head]
    for row in cells:
        widths = [max(w, len(x)) for w, x in zip(widths, row, strict=True)]
    out.write("  ".join(hd.ljust(w) for hd, w in zip(head, widths, strict=True)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)).rstrip() + "\n")


# --------------------------------------------------------------------------- CLI

def cmd_history(args: argparse.Namespace) -> int:
    from gateway.config import load_or_exit
    from gateway.core.cliutil import EXIT_FAIL, EXIT_OK

    cfg = load_or_exit(args.config)
    try:
        now = time.time_ns()
        start = parse_time(args.start, now)
        end = parse_time(args.end, now)
        every = parse_duration(args.every) if args.every else None
        h = asyncio.run(query_history(cfg, args.channel, start, end, every, source=args.source,
                                      limit=args.limit))
    except (HistoryError, ValueError) as e:
        print(f"safegw history: {e}", file=sys.stderr)
        return EXIT_FAIL
    render(h, args.format, shown=channel_rendering(cfg, args.channel))
    if h.note:
        print(f"note: {h.note}", file=sys.stderr)
    if h.truncated:
        print(f"note: more than {args.limit} rows; showing the first {args.limit} (use --limit or --every)",
              file=sys.stderr)
    if not h.rows:
        print(f"note: no data for {h.channel} between {fmt_ns(start)} and {fmt_ns(end)} ({h.source})",
              file=sys.stderr)
    return EXIT_OK


def add_command(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "history", help="print a channel's history (from InfluxDB when configured, else the journal)",
        description="Times: ISO 8601 (naive = UTC), 'now', or relative: -1h, -30m, now-2d.")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("--from", dest="start", default="-1h", help="start (default -1h)")
    p.add_argument("--to", dest="end", default="now", help="end, exclusive (default now)")
    p.add_argument("--every", default=None, help="aggregate per interval: mean, min, max, count (e.g. 1m)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--source", choices=["auto", "influxdb", "journal"], default="auto")
    p.add_argument("--limit", type=int, default=MAX_ROWS_DEFAULT, help="at most this many rows")
    p.set_defaults(func=cmd_history)
