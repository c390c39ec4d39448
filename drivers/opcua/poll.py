"""OPC-UA ``mode: poll``: one bulk Read per cycle, for every node of the device.

The Read requests are built once per session (their node list never changes) and
sent all at once, each with a fresh request header; the answers are decoded with
numpy when they are plain scalars (``decode``), by asyncua otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

import numpy as np
import numpy.typing as npt
from asyncua import Client, ua
from asyncua.ua.ua_binary import nodeid_from_binary, nodeid_to_binary, struct_from_binary, struct_to_binary

from drivers.base import DeviceUnavailable, stamp
from drivers.opcua.decode import NotSimple, _reparse, _src_seconds, decode_results
from drivers.opcua.driver import OpcUaDriver
from drivers.opcua.session import _NET_ERRORS, _err, operation_limit
from gateway.core.aio import within
from gateway.core.batch import Batch

log = logging.getLogger(__name__)


class _Read:
    """One prebuilt Read request: the channel positions it covers and its encoded node list."""

    def __init__(self, pos: npt.NDArray[np.intp], nodeids: list[ua.NodeId], source_ts: bool):
        self.pos = pos
        params = ua.ReadParameters()
        params.MaxAge = 0
        params.TimestampsToReturn = (ua.TimestampsToReturn.Source if source_ts
                                     else ua.TimestampsToReturn.Neither)
        for nid in nodeids:
            rv = ua.ReadValueId()
            rv.NodeId = nid
            rv.AttributeId = ua.AttributeIds.Value
            params.NodesToRead.append(rv)
        self.request = ua.ReadRequest()
        self.request.Parameters = params
        # the node list never changes between cycles: encode it once (≈ 9 µs a node otherwise)
        self.typeid_bin = nodeid_to_binary(self.request.TypeId)
        self.params_bin = struct_to_binary(params)


class OpcUaPollDriver(OpcUaDriver):
    """mode: poll: one bulk Read per cycle (split only where the server sets MaxNodesPerRead)."""

    streaming = False

    async def open(self) -> None:
        await super().open()
        assert self.client is not None
        pos = np.flatnonzero(self.ok).astype(np.intp)
        limit = await operation_limit(self.client,
                                      ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead)
        size = limit if 0 < limit < len(pos) else max(len(pos), 1)
        self._reads = [_Read(pos[k:k + size], [self.nodeids[int(i)] for i in pos[k:k + size]],  # type: ignore[misc]
                             self.use_source_ts) for k in range(0, len(pos), size)]
        self.info["reads_per_cycle"] = len(self._reads)
        self._fast_send = True

    async def poll(self) -> Batch:
        client = self.client
        if client is None:
            await self.open()
            client = self.client
            assert client is not None
        if self._lost.is_set():
            raise DeviceUnavailable(f"OPC-UA {self.device.endpoint}: connection lost ({self._lost_reason})")
        parts: list[Batch] = []
        if self._reads:
            try:
                # every request on the wire before waiting for the first answer
                answers = await asyncio.gather(*(self._send_read(client, r) for r in self._reads))
                recv = stamp()
                parts.extend(self._decode(r, data, recv)
                             for r, data in zip(self._reads, answers, strict=True))
            except ua.UaStatusCodeError as e:
                raise DeviceUnavailable(f"OPC-UA {self.device.endpoint}: Read failed: {e}") from e
            except _NET_ERRORS as e:
                raise DeviceUnavailable(f"OPC-UA {self.device.endpoint}: {_err(e)}") from e
            self.info["reads"] += 1
        cfg = self._config_batch(stamp())
        if cfg is not None:
            parts.append(cfg)
        return Batch.concat(parts)

    def _decode(self, r: _Read, data: Any, recv: int) -> Batch:
        """The answer, decoded by hand when it is plain scalars (see decode_results)."""
        nodeid_from_binary(data)  # the response's type id
        hdr = struct_from_binary(ua.ResponseHeader, data)
        hdr.ServiceResult.check()
        raw = bytes(data)
        try:
            val, codes, src, not_num = decode_results(raw, 0, len(r.pos))
        except (NotSimple, IndexError, struct.error, ValueError):
            self.info["slow_reads"] = self.info.get("slow_reads", 0) + 1
            res = struct_from_binary(ua.ReadResponse, _reparse(hdr, raw)).Results
            values = [dv.Value.Value if dv.Value is not None else None for dv in res]
            codes_l = [dv.StatusCode.value if dv.StatusCode is not None else 0 for dv in res]
            src_l = [_src_seconds(dv) for dv in res]
            return self._samples(r.pos, values, codes_l, src_l, recv)
        return self._batch(r.pos, val, codes, src, not_num, recv)

    async def _send_read(self, client: Client, r: _Read) -> Any:
        """Send a prebuilt Read: a fresh request header in front of the cached node list.

        This reaches into asyncua's socket protocol (request ids, header setup), as its
        public API re-encodes every ReadValueId each time; if those internals move in a
        future asyncua, the normal path is used instead.
        """
        if self._fast_send:
            proto = client.uaclient.protocol
            try:
                if proto is None or proto.transport is None:
                    raise ConnectionError("connection is not open")
                if client.uaclient.pre_request_hook is not None:
                    await client.uaclient.pre_request_hook()
                hdr = r.request.RequestHeader
                proto._setup_request_header(hdr, proto.timeout)
                binreq = r.typeid_bin + struct_to_binary(hdr) + r.params_bin
                request_id = proto._request_id + 1
                proto.revolve_security_token()
                msg = proto._connection.message_to_binary(
                    binreq, message_type=ua.MessageType.SecureMessage, request_id=request_id)  # type: ignore[arg-type]
                proto._request_id = request_id
                fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                proto._callbackmap[request_id] = fut
                proto.transport.write(msg)
            except AttributeError as e:
                log.warning("opcua %s: asyncua internals changed (%s); slower Read path", self.name, e)
                self._fast_send = False
            else:
                data = await within(fut, proto.timeout)
                proto.check_answer(data, " in response to ReadRequest")
                return data
        return await client.uaclient.session._send_request(r.request)

