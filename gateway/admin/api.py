"""The admin API and the local status page (FastAPI, served by uvicorn inside the daemon).

uvicorn runs in the gateway's own event loop as one of its services: ``start()`` binds
the listening socket (127.0.0.1:8080 by default, TLS when ``tls_cert``/``tls_key`` are
set), ``run()`` runs the register store's reminders until cancelled, ``stop()`` closes the server.
uvicorn's own signal handling and logging setup are left out: the daemon owns both.

``/health`` and the page's static files are open; everything else needs a bearer token
(gateway/admin/auth.py) with a role: viewer reads, operator acknowledges and shelves
alarms and edits registers, admin manages users and reads the audit trail. Every write
(any method other than GET/HEAD/OPTIONS, allowed or not) is recorded in the audit trail
with who, what, and the outcome. Bad input gets a 4xx naming the field and the reason.

The routes live in gateway/admin/routes/, one router per area, each built from the one
``AdminContext`` (gateway/admin/context.py); this module builds the app around them
(middleware, error handlers, offline docs) and runs it as the ``api`` service.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from gateway import __version__
from gateway.admin.auditing import AuditMiddleware
from gateway.admin.context import AdminContext
from gateway.admin.registers import Conflict, Invalid, NotFound, Refused
from gateway.admin.reminders import RegisterService
from gateway.admin.routes import (
    alarms,
    config,
    gateway,
    history,
    live,
    page,
    permits,
    registers,
    reports,
    users,
)
from gateway.admin.views import AlarmsView, ChannelView
from gateway.core.config import ApiSection, RegistersSection
from gateway.core.httplimits import BodyLimit, uvicorn_limits
from gateway.core.tokens import FailureLimiter, UserStore
from gateway.core.units import parse_listen
from gateway.services import DaemonContext

log = logging.getLogger(__name__)

def _shown(x: Any) -> Any:
    """Text as it can be sent back: a lone surrogate (from a JSON escape) shown escaped."""
    return x.encode("utf-8", "backslashreplace").decode() if isinstance(x, str) else x


def _errors(errs: list[tuple[tuple[str | int, ...], str]]) -> list[dict[str, Any]]:
    return [{"loc": [_shown(x) for x in loc], "msg": _shown(msg), "type": "value_error"} for loc, msg in errs]


def _offline_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from files shipped with the package: a plant network is often
    offline, and FastAPI's default page loads its scripts from a CDN."""
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def _docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title="safegw admin API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
        )


def create_app(ctx: AdminContext, *, docs: bool = True, max_body: int = 2**20, max_import: int = 10 * 2**20,
               max_attachment: int = 20 * 10**6, language: str = "en") -> FastAPI:
    app = FastAPI(
        title="safegw admin API",
        version=__version__,
        description="Live values, alarms, history and the safety management registers (台账) of one gateway.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.admin = ctx  # the auth dependencies find the users and the lockout here
    if docs:
        _offline_docs(app)
    # bodies are bounded as they arrive, before a token is checked or JSON parsed; inside
    # the audit middleware (added after it, so it wraps it), so a refused write is recorded
    app.add_middleware(
        BodyLimit, default=max_body,  # type: ignore[arg-type]
        routes=[("POST", r"/registers/[a-z0-9_]+/[0-9]+/attachments", max_attachment),
                ("POST", r"/registers/[a-z0-9_]+/import", max_import)])
    app.add_middleware(AuditMiddleware, ctx=ctx)  # type: ignore[arg-type]

    # ---------------------------------------------------------------- errors
    @app.exception_handler(Invalid)
    async def _invalid(_r: Request, e: Invalid) -> JSONResponse:
        return JSONResponse({"detail": _errors(e.errors)}, status_code=422)

    @app.exception_handler(NotFound)
    async def _nf(_r: Request, e: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=404)

    @app.exception_handler(Refused)
    async def _refused(_r: Request, e: Refused) -> JSONResponse:
        # a permit's step refused on its gas analysis: the readings, for the page to show
        return JSONResponse({"detail": str(e), "analysis": e.analysis}, status_code=409)

    @app.exception_handler(Conflict)
    async def _conflict(_r: Request, e: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=409)

    @app.exception_handler(RequestValidationError)
    async def _rve(_r: Request, e: RequestValidationError) -> JSONResponse:
        # FastAPI's default, without echoing the input back (it could be large or private)
        return JSONResponse(
            {
                "detail": [
                    {
                        "loc": [_shown(y) for y in x.get("loc", ())],
                        "msg": _shown(x.get("msg", "")),
                        "type": x.get("type", "value_error"),
                    }
                    for x in e.errors()
                ]
            },
            status_code=422,
        )

    for make in (gateway.router, live.router, alarms.router, history.router, registers.router, permits.router,
                 users.router, config.router, reports.router):
        app.include_router(make(ctx))
    gw = ctx.daemon.cfg.gateway
    app.include_router(page.router({"language": language, "timezone": gw.timezone, "gateway": gw.id}))
    return app


class ApiService:
    """uvicorn in the daemon's loop; the register store's service (reminders) runs beside it."""

    name = "api"

    def __init__(self, daemon: DaemonContext, section: ApiSection, registers: RegistersSection):
        self.daemon = daemon
        self.section = section
        base = daemon.cfg.base_dir
        # the API owns the register store's service: it runs its reminders and stops it
        # after the server, so no request meets a closed store
        self.registers = RegisterService(daemon, registers)
        users_file = section.users_file or daemon.state_dir / "users.json"
        if not users_file.is_absolute():
            users_file = base / users_file
        self.users = UserStore(users_file)
        if (section.tls_cert is None) != (section.tls_key is None):
            raise RuntimeError("api: give both tls_cert and tls_key for TLS, or neither")
        self.ctx = AdminContext(
            daemon=daemon,
            registers=self.registers,
            users=self.users,
            channels=ChannelView(daemon.table),
            alarms=AlarmsView(daemon.rules, max_shelve_s=daemon.cfg.alarms.max_shelve),
            limiter=FailureLimiter(section.max_failures, section.failure_window, section.lockout),
        )
        self.app = create_app(self.ctx, docs=section.docs, max_body=section.max_body,
                              max_import=section.max_import, max_attachment=registers.max_attachment,
                              language=section.language)
        self.server: Any = None
        self.port: int | None = None
        self.url: str | None = None
        self._sock: socket.socket | None = None

    def on_reload(self) -> None:
        """A live reload swapped the daemon's table and rules: the views follow them."""
        self.ctx.channels = ChannelView(self.daemon.table)
        self.ctx.alarms = AlarmsView(self.daemon.rules, max_shelve_s=self.daemon.cfg.alarms.max_shelve)

    async def start(self) -> None:
        import uvicorn

        host, port = parse_listen(self.section.listen)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
            family, _t, proto, _c, addr = infos[0]
            # proto must be IPPROTO_TCP (socket.create_server leaves 0): asyncio only sets
            # TCP_NODELAY on accepted sockets whose proto says TCP, and without it every
            # keep-alive response waits ~40 ms for a delayed ACK
            sock = socket.socket(family, socket.SOCK_STREAM, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                sock.bind(addr)
                sock.listen(256)
            except OSError:
                sock.close()
                raise
        except OSError as e:
            raise RuntimeError(f"api: cannot listen on {self.section.listen}: {e.strerror or e}") from None
        sock.set_inheritable(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        base = self.daemon.cfg.base_dir

        def p(x: Path | None) -> str | None:
            return None if x is None else str(x if x.is_absolute() else base / x)

        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            ssl_certfile=p(self.section.tls_cert),
            ssl_keyfile=p(self.section.tls_key),
            server_header=False,
            date_header=True,
            timeout_graceful_shutdown=2,
            **uvicorn_limits(trusted_proxies=self.section.trusted_proxies,
                             header_timeout_s=self.section.header_timeout),
        )
        config.load()
        self.server = uvicorn.Server(config)
        self.server.lifespan = config.lifespan_class(config)
        await self.server.startup(sockets=[sock])
        await self.server.on_tick(0)  # sets the default headers
        scheme = "https" if self.section.tls_cert else "http"
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{scheme}://{shown}:{self.port}"
        log.info("admin API on %s (%d register types)", self.url, len(self.registers.store.types))

    async def run(self) -> None:
        """Checks register due dates until cancelled; the server runs meanwhile."""
        await self.registers.run()

    async def drain(self) -> None:
        """Nothing to deliver: the API reads the journal, it does not consume it."""

    async def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            with contextlib.suppress(OSError, RuntimeError):
                await self.server.shutdown(sockets=[self._sock] if self._sock else None)
            self.server = None
            await self.ctx.flush_audit()  # the counts of unauthenticated writes not yet recorded
        await self.registers.stop()
        log.info("admin API stopped")

    def stats(self) -> dict[str, Any]:
        return {"url": self.url, "requests": dict(self.ctx.requests), "reminders": self.registers.reminders}


def build_service(ctx: DaemonContext, section: ApiSection) -> ApiService:
    return ApiService(ctx, section, ctx.cfg.registers or RegistersSection())
