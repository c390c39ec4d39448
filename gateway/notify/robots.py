"""Group robots and webhooks over HTTPS: WeChat Work (企业微信), DingTalk (钉钉), Feishu/Lark
(飞书) and a generic JSON webhook.

Message formats and signatures as the vendors document them:

- WeChat Work group robot: ``POST <url>?key=KEY`` with ``{"msgtype": "text", "text":
  {"content", "mentioned_list", "mentioned_mobile_list"}}`` (or ``markdown``); content at
  most 2048 bytes of UTF-8 (markdown 4096); answer ``{"errcode": 0}``; 45009 is its rate
  limit (20 messages a minute). https://developer.work.weixin.qq.com/document/path/91770
- DingTalk custom robot: ``POST <url>?access_token=T&timestamp=MS&sign=S`` where
  ``S = urlencode(base64(HMAC-SHA256(key=secret, msg=f"{MS}\\n{secret}")))``, MS in
  milliseconds within an hour of DingTalk's clock; ``{"msgtype": "text", "text":
  {"content"}, "at": {"atMobiles", "atUserIds"}}``; answer ``{"errcode": 0}``; 130101
  is "sending too fast". https://open.dingtalk.com/document/robots/customize-robot-security-settings
- Feishu/Lark custom bot: ``{"timestamp": "S", "sign": B, "msg_type": "text", "content":
  {"text"}}`` where ``B = base64(HMAC-SHA256(key=f"{S}\\n{secret}", msg=b""))``, S in
  seconds; answer ``{"code": 0}``; 19021 is a bad signature, 11232 a rate limit.
  https://open.feishu.cn/document/client-docs/bot-v3/add-custom-bot
- generic webhook: the message as JSON; with a secret, ``X-Safegw-Timestamp: S`` and
  the signature header = hex HMAC-SHA256(secret, f"{S}.{body}"). Any 2xx is delivered.

429, 5xx, a timeout and a vendor's rate-limit code are failures worth retrying; a
timeout after the request went out is *ambiguous* (the robot may have posted it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import ssl
import time
import urllib.parse
from typing import Any

import httpx

from gateway.core.config import resolve_path
from gateway.core.config_notify import (
    DingtalkSettings,
    FeishuSettings,
    RobotSettings,
    WebhookSettings,
    WecomSettings,
)
from gateway.core.secrets import read_secret
from gateway.notify.base import Message, Recipient, SendResult

log = logging.getLogger(__name__)

#: the most of an answer read (a robot's answer is a few dozen bytes)
MAX_ANSWER = 64 * 1024
WECOM_TEXT_BYTES = 2048
WECOM_MARKDOWN_BYTES = 4096
#: DingTalk and Feishu do not publish a byte limit for text; kept under 20,000 characters
TEXT_CHARS = 20_000
RATE_CODES = {"wecom": {45009}, "dingtalk": {130101, 130102}, "feishu": {11232, 9499}}


def dingtalk_sign(timestamp_ms: int | str, secret: str) -> str:
    """DingTalk's ``sign`` parameter, URL-encoded as it goes into the query."""
    mac = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return urllib.parse.quote_plus(base64.b64encode(mac).decode())


def feishu_sign(timestamp_s: int | str, secret: str) -> str:
    """Feishu's ``sign``: the key is timestamp + LF + secret, the message empty."""
    mac = hmac.new(f"{timestamp_s}\n{secret}".encode(), b"", hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def webhook_sign(timestamp_s: int | str, body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), f"{timestamp_s}.".encode() + body, hashlib.sha256).hexdigest()


def clip_bytes(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, on a character boundary."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode(errors="ignore") + "..."


class RobotChannel:
    """One robot or webhook. ``send`` makes one POST; the service paces and retries."""

    def __init__(self, settings: RobotSettings, base_dir: Any, *, clock: Any = time.time):
        self.settings = settings
        self.type: str = settings.type  # type: ignore[attr-defined]
        self.name = settings.name
        self.clock = clock
        self.secret = read_secret(settings.secret_file, base_dir) if settings.secret_file else None
        token = read_secret(settings.token_file, base_dir) if settings.token_file else None
        self.url = self._url(settings.url, token)
        ca = resolve_path(settings.ca_file, base_dir) if settings.ca_file else None
        self._ssl = ssl.create_default_context(cafile=str(ca) if ca else None)
        self._client: httpx.AsyncClient | None = None
        self.sent = 0
        self.failed = 0
        self.last_error: str | None = None

    def _url(self, url: str, token: str | None) -> str:
        if token is None:
            return url
        if self.type == "wecom":
            return _add_query(url, {"key": token})
        if self.type == "dingtalk":
            return _add_query(url, {"access_token": token})
        return url.rstrip("/") + "/" + urllib.parse.quote(token)

    def accepts(self, to: Recipient) -> bool:
        if self.type == "wecom":
            return bool(to.wecom_id or to.phone)
        if self.type == "dingtalk":
            return bool(to.dingtalk_id or to.phone)
        if self.type == "feishu":
            return bool(to.feishu_id)
        return True

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            verify=self._ssl,
            timeout=self.settings.timeout,
            follow_redirects=False,
            headers={"User-Agent": "safegw-notify"},
        )

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ------------------------------------------------------------------ formats
    def request(self, msg: Message, to: Recipient) -> tuple[str, bytes, dict[str, str]]:
        """(url, body, headers) of one message: the vendor's format and signature."""
        headers = {"Content-Type": "application/json; charset=utf-8"}
        url = self.url
        doc: dict[str, Any]
        if self.type == "wecom":
            assert isinstance(self.settings, WecomSettings)
            if self.settings.format == "markdown":
                doc = {
                    "msgtype": "markdown",
                    "markdown": {"content": clip_bytes(msg.text, WECOM_MARKDOWN_BYTES)},
                }
            else:
                doc = {"msgtype": "text", "text": {"content": clip_bytes(msg.text, WECOM_TEXT_BYTES)}}
                if to.wecom_id:
                    doc["text"]["mentioned_list"] = [to.wecom_id]
                if to.phone:
                    doc["text"]["mentioned_mobile_list"] = [to.phone]
        elif self.type == "dingtalk":
            doc = {
                "msgtype": "text",
                "text": {"content": msg.text[:TEXT_CHARS]},
                "at": {
                    "atMobiles": [to.phone] if to.phone else [],
                    "atUserIds": [to.dingtalk_id] if to.dingtalk_id else [],
                    "isAtAll": False,
                },
            }
            if self.secret:
                ts = int(self.clock() * 1000)
                url = f"{url}{'&' if '?' in url else '?'}timestamp={ts}&sign={dingtalk_sign(ts, self.secret)}"
        elif self.type == "feishu":
            text = msg.text[:TEXT_CHARS]
            if to.feishu_id:
                text += f' <at user_id="{to.feishu_id}">{to.name}</at>'
            doc = {"msg_type": "text", "content": {"text": text}}
            if self.secret:
                ts = int(self.clock())
                doc = {"timestamp": str(ts), "sign": feishu_sign(ts, self.secret), **doc}
        else:
            doc = {
                "key": msg.key,
                "kind": msg.kind,
                "subject": msg.subject,
                "text": msg.text,
                "short": msg.short,
                "locale": msg.locale,
                "code": msg.code,
                "link": msg.link,
                "recipient": to.name,
                "fields": msg.fields,
            }
        body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
        if self.type == "webhook" and self.secret:
            assert isinstance(self.settings, WebhookSettings)
            now_s = str(int(self.clock()))
            headers["X-Safegw-Timestamp"] = now_s
            headers[self.settings.signature_header] = webhook_sign(now_s, body, self.secret)
        return url, body, headers

    # ------------------------------------------------------------------ sending
    async def send(self, msg: Message, to: Recipient) -> SendResult:
        if self._client is None:
            await self.start()
        assert self._client is not None
        url, body, headers = self.request(msg, to)
        t0 = time.monotonic()
        sent = False
        try:
            req = self._client.build_request("POST", url, content=body, headers=headers)
            resp = await self._client.send(req, stream=True)
            sent = True
            try:
                answer = b""
                async for chunk in resp.aiter_bytes():
                    answer += chunk
                    if len(answer) > MAX_ANSWER:
                        break
            finally:
                await resp.aclose()
        except httpx.TimeoutException as e:
            ambiguous = not isinstance(e, httpx.ConnectTimeout | httpx.PoolTimeout)
            return self._fail(
                f"timeout after {self.settings.timeout:g}s ({type(e).__name__})",
                t0,
                retry=True,
                ambiguous=ambiguous,
            )
        except httpx.HTTPError as e:
            return self._fail(
                f"{type(e).__name__}: {str(e)[:200] or 'connection failed'}", t0, retry=True, ambiguous=sent
            )
        return self._judge(resp.status_code, answer[:MAX_ANSWER], t0)

    def _judge(self, status: int, answer: bytes, t0: float) -> SendResult:
        if status == 429 or status >= 500:
            return self._fail(f"HTTP {status}", t0, retry=True)
        if not 200 <= status < 300:
            return self._fail(f"HTTP {status}: {answer[:200].decode(errors='replace')}", t0, retry=False)
        if self.type == "webhook":
            return self._ok(f"HTTP {status}", t0)
        try:
            doc = json.loads(answer)
        except ValueError:
            return self._fail(
                f"HTTP {status}, answer not JSON: {answer[:100]!r}", t0, retry=True, ambiguous=True
            )
        code = doc.get("errcode", doc.get("code", doc.get("StatusCode"))) if isinstance(doc, dict) else None
        if code == 0:
            return self._ok(f"HTTP {status}, code 0", t0)
        msg = str(doc.get("errmsg", doc.get("msg", "")))[:200] if isinstance(doc, dict) else ""
        retry = isinstance(code, int) and code in RATE_CODES.get(self.type, set())
        return self._fail(f"HTTP {status}, code {code}: {msg}", t0, retry=retry)

    def _ok(self, detail: str, t0: float) -> SendResult:
        self.sent += 1
        self.last_error = None
        return SendResult(True, detail, time.monotonic() - t0)

    def _fail(self, detail: str, t0: float, *, retry: bool, ambiguous: bool = False) -> SendResult:
        self.failed += 1
        self.last_error = detail
        return SendResult(False, detail, time.monotonic() - t0, retry=retry, ambiguous=ambiguous)

    def stats(self) -> dict[str, Any]:
        return {"type": self.type, "sent": self.sent, "failed": self.failed, "last_error": self.last_error}


def _add_query(url: str, params: dict[str, str]) -> str:
    return f"{url}{'&' if '?' in url else '?'}{urllib.parse.urlencode(params)}"


def build_channel(
    settings: WecomSettings | DingtalkSettings | FeishuSettings | WebhookSettings, ctx: Any
) -> RobotChannel:
    return RobotChannel(settings, ctx.cfg.base_dir)
