"""`safegw scan`: finding units on an RTU line (at two baud rates) and behind a Modbus-TCP address.

The simulators count every request, every write request and every RTU request that
came sooner than the silent interval after a reply: a scan must leave the last two at 0.
Wrong baud rates are made garbage by simulators.uart (checked here against a character
worked out by hand from the UART framing).
"""

from __future__ import annotations

import asyncio
import io
import os
import select
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drivers.modbus import scan
from gateway.cli import main
from gateway.core.aio import within
from simulators.uart import resample
from simulators.wire import crc16_modbus
from tests.fixtures.helpers import async_wait_until, free_port
from tests.fixtures.sims import ROOT, SimProcess

PLANT = """
seed: 1
tick: 100ms
signals:
  RH: {base: 55.5}
  T: {base: -3.5}
  DB: {base: 62.0}
devices:
  - name: bus
    protocol: modbus-rtu
    link: "{tmp}/ttyRS485"
    baudrate: 9600
    units:
      - unit: 3
        points:
          - {signal: T, address: holding:0, type: int16, scale: 0.1}   # the SRTH100 layout (its template)
          - {signal: RH, address: holding:1, type: uint16, scale: 0.1}
      - unit: 5
        size: 1
      - unit: 7
        baudrate: 19200
        points: [{signal: DB, address: holding:0, type: uint16, scale: 0.1}]
      - unit: 8
        baudrate: 300
  - name: tcp
    protocol: modbus-tcp
    port: 0
    units:
      - unit: 1
        points: [{signal: DB, address: input:0, type: uint16, scale: 0.1}]
      - unit: 2
        size: 1
      - unit: 9
"""


def _scan(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """The real command in its own process (as a user runs it: stderr is not a TTY)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "gateway.cli", "scan", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _scan_here(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The same command in this process (saves an interpreter start per case)."""
    try:
        code = main(["scan", *args])
    except SystemExit as e:  # argparse's own errors
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def _stats(sim: SimProcess, device: str) -> dict[str, int]:
    return sim.control(to=device, stats=True)


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    d = tmp_path_factory.mktemp("scan")
    cfg = d / "sim.yaml"
    cfg.write_text(PLANT.replace("{tmp}", str(d)))
    sim = SimProcess(cfg)
    yield sim
    sim.stop()


@pytest.fixture
def sim(plant: SimProcess) -> SimProcess:
    if plant.proc.poll() is not None:
        raise RuntimeError(f"the shared simulator died: {''.join(plant.stderr)[-2000:]}")
    plant.control(reset=True)
    return plant


# ------------------------------------------------------------------ pure parts

def test_silent_interval_follows_the_serial_line_spec() -> None:
    # MODBUS over Serial Line V1.02 §2.5.1.1: t3.5 = 3.5 characters (§2.5.1: 11 bits); above
    # 19200 baud a fixed 1.750 ms. Hand-computed: 3.5 × 11 / 9600 = 4.0104 ms.
    assert scan.silent_interval_s(9600) == pytest.approx(0.0040104, abs=1e-7)
    assert scan.silent_interval_s(19200) == pytest.approx(0.0020052, abs=1e-7)
    assert scan.silent_interval_s(1200) == pytest.approx(0.0320833, abs=1e-7)
    assert scan.silent_interval_s(19201) == 0.00175
    assert scan.silent_interval_s(38400) == 0.00175
    assert scan.silent_interval_s(115200) == 0.00175
    # a request on the wire: 8 characters of 10 bits (8N1) at 9600 = 8.333 ms; 11 bits (8E1) 9.167 ms
    assert scan.frame_s(8, 9600, "N") == pytest.approx(0.0083333, abs=1e-7)
    assert scan.frame_s(8, 9600, "E") == pytest.approx(0.0091667, abs=1e-7)


def test_uart_model_against_a_hand_worked_character() -> None:
    # 0x55 sent 8N1 at 9600 is, LSB first, start 0, 1 0 1 0 1 0 1 0, stop 1. A receiver at
    # 19200 samples at 0.75, 1.25, ... 4.25 sender bits: 0 1 1 0 0 1 1 0 → 0x66, and its stop
    # bit at 4.75 falls in a 0 → framing error → 0x00. It resynchronises on the next falling
    # edge (sender bit 6) and samples 6.75 .. 10.25: 0 1 1 0 0 1 1 1 → 0xE6, stop at 10.75 idle.
    assert resample(b"\x55", 9600, 19200) == b"\x00\xe6"
    req = bytes.fromhex("010300000001") + crc16_modbus(bytes.fromhex("010300000001")).to_bytes(2, "little")
    assert resample(req, 9600, 9600) == req
    for rx in (4800, 19200, 38400):
        got = resample(req, 9600, rx)
        ok = len(got) >= 8 and crc16_modbus(got[:6]) == int.from_bytes(got[6:8], "little")
        assert not ok, f"a 9600-baud frame read at {rx} baud passed its CRC: {got.hex()}"


@pytest.mark.parametrize(("text", "msg"), [
    ("0-3", "within 1-247"), ("248", "within 1-247"), ("1-x", "not a unit id"), ("5-2", "within 1-247"),
    ("1" * 300, "longer than 200"),
])
def test_bad_units_are_refused_with_the_reason(text: str, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        scan.parse_units(text)


def test_units_and_registers_parse() -> None:
    assert scan.parse_units("1,3-5, 9") == [1, 3, 4, 5, 9]
    assert scan.parse_registers("holding:0-9") == (3, 0, 10)
    assert scan.parse_registers("input:100") == (4, 100, 1)
    assert scan.parse_registers("coil:0-1999") == (1, 0, 2000)
    with pytest.raises(ValueError, match="at most 125"):
        scan.parse_registers("holding:0-125")
    with pytest.raises(ValueError, match="TABLE one of"):
        scan.parse_registers("register:0-9")


def test_suggestions_come_from_the_shipped_templates() -> None:
    names = {s.name.split()[1] for s in scan.template_signatures()}
    # every shipped template with a ranged 16-bit point gives one (gas-transmitter-status has floats)
    assert {"temp-humidity", "noise-meter", "dust-monitor", "gas-controller-8ch"} <= names
    th = next(s for s in scan.template_signatures() if s.name.split()[1] == "temp-humidity")
    # temperature int16 x0.1 over -40..80 °C, humidity uint16 x0.1 over 0..100 %RH (the template file)
    assert sorted(th.checks) == [(3, 0, -400, 800), (3, 1, 0, 1000)]


def test_suggestion_matches_only_a_fitting_template() -> None:
    assert "temp-humidity" in (scan.suggest(3, 0, [0xFFDD, 555]) or "")  # -3.5 °C, 55.5 %RH
    assert scan.suggest(3, 0, [0xFFDD, 2000]) is None  # 200 %RH: nothing fits (noise wants holding 0 ≥ 300)
    assert "noise-meter" in (scan.suggest(3, 0, [620]) or "")  # 62.0 dB(A); T/RH needs holding 1 too
    # both fit [620, 555]: the more specific template (two checks) first, the other named after it
    both = scan.suggest(3, 0, [620, 555]) or ""
    assert both.startswith("template temp-humidity (") and both.endswith("), or noise-meter"), both
    assert scan.suggest(3, 5, [0xFFDD, 555]) is None  # the templates' registers were not read
    assert scan.suggest(1, 0, [1, 0]) is None  # bits never match a register signature


def test_signature_turns_the_engineering_range_into_raw_bounds() -> None:
    sig = scan.signature_of("x", "d", [
        {"address": "input:7", "type": "uint16", "scale": 0.5, "offset": -10, "range": [0, 40]},
        {"address": "holding:2.3", "type": "bool", "range": [0, 1]},  # a bit: says nothing
        {"address": "holding:4", "type": "float32", "range": [0, 1]},  # two registers: skipped
        {"address": "holding:9", "type": "int16"},  # no range: skipped
    ])
    assert sig is not None and sig.checks == ((4, 7, 20, 100),)  # (0+10)/0.5 .. (40+10)/0.5
    assert scan.signature_of("y", "d", [{"address": "holding:0", "type": "float32", "range": [0, 1]}]) is None


# ------------------------------------------------------------------ against the simulators

def test_rtu_scan_finds_units_at_two_baud_rates_and_writes_nothing(sim: SimProcess) -> None:
    before = _stats(sim, "bus")
    port = sim.endpoints["bus"]["port"]
    r = _scan("modbus-rtu", "--port", port, "--baud", "9600,19200", "--parity", "N", "--units", "1-8",
              "--registers", "holding:0-1", "--timeout", "150ms")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    found = {ln.split(":")[0]: ln for ln in lines if ln.startswith("unit ")}
    assert set(found) == {"unit 3 at 9600 baud, parity N", "unit 5 at 9600 baud, parity N",
                          "unit 7 at 19200 baud, parity N"}, r.stdout
    assert "holding:0-1 = 65501 555" in found["unit 3 at 9600 baud, parity N"]
    assert "looks like: template temp-humidity" in found["unit 3 at 9600 baud, parity N"]
    # 620 0 fits a noise meter (62.0 dB) and a T/RH transmitter (62.0 °C, 0 %RH): both are named
    assert "or noise-meter" in found["unit 7 at 19200 baud, parity N"]
    assert "exception 2" in found["unit 5 at 9600 baud, parity N"]  # present, but has no holding:1
    assert "3 unit(s) found" in r.stdout
    # stderr is not a TTY here: plain progress lines, and the estimate first
    assert r.stderr.startswith("scanning ") and "at most" in r.stderr.splitlines()[0]
    assert "progress " in r.stderr
    st = _stats(sim, "bus")
    assert st["writes"] == 0
    assert st["gap_violations"] == 0
    # one frame each reached units 3, 5 and 7: nothing else was heard as a frame
    assert st["requests"] - before["requests"] == 3


def test_a_frame_at_the_wrong_rate_is_garbage_to_the_unit(sim: SimProcess,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    before = _stats(sim, "bus")
    port = sim.endpoints["bus"]["port"]
    code, out, err = _scan_here(capsys, "modbus-rtu", "--port", port, "--baud", "19200,4800", "--parity", "N",
                                "--units", "3,5", "--timeout", "100ms")
    assert code == 1, out + err
    assert "no unit answered" in out
    # units 3 and 5 listen at 9600: not one valid frame reached them
    assert _stats(sim, "bus")["requests"] == before["requests"]


def _ask_300(fd: int, pdu: bytes) -> bytes:
    os.write(fd, pdu + crc16_modbus(pdu).to_bytes(2, "little"))
    buf = b""
    deadline = time.monotonic() + 5.0
    while len(buf) < 7 and time.monotonic() < deadline:  # 08 03 02 hi lo crc crc
        r, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if r:
            buf += os.read(fd, 64)
    return buf


def test_the_gap_check_catches_a_request_sent_too_soon(sim: SimProcess) -> None:
    # The check the scan tests rely on must be able to fail: at 300 baud t3.5 is
    # 3.5 × 11 / 300 = 128 ms, and a request sent as soon as the reply is in breaks it.
    before = _stats(sim, "bus")["gap_violations"]
    fd = os.open(sim.endpoints["bus"]["port"], os.O_RDWR | os.O_NOCTTY)
    try:
        attrs = termios.tcgetattr(fd)
        attrs[0] = attrs[1] = attrs[3] = 0
        attrs[2] = termios.CS8 | termios.CREAD | termios.CLOCAL
        attrs[4] = attrs[5] = termios.B300
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        first = _ask_300(fd, bytes.fromhex("080300000001"))
        assert first[:3] == bytes.fromhex("080302"), first.hex()
        assert _ask_300(fd, bytes.fromhex("080300000001"))[:3] == bytes.fromhex("080302")
    finally:
        os.close(fd)
    assert _stats(sim, "bus")["gap_violations"] == before + 1


def test_rtu_budget_stops_early_and_keeps_what_was_found(sim: SimProcess,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    port = sim.endpoints["bus"]["port"]
    # unit 3 answers first; then 100 silent ids at 100 ms each would take 10 s: the budget cuts it
    code, out, err = _scan_here(capsys, "modbus-rtu", "--port", port, "--baud", "9600", "--parity", "N",
                                "--units", "3,10-109", "--timeout", "100ms", "--budget", "1s")
    assert code == 0, err
    assert "unit 3 at 9600 baud" in out
    assert "stopped early: time budget of 1s spent" in out
    # the estimate up front: 101 probes × (100 ms + t3.5 of 4.010 ms + an 8-byte 8N1 frame of 8.333 ms)
    # = 11.347 s
    assert "worst case 11.3s" in err.splitlines()[0]


def test_rtu_port_missing_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _scan_here(capsys, "modbus-rtu", "--port", str(tmp_path / "ttyNONE"), "--baud", "9600",
                              "--parity", "N", "--units", "1")
    assert code == 3
    assert f"cannot reach {tmp_path / 'ttyNONE'}" in err


def test_bad_arguments_name_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _scan_here(capsys, "modbus-rtu", "--port", "/dev/null", "--baud", "96OO")
    assert code == 2 and "--baud: '96OO' is not valid" in err
    code, _, err = _scan_here(capsys, "modbus-tcp", "127.0.0.1", "--units", "0-5")
    assert code == 2 and "--units" in err and "1-247" in err
    code, _, err = _scan_here(capsys, "modbus-tcp", "127.0.0.1", "--budget", "0s")
    assert code == 2 and "--budget" in err
    code, _, err = _scan_here(capsys, "modbus-tcp", "127.0.0.1", "--port", "70000")
    assert code == 2 and "not a TCP port" in err
    code, _, err = _scan_here(capsys, "modbus-tcp", "h" * 300)
    assert code == 2 and "1-253 characters" in err
    code, _, err = _scan_here(capsys, "modbus-tcp", "x" * 70 + ".invalid", "--units", "1")
    assert code == 3 and "cannot reach" in err  # a label over 63 characters: refused, no traceback


def test_tcp_scan_finds_several_units_and_writes_nothing(sim: SimProcess,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    before = _stats(sim, "tcp")
    host, port = sim.tcp("tcp")
    code, out, err = _scan_here(capsys, "modbus-tcp", host, "--port", str(port), "--units", "1-12",
                                "--registers", "input:0-1", "--timeout", "500ms")
    assert code == 0, err
    found = {ln.split(":")[0]: ln for ln in out.splitlines() if ln.startswith("unit ")}
    assert set(found) == {"unit 1", "unit 2", "unit 9"}, out
    assert "input:0-1 = 620 0" in found["unit 1"]
    assert "exception 2" in found["unit 2"]
    st = _stats(sim, "tcp")
    assert st["writes"] == 0
    # units 1, 2 and 9 answered; the absent ids got exception 11 from the server, not from a unit
    assert st["requests"] - before["requests"] == 3


def test_tcp_silent_unit_is_not_found(sim: SimProcess, capsys: pytest.CaptureFixture[str]) -> None:
    sim.control(fault="tcp", kind="silent", unit=9)
    host, port = sim.tcp("tcp")
    code, out, err = _scan_here(capsys, "modbus-tcp", host, "--port", str(port), "--units", "1,9",
                                "--timeout", "300ms")
    assert code == 0, err
    units = [ln.split(":")[0] for ln in out.splitlines() if ln.startswith("unit ")]
    assert units == ["unit 1"], out


def test_tcp_refused_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens there: connection refused
    code, _, err = _scan_here(capsys, "modbus-tcp", "127.0.0.1", "--port", str(port), "--units", "1")
    assert code == 3
    assert f"cannot reach 127.0.0.1:{port}" in err


async def test_rtu_port_lost_mid_scan_keeps_what_was_found(sim_factory: Callable[..., SimProcess]) -> None:
    sim = sim_factory(PLANT)  # its own plant: this test pulls the USB adapter
    port = sim.endpoints["bus"]["port"]
    prog = scan.Progress(200, io.StringIO(), tty=False)
    task = asyncio.create_task(scan.scan_rtu(port, bauds=[9600], parities=["N"], units=[3, *range(10, 200)],
                                             registers=(3, 0, 2), reply_s=0.1, budget_s=60, progress=prog))
    await async_wait_until(lambda: prog.done >= 2, timeout=20, what="unit 3 and one silent id probed")
    await asyncio.to_thread(sim.control, fault="bus", kind="disconnect")
    res = await within(task, 30)
    assert [f.unit for f in res.found] == [3]
    assert res.found[0].values == [65501, 555]
    assert res.stopped is not None and f"serial port {port} lost at 9600 baud" in res.stopped
    assert "stopped early: serial port" in "\n".join(scan.report_lines(res, 3, 0))


def test_progress_is_a_bar_on_a_tty_and_lines_otherwise() -> None:
    bar, plain = io.StringIO(), io.StringIO()
    pb, pp = scan.Progress(20, bar, tty=True), scan.Progress(20, plain, tty=False)
    for i in range(20):
        pb.step(f"unit {i + 1}")
        pp.step(f"unit {i + 1}")
    pb.end()
    assert bar.getvalue().count("\r") == 20 and bar.getvalue().endswith("\n")
    assert "\r[" + "#" * 30 + "] 20/20 unit 20" in bar.getvalue()
    lines = plain.getvalue().splitlines()
    assert len(lines) == 11 and lines[-1].startswith("progress 20/20 (100%)")  # one line every 10 %
    assert "\r" not in plain.getvalue()


async def test_tcp_device_gone_mid_scan_keeps_what_was_found(sim_factory: Callable[..., SimProcess]) -> None:
    sim = sim_factory(PLANT)  # its own plant: this test takes the device away
    sim.control(fault="tcp", kind="silent", unit=2)  # unit 2 keeps the scan waiting for its answer
    host, port = sim.tcp("tcp")
    prog = scan.Progress(3, io.StringIO(), tty=False)
    task = asyncio.create_task(scan.scan_tcp(host, port, units=[1, 2, 9], registers=(4, 0, 1), reply_s=20,
                                             budget_s=60, progress=prog))
    await async_wait_until(lambda: prog.done >= 1, timeout=20, what="unit 1 probed")
    await asyncio.to_thread(sim.control, fault="tcp", kind="disconnect")
    res = await within(task, 30)
    assert [(f.unit, f.values) for f in res.found] == [(1, [620])]
    assert res.stopped == f"the device at {host}:{port} went away at unit 9"
    assert any(e.startswith("unit 2: connection lost") for e in res.errors), res.errors


def test_progress_bar_when_stderr_is_a_terminal(sim: SimProcess) -> None:
    host, port = sim.tcp("tcp")
    master, slave = os.openpty()
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "gateway.cli", "scan", "modbus-tcp", host, "--port", str(port),
               "--units", "1-12"]
        r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=slave, text=True,
                           timeout=60, check=False)
        os.close(slave)
        slave = -1
        seen = b""
        while select.select([master], [], [], 0)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the writer is gone and everything was read
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert r.returncode == 0, seen
    text = seen.decode()
    assert text.count("\r[") == 12 and "] 12/12 unit 12" in text
    assert "progress " not in text  # no plain lines on a terminal
    assert "unit 9:" in r.stdout
