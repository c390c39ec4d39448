"""Benchmark: the cost of one ``/metrics`` exposition through prometheus-client, against
the hand-written exposition it replaced (kept below, verbatim in what it does, as the
reference measured in the same run).

The same families are fed to both: per device, the six per-device families of
``gateway/admin/metrics.py`` (``--devices``, default 500) and per channel-like series
one more family (``--series``, default 5,000 samples with a label), as a large plant with
the regulators' and notify blocks would add. Each exposition is built ``--rounds`` times;
the medians are printed. It measures the exposition layer (what changed), not the
daemon's reductions over its arrays, which did not change.

Last line: one JSON object with ``median_ms`` (prometheus-client) and ``reference_ms``.

    .venv/bin/python bench/metrics.py [--devices 500] [--series 5000] [--rounds 30]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client.parser import text_string_to_metric_families

from gateway.admin.metrics import Exposition


class HandWritten:
    """The exposition before prometheus-client (gateway/admin/metrics.py at 9948768)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    @staticmethod
    def _esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    @staticmethod
    def _num(v: float) -> str:
        if isinstance(v, bool):
            return "1" if v else "0"
        if isinstance(v, int):
            return str(v)
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "+Inf" if v > 0 else "-Inf"
        return repr(float(v))

    def family(self, name: str, kind: str, help_: str,
               samples: Iterable[tuple[dict[str, str], float]] | float) -> None:
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")
        if isinstance(samples, int | float):
            samples = [({}, samples)]
        for labels, value in samples:
            if labels:
                lab = ",".join(f'{k}="{self._esc(str(v))}"' for k, v in labels.items())
                self.lines.append(f"{name}{{{lab}}} {self._num(value)}")
            else:
                self.lines.append(f"{name} {self._num(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def build(e: Exposition | HandWritten, devices: int, series: int) -> str:
    names = [f"plc-{i:04d}" for i in range(devices)]
    e.family("safegw_up", "gauge", "1 while the gateway runs", 1)
    for fam in ("polls", "errors", "overruns", "samples"):
        e.family(f"safegw_device_{fam}_total", "counter", f"{fam} per device",
                 [({"device": n}, i * 7 + 3) for i, n in enumerate(names)])
    e.family("safegw_device_up", "gauge", "1 when the device answers",
             [({"device": n, "protocol": "modbus-tcp"}, i % 2) for i, n in enumerate(names)])
    e.family("safegw_device_last_poll_seconds", "gauge", "duration of the last poll",
             [({"device": n}, 0.0123 * (i + 1)) for i, n in enumerate(names)])
    e.family("safegw_regulator_messages_sent_total", "counter", "messages per adapter and channel",
             [({"adapter": f"hj212-{i % 4}", "channel": f"GT-{i}"}, float(i)) for i in range(series)])
    return e.text()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=500)
    ap.add_argument("--series", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=30)
    a = ap.parse_args()
    new_text = build(Exposition(), a.devices, a.series)
    old_text = build(HandWritten(), a.devices, a.series)
    # the same samples, read back by the client library's parser (not a timing, a sanity check)
    def samples(t: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(t) for s in f.samples}
    assert samples(new_text) == samples(old_text), "the two expositions differ"
    times: dict[str, list[float]] = {"new": [], "old": []}
    for _ in range(a.rounds):  # interleaved, so load on the machine hits both alike
        for key, cls in (("new", Exposition), ("old", HandWritten)):
            t0 = time.perf_counter()
            build(cls(), a.devices, a.series)
            times[key].append((time.perf_counter() - t0) * 1e3)
    new, old = statistics.median(times["new"]), statistics.median(times["old"])
    print(f"{a.devices} devices, {a.series} extra series, {len(new_text.splitlines())} lines, "
          f"{len(new_text)} bytes; {a.rounds} rounds")
    print(f"prometheus-client: median {new:.2f} ms; hand-written reference: median {old:.2f} ms")
    print(json.dumps({"bench": "metrics", "median_ms": round(new, 3), "reference_ms": round(old, 3),
                      "ratio": round(new / old, 2), "lines": len(new_text.splitlines()),
                      "devices": a.devices, "series": a.series, "rounds": a.rounds}))


if __name__ == "__main__":
    main()
