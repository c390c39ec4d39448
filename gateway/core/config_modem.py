"""The 4G modem's settings for notifications (SMS and voice over its AT port; docs/modem.md).

Part of the ``notify.channels`` union in gateway/core/config_notify.py."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from gateway.core.strict import Strict
from gateway.core.units import Duration


class ModemChannelSettings(Strict):
    type: Literal["modem"]
    name: str = Field(default="modem", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    port: str = Field(min_length=1, max_length=256,
                      description="the modem's AT port, e.g. /dev/ttyUSB2 (not the one PPP uses)")
    baud: int = Field(default=115200, ge=1200, le=4_000_000)
    pin_file: Path | None = Field(default=None, description="the SIM's PIN, in a file of mode 0600")
    timeout: Duration = Field(default=30.0, gt=0, le=300, description="one AT command's answer")
    ring: Duration = Field(default=30.0, gt=0, le=300, description="a voice call rings this long")
    delivery_reports: bool = True
    mode: Literal["sms", "voice"] = Field(
        default="sms", description="what send() does: an SMS, or a voice call (the last escalation "
        "step); two channels on one port share the modem")
    max_parts: int = Field(default=6, ge=1, le=255,
                           description="a longer text is cut to fit this many concatenated SMS parts")
    check_interval: Duration = Field(default=60.0, ge=5, le=3600,
                                     description="how often SIM, registration and signal are read")
