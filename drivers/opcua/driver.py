"""The OPC-UA driver's common part: the session, node resolution, and values to Batches.

``drivers.opcua.driver_for(device, channels)`` gives the driver of the device's mode (``poll`` or
``subscribe``). Both share what is here: a session per ``open()``, NodeIds resolved
once per session (nodes that do not exist become CONFIG channels), and one vectorized
step from decoded values and status codes to a Batch (quality, scaling, range, and
the timestamp rule).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import numpy as np
import numpy.typing as npt
from asyncua import Client, ua
from asyncua.ua.uaerrors import UaError

from drivers.base import DeviceUnavailable, Driver
from drivers.opcua.decode import _MISSING, status_name, status_quality
from drivers.opcua.session import _NET_ERRORS, _err, connect
from gateway.core.aio import within
from gateway.core.batch import Batch, Quality
from gateway.core.channels import ChannelInfo

log = logging.getLogger(__name__)


class OpcUaDriver(Driver):
    """Base of both modes (``drivers.opcua.driver_for`` picks the device's)."""

    def __init__(self, device: Any, channels: list[ChannelInfo]):
        super().__init__(device, channels)
        n = len(channels)
        specs: list[Any] = [c.spec for c in channels]
        self.scale = np.array([s.scale for s in specs], dtype=np.float64)
        self.offset = np.array([s.offset for s in specs], dtype=np.float64)
        self.lo = np.array([s.range[0] if s.range else -np.inf for s in specs], dtype=np.float64)
        self.hi = np.array([s.range[1] if s.range else np.inf for s in specs], dtype=np.float64)
        self.status_codes = np.zeros(n, dtype=np.uint32)
        #: where each channel is read: the node's text, for messages
        self.where = [s.node if s.node is not None else "/".join(s.browse_path) for s in specs]
        self.client: Client | None = None
        self.nodeids: list[ua.NodeId | None] = [None] * n
        self.ok = np.zeros(n, dtype=bool)  # nodes that exist
        self.config_errors: dict[int, str] = {}
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self.max_skew_ns = int(getattr(device, "max_clock_skew", 5.0) * 1e9)
        self.max_age_ns = int(getattr(device, "max_timestamp_age", 3600.0) * 1e9)
        self.use_source_ts = getattr(device, "timestamps", "source") == "source"
        #: each channel's last reported time: a source time that is not after it is
        #: replaced by the receive time (a server that keeps a value's time until it changes)
        self.last_ts = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
        self.info.update({
            "endpoint": device.endpoint, "mode": device.mode, "security": f"{device.security.policy}/"
            f"{device.security.mode}", "timestamps": None, "source_ts": 0, "receive_ts": 0,
            "status": {}, "channel_errors": {}, "sessions": 0, "reads": 0, "notifications": 0,
        })

    # ------------------------------------------------------------------ session
    async def _connect(self) -> Client:
        self._lost = asyncio.Event()
        self._lost_reason = ""

        async def lost(exc: Exception) -> None:
            self._lost_reason = _err(exc)
            self._lost.set()

        return await connect(self.device, self.name, self.base_dir, lost)

    async def open(self) -> None:
        await self.close()
        client = await self._connect()
        self.client = client
        try:
            await self._resolve(client)
        except _NET_ERRORS as e:
            await self.close()
            raise DeviceUnavailable(f"OPC-UA {self.device.endpoint}: {_err(e)}") from e
        self.info["sessions"] += 1
        if self.info["sessions"] > 1:
            log.info("opcua %s: new session on %s", self.name, self.device.endpoint)

    async def _resolve(self, client: Client) -> None:
        """NodeIds for every channel; nodes that do not exist become config errors."""
        specs: list[Any] = [c.spec for c in self.channels]
        errors: dict[int, str] = {}
        ids: list[ua.NodeId | None] = [None] * len(specs)
        paths: list[tuple[int, list[str]]] = []
        for i, s in enumerate(specs):
            if s.node is not None:
                try:
                    ids[i] = ua.NodeId.from_string(s.node)
                except (ValueError, UaError) as e:
                    errors[i] = f"node {s.node!r} is not a NodeId: {e}"
            else:
                paths.append((i, list(s.browse_path)))
        if paths:
            root = client.nodes.root
            found = await root.get_children_by_path([p for _, p in paths], raise_on_partial_error=False)
            for (i, p), nodes in zip(paths, found, strict=True):
                node = nodes[0] if nodes else None
                if node is None:
                    errors[i] = f"browse path {'/'.join(p)!r} does not resolve on the server"
                else:
                    ids[i] = node.nodeid
        # one Read of every node: unknown ones answer BadNodeIdUnknown
        check = [(i, nid) for i, nid in enumerate(ids) if nid is not None]
        if check:
            res = await client.uaclient.read_attributes([nid for _, nid in check], ua.AttributeIds.Value)
            for (i, _nid), dv in zip(check, res, strict=True):
                code = dv.StatusCode.value if dv.StatusCode is not None else 0
                if (code & 0xFFFF0000) in _MISSING:
                    errors[i] = f"node {self.where[i]} does not exist on the server ({status_name(code)})"
        for i, msg in errors.items():
            if self.config_errors.get(i) != msg:
                log.error("opcua %s: channel %s: %s", self.name, self.channels[i].name, msg)
            ids[i] = None
        self.nodeids = ids
        self.config_errors = errors
        self.ok = np.array([nid is not None for nid in ids], dtype=bool)
        self.info["channel_errors"] = {self.channels[i].name: m for i, m in errors.items()}

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        client.connection_lost_callback = None
        try:
            await within(client.disconnect(), max(1.0, self.device.timeout))
        except (*_NET_ERRORS, asyncio.CancelledError, RuntimeError) as e:
            log.debug("opcua %s: disconnect: %s", self.name, e)
            with contextlib.suppress(*_NET_ERRORS, RuntimeError):
                client.disconnect_socket()

    # ------------------------------------------------------------------ values
    def _samples(self, pos: npt.NDArray[np.intp], values: list[Any], codes: list[int],
                 src_s: list[float], recv_ns: int) -> Batch:
        """Batch for the channels at ``pos`` from decoded DataValues (asyncua objects)."""
        n = len(pos)
        val = np.empty(n, dtype=np.float64)
        bad_type = np.zeros(n, dtype=bool)
        for k, v in enumerate(values):
            try:
                val[k] = v
            except (TypeError, ValueError):
                val[k] = np.nan
                bad_type[k] = v is not None
        code_arr = np.fromiter(codes, dtype=np.uint32, count=n)
        src = (np.asarray(src_s, dtype=np.float64) * 1e9).astype(np.int64) if self.use_source_ts \
            else np.zeros(n, dtype=np.int64)
        return self._batch(pos, val, code_arr, src, bad_type, recv_ns)

    def _batch(self, pos: npt.NDArray[np.intp], val: npt.NDArray[np.float64],
               code_arr: npt.NDArray[np.uint32], src: npt.NDArray[np.int64], bad_type: npt.NDArray[np.bool_],
               recv_ns: int) -> Batch:
        """Quality, scaling, range and the timestamp rule, all vectorized."""
        n = len(pos)
        q = status_quality(code_arr)
        if bad_type.any():  # strings, dates, structures: not a measurement
            q[bad_type & (q < Quality.BAD)] = Quality.PARSE
        val = val * self.scale[pos] + self.offset[pos]
        out = (q < Quality.BAD) & ((val < self.lo[pos]) | (val > self.hi[pos]))
        if out.any():
            q[out] = Quality.OUT_OF_RANGE
        # timestamps: the source's when sane and after the channel's last reported one, else
        # ours. (Many servers keep a value's source time until the value changes: read again,
        # an unchanged value is the same reading confirmed when we received it, as a Modbus
        # poll would report it; reported as a repeat, the rules would take it for no data.)
        ts = np.full(n, recv_ns, dtype=np.int64)
        if self.use_source_ts:
            sane = (src > recv_ns - self.max_age_ns) & (src < recv_ns + self.max_skew_ns)
            sane &= src > self.last_ts[pos]
            ts[sane] = src[sane]
            ns = int(sane.sum())
            self.info["source_ts"] += ns
            self.info["receive_ts"] += n - ns
            self.info["timestamps"] = "source" if ns == n else ("receive" if ns == 0 else "mixed")
        else:
            self.info["receive_ts"] += n
            self.info["timestamps"] = "receive"
        self.last_ts[pos] = ts
        self._note_status(pos, code_arr)
        return Batch(self.indexes[pos], ts, val, q)

    def _note_status(self, pos: npt.NDArray[np.intp], codes: npt.NDArray[np.uint32]) -> None:
        old = self.status_codes[pos]
        if np.array_equal(old, codes):
            return
        self.status_codes[pos] = codes
        status: dict[str, str] = self.info["status"]
        for k in np.flatnonzero(old != codes):
            i = int(pos[k])
            name = self.channels[i].name
            c = int(codes[k])
            if c >> 30:
                if name not in status:
                    log.warning("opcua %s: %s reports %s", self.name, name, status_name(c))
                status[name] = status_name(c)
            elif status.pop(name, None) is not None:
                log.info("opcua %s: %s good again", self.name, name)

    def _config_batch(self, ts_ns: int) -> Batch | None:
        if not self.config_errors:
            return None
        idx = np.array(sorted(self.config_errors), dtype=np.intp)
        return Batch.bad(self.indexes[idx], ts_ns, Quality.CONFIG)

