"""A provincial platform's receiving side for the template publisher (northbound/template),
written from a profile's text alone (never with safegw's render code): it finds each field
by its ``${placeholder}`` in the profile's templates, checks the signature (stdlib hmac
for HMAC-SHA256, GmSSL ``gmssl_pyx`` for HMAC-SM3 and SM3), decrypts (GmSSL for SM4-CBC;
AES-CBC through cryptography, checked against FIPS 197 in tests/northbound/test_template.py)
and sorts every message by its route (topic or URL path) into readings, alarms,
heartbeats and base data. Without GmSSL installed it falls back to safegw's own
gateway.core.gmcrypto and says so in its log.

``HttpsReceiver`` is the platform's HTTPS side (a real TLS server on an ephemeral port):
bodies of at most 1 MiB, JSON, to one of the profile's paths; faults on demand.

By hand, with a profile whose <...> places are filled::

    python -m simulators.province_platform --profile p.yaml --key HEX --iv HEX --sign-key TEXT

serves HTTPS (``transport: http``; point the profile's URLs at the printed address) or
subscribes to the profile's topics on ``mqtt.host``/``mqtt.port`` (``transport: mqtt``,
the broker's CA from ``mqtt.ca_file``), prints ``READY {...}`` and logs every message it
opened: its kind and fields, or why it was refused.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import logging
import sys
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from simulators.tlscert import make_certs
from simulators.wire import PostServer, by_hand

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20

try:
    import gmssl_pyx

    def sm4_cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
        return bytes(gmssl_pyx.sm4_cbc_padding_decrypt(key, iv, data))

    def sm3(data: bytes) -> bytes:
        return bytes(gmssl_pyx.sm3_hash(data))

    def hmac_sm3(key: bytes, data: bytes) -> bytes:
        return bytes(gmssl_pyx.sm3_hmac(key, data))
except ImportError:  # pragma: no cover - the test extra installs it
    from gateway.core.gmcrypto import hmac_sm3, sm3, sm4_cbc_decrypt
    log.warning("gmssl_pyx is not installed: decrypting and checking with safegw's own SM3/SM4")


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
            return sm4_cbc_decrypt(self.key, self.iv, raw)
        assert c["cipher"] == "aes-cbc", c["cipher"]
        dec = Cipher(algorithms.AES(self.key), modes.CBC(self.iv)).decryptor()
        padded = dec.update(raw) + dec.finalize()
        assert 1 <= padded[-1] <= 16 and padded.endswith(bytes([padded[-1]]) * padded[-1])
        return padded[:-padded[-1]]

    def _sign(self, data: str) -> str | None:
        s = (self.p.get("crypto") or {}).get("signature", "none")
        if s == "hmac-sm3":
            return hmac_sm3(self.sign_key, data.encode()).hex()
        if s == "sm3":
            return sm3(data.encode() + self.sign_key).hex()
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
    ``down`` refuses every POST with 503 while set; ``check`` (the by-hand simulator's)
    reads each body on arrival and returns why it is refused (answered with code 4001)."""

    def __init__(self, certs: Path, paths: Sequence[str] = ("/data",), *, port: int = 0,
                 check: Callable[[str, bytes], str | None] | None = None):
        self.messages: list[tuple[str, bytes, bool, float]] = []
        self.faults: list[int] = []
        self.down = False
        self.paths = set(paths)
        self.check = check
        self.ca, cert, key = make_certs(certs)
        self._server = PostServer(self._handle, name="province-sim", port=port, certs=(cert, key))
        self.base = f"https://127.0.0.1:{self._server.port}"
        self.url = self.base + "/data"
        self._server.start()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        try:
            n = int(h.headers.get("Content-Length", "0"))
        except ValueError:
            n = 0
        body = h.rfile.read(n) if 0 < n <= MAX_BODY else b""
        status, doc = 200, {"code": 0, "msg": "ok"}
        why = self.check(h.path, body) if self.check is not None and body else None
        if self.down:
            status, doc = 503, {"code": -1, "msg": "down"}
        elif self.faults:
            status, doc = self.faults.pop(0), {"code": -1, "msg": "injected"}
        elif h.path not in self.paths or not body \
                or h.headers.get("Content-Type") != "application/json":
            status, doc = 400, {"code": 400, "msg": "bad request"}
        elif why is not None:
            doc = {"code": 4001, "msg": why}
        else:
            self.messages.append((h.path, body, False, 0.0))
        out = json.dumps(doc).encode()
        h.send_response(status)
        h.send_header("Content-Length", str(len(out)))
        h.end_headers()
        h.wfile.write(out)

    def stop(self) -> None:
        self._server.stop()


def _by_hand(args: argparse.Namespace) -> int:
    profile: dict[str, Any] = yaml.safe_load(Path(args.profile).read_text())
    prov = Province(profile, bytes.fromhex(args.key), bytes.fromhex(args.iv or "00" * 16),
                    (args.sign_key or "").encode())

    def show(route: str, body: bytes) -> str | None:
        try:
            msg = prov.open(body)
        except (ValueError, KeyError, TypeError) as e:
            log.warning("%s: not readable: %s", route, e)
            return f"not readable: {e}"
        if msg is None:
            log.warning("%s: signature check failed", route)
            return "signature check failed"
        kind = prov.kinds.get(route, "?")
        log.info("%s %s", kind, json.dumps(msg, ensure_ascii=False)[:2000])
        return None

    if profile.get("transport", "mqtt") == "http":
        paths = list(prov.kinds)
        r = HttpsReceiver(Path(args.cert_dir), paths, port=args.port, check=show)
        return by_hand({"base": r.base, "paths": paths, "ca": str(r.ca)}, r.stop)
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    m = profile["mqtt"]
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id, clean_session=False)
    if m.get("tls", True):
        c.tls_set(ca_certs=m.get("ca_file"))
    c.on_connect = lambda cl, *_: cl.subscribe([(t, 1) for t in prov.kinds])
    def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        show(msg.topic, bytes(msg.payload))
    c.on_message = on_message
    c.connect(m["host"], int(m.get("port", 8883)))
    c.loop_start()

    def stop() -> None:
        c.disconnect()
        c.loop_stop()
    return by_hand({"topics": list(prov.kinds)}, stop)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulators.province_platform",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", required=True, help="the regulators: entry (YAML), <...> filled")
    p.add_argument("--key", required=True, help="the cipher's key, hex")
    p.add_argument("--iv", help="the CBC IV, hex")
    p.add_argument("--sign-key", help="the signing secret (text)")
    p.add_argument("--port", type=int, default=0, help="HTTPS port (0: an ephemeral one)")
    p.add_argument("--cert-dir", default="province-certs", help="where the HTTPS CA and certificate go")
    p.add_argument("--client-id", default="province-sim", help="MQTT client id of the platform's side")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    return _by_hand(args)


if __name__ == "__main__":
    raise SystemExit(main())
