"""The uplink envelope: a range of journal records, compact, encrypted and signed.

One envelope carries a range of journal records of one gateway (its *origin*) to one
or more upstream nodes (county, city, province, national). It is self-contained: any
node it is addressed to can decrypt it, and any node that knows the origin's public
keys can prove who made it, even after it has been forwarded level by level unchanged.
The byte layout is specified in docs/uplink-protocol.md (version 2; version 1 is
refused with ``Unsupported``).

    header (authenticated data, AAD) | AEAD ciphertext + tag | Ed25519 signature

- The payload is ``uplink.codec.encode(records)``, encrypted with AES-256-GCM
  (default) or SM4-GCM under a key used for this envelope only; the header (varints
  where fields vary in size) is the AEAD's associated data.
- The payload key comes from an ephemeral X25519 key agreement with each recipient's
  static key and HKDF-SHA256 with a random salt: the first recipient's derived key is
  the payload key, every further recipient gets it XORed with its own derived key,
  and then a key commitment in the header binds them all to the same key.
- The origin's Ed25519 key signs every byte before the signature, so a forwarding
  node checks it without decrypting (``verify``), and nobody can alter the header
  (sequence range, recipients, cipher) without breaking it.
- The national suite ``gm`` (GB/T 39786 context, docs/security.md) replaces all three:
  SM4-GCM for the payload under a random content key, that key SM2-encrypted to each
  recipient's SM2 key (GB/T 32918.4; no salt, no ephemeral X25519 key in the header),
  and an SM2 signature with SM3 (GB/T 32918.2, default user ID) in place of Ed25519.
  The suite is the low nibble of the header's cipher/codec byte (3 = gm), so an envelope
  says which suite it uses and the signature covers that too.

API:

- ``seal(records, *, sender, recipients, cipher="aes-256-gcm", suite="x25519-ed25519")
  -> bytes``; ``suite="gm"`` needs SM2 keys on both sides and implies SM4-GCM; raises
  ``TooLarge`` when the records' payload would decode to more than ``MAX_PAYLOAD``.
- ``open_envelope(data, *, recipient, trusted, max_payload=MAX_PAYLOAD, suites=None) ->
  Opened(header, records)``: parse, look the origin's key up, check the signature, unwrap, decrypt, decode.
  ``recipient`` is one ``NodeKeys`` or all of the node's key sets (rotation).
- ``verify(data, trusted, suites=None) -> Header``: signature only (forwarding nodes).
  ``suites`` (also a keyword of ``open_envelope``) is the set of suites this node
  accepts; an envelope of another suite raises ``WrongSuite`` (an ``Unsupported``)
  before any signature is checked.
- ``peek_header(data) -> Header``: unauthenticated parse (routing, logging).
- ``envelope_size(prefix) -> int``: total length from the first ``SIZE_PREFIX`` bytes,
  for framing envelopes in a stream.
- ``trusted`` is any callable ``(node_id, kid) -> PublicKeys | None`` (e.g.
  ``uplink.keys.TrustStore``).
- Errors are ``EnvelopeError`` subclasses: ``Malformed``, ``Unsupported``,
  ``UnknownSender``, ``BadSignature``, ``NotForMe``, ``DecryptFailed`` and its subclass
  ``Undecodable`` (authentic and decrypted, but the payload is above this node's limit,
  does not decode or contradicts the header: the origin made it so, and sending it
  again cannot change that).

``MAX_PAYLOAD`` is the protocol's bound on an envelope's decoded payload, the same at
both ends: the sender never seals more (it knows the size before compressing), the
receiver accepts any payload whose declared decoded size is within it, however well it
compressed.

Replays are not detected here: the header's (origin, first_seq, last_seq) is what
central's idempotent store keys on.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.core import gmcrypto
from gateway.core.record import SAMPLES, Record
from uplink import codec
from uplink.codec import write_varint as _varint
from uplink.keys import KID_BYTES, NodeKeys, PublicKeys

MAGIC = b"SG"
VERSION = 2
CODEC_COLUMNAR = 2  # uplink.codec.FORMAT

CIPHERS: dict[str, int] = {"aes-256-gcm": 1, "sm4-gcm": 2}
CIPHER_NAMES = {v: k for k, v in CIPHERS.items()}
SUITE_STANDARD = "x25519-ed25519"
SUITE_GM = "gm"
SUITES = (SUITE_STANDARD, SUITE_GM)
GM_ID = 3  # the gm suite's id in the cipher nibble: SM4-GCM + SM2 key transport + SM2/SM3 signature
_IDS = {1, 2, GM_ID}
_KEY_LEN = {1: 32, 2: 16, GM_ID: 16}  # SM4 has 128-bit keys
MAX_WRAPPED = 200  # an SM2Cipher (GM/T 0009 DER) of a 16-byte key is 121..123 bytes
TAG_LEN = 16
SIG_LEN = 64
SALT_LEN = 16
NONCE_LEN = 12
COMMIT_LEN = 16
EPH_LEN = 32
MAX_PAYLOAD = 64 * 2**20  # decoded payload bytes of one envelope, at most (both ends)
SIZE_PREFIX = 8  # magic, version, total length (a varint): enough to frame envelopes in a stream
MAX_RECIPIENTS = 255
_OLD_MAGIC = b"SGWE"  # version 1 (fixed 141-byte header), no longer read

_KDF_INFO = b"safegw-envelope/2 key"
_COMMIT_INFO = b"safegw-envelope/2 commit"
# The payload key is fresh for every envelope (a fresh ephemeral key and a random salt go
# into its derivation) and encrypts exactly one message, so a fixed nonce is safe.
_NONCE = bytes(NONCE_LEN)
_M64 = (1 << 64) - 1


class EnvelopeError(Exception):
    """An envelope was rejected; the subclass says why, the message says where."""


class Malformed(EnvelopeError):
    """Not an envelope, truncated, or fields that contradict each other."""


class Unsupported(EnvelopeError):
    """A version, cipher or codec this node does not implement."""


class UnknownSender(EnvelopeError):
    """The origin or its key id is not in the trusted list."""


class BadSignature(EnvelopeError):
    """The signature (Ed25519, or SM2 in the gm suite) does not match: altered in transit or
    not made by the origin."""


class WrongSuite(Unsupported):
    """A suite this node is configured not to accept (e.g. ``gm`` where only the standard
    suite is, or the other way round)."""


class NotForMe(EnvelopeError):
    """Authentic, but none of the recipients' key ids is one of ours."""


class DecryptFailed(EnvelopeError):
    """Authentic and addressed to us, but the key unwrap, decryption or decoding failed."""


class Undecodable(DecryptFailed):
    """Authentic and decrypted, but its payload is above the limit, does not decode or
    contradicts the header: a refusal that will not change (see docs/uplink-protocol.md)."""


class TooLarge(ValueError):
    """Records whose payload would decode to more than ``MAX_PAYLOAD``: no envelope can
    carry them (``size`` says how much they would take)."""

    def __init__(self, size: int):
        super().__init__(f"payload of {size} bytes decoded is above MAX_PAYLOAD ({MAX_PAYLOAD})")
        self.size = size


@dataclass(frozen=True, slots=True)
class Header:
    """Everything before the ciphertext; authenticated by the AEAD and the signature."""

    version: int
    cipher: str
    codec: int
    origin: str  # the gateway that made and signed the envelope
    sender_kid: str
    first_seq: int
    last_seq: int
    n_records: int
    n_samples: int
    ts_min: int  # ns, over all records (0 when empty)
    ts_max: int
    recipients: tuple[str, ...]  # key ids, hex
    salt: bytes = field(repr=False)
    nonce: bytes = field(repr=False)
    ephemeral: bytes = field(repr=False)
    key_commit: bytes = field(repr=False)
    wrapped: tuple[bytes, ...] = field(repr=False)  # wrapped content key per recipient
    header_len: int = 0
    size: int = 0  # whole envelope, bytes
    suite: str = SUITE_STANDARD

    @property
    def key(self) -> tuple[str, int, int]:
        """(origin, first_seq, last_seq): what idempotent storage keys on."""
        return (self.origin, self.first_seq, self.last_seq)


@dataclass(frozen=True, slots=True)
class Opened:
    header: Header
    records: list[Record]


Trusted = Callable[[str, str], PublicKeys | None]


# --------------------------------------------------------------------------- AEAD

def _encrypt(cipher_id: int, key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
    if cipher_id == 1:
        return AESGCM(key).encrypt(nonce, data, aad)
    enc = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
    enc.authenticate_additional_data(aad)
    out = enc.update(data) + enc.finalize()
    return out + enc.tag


def _decrypt(cipher_id: int, key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
    """Raises InvalidTag on any mismatch."""
    if cipher_id == 1:
        return AESGCM(key).decrypt(nonce, data, aad)
    if len(data) < TAG_LEN:
        raise InvalidTag()
    dec = Cipher(algorithms.SM4(key), modes.GCM(nonce, data[-TAG_LEN:])).decryptor()
    dec.authenticate_additional_data(aad)
    return dec.update(data[:-TAG_LEN]) + dec.finalize()


def _derive(cipher_id: int, shared: bytes, salt: bytes, ephemeral: bytes, recipient_x: bytes,
            kid: bytes) -> bytes:
    """HKDF-SHA256 of one X25519 agreement: the key this recipient gets (or unwraps with)."""
    info = _KDF_INFO + bytes([cipher_id]) + ephemeral + recipient_x + kid
    return HKDF(hashes.SHA256(), _KEY_LEN[cipher_id], salt, info).derive(shared)


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


def _commit(key: bytes, cipher_id: int = 1) -> bytes:
    if cipher_id == GM_ID:
        return gmcrypto.sm3(_COMMIT_INFO + key)[:COMMIT_LEN]
    return hashlib.sha256(_COMMIT_INFO + key).digest()[:COMMIT_LEN]


def _zigzag(x: int) -> int:
    return x << 1 if x >= 0 else ((-x) << 1) - 1


def _unzigzag(z: int) -> int:
    return (z >> 1) ^ -(z & 1)


def _wrap(x: int) -> int:
    """Two's complement 64-bit: what the sender's int64 arithmetic gave."""
    return ((x + (1 << 63)) & _M64) - (1 << 63)


# --------------------------------------------------------------------------- seal

def seal(
    records: Sequence[Record],
    *,
    sender: NodeKeys,
    recipients: Sequence[PublicKeys],
    cipher: str = "aes-256-gcm",
    suite: str = SUITE_STANDARD,
) -> bytes:
    """Encode, encrypt to every recipient and sign; the origin is ``sender.id``.

    ``suite="gm"``: SM4-GCM, the content key SM2-encrypted to each recipient, SM2/SM3
    signature; ``cipher`` is then not consulted (the suite fixes SM4-GCM).

    ``records`` should be a contiguous journal range in sequence order (the header
    states its first and last sequence; an empty list gives 0, 0). ``TooLarge`` when
    their payload would decode to more than ``MAX_PAYLOAD``.
    """
    try:
        cipher_id = CIPHERS[cipher]
    except KeyError:
        raise ValueError(f"unknown cipher {cipher!r}; known: {', '.join(CIPHERS)}") from None
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")
    if suite == SUITE_GM:
        cipher_id = GM_ID
        if sender.sm2 is None:
            raise ValueError(f"suite gm: node {sender.id} key set {sender.kid} has no SM2 key "
                             "(make one with 'safegw keys rotate')")
        lacking = [f"{r.id} ({r.kid})" for r in recipients if r.sm2 is None]
        if lacking:
            raise ValueError(f"suite gm: recipient key set(s) without an SM2 key: {', '.join(lacking)}")
    if not recipients:
        raise ValueError("an envelope needs at least one recipient")
    if len(recipients) > MAX_RECIPIENTS:
        raise ValueError(f"at most {MAX_RECIPIENTS} recipients")
    kids = [r.kid_bytes for r in recipients]
    if len(set(kids)) != len(kids):
        raise ValueError("the same recipient key is listed twice")
    origin = sender.id.encode()
    if not 0 < len(origin) <= 255:
        raise ValueError("the node id must be 1..255 bytes of UTF-8")

    try:
        payload, ts_min, ts_max, n_samples = codec.encode_summary(records, max_size=MAX_PAYLOAD)
    except codec.TooLarge as e:
        raise TooLarge(e.size) from None
    entries = []
    content_key = b""
    if cipher_id == GM_ID:
        keying = b""  # no salt, no ephemeral key: SM2 encryption is randomised itself
        content_key = os.urandom(_KEY_LEN[GM_ID])
        for r in recipients:
            assert r.sm2 is not None
            w = r.sm2.encrypt(content_key)
            entries.append(r.kid_bytes + bytes([len(w)]) + w)
    else:
        salt = os.urandom(SALT_LEN)
        eph = X25519PrivateKey.generate()
        eph_pub = eph.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        keying = salt + eph_pub
        for r in recipients:
            k = _derive(cipher_id, eph.exchange(r.x25519), salt, eph_pub, r.x25519_raw, r.kid_bytes)
            if not content_key:  # the first recipient's key is the payload key
                content_key = k
                entries.append(r.kid_bytes)
            else:  # the others get it wrapped under theirs (a one-time pad: each k is used once)
                entries.append(r.kid_bytes + _xor(content_key, k))
    if len(recipients) > 1:
        entries.append(_commit(content_key, cipher_id))

    first_seq, last_seq = (records[0].seq, records[-1].seq) if records else (0, 0)
    rest = b"".join((
        bytes([codec.FORMAT << 4 | cipher_id, len(origin)]), origin, sender.kid_bytes,
        _varint(_zigzag(first_seq)), _varint((last_seq - first_seq) & _M64), _varint(len(records)),
        _varint(n_samples),
        _varint(_zigzag(ts_min)), _varint((ts_max - ts_min) & _M64), keying,
        bytes([len(recipients)]), *entries,
    ))
    # total length: header + ciphertext (payload + tag) + signature, its own varint included
    base = len(MAGIC) + 1 + len(rest) + len(payload) + TAG_LEN + SIG_LEN
    total = base + 1
    while len(_varint(total)) != total - base:
        total += 1
    head = MAGIC + bytes([VERSION]) + _varint(total) + rest
    body = head + _encrypt(cipher_id, content_key, _NONCE, payload, head)
    if cipher_id == GM_ID:
        assert sender.sm2 is not None
        return body + sender.sm2.sign(body)
    return body + sender.ed25519.sign(body)


# --------------------------------------------------------------------------- parse

class _Cursor:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes | memoryview, pos: int):
        self.data = data
        self.pos = pos

    def varint(self, what: str) -> int:
        try:
            n, pos, minimal = codec.read_varint(self.data, self.pos)
        except IndexError:
            raise Malformed(f"{what} at offset {self.pos} runs past the end") from None
        except OverflowError:
            raise Malformed(f"{what} at offset {self.pos}: varint too long") from None
        if not minimal:
            raise Malformed(f"{what} at offset {self.pos}: not a minimal 64-bit varint")
        self.pos = pos
        return n

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise Malformed(f"{what} ({n} bytes at offset {self.pos}) runs past the end")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out


def _check_magic(prefix: bytes | memoryview) -> None:
    if bytes(prefix[:4]) == _OLD_MAGIC:
        raise Unsupported("envelope version 1 (this node reads version 2 only: the sender "
                          "must be upgraded; its journal keeps the records meanwhile)")
    if bytes(prefix[:2]) != MAGIC:
        raise Malformed(f"bad magic {bytes(prefix[:2])!r} at offset 0 (expected {MAGIC!r})")
    if prefix[2] != VERSION:
        raise Unsupported(f"envelope version {prefix[2]} at offset 2 (this node reads {VERSION})")


def envelope_size(prefix: bytes | memoryview) -> int:
    """Total length of the envelope starting with ``prefix`` (SIZE_PREFIX bytes, or the
    whole envelope if shorter)."""
    if len(prefix) < 4:
        raise Malformed(f"need {SIZE_PREFIX} bytes to frame an envelope, got {len(prefix)}")
    _check_magic(prefix)
    return _Cursor(prefix, 3).varint("total length")


def peek_header(data: bytes | memoryview) -> Header:
    """Parse the header without checking anything cryptographic (routing, logging)."""
    n = len(data)
    if n < 4:
        raise Malformed(f"{n} bytes is too short for an envelope")
    _check_magic(data)
    c = _Cursor(data, 3)
    total = c.varint("total length")
    if total != n:
        raise Malformed(f"length field at offset 3 says {total} bytes, envelope has {n}")
    params = c.take(1, "cipher/codec byte")[0]
    codec_id, cipher_id = params >> 4, params & 0x0F
    if cipher_id not in _IDS:
        raise Unsupported(f"cipher id {cipher_id} at offset {c.pos - 1} (known: "
                          f"{', '.join(f'{v}={k}' for k, v in CIPHERS.items())}, {GM_ID}=gm suite)")
    if codec_id != CODEC_COLUMNAR:
        raise Unsupported(f"codec {codec_id} at offset {c.pos - 1} (known: {CODEC_COLUMNAR})")
    origin_len = c.take(1, "origin length")[0]
    at = c.pos
    try:
        origin = c.take(origin_len, "origin id").decode()
    except UnicodeDecodeError:
        raise Malformed(f"origin id at offset {at} is not UTF-8") from None
    if not origin:
        raise Malformed(f"empty origin id at offset {at}")
    sender_kid = c.take(KID_BYTES, "sender kid")
    first_seq = _unzigzag(c.varint("first seq"))
    last_seq = _wrap(first_seq + c.varint("seq span"))
    n_records = c.varint("record count")
    n_samples = c.varint("sample count")
    ts_min = _unzigzag(c.varint("ts min"))
    ts_max = _wrap(ts_min + c.varint("ts span"))
    gm = cipher_id == GM_ID
    salt = b"" if gm else c.take(SALT_LEN, "salt")
    eph = b"" if gm else c.take(EPH_LEN, "ephemeral key")
    n_rcpt = c.take(1, "recipient count")[0]
    if n_rcpt == 0:
        raise Malformed(f"no recipients (count at offset {c.pos - 1})")
    key_len = _KEY_LEN[cipher_id]
    kids, wrapped = [], []
    for i in range(n_rcpt):
        kids.append(c.take(KID_BYTES, "recipient kid").hex())
        if gm:
            n_w = c.take(1, "wrapped key length")[0]
            if not 0 < n_w <= MAX_WRAPPED:
                raise Malformed(f"SM2-wrapped key of {n_w} bytes at offset {c.pos - 1} "
                                f"(1..{MAX_WRAPPED})")
            wrapped.append(c.take(n_w, "SM2-wrapped key"))
        else:
            wrapped.append(c.take(key_len, "wrapped key") if i else b"")
    commit = c.take(COMMIT_LEN, "key commitment") if n_rcpt > 1 else b""
    header_len = c.pos
    if header_len + TAG_LEN + SIG_LEN > n:
        raise Malformed(f"no room for ciphertext and signature after the {header_len}-byte header")
    if len(set(kids)) != len(kids):
        raise Malformed("a recipient key id is listed twice")
    if n_records == 0 and (first_seq or last_seq or n_samples or ts_min or ts_max):
        raise Malformed("empty envelope with a sequence range, samples or times")
    if n_records and first_seq > last_seq:
        raise Malformed(f"sequence range {first_seq}..{last_seq} runs backwards")
    return Header(VERSION, "sm4-gcm" if gm else CIPHER_NAMES[cipher_id], codec_id, origin,
                  sender_kid.hex(), first_seq, last_seq, n_records, n_samples, ts_min, ts_max,
                  tuple(kids), salt, _NONCE, eph, commit, tuple(wrapped), header_len, n,
                  SUITE_GM if gm else SUITE_STANDARD)


def verify(data: bytes | memoryview, trusted: Trusted, suites: Sequence[str] | None = None) -> Header:
    """Parse and check the origin's signature, without decrypting (forwarding nodes);
    ``suites``: the suites accepted here (None: any)."""
    h = peek_header(data)
    if suites is not None and h.suite not in suites:
        raise WrongSuite(f"envelope {h.origin} {h.first_seq}..{h.last_seq} uses suite {h.suite}; this "
                         f"node accepts {', '.join(suites) or 'none'} (set 'suite' on both sides alike)")
    pub = trusted(h.origin, h.sender_kid)
    if pub is None or pub.kid != h.sender_kid or pub.id != h.origin:
        raise UnknownSender(f"origin {h.origin!r} key {h.sender_kid} is not trusted here")
    body = bytes(data[:-SIG_LEN])
    sig = bytes(data[-SIG_LEN:])
    try:
        if h.suite == SUITE_GM:
            if pub.sm2 is None:
                raise UnknownSender(f"origin {h.origin!r} key {h.sender_kid} has no SM2 key here, "
                                    "so its gm-suite signature cannot be checked")
            pub.sm2.verify(sig, body)
        else:
            pub.ed25519.verify(sig, body)
    except InvalidSignature:
        alg = "SM2" if h.suite == SUITE_GM else "Ed25519"
        raise BadSignature(f"{alg} signature of {h.origin} {h.first_seq}..{h.last_seq} "
                           f"(key {h.sender_kid}) does not match: altered or forged") from None
    return h


def open_envelope(
    data: bytes | memoryview,
    *,
    recipient: NodeKeys | Sequence[NodeKeys],
    trusted: Trusted,
    max_payload: int = MAX_PAYLOAD,
    suites: Sequence[str] | None = None,
) -> Opened:
    """Verify, decrypt and decode an envelope addressed to ``recipient``; its payload may
    declare up to ``max_payload`` bytes decoded, whatever its compression ratio."""
    h = verify(data, trusted, suites)
    mine = [recipient] if isinstance(recipient, NodeKeys) else list(recipient)
    where = f"{h.origin} {h.first_seq}..{h.last_seq}"
    for keys in mine:
        if keys.kid in h.recipients:
            break
    else:
        raise NotForMe(f"{where} is for key(s) {', '.join(h.recipients)}; ours: "
                       f"{', '.join(k.kid for k in mine) or 'none'}")
    i = h.recipients.index(keys.kid)
    if h.suite == SUITE_GM:
        cipher_id = GM_ID
        if keys.sm2 is None:
            raise DecryptFailed(f"{where}: gm suite, but our key set {keys.kid} has no SM2 key")
        try:
            content_key = keys.sm2.decrypt(h.wrapped[i])
        except gmcrypto.GmCryptoError as e:
            raise DecryptFailed(f"{where}: SM2-wrapped key for {keys.kid}: {e}") from None
        if len(content_key) != _KEY_LEN[GM_ID]:
            raise DecryptFailed(f"{where}: SM2-wrapped key for {keys.kid} is {len(content_key)} bytes")
    else:
        cipher_id = CIPHERS[h.cipher]
        try:
            shared = keys.x25519.exchange(X25519PublicKey.from_public_bytes(h.ephemeral))
        except ValueError:  # an all-zero agreement (a low-order ephemeral key)
            raise DecryptFailed(f"{where}: key agreement for {keys.kid} fails") from None
        k = _derive(cipher_id, shared, h.salt, h.ephemeral, keys.public.x25519_raw, keys.kid_bytes)
        content_key = _xor(k, h.wrapped[i]) if i else k
    if len(h.recipients) > 1 and _commit(content_key, cipher_id) != h.key_commit:
        raise DecryptFailed(f"{where}: content key for {keys.kid} does not match the header's commitment")
    ct = bytes(data[h.header_len:-SIG_LEN])
    try:
        payload = _decrypt(cipher_id, content_key, _NONCE, ct, bytes(data[:h.header_len]))
    except InvalidTag:
        raise DecryptFailed(f"{where}: payload does not decrypt ({h.cipher})") from None
    try:
        records = codec.decode(payload, max_size=max_payload)
    except codec.CodecError as e:
        raise Undecodable(f"{where}: payload does not decode: {e}") from None
    _check_counts(h, records, where)
    return Opened(h, records)


def _check_counts(h: Header, records: list[Record], where: str) -> None:
    n_samples = sum(r.n for r in records if r.kind == SAMPLES)
    if records:
        got = (len(records), records[0].seq, records[-1].seq, n_samples)
    else:
        got = (0, 0, 0, 0)
    want = (h.n_records, h.first_seq, h.last_seq, h.n_samples)
    if got != want:
        raise Undecodable(f"{where}: header says (records, first, last, samples) = {want}, "
                            f"payload holds {got}")
