"""OPC-UA driver (asyncua): a DCS or SCADA server, read in bulk or by subscription.

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

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import stat
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from asyncua import Client, ua
from asyncua.common.subscription import Subscription
from asyncua.crypto import security_policies
from asyncua.ua.status_codes import code_to_name_doc
from asyncua.ua.ua_binary import nodeid_from_binary, nodeid_to_binary, struct_from_binary, struct_to_binary
from asyncua.ua.uaerrors import UaError

from drivers.base import DeviceUnavailable, Driver, Sink, stamp
from gateway.core.batch import Batch, Quality
from gateway.core.channels import ChannelInfo

log = logging.getLogger(__name__)

#: NodeId forms accepted in config (checked by ``safegw check`` too)
NODEID_RE = re.compile(
    r"^(?:(?:ns=\d+|nsu=[^;]+);)?(?:i=\d+|s=.+|g=[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-"
    r"[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}|b=[A-Za-z0-9+/=]+)$")

_POLICIES: dict[str, Any] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128Sha256RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
}
_MODES = {
    "None": ua.MessageSecurityMode.None_,
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}
_MISSING = {ua.StatusCodes.BadNodeIdUnknown, ua.StatusCodes.BadNodeIdInvalid,
            ua.StatusCodes.BadAttributeIdInvalid}
_NET_ERRORS = (OSError, TimeoutError, ConnectionError, UaError, asyncio.IncompleteReadError)


def _err(e: BaseException) -> str:
    """``TimeoutError`` or ``ConnectionError: client is disconnected`` (many carry no message)."""
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def status_name(code: int) -> str:
    """``BadSensorFailure (0x808B0000)``."""
    name = code_to_name_doc.get(code, ("Unknown", ""))[0]
    return f"{name} (0x{code:08X})"


def status_quality(codes: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint8]:
    """Quality bytes for raw OPC-UA status codes (top two bits are the severity)."""
    sev = codes >> 30
    q = np.where(sev == 0, Quality.GOOD, np.where(sev == 1, Quality.UNCERTAIN_STATUS, Quality.BAD_STATUS))
    q = q.astype(np.uint8)
    if (sev >= 2).any():
        missing = np.isin(codes & 0xFFFF0000, np.array(sorted(_MISSING), dtype=np.uint32))
        q[missing] = Quality.CONFIG
    return q


def read_password(dev: Any) -> str | None:
    """The device password, from ``password_file`` (first line) or ``password``. Never logged."""
    if dev.password_file is not None:
        path = Path(dev.password_file)
        try:
            st = path.stat()
            text = path.read_text().splitlines()
        except OSError as e:
            raise DeviceUnavailable(f"password_file {path}: {e.strerror or e}", Quality.CONFIG) from e
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise DeviceUnavailable(f"password_file {path} is readable by others; chmod 600 it",
                                    Quality.CONFIG)
        return text[0] if text else ""
    password: str | None = dev.password
    return password


# --------------------------------------------------------------------------- fast Read decoding
#
# asyncua decodes a Read response into one DataValue dataclass per node (≈ 20 µs each
# in pure Python). The common answer of a DCS is a run of same-shaped scalars, so the
# results array is decoded here with numpy when every record has the same layout, with
# a small struct loop when they differ, and handed back to asyncua's own decoder for
# anything else (arrays, structures, picoseconds).

_FILETIME_EPOCH = 116444736000000000  # 1601-01-01 → 1970-01-01, in 100 ns ticks
#: Variant type id → (struct format, size); numbers only
_SCALARS = {1: ("<?", 1), 2: ("<b", 1), 3: ("<B", 1), 4: ("<h", 2), 5: ("<H", 2), 6: ("<i", 4),
            7: ("<I", 4), 8: ("<q", 8), 9: ("<Q", 8), 10: ("<f", 4), 11: ("<d", 8)}
_NP = {1: "u1", 2: "i1", 3: "u1", 4: "<i2", 5: "<u2", 6: "<i4", 7: "<u4", 8: "<i8", 9: "<u8", 10: "<f4",
       11: "<f8"}
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")


class NotSimple(Exception):
    """The response holds something the fast decoder leaves to asyncua."""


def decode_results(buf: bytes, pos: int, n: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.uint32],
                                                           npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """The DataValue array of a Read response: values, status codes, source times (ns, 0 = none),
    and which values were not numbers (strings, dates). Raises NotSimple for anything else."""
    count = _I32.unpack_from(buf, pos)[0]
    pos += 4
    if count != n:
        raise NotSimple(f"{count} results for {n} nodes")
    values = np.full(n, np.nan)
    codes = np.zeros(n, dtype=np.uint32)
    src = np.zeros(n, dtype=np.int64)
    not_num = np.zeros(n, dtype=bool)
    if n == 0:
        return values, codes, src, not_num
    # uniform layout: every record has the first one's mask and variant type
    mask = buf[pos]
    if not mask & 0x30 and (mask & 0x01 == 0 or buf[pos + 1] in _SCALARS):
        size = 1
        vt = 0
        if mask & 0x01:
            vt = buf[pos + 1]
            size += 1 + _SCALARS[vt][1]
        size += 4 * bool(mask & 0x02) + 8 * bool(mask & 0x04) + 8 * bool(mask & 0x08)
        if pos + size * n <= len(buf):
            rec = np.frombuffer(buf, dtype=np.uint8, count=size * n, offset=pos).reshape(n, size)
            if (rec[:, 0] == mask).all() and (vt == 0 or (rec[:, 1] == vt).all()):
                off = 1
                if vt:
                    raw = np.ascontiguousarray(rec[:, 2:2 + _SCALARS[vt][1]]).view(_NP[vt]).ravel()
                    values = raw.astype(np.float64)
                    off = 2 + _SCALARS[vt][1]
                if mask & 0x02:
                    codes = np.ascontiguousarray(rec[:, off:off + 4]).view("<u4").ravel().astype(np.uint32)
                    off += 4
                if mask & 0x04:
                    t = np.ascontiguousarray(rec[:, off:off + 8]).view("<i8").ravel()
                    src = np.where(t > 0, (t - _FILETIME_EPOCH) * 100, 0).astype(np.int64)
                return values, codes, src, not_num
    # mixed layouts: one record at a time
    for i in range(n):
        mask = buf[pos]
        pos += 1
        if mask & 0x30:
            raise NotSimple("picoseconds")
        if mask & 0x01:
            vt = buf[pos]
            pos += 1
            if vt in _SCALARS:
                fmt, size = _SCALARS[vt]
                values[i] = struct.unpack_from(fmt, buf, pos)[0]
                pos += size
            elif vt == 12 or vt == 15:  # String, ByteString: skip, not a measurement
                ln = _I32.unpack_from(buf, pos)[0]
                pos += 4 + max(ln, 0)
                not_num[i] = True
            elif vt == 13:  # DateTime
                pos += 8
                not_num[i] = True
            elif vt == 0:
                pass
            else:
                raise NotSimple(f"variant type {vt}")
        if mask & 0x02:
            codes[i] = _U32.unpack_from(buf, pos)[0]
            pos += 4
        if mask & 0x04:
            t = _I64.unpack_from(buf, pos)[0]
            src[i] = (t - _FILETIME_EPOCH) * 100 if t > 0 else 0
            pos += 8
        if mask & 0x08:
            pos += 8
    return values, codes, src, not_num


class OpcUaDriver(Driver):
    """Base of both modes; ``OpcUaDriver(device, channels)`` returns the right one."""

    def __new__(cls, device: Any, channels: list[ChannelInfo]) -> OpcUaDriver:
        if cls is OpcUaDriver:
            cls = OpcUaSubscribeDriver if device.mode == "subscribe" else OpcUaPollDriver
        return super().__new__(cls)

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
        dev = self.device
        sec = dev.security
        client = Client(dev.endpoint, timeout=dev.timeout, watchdog_intervall=max(1.0, dev.timeout))
        client.name = client.description = f"safegw {self.name}"
        client.application_uri = "urn:safegw:client"
        client.session_timeout = max(60_000, int(dev.poll * 10_000))
        if sec.policy != "None" and sec.mode != "None":
            try:
                await client.set_security(
                    _POLICIES[sec.policy], str(sec.certificate), str(sec.private_key),
                    server_certificate=str(sec.server_certificate) if sec.server_certificate else None,
                    mode=_MODES[sec.mode])
            except (OSError, ValueError, TypeError) as e:
                raise DeviceUnavailable(f"OPC-UA security setup for {dev.endpoint}: {e}",
                                        Quality.CONFIG) from e
            except _NET_ERRORS as e:
                raise DeviceUnavailable(f"OPC-UA {dev.endpoint}: {_err(e)}") from e
        if dev.username:
            client.set_user(dev.username)
            pw = read_password(dev)
            if pw is not None:
                client.set_password(pw)
        self._lost = asyncio.Event()
        self._lost_reason = ""

        async def lost(exc: Exception) -> None:
            self._lost_reason = _err(exc)
            self._lost.set()

        client.connection_lost_callback = lost
        try:
            await client.connect(auto_reconnect=False)
        except ua.UaStatusCodeError as e:
            if e.code in (ua.StatusCodes.BadUserAccessDenied, ua.StatusCodes.BadIdentityTokenRejected,
                          ua.StatusCodes.BadIdentityTokenInvalid, ua.StatusCodes.BadSecurityChecksFailed,
                          ua.StatusCodes.BadCertificateUntrusted, ua.StatusCodes.BadCertificateInvalid,
                          ua.StatusCodes.BadSecurityPolicyRejected):
                raise DeviceUnavailable(f"OPC-UA {dev.endpoint} refused us: {e}", Quality.CONFIG) from e
            raise DeviceUnavailable(f"OPC-UA {dev.endpoint}: {e}") from e
        except _NET_ERRORS as e:
            raise DeviceUnavailable(f"OPC-UA {dev.endpoint}: {_err(e)}") from e
        return client

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
            await asyncio.wait_for(client.disconnect(), timeout=max(1.0, self.device.timeout))
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


def _reparse(hdr: ua.ResponseHeader, results: bytes) -> Any:
    """A whole ReadResponse buffer again, for asyncua's decoder (the slow path)."""
    from asyncua.common.utils import Buffer
    from asyncua.ua.ua_binary import nodeid_to_binary, struct_to_binary

    typeid = nodeid_to_binary(ua.FourByteNodeId(ua.ObjectIds.ReadResponse_Encoding_DefaultBinary))  # type: ignore[arg-type]
    return Buffer(typeid + struct_to_binary(hdr) + results)


def _src_seconds(dv: ua.DataValue) -> float:
    t = dv.SourceTimestamp
    return t.timestamp() if t is not None else 0.0


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


async def _operation_limit(client: Client, ident: int) -> int:
    """A server's OperationLimits value (0 = no limit, or the server does not say)."""
    try:
        dv = (await client.uaclient.read_attributes([ua.NodeId(ident)], ua.AttributeIds.Value))[0]  # type: ignore[arg-type]
        v = dv.Value.Value if dv.Value is not None else 0
        return int(v) if isinstance(v, int) and v > 0 else 0
    except (UaError, TypeError, ValueError):
        return 0


class OpcUaPollDriver(OpcUaDriver):
    """mode: poll: one bulk Read per cycle (split only where the server sets MaxNodesPerRead)."""

    streaming = False

    async def open(self) -> None:
        await super().open()
        assert self.client is not None
        pos = np.flatnonzero(self.ok).astype(np.intp)
        limit = await _operation_limit(self.client,
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
                data = await asyncio.wait_for(fut, proto.timeout)
                proto.check_answer(data, " in response to ReadRequest")
                return data
        return await client.uaclient.session._send_request(r.request)


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
                limit = await _operation_limit(
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
