"""Shared harness for the sync / central tests (no tests of its own).

A *gateway side* here is a real journal plus the real uplink service (pull server or
push client over real HTTPS); the rest of the gateway (pollers, rules) is left out
so tests can feed the journal exactly. The object standing in for the Gateway only
carries what ``uplink.sync.build_service`` reads (cfg, state_dir, journal).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from central.config import CentralConfig
from central.node import CentralNode
from gateway.core.batch import Batch
from gateway.core.config import UplinkSection
from gateway.core.record import EVENT, SAMPLES
from gateway.store.journal import Journal
from uplink import keys
from uplink.sync import UplinkService

T0 = 1_764_000_000 * 10**9


def make_keys(state_dir: Path, node_id: str, pub_dir: Path) -> Path:
    """Key pairs for a node in its state dir; returns its public bundle file."""
    k = keys.load_or_none(state_dir) or keys.init(state_dir, node_id)
    pub = pub_dir / f"{node_id}.pub.yaml"
    keys.save_public(pub, k)
    return pub


def batch(i: int, n: int = 100, channels: int = 50) -> Batch:
    """Deterministic batch number ``i``: n samples over ``channels`` channels."""
    ch = np.arange(n, dtype=np.int32) % channels
    ts = T0 + i * 10**9 + (np.arange(n, dtype=np.int64) // channels) * 10**6
    # noisy like a real sensor at its resolution: it does not compress to nothing
    val = np.round(20 + np.random.default_rng(i).normal(0, 2, n), 2)
    return Batch.build(ch, ts, val, 0)


def alarm(i: int) -> dict[str, Any]:
    return {"type": "alarm", "ts": T0 + i * 10**9, "channel": "GT-1", "level": "h", "value": 30.5 + i}


class GatewaySide:
    """Journal + uplink service of one gateway."""

    def __init__(self, root: Path, gid: str, pub_dir: Path, central_pubs: list[Path], *, mode: str = "pull",
                 central_url: str | None = None, central_ca: Path | None = None, **uplink: Any):
        self.id = gid
        self.state_dir = root / gid
        self.pub = make_keys(self.state_dir, gid, pub_dir)
        self.journal = Journal(self.state_dir / "journal.db", sync="normal")
        sec = UplinkSection(mode=mode, listen="127.0.0.1:0", central_keys=central_pubs,
                            central_url=central_url, ca=central_ca, **uplink)
        cfg = SimpleNamespace(gateway=SimpleNamespace(id=gid), base_dir=root)
        self.gw = SimpleNamespace(cfg=cfg, state_dir=self.state_dir, journal=self.journal)
        self.svc = UplinkService(self.gw, sec)
        self.task: asyncio.Task[None] | None = None

    @property
    def cert(self) -> Path:
        return self.state_dir / "tls.crt"

    @property
    def port(self) -> int:
        assert self.svc.listener is not None
        return self.svc.listener.port

    async def start(self) -> GatewaySide:
        await self.svc.start()
        self.task = asyncio.create_task(self.svc.run(), name=f"uplink[{self.id}]")
        return self

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.svc.stop()
        self.journal.close()


def central_config(root: Path, nid: str, sources: list[dict[str, Any]], **extra: Any) -> CentralConfig:
    doc: dict[str, Any] = {"node": {"id": nid, "state_dir": str(root / nid)},
                           "listen": {"address": "127.0.0.1:0"}, "sources": sources}
    doc.update(extra)
    cfg = CentralConfig.model_validate(doc)
    cfg.base_dir = root
    return cfg


class CentralSide:
    def __init__(self, cfg: CentralConfig):
        self.cfg = cfg
        self.node = CentralNode(cfg)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> CentralSide:
        await self.node.start()
        self.task = asyncio.create_task(self.node.run(), name=f"central[{self.node.id}]")
        return self

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.node.port}"

    @property
    def cert(self) -> Path:
        return Path(self.cfg.node.state_dir) / "tls.crt"

    async def stop(self) -> None:
        self.node.stop()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
        await self.node.close()


def central_pub(root: Path, nid: str, pub_dir: Path) -> Path:
    """Make a central node's keys before it starts, so gateways can address it."""
    return make_keys(root / nid, nid, pub_dir)


def stored(node: CentralNode, origin: str) -> list[tuple[int, Any]]:
    """What a central node holds for an origin: (kind, payload) in storage order."""
    j = node.journals.get(origin)
    if j is None:
        return []
    out = []
    after = 0
    while True:
        recs = j.read_sync(after, 10_000)
        if not recs:
            return out
        for r in recs:
            out.append((r.kind, r.batch() if r.kind == SAMPLES else r.event()))
        after = recs[-1].seq


def sample_keys(items: list[tuple[int, Any]]) -> list[tuple[int, int]]:
    """(ts, channel) of every stored sample, in storage order."""
    out: list[tuple[int, int]] = []
    for kind, p in items:
        if kind == SAMPLES:
            out.extend(zip(p.ts.tolist(), p.channel.tolist(), strict=True))
    return out


def events_of(items: list[tuple[int, Any]]) -> list[dict[str, Any]]:
    return [p for kind, p in items if kind == EVENT]
