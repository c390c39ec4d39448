"""Runs a simulated plant: starts every device's server, feeds them values each tick.

A device server (one per configured device, class named by its model's ``server``)
has this shape::

    class Server:
        def __init__(self, model: SimDeviceBase, plant: Plant) -> None: ...
        async def start(self) -> dict[str, Any]   # serve; return its endpoint (JSON-able)
        async def update(self, t: float, values: dict[str, float]) -> None
                                                  # new values at t (s since start); apply
                                                  # plant.device_fault(name, t) etc. here
        async def stop(self) -> None              # must not raise

``Simulator.start()`` returns ``{device name: endpoint}`` once every server serves.
Control lines (JSON, one per line; ``python -m simulators --control`` reads them from
stdin) let a test drive faults without waiting for scripted ones::

    {"fault": "dev", "kind": "silent"|"exception"|"disconnect"|"restart", "unit": 2, "code": 4}
    {"clear": "dev", "unit": 2}
    {"set": "GT-101", "value": 55.0}        # "value": null releases it
    {"reset": true}                         # drop every forced fault and value
    {"device": "modem", ...}                # the device's own controls (simulators/modem.py)
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import time
from typing import Any

from simulators.config import SimConfig, SimDeviceBase
from simulators.scenario import Fault, Plant

log = logging.getLogger(__name__)


def server_class(model: SimDeviceBase) -> Any:
    module, _, cls = type(model).server.partition(":")
    return getattr(importlib.import_module(module), cls)


class Simulator:
    def __init__(self, cfg: SimConfig, *, plant: Plant | None = None):
        self.cfg = cfg
        self.plant = plant or Plant.from_config(cfg)
        self.servers = [server_class(m)(m, self.plant) for m in cfg.device_models]
        self.endpoints: dict[str, Any] = {}
        self.t0 = time.monotonic()
        self._stop = asyncio.Event()

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def start(self) -> dict[str, Any]:
        self.t0 = time.monotonic()
        values = self.plant.values(0.0)
        started = []
        try:
            for srv in self.servers:
                self.endpoints[srv.name] = await srv.start()
                started.append(srv)
                await srv.update(0.0, values)
        except BaseException:
            for srv in reversed(started):
                await srv.stop()
            raise
        return self.endpoints

    async def tick(self) -> None:
        t = self.now()
        values = self.plant.values(t)
        for srv in self.servers:
            await srv.update(t, values)

    async def run(self, seconds: float | None = None) -> None:
        """Tick until stop() or ``seconds`` elapsed."""
        loop = asyncio.get_running_loop()
        end = None if seconds is None else loop.time() + seconds
        next_tick = loop.time()
        while not self._stop.is_set():
            await self.tick()
            next_tick += self.cfg.tick
            now = loop.time()
            if next_tick < now:  # fell behind (slow machine): do not try to catch up
                next_tick = now + self.cfg.tick
            wait = next_tick - now
            if end is not None:
                if now >= end:
                    break
                wait = min(wait, end - now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):  # not wait_for: it can swallow a cancel in 3.11
                    await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        for srv in reversed(self.servers):
            await srv.stop()

    # ------------------------------------------------------------------ control
    def control(self, line: str) -> dict[str, Any]:
        """Apply one control line; returns {"ok": true} or {"error": ...}."""
        try:
            msg = json.loads(line)
            if "fault" in msg:
                unit = msg.get("unit")
                fault = Fault(msg["kind"], int(msg.get("code", 4)), unit)
                self.plant.force_fault(msg["fault"], fault, unit=unit)
            elif "clear" in msg:
                self.plant.force_fault(msg["clear"], None, unit=msg.get("unit"))
            elif "set" in msg:
                self.plant.force_value(msg["set"], msg.get("value"))
            elif "to" in msg or "device" in msg:  # a message for one server's own controls
                # (a platform: send a command; the modem: inject an SMS, ...)
                name = msg.get("to", msg.get("device"))
                srv = next((s for s in self.servers if s.name == name), None)
                if srv is None or not hasattr(srv, "control"):
                    return {"error": f"no server {name!r} that takes control messages"}
                out: dict[str, Any] = srv.control(msg)
                return out
            elif msg.get("reset"):
                self.plant.reset_overrides()
            else:
                return {"error": f"unknown control message: {line.strip()}"}
        except (ValueError, KeyError, TypeError) as e:
            return {"error": f"{type(e).__name__}: {e}"}
        # apply at once rather than at the next tick, so the caller sees it take effect
        return {"ok": True}
