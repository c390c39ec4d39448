"""Queries where central's data is: samples from VictoriaMetrics (Prometheus API), alarms
and late gateways from PostgreSQL (central/events_pg.py).

Served over central's HTTPS listener to operators with a bearer token (like ``/status``):

- ``GET /query/v1/samples?gateway=G&channel=C&from=T&to=T&every=D&agg=avg|min|max|count|last``
- ``GET /query/v1/alarms?gateway=G|area=A|hazard_source=H&from=T&to=T&limit=N``
- ``GET /query/v1/late[?after=D]``

and printed by ``safegw central -c central.yaml history|alarms|late ...``. Every
parameter is bounded (lengths, range/interval ≤ MAX_POINTS points, limit) and checked
before anything is asked of a server; a bad one gets a 400 naming the parameter.
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx

from central.config_vm import VictoriaMetricsSection
from central.events_pg import EventStore
from gateway.core.units import parse_duration

MAX_POINTS = 11_000  # per series and query (VictoriaMetrics' default -search.maxPoints is 30k)
MAX_LIMIT = 10_000
MAX_LABEL = 200
AGGS = {"avg": "avg_over_time", "min": "min_over_time", "max": "max_over_time",
        "count": "count_over_time", "last": "last_over_time"}


class QueryError(ValueError):
    """A bad query parameter (``param`` names it)."""

    def __init__(self, param: str, msg: str):
        super().__init__(f"{param}: {msg}")
        self.param = param


def label_value(v: str) -> str:
    """A PromQL label value, quoted (backslash, quote and line breaks escaped)."""
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _label(name: str, v: str | None, *, required: bool = False) -> str | None:
    if v is None or v == "":
        if required:
            raise QueryError(name, "required")
        return None
    if len(v) > MAX_LABEL or any(ord(ch) < 32 for ch in v):
        raise QueryError(name, f"at most {MAX_LABEL} characters, no control characters")
    return v


def parse_time(name: str, v: str | None, default: float) -> float:
    """Seconds since the epoch from ``now``, ``-1h``/``now-2d``, unix seconds or ISO 8601 (naive = UTC)."""
    if v is None or v == "":
        return default
    if len(v) > 40:
        raise QueryError(name, "too long")
    now = time.time()
    s = v.strip()
    try:
        if s == "now":
            return now
        if s.startswith("now-"):
            return now - parse_duration(s[4:])
        if s.startswith("-"):
            return now - parse_duration(s[1:])
        if re.fullmatch(r"\d+(\.\d+)?", s):
            return float(s)
        import datetime as dt

        d = dt.datetime.fromisoformat(s)
        if d.tzinfo is None:
            d = d.replace(tzinfo=dt.UTC)
        return d.timestamp()
    except ValueError as e:
        raise QueryError(name, f"{v!r} is not a time (now, -1h, now-2d, unix seconds, ISO 8601): {e}") \
            from None


def duration(name: str, v: str) -> float:
    """A duration parameter (``10s``, ``5m``) in seconds; a bad one names the parameter."""
    try:
        return parse_duration(v)
    except ValueError as e:
        raise QueryError(name, str(e)) from None


def samples_query(metric: str, gateway: str, channel: str, agg: str, every_s: float) -> str:
    """The PromQL (MetricsQL) of one channel's samples aggregated per interval."""
    sel = f"{metric}_value{{gateway={label_value(gateway)},channel={label_value(channel)}}}"
    return f"{AGGS[agg]}({sel}[{int(every_s * 1000)}ms])"


def late_query(metric: str) -> str:
    """Seconds since each gateway's newest sample (the Grafana panel's form; 1 h look-back)."""
    return f"time() - max by (gateway) (tlast_over_time({metric}_value[1h]))"


@dataclass
class Queries:
    sec: VictoriaMetricsSection
    events: EventStore

    async def samples(self, gateway: str | None, channel: str | None, start_s: float, end_s: float,
                      every_s: float, agg: str = "avg") -> dict[str, Any]:
        """A channel's values per interval: [[interval start (unix s), value], ...].

        Intervals are [start + k*every, start + (k+1)*every), like the gateway's history:
        VictoriaMetrics' window at T is (T - every, T], so the query is evaluated 1 ms
        before each interval's end (its times are milliseconds)."""
        g = _label("gateway", gateway, required=True)
        c = _label("channel", channel, required=True)
        assert g is not None and c is not None
        if agg not in AGGS:
            raise QueryError("agg", f"one of {', '.join(AGGS)}")
        if not every_s > 0:
            raise QueryError("every", "must be positive")
        if end_s <= start_s:
            raise QueryError("to", "must be after from")
        if (end_s - start_s) / every_s > MAX_POINTS:
            raise QueryError("every", f"range/every gives more than {MAX_POINTS} points: widen every")
        q = samples_query(self.sec.metric, g, c, agg, every_s)
        base = self.sec.prometheus_url()
        async with httpx.AsyncClient(timeout=self.sec.timeout) as client:
            r = await client.get(base + "/api/v1/query_range", params={
                "query": q, "start": f"{start_s + every_s - 0.001:.3f}", "end": f"{end_s - 0.001:.3f}",
                "step": f"{int(every_s * 1000)}ms"})
        if r.status_code != 200:
            raise ConnectionError(f"victoriametrics: HTTP {r.status_code}: {r.text[:300]}")
        result = r.json()["data"]["result"]
        values = result[0]["values"] if result else []
        points = [[round(float(t) + 0.001 - every_s, 3), float(v)] for t, v in values]
        return {"gateway": g, "channel": c, "agg": agg, "every_s": every_s, "from": start_s, "to": end_s,
                "query": q, "points": points}

    async def alarms(self, *, gateway: str | None = None, area: str | None = None,
                     hazard_source: str | None = None, start_s: float, end_s: float,
                     limit: int = 1000) -> list[dict[str, Any]]:
        """Alarm events (type alarm*) of a gateway, an area or a hazard source, oldest first."""
        which = [(k, _label(k, v)) for k, v in (("gateway", gateway), ("area", area),
                                                 ("hazard_source", hazard_source))]
        given = [(k, v) for k, v in which if v is not None]
        if len(given) != 1:
            raise QueryError("gateway", "give exactly one of gateway, area, hazard_source")
        if not 0 < limit <= MAX_LIMIT:
            raise QueryError("limit", f"1..{MAX_LIMIT}")
        col = {"gateway": "origin", "area": "area", "hazard_source": "hazard_source"}[given[0][0]]
        rows = await self.events.query(
            f"SELECT origin, seq, ts, type, level, channel, device, area, hazard_source, site, doc "
            f"FROM events WHERE {col} = %s AND type LIKE 'alarm%%' AND ts >= %s AND ts < %s "
            f"ORDER BY ts, origin, seq LIMIT %s",
            (given[0][1], int(start_s * 1e9), int(end_s * 1e9), limit))
        keys = ("gateway", "seq", "ts", "type", "level", "channel", "device", "area", "hazard_source", "site",
                "event")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    async def late(self, after_s: float | None = None) -> list[dict[str, Any]]:
        """Gateways whose newest stored sample is older than ``after_s`` (default late_after)."""
        after = self.sec.late_after if after_s is None else after_s
        if not 0 < after <= 400 * 86400:
            raise QueryError("after", "between 0 and 400 days")
        now_ns = time.time_ns()
        rows = await self.events.query(
            "SELECT origin, last_ts, last_seq FROM origin_data WHERE last_ts < %s ORDER BY last_ts",
            (now_ns - int(after * 1e9),))
        return [{"gateway": o, "last_sample_ns": int(t), "last_seq": int(s),
                 "late_s": round((now_ns - t) / 1e9, 3)} for o, t, s in rows]


def routes(queries: Queries, operators: Any) -> list[Any]:
    """The operator endpoints ``/query/v1/*`` (bearer token checked like ``GET /status``)."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def guarded(request: Request, fn: Any) -> Response:
        if operators is None:
            return JSONResponse({"error": "operator endpoints disabled (listen.status: false)"},
                                status_code=404)
        refused = await operators.refusal(request)
        if refused is not None:
            return refused  # type: ignore[no-any-return]
        p = request.query_params
        if len(request.url.query) > 2000:
            return JSONResponse({"error": "bad_query", "detail": "query string above 2000 bytes"},
                                status_code=400)
        try:
            return JSONResponse(await fn(p))
        except QueryError as e:
            return JSONResponse({"error": "bad_query", "param": e.param, "detail": str(e)}, status_code=400)
        except (ConnectionError, httpx.HTTPError) as e:
            from central.store_vm import without_credentials

            return JSONResponse({"error": "store_unavailable", "detail": without_credentials(str(e))[:300]},
                                status_code=503)

    def every(p: Any) -> float:
        return duration("every", p.get("every") or "1m")

    def limit(p: Any) -> int:
        try:
            return int(p.get("limit") or 1000)
        except ValueError:
            raise QueryError("limit", "an integer") from None

    async def samples(request: Request) -> Response:
        return await guarded(request, lambda p: queries.samples(
            p.get("gateway"), p.get("channel"), parse_time("from", p.get("from"), time.time() - 3600),
            parse_time("to", p.get("to"), time.time()), every(p), p.get("agg") or "avg"))

    async def alarms(request: Request) -> Response:
        async def run(p: Any) -> Any:
            return {"alarms": await queries.alarms(
                gateway=p.get("gateway"), area=p.get("area"), hazard_source=p.get("hazard_source"),
                start_s=parse_time("from", p.get("from"), time.time() - 86400),
                end_s=parse_time("to", p.get("to"), time.time()), limit=limit(p))}
        return await guarded(request, run)

    async def late(request: Request) -> Response:
        async def run(p: Any) -> Any:
            a = p.get("after")
            return {"late": await queries.late(duration("after", a) if a else None)}
        return await guarded(request, run)

    return [Route("/query/v1/samples", samples, methods=["GET"]),
            Route("/query/v1/alarms", alarms, methods=["GET"]),
            Route("/query/v1/late", late, methods=["GET"])]


# --------------------------------------------------------------------------- CLI
def add_subcommands(sub: Any) -> None:
    """``safegw central -c FILE history|alarms|late``: the same queries, printed as JSON lines."""
    h = sub.add_parser("history", help="a gateway's channel per interval (VictoriaMetrics)")
    h.add_argument("gateway")
    h.add_argument("channel")
    h.add_argument("--from", dest="start", default="-1h",
                   help="start (default -1h; now-2d, ISO 8601, unix s)")
    h.add_argument("--to", dest="end", default="now")
    h.add_argument("--every", default="1m", help="interval (default 1m)")
    h.add_argument("--agg", choices=list(AGGS), default="avg")
    a = sub.add_parser("alarms", help="alarms of a gateway, an area or a hazard source (PostgreSQL)")
    g = a.add_mutually_exclusive_group(required=True)
    g.add_argument("--gateway")
    g.add_argument("--area")
    g.add_argument("--hazard-source", dest="hazard_source")
    a.add_argument("--from", dest="start", default="-24h")
    a.add_argument("--to", dest="end", default="now")
    a.add_argument("--limit", type=int, default=1000)
    lt = sub.add_parser("late", help="gateways whose newest stored sample is older than --after")
    lt.add_argument("--after", default=None, help="default victoriametrics.late_after")
    for p in (h, a, lt):
        p.add_argument("-c", "--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def run_cli(args: Any, cfg: Any) -> int:
    """Run one query subcommand; exit 0 with the answer, 2 for a bad parameter, 1 when a store fails."""
    import asyncio
    import json
    import sys

    vm = cfg.victoriametrics
    if vm is None:
        print("safegw central: these queries need a victoriametrics: section", file=sys.stderr)
        return 2
    events = EventStore(vm.events_dsn or cfg.state.dsn)
    q = Queries(vm, events)

    async def run() -> Any:
        try:
            if args.central_cmd == "history":
                return await q.samples(args.gateway, args.channel, parse_time("from", args.start, 0),
                                       parse_time("to", args.end, 0), duration("every", args.every), args.agg)
            if args.central_cmd == "alarms":
                return await q.alarms(gateway=args.gateway, area=args.area, hazard_source=args.hazard_source,
                                      start_s=parse_time("from", args.start, 0),
                                      end_s=parse_time("to", args.end, 0), limit=args.limit)
            return await q.late(duration("after", args.after) if args.after else None)
        finally:
            await events.close()

    try:
        out = asyncio.run(run())
    except (QueryError, ValueError) as e:
        print(f"safegw central {args.central_cmd}: {e}", file=sys.stderr)
        return 2
    except (ConnectionError, httpx.HTTPError, OSError) as e:
        from central.store_vm import without_credentials

        print(f"safegw central {args.central_cmd}: {without_credentials(str(e))}", file=sys.stderr)
        return 1
    print(json.dumps(out, default=str, ensure_ascii=False, indent=1))
    return 0
