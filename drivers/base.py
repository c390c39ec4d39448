"""The driver contract and the protocol registry.

A driver talks to one configured device (for Modbus RTU: one bus with its units).
It does not own time: the gateway's poller decides when to call it, applies
timeouts, skips overruns and backs off after failures.

- A *polled* driver gathers one cycle in ``poll()`` and returns a Batch covering its
  channels; a channel it could not read is in the Batch with a bad quality and its
  cause (a timeout on one RTU unit does not spoil the others).
- A *streaming* driver (OPC-UA subscriptions, instruments that talk on their own)
  hands Batches to ``sink`` from ``stream()`` until it is cancelled.

Either raises ``DeviceUnavailable`` when the whole device is unreachable; the gateway
then marks every channel of the device bad with that cause, logs once, and retries
with backoff by calling ``open()`` again.
"""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gateway.core.batch import Batch, Quality
from gateway.core.channels import ChannelInfo

#: Resolution of the times the gateway stamps itself (a poll's end, a frame's arrival,
#: a receive time): 1 ms. A Modbus read takes 1-100 ms and a serial frame 5-50 ms on the
#: wire, so the digits below a millisecond are noise, not information; kept, they cost a
#: third of the uplink's bytes. Times a device sends (OPC-UA source timestamps) are kept
#: as they come.
STAMP_NS = 1_000_000


def stamp() -> int:
    """Now (ns since the epoch) at the gateway's stamp resolution, STAMP_NS."""
    return time.time_ns() // STAMP_NS * STAMP_NS

Sink = Callable[[Batch], None]


class DeviceUnavailable(Exception):
    """The whole device cannot be reached; ``cause`` is the quality code to record."""

    def __init__(self, message: str, cause: Quality = Quality.COMMS):
        super().__init__(message)
        self.cause = cause


class Driver(ABC):
    """One configured device. Subclasses set ``streaming`` and implement poll or stream."""

    streaming: ClassVar[bool] = False

    def __init__(self, device: Any, channels: list[ChannelInfo]):
        self.device = device
        self.channels = channels
        self.indexes = np.array([c.index for c in channels], dtype=np.int32)
        self.name: str = device.name
        #: free-form facts a driver reports for status pages (e.g. timestamp source)
        self.info: dict[str, Any] = {}
        #: the config file's folder, against which the device's files (password files)
        #: resolve; make_driver sets it (``.``, as for a config given as text, until then)
        self.base_dir = Path(".")

    @abstractmethod
    async def open(self) -> None:
        """Connect (or reconnect). Raise DeviceUnavailable when it cannot."""

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release the connection. Must not raise."""

    async def poll(self) -> Batch:
        """One cycle: every channel of the device, good or bad with a cause."""
        raise NotImplementedError(f"{type(self).__name__} is a streaming driver")

    async def stream(self, sink: Sink) -> None:
        """Hand batches to ``sink`` until cancelled (streaming drivers)."""
        raise NotImplementedError(f"{type(self).__name__} is a polled driver")

    def bad(self, ts_ns: int, cause: int) -> Batch:
        return Batch.bad(self.indexes, ts_ns, cause)


#: (device section, its channels) → the driver: a Driver class, or a function choosing one
DriverFactory = Callable[[Any, list[ChannelInfo]], Driver]

#: protocol name → "module:factory". Imported on first use, so a missing optional
#: dependency of one protocol does not stop the others.
REGISTRY: dict[str, str] = {
    "modbus-tcp": "drivers.modbus.driver:ModbusTcpDriver",
    "modbus-rtu": "drivers.modbus.driver:ModbusRtuDriver",
    "opcua": "drivers.opcua:driver_for",
    "serial": "drivers.serial:SerialDriver",
}


def driver_factory(protocol: str) -> DriverFactory:
    try:
        target = REGISTRY[protocol]
    except KeyError:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(sorted(REGISTRY))}") from None
    module, _, name = target.partition(":")
    factory: DriverFactory = getattr(importlib.import_module(module), name)
    return factory


def make_driver(device: Any, channels: list[ChannelInfo], *, base_dir: Path = Path(".")) -> Driver:
    """The driver of ``device``; ``base_dir`` is the folder of its config file."""
    driver = driver_factory(device.protocol)(device, channels)
    driver.base_dir = base_dir
    return driver
