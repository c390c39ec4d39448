"""Prometheus exposition of the gateway's counters (served at ``/metrics``), written by
``prometheus-client``.

Everything comes from state the daemon already keeps (device states, the live table,
the journal's counters, the rules' active alarms, the services' ``stats()``), so a
scrape costs a few array reductions and no I/O beyond a stat() of the journal file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric

from gateway.core.batch import Quality
from gateway.services import DaemonContext

log = logging.getLogger("safegw.metrics")


class Exposition:
    """Collects metric families for one scrape and renders them with ``prometheus_client``.

    ``family(name, kind, help, samples)`` is the one call every block uses (the services'
    blocks below included); the text itself, its escaping and number formats come from
    the client library (``generate_latest``, text format 0.0.4), not from code here.
    Counters are named with their ``_total`` suffix, as in the hand-written exposition
    this replaces, so every name a query selects is unchanged (docs/operations.md).

    A block's mistake must not cost the whole scrape: a counter named without ``_total``
    is exposed as ``unknown`` under its own name (the library would rename it), and a
    family named twice keeps its first block; each is logged once.
    """

    def __init__(self) -> None:
        self.families: list[Metric] = []
        self._names: set[str] = set()

    def family(
        self, name: str, kind: str, help_: str, samples: Iterable[tuple[dict[str, str], float]] | float
    ) -> None:
        if kind not in ("counter", "gauge"):
            raise ValueError(f"metric {name!r}: kind {kind!r} is not counter or gauge")
        if kind == "counter" and not name.endswith("_total"):
            _once(f"metric {name}: a counter's name must end in _total; exposed as unknown")
            kind = "unknown"
        # a counter's family is named without _total (the library adds it back to HELP and
        # TYPE); its samples keep the name as given
        fam = Metric(name.removesuffix("_total") if kind == "counter" else name, help_, kind)
        if fam.name in self._names:
            _once(f"metric {name}: exposed twice; the second block is left out")
            return
        self._names.add(fam.name)
        if isinstance(samples, int | float):
            fam.add_sample(name, {}, float(samples))
        else:
            for labels, value in samples:
                fam.add_sample(name, {str(k): str(v) for k, v in labels.items()}, float(value))
        self.families.append(fam)

    def collect(self) -> Iterator[Metric]:
        """The ``Collector`` protocol: what ``generate_latest`` asks for."""
        yield from self.families

    def text(self) -> str:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return generate_latest(registry).decode("utf-8")


_logged: set[str] = set()


def _once(msg: str) -> None:
    if msg not in _logged:
        _logged.add(msg)
        log.error("%s", msg)


#: +CREG states in which the modem can send (gateway/notify/modem/device.py REGISTERED)
MODEM_REGISTERED = frozenset({"home", "roaming", "home_sms_only", "roaming_sms_only"})


def _notify(e: Exposition, s: dict[str, Any]) -> None:
    """The notify service: attempts, what waits, escalations, per channel."""
    e.family("safegw_notify_messages_total", "counter",
             "notification attempts by result (retried: failed, tried again later)",
             [({"result": k}, int(s.get(k) or 0)) for k in ("sent", "failed", "retried")])
    e.family("safegw_notify_outbox_messages", "gauge", "messages waiting to be sent or retried",
             int(s.get("outbox") or 0))
    e.family("safegw_notify_escalating_alarms", "gauge", "alarms whose escalation chain runs",
             int(s.get("escalating") or 0))
    e.family("safegw_notify_digests_total", "counter", "flood or rate-limit digests sent",
             int(s.get("digests") or 0))
    e.family("safegw_notify_sms_acks_total", "counter", "alarms acknowledged by SMS reply",
             int(s.get("acks_by_sms") or 0))
    chans = s.get("channels") or {}
    for key, help_ in (("sent", "messages a channel delivered"), ("failed", "attempts a channel failed")):
        e.family(f"safegw_notify_channel_{key}_total", "counter", help_,
                 [({"channel": n, "type": str(c.get("type", ""))}, int(c.get(key) or 0))
                  for n, c in sorted(chans.items()) if isinstance(c, dict)])
    e.family("safegw_notify_delivery_reports_total", "counter",
             "SMS delivery reports that settled a message, by verdict",
             [({"result": k}, int(s.get(k) or 0)) for k in ("delivered", "delivery_failed")])
    modems = [(n, c) for n, c in sorted(chans.items()) if isinstance(c, dict) and c.get("type") == "modem"]
    if modems:
        # the 4G modem's own state (gateway/notify/modem/device.py): what a site check asks first
        e.family("safegw_modem_info", "gauge", "1, labelled with the modem's state, SIM and registration",
                 [({"channel": n, "port": str(c.get("port", "")), "state": str(c.get("state", "")),
                    "sim": str(c.get("sim", "")), "registration": str(c.get("registration", ""))}, 1)
                  for n, c in modems])
        e.family("safegw_modem_ready", "gauge", "1 while the modem can send (port open, SIM ready)",
                 [({"channel": n}, int(c.get("state") == "ready")) for n, c in modems])
        e.family("safegw_modem_registered", "gauge", "1 while the modem is registered (home or roaming)",
                 [({"channel": n}, int(str(c.get("registration")) in MODEM_REGISTERED)) for n, c in modems])
        e.family("safegw_modem_signal_dbm", "gauge", "received signal strength (TS 27.007 8.5 +CSQ), dBm",
                 [({"channel": n}, float(c["signal_dbm"])) for n, c in modems
                  if isinstance(c.get("signal_dbm"), int | float)])


def collect(
    daemon: DaemonContext, *, active_alarms: int | None = None, api: dict[str, Any] | None = None
) -> Exposition:
    """The families of one scrape, read from the daemon's state: on the event loop (the
    state changes under it otherwise). ``Exposition.text()`` may then run in a thread."""
    e = Exposition()
    now = daemon.clock()
    e.family("safegw_up", "gauge", "1 while the gateway runs", 1)
    e.family(
        "safegw_uptime_seconds", "gauge", "seconds since the gateway started", (now - daemon.started_ns) / 1e9
    )
    e.family("safegw_channels", "gauge", "configured channels", len(daemon.table))
    devs = list(daemon.devices.values())
    e.family(
        "safegw_device_polls_total",
        "counter",
        "successful polls per device",
        [({"device": d.name}, d.polls) for d in devs],
    )
    e.family(
        "safegw_device_errors_total",
        "counter",
        "failed polls or connects per device",
        [({"device": d.name}, d.errors) for d in devs],
    )
    e.family(
        "safegw_device_overruns_total",
        "counter",
        "poll cycles skipped because a poll overran",
        [({"device": d.name}, d.overruns) for d in devs],
    )
    e.family(
        "safegw_device_samples_total",
        "counter",
        "samples read per device",
        [({"device": d.name}, d.samples) for d in devs],
    )
    e.family(
        "safegw_device_up",
        "gauge",
        "1 when the device answers, 0 when failing or disabled",
        [({"device": d.name, "protocol": d.protocol}, 1 if d.state == "ok" else 0) for d in devs],
    )
    e.family(
        "safegw_device_last_poll_seconds",
        "gauge",
        "duration of the last poll",
        [({"device": d.name}, d.last_poll_ms / 1e3) for d in devs],
    )
    q = daemon.live.quality
    good = int(np.count_nonzero(q < Quality.UNCERTAIN))
    bad = int(np.count_nonzero(q >= Quality.BAD))
    e.family(
        "safegw_channels_by_quality",
        "gauge",
        "channels by the class of their latest quality",
        [
            ({"quality": "good"}, good),
            ({"quality": "uncertain"}, len(q) - good - bad),
            ({"quality": "bad"}, bad),
        ],
    )
    e.family(
        "safegw_ingested_batches_total", "counter", "batches handed to the journal", daemon.ingested_batches
    )
    e.family("safegw_ingest_errors_total", "counter", "batches the journal refused", daemon.ingest_errors)
    st = daemon.journal.stats()
    first, last = int(st.get("first_seq") or 0), int(st.get("last_seq") or 0)
    # a gauge since prometheus-client: a counter's samples must end in _total, and the
    # name is kept (docs/operations.md)
    e.family("safegw_journal_last_seq", "gauge", "sequence number of the newest record", last)
    e.family(
        "safegw_journal_depth_records",
        "gauge",
        "records held in the journal",
        max(0, last - first + 1) if last else 0,
    )
    e.family("safegw_journal_payload_bytes", "gauge", "payload bytes held", int(st.get("payload_bytes") or 0))
    e.family(
        "safegw_journal_file_bytes", "gauge", "journal file size with its WAL", int(st.get("file_bytes") or 0)
    )
    e.family("safegw_journal_quota_bytes", "gauge", "journal byte quota", int(st.get("quota_bytes") or 0))
    e.family(
        "safegw_journal_dropped_records_total",
        "counter",
        "records dropped by retention",
        int(st.get("dropped_records") or 0),
    )
    consumers = st.get("consumers") or {}
    e.family(
        "safegw_consumer_lag_records",
        "gauge",
        "records a consumer has not acknowledged yet",
        [({"consumer": n}, int(c.get("lag", 0))) for n, c in sorted(consumers.items())],
    )
    if active_alarms is not None:
        e.family("safegw_alarms_active", "gauge", "alarms active now", active_alarms)
    for svc in daemon.services:
        s = svc.stats()
        if svc.name == "notify" and isinstance(s, dict):
            _notify(e, s)
        if svc.name == "uplink":
            link = s.get("link", {}) if isinstance(s, dict) else {}
            out = link.get("bytes_out_total", s.get("sealed_bytes", 0))
            e.family("safegw_uplink_bytes_sent_total", "counter", "bytes sent towards central", int(out or 0))
            e.family(
                "safegw_uplink_month_bytes",
                "gauge",
                "bytes used this month on the uplink",
                int(link.get("month_bytes") or 0),
            )
            e.family(
                "safegw_uplink_lag_records",
                "gauge",
                "records not yet delivered upstream",
                int(s.get("lag_records") or 0),
            )
        if svc.name == "regulators" and isinstance(s, dict):  # northbound/service.py: one entry per adapter
            regs = sorted((str(k), v) for k, v in s.items() if isinstance(v, dict))
            for key, kind, help_ in [
                ("connected", "gauge", "1 while the adapter's connection to its platform is up"),
                ("messages_sent", "counter", "messages sent to the platform (resends included)"),
                ("acked", "counter", "messages the platform acknowledged (or sent without asking)"),
                ("resends", "counter", "messages sent again after no data response"),
                ("kept_for_later", "counter", "messages kept for later after their resends"),
                ("bad_frames", "counter", "frames from the platform that were refused"),
                ("lag", "gauge", "journal records the adapter has not delivered yet"),
            ]:
                e.family(f"safegw_regulator_{key}" + ("_total" if kind == "counter" else ""), kind, help_,
                         [({"adapter": k}, float(v.get(key) or 0)) for k, v in regs])
    if api:
        e.family(
            "safegw_api_requests_total",
            "counter",
            "API requests by status class",
            [({"code": k}, v) for k, v in sorted(api.get("requests", {}).items())],
        )
        e.family("safegw_reminders_total", "counter", "register reminders raised", api.get("reminders", 0))
    return e


def render(
    daemon: DaemonContext, *, active_alarms: int | None = None, api: dict[str, Any] | None = None
) -> str:
    """The whole exposition for one scrape, as text."""
    return collect(daemon, active_alarms=active_alarms, api=api).text()
