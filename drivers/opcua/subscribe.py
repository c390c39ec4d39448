"""OPC-UA ``mode: subscribe``: one subscription, a monitored item per node.

Each item has the device's sampling interval and queue size and, where a channel
sets one, a server-side deadband; each publish response becomes one Batch, with no
per-item Python objects beyond the decoded message.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from asyncua import ua
from asyncua.common.subscription import Subscription

from drivers.base import DeviceUnavailable, Sink, stamp
from drivers.opcua.decode import _MISSING, _src_seconds, status_name
from drivers.opcua.driver import OpcUaDriver
from drivers.opcua.session import _NET_ERRORS, _err, operation_limit
from gateway.core.channels import ChannelInfo

log = logging.getLogger(__name__)


class _BatchSubscription(Subscription):
    """A subscription that turns each publish response into one Batch (no per-item events)."""

    driver: OpcUaSubscribeDriver

    async def publish_callback(self, publish_result: ua.PublishResult) -> None:
        self.last_publish_at = time.monotonic()
        data = publish_result.NotificationMessage.NotificationData
        if not data:
            return
        self.last_sequence_number = int(publish_result.NotificationMessage.SequenceNumber)
        for notif in data:
            if isinstance(notif, ua.DataChangeNotification):
                self.driver._data_change(notif.MonitoredItems)
            elif isinstance(notif, ua.StatusChangeNotification):
                self.driver._status_change(notif.Status)


class OpcUaSubscribeDriver(OpcUaDriver):
    """mode: subscribe: monitored items, one Batch per publish response."""

    streaming = True

    def __init__(self, device: Any, channels: list[ChannelInfo]):
        super().__init__(device, channels)
        self._sink: Sink | None = None
        self._sub: _BatchSubscription | None = None

    def _data_change(self, items: list[ua.MonitoredItemNotification]) -> None:
        if self._sink is None or not items:
            return
        recv = stamp()
        pos = np.fromiter((it.ClientHandle for it in items), dtype=np.intp, count=len(items))
        dvs = [it.Value for it in items]
        values = [dv.Value.Value if dv.Value is not None else None for dv in dvs]
        codes = [dv.StatusCode.value if dv.StatusCode is not None else 0 for dv in dvs]
        src = [_src_seconds(dv) for dv in dvs] if self.use_source_ts else []
        self.info["notifications"] += len(items)
        self._sink(self._samples(pos, values, codes, src, recv))

    def _status_change(self, status: ua.StatusCode) -> None:
        if status is not None and not status.is_good():
            self._lost_reason = f"subscription status {status_name(status.value)}"
            self._lost.set()

    async def stream(self, sink: Sink) -> None:
        if self.client is None:
            await self.open()
        client = self.client
        assert client is not None
        dev = self.device
        self._sink = sink
        try:
            period_ms = 1000.0 * (dev.sampling_interval if dev.sampling_interval is not None else dev.poll)
            params = ua.CreateSubscriptionParameters()
            params.RequestedPublishingInterval = period_ms
            params.RequestedLifetimeCount = 10000
            params.RequestedMaxKeepAliveCount = client.get_keepalive_count(period_ms)
            params.MaxNotificationsPerPublish = 0  # no limit: one response per interval
            params.PublishingEnabled = True
            params.Priority = 0
            sub = _BatchSubscription(client.uaclient.session, params, None, queue_maxsize=1)
            sub.driver = self
            try:
                await sub.init()
                self._sub = sub
                limit = await operation_limit(
                    client, ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall)
                chunk = limit if limit > 0 else 1000
                reqs = self._requests(period_ms)
                failed: list[int | ua.StatusCode] = []
                for k in range(0, len(reqs), chunk):
                    failed.extend(await sub.create_monitored_items(reqs[k:k + chunk]))
            except ua.UaStatusCodeError as e:
                raise DeviceUnavailable(f"OPC-UA {dev.endpoint}: subscription refused: {e}") from e
            except _NET_ERRORS as e:
                raise DeviceUnavailable(f"OPC-UA {dev.endpoint}: {_err(e)}") from e
            self._monitor_failures(failed)
            cfg = self._config_batch(stamp())
            if cfg is not None:
                sink(cfg)
            # the asyncua watchdog probes the server and calls back on a loss
            await self._lost.wait()
            raise DeviceUnavailable(f"OPC-UA {dev.endpoint}: connection lost ({self._lost_reason})")
        finally:
            self._sink = None

    def _requests(self, period_ms: float) -> list[ua.MonitoredItemCreateRequest]:
        dev = self.device
        sampling_ms = 1000.0 * dev.sampling_interval if dev.sampling_interval is not None else period_ms
        dtype = ua.DeadbandType.Percent if dev.deadband_type == "percent" else ua.DeadbandType.Absolute
        self._requested = np.flatnonzero(self.ok).astype(np.intp)
        out = []
        for i in self._requested:
            spec: Any = self.channels[int(i)].spec
            rv = ua.ReadValueId()
            rv.NodeId = self.nodeids[int(i)]
            rv.AttributeId = ua.AttributeIds.Value
            mp = ua.MonitoringParameters()
            mp.ClientHandle = int(i)  # the channel's position: no lookup table on the hot path
            mp.SamplingInterval = sampling_ms
            mp.QueueSize = dev.queue_size
            mp.DiscardOldest = True
            if spec.deadband:
                flt = ua.DataChangeFilter()
                flt.Trigger = ua.DataChangeTrigger.StatusValue
                flt.DeadbandType = dtype
                flt.DeadbandValue = float(spec.deadband)
                mp.Filter = flt
            req = ua.MonitoredItemCreateRequest()
            req.ItemToMonitor = rv
            req.MonitoringMode = ua.MonitoringMode.Reporting
            req.RequestedParameters = mp
            out.append(req)
        return out

    def _monitor_failures(self, results: list[int | ua.StatusCode]) -> None:
        for i, r in zip(self._requested, results, strict=True):
            if isinstance(r, ua.StatusCode):
                ii = int(i)
                code = r.value
                msg = (f"node {self.where[ii]} does not exist on the server ({status_name(code)})"
                       if (code & 0xFFFF0000) in _MISSING else
                       f"node {self.where[ii]}: monitored item refused ({status_name(code)})")
                if self.config_errors.get(ii) != msg:
                    log.error("opcua %s: channel %s: %s", self.name, self.channels[ii].name, msg)
                self.config_errors[ii] = msg
                self.info["channel_errors"][self.channels[ii].name] = msg

    async def close(self) -> None:
        self._sub = None
        await super().close()
