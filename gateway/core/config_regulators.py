"""The ``regulators:`` section: adapters that report to the authorities' platforms
(docs/regulators.md). Each adapter is a journal consumer with its own cursor
(``regulator.<name>``), built by ``northbound.service``.

The list is a tagged union on ``type:``: ``hj212`` and ``mem-iot`` (``template`` is
planned). A new platform adds its model here and to ``Regulator``.
"""

from __future__ import annotations

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


#: every adapter kind, tagged by ``type:`` (add template here)
Regulator = Annotated[Union[Hj212Adapter, MemIotAdapter], Field(discriminator="type")]  # noqa: UP007


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
    regs: list[Hj212Adapter | MemIotAdapter] = getattr(cfg, "regulators", None) or []
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
    return errs


def unmapped_channels(cfg: Any) -> dict[str, list[str]]:
    """Per adapter, the channels it does not send (``safegw check --verbose``)."""
    regs: list[Hj212Adapter | MemIotAdapter] = getattr(cfg, "regulators", None) or []
    channels = list(_channel_names(cfg))
    return {reg.name: [c for c in channels if c not in {p.channel for p in reg.points}] for reg in regs}
