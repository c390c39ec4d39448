"""Benchmark: the cost of showing readings as a person reads them (gateway/core/display.py).

The admin API's ``/channels`` renders every changed reading before it encodes it
(gateway/admin/views.py ``ChannelView._refresh_heads``), MQTT's ``values`` every reading.
This measures, for ``--channels`` readings of a realistic mix (half float32 registers,
a third scaled integers, the rest of unknown wire type), the time of

- ``render``: ``DisplayTable.values`` over all of them;
- ``encode`` (the reference, measured in the same run): what ``_refresh_heads`` already
  paid for them before rendering existed, the C JSON encoder over the list of floats.

Each figure is the median of ``--repeat`` runs. The target is that rendering costs no
more than encoding (``render_over_encode`` ≤ 1.0), so /channels stays within its bench
(bench/api.py). Last line: one JSON object.

    .venv/bin/python bench/display.py [--channels 10000] [--repeat 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.core.config import ModbusChannel, OpcUaChannel
from gateway.core.display import DisplayTable


def make(n: int, rng: np.random.Generator) -> tuple[DisplayTable, np.ndarray]:
    specs: list[ModbusChannel | OpcUaChannel] = []
    vals = np.empty(n)
    for i in range(n):
        k = i % 6
        if k < 3:
            specs.append(ModbusChannel(name=f"F{i}", kind="other", address="holding:0", type="float32"))
            vals[i] = float(np.float32(rng.uniform(0, 100)))
        elif k < 5:
            specs.append(ModbusChannel(name=f"I{i}", kind="other", address="input:0", type="int16",
                                       scale=0.1 if k == 3 else 0.01))
            vals[i] = int(rng.integers(0, 10000)) * (0.1 if k == 3 else 0.01)
        else:
            specs.append(OpcUaChannel(name=f"U{i}", kind="other", node=f"ns=2;i={i}"))
            vals[i] = rng.uniform(0, 100)
    return DisplayTable(specs), vals


def median_ms(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=50)
    a = ap.parse_args()
    rng = np.random.default_rng(1)
    table, vals = make(a.channels, rng)
    idx = np.arange(a.channels)
    render = median_ms(lambda: table.values(idx, vals), a.repeat)
    encode = median_ms(lambda: json.dumps(vals.tolist()), a.repeat)
    both = median_ms(lambda: json.dumps(table.values(idx, vals).tolist()), a.repeat)
    fig = {"channels": a.channels, "render_ms": round(render, 3), "encode_ms": round(encode, 3),
           "render_and_encode_ms": round(both, 3), "render_over_encode": round(render / encode, 2),
           "render_us_per_channel": round(render * 1e3 / a.channels, 3), "repeat": a.repeat}
    print(f"{a.channels} readings: render {render:.2f} ms, encode (reference) {encode:.2f} ms, "
          f"both {both:.2f} ms (medians of {a.repeat})")
    print(json.dumps(fig))


if __name__ == "__main__":
    main()
