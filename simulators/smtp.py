"""A real SMTP server (aiosmtpd) for the e-mail channel: STARTTLS required before AUTH
(or implicit TLS), AUTH PLAIN/LOGIN against one user, every accepted message kept.

aiosmtpd is a test dependency (pyproject's ``test`` extra). By hand:
``python -m simulators.smtp --user u --password p`` prints ``READY {"port": ..., "ca": ...}``
and logs each message.
"""

from __future__ import annotations

import argparse
import logging
import socket
import ssl
import sys
import tempfile
import threading
import warnings
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from simulators.tlscert import make_certs
from simulators.wire import by_hand

log = logging.getLogger(__name__)
# with implicit TLS (--tls) the whole session is TLS, but aiosmtpd only counts STARTTLS as
# TLS for AUTH and warns that AUTH is required without it: true only of the plain mode,
# which this simulator never serves
warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS", category=UserWarning)


class _Handler:
    def __init__(self, owner: SmtpServer):
        self.owner = owner

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        with self.owner.lock:
            self.owner.messages.append(
                {
                    "from": envelope.mail_from,
                    "to": list(envelope.rcpt_tos),
                    "msg": msg,
                    "user": getattr(session, "auth_data", None) and self.owner.user,
                    "tls": server.transport.get_extra_info("ssl_object") is not None,
                }
            )
        log.info("smtp: message to %s: %s", envelope.rcpt_tos, msg["Subject"])
        return "250 Message accepted for delivery"


class SmtpServer:
    """aiosmtpd on 127.0.0.1 (an ephemeral port), its own thread and loop."""

    def __init__(
        self,
        *,
        user: str = "alarm",
        password: str = "secret-pw",
        implicit_tls: bool = False,
        cert_dir: Path | None = None,
    ):
        self.user, self.password = user, password
        self._tmp = None if cert_dir else tempfile.TemporaryDirectory(prefix="smtp-sim-")
        self.ca, cert, key = make_certs(cert_dir or Path(self._tmp.name))  # type: ignore[union-attr]
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(cert, key)
        self.messages: list[dict[str, Any]] = []
        self.logins_refused = 0
        self.lock = threading.Lock()
        kw: dict[str, Any] = (
            {"ssl_context": self.tls} if implicit_tls else {"tls_context": self.tls, "require_starttls": True}
        )
        self.controller = Controller(
            _Handler(self),
            hostname="127.0.0.1",
            port=_free_port(),
            auth_required=True,
            auth_require_tls=not implicit_tls,  # implicit TLS: the whole session is TLS
            authenticator=self._auth,
            **kw,
        )

    def _auth(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == self.user
            and auth_data.password.decode() == self.password
        )
        if not ok:
            with self.lock:
                self.logins_refused += 1
        return AuthResult(success=ok, handled=False)

    def start(self) -> SmtpServer:
        self.controller.start()
        return self

    @property
    def port(self) -> int:
        return int(self.controller.port)

    def stop(self) -> None:
        self.controller.stop()
        if self._tmp is not None:
            self._tmp.cleanup()


def _free_port() -> int:
    """aiosmtpd's controller connects to its own port once started, so it needs a real one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulators.smtp")
    p.add_argument("--user", default="alarm")
    p.add_argument("--password", default="secret-pw")
    p.add_argument("--tls", action="store_true", help="implicit TLS (port 465 style) instead of STARTTLS")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    s = SmtpServer(user=args.user, password=args.password, implicit_tls=args.tls).start()
    return by_hand({"host": "127.0.0.1", "port": s.port, "ca": str(s.ca)}, s.stop)


if __name__ == "__main__":
    raise SystemExit(main())
