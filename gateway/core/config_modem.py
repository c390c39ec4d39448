"""The 4G modem's settings for notifications (SMS and voice over its AT port; docs/notify.md).

Part of the ``notify.channels`` union in gateway/core/config_notify.py."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from gateway.core.strict import Strict
from gateway.core.units import Duration


class ModemChannelSettings(Strict):
    type: Literal["modem"]
    name: str = "modem"
    port: str = Field(description="the modem's AT port, e.g. /dev/ttyUSB2 (not the one PPP uses)")
    baud: int = Field(default=115200, ge=1200, le=4_000_000)
    pin_file: Path | None = Field(default=None, description="the SIM's PIN, in a file of mode 0600")
    timeout: Duration = Field(default=30.0, gt=0, le=300, description="one AT command's answer")
    ring: Duration = Field(default=30.0, gt=0, le=300, description="a voice call rings this long")
    delivery_reports: bool = True
