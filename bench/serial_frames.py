"""Serial frame parser throughput: frames/s of 40-byte instrument lines, framing + checks + values.

The parser is pure (drivers.serial.frames), so this measures exactly what the driver
spends per frame once the bytes are read. Workloads (each a buffer cut in 4 KiB reads):

- ``stream``: a sound-level meter line, 3 values by named groups, XOR checksum (the default figure)
- ``crc16``: the same line with a CRC16-Modbus checksum (the dearest check)
- ``fixed``: fixed-width fields, sum8 checksum

Rates are per CPU-second of the parsing thread (the bench machine is shared; wall time
would also count the neighbours). Target: >= 50,000 frames/s (stream). Last line: one
JSON object of medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.serial.frames import ChannelSpec, FrameParser, FrameSpec, checksum_text

LINE_BYTES = 40


def workload(kind: str) -> tuple[FrameSpec, bytes]:
    """A spec and one 40-byte line (terminator included) for a workload."""
    if kind == "fixed":
        spec = FrameSpec(terminator=b"\r\n", checksum="sum8", checksum_separator=b",",
                         channels=[ChannelSpec(field=(0, 10)), ChannelSpec(field=(11, 21)),
                                   ChannelSpec(field=(22, 33))])
        body = b"  0.152300   0.000410  12.250000000"
        line = body + b"," + checksum_text("sum8", "hex", body) + b"\r\n"
    else:
        ck: Literal["crc16-modbus", "xor"] = "crc16-modbus" if kind == "crc16" else "xor"
        spec = FrameSpec(terminator=b"\r\n", checksum=ck, checksum_separator=b"*",
                         pattern=r"LAeq=(?P<laeq>[0-9.]+),LCpk=(?P<lcpk>[0-9.]+),LAFmax=(?P<laf>[0-9.]+)",
                         channels=[ChannelSpec(group="laeq"), ChannelSpec(group="lcpk"),
                                   ChannelSpec(group="laf")])
        body = b"LAeq=065.30,LCpk=098.1,LAFmax=070.2" if ck == "xor" else b"LAeq=65.30,LCpk=98.1,LAFmax=070.2"
        line = body + b"*" + checksum_text(ck, "hex", body) + b"\r\n"
    assert len(line) == LINE_BYTES, (kind, len(line))
    return spec, line


def run_once(spec: FrameSpec, data: bytes, chunk: int = 4096) -> tuple[int, float]:
    framer, parser = spec.framer(), FrameParser(spec)
    frames = 0
    # CPU time of this thread: the machine is shared, wall time would measure the neighbours
    t0 = time.thread_time()
    for i in range(0, len(data), chunk):
        for f in framer.feed(data[i:i + chunk]):
            r = parser.parse(f)
            if r.cause:
                raise SystemExit(f"unexpected bad frame: {r}")
            frames += 1
    return frames, time.thread_time() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=60_000, help="frames per run")
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    out: dict[str, object] = {}
    for kind in ("stream", "crc16", "fixed"):
        spec, line = workload(kind)
        data = line * args.frames
        rates = []
        for _ in range(args.runs):
            n, dt = run_once(spec, data)
            rates.append(n / dt)
        rate = statistics.median(rates)
        print(f"{kind:7s} {len(line)}-byte frames: {rate:,.0f} frames per CPU-second (median of {args.runs})")
        out[f"{kind}_frames_per_s"] = round(rate)
        out[f"{kind}_frame_bytes"] = len(line)
    out["frames_per_s"] = out["stream_frames_per_s"]
    out["target_frames_per_s"] = 50_000
    print(json.dumps(out))


if __name__ == "__main__":
    main()
