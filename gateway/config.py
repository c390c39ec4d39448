"""The gateway's YAML configuration: strict pydantic models and their error report.

Every model rejects unknown keys. Device sections are a tagged union on
``protocol:``. Durations are written with their unit (``500ms``, ``1s``, ``5m``),
sizes with theirs (``512MB``). Cross-field rules (duplicate channel names, two
devices on one serial port, a float32 on one register, a poll faster than its
timeout, ...) are checked after the models and reported with the same
``FILE:LINE:COL: key.path: message`` lines as schema errors.
"""

from __future__ import annotations

import difflib
import itertools
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.yamlsrc import Mark, Path_, Source, YamlError, load_file, load_text

# --------------------------------------------------------------------------- units

_DUR = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ns|us|µs|ms|s|m|min|h|d)\s*$")
_DUR_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0,
              "h": 3600.0, "d": 86400.0}


def parse_duration(v: Any) -> float:
    """``'500ms'`` → 0.5 (seconds). Bare numbers are refused: the unit must be written."""
    if isinstance(v, bool):
        raise ValueError("a duration needs a number and a unit, e.g. 500ms, 1s, 5m, 2h, 30d")
    if isinstance(v, int | float):
        if v == 0:
            return 0.0
        raise ValueError(f"write the unit: {v}s or {v}ms? (durations look like 500ms, 1s, 5m, 2h, 30d)")
    if isinstance(v, str):
        m = _DUR.match(v)
        if m:
            return float(m.group(1)) * _DUR_UNITS[m.group(2)]
    raise ValueError(f"{v!r} is not a duration; write a number and a unit: 500ms, 1s, 5m, 2h, 30d")


_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.I)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        m = _SIZE.match(v)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise ValueError(f"{v!r} is not a size; write e.g. 512MB, 2GB, 100KiB")


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


def _no_bool_number(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError("expected a number, got a boolean")
    return v


Number = Annotated[float, BeforeValidator(_no_bool_number)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, populate_by_name=True)


# --------------------------------------------------------------------------- gateway

_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class GatewaySection(Strict):
    id: str = Field(pattern=_ID, description="gateway id, as central knows it")
    site: str = Field(min_length=1, description="enterprise / site code (统一社会信用代码), quoted")
    name: str | None = Field(default=None, description="human name shown in the API and the demo")
    state_dir: Path = Field(default=Path("/var/lib/safegw"),
                            description="journal, keys, registers live here; "
                            "`safegw run --state-dir` (the systemd unit) overrides it")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("site", mode="before")
    @classmethod
    def _site_is_text(cls, v: Any) -> Any:
        if isinstance(v, int | float) and not isinstance(v, bool):
            raise ValueError("write the site code in quotes, so leading zeros and letters survive")
        return v


class JournalSection(Strict):
    """The local journal (docs/journal.md)."""

    quota: Size = Field(default=2 * 10**9, description="payload bytes kept at most; the oldest "
                        "records go first, with a gap record if a consumer had not sent them")
    max_age: Duration = Field(default=30 * 86400.0, description="records older than this go")
    sync: Literal["full", "normal"] = Field(default="full", description="full: fsync every commit (survives "
                                            "power loss); normal: survives a crash of the process, not of "
                                            "the machine")
    compress: bool = Field(default=True, description="zstd-compress sample batches")

    @field_validator("quota")
    @classmethod
    def _quota_floor(cls, v: int) -> int:
        if v < 10**6:
            raise ValueError(f"a quota of {v} bytes keeps almost nothing; give at least 1MB (e.g. 2GB)")
        return v

    @field_validator("max_age")
    @classmethod
    def _age_floor(cls, v: float) -> float:
        if v < 60:
            raise ValueError(f"keeping records only {v:g}s is surely a mistake; give at least 1m (e.g. 30d)")
        return v


# --------------------------------------------------------------------------- channels

Kind = Literal[
    "gas", "dust", "temperature", "humidity", "wind_speed", "pressure", "level", "flow",
    "noise", "radiation", "position", "presence", "oxygen", "voltage", "current", "status", "other",
]


class TrendSettings(Strict):
    window: Duration = Field(description="least-squares window")
    slope: Number | None = Field(default=None, description="alarm above this rise per minute (units/min)")
    predict: Duration | None = Field(default=None,
                                     description="early warning when the high limit is this close")


class AlarmSettings(Strict):
    """Per-channel alarm settings. Limits are in the channel's engineering unit."""

    hh: Number | None = None
    h: Number | None = None
    l: Number | None = None  # noqa: E741 - the ISA name of the low limit
    ll: Number | None = None
    deadband: Number = Field(default=0.0, ge=0)
    delay: Duration = 0.0
    off_delay: Duration = 0.0
    roc: Number | None = Field(default=None, gt=0, description="alarm when |change| per second exceeds this")
    trend: TrendSettings | None = None
    stale_periods: int = Field(default=3, ge=1, description="no data for this many poll periods → stale")
    frozen: Duration | None = Field(default=None,
                                    description="alarm when the value is exactly unchanged this long")
    bad_for: Duration | None = Field(default=None, description="alarm when quality is bad this long "
                                     "(default: stale_periods poll periods)")

    @field_validator("frozen")
    @classmethod
    def _frozen_positive(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("frozen must be a positive duration, e.g. 10m")
        return v


class ExposureSettings(Strict):
    kind: Literal["concentration", "noise"] = "concentration"
    twa: Number | None = Field(default=None, gt=0, description="PC-TWA limit (8 h)")
    stel: Number | None = Field(default=None, gt=0, description="PC-STEL limit (15 min)")
    criterion_db: Number = 85.0
    exchange_rate_db: Number = 3.0


DataType = Literal["bool", "int16", "uint16", "int32", "uint32", "float32", "float64"]
ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]


class ChannelBase(Strict):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[^\s/#+]+$")
    kind: Kind
    unit: str = ""
    description: str | None = None
    gas: str | None = None
    range: tuple[Number, Number] | None = None
    scale: Number = 1.0
    offset: Number = 0.0
    alarms: AlarmSettings | None = None
    preset: str | None = None
    exposure: str | ExposureSettings | None = None
    hazard_source: str | None = None
    area: str | None = None
    maintenance: bool = False

    @field_validator("name", mode="before")
    @classmethod
    def _name_is_text(cls, v: Any) -> Any:
        if isinstance(v, bool | int | float):
            return str(v).lower() if isinstance(v, bool) else str(v)
        return v

    @field_validator("range")
    @classmethod
    def _range_order(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[0] < v[1]:
            raise ValueError(f"range must be [low, high] with low < high, got {list(v)}")
        return v


class ModbusChannel(ChannelBase):
    address: str = Field(description="function:register, e.g. holding:100, input:0, coil:3, "
                                     "discrete:7, holding:20.3 (bit 3 of register 20)")
    type: DataType = "uint16"
    byte_order: ByteOrder = "ABCD"

    @field_validator("address", mode="before")
    @classmethod
    def _address_text(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            raise ValueError(f"write the function too: holding:{v}, input:{v}, coil:{v} or discrete:{v}")
        return v


class OpcUaChannel(ChannelBase):
    node: str | None = Field(default=None, description="NodeId: ns=2;s=R201.PT01, ns=2;i=1001, ns=2;g=<guid>")
    browse_path: list[str] | None = None
    deadband: Number | None = Field(default=None, ge=0, description="server-side data-change deadband")


class SerialChannel(ChannelBase):
    group: str | None = Field(default=None, description="named group in the device's pattern")
    pattern: str | None = Field(default=None, description="regex with a (?P<value>...) group")
    field: tuple[int, int] | None = Field(default=None, description="fixed-width [start, end) in the frame")


# --------------------------------------------------------------------------- devices

class DeviceBase(Strict):
    name: str = Field(pattern=_ID)
    poll: Duration = 1.0
    timeout: Duration = 1.0
    retries: int = Field(default=1, ge=0, le=10)
    enabled: bool = True
    maintenance: bool = False


class ModbusTcpDevice(DeviceBase):
    protocol: Literal["modbus-tcp"]
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    unit: int = Field(default=1, ge=0, le=255)
    max_gap: int = Field(default=8, ge=0, le=124, description="registers read through to merge requests")
    max_registers: int = Field(default=125, ge=1, le=125)
    max_bits: int = Field(default=2000, ge=1, le=2000)
    pipeline: int = Field(default=1, ge=1, le=16, description="reads in flight on the connection; many "
                          "devices and TCP gateways take several, 1 is safe for all")
    channels: list[ModbusChannel] = Field(min_length=1)


class RtuUnit(Strict):
    unit: int = Field(ge=1, le=247)
    channels: list[ModbusChannel] = Field(min_length=1)


class ModbusRtuDevice(DeviceBase):
    protocol: Literal["modbus-rtu"]
    port: str
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1
    inter_frame_gap: Duration = Field(default=0.0, description="pause between frames on the bus")
    max_gap: int = Field(default=8, ge=0, le=124)
    max_registers: int = Field(default=125, ge=1, le=125)
    max_bits: int = Field(default=2000, ge=1, le=2000)
    units: list[RtuUnit] = Field(min_length=1)


class OpcUaSecurity(Strict):
    policy: Literal["None", "Basic256Sha256", "Aes128Sha256RsaOaep"] = "None"
    mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    certificate: Path | None = None
    private_key: Path | None = None
    server_certificate: Path | None = None


class OpcUaDevice(DeviceBase):
    protocol: Literal["opcua"]
    endpoint: str = Field(pattern=r"^opc\.tcp://")
    mode: Literal["poll", "subscribe"] = "poll"
    security: OpcUaSecurity = OpcUaSecurity()
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    sampling_interval: Duration | None = None
    queue_size: int = Field(default=10, ge=1)
    deadband_type: Literal["absolute", "percent"] = "absolute"
    timestamps: Literal["source", "receive"] = Field(
        default="source", description="source: the server's source timestamp when sane, else receive time")
    max_clock_skew: Duration = Field(default=5.0, description="source timestamps further ahead are not sane")
    max_timestamp_age: Duration = Field(default=3600.0, description="source timestamps older are not sane")
    channels: list[OpcUaChannel] = Field(min_length=1)


class SerialFrame(Strict):
    """How an instrument's messages are framed, checked and (for polled ones) asked for."""

    terminator: str | None = Field(default=None, description='end of a frame: "\\r\\n" (escapes allowed)')
    length: int | None = Field(default=None, ge=1, description="fixed frame length in bytes")
    start: str | None = Field(default=None, description="start-of-frame marker (STX, $)")
    request: str | None = Field(default=None, description="sent each poll; none: it streams")
    checksum: Literal["none", "sum8", "xor", "crc16-modbus"] = "none"
    checksum_format: Literal["hex", "binary"] = "hex"
    checksum_from: int = Field(default=0, ge=0, description="leading bytes the checksum skips")
    checksum_separator: str | None = Field(default=None, description="between body and checksum: *")
    pattern: str | None = None
    encoding: str = "ascii"
    max_length: int = Field(default=1024, ge=1, description="longer runs are dropped as garbage")
    gap: Duration = Field(default=0.2, description="silence that cuts a frame short (partial)")


class SerialDevice(DeviceBase):
    protocol: Literal["serial"]
    port: str
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1
    frame: SerialFrame = SerialFrame(terminator="\r\n")
    channels: list[SerialChannel] = Field(min_length=1)


Device = Annotated[
    ModbusTcpDevice | ModbusRtuDevice | OpcUaDevice | SerialDevice,
    Field(discriminator="protocol"),
]
PROTOCOLS = ("modbus-tcp", "modbus-rtu", "opcua", "serial")


# --------------------------------------------------------------------------- services

class TlsClient(Strict):
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    verify: bool = True


class MqttSection(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    tls: TlsClient | None = None
    topic_prefix: str | None = None
    qos: Literal[0, 1, 2] = 1
    keepalive: Duration = 30.0
    values_every: Duration | None = Field(default=None, description="publish live values this often")
    commands: bool = Field(default=True,
                           description="accept ack/shelve on <prefix>/cmd/# (restrict with the broker ACL)")
    max_inflight: int = Field(default=100, ge=1, le=65535, description="QoS 1 messages awaiting PUBACK")


class InfluxSection(Strict):
    """InfluxDB historian (gateway/historian.py; schema in docs/historian.md)."""

    url: str = Field(default="http://127.0.0.1:8086", pattern=r"^https?://")
    api: Literal["v1", "v2"] = Field(default="v1", description="v1: POST /write (1.x, or 2.x/3.x v1 compat); "
                                     "v2: influxdb-client (2.x/3.x)")
    database: str = Field(default="safegw", min_length=1)
    retention_policy: str | None = Field(default=None, description="v1: for raw samples (default: the db's)")
    long_retention_policy: str | None = Field(
        default=None, description="v1: for statistics, alarms and events, kept longer (e.g. 1 year)")
    username: str | None = None
    password: str | None = None
    password_file: Path | None = Field(default=None, description="file (mode 0600) holding the password")
    token: str | None = None
    token_file: Path | None = Field(default=None, description="file (mode 0600) holding the token")
    bucket: str | None = None
    long_bucket: str | None = Field(default=None, description="v2: bucket for statistics, alarms, events")
    org: str | None = None
    measurement: Literal["per_kind", "single"] = "per_kind"
    measurement_name: str = Field(default="safegw", min_length=1)
    alarms_measurement: str = Field(default="alarms", min_length=1)
    events_measurement: str = Field(default="events", min_length=1)
    stats_measurement: str = Field(default="stats_5m", min_length=1)
    tags: dict[str, str] = Field(default_factory=dict, description="extra tags on every point")
    batch_points: int = Field(default=5000, ge=1, le=1_000_000)
    flush_every: Duration = 1.0
    timeout: Duration = 10.0
    gzip: bool = True
    stats: bool = True
    stats_every: Duration = Field(default=300.0, gt=0)
    create_database: bool = True
    max_backoff: Duration = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _credentials(self) -> InfluxSection:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give either password or password_file, not both")
        if self.token is not None and self.token_file is not None:
            raise ValueError("give either token or token_file, not both")
        if (self.password is not None or self.password_file is not None) and self.username is None:
            raise ValueError("a password needs a username")
        if self.api == "v2":
            missing = [k for k in ("bucket", "org") if getattr(self, k) is None]
            if self.token is None and self.token_file is None:
                missing.append("token or token_file")
            if missing:
                raise ValueError(f"api v2 needs {', '.join(missing)}")
        return self


class UplinkSection(Strict):
    mode: Literal["pull", "push"] = "pull"
    listen: str | None = "0.0.0.0:8443"
    central_url: str | None = None
    central_keys: list[Path] = Field(default_factory=list)
    cipher: Literal["aes-256-gcm", "sm4-gcm"] = "aes-256-gcm"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    ca: Path | None = None
    max_records: int = Field(default=200, ge=1)
    bandwidth: Size | None = Field(default=None, description="bytes per second cap")
    monthly_budget: Size | None = None
    # transport (uplink/sync.py)
    max_samples: int = Field(default=50_000, ge=1, description="samples per envelope at most")
    max_bytes: Size = Field(default=8 * 2**20, description="bytes per response / push request at most")
    timeout: Duration = Field(default=30.0, description="push request timeout")
    retry_max: Duration = Field(default=30.0, description="longest pause between push retries")
    clock_window: Duration = Field(default=120.0, description="accepted clock skew of signed requests")


class ApiSection(Strict):
    listen: str = Field(default="127.0.0.1:8080", pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$",
                        description="host:port ([::1]:8080 for IPv6); loopback unless you mean it")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    users_file: Path | None = Field(default=None, description="token store (default: <state_dir>/users.json)")
    docs: bool = Field(default=True, description="serve the OpenAPI documentation at /docs")
    max_failures: int = Field(default=10, ge=0, description="failed token checks from one client address "
                              "within failure_window before it is locked out (0: never)")
    failure_window: Duration = Field(default=300.0, gt=0)
    lockout: Duration = Field(default=300.0, gt=0, description="how long a locked-out address gets 429 for "
                              "new tokens (tokens already verified keep working)")


class RegistersSection(Strict):
    remind_days: int | list[int] = Field(
        default=[30, 7, 1], description="raise a reminder this many days before a due date (one or several "
                                        "thresholds); an overdue reminder follows on the day after")
    types_file: Path | None = Field(default=None, description="YAML with the plant's own register types")
    max_attachment: Size = 20 * 10**6
    check_every: Duration = Field(default=3600.0, description="how often due dates are checked")
    personal_upstream: Literal["full", "masked", "omitted"] = Field(
        default="full", description="personal fields (ID and phone numbers) in the journal events the "
                                    "uplink carries to the regulator: full, masked (all but the last four "
                                    "characters) or omitted; InfluxDB never gets them")

    @field_validator("remind_days")
    @classmethod
    def _days(cls, v: int | list[int]) -> int | list[int]:
        days = [v] if isinstance(v, int) else v
        if not days or any(d < 0 for d in days):
            raise ValueError("remind_days: give days >= 0, e.g. 30 or [30, 7, 1]")
        return v


class Config(Strict):
    gateway: GatewaySection
    journal: JournalSection = JournalSection()
    devices: list[Device] = Field(default_factory=list)
    mqtt: MqttSection | None = None
    influxdb: InfluxSection | None = None
    uplink: UplinkSection | None = None
    api: ApiSection | None = None
    registers: RegistersSection = RegistersSection()

    # filled by load(): where the file lives, for relative paths
    _base_dir: Path = Path(".")

    def device(self, name: str) -> ModbusTcpDevice | ModbusRtuDevice | OpcUaDevice | SerialDevice:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(name)


def device_channels(dev: Any) -> list[tuple[Path_, ChannelBase]]:
    """Every channel of a device with its path relative to the device."""
    if isinstance(dev, ModbusRtuDevice):
        return [(("units", ui, "channels", ci), ch)
                for ui, u in enumerate(dev.units) for ci, ch in enumerate(u.channels)]
    return [(("channels", ci), ch) for ci, ch in enumerate(dev.channels)]


# --------------------------------------------------------------------------- errors

class ConfigError(Exception):
    """One or more problems in a config file; ``lines`` are ready to print."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


def _dotted(path: Path_) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top)"


_PATTERN_HELP = {
    _ID: "use letters, digits, '.', '_' and '-' (at most 64, starting with a letter or digit)",
    r"^[^\s/#+]+$": "no spaces, '/', '#' or '+' in a channel name (they break MQTT topics and InfluxDB keys)",
}


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, list, Annotated, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in get_args(annotation):
        out.extend(_models_in(arg))
    return out


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model that holds the key at ``loc`` (pydantic's error location)."""
    cands: list[type[BaseModel]] = [Config]
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        tagged = [c for c in cands if "protocol" in c.model_fields
                  and part in get_args(c.model_fields["protocol"].annotation)]
        if tagged:
            cands = tagged
            continue
        nxt: list[type[BaseModel]] = []
        for c in cands:
            if part in c.model_fields:
                nxt.extend(_models_in(c.model_fields[part].annotation))
        cands = nxt
    return cands[0] if len(cands) == 1 else None


def _unknown_key(err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    key = str(loc[-1]) if loc else "?"
    model = _model_at(loc)
    if model is None:
        return "unknown key; check the spelling against the reference config (config/reference.yaml)"
    valid = list(model.model_fields)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key {key!r}; {hint}valid here: {', '.join(valid)}"


def _explain(err: dict[str, Any]) -> str:
    t, msg = err["type"], err["msg"]
    ctx = err.get("ctx") or {}
    msg = msg.replace("Input should be", "must be")
    if t == "extra_forbidden":
        return _unknown_key(err)
    if t == "missing":
        return "required key is missing"
    if t == "union_tag_invalid":
        return (f"unknown protocol {ctx.get('tag')!r}; known protocols: {', '.join(PROTOCOLS)}")
    if t == "union_tag_not_found":
        return f"a device needs 'protocol:', one of: {', '.join(PROTOCOLS)}"
    if t == "string_pattern_mismatch" and ctx.get("pattern") in _PATTERN_HELP:
        return f"{_PATTERN_HELP[ctx['pattern']]} (got {err.get('input')!r})"
    if t == "literal_error":
        got = err.get("input")
        close = difflib.get_close_matches(got, re.findall(r"'([^']*)'", str(ctx.get("expected", ""))),
                                          n=1, cutoff=0.6) if isinstance(got, str) else []
        return f"{msg} (got {got!r}" + (f"; did you mean {close[0]!r}?)" if close else ")")
    if t.startswith("value_error"):
        return msg.removeprefix("Value error, ")
    return f"{msg} (got {err.get('input')!r})" if "input" in err and not isinstance(
        err.get("input"), dict | list) else msg


def _loc_path(loc: tuple[Any, ...]) -> Path_:
    return tuple(p for p in loc if isinstance(p, str | int))


def _format(src: Source, path: Path_, message: str, mark: Mark | None = None) -> str:
    m = mark or src.where(path)
    shown = src.real_path(path)
    # keep the trailing key for unknown / missing keys so the path names it
    if path and path[-1] not in shown and isinstance(path[-1], str):
        shown = (*shown, path[-1])
    return f"{src.file}:{m.line}:{m.col}: {_dotted(shown)}: {message}"


# --------------------------------------------------------------------------- cross checks

_NODEID = re.compile(
    r"^(?:(?:ns=\d+|nsu=[^;]+);)?(?:i=\d+|s=.+|g=[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-"
    r"[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}|b=[A-Za-z0-9+/=]+)$")
_MODBUS_ADDR = re.compile(r"^(holding|input|coil|discrete):(0x[0-9a-fA-F]+|[0-9]+)(?:\.([0-9]+))?$")
_REG_WIDTH = {"bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4}


def parse_modbus_address(addr: str) -> tuple[str, int, int | None]:
    m = _MODBUS_ADDR.match(addr.strip())
    if not m and addr.strip().isdigit():
        n = addr.strip()
        raise ValueError(
            f"address {n} has no function; write holding:{int(n)}, input:{int(n)}, coil:{int(n)} or "
            f"discrete:{int(n)} (a bare {n} is not taken as a number: YAML 1.1 would read it as octal)"
            if n.startswith("0") and len(n) > 1 else
            f"address {n} has no function; write holding:{n}, input:{n}, coil:{n} or discrete:{n}")
    if not m:
        raise ValueError(
            f"address {addr!r} is not function:register; write holding:100, input:0, coil:3, "
            "discrete:7 or holding:20.3 (bit 3 of a register)")
    func, reg_s, bit_s = m.groups()
    reg = int(reg_s, 16) if reg_s.startswith("0x") else int(reg_s, 10)
    if reg > 65535:
        raise ValueError(f"register {reg} is beyond 65535")
    bit = int(bit_s) if bit_s is not None else None
    if bit is not None and (func in ("coil", "discrete") or bit > 15):
        raise ValueError("a bit index .0-.15 applies only to holding/input registers")
    return func, reg, bit


def rtu_cycle_s(dev: ModbusRtuDevice) -> float | None:
    """Least time one poll cycle of an RTU bus takes when every unit answers at once:
    each merged request's frame (8 bytes) and answer (5 + data bytes) on the wire, the
    3.5-character silences around each, and the configured inter-frame gap. None when
    the addresses do not plan (that error is reported per channel)."""
    from drivers.modbus.plan import Point, plan

    try:
        points = [Point.from_address(u.unit, ch.address, ch.type, ch.byte_order)
                  for u in dev.units for ch in u.channels]
        reqs = plan(points, max_registers=dev.max_registers, max_bits=dev.max_bits,
                    max_gap=dev.max_gap).requests
    except ValueError:
        return None
    char_s = (1 + dev.bytesize + (dev.parity != "N") + dev.stopbits) / dev.baudrate
    chars = sum(8 + 5 + r.nbytes + 7 for r in reqs)
    return chars * char_s + len(reqs) * dev.inter_frame_gap


def _cross_check(cfg: Config) -> list[tuple[Path_, str]]:
    errs: list[tuple[Path_, str]] = []
    seen_ch: dict[str, Path_] = {}
    seen_dev: dict[str, int] = {}
    seen_port: dict[str, int] = {}
    for di, dev in enumerate(cfg.devices):
        dpath: Path_ = ("devices", di)
        if dev.name in seen_dev:
            errs.append(((*dpath, "name"),
                         f"device name {dev.name!r} is already used by devices[{seen_dev[dev.name]}]"))
        seen_dev.setdefault(dev.name, di)
        if dev.poll < dev.timeout:
            errs.append(((*dpath, "poll"), f"poll interval {dev.poll:g}s is shorter than the timeout "
                         f"{dev.timeout:g}s; make poll >= timeout"))
        if dev.poll <= 0:
            errs.append(((*dpath, "poll"), "poll interval must be > 0"))
        if isinstance(dev, ModbusRtuDevice | SerialDevice):
            if dev.port in seen_port:
                errs.append(((*dpath, "port"),
                             f"serial port {dev.port} is already used by devices[{seen_port[dev.port]}]; "
                             "put several units of one RS-485 line under one device's 'units:'"))
            seen_port.setdefault(dev.port, di)
        if isinstance(dev, ModbusRtuDevice):
            units = [u.unit for u in dev.units]
            for ui, u in enumerate(dev.units):
                if units.index(u.unit) != ui:
                    errs.append(((*dpath, "units", ui, "unit"),
                                 f"unit id {u.unit} appears twice on this bus"))
            need = rtu_cycle_s(dev)
            if need is not None and need > dev.poll:
                msg = (f"at {dev.baudrate} baud this bus needs {need * 1000:.0f} ms per cycle even when "
                       f"every unit answers ({len(dev.units)} units); poll is {dev.poll * 1000:g} ms: "
                       "raise poll or baudrate, or split the units over more lines")
                errs.append(((*dpath, "poll"), msg))
        for cpath, ch in device_channels(dev):
            full = (*dpath, *cpath)
            if ch.name in seen_ch:
                errs.append(((*full, "name"),
                             f"duplicate channel name {ch.name!r} (first at {_dotted(seen_ch[ch.name])})"))
            seen_ch.setdefault(ch.name, full)
            if ch.preset or ch.alarms is not None or isinstance(ch.exposure, str):
                from rules.settings import check_channel  # here: rules.settings imports this module

                errs.extend(((*full, *key), msg) for key, msg in check_channel(ch))
            if isinstance(ch, ModbusChannel):
                try:
                    func, _reg, bit = parse_modbus_address(ch.address)
                except ValueError as e:
                    errs.append(((*full, "address"), str(e)))
                    continue
                if func in ("coil", "discrete") and ch.type != "bool":
                    errs.append(((*full, "type"),
                                 f"{func} addresses hold single bits: type must be bool, not {ch.type}"))
                if bit is not None and ch.type != "bool":
                    errs.append(((*full, "type"), f"a register bit (.{bit}) is a bool, not {ch.type}"))
                if func in ("holding", "input") and ch.type == "bool" and bit is None:
                    errs.append(((*full, "address"), "a bool in a register needs its bit: e.g. holding:20.3"))
                width = _REG_WIDTH[ch.type]
                if width > 1 and ch.byte_order in ("CDAB", "DCBA", "BADC", "ABCD"):
                    pass
                if width == 1 and ch.byte_order in ("CDAB", "DCBA") and ch.type != "bool":
                    errs.append(((*full, "byte_order"),
                                 f"{ch.type} fills one register: word orders CDAB/DCBA "
                                 "need two or more; use ABCD or BADC"))
            if isinstance(ch, OpcUaChannel) and (ch.node is None) == (ch.browse_path is None):
                errs.append((full, "give exactly one of 'node' (a NodeId) or 'browse_path'"))
            elif isinstance(ch, OpcUaChannel) and ch.node is not None and not _NODEID.match(ch.node):
                errs.append(((*full, "node"), f"{ch.node!r} is not a NodeId; write ns=2;s=R201.PT01, "
                             "ns=2;i=1001 or ns=2;g=<guid>"))
            if isinstance(ch, SerialChannel) and isinstance(dev, SerialDevice):
                ways = sum(x is not None for x in (ch.group, ch.pattern, ch.field))
                if ways != 1:
                    errs.append((full, "give exactly one of 'group' (in the device's frame.pattern), "
                                 "'pattern' (a regex with (?P<value>...)) or 'field' ([start, end])"))
                if ch.group is not None and not dev.frame.pattern:
                    errs.append(((*full, "group"), "'group' needs frame.pattern on the device"))
                for key, pat in (("pattern", ch.pattern),):
                    if pat is not None:
                        try:
                            rx = re.compile(pat)
                        except re.error as e:
                            errs.append(((*full, key), f"bad regular expression: {e}"))
                        else:
                            if "value" not in rx.groupindex:
                                errs.append(((*full, key), "the regex needs a (?P<value>...) group"))
            a = ch.alarms
            if a is not None:
                order = [(k, getattr(a, k)) for k in ("ll", "l", "h", "hh")]
                set_ = [(k, v) for k, v in order if v is not None]
                for (k1, v1), (k2, v2) in itertools.pairwise(set_):
                    if not v1 < v2:
                        errs.append(((*full, "alarms", k2), f"limits must rise ll < l < h < hh: "
                                     f"{k1}={v1:g} is not below {k2}={v2:g}"))
                if a.trend is not None and a.trend.predict is not None and a.h is None and a.hh is None:
                    errs.append(((*full, "alarms", "trend", "predict"),
                                 "prediction needs a high limit (h or hh)"))
    if isinstance(cfg.devices, list) and not cfg.devices:
        pass
    for di, dev in enumerate(cfg.devices):
        if isinstance(dev, SerialDevice):
            f = dev.frame
            if (f.terminator is None) == (f.length is None):
                errs.append((("devices", di, "frame"),
                             "give exactly one of frame.terminator or frame.length"))
            if f.pattern is not None:
                try:
                    re.compile(f.pattern)
                except re.error as e:
                    errs.append((("devices", di, "frame", "pattern"), f"bad regular expression: {e}"))
                else:
                    groups = re.compile(f.pattern).groupindex
                    for ci, ch in enumerate(dev.channels):
                        if ch.group is not None and ch.group not in groups:
                            errs.append((("devices", di, "channels", ci, "group"),
                                         f"no group (?P<{ch.group}>...) "
                                         f"in frame.pattern; it has: {', '.join(groups) or 'none'}"))
            for ci, ch in enumerate(dev.channels):
                if ch.field is not None and not 0 <= ch.field[0] < ch.field[1]:
                    errs.append((("devices", di, "channels", ci, "field"), "field is [start, end) with "
                                 "0 <= start < end"))
        if isinstance(dev, OpcUaDevice):
            sec = dev.security
            if (sec.policy == "None") != (sec.mode == "None"):
                errs.append((("devices", di, "security"), "policy and mode go together: both None, or a "
                             "policy with Sign / SignAndEncrypt"))
            elif sec.policy != "None":
                for key in ("certificate", "private_key"):
                    if getattr(sec, key) is None:
                        errs.append((("devices", di, "security", key), f"security {sec.policy} needs the "
                                     f"client's {key.replace('_', ' ')}"))
            if dev.password is not None and dev.password_file is not None:
                errs.append((("devices", di, "password"), "give password or password_file, not both"))
            if (dev.password is not None or dev.password_file is not None) and not dev.username:
                errs.append((("devices", di, "username"), "a password needs a username"))
    return errs


# --------------------------------------------------------------------------- loading

def _register_overlaps(cfg: Config) -> list[tuple[Path_, str]]:
    """Registers claimed twice on one device (and unit): how a float32 (or int32, ...)
    mapped to one register shows up. A value takes 1 (16-bit), 2 (32-bit) or 4 (float64)
    consecutive registers; the next value may start only after them. Channels on the very
    same register with the same width (bits of one status word, a register read twice)
    are fine."""
    errs: list[tuple[Path_, str]] = []
    for di, dev in enumerate(cfg.devices):
        if not isinstance(dev, ModbusTcpDevice | ModbusRtuDevice):
            continue
        spans: dict[tuple[Any, str], list[tuple[int, int, str, str, Path_]]] = {}
        for cpath, ch in device_channels(dev):
            if not isinstance(ch, ModbusChannel):
                continue
            try:
                func, reg, bit = parse_modbus_address(ch.address)
            except ValueError:
                continue  # reported by _cross_check
            if func not in ("holding", "input"):
                continue
            width = 1 if bit is not None or ch.type == "bool" else _REG_WIDTH.get(ch.type, 1)
            full = ("devices", di, *cpath)
            if reg + width - 1 > 65535:
                errs.append(((*full, "address"), f"a {ch.type} takes {width} registers: {func}:{reg} would "
                             f"need {reg}-{reg + width - 1}, beyond 65535"))
                continue
            unit = cpath[1] if cpath[0] == "units" else None
            spans.setdefault((unit, func), []).append((reg, width, ch.name, ch.type, full))
        for (_unit, func), items in spans.items():
            items.sort(key=lambda s: (s[0], s[4]))
            for k, (reg, width, _name, _type, full) in enumerate(items):
                # sorted by register and no value is wider than 4 registers: only the
                # few items just before this one can overlap it
                j = k
                while j > 0 and items[j - 1][0] > reg - 4:
                    j -= 1
                for reg0, width0, name0, type0, _full0 in items[j:k]:
                    if (reg0, width0) == (reg, width) or reg0 + width0 <= reg:
                        continue
                    errs.append(((*full, "address"), f"register {func}:{reg} is already taken by {name0!r}, "
                                 f"a {type0} at {func}:{reg0} that spans {width0} registers "
                                 f"({reg0}-{reg0 + width0 - 1}); move this channel to {func}:{reg0 + width0} "
                                 f"or later, or check the type of {name0!r}"))
                    break
    return errs


def _prune(data: Any, bad: set[Path_], here: Path_ = ()) -> tuple[Any, dict[Path_, list[int]]]:
    """A copy of ``data`` without the list items / keys at the ``bad`` paths, and for each
    list that lost items (keyed by its path in the copy) the original index of each item."""
    maps: dict[Path_, list[int]] = {}
    if isinstance(data, dict):
        out: dict[Any, Any] = {}
        for k, v in data.items():
            if (*here, k) in bad:
                continue
            out[k], sub = _prune(v, bad, (*here, k))
            maps.update(sub)
        return out, maps
    if isinstance(data, list):
        keep = [i for i in range(len(data)) if (*here, i) not in bad]
        items = []
        for new_i, i in enumerate(keep):
            item, sub = _prune(data[i], bad, (*here, i))
            items.append(item)
            # sub-paths were built with the original index; re-key them by the new one
            for p, m in sub.items():
                maps[(*here, new_i, *p[len(here) + 1:])] = m
        if len(keep) != len(data):
            maps[here] = keep
        return items, maps
    return data, maps


def _unprune(path: Path_, maps: dict[Path_, list[int]]) -> Path_:
    """A path in the pruned copy → the same place in the original document."""
    out: Path_ = ()
    cur: Path_ = ()
    for part in path:
        orig = maps[cur][part] if isinstance(part, int) and cur in maps else part
        cur = (*cur, part)
        out = (*out, orig)
    return out


def _culprit(src: Source, loc: Path_) -> Path_ | None:
    """What to leave out so the rest of the file can still be cross-checked: the channel
    (or device, or key) an error is in."""
    path = src.real_path(loc)
    for k in range(len(path) - 2, -1, -1):
        if path[k] == "channels" and isinstance(path[k + 1], int):
            return path[: k + 2]
    if len(path) >= 2 and path[0] == "devices" and isinstance(path[1], int):
        return path[:2]
    if loc and loc[0] == "devices":
        return ("devices",)
    if path and path[0] in ("gateway",):
        return None  # required: nothing left to check without it (see below)
    if loc and isinstance(loc[0], str):
        return (loc[0],)
    return None


def _partial_cross_check(src: Source, errors: list[dict[str, Any]]) -> list[tuple[Path_, str]]:
    """Cross-check what is valid in a file that has schema errors: leave out each broken
    channel, device or section, validate the rest, check it, and map the paths back."""
    bad: set[Path_] = set()
    for err in errors:
        loc = _loc_path(tuple(err["loc"]))
        culprit = _culprit(src, loc)
        if culprit is None:
            if src.real_path(loc)[:1] == ("gateway",):
                # the gateway section is required but not cross-checked: stand in for it
                continue
            return []
        bad.add(culprit)
    data, maps = _prune(src.data, bad)
    if isinstance(data, dict) and any(p[:1] == ("gateway",) for p in
                                      (src.real_path(_loc_path(tuple(e["loc"]))) for e in errors)):
        data["gateway"] = {"id": "x", "site": "x"}
    try:
        cfg = Config.model_validate(data)
    except ValidationError:
        return []  # still broken: the schema errors are all we can say
    out: list[tuple[Path_, str]] = []
    for path, msg in [*_cross_check(cfg), *_register_overlaps(cfg)]:
        out.append((_unprune(path, maps), msg))
    return out


def validate(src: Source) -> Config:
    """Models, then cross checks; raise ConfigError with every problem found, in file order.

    When the models find errors, the cross checks still run on the parts that are valid
    (broken channels, devices or sections left out), so one run reports everything.
    """
    if not isinstance(src.data, dict):
        raise ConfigError([f"{src.file}:1:1: (top): the file must be a mapping with a 'gateway:' section"])
    found: list[tuple[int, int, int, str]] = []

    def add(path: Path_, message: str, at_key: bool = False) -> None:
        m = src.key_marks.get(src.real_path(path), src.where(path)) if at_key else src.where(path)
        found.append((m.line, m.col, len(found), _format(src, path, message, m)))

    cfg: Config | None = None
    try:
        cfg = Config.model_validate(src.data)
    except ValidationError as e:
        errors: list[dict[str, Any]] = [dict(err) for err in e.errors()]
        for err in errors:
            path = _loc_path(tuple(err["loc"]))
            real = src.real_path(path)
            if err["type"] == "string_type" and real in src.texts:
                text = src.texts[real]
                add(path, f"write it in quotes, \"{text}\", to keep it as text: "
                          f"unquoted, YAML reads {text} as "
                          f"the number {err.get('input')!r}")
                continue
            if err["type"] == "union_tag_invalid":
                path = (*real, "protocol")  # point at the protocol's value
            add(path, _explain(err), at_key=err["type"] == "extra_forbidden")
        for path, msg in _partial_cross_check(src, errors):
            add(path, msg)
    else:
        for path, msg in [*_cross_check(cfg), *_register_overlaps(cfg)]:
            add(path, msg)
    if found or cfg is None:
        raise ConfigError([line for *_, line in sorted(found)])
    cfg._base_dir = Path(src.file).resolve().parent if src.file != "<string>" else Path.cwd()
    return cfg


def load(path: str | Path) -> Config:
    try:
        return validate(load_file(path))
    except YamlError as e:
        raise ConfigError([str(e)]) from None


def loads(text: str, file: str = "<string>") -> Config:
    try:
        return validate(load_text(text, file))
    except YamlError as e:
        raise ConfigError([str(e)]) from None
