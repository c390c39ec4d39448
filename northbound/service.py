"""The ``regulators:`` service: one adapter per configured platform, each a journal
consumer with its own cursor (``regulator.<name>``), run side by side; ``stats`` shows
each under its name in /status and /metrics. Built by ``build_service``, which
``gateway.app.SERVICES`` names for the ``regulators`` section."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any

from gateway.core.config import resolve_path
from gateway.core.config_regulators import Hj212Adapter, MemIotAdapter, TemplateAdapter
from gateway.core.secrets import read_secret
from gateway.services import DaemonContext
from northbound.base import PointMap
from northbound.hj212.adapter import Hj212Platform
from northbound.memiot.adapter import MemIotPlatform, hex_bytes
from northbound.template.adapter import TemplatePublisher
from northbound.template.render import Sealer

Adapter = Hj212Platform | MemIotPlatform | TemplatePublisher

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
        await asyncio.gather(*(a.drain() if isinstance(a, TemplatePublisher) else a.idle.wait()
                               for a in self.adapters if a.stats_.connected))

    async def stop(self) -> None:
        for a in reversed(self.adapters):
            await a.stop()

    def stats(self) -> dict[str, Any]:
        return {a.name: a.stats() for a in self.adapters}


def build_service(ctx: DaemonContext,
                  section: list[Hj212Adapter | MemIotAdapter | TemplateAdapter]) -> RegulatorsService | None:
    if not section:
        return None
    adapters: list[Adapter] = []
    for cfg in section:
        if isinstance(cfg, MemIotAdapter):
            adapters.append(_mem_iot(ctx, cfg))
            continue
        if isinstance(cfg, TemplateAdapter):
            adapters.append(_template(ctx, cfg))
            continue
        pw = cfg.password if cfg.password is not None else read_secret(cfg.password_file, ctx.cfg.base_dir)  # type: ignore[arg-type]
        points = PointMap(cfg.points, ctx.table)
        if points.unmapped:
            log.info("regulator %s: %d channel(s) not sent (no point mapping): %s", cfg.name,
                     len(points.unmapped), ", ".join(points.unmapped[:20])
                     + (" ..." if len(points.unmapped) > 20 else ""))
        adapters.append(Hj212Platform(cfg, ctx.journal, points, pw, ctx.state_dir, ctx.clock,
                                      influx=ctx.influx_samples))
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


def _template(ctx: DaemonContext, cfg: TemplateAdapter) -> TemplatePublisher:
    base, cr = ctx.cfg.base_dir, cfg.crypto

    def hexfile(p: Path | None, what: str) -> bytes | None:
        if p is None:
            return None
        try:
            return bytes.fromhex(read_secret(p, base))
        except ValueError:
            raise ValueError(f"regulator {cfg.name}: {what} {p}: not hex digits") from None

    sign = read_secret(cr.sign_key_file, base).encode() if cr.sign_key_file is not None else None
    sealer = Sealer(cr, hexfile(cr.key_file, "key_file"), hexfile(cr.iv_file, "iv_file"), sign)
    pw = None
    m, h = cfg.mqtt, cfg.http
    if m is not None:
        pw = read_secret(m.password_file, base) if m.password_file is not None else None
        if m.ca_file is not None:
            m = m.model_copy(update={"ca_file": resolve_path(m.ca_file, base)})
            cfg = cfg.model_copy(update={"mqtt": m})
    if h is not None and h.ca_file is not None:
        cfg = cfg.model_copy(update={"http": h.model_copy(update={"ca_file": resolve_path(h.ca_file, base)})})
    names = [c.name for c in ctx.table.channels]
    # the point list's limits as the rules engine resolved them (a channel's preset: included);
    # northbound may not import rules/, the engine in the context already holds them
    mapped = {p.channel for p in cfg.points}
    limits = {r.name: {k: float(getattr(r, k)) for k in ("hh", "h", "l", "ll")}
              for r in ctx.rules.rules if r.name in mapped}
    return TemplatePublisher(cfg, ctx.journal, PointMap(cfg.points, ctx.table), names, sealer=sealer,
                             password=pw, table=ctx.table, state_dir=ctx.state_dir,
                             gateway_id=ctx.cfg.gateway.id, limits=limits)
