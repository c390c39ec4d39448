"""The ``regulators:`` service: one adapter per configured platform, each a journal
consumer with its own cursor (``regulator.<name>``), run side by side; ``stats`` shows
each under its name in /status and /metrics. Built by ``build_service``, which
``gateway.app.SERVICES`` names for the ``regulators`` section."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from gateway.core.config import resolve_path
from gateway.core.config_regulators import Hj212Adapter, MemIotAdapter
from gateway.core.secrets import read_secret
from gateway.services import DaemonContext
from northbound.base import PointMap
from northbound.hj212.adapter import Hj212Platform
from northbound.memiot.adapter import MemIotPlatform, hex_bytes

Adapter = Hj212Platform | MemIotPlatform

log = logging.getLogger(__name__)


class RegulatorsService:
    name = "regulators"

    def __init__(self, adapters: list[Adapter]):
        self.adapters = adapters

    async def start(self) -> None:
        for a in self.adapters:
            await a.start()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for a in self.adapters:
                tg.create_task(a.run(), name=f"regulator[{a.name}]")

    async def drain(self) -> None:
        """Wait (bounded by the caller) until every connected adapter has sent what it can:
        the newest real-time window and period stay open until newer samples close them,
        and go out after the restart."""
        await asyncio.gather(*(a.idle.wait() for a in self.adapters if a.stats_.connected))

    async def stop(self) -> None:
        for a in reversed(self.adapters):
            await a.stop()

    def stats(self) -> dict[str, Any]:
        return {a.name: a.stats() for a in self.adapters}


def build_service(ctx: DaemonContext,
                  section: list[Hj212Adapter | MemIotAdapter]) -> RegulatorsService | None:
    if not section:
        return None
    adapters: list[Adapter] = []
    for cfg in section:
        if isinstance(cfg, MemIotAdapter):
            adapters.append(_mem_iot(ctx, cfg))
            continue
        pw = cfg.password if cfg.password is not None else read_secret(cfg.password_file, ctx.cfg.base_dir)  # type: ignore[arg-type]
        points = PointMap(cfg.points, ctx.table)
        if points.unmapped:
            log.info("regulator %s: %d channel(s) not sent (no point mapping): %s", cfg.name,
                     len(points.unmapped), ", ".join(points.unmapped[:20])
                     + (" ..." if len(points.unmapped) > 20 else ""))
        adapters.append(Hj212Platform(cfg, ctx.journal, points, pw, ctx.state_dir, ctx.clock))
    return RegulatorsService(adapters)


def _mem_iot(ctx: DaemonContext, cfg: MemIotAdapter) -> MemIotPlatform:
    base = ctx.cfg.base_dir
    key = hex_bytes(read_secret(cfg.key_file, base), f"regulator {cfg.name}: key_file {cfg.key_file}")
    iv = hex_bytes(read_secret(cfg.iv_file, base), f"regulator {cfg.name}: iv_file {cfg.iv_file}")
    verify: ssl.SSLContext | bool = True
    if cfg.ca_file is not None:
        verify = ssl.create_default_context(cafile=str(resolve_path(cfg.ca_file, base)))
    points = PointMap(cfg.points, ctx.table)
    if points.unmapped:
        log.info("regulator %s: %d channel(s) not sent (no point mapping)", cfg.name, len(points.unmapped))
    return MemIotPlatform(cfg, ctx.journal, points, secret=read_secret(cfg.secret_file, base), key=key,
                          iv=iv, verify=verify)
