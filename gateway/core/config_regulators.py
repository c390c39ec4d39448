"""The ``regulators:`` section: adapters that report to the authorities' platforms
(docs/regulators.md). Each adapter is a journal consumer with its own cursor
(``regulator.<name>``), built by ``northbound.service``.

The list is a tagged union on ``type:``: ``hj212``, ``mem-iot`` and ``template``. A new
platform adds its model here and to ``Regulator``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from gateway.core.strict import Host, Strict
from gateway.core.units import Duration, Number
from gateway.core.yamlsrc import Path_

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class PointMap(Strict):
    """One safegw channel sent as one platform code: ``sent = value × scale + offset``."""

    channel: str = Field(min_length=1, max_length=200, description="the safegw channel's name")
    code: str = Field(pattern=r"^[A-Za-z0-9]{1,20}$",
                      description="the platform's pollutant / indicator code (HJ 212-2017 appendix B: "
                                  "a01001, a34013, w01018, ...; or the code the platform issued)")
    scale: Number = Field(default=1.0, description="unit conversion: multiply by this")
    offset: Number = Field(default=0.0, description="unit conversion: then add this")
    decimals: int = Field(default=3, ge=0, le=9, description="digits after the point in the frame")
    unit: str | None = Field(default=None, max_length=32,
                             description="the unit the platform receives (template point list; "
                                         "default: the channel's unit)")
    cou: Literal["s", "min", "h"] | None = Field(
        default=None, description="send -Cou (the amount over the interval) for a rate per this time "
                                  "unit: Cou = Avg × the interval's length in it (flow in m3/h → h)")

    @model_validator(mode="after")
    def _scale(self) -> PointMap:
        if self.scale == 0:
            raise ValueError("scale 0 would send every value as the offset")
        return self


class Hj212Adapter(Strict):
    """A platform that speaks HJ 212-2017 over one long TCP connection."""

    type: Literal["hj212"]
    name: str = Field(pattern=NAME_PATTERN, description="names the cursor (regulator.<name>) and the logs")
    host: Host
    port: int = Field(ge=1, le=65535)
    mn: str = Field(pattern=r"^[A-Za-z0-9]{1,24}$",
                    description="the station's MN as the platform issued it (HJ 212-2017 table 4: 24 chars)")
    password: str | None = Field(default=None, pattern=r"^[!-~]{1,6}$",
                                 description="PW (6 characters, HJ 212-2017 table 4); better in a file")
    password_file: Path | None = Field(default=None, description="file (mode 0600) holding PW")
    st: str = Field(default="31", pattern=r"^[0-9]{2}$",
                    description="system code ST (HJ 212-2017 6.6.1 table: 22 air quality, 23 noise, "
                                "31 air pollution source, 32 surface water source, ...)")
    utc_offset: str = Field(default="+08:00", pattern=r"^[+-](0\d|1[0-4]):[0-5]\d$",
                            description="the zone of QN, DataTime and the day boundaries (Beijing time)")
    start: Literal["end", "oldest"] = Field(
        default="end", description="where a newly configured adapter starts in the journal: end (from now "
                                   "on; the platform can ask for the past with history requests) or oldest "
                                   "(send everything the journal still holds)")
    realtime: bool = Field(default=True, description="send real-time data (CN 2011)")
    rtd_interval: Duration = Field(default=30.0, ge=1, le=3600,
                                   description="real-time data interval (platforms set 30-3600 s by CN 1062)")
    minute_interval: Duration | None = Field(default=600.0, ge=60, le=3600,
                                             description="minute data (CN 2051) every; null: none")
    hourly: bool = Field(default=True, description="send hourly data (CN 2061)")
    daily: bool = Field(default=True, description="send daily data (CN 2031)")
    late: Duration = Field(default=5.0, ge=0, le=600,
                           description="a period is closed once samples this much newer than its end came in")
    ack: bool = Field(default=True, description="ask for the platform's 9014 data response (Flag A bit)")
    ack_timeout: Duration = Field(default=10.0, gt=0, le=600,
                                  description="OverTime: wait this long for 9014 before resending")
    retries: int = Field(default=3, ge=0, le=100, description="ReCount: resends before keeping it for later")
    retry_later: Duration = Field(default=60.0, gt=0, le=86400,
                                  description="a message kept for later is tried again after this")
    connect_timeout: Duration = Field(default=10.0, gt=0, le=300)
    reconnect_max: Duration = Field(default=60.0, gt=0, le=3600,
                                   description="longest pause between reconnects")
    time_tolerance: Duration = Field(default=5.0, ge=0, le=3600,
                                     description="a platform's time (CN 1012) this close to ours is accepted")
    points: list[PointMap] = Field(min_length=1, max_length=10000)

    @model_validator(mode="after")
    def _checks(self) -> Hj212Adapter:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("give exactly one of password or password_file")
        if self.minute_interval is not None and 3600 % self.minute_interval:
            raise ValueError(f"minute_interval {self.minute_interval:g}s does not divide an hour: "
                             "give 1m, 5m, 10m, 15m, 30m or 1h")
        if 86400 % self.rtd_interval:
            raise ValueError(f"rtd_interval {self.rtd_interval:g}s does not divide a day")
        return self


class MemIotFields(Strict):
    """The field names of the inner (encrypted) payload of a mem-iot upload.

    The platform's field tables are not all public (docs/regulators.md): these defaults
    are safegw's, to be set to the names in the interface document the platform issued."""

    enterprise: str = Field(default="enterpriseCode", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$",
                            description="the enterprise (social credit) code")
    device: str | None = Field(default="gatewayCode", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$",
                               description="this gateway's code; null: not sent")
    items: str = Field(default="datas", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$",
                       description="the list of readings")
    code: str = Field(default="pointCode", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$",
                      description="a reading's point / indicator code")
    value: str = Field(default="value", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    time: str = Field(default="collectTime", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    quality: str = Field(default="status", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$",
                         description="a reading's quality flag (HJ 212-2017 flags: N, C, M, S, D, T, B)")

    @model_validator(mode="after")
    def _distinct(self) -> MemIotFields:
        inner = [self.code, self.value, self.time, self.quality]
        outer = [self.enterprise, self.items] + ([self.device] if self.device else [])
        if len(set(inner)) != len(inner) or len(set(outer)) != len(outer):
            raise ValueError("field names must differ from each other")
        return self


class MemIotAdapter(Strict):
    """The ministry's IoT sensing platform (dust-explosion monitoring): HTTP(S) POST of
    ``{"appid": ..., "data": hex(SM4-CBC(PKCS#7, JSON))}`` with the app secret in a header."""

    type: Literal["mem-iot"]
    name: str = Field(pattern=NAME_PATTERN, description="names the cursor (regulator.<name>) and the logs")
    url: str = Field(pattern=r"^https?://[^\s]{1,500}$", description="the platform's upload address")
    appid: str = Field(pattern=r"^[!-~]{1,128}$", description="the application id the platform issued")
    secret_file: Path = Field(description="file (mode 0600) holding the app secret")
    secret_header: str = Field(default="secret", pattern=r"^[A-Za-z0-9-]{1,64}$",
                               description="the HTTP header carrying the app secret")
    key_file: Path = Field(description="file (mode 0600): the SM4 key, 32 hex digits, as issued")
    iv_file: Path = Field(description="file (mode 0600): the SM4-CBC IV, 32 hex digits")
    ca_file: Path | None = Field(default=None, description="CA bundle for https (default: the system's)")
    enterprise_code: str = Field(pattern=r"^[!-~]{1,64}$",
                                 description="the enterprise code (e.g. the 18-character social credit code)")
    device_code: str | None = Field(default=None, pattern=r"^[!-~]{1,64}$",
                                    description="this gateway's code at the platform")
    fields: MemIotFields = Field(default_factory=MemIotFields)
    time_format: str = Field(default="%Y-%m-%d %H:%M:%S", min_length=2, max_length=40,
                             description="strftime format of a reading's time (in utc_offset)")
    utc_offset: str = Field(default="+08:00", pattern=r"^[+-](0\d|1[0-4]):[0-5]\d$",
                            description="the zone of the times sent (Beijing time)")
    start: Literal["end", "oldest"] = Field(
        default="end", description="where a newly configured adapter starts in the journal")
    batch_points: int = Field(default=500, ge=1, le=10000, description="readings per POST at most")
    timeout: Duration = Field(default=10.0, gt=0, le=300, description="one POST's deadline")
    backoff_max: Duration = Field(default=60.0, gt=0, le=3600, description="longest pause between retries")
    ok_codes: list[int] = Field(default=[0, 200], min_length=1, max_length=20,
                                description="values of the answer's ``code`` field that mean accepted")
    points: list[PointMap] = Field(min_length=1, max_length=10000)



#: what a template may name: per reading (``item``), per message (``message``), and
#: around an encrypted or signed message (``envelope``); docs/regulators.md
ITEM_FIELDS = frozenset({"code", "value", "time", "ts_ms", "flag", "valid", "quality", "channel",
                         "enterprise", "hazard"})
MESSAGE_FIELDS = frozenset({"items", "count", "enterprise", "hazard", "now", "now_ms", "msg_id"})
ENVELOPE_FIELDS = frozenset({"data", "sign", "enterprise", "hazard", "now", "now_ms", "msg_id"})
PLACEHOLDER = r"\$\{([^}]*)\}"


def template_errors(tpl: Any, allowed: frozenset[str], at: tuple[Any, ...],
                    depth: int = 0) -> list[tuple[Path_, str]]:
    """Every ``${name}`` in a template that ``allowed`` does not offer, at its own key."""
    errs: list[tuple[Path_, str]] = []
    if depth > 8:
        return [(at, "template nested deeper than 8 levels")]
    if isinstance(tpl, dict):
        for k, v in tpl.items():
            errs += template_errors(v, allowed, (*at, k), depth + 1)
    elif isinstance(tpl, list):
        for i, v in enumerate(tpl):
            errs += template_errors(v, allowed, (*at, i), depth + 1)
    elif isinstance(tpl, str):
        for name in re.findall(PLACEHOLDER, tpl):
            if name not in allowed:
                errs.append((at, f"unknown field ${{{name}}} in the template; known here: "
                             + ", ".join(sorted(allowed))))
    return errs


class TemplateMqtt(Strict):
    host: Host
    port: int = Field(default=8883, ge=1, le=65535)
    tls: bool = Field(default=True, description="MQTT over TLS (the platform's CA in ca_file)")
    ca_file: Path | None = None
    client_id: str = Field(pattern=r"^[!-~]{1,64}$")
    username: str | None = Field(default=None, max_length=128)
    password_file: Path | None = Field(default=None, description="file (mode 0600) holding the password")
    topic: str = Field(min_length=1, max_length=256, pattern=r"^[^#+\s]+$",
                       description="topic of the data messages")
    qos: Literal[0, 1] = 1


class TemplateHttp(Strict):
    url: str = Field(pattern=r"^https?://[^\s]{1,500}$", description="where each message is POSTed")
    ca_file: Path | None = Field(default=None, description="CA bundle for https (default: the system's)")
    headers: dict[str, str] = Field(default_factory=dict, max_length=20,
                                    description="extra request headers (no secrets: those go in files)")
    timeout: Duration = Field(default=10.0, gt=0, le=300, description="one POST's deadline")
    backoff_max: Duration = Field(default=60.0, gt=0, le=3600, description="longest pause between retries")
    ok_codes: list[int] = Field(default=[0, 200], min_length=1, max_length=20,
                                description="values of the answer's ``code`` field that mean accepted")


class TemplateCrypto(Strict):
    cipher: Literal["none", "sm4-cbc", "sm4-ecb", "aes-cbc", "aes-ecb"] = "none"
    key_file: Path | None = Field(default=None, description="file (0600): the key, hex (SM4: 16 bytes)")
    iv_file: Path | None = Field(default=None, description="file (0600): the CBC IV in hex (16 bytes)")
    encoding: Literal["base64", "hex"] = "base64"
    signature: Literal["none", "hmac-sha256", "hmac-sm3", "sm3"] = Field(
        default="none", description="over ${data}: hex HMAC with the sign key; sm3: hex SM3(data + sign key)")
    sign_key_file: Path | None = Field(default=None, description="file (0600): the signing secret (text)")

    @model_validator(mode="after")
    def _files(self) -> TemplateCrypto:
        if self.cipher != "none" and self.key_file is None:
            raise ValueError(f"cipher {self.cipher} needs key_file")
        if self.cipher.endswith("-cbc") and self.iv_file is None:
            raise ValueError(f"cipher {self.cipher} needs iv_file")
        if self.signature != "none" and self.sign_key_file is None:
            raise ValueError(f"signature {self.signature} needs sign_key_file")
        return self


#: fields of the other messages (docs/regulators.md, "Template publisher")
COMMON_FIELDS = frozenset({"enterprise", "hazard", "now", "now_ms", "msg_id", "gateway"})
ALARM_FIELDS = COMMON_FIELDS | {"event", "code", "channel", "level", "value", "limit", "time", "ts_ms",
                                "rule", "state", "priority", "unit", "who"}
HEARTBEAT_FIELDS = COMMON_FIELDS | {"points", "uptime_s"}
ENTERPRISE_FIELDS = COMMON_FIELDS | {"name", "address", "contact", "phone", "industry", "longitude",
                                     "latitude"}
HAZARD_FIELDS = frozenset({"code", "name", "grade", "location", "points", "enterprise"})
POINT_FIELDS = frozenset({"code", "channel", "description", "kind", "unit", "hazard", "hh", "h", "l", "ll",
                          "range_lo", "range_hi", "decimals", "enterprise"})
LIST_FIELDS = COMMON_FIELDS | {"items", "count"}
#: the names an alarm's ``${event}`` takes, from the journal's transition (rules/events.py)
ALARM_EVENTS = {"raise": "raised", "escalate": "escalated", "deescalate": "deescalated",
                "clear": "cleared", "ack": "acknowledged"}

Topic = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^#+\s]+$")]
Url = Annotated[str, Field(pattern=r"^https?://[^\s]{1,500}$")]


class TemplateRoute(Strict):
    """Where one kind of message goes: its MQTT topic or its HTTP URL (default: the data's)."""

    topic: Topic | None = Field(default=None, description="MQTT topic (default: mqtt.topic)")
    url: Url | None = Field(default=None, description="HTTP URL (default: http.url)")


class TemplateAlarms(TemplateRoute):
    """Alarm messages: one per alarm event of a mapped channel, in journal order."""

    message: dict[str, Any] = Field(description="one alarm's JSON, with ${fields}")
    events: list[Literal["raised", "escalated", "deescalated", "cleared", "acknowledged"]] = Field(
        default=["raised", "escalated", "deescalated", "cleared", "acknowledged"], min_length=1, max_length=5,
        description="which alarm transitions are sent")


class TemplateHeartbeat(TemplateRoute):
    """A liveness message every ``interval`` while the platform is reachable (not queued)."""

    interval: Duration = Field(default=60.0, ge=1, le=86400)
    message: dict[str, Any] = Field(description="the heartbeat's JSON, with ${fields}")


class TemplateList(TemplateRoute):
    """A base-data list (hazard sources, points): ``item`` per entry, placed by ${items}."""

    item: dict[str, Any]
    message: dict[str, Any]


class TemplateRecord(TemplateRoute):
    """The enterprise record."""

    message: dict[str, Any]


class TemplateBase(Strict):
    """Base data, sent on start when it differs from what was last acknowledged."""

    enterprise: TemplateRecord | None = None
    hazard_sources: TemplateList | None = None
    points: TemplateList | None = None


class EnterpriseInfo(Strict):
    """What the enterprise record says besides its code (all optional text)."""

    name: str | None = Field(default=None, max_length=200)
    address: str | None = Field(default=None, max_length=300)
    contact: str | None = Field(default=None, max_length=100)
    phone: str | None = Field(default=None, max_length=40)
    industry: str | None = Field(default=None, max_length=100)
    longitude: Number | None = Field(default=None, ge=-180, le=180)
    latitude: Number | None = Field(default=None, ge=-90, le=90)


class HazardSource(Strict):
    """A major hazard source (重大危险源) as the platform knows it; channels name it by
    ``hazard_source:`` (its code or its name)."""

    code: str = Field(pattern=r"^[!-~]{1,64}$")
    name: str = Field(min_length=1, max_length=200)
    grade: Literal["一级", "二级", "三级", "四级"] | None = Field(
        default=None, description="GB 18218-2018 clause 4.2 grading, 一级 the most severe")
    location: str | None = Field(default=None, max_length=300)


class TemplateAdapter(Strict):
    """A provincial platform whose message shape is a template in the config."""

    type: Literal["template"]
    name: str = Field(pattern=NAME_PATTERN, description="names the cursor (regulator.<name>) and the logs")
    enterprise_code: str = Field(pattern=r"^[!-~]{1,64}$")
    hazard_code: str | None = Field(default=None, pattern=r"^[!-~]{1,64}$",
                                    description="the major hazard source's code (${hazard})")
    transport: Literal["mqtt", "http"] = "mqtt"
    mqtt: TemplateMqtt | None = None
    http: TemplateHttp | None = None
    item: dict[str, Any] = Field(description="one reading's JSON, with ${fields}")
    message: dict[str, Any] = Field(description="one message's JSON; ${items} is the list of readings")
    envelope: dict[str, Any] | None = Field(
        default=None, description="around an encrypted or signed message: ${data} and ${sign}")
    crypto: TemplateCrypto = Field(default_factory=TemplateCrypto)
    time_format: str = Field(default="%Y-%m-%d %H:%M:%S", min_length=2, max_length=40)
    utc_offset: str = Field(default="+08:00", pattern=r"^[+-](0\d|1[0-4]):[0-5]\d$")
    start: Literal["end", "oldest"] = "end"
    batch_points: int = Field(default=500, ge=1, le=10000, description="readings per message at most")
    ack_timeout: Duration = Field(default=10.0, gt=0, le=600, description="wait this long for PUBACKs")
    mode: Literal["batch", "interval"] = Field(
        default="batch", description="batch: every reading, batch_points to a message; interval: every "
                                     "`interval`, one snapshot of each point's latest value")
    interval: Duration = Field(default=30.0, ge=1, le=86400,
                               description="interval mode: the snapshot period (of the data's time)")
    enterprise: EnterpriseInfo = Field(default_factory=EnterpriseInfo)
    hazard_sources: list[HazardSource] = Field(default_factory=list, max_length=1000)
    alarms: TemplateAlarms | None = None
    heartbeat: TemplateHeartbeat | None = None
    base: TemplateBase = Field(default_factory=TemplateBase)
    points: list[PointMap] = Field(min_length=1, max_length=10000)

    @model_validator(mode="after")
    def _shape(self) -> TemplateAdapter:
        if getattr(self, self.transport) is None:
            raise ValueError(f"transport {self.transport} needs its section {self.transport}:")
        if self.mode == "interval" and 86400 % self.interval:
            raise ValueError(f"interval {self.interval:g}s does not divide a day")
        codes = [h.code for h in self.hazard_sources]
        if len(set(codes)) != len(codes):
            raise ValueError("hazard_sources: a code is listed twice")
        if (self.crypto.cipher != "none" or self.crypto.signature != "none") and self.envelope is None:
            raise ValueError("an encrypted or signed message needs an envelope template (with ${data})")
        return self


#: every adapter kind, tagged by ``type:``
Regulator = Annotated[Union[Hj212Adapter, MemIotAdapter, TemplateAdapter],  # noqa: UP007
                      Field(discriminator="type")]


def _channel_names(cfg: Any) -> Iterator[str]:
    """Every channel name of the config's devices (an RTU bus holds them per unit)."""
    for dev in cfg.devices:
        for holder in getattr(dev, "units", None) or [dev]:
            for ch in holder.channels:
                yield ch.name


def check_config(cfg: Any) -> list[tuple[Path_, str]]:
    """Across fields: unique adapter names; each point names a channel that exists, once
    per adapter, and no code is used twice in one adapter."""
    errs: list[tuple[Path_, str]] = []
    regs: list[Hj212Adapter | MemIotAdapter | TemplateAdapter] = getattr(cfg, "regulators", None) or []
    channels = set(_channel_names(cfg))
    names: set[str] = set()
    for i, reg in enumerate(regs):
        if reg.name in names:
            errs.append((("regulators", i, "name"), f"a second adapter named {reg.name!r}: names must differ "
                         "(each names its journal cursor)"))
        names.add(reg.name)
        seen_ch: set[str] = set()
        seen_code: set[str] = set()
        for j, p in enumerate(reg.points):
            at: Path_ = ("regulators", i, "points", j)
            if p.channel not in channels:
                errs.append(((*at, "channel"), f"no channel {p.channel!r} in devices"))
            elif p.channel in seen_ch:
                errs.append(((*at, "channel"), f"channel {p.channel!r} is mapped twice in this adapter"))
            if p.code in seen_code:
                errs.append(((*at, "code"), f"code {p.code!r} is used twice in this adapter"))
            seen_ch.add(p.channel)
            seen_code.add(p.code)
        if isinstance(reg, TemplateAdapter):
            errs += template_errors(reg.item, ITEM_FIELDS, ("regulators", i, "item"))
            errs += template_errors(reg.message, MESSAGE_FIELDS, ("regulators", i, "message"))
            if "${items}" not in json.dumps(reg.message):
                errs.append((("regulators", i, "message"), "the message template must place ${items}"))
            if reg.envelope is not None:
                errs += template_errors(reg.envelope, ENVELOPE_FIELDS, ("regulators", i, "envelope"))
                if "${data}" not in json.dumps(reg.envelope):
                    errs.append((("regulators", i, "envelope"), "the envelope template must place ${data}"))
            errs += _template_extras(reg, ("regulators", i))
    return errs


def _template_extras(reg: TemplateAdapter, at: Path_) -> list[tuple[Path_, str]]:
    """The alarm, heartbeat and base-data templates: known fields only, ${items} placed in
    the lists, and each route fitting the transport."""
    errs: list[tuple[Path_, str]] = []
    routes: list[tuple[Path_, TemplateRoute]] = []
    if reg.alarms is not None:
        errs += template_errors(reg.alarms.message, ALARM_FIELDS, (*at, "alarms", "message"))
        routes.append(((*at, "alarms"), reg.alarms))
    if reg.heartbeat is not None:
        errs += template_errors(reg.heartbeat.message, HEARTBEAT_FIELDS, (*at, "heartbeat", "message"))
        routes.append(((*at, "heartbeat"), reg.heartbeat))
    b = reg.base
    if b.enterprise is not None:
        errs += template_errors(b.enterprise.message, ENTERPRISE_FIELDS,
                                (*at, "base", "enterprise", "message"))
        routes.append(((*at, "base", "enterprise"), b.enterprise))
    for key, fields in (("hazard_sources", HAZARD_FIELDS), ("points", POINT_FIELDS)):
        lst: TemplateList | None = getattr(b, key)
        if lst is None:
            continue
        here = (*at, "base", key)
        errs += template_errors(lst.item, fields, (*here, "item"))
        errs += template_errors(lst.message, LIST_FIELDS, (*here, "message"))
        if "${items}" not in json.dumps(lst.message):
            errs.append(((*here, "message"), "the message template must place ${items}"))
        routes.append((here, lst))
    for where, r in routes:
        if reg.transport == "mqtt" and r.url is not None:
            errs.append(((*where, "url"), "the transport is mqtt: give a topic, not a url"))
        if reg.transport == "http" and r.topic is not None:
            errs.append(((*where, "topic"), "the transport is http: give a url, not a topic"))
    return errs


def unmapped_channels(cfg: Any) -> dict[str, list[str]]:
    """Per adapter, the channels it does not send (``safegw check --verbose``)."""
    regs: list[Hj212Adapter | MemIotAdapter | TemplateAdapter] = getattr(cfg, "regulators", None) or []
    channels = list(_channel_names(cfg))
    return {reg.name: [c for c in channels if c not in {p.channel for p in reg.points}] for reg in regs}
