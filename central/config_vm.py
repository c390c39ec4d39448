"""The ``victoriametrics:`` section of central's config: samples into VictoriaMetrics,
events into PostgreSQL (central/store_vm.py, central/events_pg.py, docs/central.md).

Its own module so central/config.py only names it in ``CentralConfig``.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from gateway.core.strict import Strict
from gateway.core.units import Duration, Size

# a single node's base URL, or a cluster's vminsert ``/insert/<tenant>``, either
# optionally with an endpoint's path, which is replaced by the endpoint of ``format``
# (docs.victoriametrics.com/Cluster-VictoriaMetrics: vminsert serves
# /insert/<tenant>/influx/write and /insert/<tenant>/prometheus/api/v1/import)
_ENDPOINT = r"(/influx/write|/write|/prometheus/api/v1/import|/api/v1/import|/prometheus)?"
_URL = re.compile(rf"^(https?://[^\s/?#]+(/insert/\d+(:\d+)?)?){_ENDPOINT}/?$")
_PATHS = {  # format -> (single node's path, cluster's path after /insert/<tenant>)
    "json": ("/api/v1/import", "/prometheus/api/v1/import"),
    "influx": ("/write", "/influx/write"),
}
_QUERY_URL = re.compile(r"^https?://[^\s/?#]+(/select/\d+(:\d+)?/prometheus)?/?$")
_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]{0,63}$"


class VictoriaMetricsSection(Strict):
    """Where central stores samples when a province's load is beyond InfluxDB 1.x."""

    url: list[str] = Field(min_length=1, max_length=16, description=(
        "write URLs, tried in turn when one fails: a single node's http://host:8428 (or .../write), "
        "or a cluster's vminsert http://host:8480/insert/<tenant> (an endpoint's path after either, "
        "such as /write or /insert/<tenant>/influx/write, is replaced by the one of format)"))
    format: Literal["json", "influx"] = Field(default="json", description=(
        "json: VictoriaMetrics' JSON line import (/api/v1/import; a series' labels once per write, "
        "measured cheaper for central and VictoriaMetrics, docs/central.md Sizing); "
        "influx: InfluxDB line protocol (/write)"))
    query_url: str | None = Field(default=None, max_length=300, description=(
        "Prometheus API for queries: default the first url (single node); for a cluster, "
        "vmselect's http://host:8481/select/<tenant>/prometheus"))
    events_dsn: str | None = Field(default=None, max_length=500, description=(
        "PostgreSQL for events (alarms, gaps, registers, channel tables); default state.dsn"))
    metric: str = Field(default="safegw", pattern=_NAME, description=(
        "measurement name: the series are <metric>_value and <metric>_quality"))
    batch_bytes: Size = Field(default=16 * 2**20, ge=64 * 1024, le=256 * 2**20, description=(
        "samples (JSON lines or line protocol) gathered from all gateways into one write"))
    linger: Duration = Field(default=0.05, ge=0.0, le=5.0, description=(
        "how long a write waits for more gateways' data before it goes"))
    max_pending: Size = Field(default=128 * 2**20, ge=2**20, le=2**32, description=(
        "samples waiting for the store; above it ingest waits (the gateways keep their journals)"))
    concurrency: int = Field(default=2, ge=1, le=16, description="writes in flight at once")
    timeout: Duration = Field(default=60.0, ge=1.0, le=600.0)
    retry_max: Duration = Field(default=10.0, ge=0.1, le=300.0, description="longest pause between retries")
    journal: bool = Field(default=False, description=(
        "also keep the per-origin SQLite journal (state_dir/journals): measured to cost more than "
        "the store itself at province load (docs/central.md, Sizing)"))
    events_keep: Duration = Field(default=400 * 86400.0, ge=366 * 86400.0, le=36600 * 86400.0, description=(
        "events (alarms, gaps, registers, channel tables) older than this are deleted from "
        "PostgreSQL, checked hourly by every worker; at least a year (issue 21's retention)"))
    late_after: Duration = Field(default=300.0, ge=1.0, le=30 * 86400.0, description=(
        "a gateway whose newest stored sample is older than this is late"))

    @field_validator("url")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for u in v:
            if len(u) > 300 or not _URL.match(u):
                raise ValueError(f"{u[:80]!r}: give http(s)://host:port, or a cluster's "
                                 "http(s)://host:port/insert/<tenant> (or .../insert/<tenant>/influx/write)")
        return v

    @field_validator("query_url")
    @classmethod
    def _query(cls, v: str | None) -> str | None:
        if v is not None and not _QUERY_URL.match(v):
            raise ValueError(f"{v[:80]!r}: give http(s)://host:port (single node), or a cluster's "
                             "http(s)://host:port/select/<tenant>/prometheus")
        return v

    def write_urls(self) -> list[str]:
        """Each URL completed to the endpoint of ``format``."""
        out = []
        for u in self.url:
            m = _URL.match(u)
            assert m, "checked by _urls"
            single, cluster = _PATHS[self.format]
            out.append(m.group(1) + (cluster if m.group(2) else single))
        return out

    def prometheus_url(self) -> str:
        """The base of the Prometheus query API (``/api/v1/...`` is appended)."""
        if self.query_url:
            return self.query_url.rstrip("/")
        m = _URL.match(self.url[0])
        assert m, "checked by _urls"
        if m.group(2):
            raise ValueError("victoriametrics.query_url is needed with a cluster's insert URL")
        return m.group(1)
