"""HTTPS receivers that stand in for the chat robots and a generic webhook, strict as the
vendors document them, with faults on demand.

- ``wecom``: ``POST /cgi-bin/webhook/send?key=KEY``; ``msgtype`` text (content at most
  2048 bytes of UTF-8) or markdown (4096); wrong key → errcode 93000.
  (https://developer.work.weixin.qq.com/document/path/91770)
- ``dingtalk``: ``POST /robot/send?access_token=T&timestamp=MS&sign=S``; with a secret,
  ``S`` must be urlencode(base64(HMAC-SHA256(secret, MS + "\\n" + secret))) and MS within
  one hour of this receiver's clock, else errcode 310000; body at most 20,000 bytes.
  (https://open.dingtalk.com/document/robots/customize-robot-security-settings)
- ``feishu``: ``POST /open-apis/bot/v2/hook/TOKEN`` with ``timestamp`` (seconds) and
  ``sign`` = base64(HMAC-SHA256(key = timestamp + "\\n" + secret, message = empty)) in the
  body, the timestamp within an hour, else code 19021.
  (https://open.feishu.cn/document/client-docs/bot-v3/add-custom-bot)
- ``webhook``: ``POST /hook``; with a secret, ``X-Safegw-Timestamp`` and
  ``X-Safegw-Signature`` = hex HMAC-SHA256(secret, timestamp + "." + body), else 401.

Faults: ``fail(status, times)`` answers the next requests with an HTTP status (429, 500,
503), ``vendor_error(code, times)`` with a vendor error code in a 200, ``hang(seconds)``
holds answers back (a timeout for the client). Every accepted message is kept in
``messages`` (with its arrival time); every refusal in ``refused``.

By hand: ``python -m simulators.robots dingtalk --secret S --token T`` prints
``READY {"url": ..., "ca": ...}`` and logs each message.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import logging
import sys
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from simulators.tlscert import make_certs
from simulators.wire import Faults, PostServer, PostStandIn, answer_json, by_hand

log = logging.getLogger(__name__)

MAX_BODY = {"wecom": 8192, "dingtalk": 20000, "feishu": 20000, "webhook": 1 << 20}
PATHS = {
    "wecom": "/cgi-bin/webhook/send",
    "dingtalk": "/robot/send",
    "feishu": "/open-apis/bot/v2/hook/",
    "webhook": "/hook",
}
HOUR_S = 3600


class RobotReceiver(PostStandIn):
    """One robot endpoint on 127.0.0.1 (an ephemeral port) over HTTPS."""

    def __init__(
        self,
        kind: str,
        *,
        token: str = "tok",
        secret: str | None = None,
        cert_dir: Path | None = None,
        clock: Any = time.time,
    ):
        if kind not in PATHS:
            raise ValueError(f"unknown robot {kind!r}; known: {', '.join(PATHS)}")
        self.kind, self.token, self.secret, self.clock = kind, token, secret, clock
        self._tmp = None if cert_dir else tempfile.TemporaryDirectory(prefix="robot-sim-")
        self.ca, cert, key = make_certs(cert_dir or Path(self._tmp.name))  # type: ignore[union-attr]
        self.messages: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self.requests = 0
        self._faults = Faults()
        self._lock = threading.Lock()
        self._server = PostServer(self._handle, name=f"robot-sim[{kind}]", certs=(cert, key),
                                  log=log, label=f"robot {kind}")
        self.port = self._server.port

    # ------------------------------------------------------------------ control
    @property
    def url(self) -> str:
        """The address without its token (the client adds it from its token file)."""
        base = f"https://127.0.0.1:{self.port}{PATHS[self.kind]}"
        return base.rstrip("/") if self.kind == "feishu" else base

    def vendor_error(self, code: int, times: int = 1) -> None:
        self._faults.add("vendor", code, times)

    def hang(self, seconds: float) -> None:
        """Hold every answer back this long (0: answer at once)."""
        super().hang(seconds)

    # ------------------------------------------------------------------ serving
    def _answer(self, h: BaseHTTPRequestHandler, status: int, doc: dict[str, Any]) -> None:
        answer_json(h, status, doc, content_type="application/json; charset=utf-8")

    def _refuse(self, h: BaseHTTPRequestHandler, why: str, status: int, doc: dict[str, Any]) -> None:
        with self._lock:
            self.refused.append(why)
        log.warning("robot %s refused a message: %s", self.kind, why)
        self._answer(h, status, doc)

    def _vendor(self, code: int, msg: str) -> dict[str, Any]:
        return (
            {"code": code, "msg": msg, "data": {}}
            if self.kind == "feishu"
            else {"errcode": code, "errmsg": msg}
        )

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests += 1
        fault = self._faults.take()
        self._faults.held()
        size = int(h.headers.get("Content-Length") or -1)
        if size < 0 or size > MAX_BODY[self.kind]:
            self._refuse(h, f"body size {size}", 413, self._vendor(43004, "body too large or no length"))
            return
        raw = h.rfile.read(size)
        if fault is not None:
            kind, v = fault
            if kind == "http":
                self._answer(h, v, {"error": f"simulated {v}"})
            else:
                self._answer(h, 200, self._vendor(v, "simulated vendor error"))
            return
        url = urllib.parse.urlsplit(h.path)
        q = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        try:
            doc = json.loads(raw)
        except ValueError:
            self._refuse(h, "body is not JSON", 400, self._vendor(40001, "invalid json"))
            return
        why = self._verify(url.path, q, doc, raw, h.headers)
        if why is not None:
            code = {"wecom": 93000, "dingtalk": 310000, "feishu": 19021, "webhook": 401}[self.kind]
            self._refuse(h, why, 401 if self.kind == "webhook" else 200, self._vendor(code, why))
            return
        with self._lock:
            self.messages.append(
                {"t": time.monotonic(), "wall": time.time(), "doc": doc, "headers": dict(h.headers)}
            )
        log.info("robot %s: message %s", self.kind, json.dumps(doc, ensure_ascii=False)[:300])
        if self.kind == "webhook":
            self._answer(h, 200, {"ok": True})
        elif self.kind == "feishu":
            self._answer(h, 200, {"code": 0, "msg": "success", "data": {}})
        else:
            self._answer(h, 200, {"errcode": 0, "errmsg": "ok"})

    def _fresh(self, ts: float) -> bool:
        return abs(self.clock() - ts) <= HOUR_S

    def _verify(self, path: str, q: dict[str, str], doc: Any, raw: bytes, headers: Any) -> str | None:
        """Why the message is refused, or None: the vendor's checks, written from their docs."""
        if not isinstance(doc, dict):
            return "body is not a JSON object"
        if self.kind == "wecom":
            if path != PATHS["wecom"] or q.get("key") != self.token:
                return "invalid webhook url (key)"
            t = doc.get("msgtype")
            if t not in ("text", "markdown") or not isinstance(doc.get(t), dict):
                return f"msgtype {t!r} not text/markdown with its object"
            content = doc[t].get("content")
            limit = 2048 if t == "text" else 4096
            if not isinstance(content, str) or len(content.encode()) > limit:
                return f"{t}.content missing or over {limit} bytes"
            return None
        if self.kind == "dingtalk":
            if path != PATHS["dingtalk"] or q.get("access_token") != self.token:
                return "token is not exist"
            if self.secret is not None:
                ts, sign = q.get("timestamp", ""), q.get("sign", "")
                if not ts.isdigit() or not self._fresh(int(ts) / 1000):
                    return "timestamp missing or more than an hour off"
                want = base64.b64encode(
                    hmac.new(self.secret.encode(), f"{ts}\n{self.secret}".encode(), hashlib.sha256).digest()
                ).decode()
                # parse_qsl has already undone the URL encoding of the query
                if not hmac.compare_digest(sign, want):
                    return "sign not match"
            if doc.get("msgtype") != "text" or not isinstance((doc.get("text") or {}).get("content"), str):
                return "msgtype must be text with text.content"
            return None
        if self.kind == "feishu":
            if path != PATHS["feishu"] + self.token:
                return "bot not found (token)"
            if self.secret is not None:
                fts, fsign = str(doc.get("timestamp", "")), doc.get("sign")
                if not fts.isdigit() or not self._fresh(int(fts)):
                    return "timestamp is not within one hour from current time"
                key = f"{fts}\n{self.secret}".encode()
                want = base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
                if not isinstance(fsign, str) or not hmac.compare_digest(fsign, want):
                    return "sign match fail"
            if doc.get("msg_type") != "text" or not isinstance((doc.get("content") or {}).get("text"), str):
                return "msg_type must be text with content.text"
            return None
        if path != PATHS["webhook"]:
            return "no such hook"
        if self.secret is not None:
            ts = headers.get("X-Safegw-Timestamp") or ""
            got = headers.get("X-Safegw-Signature") or ""
            if not ts.isdigit() or not self._fresh(int(ts)):
                return "timestamp missing or stale"
            want = hmac.new(self.secret.encode(), ts.encode() + b"." + raw, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(got, want):
                return "signature mismatch"
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulators.robots", description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=sorted(PATHS))
    p.add_argument("--token", default="tok")
    p.add_argument("--secret")
    p.add_argument(
        "--cert-dir", type=Path, help="where the CA and server certificate go (default: a temp dir)"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    r = RobotReceiver(args.kind, token=args.token, secret=args.secret, cert_dir=args.cert_dir).start()
    return by_hand({"url": r.url, "ca": str(r.ca), "token": args.token}, r.stop)


if __name__ == "__main__":
    raise SystemExit(main())
