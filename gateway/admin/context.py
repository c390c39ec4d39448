"""What the admin API's routers share: the daemon, the register store, the users, the
live and alarm views, and the request helpers (audit detail)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ConfigDict, field_validator

from gateway.admin.registers import RegisterStore
from gateway.admin.registers.schema import unicode_ok
from gateway.admin.reminders import RegisterService
from gateway.admin.views import AlarmsView, ChannelView
from gateway.core.tokens import FailureLimiter, UserStore
from gateway.services import DaemonContext

T = TypeVar("T")


async def _nothing_pending() -> None:
    """The audit flush before the audit middleware is built."""


class StrictBody(BaseModel):
    """A request body that refuses unknown fields (a typo must not pass silently) and
    text that is not Unicode (JSON can write a lone surrogate; SQLite cannot store it)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _unicode(cls, v: Any) -> Any:
        if isinstance(v, str) and not unicode_ok(v):
            raise ValueError("not valid Unicode text (holds a lone surrogate)")
        return v


@dataclass
class AdminContext:
    daemon: DaemonContext
    registers: RegisterService
    users: UserStore
    channels: ChannelView
    alarms: AlarmsView
    limiter: FailureLimiter = field(default_factory=lambda: FailureLimiter(10, 300.0, 300.0))
    #: responses by status class (2xx, 4xx, ...), for /status and /metrics
    requests: dict[str, int] = field(default_factory=dict)
    #: token checks run at once (each is a slow hash): more wait, so guessing stays slow
    verify_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))
    #: writes the audit rows still pending (set by the audit middleware)
    flush_audit: Callable[[], Awaitable[None]] = field(default=_nothing_pending)

    @property
    def store(self) -> RegisterStore:
        return self.registers.store

    def emit(self, events: list[dict[str, Any]]) -> None:
        if events:
            self.daemon.emit_events(events)

    async def call(self, fn: Callable[..., T], *a: Any, **kw: Any) -> T:
        """A register store method on the store's own thread."""
        return await self.store.call(fn, *a, **kw)

    @staticmethod
    def audit(request: Request, **detail: Any) -> None:
        """Detail for this request's audit record (written by the audit middleware)."""
        request.scope.setdefault("state", {}).setdefault("audit", {}).update(detail)
