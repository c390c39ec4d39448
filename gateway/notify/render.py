"""Messages as a person reads them: the default templates (zh-CN and en, per channel
kind: SMS, robot, e-mail), the fields an alarm event gives them, and the short codes an
SMS reply acknowledges with.

The SMS defaults aim at one SMS of 70 UCS-2 characters (3GPP TS 23.038: 140 octets of
user data, 2 octets a character) with a plant, area and channel name of usual length;
a longer text is sent as a concatenated SMS by the modem channel. Numbers go through
``gateway.core.display.shortest`` (no 19.309999465942383)."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass
from typing import Any

from gateway.core.config import Config, ModbusChannel, device_channels
from gateway.core.config_notify import NotifySection
from gateway.core.display import shortest
from gateway.notify.base import Message, MessageKind

#: what the channel types are, for templates
CHANNEL_KIND = {
    "modem": "sms",
    "wecom": "robot",
    "dingtalk": "robot",
    "feishu": "robot",
    "webhook": "robot",
    "email": "email",
}

LEVEL_TEXT = {
    "zh-CN": {
        "hh": "高高限",
        "h": "高限",
        "l": "低限",
        "ll": "低低限",
        "stale": "通讯中断",
        "bad": "测量故障",
        "range": "超量程",
        "frozen": "数值冻结",
        "roc": "变化过快",
        "trend": "趋势异常",
        "predict": "预测越限",
        "twa": "TWA超标",
        "stel": "STEL超标",
    },
    "en": {
        "hh": "HH",
        "h": "H",
        "l": "L",
        "ll": "LL",
        "stale": "no data",
        "bad": "sensor fault",
        "range": "out of range",
        "frozen": "frozen value",
        "roc": "rate of change",
        "trend": "trend",
        "predict": "predicted limit",
        "twa": "TWA exceeded",
        "stel": "STEL exceeded",
    },
}

_ROBOT_ZH = (
    "【{plant}】{what}:{channel} {level_text}\n区域:{area} {hazard_source}\n数值:{value}{unit} 限值:{limit}{unit}\n"  # noqa: E501
    "时间:{time}\n确认码:{code}\n{link}"
)
_ROBOT_EN = (
    "[{plant}] {what}: {channel} {level_text}\nArea: {area} {hazard_source}\nValue: {value} {unit}, "
    "limit {limit} {unit}\nTime: {time}\nAck code: {code}\n{link}"
)
DEFAULTS: dict[str, dict[str, dict[str, str]]] = {
    "zh-CN": {
        "sms": {
            "alarm": "【{plant}】{area}{channel}{level_text}报警{value}{unit},限{limit} {time} 回复{code}确认",  # noqa: E501
            "escalation": "【{plant}】第{step}级:{area}{channel}{level_text}报警未确认{value}{unit} {time} 回复{code}确认",  # noqa: E501
            "cleared": "【{plant}】{area}{channel}{level_text}报警已恢复{value}{unit} {time}",
            "digest": "【{plant}】报警泛滥:{count}条 {alarms}",
            "test": "【{plant}】测试消息,{recipient}收到即可,无需回复 {time}",
        },
        "robot": {
            "alarm": _ROBOT_ZH,
            "escalation": "第{step}级升级," + _ROBOT_ZH,
            "cleared": _ROBOT_ZH,
            "digest": "【{plant}】报警泛滥:{time}前共{count}条报警\n{alarms}\n{link}",
            "test": "【{plant}】测试消息:{recipient}的通知渠道工作正常 {time}",
        },
        "email": {
            "alarm": _ROBOT_ZH,
            "escalation": "第{step}级升级," + _ROBOT_ZH,
            "cleared": _ROBOT_ZH,
            "digest": "【{plant}】报警泛滥:{time}前共{count}条报警\n{alarms}\n{link}",
            "test": "【{plant}】测试消息:{recipient}的通知渠道工作正常 {time}",
        },
    },
    "en": {
        "sms": {
            "alarm": "{plant} {area} {channel} {level_text} alarm {value}{unit} (limit {limit}) {time} "
            "reply {code} to ack",
            "escalation": "{plant} step {step}: {channel} {level_text} unacked {value}{unit} {time} reply {code}",  # noqa: E501
            "cleared": "{plant} {area} {channel} {level_text} cleared {value}{unit} {time}",
            "digest": "{plant} alarm flood: {count} alarms {alarms}",
            "test": "{plant}: test message for {recipient}, no reply needed {time}",
        },
        "robot": {
            "alarm": _ROBOT_EN,
            "escalation": "Escalation step {step}. " + _ROBOT_EN,
            "cleared": _ROBOT_EN,
            "digest": "[{plant}] alarm flood: {count} alarms up to {time}\n{alarms}\n{link}",
            "test": "[{plant}] test message: {recipient}'s channels work {time}",
        },
        "email": {
            "alarm": _ROBOT_EN,
            "escalation": "Escalation step {step}. " + _ROBOT_EN,
            "cleared": _ROBOT_EN,
            "digest": "[{plant}] alarm flood: {count} alarms up to {time}\n{alarms}\n{link}",
            "test": "[{plant}] test message: {recipient}'s channels work {time}",
        },
    },
}
WHAT = {
    "zh-CN": {"alarm": "报警", "escalation": "报警未确认", "cleared": "报警恢复"},
    "en": {"alarm": "ALARM", "escalation": "UNACKED ALARM", "cleared": "CLEARED"},
}
#: digest lines shown in the text (all of them are in the message's fields)
DIGEST_LINES = {"sms": 3, "robot": 40, "email": 500}

_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"  # no 0/O, 1/I/L: read aloud and typed on a phone


def short_code(seq: int) -> str:
    """The alarm's short code (4 characters) from its journal sequence: what an SMS reply quotes."""
    n = seq % len(_ALPHABET) ** 4
    out = ""
    for _ in range(4):
        n, r = divmod(n, len(_ALPHABET))
        out = _ALPHABET[r] + out
    return out


@dataclass(frozen=True)
class ChannelInfo:
    area: str
    hazard_source: str
    float32: bool
    resolution: float | None


def channel_info(cfg: Config) -> dict[str, ChannelInfo]:
    out = {}
    for dev in cfg.devices:
        for _path, ch in device_channels(dev):
            f32 = isinstance(ch, ModbusChannel) and ch.type == "float32"
            res = (
                ch.scale
                if isinstance(ch, ModbusChannel) and ch.type not in ("float32", "float64") and ch.scale != 1.0
                else None
            )
            out[ch.name] = ChannelInfo(ch.area or "", ch.hazard_source or "", f32, res)
    return out


class _Safe(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return ""


class Renderer:
    def __init__(self, cfg: Config, section: NotifySection):
        self.cfg = cfg
        self.s = section
        self.locale = section.locale
        self.plant = section.plant or cfg.gateway.name or cfg.gateway.id
        self.channels = channel_info(cfg)
        self.tz = zoneinfo.ZoneInfo(section.roster.timezone)

    def template(self, chan_kind: str, kind: str) -> str:
        own = self.s.templates.get(self.locale, {}).get(chan_kind, {}).get(kind)  # type: ignore[call-overload]
        return own if own is not None else DEFAULTS[self.locale][chan_kind][kind]

    def time(self, ns: int) -> str:
        return dt.datetime.fromtimestamp(ns / 1e9, self.tz).strftime("%m-%d %H:%M:%S")

    def number(self, channel: str, v: Any) -> str:
        if not isinstance(v, int | float) or isinstance(v, bool):
            return "-"
        info = self.channels.get(channel)
        x = shortest(
            float(v), float32=bool(info and info.float32), resolution=info.resolution if info else None
        )
        return f"{x:g}" if abs(x) < 1e15 else repr(x)

    def fields(self, ev: dict[str, Any], *, code: str | None = None, step: int = 0) -> dict[str, Any]:
        ch = str(ev.get("channel") or "")
        info = self.channels.get(ch)
        level = str(ev.get("level") or "")
        limit = ev.get("limit")
        return {
            "plant": self.plant,
            "gateway": self.cfg.gateway.id,
            "channel": ch,
            "kind": ev.get("kind") or "",
            "area": info.area if info else "",
            "hazard_source": info.hazard_source if info else "",
            "value": self.number(ch, ev.get("value")),
            "unit": ev.get("unit") or "",
            "limit": self.number(ch, limit) if limit is not None else "-",
            "level": level,
            "level_text": LEVEL_TEXT[self.locale].get(level, level),
            "rule": ev.get("rule") or "",
            "priority": ev.get("priority") or "",
            "time": self.time(int(ev.get("ts") or 0)),
            "link": self.link(ch),
            "code": code or "",
            "step": step,
        }

    def link(self, channel: str | None = None) -> str:
        if not self.s.status_url:
            return ""
        base = self.s.status_url.rstrip("/")
        return f"{base}/#alarms" if not channel else f"{base}/#alarm={channel}"

    def message(
        self,
        key: str,
        kind: MessageKind,
        chan_kind: str,
        f: dict[str, Any],
        extra: dict[str, Any] | None = None,
    ) -> Message:
        vals = _Safe(f)
        vals.setdefault("what", WHAT[self.locale].get(kind, ""))
        short = self.template("sms", kind).format_map(vals).strip()
        text = self.template(chan_kind, kind).format_map(vals).strip() if chan_kind != "sms" else short
        return Message(
            key=key,
            kind=kind,
            subject=short.splitlines()[0][:200] if short else kind,
            text=text,
            short=short,
            locale=self.locale,
            code=f.get("code") or None,
            link=f.get("link") or None,
            fields={**(extra or {})},
        )

    def digest_lines(self, items: list[dict[str, Any]], chan_kind: str) -> str:
        n = DIGEST_LINES.get(chan_kind, 40)
        shown = [
            f"{it['channel']} {LEVEL_TEXT[self.locale].get(it['level'], it['level'])} {it['value']}"
            f"{it.get('unit', '')} {it['time'][6:]}" + (f" {it['code']}" if it.get("code") else "")
            for it in items[:n]
        ]
        rest = len(items) - len(shown)
        if rest > 0:
            shown.append(f"……另{rest}条" if self.locale == "zh-CN" else f"... and {rest} more")
        return ("; " if chan_kind == "sms" else "\n").join(shown)
