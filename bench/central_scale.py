"""Benchmark: a province's central: G gateways × C channels pushed into W central workers
that store into a real VictoriaMetrics and PostgreSQL, both started here.

- Envelopes are real: each gateway has its own keys; its journal records (one poll of
  all C channels each, values at 0.01 resolution, 1 s apart) are sealed (encoded,
  zstd, AES-256-GCM to the province's key, Ed25519-signed) before the clock starts.
- A pusher process posts them as pushing gateways do (signed ``POST /sync/v1/push``,
  in order per gateway, ``--inflight`` requests at once per worker); gateway i goes to
  worker i mod W. The workers are ``safegw central -c FILE`` processes sharing one
  PostgreSQL state (cursors by compare-and-set), writing samples to VictoriaMetrics and
  events to PostgreSQL, the cursor moved only after both acknowledged.
- ``samples_per_s``: samples stored ÷ wall time from the first push to the last
  cursor commit, checked by counting the samples back from VictoriaMetrics.
- ``lag_s``: the slowest gateway's delay: its last envelope's acknowledgement minus
  the moment its data was offered (all at the start: a backlog drain).
- ``worker_cpu_us_per_sample``: the workers' CPU (user + system, /proc) ÷ samples;
  likewise VictoriaMetrics, PostgreSQL and the pusher (what a province must provision).
- ``disk_bytes_per_sample``: VictoriaMetrics' data directory after a flush ÷ samples.
- ``stage_us_per_sample``: one core, in this process, per stage of a worker: open
  (signature, decryption, decoding), formatting (line protocol, JSON import), and the
  per-origin SQLite journal append central keeps without a store (the decision in docs/central.md, Sizing).

    .venv/bin/python bench/central_scale.py [--gateways 1000 --channels 200 --seconds 20 --workers 2]
        [--format json|influx] [--py-spy DIR]

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import multiprocessing as mp
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fixtures.helpers import free_port, wait_port
from tests.fixtures.victoria import VictoriaMetrics

CENTRAL = "prov-37"


# --------------------------------------------------------------------------- PostgreSQL
class Postgres:
    """A private PostgreSQL cluster (initdb) on an ephemeral port, as user postgres when root."""

    def __init__(self, root: Path):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins:
            raise SystemExit("PostgreSQL server binaries not found (Debian package postgresql)")
        self.bin = Path(bins[-1])
        self.dir = root / "pg"
        self.dir.mkdir()
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            os.chmod(root, 0o755)
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> str:
        self._run(str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres",
                  "--no-sync")
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=50"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-o", opts, "-l",
                  str(self.dir / "log"), "-w", "start")
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-f", f"-p {self.port}"], capture_output=True,
                             text=True).stdout.split()
        pid_file = self.dir / "data" / "postmaster.pid"
        main = int(pid_file.read_text().split()[0]) if pid_file.exists() else 0
        kids = subprocess.run(["pgrep", "-P", str(main)], capture_output=True, text=True).stdout.split()
        return sorted({main, *map(int, kids), *map(int, out)} - {0})

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")


def cpu_s(pids: list[int]) -> float:
    tck = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in pids:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / tck
        except (OSError, IndexError, ValueError):
            pass
    return total


# --------------------------------------------------------------------------- envelopes
def records_for(root: Path, channels: int, seconds: int, variant: int, t0: int) -> list[Any]:
    """One gateway's journal records: a channel table, then one poll of every channel a second."""
    from gateway.core import chantable
    from gateway.core.batch import Batch
    from gateway.store.journal import Journal

    kinds = ["gas", "temperature", "pressure", "level"]
    chans = [{"index": i, "name": f"CH{i:03d}", "kind": kinds[i % 4], "unit": "u", "device": f"d{i // 50}",
              "area": f"a{i % 8}", "hazard_source": f"HS-{i % 3}"} for i in range(channels)]
    doc: dict[str, Any] = {"type": "channel_table", "ts": t0, "table_version": "", "fingerprint": "0" * 16,
                           "gateway_id": "x", "site_code": "91370100MA3C000000", "channels": chans}
    doc["table_version"] = chantable.version_of(doc)
    rng = np.random.default_rng(variant)
    level = rng.uniform(0, 100, channels)
    items: list[Any] = [doc]
    ch = np.arange(channels, dtype=np.int32)
    for s in range(seconds):
        level = level + rng.normal(0, 0.05, channels)
        items.append(Batch.build(ch, np.full(channels, t0 + s * 10**9, np.int64), np.round(level, 2), 0))
    j = Journal(root / f"src{variant}.db", sync="normal")
    try:
        asyncio.run(j.append_many(items))
        return j.read_sync(0, len(items) + 1)
    finally:
        j.close()


_SEAL: dict[str, Any] = {}


def _seal_init(root: str, variants: list[Any], per_env: int) -> None:
    from uplink import keys

    _SEAL.update(root=Path(root), variants=variants, per_env=per_env,
                 central=keys.load_public(Path(root) / "pub" / f"{CENTRAL}.pub.yaml"))


def _seal_gateway(g: int) -> dict[str, Any]:
    """One gateway's keys and sealed envelopes (in a pool process)."""
    from uplink import envelope, keys

    root, per_env, central_pub = _SEAL["root"], _SEAL["per_env"], _SEAL["central"]
    gid = f"gw-{g:05d}"
    k = keys.init(root / "gw" / gid, gid)
    keys.save_public(root / "pub" / f"{gid}.pub.yaml", k)
    recs = _SEAL["variants"][g % len(_SEAL["variants"])]
    # the first envelope (the channel table and the first poll) is pushed before the clock
    # starts: a running central has met every gateway and its table already
    envs = [(recs[1].seq, envelope.seal(recs[:2], sender=k, recipients=central_pub))]
    for a in range(2, len(recs), per_env):
        chunk = recs[a:a + per_env]
        envs.append((chunk[-1].seq, envelope.seal(chunk, sender=k, recipients=central_pub)))
    return {"id": gid, "kid": k.kid, "key": str(root / "gw" / gid), "envs": envs, "head": recs[-1].seq}


def seal_all(root: Path, gateways: int, channels: int, seconds: int, per_env: int, t0: int) -> dict[str, Any]:
    """Keys and sealed envelopes of every gateway, on every core (before the clock starts)."""
    from uplink import keys

    ck = keys.init(root / "w0", CENTRAL)
    pub_dir = root / "pub"
    pub_dir.mkdir()
    keys.save_public(pub_dir / f"{CENTRAL}.pub.yaml", ck)
    variants = [records_for(root, channels, seconds, v, t0) for v in range(8)]
    ctx = mp.get_context("spawn")
    with ctx.Pool(os.cpu_count() or 2, _seal_init, (str(root), variants, per_env)) as pool:
        gws = pool.map(_seal_gateway, range(gateways), chunksize=max(1, gateways // 64))
    return {"gateways": gws, "pub_dir": str(pub_dir)}


# --------------------------------------------------------------------------- pusher
def _pusher(spec: dict[str, Any], ports: list[int], certs: list[str], inflight: int, q: Any,
            ready: Any) -> None:
    q.put(asyncio.run(_push_main(spec, ports, certs, inflight, q, ready)))


async def _push_main(spec: dict[str, Any], ports: list[int], certs: list[str], inflight: int, q: Any,
                     ready: Any) -> dict[str, Any]:
    import httpx

    from uplink import keys
    from uplink.sync import Item, Signer
    from uplink.sync.source import pack_frames

    clients = [httpx.AsyncClient(verify=ssl.create_default_context(cafile=c), timeout=600,
                                 limits=httpx.Limits(max_connections=inflight)) for c in certs]
    slots = [asyncio.Semaphore(inflight) for _ in ports]
    start = time.time()
    done: dict[str, float] = {}
    failures = 0

    async def gateway(i: int, g: dict[str, Any], warm: bool) -> None:
        nonlocal failures
        k = keys.load_or_none(g["key"])
        assert k is not None
        signer = Signer(k.ed25519, k.kid)
        w = i % len(ports)
        for seq, env in g["envs"][:1] if warm else g["envs"][1:]:
            body = pack_frames([Item("main", seq, env)])
            target = f"/sync/v1/push?head={g['head']}&first=1"
            while True:
                async with slots[w]:
                    r = await clients[w].post(f"https://127.0.0.1:{ports[w]}{target}", content=body,
                                              headers={**signer.headers("POST", target, body, to=CENTRAL),
                                                       "content-type": "application/x-safegw-frames"})
                if r.status_code == 200 and r.json()["cursors"]["main"] >= seq:
                    break
                failures += 1
        done[g["id"]] = time.time() - start

    await asyncio.gather(*(gateway(i, g, True) for i, g in enumerate(spec["gateways"])))
    q.put({"warm": True})
    ready.wait()  # the parent reads the CPU counters
    start = time.time()
    t_cpu = time.process_time()
    await asyncio.gather(*(gateway(i, g, False) for i, g in enumerate(spec["gateways"])))
    for c in clients:
        await c.aclose()
    lags = sorted(done.values())
    return {"start": start, "lag_s": lags[-1], "lag_p50_s": lags[len(lags) // 2], "failures": failures,
            "pusher_cpu_s": time.process_time() - t_cpu}


# --------------------------------------------------------------------------- stages
def stage_costs(root: Path, channels: int, per_env: int, t0: int) -> dict[str, float]:
    """CPU-µs per sample of each stage of a worker, on one core in this process."""
    from central.config_vm import VictoriaMetricsSection
    from central.store_vm import VmStore
    from gateway.core.record import SAMPLES
    from gateway.store.journal import Journal
    from uplink import envelope, keys

    ck = keys.load_or_none(root / "w0")
    assert ck is not None
    recs = records_for(root, channels, per_env * 20, 99, t0)
    k = keys.init(root / "stage-gw", "gw-stage")
    trust = keys.TrustStore()
    keys.save_public(root / "stage.pub.yaml", k)
    for pk in keys.load_public(root / "stage.pub.yaml"):
        trust.add(pk)
    central_pub = keys.load_public(root / "pub" / f"{CENTRAL}.pub.yaml")
    envs = [envelope.seal(recs[a:a + per_env], sender=k, recipients=central_pub)
            for a in range(0, len(recs), per_env)]
    n = sum(r.n for r in recs if r.kind == SAMPLES)
    t = time.process_time()
    opened = [envelope.open_envelope(e, recipient=[ck], trusted=trust) for e in envs]
    open_s = time.process_time() - t
    doc = recs[0].event()
    fmt_s = {}
    for fmt in ("influx", "json"):
        store = VmStore.__new__(VmStore)
        store.sec = VictoriaMetricsSection(url=["http://127.0.0.1:1"], format=fmt)
        store._series = {}
        store.samples = 0
        t = time.process_time()
        for o in opened:
            store.format("gw-stage", o.records, doc, tables_in_order=True)
        fmt_s[fmt] = time.process_time() - t
    j = Journal(root / "stage-journal.db", sync="normal")
    items = [[r.batch() if r.kind == SAMPLES else r.event() for r in o.records] for o in opened]
    t = time.process_time()
    t_wall = time.perf_counter()
    for it in items:
        asyncio.run(j.append_many(it))
    jr_s = time.process_time() - t
    jr_wall = time.perf_counter() - t_wall
    j.close()
    return {"open": open_s / n * 1e6, "line_protocol": fmt_s["influx"] / n * 1e6,
            "json_import": fmt_s["json"] / n * 1e6, "journal_append": jr_s / n * 1e6,
            "journal_append_wall": jr_wall / n * 1e6}


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gateways", type=int, default=1000)
    ap.add_argument("--channels", type=int, default=200)
    ap.add_argument("--seconds", type=int, default=10, help="polls per gateway (1 s apart)")
    ap.add_argument("--per-envelope", type=int, default=10, help="records per envelope")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--inflight", type=int, default=16, help="pushes in flight per worker")
    ap.add_argument("--format", choices=["json", "influx"], default="json",
                    help="what the workers write to VictoriaMetrics (victoriametrics.format)")
    ap.add_argument("--journal", action="store_true", help="workers also keep the per-origin journal")
    ap.add_argument("--profile", metavar="DIR", help="run the workers under cProfile, profiles in DIR")
    ap.add_argument("--py-spy", metavar="DIR", help=(
        "sample the workers with py-spy (non-blocking) during the timed part: collapsed stacks in DIR"))
    a = ap.parse_args()
    spy_bin = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if a.py_spy and not spy_bin:
        raise SystemExit("--py-spy needs py-spy (.venv/bin/pip install py-spy)")
    root = Path(tempfile.mkdtemp(prefix="central-scale-"))
    t0 = (time.time_ns() // 10**9 - 3600) * 10**9
    total = a.gateways * a.channels * a.seconds
    pg = Postgres(root)
    vm = VictoriaMetrics(root / "vm")
    workers: list[subprocess.Popen[bytes]] = []
    try:
        t = time.perf_counter()
        spec = seal_all(root, a.gateways, a.channels, a.seconds, a.per_envelope, t0)
        print(f"sealed {sum(len(g['envs']) for g in spec['gateways'])} envelopes for {a.gateways} gateways "
              f"({total} samples) in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        dsn = pg.start()
        vm.start()
        ports = [free_port() for _ in range(a.workers)]
        sources = [{"id": g["id"], "keys": f"{spec['pub_dir']}/{g['id']}.pub.yaml", "mode": "push"}
                   for g in spec["gateways"]]
        for w in range(a.workers):
            wdir = root / f"w{w}"
            if w:
                shutil.copytree(root / "w0" / "keys", wdir / "keys")
            cfg = {"node": {"id": CENTRAL, "state_dir": str(wdir), "log_level": "WARNING"},
                   "listen": {"address": f"127.0.0.1:{ports[w]}"},
                   "state": {"backend": "postgres", "dsn": dsn, "worker": f"w{w}"},
                   "sources": sources,
                   "victoriametrics": {"url": [vm.url], "journal": a.journal, "format": a.format}}
            (root / f"w{w}.yaml").write_text(json.dumps(cfg))
            cmd = [str(Path(sys.executable).parent / "safegw"), "central", "-c", str(root / f"w{w}.yaml")]
            if a.profile:  # cProfile of each worker, written when it stops
                cmd = [sys.executable, "-m", "cProfile", "-o", f"{a.profile}/w{w}.prof", *cmd]
            with (root / f"w{w}.log").open("wb") as log:
                workers.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log))
        for w in range(a.workers):  # all started at once, on an empty database
            wait_port("127.0.0.1", ports[w], timeout=60)
        certs = [str(root / f"w{w}" / "tls.crt") for w in range(a.workers)]
        wpids = [p.pid for p in workers]
        vm_pid = vm.proc.pid if vm.proc else 0
        ctx = mp.get_context("spawn")
        q: Any = ctx.Queue()
        ready = ctx.Event()
        pusher = ctx.Process(target=_pusher, args=(spec, ports, certs, a.inflight, q, ready))
        pusher.start()
        q.get()  # every gateway met (its first envelope stored)
        spies = [subprocess.Popen([str(spy_bin), "record", "--pid", str(p),
                                   "--nonblocking", "--rate", "200", "--format", "raw",
                                   "-o", f"{a.py_spy}/w{w}.txt"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for w, p in enumerate(wpids)] if a.py_spy else []
        before = {"w": cpu_s(wpids), "vm": cpu_s([vm_pid]), "pg": cpu_s(pg.pids())}
        t_wall = time.time()
        ready.set()
        res = q.get()
        pusher.join()
        elapsed = res["lag_s"]
        after = {"w": cpu_s(wpids), "vm": cpu_s([vm_pid]), "pg": cpu_s(pg.pids())}
        for spy in spies:  # py-spy writes its file on SIGINT
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        vm.flush()
        counted = int(float(vm.query(f"sum(count_over_time(safegw_value[{a.seconds + 60}s]))",
                                     at_s=t0 / 1e9 + a.seconds + 30)[0]["value"][1]))
        timed = counted - a.gateways * a.channels  # less the first poll, stored before the clock
        disk = vm.disk_bytes()
        stages = stage_costs(root, a.channels, a.per_envelope, t0)
        out = {
            "gateways": a.gateways, "channels": a.channels, "seconds": a.seconds, "workers": a.workers,
            "format": a.format, "journal": a.journal, "samples": total, "samples_counted_in_vm": counted,
            "samples_timed": timed, "samples_per_s": round(timed / elapsed), "lag_s": round(res["lag_s"], 2),
            "lag_p50_s": round(res["lag_p50_s"], 2), "push_retries": res["failures"],
            "worker_cpu_us_per_sample": round((after["w"] - before["w"]) / timed * 1e6, 3),
            "vm_cpu_us_per_sample": round((after["vm"] - before["vm"]) / timed * 1e6, 3),
            "pg_cpu_us_per_sample": round((after["pg"] - before["pg"]) / timed * 1e6, 3),
            "pusher_cpu_us_per_sample": round(res["pusher_cpu_s"] / timed * 1e6, 3),
            "disk_bytes_per_sample": round(disk / counted, 3),
            "stage_us_per_sample": {k: round(v, 3) for k, v in stages.items()},
            "load_avg_1m": os.getloadavg()[0], "wall_s": round(time.time() - t_wall, 1),
        }
        if counted != total:
            out["error"] = f"VictoriaMetrics holds {counted} samples, {total} were sent"
        print(json.dumps(out))
    except BaseException:
        for w in range(len(workers)):
            tail = (root / f"w{w}.log").read_text(errors="replace")[-3000:]
            print(f"--- worker {w} log:\n{tail}", file=sys.stderr)
        raise
    finally:
        for p in workers:
            p.terminate()
        for p in workers:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        vm.stop()
        try:
            pg.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
