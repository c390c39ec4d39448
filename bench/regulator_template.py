"""Template publisher benchmark: messages and points a second over MQTT with TLS to a
real mosquitto (started here on a free port, the test fixture's broker).

The journal holds ``--seconds`` of ``--channels`` mapped channels polled every second
(one record a second). The real ``TemplatePublisher`` with a provincial-style profile
(item/message/envelope templates, SM4-CBC + base64, HMAC-SHA256 signature, QoS 1,
``--batch`` readings a message) starts from the oldest record; the figure is the time
until the cursor passed the last record (every message PUBACKed) and a subscriber on
the same broker holds every message. References measured in the same run: building
and sealing alone (``build_only_points_per_s``), and publishing the same number of
prebuilt payloads of the same size with paho at QoS 1 (``send_only_messages_per_s``), and
interval mode's work alone: folding every reading into the latest values and sealing a
snapshot of every point each 30 s of data time (``interval_fold_points_per_s``).
Median of ``--runs``. Target: ≥ 50,000 points/s.

Last line: one JSON object. ``.venv/bin/python bench/regulator_template.py`` (under a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.core.batch import Batch  # noqa: E402
from gateway.core.channels import ChannelInfo, ChannelTable  # noqa: E402
from gateway.core.config_regulators import TemplateAdapter  # noqa: E402
from gateway.store.journal import Journal  # noqa: E402
from northbound.base import PointMap  # noqa: E402
from northbound.template.adapter import TemplatePublisher  # noqa: E402
from northbound.template.messages import Window  # noqa: E402
from northbound.template.render import Sealer  # noqa: E402
from tests.fixtures.mosquitto import Broker  # noqa: E402

KEY = bytes.fromhex("31323334353637383930616263646566")
IV = bytes.fromhex("66656463626130393837363534333231")


def profile(broker: Broker, channels: int, batch: int, topic: str) -> TemplateAdapter:
    assert broker.certs is not None
    return TemplateAdapter.model_validate({
        "type": "template", "name": "bench", "enterprise_code": "91320500MA1XXXXX0Y",
        "hazard_code": "320500001",
        "start": "oldest", "batch_points": batch, "ack_timeout": "30s",
        "mqtt": {"host": broker.host, "port": broker.port, "tls": True, "ca_file": str(broker.certs.ca),
                 "client_id": f"bench-{topic}", "topic": topic},
        "item": {"quotaId": "${code}", "value": "${value}", "collectTime": "${time}", "isValid": "${valid}"},
        "message": {"companyCode": "${enterprise}", "hazardCode": "${hazard}", "datas": "${items}"},
        "envelope": {"appKey": "${enterprise}", "timestamp": "${now_ms}", "data": "${data}",
                     "sign": "${sign}"},
        "crypto": {"cipher": "sm4-cbc", "key_file": "k", "iv_file": "i", "signature": "hmac-sha256",
                   "sign_key_file": "s"},
        "points": [{"channel": f"CH-{i}", "code": f"Q{i:05d}", "decimals": 2} for i in range(channels)],
    })


class Counter:
    def __init__(self, broker: Broker, topic: str):
        self.n = 0
        self.done = threading.Event()
        self.want = -1
        self.c = broker.client(f"count-{topic}")
        sub = threading.Event()
        self.c.on_connect = lambda c, *a: c.subscribe(topic, 1)
        self.c.on_subscribe = lambda *a: sub.set()
        self.c.on_message = self._msg
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        sub.wait(10)

    def _msg(self, *a: object) -> None:
        self.n += 1
        if self.n == self.want:
            self.done.set()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


async def one_run(broker: Broker, journal: Journal, table: ChannelTable, args: argparse.Namespace,
                  run: int) -> dict[str, float]:
    topic = f"bench/{run}"
    cfg = profile(broker, args.channels, args.batch, topic)
    names = [c.name for c in table.channels]
    points = args.channels * args.seconds
    counter = Counter(broker, topic)
    pub = TemplatePublisher(cfg, journal, PointMap(cfg.points, table), names,
                            sealer=Sealer(cfg.crypto, KEY, IV, b"s"))
    # start from the oldest record: a fresh cursor name per run
    pub.c.name = f"regulator.bench{run}"
    t0 = time.perf_counter()
    await pub.start()
    task = asyncio.create_task(pub.run())
    assert await pub.c.drain(120, target=journal.last_seq), "the publisher did not get through in 120 s"
    sent = pub.stats_.messages_sent
    counter.want = sent
    if counter.n < sent:
        await asyncio.to_thread(counter.done.wait, 60)
    dt = time.perf_counter() - t0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await pub.stop()
    counter.close()
    assert counter.n == sent and pub.stats_.points_sent == points, (counter.n, sent, pub.stats_.points_sent)
    # references: build alone, and paho publishing the same payload sizes
    recs = journal.read_sync(0, 100_000)
    b0 = time.perf_counter()
    built, _n = pub.build(recs)
    build_dt = time.perf_counter() - b0
    # interval mode's work: folding every reading into the latest values, one sealed
    # snapshot of every point each 30 s of data time
    pub.msgs.window = Window()
    i0 = time.perf_counter()
    snaps = [pub.body(o) for o in pub.msgs.interval(recs)[0]]
    interval_dt = time.perf_counter() - i0
    assert len(snaps) == (args.seconds - 1) // 30, len(snaps)  # the last window stays open
    c = broker.client(f"ref-{run}")
    acked = threading.Event()
    left = [len(built)]

    def on_pub(*a: object) -> None:
        left[0] -= 1
        if left[0] == 0:
            acked.set()
    c.on_publish = on_pub
    c.max_inflight_messages_set(100)
    c.max_queued_messages_set(0)
    c.connect(broker.host, broker.port)
    c.loop_start()
    s0 = time.perf_counter()
    for m in built:
        c.publish(f"ref/{run}", m, qos=1)
    acked.wait(60)
    send_dt = time.perf_counter() - s0
    c.disconnect()
    c.loop_stop()
    return {"points_per_s": points / dt, "messages_per_s": sent / dt,
            "build_only_points_per_s": points / build_dt, "send_only_messages_per_s": len(built) / send_dt,
            "interval_fold_points_per_s": points / interval_dt, "messages": sent,
            "payload_bytes": len(built[0])}


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-tpl-") as tmp:
        broker = Broker(Path(tmp) / "mosquitto", tls=True)
        try:
            table = ChannelTable([ChannelInfo(i, f"CH-{i}", "gas", "x", "plc", None)  # type: ignore[arg-type]
                                  for i in range(args.channels)])
            journal = Journal(Path(tmp) / "journal.db", sync="normal")
            rng = np.random.default_rng(1)
            t0 = 1_767_225_600 * 10**9
            ch = np.arange(args.channels, dtype=np.int32)
            for s in range(args.seconds):
                journal.submit_batch(Batch.build(ch, np.full(args.channels, t0 + s * 10**9, np.int64),
                                                 rng.random(args.channels) * 100, 0)).result(10)
            runs = [await one_run(broker, journal, table, args, r) for r in range(args.runs)]
            journal.close()
        finally:
            broker.stop()
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return {"bench": "regulator_template", "channels": args.channels, "seconds": args.seconds,
            "points": args.channels * args.seconds, "batch": args.batch, "runs": args.runs,
            "transport": "mqtt+tls qos1", "crypto": "sm4-cbc base64 + hmac-sha256",
            **{k: round(v, 1) for k, v in med.items()}, "target_points_per_s": 50_000}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, default=200)
    p.add_argument("--seconds", type=int, default=600)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    res = asyncio.run(main_async(args))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
