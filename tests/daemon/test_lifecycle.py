"""``safegw run`` as systemd runs it: a subprocess that speaks sd_notify over a real
unix datagram socket (READY, WATCHDOG, STOPPING) and stops cleanly and promptly on
SIGTERM and SIGINT, with the journal intact afterwards."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.core.batch import Batch
from gateway.core.record import SAMPLES, decode_data
from gateway.store.journal import Journal
from tests.fixtures.helpers import free_port, mount_tmpfs, wait_until
from tests.fixtures.sims import MODBUS_EXPECTED, SimProcess, gateway_yaml

ROOT = Path(__file__).resolve().parents[2]
DRAIN_S = 2.0


class Manager:
    """Plays systemd's part: binds NOTIFY_SOCKET and collects what the service says."""

    def __init__(self) -> None:
        self.address = f"@safegw-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.messages: list[tuple[float, str]] = []
        self._cv = threading.Condition()
        self._closed = False
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            with self._cv:
                self.messages.append((time.monotonic(), data.decode()))
                self._cv.notify_all()

    def wait_for(self, pred: Callable[[str], bool], timeout: float, what: str, count: int = 1) -> list[float]:
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                hits = [t for t, m in self.messages if pred(m)]
                if len(hits) >= count:
                    return hits
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {what} within {timeout}s; got {[m for _, m in self.messages]}")
                self._cv.wait(left)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def manager() -> Iterator[Manager]:
    m = Manager()
    yield m
    m.close()


def start_gateway(cfg: Path, manager: Manager | None, watchdog_usec: int = 600_000,
                  extra: list[str] | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    if manager is not None:
        env["NOTIFY_SOCKET"] = manager.address
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", "-c", str(cfg), "--drain", str(DRAIN_S), *(extra or [])],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_gateway(proc: subprocess.Popen[str], sig: int, bound: float) -> tuple[float, str]:
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=bound + 10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        name = signal.Signals(sig).name
        raise AssertionError(f"did not stop within {bound + 10}s after {name}:\n{err}") from None
    return time.monotonic() - t0, err


def good_channels(jpath: Path) -> set[int]:
    """Channels with a good sample in the journal, read over a plain read-only connection."""
    if not jpath.exists():
        return set()
    db = sqlite3.connect(f"file:{jpath}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT codec, data FROM records WHERE kind = ?", (SAMPLES,)).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return set()
    finally:
        db.close()
    out: set[int] = set()
    for codec, data in rows:
        b = Batch.from_bytes(decode_data(codec, data))
        out |= {int(c) for c in b.channel[b.quality < 0x40]}
    return out


def empty_config(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f'gateway: {{id: gw-life, site: "TEST", state_dir: "{tmp_path / "state"}"}}\n{extra}')
    return cfg


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_notify_and_clean_stop_without_devices(tmp_path: Path, manager: Manager, sig: int) -> None:
    proc = start_gateway(empty_config(tmp_path), manager)
    try:
        t_ready = manager.wait_for(lambda m: m.startswith("READY=1"), 30, "READY=1")[0]
        ready = next(m for _, m in manager.messages if m.startswith("READY=1"))
        assert "STATUS=0 devices, 0 channels" in ready
        # WATCHDOG_USEC=0.6s: pings at least every 0.2s, so three come within a second
        pings = manager.wait_for(lambda m: m == "WATCHDOG=1", 5, "three WATCHDOG=1", count=3)
        assert max(b - a for a, b in zip([t_ready, *pings], pings, strict=False)) < 0.6
        took, err = stop_gateway(proc, sig, DRAIN_S + 3)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert took < DRAIN_S + 3, f"stop took {took:.1f}s"
    manager.wait_for(lambda m: m == "STOPPING=1", 2, "STOPPING=1")
    order = [m.split("\n")[0] for _, m in manager.messages if m != "WATCHDOG=1"]
    assert order == ["READY=1", "STOPPING=1"]
    assert "stopped" in err


def test_runs_without_notify_socket(tmp_path: Path) -> None:
    """By hand (no systemd) it runs the same, and says it is running in its log."""
    proc = start_gateway(empty_config(tmp_path), None)
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        for line in proc.stderr:
            if "running" in line:
                break
            assert time.monotonic() < deadline
        stop_gateway(proc, signal.SIGTERM, DRAIN_S + 3)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


def test_bad_config_exits_2_before_ready(tmp_path: Path, manager: Manager) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text('gateway: {id: gw-life, site: "TEST", colour: red}\n')
    proc = start_gateway(cfg, manager)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert f"{cfg}:1:38: gateway.colour: unknown key 'colour'" in err
    assert not [m for _, m in manager.messages if m.startswith("READY")]


def test_unreachable_device_does_not_delay_the_stop(tmp_path: Path, manager: Manager) -> None:
    """A device nobody answers for (connection refused, backing off) must not hold up
    READY or the stop."""
    port = free_port()
    cfg = empty_config(tmp_path, f"""\
devices:
  - name: dead-plc
    protocol: modbus-tcp
    host: 127.0.0.1
    port: {port}
    poll: 1s
    timeout: 500ms
    channels: [{{name: T1, kind: level, address: holding:0}}]
""")
    proc = start_gateway(cfg, manager)
    try:
        manager.wait_for(lambda m: m.startswith("READY=1"), 30, "READY=1")
        manager.wait_for(lambda m: m == "WATCHDOG=1", 5, "WATCHDOG=1", count=5)
        took, err = stop_gateway(proc, signal.SIGTERM, DRAIN_S + 3)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert took < DRAIN_S + 3
    assert "device dead-plc failed" in err
    with Journal(tmp_path / "state" / "journal.db") as j:  # the failure is data: bad samples
        recs = [r for r in j.read_sync(0, 100) if r.kind == SAMPLES]
        assert recs and all((r.batch().quality >= 0x80).all() for r in recs)


@pytest.mark.timeout(120)
def test_polls_simulators_and_keeps_everything_after_sigterm(
        tmp_path: Path, manager: Manager, modbus_plant: SimProcess) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(gateway_yaml(modbus_plant, tmp_path / "state"))
    proc = start_gateway(cfg, manager)
    jpath = tmp_path / "state" / "journal.db"
    try:
        manager.wait_for(lambda m: m.startswith("READY=1"), 30, "READY=1")
        ready = next(m for _, m in manager.messages if m.startswith("READY=1"))
        assert "STATUS=2 devices, 5 channels" in ready

        # meanwhile a second, read-only connection sees the journal fill
        wait_until(lambda: len(good_channels(jpath)) == 5, 30, interval=0.3,
                   what="good values of all 5 channels in the journal")
        took, err = stop_gateway(proc, signal.SIGTERM, DRAIN_S + 3)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert took < DRAIN_S + 3
    with Journal(jpath) as j:
        assert j.last_seq > 0
        names = ["GT-1", "TT-1", "SW-1", "PT-1", "LT-1"]  # channel order in gateway_yaml
        last: dict[str, float] = {}
        for r in j.read_sync(0, 100_000, kinds=(SAMPLES,)):
            b = r.batch()
            for ch, v, q in zip(b.channel, b.value, b.quality, strict=True):
                if q < 0x40:
                    last[names[ch]] = float(v)
        for name, want in MODBUS_EXPECTED.items():
            assert abs(last[name] - want) <= 0.05 * abs(want) + 0.2, (name, last[name], want)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MB tmpfs for the state directory (needs root; skipped otherwise)."""
    yield from mount_tmpfs(tmp_path, "8m")


@pytest.mark.timeout(120)
def test_full_disk_keeps_the_daemon_up(tmp_path: Path, manager: Manager, modbus_plant: SimProcess,
                                       small_tmpfs: Path) -> None:
    """The state directory's disk fills up: the daemon stays up and keeps feeding the
    watchdog, says so once (not once per batch), and journals again once space is back."""
    filler = small_tmpfs / "filler"
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(gateway_yaml(modbus_plant, small_tmpfs / "state"))
    proc = start_gateway(cfg, manager, extra=["--log-level", "INFO"])
    assert proc.stderr is not None
    log_lines: list[str] = []
    got = threading.Condition()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with got:
                log_lines.append(line)
                got.notify_all()

    def wait_log(text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with got:
            while not any(text in ln for ln in log_lines):
                left = deadline - time.monotonic()
                assert left > 0, f"no {text!r} in the log within {timeout}s:\n{''.join(log_lines[-30:])}"
                got.wait(left)

    threading.Thread(target=pump, daemon=True).start()
    try:
        manager.wait_for(lambda m: m.startswith("READY=1"), 30, "READY=1")
        wait_until(lambda: len(good_channels(small_tmpfs / "state" / "journal.db")) == 5, 30, interval=0.3,
                   what="good values in the journal")
        # fill the disk to the last block (unbuffered, so closing has nothing left to write)
        with open(filler, "wb", buffering=0) as f:
            for chunk in (b"\0" * 65536, b"\0" * 4096, b"\0" * 512):
                try:
                    while f.write(chunk):
                        pass
                except OSError:
                    pass
        wait_log("journal refused a batch", 20)
        n_before = len(manager.messages)
        manager.wait_for(lambda m: m == "WATCHDOG=1", 5, "watchdog pings while the disk is full",
                         count=sum(1 for _, m in manager.messages if m == "WATCHDOG=1") + 5)
        assert proc.poll() is None and len(manager.messages) > n_before
        refusals = [ln for ln in log_lines if "journal refused a batch" in ln]
        assert len(refusals) == 1, refusals
        filler.unlink()  # the operator makes room
        wait_log("journal takes batches again", 20)
        proc.send_signal(signal.SIGTERM)  # (stderr is the pump's: no communicate() here)
        proc.wait(DRAIN_S + 13)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(log_lines[-30:])
