"""The central node's YAML configuration (``safegw central -c central.yaml``).

Same conventions as the gateway's config (gateway/config.py): strict models,
unknown keys rejected, durations and sizes with their units, errors printed as
``FILE:LINE:COL: key.path: message``.

A central node has: its own identity and state directory (keys, TLS certificate,
SQLite state, one journal per origin gateway); a listener (push endpoint, status,
and the ``/sync/v1`` API the next level pulls from); a list of *sources* (gateways,
or lower central nodes that relay many gateways) each pulled or pushing; the public
keys of origins reached only through relays; optionally InfluxDB; optionally an
upstream (the next level) to forward the original envelopes to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from central.config_vm import VictoriaMetricsSection
from gateway.core.config import ID_PATTERN, ConfigFile, InfluxSection, Listen, ListenerGuard, Strict
from gateway.core.configcheck import ConfigError, explain, format_error, loc_path
from gateway.core.units import Duration, Size
from gateway.core.yamlsrc import Path_, Source, YamlError, load_file, load_text


class NodeSection(Strict):
    id: str = Field(pattern=ID_PATTERN, description="this central node's id (county-3701, province-37, ...)")
    name: str | None = None
    state_dir: Path = Path("/var/lib/safegw-central")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class ListenSection(ListenerGuard):
    address: Listen = "0.0.0.0:9443"
    tls_cert: Path | None = Field(default=None, description="default: self-signed, made in state_dir")
    tls_key: Path | None = None
    clock_window: Duration = Field(default=120.0, description="accepted clock skew of signed requests")
    status: bool = Field(default=True, description="serve GET /status (bearer token required)")
    tokens_file: Path | None = Field(default=None, description="operators' bearer tokens (scrypt hashes, "
                                     "mode 0600); default state_dir/tokens.json; made by "
                                     "'safegw central -c FILE tokens add NAME'")
    max_push: Size = Field(default=64 * 2**20, ge=1024, description="largest body of POST /sync/v1/push "
                           "(a push source's uplink.max_bytes must fit), refused with 413 while it arrives")


class PullSpec(Strict):
    url: str = Field(pattern=r"^https?://", description="https://host:port of the gateway's /sync/v1")
    tls_cert: Path | None = Field(default=None, description="the peer's certificate to pin, or a CA bundle")
    verify: bool = True
    wait: Duration = Field(default=10.0, description="long-poll: how long the peer may hold a request")
    timeout: Duration = 60.0
    max_bytes: Size = Field(default=2 * 2**20, description="bytes per response (the next is prefetched)")
    retry_max: Duration = Field(default=60.0, description="longest pause between retries")


class SourceEntry(Strict):
    """A gateway (or a lower central node with ``relay: true``) that sends data here."""

    id: str = Field(pattern=ID_PATTERN)
    keys: Path = Field(description="its public key bundle, as 'safegw keys show' printed it")
    mode: Literal["pull", "push"] = "pull"
    pull: PullSpec | None = None
    relay: bool = Field(default=False, description="a central node forwarding other gateways' envelopes")
    suite: Literal["x25519-ed25519", "gm", "any"] = Field(
        default="x25519-ed25519", description="the envelope suite accepted from this source (gm: the "
        "national suite, SM2/SM3/SM4); others are refused with WrongSuite; any: both, while migrating")
    enabled: bool = True


class StateSection(Strict):
    backend: Literal["sqlite", "postgres"] = "sqlite"
    dsn: str | None = Field(default=None, description="postgresql://user@host/db (backend: postgres)")
    worker: str | None = Field(default=None, description="this worker's name; default host-pid")
    lease: Duration = Field(default=30.0, description="a worker's claim on a gateway lasts this long")


class StorageSection(Strict):
    journal_quota: Size = 20 * 10**9
    journal_max_age: Duration = 400 * 86400.0
    journal_sync: Literal["full", "normal"] = "normal"


class UpstreamSection(Strict):
    """Forwarding to the next level: it pulls from our listener, or we push to it."""

    mode: Literal["pull", "push"] = "pull"
    keys: list[Path] = Field(min_length=1, description="the upper nodes' public key bundles")
    url: str | None = Field(default=None, description="push: https://host:port of the upper node")
    id: str | None = Field(default=None, pattern=ID_PATTERN,
                           description="push: the node id of the upper node at url, which signed requests "
                                       "name (default: the node of the first key bundle)")
    ca: Path | None = Field(default=None, description="push: the upper node's certificate (pinned) or CA")
    bandwidth: Size | None = None
    monthly_budget: Size | None = None
    max_bytes: Size = 8 * 2**20
    timeout: Duration = 30.0
    retry_max: Duration = 30.0
    keep: Duration = Field(default=30 * 86400.0, description="keep forwarded envelopes this long after ack")


class CentralConfig(ConfigFile):
    node: NodeSection
    listen: ListenSection = ListenSection()
    state: StateSection = StateSection()
    storage: StorageSection = StorageSection()
    sources: list[SourceEntry] = Field(default_factory=list)
    trust: list[Path] = Field(default_factory=list,
                              description="public key bundles of origins reached through relays")
    upstream: UpstreamSection | None = None
    influxdb: InfluxSection | None = None
    victoriametrics: VictoriaMetricsSection | None = None


def tokens_path(cfg: CentralConfig) -> Path:
    """Where the operators' token hashes live (``listen.tokens_file`` or state_dir/tokens.json)."""
    if cfg.listen.tokens_file is not None:
        return cfg.path(cfg.listen.tokens_file)
    return Path(cfg.node.state_dir) / "tokens.json"


def _cross_check(cfg: CentralConfig) -> list[tuple[Path_, str]]:
    errs: list[tuple[Path_, str]] = []
    seen: dict[str, int] = {}
    for i, s in enumerate(cfg.sources):
        if s.id in seen:
            errs.append((("sources", i, "id"), f"source {s.id!r} is already listed at sources[{seen[s.id]}]"))
        seen.setdefault(s.id, i)
        if s.mode == "pull" and s.pull is None:
            errs.append((("sources", i, "pull"), "mode pull needs pull: {url: https://..., tls_cert: ...}"))
        if s.mode == "push" and s.pull is not None:
            errs.append((("sources", i, "pull"), "a push source has no pull: section"))
        if s.id == cfg.node.id:
            errs.append((("sources", i, "id"), "a node cannot be its own source"))
    if cfg.state.backend == "postgres" and not cfg.state.dsn:
        errs.append((("state", "dsn"), "backend postgres needs dsn: postgresql://user@host/dbname"))
    errs += _vm_check(cfg)
    up = cfg.upstream
    if up is not None and up.mode == "push" and not up.url:
        errs.append((("upstream", "url"), "upstream mode push needs url: https://host:port"))
    return errs


def _vm_check(cfg: CentralConfig) -> list[tuple[Path_, str]]:
    vm = cfg.victoriametrics
    if vm is None:
        return []
    errs: list[tuple[Path_, str]] = []
    if not vm.events_dsn and not (cfg.state.backend == "postgres" and cfg.state.dsn):
        errs.append((("victoriametrics", "events_dsn"), "events go to PostgreSQL: give events_dsn: "
                     "postgresql://user@host/db, or use state: {backend: postgres, dsn: ...}"))
    if cfg.influxdb is not None and not vm.journal:
        errs.append((("victoriametrics", "journal"), "InfluxDB is written from the per-origin journal: "
                     "with influxdb: set journal: true here (or drop one of the two stores)"))
    if vm.query_url is None and any("/insert/" in u for u in vm.url):
        errs.append((("victoriametrics", "query_url"), "a cluster's insert URL needs query_url: "
                     "http(s)://vmselect:8481/select/<tenant>/prometheus for the queries"))
    return errs


def validate(src: Source) -> CentralConfig:
    if not isinstance(src.data, dict):
        raise ConfigError([f"{src.file}:1:1: (top): the file must be a mapping with a 'node:' section"])
    try:
        cfg = CentralConfig.model_validate(src.data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            path = loc_path(err["loc"])
            # an unknown key is reported at the key, not at its value
            mark = src.key_marks.get(src.real_path(path)) if err["type"] == "extra_forbidden" else None
            lines.append(format_error(src, path, explain(dict(err)), mark))
        raise ConfigError(lines) from None
    lines = [format_error(src, p, m) for p, m in _cross_check(cfg)]
    if lines:
        raise ConfigError(lines)
    cfg.base_dir = Path(src.file).resolve().parent if src.file != "<string>" else Path.cwd()
    return cfg


def load(path: str | Path) -> CentralConfig:
    try:
        return validate(load_file(path))
    except YamlError as e:
        raise ConfigError([str(e)]) from None


def loads(text: str, file: str = "<string>", base_dir: Path | None = None) -> CentralConfig:
    try:
        cfg = validate(load_text(text, file))
    except YamlError as e:
        raise ConfigError([str(e)]) from None
    if base_dir is not None:
        cfg.base_dir = base_dir
    return cfg
