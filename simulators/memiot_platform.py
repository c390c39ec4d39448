"""A receiving stand-in for the ministry's IoT sensing platform (dust-explosion
monitoring, 粉尘涉爆), strict about what safegw's mem-iot adapter sends, with faults on
demand.

What it checks, in this order, each refusal with its reason (kept in ``refused``):

- ``POST`` to ``path`` with a body of at most ``MAX_BODY`` bytes (Content-Length, read
  no further), ``Content-Type: application/json``;
- the app secret in the ``secret_header`` header (compared in constant time) → else 401;
- the body a JSON object with exactly ``appid`` and ``data``; ``appid`` the expected
  one (else 401); ``data`` lower- or upper-case hex of whole 16-byte blocks;
- ``data`` decrypts under SM4-CBC with the issued key and IV and strict PKCS#7 padding,
  to UTF-8 JSON (a wrong key fails here: HTTP 200 with code 4002 "decrypt failed",
  the platform-level refusal of a body it could not read);
- the inner object under the configured field names: the enterprise code, a list of
  readings each with a code (a string), a value (a number or null), a time in
  ``time_format`` and a quality flag of HJ 212-2017 (N, F, M, S, D, C, T, B).

Decryption uses GmSSL (``gmssl_pyx``, the C library of the GmSSL project), not the
OpenSSL SM4 safegw encrypts with, so the two check each other; without it installed the
simulator falls back to safegw's own gateway.core.gmcrypto and says so in its log.

Accepted bodies answer ``{"code": 200, "msg": "success"}`` and their readings go to
``readings`` in arrival order (each with ``post``, the body's number). Faults:
``fail(status, times)`` answers with an HTTP status, ``refuse(code, times)`` with a
platform code in a 200, ``hang(seconds)`` holds each request unread that long and then
drops it unprocessed (a platform that does not answer: the client times out).

By hand: ``python -m simulators.memiot_platform --appid A --secret S --key HEX --iv HEX``
prints ``READY {"url": ..., "ca": ...}`` and logs each accepted body.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import sys
import tempfile
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from simulators.tlscert import make_certs
from simulators.wire import Faults, PostServer, PostStandIn, answer_json, by_hand

log = logging.getLogger(__name__)

MAX_BODY = 4 * 1024 * 1024
FLAGS = frozenset("NFMSDCTB")  # HJ 212-2017 table 6 data flags
DEFAULT_FIELDS = {"enterprise": "enterpriseCode", "device": "gatewayCode", "items": "datas",
                  "code": "pointCode", "value": "value", "time": "collectTime", "quality": "status"}


def sm4_cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """SM4-CBC decryption with strict PKCS#7 (raises ValueError on a bad pad)."""
    try:
        import gmssl_pyx
    except ImportError:  # pragma: no cover - the test extra installs it
        from gateway.core.gmcrypto import GmCryptoError
        from gateway.core.gmcrypto import sm4_cbc_decrypt as own
        try:
            return own(key, iv, data)
        except GmCryptoError as e:
            raise ValueError(str(e)) from None
    try:
        return bytes(gmssl_pyx.sm4_cbc_padding_decrypt(key, iv, data))
    except Exception as e:  # GmSSL raises its own error type for a bad pad
        raise ValueError(f"SM4-CBC: {e or 'bad padding'}") from None


class MemIotReceiver(PostStandIn):
    """One platform endpoint on 127.0.0.1 (``port`` 0: an ephemeral one). ``stop`` drops
    every open connection (kept-alive ones too): the platform is gone."""

    _drop_on_stop = True

    def __init__(self, *, appid: str, secret: str, key: bytes, iv: bytes, enterprise: str,
                 fields: dict[str, str] | None = None, secret_header: str = "secret",
                 time_format: str = "%Y-%m-%d %H:%M:%S", path: str = "/api/upload", tls: bool = True,
                 port: int = 0, cert_dir: Path | None = None):
        """``cert_dir``: where the CA and the server certificate are made (kept there: a
        receiver started again on the same folder serves the same ones)."""
        self.appid, self.secret, self.key, self.iv = appid, secret, key, iv
        self.enterprise = enterprise
        self.fields = {**DEFAULT_FIELDS, **(fields or {})}
        self.secret_header, self.time_format, self.path = secret_header, time_format, path
        self.readings: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self.posts = 0
        self._faults = Faults()
        self._lock = threading.Lock()
        self._tmp = None
        self.ca: Path | None = None
        certs: tuple[Path, Path] | None = None
        if tls:
            if cert_dir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="memiot-sim-")
                cert_dir = Path(self._tmp.name)
            have = [cert_dir / n for n in ("ca.pem", "server.pem", "server.key")]
            if all(f.exists() for f in have):  # a restart: the same CA the clients trust
                self.ca, cert, keyf = have
            else:
                self.ca, cert, keyf = make_certs(cert_dir)
            certs = (cert, keyf)
        self._server = PostServer(self._handle, name="memiot-sim", port=port, certs=certs, log=log,
                                  label="mem-iot platform")
        self.tls = tls
        self.port = self._server.port

    # ------------------------------------------------------------------ control
    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{self.path}"

    def refuse(self, code: int, times: int = 1) -> None:
        self._faults.add("code", code, times)

    def hang(self, seconds: float) -> None:
        """Hold every request this long, then drop it unprocessed (0: answer at once)."""
        super().hang(seconds)

    # ------------------------------------------------------------------ serving
    def _answer(self, h: BaseHTTPRequestHandler, status: int, doc: dict[str, Any]) -> None:
        try:
            answer_json(h, status, doc)
        except OSError:
            pass  # the client gave up (a timeout): nothing to tell it

    def _refuse(self, h: BaseHTTPRequestHandler, status: int, code: int, why: str) -> None:
        with self._lock:
            self.refused.append(why)
        log.info("mem-iot platform: refused (%d): %s", code, why)
        self._answer(h, status, {"code": code, "msg": why})

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        if self._faults.held():
            # an unresponsive platform: the request is held unread, then dropped unprocessed
            with self._lock:
                self.refused.append("held without an answer (hang)")
            h.close_connection = True
            return
        fault = self._faults.take()
        path = h.path.split("?", 1)[0]
        if path != self.path:
            return self._refuse(h, 404, 404, f"no such path {path}")
        try:
            length = int(h.headers.get("Content-Length", ""))
        except ValueError:
            return self._refuse(h, 411, 411, "Content-Length missing")
        if not 0 < length <= MAX_BODY:
            h.close_connection = True
            return self._refuse(h, 413, 413, f"body of {length} bytes (at most {MAX_BODY})")
        raw = h.rfile.read(length)
        if fault is not None:
            kind, n = fault
            if kind == "http":
                return self._answer(h, n, {"code": n, "msg": "injected"})
            return self._answer(h, 200, {"code": n, "msg": "injected"})
        if (h.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            return self._refuse(h, 415, 415, "Content-Type must be application/json")
        got = (h.headers.get(self.secret_header) or "").encode()
        if not hmac.compare_digest(got, self.secret.encode()):
            return self._refuse(h, 401, 401, f"wrong or missing app secret in header {self.secret_header}")
        try:
            outer = json.loads(raw)
        except ValueError as e:
            return self._refuse(h, 400, 4000, f"body is not JSON: {e}")
        if not isinstance(outer, dict) or set(outer) != {"appid", "data"}:
            return self._refuse(h, 400, 4000, "body must be an object of exactly appid and data")
        if outer["appid"] != self.appid:
            return self._refuse(h, 401, 4001, f"unknown appid {str(outer['appid'])[:64]!r}")
        data = outer["data"]
        try:
            if not isinstance(data, str) or not data or len(data) % 32:
                raise ValueError("not whole 16-byte blocks")
            cipher = bytes.fromhex(data)
        except ValueError as e:
            return self._refuse(h, 400, 4000, f"data is not hex of SM4 blocks: {e}")
        try:
            inner = json.loads(sm4_cbc_decrypt(self.key, self.iv, cipher).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            return self._refuse(h, 200, 4002, f"decrypt failed (wrong key or IV?): {e}")
        why = self._check(inner)
        if why:
            return self._refuse(h, 200, 4003, why)
        f = self.fields
        with self._lock:
            self.posts += 1
            for item in inner[f["items"]]:
                self.readings.append({"post": self.posts, "code": item[f["code"]], "value": item[f["value"]],
                                      "time": item[f["time"]], "quality": item[f["quality"]]})
        log.info("mem-iot platform: accepted %d reading(s)", len(inner[f["items"]]))
        self._answer(h, 200, {"code": 200, "msg": "success"})

    def _check(self, inner: Any) -> str | None:
        f = self.fields
        if not isinstance(inner, dict):
            return "decrypted data is not a JSON object"
        if inner.get(f["enterprise"]) != self.enterprise:
            return f"{f['enterprise']}: not this enterprise's code"
        items = inner.get(f["items"])
        if not isinstance(items, list) or not items:
            return f"{f['items']}: not a non-empty list"
        for i, item in enumerate(items):
            at = f"{f['items']}[{i}]"
            if not isinstance(item, dict) or set(item) != {f["code"], f["value"], f["time"], f["quality"]}:
                return f"{at}: must hold exactly {f['code']}, {f['value']}, {f['time']}, {f['quality']}"
            if not isinstance(item[f["code"]], str) or not item[f["code"]]:
                return f"{at}.{f['code']}: not a code"
            v = item[f["value"]]
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                return f"{at}.{f['value']}: not a number"
            try:
                datetime.strptime(str(item[f["time"]]), self.time_format)
            except ValueError:
                return f"{at}.{f['time']}: not in {self.time_format}"
            if item[f["quality"]] not in FLAGS:
                return f"{at}.{f['quality']}: {item[f['quality']]!r} is not an HJ 212 data flag"
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulators.memiot_platform",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--appid", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--key", required=True, help="SM4 key, 32 hex digits")
    p.add_argument("--iv", required=True, help="SM4-CBC IV, 32 hex digits")
    p.add_argument("--enterprise", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--http", action="store_true", help="plain HTTP instead of HTTPS")
    p.add_argument("--cert-dir", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    r = MemIotReceiver(appid=args.appid, secret=args.secret, key=bytes.fromhex(args.key),
                       iv=bytes.fromhex(args.iv), enterprise=args.enterprise, tls=not args.http,
                       port=args.port, cert_dir=args.cert_dir).start()
    return by_hand({"url": r.url, "ca": str(r.ca) if r.ca else None}, r.stop)


if __name__ == "__main__":
    raise SystemExit(main())
