"""Benchmark: end-to-end alarm latency, simulator crossing → gateway → mosquitto → subscriber.

A Modbus TCP register farm serves 10,000 channels (10 devices × 1,000 holding
registers): by default a minimal one in a child process that reports the exact time it
wrote a register; ``--source simulators`` uses the plant simulators (``python -m
simulators``) instead, whose ``set`` command recomputes every signal before answering,
so there the crossing is only known to lie between command and answer. The gateway
(``safegw run``, a subprocess) polls them every ``--poll``, evaluates the rules and
publishes alarm events to a mosquitto started here on a free port; a subscriber in this
process receives them. For each crossing the bench sets one channel above its high
limit and counts the latency from the register write (the crossing) to the moment the
subscriber receives the ``raise`` event (also reported from the moment the command was
sent); then it sets the value back and waits for the ``clear``. Crossings start at a
random phase of the poll cycle.

Target: p99 ≤ one poll period + 100 ms.

    .venv/bin/python bench/alarm_latency.py [--channels 10000] [--poll 500ms] [--crossings 40]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from gateway.core.units import parse_duration  # noqa: E402
from tests.fixtures.helpers import free_port, wait_port  # noqa: E402
from tests.fixtures.sims import SimProcess  # noqa: E402

BASE, HIGH, LIMIT = 10, 80, 50


def sim_yaml(devices: int, per: int) -> str:
    # values only change when the bench sets them: no periodic recomputation of 10k signals
    lines = ["seed: 1", "tick: 1h", "signals:"]
    for i in range(devices * per):
        lines.append(f"  S{i}: {{base: {BASE}}}")
    lines.append("devices:")
    for d in range(devices):
        lines += [f"  - name: dev{d}", "    protocol: modbus-tcp", "    port: 0", "    units:",
                  "      - unit: 1", "        points:"]
        for k in range(per):
            lines.append(f"          - {{signal: S{d * per + k}, address: 'holding:{k}', type: uint16}}")
    return "\n".join(lines) + "\n"


def gateway_yaml(sim: SimProcess, devices: int, per: int, poll: str, state: Path, mqtt_port: int,
                 journal: str = "{sync: normal}") -> str:
    out = [f'gateway: {{id: gw-bench, site: "BENCH", state_dir: "{state}", log_level: WARNING}}',
           f"journal: {journal}", "devices:"]
    for d in range(devices):
        host, port = sim.tcp(f"dev{d}")
        out += [f"  - name: dev{d}", "    protocol: modbus-tcp", f"    host: {host}", f"    port: {port}",
                f"    poll: {poll}", f"    timeout: {poll}", "    retries: 0", "    channels:"]
        for k in range(per):
            i = d * per + k
            out.append(f"      - {{name: S{i}, kind: gas, unit: '%LEL', address: 'holding:{k}', "
                       f"type: uint16, "
                       f"alarms: {{h: {LIMIT}}}}}")
    out.append(f"mqtt: {{host: 127.0.0.1, port: {mqtt_port}, keepalive: 10s}}")
    return "\n".join(out) + "\n"


class MinimalPlant:
    """A minimal Modbus TCP farm in a child process: ``devices`` servers of ``per`` holding
    registers (function 3 only). ``set()`` writes a register and returns the wall time
    right after the write, which is the crossing time (nothing else runs in between)."""

    def __init__(self, devices: int, per: int):
        import multiprocessing as mp

        self.conn, child = mp.Pipe()
        self.proc = mp.get_context("fork").Process(target=_plant_main, args=(child, devices, per),
                                                   daemon=True)
        self.proc.start()
        self.ports: list[int] = self.conn.recv()

    def tcp(self, device: str) -> tuple[str, int]:
        return "127.0.0.1", self.ports[int(device.removeprefix("dev"))]

    def set(self, channel: int, value: int) -> float:
        self.conn.send((channel, value))
        t: float = self.conn.recv()
        return t

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(5)


def _plant_main(conn: Any, devices: int, per: int) -> None:
    import asyncio
    import struct

    import numpy as np

    regs = np.full((devices, per), BASE, dtype=">u2")

    class Proto(asyncio.Protocol):
        def __init__(self, d: int):
            self.d = d
            self.buf = b""

        def connection_made(self, transport: Any) -> None:
            self.tr = transport

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while len(self.buf) >= 12:
                tid, _pid, length, unit, fc, start, count = struct.unpack(">HHHBBHH", self.buf[:12])
                self.buf = self.buf[6 + length:]
                if fc != 3 or start + count > per:
                    self.tr.write(struct.pack(">HHHBBB", tid, 0, 3, unit, fc | 0x80, 2))
                    continue
                body = regs[self.d, start:start + count].tobytes()
                self.tr.write(struct.pack(">HHHBBB", tid, 0, 3 + len(body), unit, fc, len(body)) + body)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        ports = []
        for d in range(devices):
            srv = await loop.create_server(functools.partial(Proto, d), "127.0.0.1", 0)
            ports.append(srv.sockets[0].getsockname()[1])
        conn.send(ports)

        def on_cmd() -> None:
            ch, value = conn.recv()
            regs[ch // per, ch % per] = value
            conn.send(time.time())

        loop.add_reader(conn.fileno(), on_cmd)
        await asyncio.Event().wait()

    asyncio.run(run())


class Receiver:
    """Subscriber: the receipt time of every limit-alarm event, by channel and transition."""

    def __init__(self, port: int):
        self.cv = threading.Condition()
        self.got: list[tuple[str, str, float]] = []
        self.sample_ts: dict[tuple[str, float], float] = {}  # (channel, receipt) → the sample's time
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub", protocol=paho.MQTTv311)
        self.c.on_message = self._msg
        self.c.on_connect = lambda c, *a: c.subscribe("safegw/+/+/alarms/+", 1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _msg(self, c: Any, u: Any, msg: paho.MQTTMessage) -> None:
        now = time.time()
        if msg.topic.endswith("/active"):
            return
        ev = json.loads(msg.payload)
        if ev.get("rule") != "limit":
            return
        with self.cv:
            self.got.append((ev["channel"], ev["transition"], now))
            self.sample_ts[(ev["channel"], now)] = ev["ts"] / 1e9
            self.cv.notify_all()

    def wait(self, channel: str, transition: str, after: float, timeout: float) -> float | None:
        deadline = time.time() + timeout
        with self.cv:
            while True:
                hits = [t for ch, tr, t in self.got if ch == channel and tr == transition and t >= after]
                if hits:
                    return min(hits)
                left = deadline - time.time()
                if left <= 0:
                    return None
                self.cv.wait(left)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, default=10000)
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--poll", default="500ms")
    ap.add_argument("--crossings", type=int, default=40)
    ap.add_argument("--journal", default="{sync: normal}",
                    help="the gateway's journal section, e.g. '{sync: normal, commit_every: 1s}'")
    ap.add_argument("--source", choices=["minimal", "simulators"], default="minimal",
                    help="minimal: a bare Modbus TCP register farm that reports the exact crossing time; "
                         "simulators: python -m simulators (its set command recomputes every signal, "
                         "so the crossing time is known only within that)")
    args = ap.parse_args()
    poll_s = parse_duration(args.poll)
    per = args.channels // args.devices
    tmp = Path(tempfile.mkdtemp(prefix="safegw-latency-"))
    mport = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text("\n".join([*(["user root"] if os.geteuid() == 0 else []), f"listener {mport} 127.0.0.1",
                               "allow_anonymous true", "persistence false", "max_queued_messages 0"]) + "\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    procs: list[Any] = []
    sim: Any = None
    try:
        wait_port("127.0.0.1", mport)
        t0 = time.time()
        if args.source == "simulators":
            (tmp / "sim.yaml").write_text(sim_yaml(args.devices, per))
            sim = SimProcess(tmp / "sim.yaml", ready_timeout=90)
        else:
            sim = MinimalPlant(args.devices, per)
        print(f"{args.source} up ({args.devices * per} channels) in {time.time() - t0:.1f}s", file=sys.stderr)
        (tmp / "gw.yaml").write_text(gateway_yaml(sim, args.devices, per, args.poll, tmp / "state", mport,
                                                  args.journal))
        rx = Receiver(mport)
        gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(tmp / "gw.yaml")],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
        procs.append(gw)
        # warm up: the first crossing also proves the path works end to end
        rng = random.Random(7)
        lat: list[float] = []
        lat_sent: list[float] = []
        pipe: list[float] = []
        missed = 0
        for k in range(args.crossings + 1):
            ch = rng.randrange(args.devices * per)
            name = f"S{ch}"
            time.sleep(rng.uniform(0, poll_s))
            t_sent = time.time()
            if args.source == "simulators":
                sim.control(set=name, value=HIGH)
                # the simulator answers once the new value is in its registers (after
                # recomputing every signal): the crossing is somewhere before this
                t_cross = time.time()
            else:
                t_cross = sim.set(ch, HIGH)
            t_raise = rx.wait(name, "raise", t_sent, 90 if k == 0 else 10)
            if args.source == "simulators":
                sim.control(set=name, value=BASE)
            else:
                sim.set(ch, BASE)
            if t_raise is None:
                missed += 1
                continue
            if k > 0:
                lat.append((t_raise - t_cross) * 1e3)
                # split: waiting for the next poll, then poll → rules → journal → broker → subscriber
                pipe.append((t_raise - rx.sample_ts[(name, t_raise)]) * 1e3)
                lat_sent.append((t_raise - t_sent) * 1e3)
            rx.wait(name, "clear", t_raise, 10)
        if gw.poll() is not None:
            err = gw.stderr.read().decode() if gw.stderr else ""
            raise SystemExit(f"gateway died: {err[-2000:]}")
        lat.sort()
        q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else lat * 99
        fig = {
            "channels": args.devices * per,
            "devices": args.devices,
            "poll_ms": round(poll_s * 1e3, 1),
            "crossings": len(lat),
            "missed": missed,
            "p50_ms": round(statistics.median(lat), 1),
            "p99_ms": round(q[98], 1),
            "max_ms": round(lat[-1], 1),
            "target_ms": round(poll_s * 1e3 + 100, 1),
            "p50_from_command_ms": round(statistics.median(lat_sent), 1),
            "p50_sample_to_receipt_ms": round(statistics.median(pipe), 1),
            "p99_sample_to_receipt_ms": round(sorted(pipe)[min(len(pipe) - 1, int(len(pipe) * 0.99))], 1),
            "p99_from_command_ms": round(
                sorted(lat_sent)[min(len(lat_sent) - 1, int(len(lat_sent) * 0.99))], 1),
            "source": args.source,
            "journal": args.journal,
            "measured_from": "register written (the crossing) to subscriber receipt; *_from_command_ms "
                             "count from sending the set command",
        }
        print(f"latency over {len(lat)} crossings: p50 {fig['p50_ms']} ms, p99 {fig['p99_ms']} ms, "
              f"max {fig['max_ms']} ms (poll {fig['poll_ms']} ms)", file=sys.stderr)
        print(json.dumps(fig))
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
        if sim is not None:
            sim.stop()
        broker.terminate()
        broker.wait(5)


if __name__ == "__main__":
    main()
