"""Benchmark: latency of the admin API's ``/channels`` with 10,000 channels while the
gateway polls them at full load.

The plant simulators (``python -m simulators``, one subprocess) serve 10,000 channels
over Modbus TCP (10 devices × 1,000 holding registers, values changing every tick); the
gateway (``safegw run``, a subprocess) polls them every ``--poll`` with the rules on and
its admin API on a free loopback port. Once every device has been polled, this process
sends ``--requests`` sequential ``GET /channels`` (all 10,000 channels, ~1.7 MB of JSON)
with a viewer token over one keep-alive connection (at most ``--seconds``), timing each
from send to the last byte received, and reads ``/status`` before and after to prove
polling went on meanwhile. The gateway's CPU time is read from /proc before, during and
after, so ``gateway_cpu_ms_per_request`` (the API's own cost, the polling's share taken
out) stays meaningful when other work competes for the cores and inflates the latency.

Target: p99 ≤ 50 ms. Last line: one JSON object with p50_ms, p99_ms and context.

    .venv/bin/python bench/api.py [--channels 10000] [--poll 500ms] [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from gateway.core.tokens import UserStore  # noqa: E402
from gateway.core.units import parse_duration  # noqa: E402
from tests.fixtures.helpers import free_port, wait_port  # noqa: E402
from tests.fixtures.sims import SimProcess  # noqa: E402

KINDS = ["gas", "temperature", "pressure", "level", "humidity"]


def sim_yaml(devices: int, per: int) -> str:
    lines = ["seed: 1", "tick: 1s", "signals:"]
    for i in range(devices * per):
        # values wander around 10..59; one channel in a hundred sits in alarm (above 70)
        base = 80 if i % 100 == 99 else 10 + i % 50
        lines.append(f"  S{i}: {{base: {base}, noise: 0.5}}")
    lines.append("devices:")
    for d in range(devices):
        lines += [
            f"  - name: dev{d}",
            "    protocol: modbus-tcp",
            "    port: 0",
            "    units:",
            "      - unit: 1",
            "        points:",
        ]
        for k in range(per):
            lines.append(
                f"          - {{signal: S{d * per + k}, address: 'holding:{k}', type: uint16, scale: 0.1}}"
            )
    return "\n".join(lines) + "\n"


def gateway_yaml(sim: SimProcess, devices: int, per: int, poll: str, state: Path, api_port: int) -> str:
    out = [
        f'gateway: {{id: gw-bench, site: "BENCH", state_dir: "{state}", log_level: WARNING}}',
        "journal: {sync: normal}",
        "devices:",
    ]
    for d in range(devices):
        host, port = sim.tcp(f"dev{d}")
        out += [
            f"  - name: dev{d}",
            "    protocol: modbus-tcp",
            f"    host: {host}",
            f"    port: {port}",
            f"    poll: {poll}",
            f"    timeout: {poll}",
            "    retries: 0",
            "    channels:",
        ]
        for k in range(per):
            i = d * per + k
            out.append(
                f"      - {{name: S{i}, kind: {KINDS[i % len(KINDS)]}, unit: u, address: 'holding:{k}', "
                f"type: uint16, scale: 0.1, alarms: {{h: 70}}}}"
            )
    out.append(f'api: {{listen: "127.0.0.1:{api_port}"}}')
    return "\n".join(out) + "\n"


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def polls(status: dict[str, Any]) -> int:
    return sum(int(d["polls"]) for d in status["devices"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, default=10000)
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--poll", default="500ms")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument(
        "--seconds",
        type=float,
        default=40.0,
        help="stop timing after this long even if short of "
        "--requests (the whole run must stay under two minutes on a busy machine)",
    )
    args = ap.parse_args()
    per = args.channels // args.devices
    poll_s = parse_duration(args.poll)
    tmp = Path(tempfile.mkdtemp(prefix="safegw-api-bench-"))
    state = tmp / "state"
    state.mkdir()
    token = UserStore(state / "users.json").add("bench", "viewer")
    api_port = free_port()
    sim = None
    gw = None
    try:
        (tmp / "sim.yaml").write_text(sim_yaml(args.devices, per))
        t0 = time.time()
        sim = SimProcess(tmp / "sim.yaml", ready_timeout=90)
        print(f"simulators up ({args.devices * per} channels) in {time.time() - t0:.1f}s", file=sys.stderr)
        (tmp / "gw.yaml").write_text(gateway_yaml(sim, args.devices, per, args.poll, state, api_port))
        gw = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(tmp / "gw.yaml")],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        wait_port("127.0.0.1", api_port, timeout=90)
        http = httpx.Client(
            base_url=f"http://127.0.0.1:{api_port}", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        # wait until every device answered twice, so the live table is full
        deadline = time.time() + 60
        while True:
            st = http.get("/status").json()
            if all(d["polls"] >= 2 for d in st["devices"]):
                break
            if time.time() > deadline:
                raise SystemExit(f"gateway did not poll every device: {st['devices']}")
            time.sleep(0.2)
        first = http.get("/channels").json()
        assert first["total"] == args.devices * per, first["total"]
        good = sum(1 for c in first["channels"] if c["quality"] == "good")
        red = sum(1 for c in first["channels"] if c["state"] == "alarm")
        print(
            f"gateway polling; {good}/{first['total']} channels good, {red} in alarm; timing {args.requests} "
            "requests",
            file=sys.stderr,
        )
        # the gateway's own CPU while it only polls, to separate the API's share
        base_cpu0, base_t0 = cpu_s(gw.pid), time.time()
        time.sleep(8)
        poll_cpu_rate = (cpu_s(gw.pid) - base_cpu0) / (time.time() - base_t0)
        before = http.get("/status").json()
        cpu0 = cpu_s(gw.pid)
        t_start = time.time()
        lat: list[float] = []
        size = 0
        while len(lat) < args.requests and time.time() - t_start < args.seconds:
            t = time.perf_counter()
            r = http.get("/channels")
            body = r.content
            lat.append((time.perf_counter() - t) * 1e3)
            size = len(body)
            if len(lat) % 50 == 0:
                print(
                    f"  {len(lat)} requests, last 50: median {statistics.median(lat[-50:]):.1f} ms",
                    file=sys.stderr,
                )
            if r.status_code != 200:
                raise SystemExit(f"/channels answered {r.status_code}")
        elapsed = time.time() - t_start
        cpu_during = cpu_s(gw.pid) - cpu0
        after = http.get("/status").json()
        http.close()
        if gw.poll() is not None:
            raise SystemExit("gateway died: " + (gw.stderr.read().decode()[-2000:] if gw.stderr else ""))
        lat.sort()
        q = statistics.quantiles(lat, n=100, method="inclusive")
        polls_during = polls(after) - polls(before)
        fig = {
            "channels": args.devices * per,
            "devices": args.devices,
            "poll_ms": round(poll_s * 1e3, 1),
            "requests": len(lat),
            "p50_ms": round(statistics.median(lat), 2),
            "p90_ms": round(q[89], 2),
            "p99_ms": round(q[98], 2),
            "max_ms": round(lat[-1], 2),
            "response_bytes": size,
            "polls_during": polls_during,
            "expected_polls": round(elapsed / poll_s * args.devices),
            "samples_per_s_during": round(
                (after["gateway"]["ingested_batches"] - before["gateway"]["ingested_batches"]) * per / elapsed
            ),
            "overruns": sum(d["overruns"] for d in after["devices"]),
            "channels_in_alarm": red,
            "gateway_cpu_ms_per_request": round((cpu_during - poll_cpu_rate * elapsed) * 1e3 / len(lat), 2),
            "gateway_poll_cpu_share": round(poll_cpu_rate, 3),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "target_p99_ms": 50,
        }
        print(
            f"/channels over {len(lat)} requests: p50 {fig['p50_ms']} ms, p99 {fig['p99_ms']} ms "
            f"({size / 1e6:.2f} MB each); {polls_during} polls meanwhile",
            file=sys.stderr,
        )
        print(json.dumps(fig))
    finally:
        if gw is not None and gw.poll() is None:
            gw.send_signal(signal.SIGTERM)
            try:
                gw.wait(20)
            except subprocess.TimeoutExpired:
                gw.kill()
        if sim is not None:
            sim.stop()


if __name__ == "__main__":
    main()
