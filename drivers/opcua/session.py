"""Opening an OPC-UA session: security policy and mode, certificates, user identity.

A session the server cannot grant for reasons of configuration (a policy or
certificate it refuses, a wrong user or password, an unreadable password file)
raises ``DeviceUnavailable`` with quality CONFIG; anything on the network, with
COMMS. The password comes from ``password_file`` (read with the one secret reader,
relative to the config file's folder) or ``password``, and is never logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from asyncua import Client, ua
from asyncua.crypto import security_policies
from asyncua.ua.uaerrors import UaError

from drivers.base import DeviceUnavailable
from gateway.core.batch import Quality
from gateway.core.secrets import SecretFileError, read_secret

_POLICIES: dict[str, Any] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128Sha256RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
}
_MODES = {
    "None": ua.MessageSecurityMode.None_,
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}
#: the server's answers to a session it will not grant: configuration, not network
_REFUSED = (ua.StatusCodes.BadUserAccessDenied, ua.StatusCodes.BadIdentityTokenRejected,
            ua.StatusCodes.BadIdentityTokenInvalid, ua.StatusCodes.BadSecurityChecksFailed,
            ua.StatusCodes.BadCertificateUntrusted, ua.StatusCodes.BadCertificateInvalid,
            ua.StatusCodes.BadSecurityPolicyRejected)
_NET_ERRORS = (OSError, TimeoutError, ConnectionError, UaError, asyncio.IncompleteReadError)


def _err(e: BaseException) -> str:
    """``TimeoutError`` or ``ConnectionError: client is disconnected`` (many carry no message)."""
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def read_password(dev: Any, base_dir: Path) -> str | None:
    """The device password, from ``password_file`` (relative to ``base_dir``) or ``password``."""
    if dev.password_file is not None:
        try:
            return read_secret(dev.password_file, base_dir)
        except SecretFileError as e:
            raise DeviceUnavailable(f"OPC-UA {dev.endpoint}: password_file: {e}", Quality.CONFIG) from e
    password: str | None = dev.password
    return password


async def connect(dev: Any, name: str, base_dir: Path,
                  lost: Callable[[Exception], Coroutine[Any, Any, None]]) -> Client:
    """A connected client for device ``dev``; ``lost`` is called when the connection drops."""
    sec = dev.security
    client = Client(dev.endpoint, timeout=dev.timeout, watchdog_intervall=max(1.0, dev.timeout))
    client.name = client.description = f"safegw {name}"
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
        pw = read_password(dev, base_dir)
        if pw is not None:
            client.set_password(pw)
    client.connection_lost_callback = lost
    try:
        await client.connect(auto_reconnect=False)
    except ua.UaStatusCodeError as e:
        if e.code in _REFUSED:
            raise DeviceUnavailable(f"OPC-UA {dev.endpoint} refused us: {e}", Quality.CONFIG) from e
        raise DeviceUnavailable(f"OPC-UA {dev.endpoint}: {e}") from e
    except _NET_ERRORS as e:
        raise DeviceUnavailable(f"OPC-UA {dev.endpoint}: {_err(e)}") from e
    return client


async def operation_limit(client: Client, ident: int) -> int:
    """A server's OperationLimits value (0 = no limit, or the server does not say)."""
    try:
        dv = (await client.uaclient.read_attributes([ua.NodeId(ident)], ua.AttributeIds.Value))[0]  # type: ignore[arg-type]
        v = dv.Value.Value if dv.Value is not None else 0
        return int(v) if isinstance(v, int) and v > 0 else 0
    except (UaError, TypeError, ValueError):
        return 0
