"""The signed configuration document: a gateway's config text as central issues it.

Central signs with its node key (Ed25519, or SM2 with SM3 for a gateway on the national
suite, GB/T 32918.2 with the default user ID, as the envelope's ``gm`` suite does); the
gateway verifies against its trusted central key bundles (``uplink.central_keys``)
before it reads anything else of the document.

What is signed (``body``) is a one-line JSON header, a newline, then the config text's
UTF-8 bytes. The header binds the gateway id, the version (monotonic per gateway), the
SHA-256 of the text, its length, the issue time and the issuing node. The signature is
over ``DOMAIN || body``, so it cannot be taken for a request or envelope signature. On
the wire the document is a small JSON object carrying the body in base64, the algorithm,
the signer's node id and key id, and the signature.

Pure: no I/O, no clock (the issue time is passed in). Every size is bounded before work:
the wire document (``MAX_DOC``), the header line, the text (``MAX_TEXT``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature

from uplink.keys import NodeKeys, PublicKeys

FORMAT = "safegw-config/1"
DOMAIN = b"safegw-config/1\n"
#: the largest config text central issues and a gateway takes (a 2,000-point plant is ~1 MB of YAML)
MAX_TEXT = 4 * 2**20
#: the largest header line of the body
MAX_HEADER = 4096
#: the largest wire document: the body in base64 plus the envelope's few fields
MAX_DOC = (MAX_TEXT + MAX_HEADER + 2) * 4 // 3 + 4096
ALGS = ("ed25519", "sm2-sm3")
MAX_VERSION = 2**63 - 1


class ConfigDocError(ValueError):
    """A document refused; ``reason`` is a short code (malformed, too_large, unknown_key,
    bad_signature, wrong_gateway), ``str()`` says where and why."""

    def __init__(self, reason: str, msg: str):
        super().__init__(msg)
        self.reason = reason


@dataclass(frozen=True)
class SignedConfig:
    """A verified document: what the header binds, and the text."""

    gateway: str
    version: int
    sha256: str
    issued_ns: int
    issuer: str
    kid: str
    alg: str
    text: str


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sign(text: str, *, gateway: str, version: int, issued_ns: int, signer: NodeKeys,
         alg: str = "ed25519") -> bytes:
    """The wire document of ``text`` for ``gateway``, version ``version``, signed by ``signer``."""
    raw = text.encode()
    if len(raw) > MAX_TEXT:
        raise ConfigDocError("too_large", f"config text is {len(raw)} bytes, at most {MAX_TEXT}")
    if not 1 <= version <= MAX_VERSION:
        raise ValueError(f"version {version} out of 1..{MAX_VERSION}")
    if alg not in ALGS:
        raise ValueError(f"alg must be one of {', '.join(ALGS)}")
    header = {"format": FORMAT, "gateway": gateway, "version": version,
              "sha256": hashlib.sha256(raw).hexdigest(), "length": len(raw), "issued_ns": issued_ns,
              "issuer": signer.id}
    body = json.dumps(header, sort_keys=True, separators=(",", ":")).encode() + b"\n" + raw
    if alg == "sm2-sm3":
        if signer.sm2 is None:
            raise ValueError(f"node {signer.id} key set {signer.kid} has no SM2 key: "
                             "run 'safegw keys rotate'")
        sig = signer.sm2.sign(DOMAIN + body)
    else:
        sig = signer.ed25519.sign(DOMAIN + body)
    doc = {"format": FORMAT, "alg": alg, "signer": signer.id, "kid": signer.kid,
           "body": base64.b64encode(body).decode(), "sig": base64.b64encode(sig).decode()}
    return json.dumps(doc, separators=(",", ":")).encode()


def _field(doc: dict[str, Any], name: str, kind: type, limit: int = 200) -> Any:
    v = doc.get(name)
    if type(v) is not kind or (isinstance(v, str) and len(v) > limit):
        raise ConfigDocError("malformed", f"config document: field {name!r} is missing, not a "
                                          f"{kind.__name__} or too long")
    return v


def peek(data: bytes) -> dict[str, Any]:
    """The wire document's outer fields, bounded and type-checked (nothing verified)."""
    if len(data) > MAX_DOC:
        raise ConfigDocError("too_large", f"config document is {len(data)} bytes, at most {MAX_DOC}")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigDocError("malformed", f"config document is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigDocError("malformed", "config document is not a JSON object")
    if doc.get("format") != FORMAT:
        raise ConfigDocError("malformed", f"config document format is {str(doc.get('format'))[:40]!r}, "
                                          f"expected {FORMAT}")
    if doc.get("alg") not in ALGS:
        raise ConfigDocError("malformed", f"config document alg must be one of {', '.join(ALGS)}")
    for name, limit in (("signer", 100), ("kid", 64), ("body", MAX_DOC), ("sig", 200)):
        _field(doc, name, str, limit)
    return doc


def verify(data: bytes, trusted: Sequence[PublicKeys], *, gateway: str) -> SignedConfig:
    """Check the signature against ``trusted`` central keys, then that the document is
    for ``gateway`` and its text is the one the header names. Raises ``ConfigDocError``."""
    doc = peek(data)
    pub = next((k for k in trusted if k.kid == doc["kid"] and k.id == doc["signer"]), None)
    if pub is None:
        raise ConfigDocError("unknown_key", f"config document signed by {doc['signer'][:100]!r} key "
                                            f"{doc['kid'][:64]}: not a trusted central key "
                                            "(uplink.central_keys)")
    try:
        body = base64.b64decode(doc["body"], validate=True)
        sig = base64.b64decode(doc["sig"], validate=True)
    except binascii.Error:
        raise ConfigDocError("malformed", "config document: body or sig is not base64") from None
    try:
        if doc["alg"] == "sm2-sm3":
            if pub.sm2 is None:
                raise ConfigDocError("unknown_key", f"central key {pub.kid} has no SM2 key here: an "
                                                    "sm2-sm3 signature cannot be checked")
            pub.sm2.verify(sig, DOMAIN + body)
        else:
            pub.ed25519.verify(sig, DOMAIN + body)
    except InvalidSignature:
        raise ConfigDocError("bad_signature", f"{doc['alg']} signature of the config document (central "
                                              f"{pub.id} key {pub.kid}) does not match: altered or "
                                              "forged") from None
    return _parse_body(body, pub, doc["alg"], gateway)


def _parse_body(body: bytes, pub: PublicKeys, alg: str, gateway: str) -> SignedConfig:
    head, nl, raw = body.partition(b"\n")
    if not nl or len(head) > MAX_HEADER:
        raise ConfigDocError("malformed", "config document body: no header line of at most "
                                          f"{MAX_HEADER} bytes")
    try:
        h = json.loads(head)
    except (ValueError, UnicodeDecodeError):
        raise ConfigDocError("malformed", "config document header is not JSON") from None
    if not isinstance(h, dict) or h.get("format") != FORMAT:
        raise ConfigDocError("malformed", "config document header is not a safegw-config/1 header")
    gw = _field(h, "gateway", str, 100)
    version = _field(h, "version", int)
    issued = _field(h, "issued_ns", int)
    digest = _field(h, "sha256", str, 64)
    length = _field(h, "length", int)
    issuer = _field(h, "issuer", str, 100)
    if not 1 <= version <= MAX_VERSION:
        raise ConfigDocError("malformed", f"config document version {version} out of 1..{MAX_VERSION}")
    if issuer != pub.id:
        raise ConfigDocError("malformed", f"config document issued by {issuer!r} but signed by {pub.id!r}")
    if gw != gateway:
        raise ConfigDocError("wrong_gateway", f"config document v{version} is for gateway {gw!r}, "
                                              f"this is {gateway!r}")
    if length != len(raw) or length > MAX_TEXT or hashlib.sha256(raw).hexdigest() != digest:
        raise ConfigDocError("bad_signature", f"config document v{version}: the text is not the one its "
                                              "header names (length or SHA-256 differ)")
    try:
        text = raw.decode()
    except UnicodeDecodeError as e:
        raise ConfigDocError("malformed", f"config document v{version}: text is not UTF-8 "
                                          f"(byte {e.start})") from None
    return SignedConfig(gw, version, digest, issued, issuer, pub.kid, alg, text)
