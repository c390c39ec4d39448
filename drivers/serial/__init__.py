"""Serial (RS-232/485) ASCII and binary instruments: noise meters, dust monitors, dose-rate monitors.

``frames`` is the pure part (framing, checksums, value extraction); ``driver`` the
port handling. ``SerialDriver`` picks the streaming or the polled flavour from the
device's ``frame.request``.
"""

from drivers.serial.driver import SerialDriver, SerialPollDriver, SerialStreamDriver

__all__ = ["SerialDriver", "SerialPollDriver", "SerialStreamDriver"]
