"""Benchmark: what the daemon costs when little happens (idle CPU, memory, start-up, disk).

The real daemon (``safegw run``) runs as a subprocess, its plant's simulators in their
own processes (``python -m simulators``), once per plant and set of services:

- plants: ``demo`` (config/demo.yaml on config/sim-demo.yaml: 25 channels, 6 devices,
  Modbus TCP/RTU, OPC-UA subscribe, serial; moved to free ports and private ptys) and
  generated plants of N channels (Modbus TCP devices of 1,000 float32 registers each,
  polled every second, spread over ``--sim-procs`` simulator processes);
- services: ``none`` (embedded default: journal and log only) and ``all`` (MQTT to a
  mosquitto, InfluxDB 1.x to an influxd, the admin API, the uplink in pull mode),
  the servers started here on free ports.

For each it measures, from /proc of the daemon's process (every thread counted):

- ``start_s``: from the exec to systemd's ``READY=1`` (the daemon's own sd_notify, on a
  socket this bench listens on), and ``first_batch_s`` to the first journaled sample
  batch (read-only SQLite reads of the journal, stopped once it is there);
- ``cpu_pct``: CPU (user + system) over the ``--steady`` window after ``--settle``, in %
  of one core;
- ``rss_mb`` at the end of the window and ``hwm_mb`` (VmHWM, the peak);
  ``rss_growth_mb``: RSS at the end of ``--growth`` seconds minus RSS at its start
  (for ``--growth-plant`` only; the other plants report growth over their window);
- ``disk_mb_per_h``: ``write_bytes`` of /proc/PID/io over the window (what reaches the
  block layer: the flash's wear), next to ``journal_mb_per_h``, the journal's payload
  (the compressed records) over the same window: their ratio is the write amplification;
- ``gc0_per_s`` and ``blocks_growth_per_s``: a probe in the daemon (``SIGUSR1`` → one line
  of ``gc.get_stats()`` and ``sys.getallocatedblocks()``, costing nothing in between)
  gives the generation-0 collections a second (each is ~700 container objects allocated
  and not yet freed: the allocation churn) and the net growth of allocated blocks.

``--runs`` runs of each; the medians are printed. The last line is one JSON object with
``idle_cpu_pct_demo``, ``rss_mb_demo``, ``rss_mb_10k``, ``rss_mb_50k``, ``start_s_demo``,
``start_s_10k``, ``disk_mb_per_h_demo``, ``rss_growth_mb_10min_10k`` (all ``none``
services) and every measurement under ``"runs"``.

    .venv/bin/python bench/footprint.py                       # the issue's full set (~1 h)
    .venv/bin/python bench/footprint.py --plants demo --services none --runs 1 --steady 30
    PYTHONPATH=/old/checkout .venv/bin/python bench/footprint.py --safegw-root /old/checkout ...

``--safegw-root`` runs the daemon from another checkout (a before/after comparison in
the same run, on the same machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
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

CLK = os.sysconf("SC_CLK_TCK")

#: runs in the daemon's process before ``safegw run``: a SIGUSR1 handler that appends one
#: JSON line of allocation counters to $FOOTPRINT_PROBE (no thread, no timer: free until asked)
PROBE = """
import gc, json, os, signal, sys
def _probe(signum, frame):
    st = gc.get_stats()
    with open(os.environ["FOOTPRINT_PROBE"], "a") as f:
        f.write(json.dumps({"gc0": st[0]["collections"], "gc1": st[1]["collections"],
                            "gc2": st[2]["collections"], "count0": gc.get_count()[0],
                            "blocks": sys.getallocatedblocks()}) + "\\n")
signal.signal(signal.SIGUSR1, _probe)
sys.argv = ["safegw", *sys.argv[1:]]
from gateway.cli import main
raise SystemExit(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------- /proc
def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def proc_status(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) / 1024
    return out


def proc_write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/PID/io")


# ---------------------------------------------------------------------- plants
def demo_plant(tmp: Path, root: Path) -> tuple[Path, Path]:
    """The demo configs of checkout ``root`` on free ports, with the ptys under tmp (as the
    demo test does)."""
    subst = {"15020": str(free_port()), "15021": str(free_port()), "14840": str(free_port()),
             "/tmp/safegw-demo": str(tmp / "demo")}
    out = []
    for name in ("demo.yaml", "sim-demo.yaml"):
        text = (root / "config" / name).read_text()
        for k, v in subst.items():
            text = text.replace(k, v)
        (tmp / name).write_text(text)
        out.append(tmp / name)
    return out[0], out[1]


def expected(dev: int, ch: int) -> float:
    return dev * 10000 + ch + 0.25


def generated_sims(n_channels: int, per_device: int, procs: int, tmp: Path) -> list[Path]:
    n_dev = max(1, -(-n_channels // per_device))
    paths = []
    for p in range(procs):
        devs = []
        for d in range(p, n_dev, procs):
            n = min(per_device, n_channels - d * per_device)
            devs.append({"name": f"dev{d}", "protocol": "modbus-tcp", "port": 0,
                         "units": [{"unit": 1, "size": 2 * n + 8,
                                    "points": [{"value": expected(d, c), "address": f"input:{2 * c}",
                                                "type": "float32"} for c in range(n)]}]})
        if devs:
            paths.append(tmp / f"sim{p}.json")
            paths[-1].write_text(json.dumps({"signals": {}, "tick": "5s", "devices": devs}))
    return paths


def generated_config(n_channels: int, per_device: int, endpoints: dict[str, Any], tmp: Path) -> Path:
    """The gateway's YAML for a generated plant (as a person would write it: one line a channel)."""
    lines = ["gateway:", "  id: gw-footprint", '  site: "91370100MA3C000000"',
             f"  state_dir: {tmp / 'state'}", "devices:"]
    n_dev = max(1, -(-n_channels // per_device))
    for d in range(n_dev):
        ep = endpoints[f"dev{d}"]
        n = min(per_device, n_channels - d * per_device)
        lines += [f"  - name: dev{d}", "    protocol: modbus-tcp", f"    host: {ep['host']}",
                  f"    port: {ep['port']}", "    unit: 1", "    poll: 1s", "    timeout: 1s",
                  "    channels:"]
        lines += [f"      - {{name: d{d}.c{c}, kind: other, address: 'input:{2 * c}', type: float32}}"
                  for c in range(n)]
    path = tmp / "gateway.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def set_journal(cfg_path: Path, settings: str) -> None:
    """Journal keys (``commit_every=1s,page_size=4096``) set in a plant's config (replacing
    the config's own)."""
    lines = cfg_path.read_text().splitlines()
    keys = {k.strip(): v.strip() for k, _, v in (kv.partition("=") for kv in settings.split(","))}
    if "journal:" not in lines:
        lines.append("journal:")
    at = lines.index("journal:") + 1
    end = at
    while end < len(lines) and (lines[end].startswith(" ") or not lines[end].strip()):
        end += 1
    kept = [ln for ln in lines[at:end] if ln.strip().partition(":")[0] not in keys]
    lines[at:end] = [*(f"  {k}: {v}" for k, v in keys.items()), *kept]
    cfg_path.write_text("\n".join(lines) + "\n")


def start_sims(configs: list[Path], cwd: Path) -> tuple[list[subprocess.Popen[str]], dict[str, Any]]:
    procs = [subprocess.Popen([sys.executable, "-m", "simulators", "-c", str(c)], cwd=cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for c in configs]
    endpoints: dict[str, Any] = {}
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline()  # the simulator prints READY once it serves (or exits)
        if not line.startswith("READY"):
            stop_all(procs)
            raise SystemExit(f"simulator failed to start: {line!r}")
        endpoints.update(json.loads(line[5:].strip() or "{}"))
    return procs, endpoints


def stop_all(procs: list[subprocess.Popen[Any]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# ---------------------------------------------------------------------- services
class Servers:
    """mosquitto and influxd on free ports, and a central key for the uplink (``all`` only)."""

    def __init__(self, tmp: Path):
        from tests.fixtures.influxd import Influxd
        from tests.fixtures.mosquitto import Broker
        from uplink import keys

        self.broker = Broker(tmp / "mosquitto")  # starts it
        self.influxd = Influxd(tmp / "influxd")
        self.influxd.start()
        central = keys.init(tmp / "central", "county")
        self.central_pub = tmp / "county.pub.yaml"
        keys.save_public(self.central_pub, central)

    def sections(self) -> str:
        return (f"mqtt: {{host: 127.0.0.1, port: {self.broker.port}}}\n"
                f"influxdb: {{url: '{self.influxd.url}', database: footprint}}\n"
                f"api: {{listen: '127.0.0.1:{free_port()}'}}\n"
                f"uplink: {{mode: pull, listen: '127.0.0.1:{free_port()}', "
                f"central_keys: ['{self.central_pub}']}}\n")

    def close(self) -> None:
        self.broker.stop()
        self.influxd.stop()


# ---------------------------------------------------------------------- one run
def journal_state(path: Path) -> tuple[int, int]:
    """(payload bytes, sample records) of a live journal, read-only."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return 0, 0
    try:
        nbytes = db.execute("SELECT value FROM meta WHERE key='bytes'").fetchone()[0]
        batches = db.execute("SELECT COUNT(*) FROM records WHERE kind=1").fetchone()[0]
        return int(nbytes), int(batches)
    except sqlite3.Error:
        return 0, 0
    finally:
        db.close()


def _drain(sock: socket.socket) -> None:
    """Read and drop notify messages until the socket is closed."""
    while True:
        try:
            sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:  # closed at the end of the run
            return


def probe(pid: int, path: Path, timeout: float = 10.0) -> dict[str, int]:
    n = len(path.read_text().splitlines()) if path.exists() else 0
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) > n:
            out: dict[str, int] = json.loads(lines[-1])
            return out
        time.sleep(0.02)
    raise RuntimeError("the daemon's probe did not answer")


def run_once(plant: str, services: str, args: argparse.Namespace, growth_s: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-footprint-"))
    sims: list[subprocess.Popen[str]] = []
    servers: Servers | None = None
    daemon: subprocess.Popen[bytes] | None = None
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        if plant == "demo":
            cfg_path, sim_path = demo_plant(tmp, args.safegw_root)
            sims, _ = start_sims([sim_path], ROOT)
        else:
            n = int(plant)
            sims, endpoints = start_sims(generated_sims(n, args.per_device, args.sim_procs, tmp), ROOT)
            cfg_path = generated_config(n, args.per_device, endpoints, tmp)
        if args.journal:
            set_journal(cfg_path, args.journal)
        if services == "all":
            servers = Servers(tmp)
            with cfg_path.open("a") as f:
                f.write(servers.sections())
        state = tmp / "state"
        journal = state / "journal.db"
        sock_path = tmp / "notify.sock"
        notify.bind(str(sock_path))
        probe_path = tmp / "probe.jsonl"
        env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "FOOTPRINT_PROBE": str(probe_path),
               "PYTHONPATH": str(args.safegw_root)}
        env.pop("WATCHDOG_USEC", None)
        cmd = [sys.executable, "-c", PROBE, "run", "-c", str(cfg_path), "--state-dir", str(state),
               "--log-level", "WARNING"]
        t0 = time.monotonic()
        with (tmp / "daemon.log").open("wb") as logf:
            daemon = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=logf)
        notify.settimeout(0.5)  # to notice a daemon that exits instead
        while True:
            try:
                msg = notify.recv(4096).decode()
            except TimeoutError:
                if daemon.poll() is None and time.monotonic() - t0 < args.start_timeout:
                    continue
                raise SystemExit(f"{plant}/{services}: no READY=1 (exit code {daemon.poll()}); "
                                 f"log: {(tmp / 'daemon.log').read_text()[-2000:]}") from None
            if "READY=1" in msg.split("\n"):
                break
        start_s = time.monotonic() - t0
        # go on reading the socket as systemd does: a daemon that blocked on a full notify
        # queue (10 datagrams) would stop polling, and every figure after it would be idle's
        threading.Thread(target=_drain, args=(notify,), daemon=True).start()
        deadline = t0 + args.start_timeout
        while journal_state(journal)[1] == 0:
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit(f"{plant}/{services}: no journaled batch within {args.start_timeout}s")
            time.sleep(0.02)
        first_batch_s = time.monotonic() - t0
        # settle: connections made, first subscriptions delivered, caches warm
        time.sleep(args.settle)
        pid = daemon.pid
        rss_start = proc_status(pid)["VmRSS"]
        p0, c0, w0, j0, m0 = probe(pid, probe_path), proc_cpu_s(pid), proc_write_bytes(pid), journal_state(
            journal), time.monotonic()
        time.sleep(args.steady)
        p1, c1, w1, j1, m1 = probe(pid, probe_path), proc_cpu_s(pid), proc_write_bytes(pid), journal_state(
            journal), time.monotonic()
        window = m1 - m0
        st = proc_status(pid)
        rss_end, growth_window = st["VmRSS"], window
        if growth_s > window:  # the leak check: RSS again at the end of the long window
            time.sleep(max(0.0, growth_s - (time.monotonic() - m0)))
            rss_end, growth_window = proc_status(pid)["VmRSS"], time.monotonic() - m0
        if daemon.poll() is not None:
            raise SystemExit(f"{plant}/{services}: the daemon exited during the measurement")
        gc0 = (p1["gc0"] - p0["gc0"]) / window
        return {
            "plant": plant, "services": services,
            "start_s": round(start_s, 3), "first_batch_s": round(first_batch_s, 3),
            "cpu_pct": round(100 * (c1 - c0) / window, 3),
            "rss_mb": round(st["VmRSS"], 1), "hwm_mb": round(st["VmHWM"], 1),
            "rss_growth_mb": round(rss_end - rss_start, 2),
            "growth_window_s": round(growth_window, 1),
            "disk_mb_per_h": round((w1 - w0) / window * 3600 / 1e6, 2),
            "journal_mb_per_h": round((j1[0] - j0[0]) / window * 3600 / 1e6, 3),
            "batches_per_s": round((j1[1] - j0[1]) / window, 2),
            "gc0_per_s": round(gc0, 3),
            "blocks_growth_per_s": round((p1["blocks"] - p0["blocks"]) / window, 1),
            "window_s": round(window, 1),
        }
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        notify.close()
        if servers is not None:
            servers.close()
        stop_all(sims)
        shutil.rmtree(tmp, ignore_errors=True)


def med(rows: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in rows), 3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plants", default="demo,1000,10000,50000",
                    help="comma-separated: demo and/or channel counts")
    ap.add_argument("--services", default="none,all", help="none and/or all")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settle", type=float, default=10.0,
                    help="seconds after the first batch before measuring")
    ap.add_argument("--steady", type=float, default=60.0, help="the measured window, seconds")
    ap.add_argument("--growth", type=float, default=600.0,
                    help="RSS growth window for --growth-plant, seconds")
    ap.add_argument("--growth-plant", default="10000")
    ap.add_argument("--per-device", type=int, default=1000, help="channels a generated device serves")
    ap.add_argument("--sim-procs", type=int, default=2)
    ap.add_argument("--start-timeout", type=float, default=180.0)
    ap.add_argument("--journal", default="", help="journal settings for every plant, e.g. "
                    "commit_every=1s,page_size=4096 (default: each config's own)")
    ap.add_argument("--safegw-root", type=Path, default=ROOT, help="the checkout whose daemon is measured")
    args = ap.parse_args(argv)

    rows: list[dict[str, Any]] = []
    for plant in args.plants.split(","):
        for services in args.services.split(","):
            for i in range(args.runs):
                growth = args.growth if (plant == args.growth_plant and services == "none") else 0.0
                r = run_once(plant, services, args, growth)
                rows.append(r)
                print(f"{plant:>6} {services:>4} run {i + 1}: start {r['start_s']:.2f}s, first batch "
                      f"{r['first_batch_s']:.2f}s, cpu {r['cpu_pct']:.2f}%, rss {r['rss_mb']:.1f} MB "
                      f"(peak {r['hwm_mb']:.1f}, +{r['rss_growth_mb']:.2f} in {r['growth_window_s']:.0f}s), "
                      f"disk {r['disk_mb_per_h']:.1f} MB/h "
                      f"(journal payload {r['journal_mb_per_h']:.2f} MB/h), "
                      f"gc0 {r['gc0_per_s']:.2f}/s", file=sys.stderr, flush=True)

    def pick(plant: str, key: str, services: str = "none") -> float | None:
        sel = [r for r in rows if r["plant"] == plant and r["services"] == services]
        return med(sel, key) if sel else None

    medians = {}
    for plant in dict.fromkeys(r["plant"] for r in rows):
        for services in dict.fromkeys(r["services"] for r in rows):
            sel = [r for r in rows if r["plant"] == plant and r["services"] == services]
            if sel:
                medians[f"{plant}/{services}"] = {k: med(sel, k) for k in sel[0]
                                                  if k not in ("plant", "services")}
    growth_10k = pick("10000", "rss_growth_mb")
    out = {
        "bench": "footprint",
        "idle_cpu_pct_demo": pick("demo", "cpu_pct"),
        "rss_mb_demo": pick("demo", "rss_mb"),
        "rss_mb_10k": pick("10000", "rss_mb"),
        "rss_mb_50k": pick("50000", "rss_mb"),
        "start_s_demo": pick("demo", "start_s"),
        "start_s_10k": pick("10000", "start_s"),
        "disk_mb_per_h_demo": pick("demo", "disk_mb_per_h"),
        "rss_growth_mb_10min_10k": growth_10k,
        "growth_window_s_10k": pick("10000", "growth_window_s"),
        "runs_each": args.runs, "steady_s": args.steady, "cpus": os.cpu_count(),
        "safegw_root": str(args.safegw_root), "journal": args.journal or "as configured",
        "medians": medians,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
