"""Templates, encryption and signature of the template publisher.

A template is JSON (from the YAML config) whose strings may name fields as ``${name}``:
a string that is exactly one placeholder becomes the field's value with its type (a
number stays a number, ``${items}`` a list); a placeholder inside a longer string is
replaced by the value's text. ``gateway.core.config_regulators`` lists the fields each
template may name and ``safegw check`` refuses any other at its line.

Encryption of the message JSON: SM4 (GB/T 32907-2016) or AES (FIPS 197), CBC or ECB,
PKCS#7 padding, the ciphertext in base64 or hex as ``${data}``; without a cipher
``${data}`` is the message JSON itself. Signature over the text of ``${data}``:
hex HMAC-SHA256 (RFC 2104), hex HMAC-SM3, or hex SM3(data + secret).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gateway.core import gmcrypto
from gateway.core.config_regulators import PLACEHOLDER, TemplateCrypto

_ONE = re.compile(r"^" + PLACEHOLDER + r"$")
_ANY = re.compile(PLACEHOLDER)

Render = Callable[[dict[str, Any]], Any]


def compile_template(tpl: Any) -> Render:
    """A function from the fields to the rendered JSON value."""
    if isinstance(tpl, dict):
        parts = [(k, compile_template(v)) for k, v in tpl.items()]
        return lambda f: {k: r(f) for k, r in parts}
    if isinstance(tpl, list):
        items = [compile_template(v) for v in tpl]
        return lambda f: [r(f) for r in items]
    if isinstance(tpl, str):
        m = _ONE.match(tpl)
        if m:
            name = m.group(1)
            return lambda f: f[name]
        if _ANY.search(tpl):
            return lambda f: _ANY.sub(lambda m: _text(f[m.group(1)]), tpl)
    return lambda f: tpl


def _text(v: Any) -> str:
    return "" if v is None else str(v)


def item_renderer(tpl: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The per-reading template, flattened for speed when its values are plain placeholders."""
    plain = all(isinstance(v, str) and _ONE.match(v) for v in tpl.values())
    if plain:
        pairs = [(k, _ONE.match(v).group(1)) for k, v in tpl.items()]  # type: ignore[union-attr]
        return lambda f: {k: f[n] for k, n in pairs}
    r = compile_template(tpl)
    return lambda f: r(f)  # type: ignore[no-any-return]


class Sealer:
    """Encrypts and signs a message's text as the profile says."""

    def __init__(self, cfg: TemplateCrypto, key: bytes | None, iv: bytes | None, sign_key: bytes | None):
        self.cfg, self.key, self.iv, self.sign_key = cfg, key, iv, sign_key
        if cfg.cipher.startswith("sm4") and (key is None or len(key) != 16):
            raise ValueError("SM4 needs a 16-byte key (32 hex digits)")
        if cfg.cipher.startswith("aes") and (key is None or len(key) not in (16, 24, 32)):
            raise ValueError("AES needs a 16, 24 or 32-byte key")
        if cfg.cipher.endswith("cbc") and (iv is None or len(iv) != 16):
            raise ValueError("CBC needs a 16-byte IV (32 hex digits)")

    def encrypt(self, plain: bytes) -> bytes:
        c, key, iv = self.cfg.cipher, self.key, self.iv
        if c == "none":
            return plain
        assert key is not None
        if c == "sm4-cbc":
            assert iv is not None
            return gmcrypto.sm4_cbc_encrypt(key, iv, plain)
        if c == "sm4-ecb":
            return gmcrypto.sm4_ecb_encrypt(key, plain)
        padder = padding.PKCS7(128).padder()
        data = padder.update(plain) + padder.finalize()
        mode = modes.CBC(iv) if c == "aes-cbc" and iv is not None else modes.ECB()
        enc = Cipher(algorithms.AES(key), mode).encryptor()
        return enc.update(data) + enc.finalize()

    def data(self, plain: bytes) -> str:
        """``${data}``: the ciphertext as text, or the plain message when not encrypted."""
        if self.cfg.cipher == "none":
            return plain.decode()
        c = self.encrypt(plain)
        return c.hex() if self.cfg.encoding == "hex" else base64.b64encode(c).decode()

    def sign(self, data: str) -> str | None:
        s, k = self.cfg.signature, self.sign_key
        if s == "none" or k is None:
            return None
        d = data.encode()
        if s == "hmac-sha256":
            return hmac.new(k, d, hashlib.sha256).hexdigest()
        if s == "hmac-sm3":
            return gmcrypto.hmac_sm3(k, d).hex()
        return gmcrypto.sm3(d + k).hex()
