"""Signed HTTP requests between gateways and central nodes, and their TLS material.

Every sync request carries five headers:

- ``X-Safegw-Key``: the signer's key id (as in its public key bundle),
- ``X-Safegw-To``: the recipient's node id (the gateway a central node pulls from, the
  central node a gateway or a lower node pushes to),
- ``X-Safegw-Time``: the signer's clock, ns since the epoch (UTC),
- ``X-Safegw-Nonce``: 16 random bytes, hex,
- ``X-Safegw-Signature``: Ed25519 over ``safegw-sync-v2\\n RECIPIENT\\n METHOD\\n PATH?QUERY\\n
  TIME\\n NONCE\\n SHA-256(body)`` (newline-joined, hex digest), base64.

The receiver accepts a request only when it names the receiver's own node id, the key
id is one it trusts, the signature verifies, the time is within ``window`` of its own
clock, and the nonce was not seen within that window (replays are rejected, not merely
ignored). Naming the recipient is what keeps a request captured on its way to one node
from being replayed, within the window, to another node that trusts the same key. TLS
(a self-signed certificate made on first start and pinned by the peer, or a CA's) keeps
the traffic private on top; the signature is what authorises it.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import ipaddress
import logging
import os
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)

H_KEY = "x-safegw-key"
H_TO = "x-safegw-to"
H_TIME = "x-safegw-time"
H_NONCE = "x-safegw-nonce"
H_SIG = "x-safegw-signature"


class AuthError(Exception):
    """A request that must be refused; ``reason`` is a short counter name."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


#: the longest signature header values a verifier reads: a time in ns fits in 19 digits
MAX_TIME_DIGITS = 20
MAX_NONCE = 64
MAX_SIGNATURE = 128  # base64 of a 64-byte Ed25519 signature is 88


def _message(to: str, method: str, target: str, ts: str, nonce: str, body: bytes) -> bytes:
    # v2: v1 did not name the recipient; the tag keeps a v1 signature from ever verifying
    return "\n".join(("safegw-sync-v2", to, method.upper(), target, ts, nonce,
                      hashlib.sha256(body).hexdigest())).encode()


def sign_headers(key: Ed25519PrivateKey, key_id: str, method: str, target: str, body: bytes = b"",
                 *, to: str, now_ns: int | None = None) -> dict[str, str]:
    """The signature headers of a request to node ``to``."""
    ts = str(time.time_ns() if now_ns is None else now_ns)
    nonce = os.urandom(16).hex()
    sig = key.sign(_message(to, method, target, ts, nonce, body))
    return {H_KEY: key_id, H_TO: to, H_TIME: ts, H_NONCE: nonce, H_SIG: base64.b64encode(sig).decode()}


class Verifier:
    """Checks signed requests to node ``node_id`` against trusted Ed25519 keys, with a
    replay window."""

    def __init__(self, trusted: Mapping[str, Ed25519PublicKey], *, node_id: str, window_s: float = 120.0,
                 clock: Callable[[], int] = time.time_ns):
        self.trusted = dict(trusted)
        self.node_id = node_id
        self.window_ns = int(window_s * 1e9)
        self._clock = clock
        self._nonces: OrderedDict[str, int] = OrderedDict()
        self.rejected: dict[str, int] = {}

    def _reject(self, reason: str, detail: str = "") -> AuthError:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return AuthError(reason, detail)

    def verify(self, method: str, target: str, body: bytes, headers: Mapping[str, str]) -> str:
        """Return the signer's key id, or raise AuthError."""
        key_id, to, ts, nonce, sig = (headers.get(h) for h in (H_KEY, H_TO, H_TIME, H_NONCE, H_SIG))
        if not (key_id and to and ts and nonce and sig):
            raise self._reject("unsigned", "missing signature headers")
        pub = self.trusted.get(key_id)
        if pub is None:
            raise self._reject("unknown_key", f"key id {key_id[:64]!r} is not trusted here")
        if to != self.node_id:
            raise self._reject("wrong_recipient",
                               f"request is for node {to[:64]!r}, this is {self.node_id!r}")
        if len(ts) > MAX_TIME_DIGITS or len(nonce) > MAX_NONCE or len(sig) > MAX_SIGNATURE:
            raise self._reject("malformed", "time, nonce or signature too long")
        try:
            t = int(ts)
            raw = base64.b64decode(sig, validate=True)
        except (ValueError, binascii.Error):
            raise self._reject("malformed", "bad time or signature encoding") from None
        try:
            pub.verify(raw, _message(to, method, target, ts, nonce, body))
        except InvalidSignature:
            raise self._reject("bad_signature",
                               f"request signature from {key_id!r} does not verify") from None
        now = self._clock()
        if abs(now - t) > self.window_ns:
            raise self._reject("stale", f"request time is {(t - now) / 1e9:+.1f}s off (clock skew or replay)")
        while self._nonces:
            _first, exp = next(iter(self._nonces.items()))
            if exp > now:
                break
            self._nonces.popitem(last=False)
        tag = f"{key_id}/{nonce}"
        if tag in self._nonces:
            raise self._reject("replay", "nonce already used")
        self._nonces[tag] = t + self.window_ns
        return key_id


# --------------------------------------------------------------------------- TLS
def ensure_tls_cert(state_dir: Path, common_name: str, hosts: list[str] | None = None) -> tuple[Path, Path]:
    """The node's own TLS certificate and key (self-signed, ECDSA P-256), made once.

    The peer pins it (``tls_cert:`` in its config points to a copy of ``tls.crt``).
    The key file is 0600.
    """
    cert_p, key_p = state_dir / "tls.crt", state_dir / "tls.key"
    if cert_p.exists() and key_p.exists():
        return cert_p, key_p
    state_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    sans: list[x509.GeneralName] = [x509.DNSName("localhost"),
                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    for h in hosts or []:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    cert_p.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info("made a self-signed TLS certificate %s (SHA-256 %s); give it to the peer to pin",
             cert_p, cert_fingerprint(cert_p))
    return cert_p, key_p


def cert_fingerprint(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex(":")


def client_context(ca: Path | None, *, verify: bool = True) -> ssl.SSLContext | bool:
    """TLS context for talking to a peer: ``ca`` is a CA bundle or the peer's pinned
    self-signed certificate. A pinned certificate is trusted as its own anchor, so
    the host name is not checked (a VPN address rarely matches a certificate)."""
    if not verify:
        return False
    if ca is None:
        return True
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    return ctx
