"""``safegw read``: poll every device once and show what each channel reads.

The first thing an engineer runs on site (what ``telegraf --test`` is for Telegraf):
it opens each configured device with the same driver the daemon uses, polls it once
(for streaming drivers: waits for a first value of every channel, within a deadline),
and prints one line per channel (value, unit, quality and its cause) followed by what
went wrong per device: a device that cannot be reached, a register or node that does
not exist (named), a unit on an RS-485 line that does not answer. Nothing is
journaled. Exit status 0 when every device answered for every channel, 1 otherwise.

A Modbus merged read refused with "illegal data address" makes the driver split it
(``replanned``); ``read`` then polls once more, so that only the missing register is
bad and named, as the daemon does from its second poll. An out-of-range channel shows
the value it read (the journal records NaN for it, docs/modbus.md).

Drivers may expose ``errors: dict[str, str]`` (what → why, from the last poll; the
Modbus drivers do) or ``info["channel_errors"]`` (channel name → why; OPC-UA) for the
detail lines.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from drivers.base import DeviceUnavailable, Driver, make_driver
from gateway.core import display
from gateway.core.aio import within
from gateway.core.batch import Batch, Quality, quality_label
from gateway.core.channels import ChannelInfo, ChannelTable
from gateway.core.cliutil import display_width, fit
from gateway.core.config import Config


@dataclass
class DeviceResult:
    name: str
    protocol: str
    error: str | None = None
    details: dict[str, str] = field(default_factory=dict)
    value: dict[int, float] = field(default_factory=dict)
    quality: dict[int, int] = field(default_factory=dict)
    elapsed_ms: float = 0.0
    scale_overflows: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.details and all(
            q < Quality.BAD or q == Quality.OUT_OF_RANGE for q in self.quality.values())


def _take(res: DeviceResult, batch: Batch) -> None:
    for ch, v, q in zip(batch.channel.tolist(), batch.value.tolist(), batch.quality.tolist(), strict=True):
        # a streaming driver may send a bad sample before a good one: keep the best news
        if ch not in res.quality or q < Quality.BAD or res.quality[ch] >= Quality.BAD:
            res.value[ch], res.quality[ch] = v, q


async def _read_device(dev: Any, channels: list[ChannelInfo], base_dir: Path) -> DeviceResult:
    res = DeviceResult(dev.name, dev.protocol)
    t0 = time.monotonic()
    try:
        drv: Driver = make_driver(dev, channels, base_dir=base_dir)
    except (ImportError, ValueError) as e:
        res.error = f"no driver: {e}"
        return res
    budget = max(dev.timeout * (dev.retries + 1), 1.0) + 5.0
    missing_cause: int = Quality.NO_DATA
    try:
        await within(drv.open(), budget)
        if drv.streaming:
            await _stream_once(drv, res, budget)
        else:
            poll_budget = getattr(drv, "poll_budget_s", None) or budget + dev.poll
            batch = await within(drv.poll(), poll_budget)
            if getattr(drv, "replanned", False):
                batch = await within(drv.poll(), poll_budget)
            _take(res, batch)
            _show_out_of_range(res, drv)
    except DeviceUnavailable as e:
        res.error = f"{e} ({quality_label(e.cause)})"
        missing_cause = e.cause
    except TimeoutError:
        res.error = f"no answer within {budget:g}s"
        missing_cause = Quality.TIMEOUT
    except OSError as e:
        res.error = f"{type(e).__name__}: {e}"
        missing_cause = Quality.COMMS
    finally:
        res.details.update(getattr(drv, "errors", None) or {})
        for ch, why in (drv.info.get("channel_errors") or {}).items():
            res.details[f"channel {ch}"] = str(why)
        res.scale_overflows = int(drv.info.get("scale_overflows", 0))
        await drv.close()
    for c in channels:
        if c.index not in res.quality:
            res.value[c.index], res.quality[c.index] = math.nan, missing_cause
    res.elapsed_ms = (time.monotonic() - t0) * 1e3
    return res


def _show_out_of_range(res: DeviceResult, drv: Driver) -> None:
    """Out-of-range channels show the value read (the batch carries NaN for bad samples)."""
    shown = getattr(drv, "last_values", None)
    if shown is None:
        return
    for ch, v in zip(np.asarray(drv.indexes).tolist(), np.asarray(shown).tolist(), strict=True):
        if res.quality.get(ch) == Quality.OUT_OF_RANGE:
            res.value[ch] = v


async def _stream_once(drv: Driver, res: DeviceResult, deadline_s: float) -> None:
    """Run a streaming driver until every channel has a good value (or one that cannot come:
    a node the server does not have), or the deadline."""
    wanted = {int(i) for i in np.asarray(drv.indexes)}
    done = asyncio.Event()

    def settled(q: int) -> bool:
        return q < Quality.BAD or q == Quality.CONFIG

    def sink(batch: Batch) -> None:
        _take(res, batch)
        if all(settled(res.quality.get(i, Quality.NO_DATA)) for i in wanted):
            done.set()

    task = asyncio.create_task(drv.stream(sink), name=f"read[{drv.name}]")
    waiter = asyncio.create_task(done.wait())
    try:
        await asyncio.wait({task, waiter}, timeout=deadline_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, waiter):
            t.cancel()
        results = await asyncio.gather(task, waiter, return_exceptions=True)
    err = results[0]
    if isinstance(err, DeviceUnavailable | OSError):
        raise err
    missing = sorted(i for i in wanted if res.quality.get(i, Quality.NO_DATA) >= Quality.BAD)
    if missing and not done.is_set() and not res.quality:
        res.error = f"no data within {deadline_s:g}s"


def quality_text(code: int) -> str:
    """``good``, or the class with its cause: ``bad: timeout``, ``uncertain: calibrating``."""
    if code < Quality.UNCERTAIN:
        return "good"
    cls = "bad" if code >= Quality.BAD else "uncertain"
    label = quality_label(code)
    return cls if label == cls else f"{cls}: {label}"


def _fmt_value(v: float, spec: Any) -> str:
    """As a person reads it: a float32 at its shortest form, a scaled integer at its
    resolution (gateway/core/display.py)."""
    return display.text(display.rendering_of(spec).value(v))


def print_table(table: ChannelTable, results: list[DeviceResult], out: TextIO) -> None:
    rows = [("CHANNEL", "DEVICE", "KIND", "VALUE", "UNIT", "QUALITY")]
    for res in results:
        for idx in sorted(res.quality):
            c = table[idx]
            rows.append((c.name, c.device, c.kind, _fmt_value(res.value[idx], c.spec), c.unit,
                         quality_text(res.quality[idx])))
    widths = [max(display_width(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(fit(s, w, right=i == 3) for i, (s, w) in enumerate(zip(r, widths, strict=True)))
                  .rstrip())
        out.write("\n")
    problems = [r for r in results if not r.ok]
    if problems:
        out.write("\n")
    for res in results:
        if res.error:
            out.write(f"device {res.name}: FAILED: {res.error}\n")
        for what, why in res.details.items():
            out.write(f"device {res.name}: {what}: {why}\n")
        if not res.error and not res.details and not res.ok:
            bad = [table[i].name for i, q in res.quality.items()
                   if q >= Quality.BAD and q != Quality.OUT_OF_RANGE]
            out.write(f"device {res.name}: bad channels: {', '.join(bad)}\n")
    n_ok = sum(r.ok for r in results)
    out.write(f"\n{n_ok}/{len(results)} devices ok\n")


def as_dict(table: ChannelTable, results: list[DeviceResult]) -> dict[str, Any]:
    chans = []
    for res in results:
        for idx in sorted(res.quality):
            c = table[idx]
            v = display.rendering_of(c.spec).value(res.value[idx])
            chans.append({"name": c.name, "device": c.device, "kind": c.kind, "unit": c.unit,
                          "value": v, "quality": quality_text(res.quality[idx]),
                          "quality_code": res.quality[idx]})
    devices = {r.name: {"protocol": r.protocol, "ok": r.ok, "error": r.error, "errors": r.details,
                        "elapsed_ms": round(r.elapsed_ms, 1), "scale_overflows": r.scale_overflows}
               for r in results}
    return {"ok": all(r.ok for r in results), "channels": chans, "devices": devices}


async def read_once(cfg: Config, device: str | None = None, as_json: bool = False,
                    out: TextIO | None = None) -> int:
    """Poll each (or one) device once and print the result. Returns the exit code."""
    out = out or sys.stdout
    table = ChannelTable.from_config(cfg)
    devices = [d for d in cfg.devices if device is None or d.name == device]
    if device is not None and not devices:
        known = ", ".join(d.name for d in cfg.devices) or "none"
        print(f"no device named {device!r}; configured: {known}", file=sys.stderr)
        return 1
    skipped = [d.name for d in devices if not d.enabled and device is None]
    devices = [d for d in devices if d.enabled or device is not None]
    results = list(await asyncio.gather(*(_read_device(d, table.by_device.get(d.name, []), cfg.base_dir)
                                          for d in devices)))
    if as_json:
        doc = as_dict(table, results)
        doc["skipped"] = skipped
        out.write(json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
    else:
        print_table(table, results, out)
        for name in skipped:
            out.write(f"device {name}: disabled (skipped)\n")
    return 0 if all(r.ok for r in results) else 1
