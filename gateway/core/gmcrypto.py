"""The national (商用密码) primitives: SM3, HMAC-SM3, SM4 (CBC, ECB, GCM) and SM2.

What the uplink envelope's ``gm`` suite and the regulator adapters build on. SM3 and SM4
come from ``cryptography`` (OpenSSL); SM2 from ``gmssl_pyx`` (a binding of GmSSL 3, the
reference implementation), chosen after measuring the candidates (docs/security.md, "The
national cipher suite"). This module adds what the standards define around the library's
curve arithmetic, so that it is checked here and not trusted to a binding:

- the signer's Z value (GB/T 32918.2-2016 §5.5): ``Z = SM3(ENTL || ID || a || b || xG ||
  yG || xA || yA)``, with the default ID ``1234567812345678`` of GM/T 0009-2012 §10; the
  signed digest is ``e = SM3(Z || M)`` (GB/T 32918.2 §6.1 A1-A2), computed here (cached
  per key and ID) and handed to the library's digest signer;
- public keys are checked to lie on the curve (GB/T 32918.1-2016 §6.2.1) when loaded;
  private keys are in [1, n-2] (GB/T 32918.1 §6.1);
- signatures are the raw ``r || s`` (64 bytes), with r and s checked in [1, n-1] before
  verifying (GB/T 32918.2 §7.1 B1-B2); the library's DER form (GM/T 0009 §7.3) is
  converted with ``cryptography``'s DSS helpers;
- SM2 encryption (GB/T 32918.4-2016) gives the ciphertext as the library does: the ASN.1
  DER ``SM2Cipher`` of GM/T 0009-2012 §7.2 (x, y, C3 hash, C2), at most 255 bytes of
  plaintext (a content key is 16 or 32).

Keys are raw bytes: a private key is its 32-byte scalar, a public key 64 bytes ``x || y``
(``SM2PublicKey`` also takes the 65-byte ``04 || x || y``). How they are stored is the
key file's business (uplink/keys.py).

``gmssl-pyx`` is an optional dependency (``pip install 'safegw[gm]'``): it has wheels for
x86-64 only, and elsewhere builds against an installed GmSSL 3. Without it everything
here but SM2 signing, verifying, encryption and key generation works, and those raise
``GmCryptoError`` saying what to install (``sm2_available()`` tells beforehand); the
rest of safegw (the standard uplink suite) does not need it.

Errors: ``GmCryptoError`` (bad key, bad padding, undecryptable ciphertext); a signature
that does not verify raises ``cryptography.exceptions.InvalidSignature``, a GCM tag that
does not match ``cryptography.exceptions.InvalidTag``, as for the other suites.
"""

from __future__ import annotations

import functools
import hmac as _hmac
import importlib
from types import ModuleType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives import hmac as _chmac
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

#: GM/T 0009-2012 §10 (also GB/T 35276-2017 §11): the user ID when none is agreed
DEFAULT_ID = b"1234567812345678"

# The recommended curve of GB/T 32918.5-2017 §3 (sm2p256v1): y^2 = x^3 + ax + b over F_p
P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
A = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC
B = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
GX = 0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7
GY = 0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0

SM4_KEY_LEN = 16
SM4_BLOCK = 16
GCM_TAG_LEN = 16
SIG_LEN = 64
PUBLIC_LEN = 64  # x || y
PRIVATE_LEN = 32
#: GB/T 32918.2 §5.5: ENTL is two bytes of the ID's length in bits
MAX_ID_LEN = 0xFFFF // 8
#: the library's bound on SM2 plaintext (a fixed buffer in GmSSL 3)
MAX_SM2_PLAINTEXT = 255


class GmCryptoError(ValueError):
    """A key, padding or ciphertext that cannot be used; the message says which and why."""


def _load() -> ModuleType | None:
    try:
        return importlib.import_module("gmssl_pyx")
    except ImportError:
        return None


_GM = _load()


def sm2_available() -> bool:
    """Whether the SM2 library is installed (SM3 and SM4 need nothing more)."""
    return _GM is not None


def _lib() -> Any:
    if _GM is None:
        raise GmCryptoError("SM2 needs the gmssl-pyx package, not installed here: pip install "
                            "'safegw[gm]' (x86-64 wheels; elsewhere it builds against GmSSL 3, "
                            "docs/security.md)")
    return _GM


def _b32(x: int) -> bytes:
    return x.to_bytes(32, "big")


# ------------------------------------------------------------------------------ SM3

def sm3(data: bytes) -> bytes:
    """SM3 digest (GB/T 32905-2016), 32 bytes."""
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


def hmac_sm3(key: bytes, data: bytes) -> bytes:
    """HMAC (GB/T 15852.2-2012, the RFC 2104 construction) with SM3, 32 bytes."""
    h = _chmac.HMAC(key, hashes.SM3())
    h.update(data)
    return h.finalize()


def hmac_sm3_verify(key: bytes, data: bytes, tag: bytes) -> bool:
    """Constant-time comparison of an HMAC-SM3 tag."""
    return _hmac.compare_digest(hmac_sm3(key, data), tag)


# ------------------------------------------------------------------------------ SM4

def _sm4(key: bytes) -> algorithms.SM4:
    if len(key) != SM4_KEY_LEN:
        raise GmCryptoError(f"an SM4 key is {SM4_KEY_LEN} bytes, got {len(key)}")
    return algorithms.SM4(key)


def _pad(data: bytes) -> bytes:
    p = padding.PKCS7(128).padder()
    return p.update(data) + p.finalize()


def _unpad(data: bytes, what: str) -> bytes:
    u = padding.PKCS7(128).unpadder()
    try:
        return u.update(data) + u.finalize()
    except ValueError:
        raise GmCryptoError(f"{what}: bad PKCS#7 padding (wrong key or IV, or altered data)") from None


def _blocks(data: bytes, what: str) -> None:
    if not data or len(data) % SM4_BLOCK:
        raise GmCryptoError(f"{what}: ciphertext of {len(data)} bytes is not a positive multiple of "
                            f"{SM4_BLOCK}")


def sm4_cbc_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """SM4-CBC (GB/T 32907-2016, GB/T 17964-2021 §7) with PKCS#7 padding."""
    if len(iv) != SM4_BLOCK:
        raise GmCryptoError(f"an SM4-CBC IV is {SM4_BLOCK} bytes, got {len(iv)}")
    enc = Cipher(_sm4(key), modes.CBC(iv)).encryptor()
    return enc.update(_pad(data)) + enc.finalize()


def sm4_cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    if len(iv) != SM4_BLOCK:
        raise GmCryptoError(f"an SM4-CBC IV is {SM4_BLOCK} bytes, got {len(iv)}")
    _blocks(data, "SM4-CBC")
    dec = Cipher(_sm4(key), modes.CBC(iv)).decryptor()
    return _unpad(dec.update(data) + dec.finalize(), "SM4-CBC")


def sm4_ecb_encrypt(key: bytes, data: bytes, *, pad: bool = True) -> bytes:
    """SM4-ECB; ``pad=False`` for whole blocks only (test vectors, key wrapping)."""
    if pad:
        data = _pad(data)
    elif len(data) % SM4_BLOCK:
        raise GmCryptoError(f"SM4-ECB without padding needs whole blocks, got {len(data)} bytes")
    enc = Cipher(_sm4(key), modes.ECB()).encryptor()
    return enc.update(data) + enc.finalize()


def sm4_ecb_decrypt(key: bytes, data: bytes, *, pad: bool = True) -> bytes:
    _blocks(data, "SM4-ECB")
    dec = Cipher(_sm4(key), modes.ECB()).decryptor()
    out = dec.update(data) + dec.finalize()
    return _unpad(out, "SM4-ECB") if pad else out


def sm4_gcm_encrypt(key: bytes, nonce: bytes, data: bytes, aad: bytes = b"") -> bytes:
    """SM4-GCM (GB/T 36624-2018 / RFC 8998): ciphertext followed by the 16-byte tag."""
    enc = Cipher(_sm4(key), modes.GCM(nonce)).encryptor()
    enc.authenticate_additional_data(aad)
    out = enc.update(data) + enc.finalize()
    return out + enc.tag


def sm4_gcm_decrypt(key: bytes, nonce: bytes, data: bytes, aad: bytes = b"") -> bytes:
    """Raises ``cryptography.exceptions.InvalidTag`` on any mismatch."""
    from cryptography.exceptions import InvalidTag

    if len(data) < GCM_TAG_LEN:
        raise InvalidTag()
    dec = Cipher(_sm4(key), modes.GCM(nonce, data[-GCM_TAG_LEN:])).decryptor()
    dec.authenticate_additional_data(aad)
    return dec.update(data[:-GCM_TAG_LEN]) + dec.finalize()


# ------------------------------------------------------------------------------ SM2

def on_curve(x: int, y: int) -> bool:
    """GB/T 32918.1 §6.2.1 (public key validation, steps a-c, h = 1)."""
    return 0 <= x < P and 0 <= y < P and (y * y - (x * x * x + A * x + B)) % P == 0


def sm2_z(public_raw: bytes, uid: bytes = DEFAULT_ID) -> bytes:
    """Z_A of GB/T 32918.2 §5.5 for the 64-byte public key ``x || y`` and user ID ``uid``."""
    if len(uid) > MAX_ID_LEN:
        raise GmCryptoError(f"an SM2 user ID is at most {MAX_ID_LEN} bytes, got {len(uid)}")
    entl = (len(uid) * 8).to_bytes(2, "big")
    return sm3(entl + uid + _b32(A) + _b32(B) + _b32(GX) + _b32(GY) + public_raw)


class SM2PublicKey:
    """A validated SM2 public key on the recommended curve."""

    __slots__ = ("_z", "raw")

    def __init__(self, raw: bytes):
        if len(raw) == PUBLIC_LEN + 1 and raw[0] == 4:
            raw = raw[1:]
        if len(raw) != PUBLIC_LEN:
            raise GmCryptoError(f"an SM2 public key is 64 bytes (x || y) or 65 (04 || x || y), "
                                f"got {len(raw)}")
        x, y = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
        if not on_curve(x, y):
            raise GmCryptoError("SM2 public key is not a point of the SM2 curve (GB/T 32918.1 §6.2.1)")
        self.raw = bytes(raw)
        self._z: dict[bytes, bytes] = {}

    @property
    def uncompressed(self) -> bytes:
        """``04 || x || y`` (65 bytes), the form most platforms print in hex."""
        return b"\x04" + self.raw

    def z(self, uid: bytes = DEFAULT_ID) -> bytes:
        z = self._z.get(uid)
        if z is None:
            z = self._z[uid] = sm2_z(self.raw, uid)
        return z

    def digest(self, message: bytes, uid: bytes = DEFAULT_ID) -> bytes:
        """e = SM3(Z_A || M), what is signed (GB/T 32918.2 §6.1 A1-A2)."""
        return sm3(self.z(uid) + message)

    def verify(self, signature: bytes, message: bytes, uid: bytes = DEFAULT_ID) -> None:
        """Raise ``InvalidSignature`` unless ``signature`` (r || s) is this key's over ``message``."""
        if len(signature) != SIG_LEN:
            raise InvalidSignature()
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        if not (0 < r < N and 0 < s < N):  # B1, B2
            raise InvalidSignature()
        lib = _lib()
        try:
            ok = lib.sm2_verify_sm3_digest(self.raw, self.digest(message, uid), encode_dss_signature(r, s))
        except lib.GmsslInnerError:
            ok = False
        if not ok:
            raise InvalidSignature()

    def encrypt(self, plaintext: bytes) -> bytes:
        """SM2 encryption (GB/T 32918.4): the GM/T 0009 DER ``SM2Cipher`` (C1, C3, C2)."""
        if not 0 < len(plaintext) <= MAX_SM2_PLAINTEXT:
            raise GmCryptoError(f"SM2 encrypts 1..{MAX_SM2_PLAINTEXT} bytes here, got {len(plaintext)}")
        out: bytes = _lib().sm2_encrypt(self.raw, plaintext)
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SM2PublicKey) and _hmac.compare_digest(self.raw, other.raw)

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"SM2PublicKey({self.raw[:4].hex()}…)"


class SM2PrivateKey:
    """An SM2 private key with its public key (the library cannot derive one from the other,
    so both are kept: ``generate`` makes them together, files store both)."""

    __slots__ = ("_d", "public")

    def __init__(self, private: bytes, public: SM2PublicKey | bytes):
        if len(private) != PRIVATE_LEN:
            raise GmCryptoError(f"an SM2 private key is {PRIVATE_LEN} bytes, got {len(private)}")
        d = int.from_bytes(private, "big")
        if not 1 <= d <= N - 2:
            raise GmCryptoError("SM2 private key out of range [1, n-2] (GB/T 32918.1 §6.1)")
        self._d = bytes(private)
        self.public = public if isinstance(public, SM2PublicKey) else SM2PublicKey(public)

    @classmethod
    def generate(cls) -> SM2PrivateKey:
        pub, priv = _lib().sm2_key_generate()
        return cls(priv, pub)

    def private_bytes(self) -> bytes:
        return self._d

    def public_key(self) -> SM2PublicKey:
        return self.public

    def check_pair(self) -> None:
        """Prove that the stored public key belongs to this private key (a key file copied
        together from two sets would otherwise sign what nobody can verify)."""
        probe = b"safegw SM2 key pair check"
        try:
            self.public.verify(self.sign(probe), probe)
        except InvalidSignature:
            raise GmCryptoError("SM2 private and public key do not belong together") from None

    def sign(self, message: bytes, uid: bytes = DEFAULT_ID) -> bytes:
        """SM2 signature with SM3 (GB/T 32918.2 §6.1), raw r || s."""
        der = _lib().sm2_sign_sm3_digest(self._d, self.public.digest(message, uid))
        r, s = decode_dss_signature(der)
        return _b32(r) + _b32(s)

    def decrypt(self, ciphertext: bytes) -> bytes:
        """SM2 decryption of a GM/T 0009 DER ``SM2Cipher``; ``GmCryptoError`` when the
        ciphertext is malformed, not for this key, or altered (its C3 hash is checked)."""
        lib = _lib()
        try:
            out: bytes = lib.sm2_decrypt(self._d, ciphertext)
        except lib.GmsslInnerError:
            raise GmCryptoError("SM2 ciphertext does not decrypt with this key (wrong key, or "
                                "altered)") from None
        return out

    def __repr__(self) -> str:
        return f"SM2PrivateKey(public={self.public!r})"


@functools.lru_cache(maxsize=1)
def backend() -> str:
    """The SM2 library and its version, for status pages and bench output."""
    return f"gmssl_pyx {_GM.__version__}" if _GM is not None else "none (gmssl-pyx not installed)"
