"""Benchmark: what the modem channel itself adds to an SMS, over a real pty pair.

The modem simulator runs in a child process (``python -m simulators``) so its work is
not counted here; the channel (``gateway.notify.modem``) runs in this process. For each
kind of message the bench measures the wall time of ``channel.send()`` from the call to
its ``SendResult``, and, as the reference measured in the same run on the same line, the
round trip of a bare ``AT`` → ``OK`` through the channel's own AT port. On a real modem
the network's answer to ``AT+CMGS`` (seconds) dwarfs both; this bench shows that the
driver's share (encoding, the prompt dance, parsing) stays a small multiple of one
line round trip per part.

Also the pure codec: SMS-SUBMIT PDUs encoded per second for a 3-part Chinese message.

    .venv/bin/python bench/modem.py [--sends 60]

Last line: one JSON object (medians in ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.core.config_modem import ModemChannelSettings  # noqa: E402
from gateway.notify.base import Message, Recipient  # noqa: E402
from gateway.notify.modem import build_channel  # noqa: E402
from gateway.notify.modem.pdu import encode_submit  # noqa: E402

SHORT = "GT-101 45.2 %LEL HH A7K3"
LONG_ZH = "【二级报警】储罐区 可燃气体 GT-101 45.2 %LEL ≥ 40 %LEL，请立即到现场处置，回复 A7K3 确认。" * 4


def median_ms(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1000, 3)


def start_sim(tmp: Path) -> tuple[subprocess.Popen[str], str]:
    cfg = tmp / "sim.yaml"
    cfg.write_text("devices:\n"
                   f"  - {{name: modem, protocol: modem, link: {tmp}/tty, delivery_reports: false}}\n")
    sim = subprocess.Popen([sys.executable, "-m", "simulators", "-c", str(cfg)], cwd=ROOT,
                           stdout=subprocess.PIPE, text=True)
    assert sim.stdout is not None
    line = sim.stdout.readline()
    if not line.startswith("READY "):
        sim.kill()
        raise SystemExit(f"simulator did not start: {line!r}")
    return sim, json.loads(line[6:])["modem"]["port"]


async def run(sends: int, port: str) -> dict[str, object]:
    ch = build_channel(ModemChannelSettings(type="modem", port=port, delivery_reports=False), None)
    await ch.start()
    try:
        if not await ch.modem.wait_ready(20):
            raise SystemExit(f"modem not ready: {ch.stats()}")
        to = Recipient("bench", phone="+8613800138000")
        at_rtt: list[float] = []
        for _ in range(sends):
            t = time.perf_counter()
            await ch.modem.at.command("AT", 5.0)
            at_rtt.append(time.perf_counter() - t)
        results: dict[str, list[float]] = {}
        for name, text in (("gsm7_1part", SHORT), ("ucs2_3parts", LONG_ZH)):
            lat = results.setdefault(name, [])
            for i in range(sends):
                res = await ch.send(Message(key=f"{name}-{i}", kind="alarm", subject="", text=text,
                                            short=text), to)
                if not res.ok:
                    raise SystemExit(f"send failed: {res}")
                lat.append(res.latency_s)
    finally:
        await ch.stop()
    n = 2000
    t = time.perf_counter()
    for i in range(n):
        encode_submit("+8613800138000", LONG_ZH, ref=i & 0xFF)
    enc_per_s = n / (time.perf_counter() - t)
    at_med = median_ms(at_rtt)
    return {
        "sends_per_kind": sends,
        "at_roundtrip_ms_median": at_med,
        "sms_gsm7_1part_ms_median": median_ms(results["gsm7_1part"]),
        "sms_ucs2_3parts_ms_median": median_ms(results["ucs2_3parts"]),
        "sms_ucs2_3parts_per_part_in_at_roundtrips": round(median_ms(results["ucs2_3parts"]) / 3 / at_med, 2),
        "encode_3part_messages_per_s": round(enc_per_s),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sends", type=int, default=60)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        sim, port = start_sim(Path(d))
        try:
            out = asyncio.run(run(args.sends, port))
        finally:
            sim.terminate()
            sim.wait(5)
    for k, v in out.items():
        print(f"{k:48} {v}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
