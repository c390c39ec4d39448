"""E-mail over SMTP: STARTTLS (port 587), implicit TLS (465) or plain (25, inside a plant
network only), with login. The stdlib's ``smtplib`` runs in a thread, one connection
per message (alarms are rare; a kept-open connection would time out between them).

A refused login, a refused recipient or any other 5xx answer is final; a 4xx answer,
a refused or dropped connection and a timeout are worth retrying. A connection lost
after the DATA phase began is *ambiguous*: the server may have taken the message.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from gateway.core.config import resolve_path
from gateway.core.config_notify import EmailSettings
from gateway.core.secrets import read_secret
from gateway.notify.base import Message, Recipient, SendResult

DEFAULT_PORT = {"starttls": 587, "tls": 465, "none": 25}


class EmailChannel:
    type = "email"

    def __init__(self, settings: EmailSettings, base_dir: Any):
        self.settings = settings
        self.name = settings.name
        self.port = settings.port or DEFAULT_PORT[settings.security]
        self.password = read_secret(settings.password_file, base_dir) if settings.password_file else None
        ca = resolve_path(settings.ca_file, base_dir) if settings.ca_file else None
        self._ssl = ssl.create_default_context(cafile=str(ca) if ca else None)
        self.sent = 0
        self.failed = 0
        self.last_error: str | None = None

    def accepts(self, to: Recipient) -> bool:
        return bool(to.email)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def compose(self, msg: Message, to: Recipient) -> EmailMessage:
        m = EmailMessage()
        m["From"] = self.settings.sender
        m["To"] = to.email or ""
        m["Subject"] = msg.subject
        m["Date"] = formatdate(localtime=True)
        m["Message-ID"] = make_msgid(domain=self.settings.sender.rpartition("@")[2])
        m["X-Safegw-Key"] = msg.key
        body = msg.text + (f"\n\n{msg.link}" if msg.link and msg.link not in msg.text else "")
        m.set_content(body, charset="utf-8")
        return m

    def _send_sync(self, m: EmailMessage) -> str:
        s = self.settings
        t = s.timeout
        smtp: smtplib.SMTP
        if s.security == "tls":
            smtp = smtplib.SMTP_SSL(s.host, self.port, timeout=t, context=self._ssl)
        else:
            smtp = smtplib.SMTP(s.host, self.port, timeout=t)
        try:
            smtp.ehlo()
            if s.security == "starttls":
                smtp.starttls(context=self._ssl)
                smtp.ehlo()
            if s.username:
                smtp.login(s.username, self.password or "")
            refused = smtp.send_message(m)
            if refused:
                raise smtplib.SMTPRecipientsRefused(refused)  # type: ignore[arg-type]
            return "250 accepted"
        finally:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()

    async def send(self, msg: Message, to: Recipient) -> SendResult:
        t0 = time.monotonic()
        if not to.email:
            return self._done(False, f"{to.name} has no e-mail address", t0)
        try:
            detail = await asyncio.to_thread(self._send_sync, self.compose(msg, to))
        except smtplib.SMTPAuthenticationError as e:
            return self._done(False, f"login refused: {e.smtp_code} {_text(e.smtp_error)}", t0)
        except smtplib.SMTPNotSupportedError as e:  # no AUTH (or no STARTTLS) offered: the config's to fix
            return self._done(False, f"server does not support it: {e}", t0)
        except smtplib.SMTPRecipientsRefused as e:
            return self._done(False, f"recipient refused: {_text(str(e.recipients))}", t0)
        except smtplib.SMTPResponseException as e:
            return self._done(
                False, f"{e.smtp_code} {_text(e.smtp_error)}", t0, retry=400 <= e.smtp_code < 500
            )
        except smtplib.SMTPServerDisconnected as e:
            return self._done(False, f"disconnected: {e}", t0, retry=True, ambiguous=True)
        except (TimeoutError, smtplib.SMTPException, OSError, ssl.SSLError) as e:
            return self._done(False, f"{type(e).__name__}: {str(e)[:200]}", t0, retry=True)
        return self._done(True, detail, t0)

    def _done(
        self, ok: bool, detail: str, t0: float, *, retry: bool = False, ambiguous: bool = False
    ) -> SendResult:
        if ok:
            self.sent += 1
            self.last_error = None
        else:
            self.failed += 1
            self.last_error = detail
        return SendResult(ok, detail, time.monotonic() - t0, retry=retry, ambiguous=ambiguous)

    def stats(self) -> dict[str, Any]:
        return {"type": self.type, "sent": self.sent, "failed": self.failed, "last_error": self.last_error}


def _text(v: Any) -> str:
    s = v.decode(errors="replace") if isinstance(v, bytes) else str(v)
    return s[:200]


def build_channel(settings: EmailSettings, ctx: Any) -> EmailChannel:
    return EmailChannel(settings, ctx.cfg.base_dir)
