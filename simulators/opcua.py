"""OPC-UA simulator: an asyncua server exposing a plant's DCS tags, driven by the scenario engine.

Each point is a variable in the simulator's namespace (normally index 2), with a
string, numeric or GUID NodeId and a browse path under ``Objects/<root>``::

    - name: dcs
      protocol: opcua
      port: 0                          # 0 = a free port (READY reports the endpoint)
      points:
        - {signal: R201.PT01, node: "s=R201.PT01"}             # browse path Objects/Plant/R201/PT01
        - {signal: T101.LT01, node: "i=1001", browse: "T101/LT01"}
      security: [None, Basic256Sha256_SignAndEncrypt]
      certificate: /path/server-cert.der
      private_key: /path/server-key.pem

Faults from the plant: ``bad_status`` scenarios set the point's status code (e.g.
``BadSensorFailure``, ``UncertainLastUsableValue``; the value is kept);
``restart`` / ``disconnect`` take the whole server down for the fault's window and
bring up a fresh one (sessions and subscriptions are gone, as after a DCS
restart); ``silent`` freezes the values and their timestamps. ``bulk: N`` adds N
extra Double variables ``s=Bulk.000000``.. (benchmarks), refreshed a slice per tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket
from pathlib import Path
from typing import Any, ClassVar, Literal

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from pydantic import Field, model_validator

from gateway.core.config import Strict
from gateway.core.units import Duration, Number
from simulators.config import SimDeviceBase
from simulators.scenario import Plant

log = logging.getLogger(__name__)

# asyncua's constructors are typed with NewTypes (Int16, UInt32, DateTime); plain values are fine
_NodeId: Any = ua.NodeId
_DataValue: Any = ua.DataValue
_StatusCode: Any = ua.StatusCode

_TYPES = {"Double": ua.VariantType.Double, "Float": ua.VariantType.Float,
          "Int32": ua.VariantType.Int32, "UInt16": ua.VariantType.UInt16, "Boolean": ua.VariantType.Boolean}
_POLICIES = {
    "None": ua.SecurityPolicyType.NoSecurity,
    "Basic256Sha256_Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
    "Basic256Sha256_SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    "Aes128Sha256RsaOaep_Sign": ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    "Aes128Sha256RsaOaep_SignAndEncrypt": ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
}


class OpcUaPoint(Strict):
    signal: str | None = Field(default=None, description="signal name; or give 'value'")
    value: Number | None = Field(default=None, description="a constant instead of a signal")
    node: str = Field(pattern=r"^(s=.+|i=\d+|g=[0-9A-Fa-f-]{36})$",
                      description="identifier in the simulator's namespace: s=R201.PT01, i=1001, g=<guid>")
    browse: str | None = Field(default=None, description="browse path under Objects/<root>, '/'-separated; "
                                                          "default: the string id with '.' as '/'")
    type: Literal["Double", "Float", "Int32", "UInt16", "Boolean"] = "Double"
    unit: str | None = None

    @model_validator(mode="after")
    def _source(self) -> OpcUaPoint:
        if (self.signal is None) == (self.value is None):
            raise ValueError("give exactly one of 'signal' or 'value'")
        return self

    @property
    def path(self) -> list[str]:
        if self.browse:
            return [p for p in self.browse.split("/") if p]
        if self.node.startswith("s="):
            return self.node[2:].split(".")
        return [self.node.replace("=", "_")]


class OpcUaSim(SimDeviceBase):
    server: ClassVar[str] = "simulators.opcua:OpcUaServer"
    protocol: Literal["opcua"]
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 = a free port")
    path: str = Field(default="/safegw/sim", description="endpoint path")
    namespace: str = "urn:safegw:sim:plant"
    root: str = Field(default="Plant", description="folder under Objects holding the points")
    security: list[str] = Field(default_factory=lambda: ["None"])
    certificate: Path | None = Field(default=None, description="server certificate (DER or PEM)")
    private_key: Path | None = None
    users: dict[str, str] | None = Field(default=None, description="user → password; none: anonymous ok")
    restart_delay: Duration = Field(default=0.0, description="minimum down time of a restart")
    bulk: int = Field(default=0, ge=0, le=200_000, description="extra Double variables for benchmarks")
    bulk_update: int = Field(default=1000, ge=0, description="bulk variables refreshed per tick")
    fast_read: bool = Field(default=False, description="answer repeated bulk Reads from a cache of "
                                                       "encoded values (benchmarks)")
    points: list[OpcUaPoint] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> OpcUaSim:
        for s in self.security:
            if s not in _POLICIES:
                raise ValueError(f"unknown security {s!r}; known: {', '.join(_POLICIES)}")
        if any(s != "None" for s in self.security) and (self.certificate is None or self.private_key is None):
            raise ValueError("secure endpoints need 'certificate' and 'private_key'")
        return self


class _Users:
    """Checks user names and passwords (anonymous allowed only when no users are set)."""

    def __init__(self, users: dict[str, str] | None):
        self.users = users

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if self.users is None:
            return User(role=UserRole.User)
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class OpcUaServer:
    """One simulated OPC-UA server (see module doc)."""

    def __init__(self, model: OpcUaSim, plant: Plant):
        self.model = model
        self.name = model.name
        self.plant = plant
        self.port = model.port
        self.server: Server | None = None
        self.ns = 2
        self.nodeids: list[ua.NodeId] = []
        self.bulk_ids: list[ua.NodeId] = []
        self._bulk_next = 0
        self.down = False
        self.restarts = 0
        self._down_since = 0.0
        self._vtypes = [_TYPES[p.type] for p in model.points]
        self._last_status: list[int] = [0] * len(model.points)

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.model.host}:{self.port}{self.model.path}"

    async def _build(self) -> Server:
        m = self.model
        srv = Server(user_manager=_Users(m.users))  # type: ignore[arg-type]
        await srv.init()
        srv.set_endpoint(self.endpoint)
        srv.set_server_name(f"safegw simulator {m.name}")
        await srv.set_application_uri(f"urn:safegw:sim:{m.name}")
        srv.set_security_policy([_POLICIES[s] for s in m.security])
        if m.certificate is not None and m.private_key is not None:
            await srv.load_certificate(str(m.certificate))
            await srv.load_private_key(str(m.private_key))
        self.ns = await srv.register_namespace(m.namespace)
        ns = self.ns
        root = await srv.nodes.objects.add_folder(_NodeId(m.root, ns), ua.QualifiedName(m.root, ns))
        folders: dict[tuple[str, ...], Any] = {(): root}
        self.nodeids = []
        for p in m.points:
            parent = root
            path = p.path
            for k in range(1, len(path)):
                key = tuple(path[:k])
                if key not in folders:
                    folders[key] = await folders[tuple(path[:k - 1])].add_folder(
                        _NodeId(f"{m.root}/{'/'.join(key)}", ns), ua.QualifiedName(path[k - 1], ns))
                parent = folders[key]
            nid = _nodeid(p.node, ns)
            vt = _TYPES[p.type]
            init = False if vt == ua.VariantType.Boolean else 0
            var = await parent.add_variable(nid, ua.QualifiedName(path[-1], ns), ua.Variant(init, vt))
            self.nodeids.append(var.nodeid)
        self.bulk_ids = []
        if m.bulk:
            await self._add_bulk(srv, root, ns)
        return srv

    async def _add_bulk(self, srv: Server, root: Any, ns: int) -> None:
        """``bulk`` Double variables, added a thousand per AddNodes call, a hundred per folder
        (asyncua scans a parent's references on every add: small parents keep it linear)."""
        bulk = await root.add_folder(_NodeId(f"{self.model.root}/Bulk", ns), ua.QualifiedName("Bulk", ns))
        items = []
        folder = bulk
        for k in range(self.model.bulk):
            if k % 100 == 0:
                folder = await bulk.add_folder(_NodeId(f"{self.model.root}/Bulk/{k // 100:04d}", ns),
                                               ua.QualifiedName(f"F{k // 100:04d}", ns))
            name = f"B{k:06d}"
            item = ua.AddNodesItem()
            item.RequestedNewNodeId = _NodeId(f"Bulk.{k:06d}", ns)
            item.BrowseName = ua.QualifiedName(name, ns)
            item.NodeClass = ua.NodeClass.Variable
            item.ParentNodeId = folder.nodeid
            item.ReferenceTypeId = _NodeId(ua.ObjectIds.HasComponent)
            item.TypeDefinition = _NodeId(ua.ObjectIds.BaseDataVariableType)
            attrs = ua.VariableAttributes()
            attrs.DisplayName = ua.LocalizedText(name)
            attrs.DataType = _NodeId(ua.ObjectIds.Double)
            attrs.Value = ua.Variant(float(k), ua.VariantType.Double)
            attrs.ValueRank = ua.ValueRank.Scalar
            attrs.AccessLevel = attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
            item.NodeAttributes = attrs
            items.append(item)
            self.bulk_ids.append(item.RequestedNewNodeId)
        for i in range(0, len(items), 1000):
            for r in await srv.iserver.isession.add_nodes(items[i:i + 1000]):
                r.StatusCode.check()

    async def start(self) -> dict[str, Any]:
        if self.model.fast_read:
            from asyncua.server import binary_server_asyncio

            if not getattr(binary_server_asyncio.UaProcessor, "safegw_fast_read", False):
                binary_server_asyncio.UaProcessor = _fast_processor()  # type: ignore[misc,assignment]
        if self.port == 0:
            self.port = free_port(self.model.host)
        self.server = await self._build()
        await self.server.start()
        return {"endpoint": self.endpoint, "namespace": self.model.namespace, "ns": self.ns}

    async def _go_down(self, t: float, why: str) -> None:
        # the same server object comes back later: building the standard address space
        # again costs seconds, while stop() already drops every session and subscription
        if self.server is not None and not self.down:
            log.info("opcua sim %s: going down (%s)", self.name, why)
            with contextlib.suppress(OSError, RuntimeError, asyncio.CancelledError):
                await self.server.stop()
        self.down = True
        self._down_since = t

    async def _come_back(self) -> None:
        if self.server is None:
            self.server = await self._build()
        await self.server.start()
        self.down = False
        self.restarts += 1
        self._last_status = [0] * len(self.model.points)
        log.info("opcua sim %s: back up (restart %d)", self.name, self.restarts)

    async def restart(self) -> None:
        """Stop and start again at once (tests)."""
        await self._go_down(0.0, "restart requested")
        await self._come_back()

    async def update(self, t: float, values: dict[str, float]) -> None:
        fault = self.plant.device_fault(self.name, t)
        kind = fault.kind if fault is not None else None
        if kind in ("restart", "disconnect"):
            if not self.down:
                await self._go_down(t, kind)
            return
        if self.down:
            if t - self._down_since < self.model.restart_delay:
                return
            await self._come_back()
        if kind == "silent" or self.server is None or self.down:
            return
        now = dt.datetime.now(dt.UTC)
        write = self.server.write_attribute_value
        for i, p in enumerate(self.model.points):
            v = float(values[p.signal] if p.signal is not None else (p.value or 0.0))
            status_name = self.plant.signal_status(p.signal, t) if p.signal is not None else None
            code = getattr(ua.StatusCodes, status_name, ua.StatusCodes.Bad) if status_name else 0
            vt = self._vtypes[i]
            if vt == ua.VariantType.Boolean:
                val: Any = bool(v >= 0.5)
            elif vt in (ua.VariantType.Int32, ua.VariantType.UInt16):
                val = round(v)
            else:
                val = float(v)
            dv = _DataValue(ua.Variant(val, vt), _StatusCode(code), SourceTimestamp=now,
                            ServerTimestamp=now)
            await write(self.nodeids[i], dv)
        if self.bulk_ids and self.model.bulk_update:
            n = len(self.bulk_ids)
            k0 = self._bulk_next
            for k in range(k0, k0 + min(self.model.bulk_update, n)):
                j = k % n
                dv = _DataValue(ua.Variant(float(j) + t, ua.VariantType.Double), SourceTimestamp=now,
                                  ServerTimestamp=now)
                await write(self.bulk_ids[j], dv)
            self._bulk_next = (k0 + self.model.bulk_update) % n

    async def stop(self) -> None:
        if self.server is not None and not self.down:
            with contextlib.suppress(OSError, RuntimeError, asyncio.CancelledError):
                await self.server.stop()
        self.server = None
        self.down = False


def _nodeid(text: str, ns: int) -> ua.NodeId:
    kind, _, ident = text.partition("=")
    if kind == "i":
        return _NodeId(int(ident), ns)
    if kind == "g":
        import uuid

        return _NodeId(uuid.UUID(ident), ns, ua.NodeIdType.Guid)
    return _NodeId(ident, ns)


# --------------------------------------------------------------------------- fast Read (benchmarks)

_READ_REQ = _NodeId(ua.ObjectIds.ReadRequest_Encoding_DefaultBinary)
_VARIANT_FMT = {ua.VariantType.Double: (11, "<d"), ua.VariantType.Float: (10, "<f"),
                ua.VariantType.Int32: (6, "<i"), ua.VariantType.UInt16: (5, "<H"),
                ua.VariantType.Boolean: (1, "<?")}


def _encode_dv(dv: Any) -> bytes | None:
    """One DataValue as a Read with TimestampsToReturn=Source sends it; None if not a plain scalar."""
    import struct

    from asyncua.ua.uatypes import datetime_to_win_epoch

    mask = 0
    parts = []
    v = dv.Value
    if v is not None and v.Value is not None:
        enc = _VARIANT_FMT.get(v.VariantType)
        if enc is None or v.Dimensions or isinstance(v.Value, list | tuple):
            return None
        mask |= 0x01
        parts.append(bytes([enc[0]]) + struct.pack(enc[1], v.Value))
    code = dv.StatusCode.value if dv.StatusCode is not None else 0
    if code:
        mask |= 0x02
        parts.append(struct.pack("<I", code))
    if dv.SourceTimestamp is not None:
        mask |= 0x04
        parts.append(struct.pack("<q", datetime_to_win_epoch(dv.SourceTimestamp)))
    return bytes([mask]) + b"".join(parts)


def _fast_processor() -> Any:
    from asyncua.common.utils import Buffer
    from asyncua.server.uaprocessor import UaProcessor
    from asyncua.ua.ua_binary import nodeid_to_binary, struct_from_binary, struct_to_binary

    requests: dict[bytes, list[ua.NodeId]] = {}
    encoded: dict[ua.NodeId, tuple[Any, bytes]] = {}
    resp_typeid = nodeid_to_binary(_NodeId(ua.ObjectIds.ReadResponse_Encoding_DefaultBinary))
    secure: Any = ua.MessageType.SecureMessage

    class FastReadProcessor(UaProcessor):
        """Answers a Read it has seen before (same node list, Value, source timestamps) from a
        cache of encoded DataValues, re-encoding only the values written since. Anything else
        goes through asyncua as usual."""

        safegw_fast_read = True

        async def _process_message(self, typeid: Any, requesthdr: Any, seqhdr: Any, body: Any) -> Any:
            if typeid != _READ_REQ or self.session is None or not self.session.is_activated():
                return await super()._process_message(typeid, requesthdr, seqhdr, body)
            raw = bytes(body)
            perms = self._connection.security_policy.permissions
            if perms is not None and perms.check_validity(self.session.user, typeid, Buffer(raw)) is False:
                return await super()._process_message(typeid, requesthdr, seqhdr, Buffer(raw))
            nodes = requests.get(raw)
            if nodes is None:
                params = struct_from_binary(ua.ReadParameters, Buffer(raw))
                if (params.TimestampsToReturn != ua.TimestampsToReturn.Source
                        or any(r.AttributeId != ua.AttributeIds.Value or r.IndexRange
                               for r in params.NodesToRead)):
                    return await super()._process_message(typeid, requesthdr, seqhdr, Buffer(raw))
                nodes = [r.NodeId for r in params.NodesToRead]
                if len(requests) > 64:
                    requests.clear()
                requests[raw] = nodes
            read = self.iserver.aspace.read_attribute_value
            parts = []
            for nid in nodes:
                dv = read(nid, ua.AttributeIds.Value)
                hit = encoded.get(nid)
                if hit is None or hit[0] is not dv:
                    b = _encode_dv(dv)
                    if b is None:
                        return await super()._process_message(typeid, requesthdr, seqhdr, Buffer(raw))
                    hit = (dv, b)
                    encoded[nid] = hit
                parts.append(hit[1])
            self.session.touch()
            hdr = ua.ResponseHeader()
            hdr.RequestHandle = requesthdr.RequestHandle
            answer = (resp_typeid + struct_to_binary(hdr) + len(parts).to_bytes(4, "little") + b"".join(parts)
                      + (-1).to_bytes(4, "little", signed=True))
            self._transport.write(self._connection.message_to_binary(
                answer, message_type=secure, request_id=seqhdr.RequestId))
            return True

    return FastReadProcessor

