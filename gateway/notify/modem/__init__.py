"""SMS and voice calls through the gateway's 4G modem, over its AT port (docs/modem.md).

``pdu`` is the pure SMS codec, ``at`` the AT command line over pyserial, ``device`` the
modem (state, SMS out, calls), ``inbox`` replies and delivery reports, ``channel`` the
notification channel the notify service drives."""

from __future__ import annotations

from gateway.notify.modem.channel import ModemChannel, build_channel

__all__ = ["ModemChannel", "build_channel"]
