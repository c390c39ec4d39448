"""The gateway's configuration as strict pydantic models.

Every model rejects unknown keys. Device sections are a tagged union on
``protocol:``. Durations are written with their unit (``500ms``, ``1s``, ``5m``),
sizes with theirs (``512MB``). The models are the schema only: the checks across
fields and the error report are in ``gateway.core.configcheck``; the daemon's loader
(``gateway.config``) adds the checks of drivers and rules.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    field_validator,
    model_validator,
)

from gateway.core.config_hygiene import HygieneSection
from gateway.core.config_notify import NotifySection
from gateway.core.config_permits import PermitsSection
from gateway.core.config_regulators import Regulator
from gateway.core.strict import Host, Strict
from gateway.core.units import Duration, Number, Size, check_listen
from gateway.core.yamlsrc import Path_


def _plain_text(v: str) -> str:
    """Names people read and tools key on: no control, format (zero-width, right-to-left
    override) or line-separator characters, which make two names look alike or a log line
    lie."""
    for ch in v:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"):
            raise ValueError(f"{v[:80]!r} holds an invisible or control character (U+{ord(ch):04X}); "
                             "type the name plainly")
    return v


def _topic_safe(v: str) -> str:
    """Text that becomes part of an MQTT topic: no wildcards, no levels of its own."""
    _plain_text(v)
    if any(c in v for c in "#+/") or v.startswith("$"):
        raise ValueError(f"{v[:80]!r} would break MQTT topics: no '#', '+' or '/', and no leading '$'")
    return v


def _topic_prefix(v: str) -> str:
    _plain_text(v)
    if any(c in v for c in "#+") or v.startswith("$") or v.startswith("/") or "//" in v:
        raise ValueError(f"{v[:80]!r} is not a topic prefix: no '#' or '+' wildcards, no leading '$' "
                         "or '/', no empty levels")
    return v


def _proxy(v: str) -> str:
    import ipaddress

    try:
        ipaddress.ip_network(v, strict=False)
    except ValueError:
        raise ValueError(f"{v[:80]!r} is not an IP address or network (10.0.0.5, 10.0.0.0/24, ::1)") from None
    return v


#: the address (or network) of a reverse proxy whose X-Forwarded-For a listener believes
TrustedProxy = Annotated[str, AfterValidator(_proxy)]
Listen = Annotated[str, AfterValidator(check_listen)]
PlainText = Annotated[str, AfterValidator(_plain_text)]
TopicSafe = Annotated[str, AfterValidator(_topic_safe)]


# Strict: the base of every config model (its own module, gateway/core/strict.py, breaks cycles)


# --------------------------------------------------------------------------- gateway

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class GatewaySection(Strict):
    id: str = Field(pattern=ID_PATTERN, description="gateway id, as central knows it")
    site: TopicSafe = Field(min_length=1, max_length=64,
                            description="enterprise / site code (统一社会信用代码), quoted")
    name: str | None = Field(default=None, description="human name shown in the API and the demo")
    state_dir: Path = Field(default=Path("/var/lib/safegw"),
                            description="journal, keys, registers live here; "
                            "`safegw run --state-dir` (the systemd unit) overrides it")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    timezone: str | None = Field(default=None, max_length=64,
                                 description="the site's IANA time zone (Asia/Shanghai): the page shows "
                                             "times in it; default: the machine's own")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        import zoneinfo

        if v is None:
            return v
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not a time zone (e.g. Asia/Shanghai)") from None
        return v

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
    commit_every: Duration = Field(
        default=0.0, ge=0.0, le=10.0,
        description="commit cadence for sample batches: 0 commits each poll as it comes; e.g. 1s gathers "
                    "a second of polls into one commit (fewer fsyncs and WAL pages: less flash wear), and "
                    "a reading counts as taken up to that much later (a power cut loses at most that much "
                    "of not-yet-taken readings). Alarm transitions and other events commit at once")
    page_size: Literal[4096, 8192, 16384, 32768, 65536] = Field(
        default=16384, description="SQLite page size of a new journal (an existing one keeps its own): "
                                   "4096 writes about a quarter as much per commit on a small plant")

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
    restore: Number | None = Field(default=None, description="hh clears only below this (instead of hh - "
                                   "deadband): a coal mine's power-off restore value (AQ 1029-2019 §6)")
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
    kind: Literal["concentration", "noise", "impulse"] = "concentration"
    twa: Number | None = Field(default=None, gt=0, description="PC-TWA limit (8 h)")
    stel: Number | None = Field(default=None, gt=0, description="PC-STEL limit (15 min)")
    mac: Number | None = Field(default=None, gt=0, description="MAC: a ceiling no reading may pass "
                               "(GBZ 2.1-2019 §3, terms: MAC)")
    peak: bool | None = Field(default=None, description="peak exposure (GBZ 2.1-2019 峰接触浓度); default: "
                              "on for a PC-TWA without PC-STEL or MAC")
    threshold_db: Number | None = Field(default=None, ge=60, le=200, description="impulse noise: a peak "
                                        "level rising above this counts one impulse (GBZ 2.2-2007 §11)")
    criterion_db: Number = 85.0
    exchange_rate_db: Number = 3.0


DataType = Literal["bool", "int16", "uint16", "int32", "uint32", "float32", "float64"]
ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]


class ChannelBase(Strict):
    name: PlainText = Field(min_length=1, max_length=128, pattern=r"^[^\s/#+]+$")
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
    hazard_source: PlainText | None = Field(default=None, max_length=128)
    area: PlainText | None = Field(default=None, max_length=128)
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
    name: str = Field(pattern=ID_PATTERN)
    poll: Duration = 1.0
    timeout: Duration = 1.0
    retries: int = Field(default=1, ge=0, le=10)
    enabled: bool = True
    maintenance: bool = False


class ModbusTcpDevice(DeviceBase):
    protocol: Literal["modbus-tcp"]
    host: Host
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
    host: Host = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    tls: TlsClient | None = None
    topic_prefix: Annotated[str, AfterValidator(_topic_prefix)] | None = Field(default=None, max_length=200)
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
    listen: Listen | None = "0.0.0.0:8443"
    central_url: str | None = None
    central_id: str | None = Field(default=None, description="push: the node id of the central node at "
                                   "central_url, which its requests are signed for; default: the node of "
                                   "the first central_keys bundle")
    central_keys: list[Path] = Field(default_factory=list)
    cipher: Literal["aes-256-gcm", "sm4-gcm"] = "aes-256-gcm"
    suite: Literal["x25519-ed25519", "gm"] = Field(
        default="x25519-ed25519", description="gm: the national suite (SM2 key transport and signature, "
        "SM3, SM4-GCM; docs/security.md); central's sources entry must say the same")
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
    remote_config: Literal["refuse", "apply"] = Field(
        default="refuse", description="configs issued by central (signed, over the sync link): apply them "
        "by live reload, or refuse them all (the default: on-site changes only); docs/central.md")
    remote_config_grace: Duration = Field(
        default=120.0, gt=0, le=3600, description="after applying a config from central, the devices polled "
        "good before must be polled good again within this time, else the previous config is restored")

    @model_validator(mode="after")
    def _suite_cipher(self) -> UplinkSection:
        if self.suite == "gm" and "cipher" in self.model_fields_set and self.cipher != "sm4-gcm":
            raise ValueError("suite gm encrypts with SM4-GCM: drop 'cipher' or set it to sm4-gcm")
        return self


class ListenerGuard(Strict):
    """What every HTTPS listener with bearer tokens guards itself with (the admin API,
    central): the bad-token lockout, the proxies it believes, the head timeout."""

    max_failures: int = Field(default=10, ge=0, description="failed token checks from one client address "
                              "within failure_window before it is locked out (0: never)")
    failure_window: Duration = Field(default=300.0, gt=0)
    lockout: Duration = Field(default=300.0, gt=0, description="how long a locked-out address gets 429 for "
                              "new tokens (tokens already verified keep working)")
    trusted_proxies: list[TrustedProxy] = Field(
        default_factory=list, description="reverse proxies (addresses or networks) whose X-Forwarded-For "
                                          "names the client; empty: the header is ignored from everyone")
    header_timeout: Duration = Field(default=10.0, gt=0, description="time a client has to send a "
                                     "request's line and headers")


class ApiSection(ListenerGuard):
    listen: Listen = Field(default="127.0.0.1:8080",
                           description="host:port ([::1]:8080 for IPv6); loopback unless you mean it")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    users_file: Path | None = Field(default=None, description="token store (default: <state_dir>/users.json)")
    docs: bool = Field(default=True, description="serve the OpenAPI documentation at /docs")
    max_body: Size = Field(default=2**20, ge=1024, description="largest request body (attachments: "
                           "registers.max_attachment; imports: max_import), refused with 413 as it arrives")
    max_import: Size = Field(default=10 * 2**20, ge=1024, description="largest register import body")
    language: Literal["zh-CN", "en"] = Field(default="en", description="the page's language until a user "
                                             "picks one (kept in that browser): zh-CN or en")


class RegistersSection(Strict):
    remind_days: int | list[int] = Field(
        default=[30, 7, 1], description="raise a reminder this many days before a due date (one or several "
                                        "thresholds); an overdue reminder follows on the day after")
    types_file: Path | None = Field(default=None, description="YAML with the plant's own register types")
    max_attachment: Size = Field(default=20 * 10**6, ge=1024, description="largest attachment, at least 1KB")
    check_every: Duration = Field(default=3600.0, ge=0.01, description="how often due dates are checked "
                                  "(at least 10ms; 0 would be a busy loop)")
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


class AlarmsSection(Strict):
    """Operator commands on alarms (rules/commands.py), the same by API and MQTT."""

    max_shelve: Duration = Field(default=7 * 86400.0, description="longest a shelve may last (ISA-18.2: "
                                 "shelving is time-limited)")

    @field_validator("max_shelve")
    @classmethod
    def _max_shelve_bounds(cls, v: float) -> float:
        if not 60 <= v <= 366 * 86400:
            raise ValueError("max_shelve must be between 1m and 366d")
        return v


class ConfigFile(Strict):
    """A whole config file: knows its folder, against which its relative paths resolve."""

    # set by the loader: the folder of the config file, against which relative paths resolve
    _base_dir: Path = Path(".")

    @property
    def base_dir(self) -> Path:
        """The folder of the config file (the working directory for a config given as text)."""
        return self._base_dir

    @base_dir.setter
    def base_dir(self, value: Path) -> None:
        self._base_dir = value

    def path(self, p: Path | str) -> Path:
        """A path from the config, resolved against the config file's folder."""
        return resolve_path(p, self._base_dir)


class Config(ConfigFile):
    gateway: GatewaySection
    journal: JournalSection = JournalSection()
    devices: list[Device] = Field(default_factory=list)
    mqtt: MqttSection | None = None
    influxdb: InfluxSection | None = None
    uplink: UplinkSection | None = None
    api: ApiSection | None = None
    registers: RegistersSection = RegistersSection()
    permits: PermitsSection = PermitsSection()
    alarms: AlarmsSection = AlarmsSection()
    hygiene: HygieneSection = HygieneSection()
    notify: NotifySection | None = None
    regulators: list[Regulator] | None = None


    def device(self, name: str) -> ModbusTcpDevice | ModbusRtuDevice | OpcUaDevice | SerialDevice:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(name)


def resolve_path(p: Path | str, base_dir: Path) -> Path:
    """A path as written in a config file: absolute, or relative to that file's folder."""
    p = Path(p).expanduser()
    return p if p.is_absolute() else base_dir / p


def device_channels(dev: Any) -> list[tuple[Path_, ChannelBase]]:
    """Every channel of a device with its path relative to the device."""
    if isinstance(dev, ModbusRtuDevice):
        return [(("units", ui, "channels", ci), ch)
                for ui, u in enumerate(dev.units) for ci, ch in enumerate(u.channels)]
    return [(("channels", ci), ch) for ci, ch in enumerate(dev.channels)]



# --------------------------------------------------------------------------- addresses

NODEID = re.compile(
    r"^(?:(?:ns=\d+|nsu=[^;]+);)?(?:i=\d+|s=.+|g=[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-"
    r"[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}|b=[A-Za-z0-9+/=]+)$")
_MODBUS_ADDR = re.compile(r"^(holding|input|coil|discrete):(0x[0-9a-fA-F]+|[0-9]+)(?:\.([0-9]+))?$")
REG_WIDTH = {"bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4}


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


