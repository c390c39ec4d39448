"""OPC-UA driver (asyncua): a DCS or SCADA server, read in bulk or by subscription.

``driver`` holds what both modes share, ``poll`` and ``subscribe`` the modes,
``session`` the security and identity of a session, ``decode`` the status codes
and the fast decoding of Read responses.

- **poll** mode: one ``Read`` service call per cycle for every node of the device
  (prebuilt request, timestamps of the source), so 10,000 tags cost one round trip.
- **subscribe** mode: one subscription with a monitored item per node (sampling
  interval, queue size, optional server-side deadband); each publish response
  becomes one Batch, with no per-item Python objects beyond the decoded message.

Status codes map to quality: Good → good, Uncertain* → UNCERTAIN_STATUS, Bad* →
BAD_STATUS (BadNodeIdUnknown / BadNodeIdInvalid → CONFIG). The raw code of every
channel is kept in ``driver.status_codes`` and the non-good ones, by name, in
``driver.info["status"]``. The source timestamp is used when the server sends one
that is sane (not ahead of our clock by more than ``max_clock_skew``, not older than
``max_timestamp_age``) and after the channel's last reported time, else the receive
time; ``driver.info["timestamps"]`` says which, per cycle. (A server that keeps a
value's source time until the value changes thus reports an unchanged value at each
read's receive time, as a poll of any other protocol would.)

A node that does not exist (or a browse path that does not resolve) is found at
``open()``: it is logged once, named in ``driver.info["channel_errors"]``, and its
channel is reported with quality CONFIG while the other nodes keep working. Losing
the server (restart, network cut) raises ``DeviceUnavailable``; the gateway marks
the channels bad (COMMS), backs off and calls ``open()`` again, which builds a new
session (and, in subscribe mode, new subscriptions).
"""

from typing import Any

from drivers.opcua.driver import OpcUaDriver
from drivers.opcua.poll import OpcUaPollDriver
from drivers.opcua.subscribe import OpcUaSubscribeDriver
from gateway.core.channels import ChannelInfo

__all__ = ["OpcUaDriver", "OpcUaPollDriver", "OpcUaSubscribeDriver", "driver_for"]


def driver_for(device: Any, channels: list[ChannelInfo]) -> OpcUaDriver:
    """The driver of the device's mode: ``subscribe`` or ``poll``."""
    if device.mode == "subscribe":
        return OpcUaSubscribeDriver(device, channels)
    return OpcUaPollDriver(device, channels)
