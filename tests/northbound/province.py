"""A provincial platform's receiving side for the template publisher's tests, written from
a profile's text alone (never with safegw's render code): it finds each field by its
``${placeholder}`` in the profile's templates, checks the signature (stdlib hmac for
HMAC-SHA256, GmSSL ``gmssl_pyx`` for HMAC-SM3 and SM3), decrypts (GmSSL for SM4-CBC; AES-CBC
through cryptography, checked against FIPS 197 in test_template.py) and sorts every
message by its route (topic or URL path) into readings, alarms, heartbeats and base data.

``HttpsReceiver`` is the platform's HTTPS side (a real TLS server on an ephemeral port).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import gmssl_pyx
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from simulators.tlscert import make_certs


def placed(tpl: Any, doc: Any) -> dict[str, Any]:
    """Every ``${name}`` that stands alone as a value in ``tpl``, read from ``doc``."""
    out: dict[str, Any] = {}
    if isinstance(tpl, dict) and isinstance(doc, dict):
        for k, v in tpl.items():
            if isinstance(v, str) and v.startswith("${") and v.endswith("}") and v.count("${") == 1:
                out[v[2:-1]] = doc[k]
            elif isinstance(v, dict):
                out.update(placed(v, doc.get(k)))
    return out


def _route(section: dict[str, Any] | None, profile: dict[str, Any]) -> str:
    transport = profile.get("transport", "mqtt")
    if transport == "http":
        url = (section or {}).get("url") or profile["http"]["url"]
        return urlparse(url).path
    return str((section or {}).get("topic") or profile["mqtt"]["topic"])


class Province:
    """Opens and sorts what a profile's publisher sent (see the module's docstring)."""

    def __init__(self, profile: dict[str, Any], key: bytes, iv: bytes, sign_key: bytes):
        self.p, self.key, self.iv, self.sign_key = profile, key, iv, sign_key
        base = profile.get("base") or {}
        sections = {"data": None, "alarm": profile.get("alarms"), "heartbeat": profile.get("heartbeat"),
                    **{f"base.{k}": v for k, v in base.items()}}
        self.kinds: dict[str, str] = {}
        for kind, sec in sections.items():
            if kind != "data" and sec is None:
                continue
            r = _route(sec, profile)
            assert r not in self.kinds, f"{kind} and {self.kinds.get(r)} share the route {r}"
            self.kinds[r] = kind
        self.refused: list[str] = []

    def _plain(self, data: str) -> bytes:
        c = self.p.get("crypto") or {}
        if c.get("cipher", "none") == "none":
            return data.encode()
        raw = base64.b64decode(data) if c.get("encoding", "base64") == "base64" else bytes.fromhex(data)
        if c["cipher"] == "sm4-cbc":
            return bytes(gmssl_pyx.sm4_cbc_padding_decrypt(self.key, self.iv, raw))
        assert c["cipher"] == "aes-cbc", c["cipher"]
        dec = Cipher(algorithms.AES(self.key), modes.CBC(self.iv)).decryptor()
        padded = dec.update(raw) + dec.finalize()
        assert 1 <= padded[-1] <= 16 and padded.endswith(bytes([padded[-1]]) * padded[-1])
        return padded[:-padded[-1]]

    def _sign(self, data: str) -> str | None:
        s = (self.p.get("crypto") or {}).get("signature", "none")
        if s == "hmac-sm3":
            return bytes(gmssl_pyx.sm3_hmac(self.sign_key, data.encode())).hex()
        if s == "sm3":
            return bytes(gmssl_pyx.sm3_hash(data.encode() + self.sign_key)).hex()
        if s == "hmac-sha256":
            return hmac.new(self.sign_key, data.encode(), hashlib.sha256).hexdigest()
        return None

    def open(self, body: bytes) -> dict[str, Any] | None:
        """The message inside one body; None (and a note in ``refused``) if its signature fails."""
        env_tpl = self.p.get("envelope")
        if env_tpl is None:
            doc: dict[str, Any] = json.loads(body)
            return doc
        env = placed(env_tpl, json.loads(body))
        want = self._sign(env["data"])
        if want is not None and not hmac.compare_digest(str(env.get("sign")), want):
            self.refused.append("bad sign")
            return None
        msg: dict[str, Any] = json.loads(self._plain(env["data"]))
        return msg

    def sort(self, messages: Sequence[tuple[str, bytes, Any, Any]]) -> list[tuple[str, dict[str, Any]]]:
        """(kind, message) of every distinct body, in arrival order. MQTT QoS 1 is at least
        once on each leg: a message the broker hands on again after its own restart comes
        byte for byte the same, and the platform drops it as a repeat."""
        self.refused = []
        seen: set[bytes] = set()
        out = []
        for route, body, _, _ in list(messages):
            if body in seen:
                continue
            seen.add(body)
            msg = self.open(body)
            if msg is not None:
                out.append((self.kinds[route], msg))
        return out

    def items(self, kind: str, msg: dict[str, Any]) -> list[dict[str, Any]]:
        """The entries of a list message (readings, snapshots, hazard sources, points)."""
        if kind == "data":
            msg_tpl, item_tpl = self.p["message"], self.p["item"]
        else:
            sec = self.p["base"][kind.split(".", 1)[1]]
            msg_tpl, item_tpl = sec["message"], sec["item"]
        return [placed(item_tpl, d) for d in placed(msg_tpl, msg)["items"]]

    def fields(self, kind: str, msg: dict[str, Any]) -> dict[str, Any]:
        """The fields of a one-record message (alarm, heartbeat, enterprise)."""
        sec = {"alarm": self.p.get("alarms"), "heartbeat": self.p.get("heartbeat"),
               "base.enterprise": (self.p.get("base") or {}).get("enterprise")}[kind]
        assert sec is not None
        return placed(sec["message"], msg)


class HttpsReceiver:
    """The platform's HTTPS side: POSTs (1 MiB at most, JSON) to one of ``paths``,
    answered ``{"code": 0}``; ``faults`` answers the next ones with an HTTP status;
    ``down`` refuses every POST with 503 while set."""

    def __init__(self, certs: Path, paths: Sequence[str] = ("/data",)):
        self.messages: list[tuple[str, bytes, bool, float]] = []
        self.faults: list[int] = []
        self.down = False
        self.paths = set(paths)
        self.ca, cert, key = make_certs(certs)
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n) if 0 < n <= 1 << 20 else b""
                status, doc = 200, {"code": 0, "msg": "ok"}
                if outer.down:
                    status, doc = 503, {"code": -1, "msg": "down"}
                elif outer.faults:
                    status, doc = outer.faults.pop(0), {"code": -1, "msg": "injected"}
                elif self.path not in outer.paths or not body \
                        or self.headers.get("Content-Type") != "application/json":
                    status, doc = 400, {"code": 400, "msg": "bad request"}
                else:
                    outer.messages.append((self.path, body, False, 0.0))
                out = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.base = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.url = self.base + "/data"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
