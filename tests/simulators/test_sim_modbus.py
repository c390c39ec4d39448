"""The Modbus simulators on the wire (raw frames over TCP and the pty), and
``python -m simulators`` as a process: READY line, --seconds, bad config."""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from drivers.serial.frames import crc16_modbus as crc16
from simulators.modbus import rtu_frame
from tests.fixtures.sims import SimProcess

ROOT = Path(__file__).resolve().parents[2]


def _tcp_exchange(sock: socket.socket, frames: list[bytes], n_replies: int,
                  timeout: float = 2.0) -> list[bytes]:
    sock.sendall(b"".join(frames))
    sock.settimeout(timeout)
    buf = b""
    replies: list[bytes] = []
    while len(replies) < n_replies:
        while len(buf) < 6 or len(buf) < 6 + struct.unpack(">H", buf[4:6])[0]:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        n = 6 + struct.unpack(">H", buf[4:6])[0]
        replies.append(buf[:n])
        buf = buf[n:]
    return replies


def _req(tid: int, unit: int, fc: int, start: int, count: int) -> bytes:
    return struct.pack(">HHHBBHH", tid, 0, 6, unit, fc, start, count)


def test_crc16_reference_vector() -> None:
    # the classic example: 01 03 00 00 00 01 → CRC 0x0A84, sent 84 0A
    assert crc16(bytes.fromhex("010300000001")) == 0x0A84
    assert rtu_frame(bytes.fromhex("010300000001")).hex() == "010300000001840a"


def test_tcp_server_frames(modbus_plant: SimProcess) -> None:
    host, port = modbus_plant.tcp("tcp-dev")
    with socket.create_connection((host, port), timeout=5) as s:
        # pipelined: three requests in one write, answered in order
        r = _tcp_exchange(s, [_req(7, 1, 3, 10, 2), _req(8, 1, 4, 0, 1), _req(9, 1, 1, 0, 8)], 3)
        # 21.75 float32 = 41 AE 00 00, CDAB on the wire: 00 00 41 AE
        assert r[0] == bytes.fromhex("0007 0000 0007 01 03 04 0000 41ae".replace(" ", ""))
        assert r[1] == bytes.fromhex("0008 0000 0005 01 04 02 007d".replace(" ", ""))  # 12.5 / 0.1 = 125
        assert r[2] == bytes.fromhex("0009 0000 0004 01 01 01 20".replace(" ", ""))  # coil 5
        # beyond the table: exception 2; a write: exception 1 (reads only); unknown unit: 11
        r = _tcp_exchange(s, [_req(10, 1, 3, 999, 2), _req(11, 1, 6, 0, 1), _req(12, 9, 3, 0, 1)], 3)
        assert r[0][7:] == bytes([0x83, 2])
        assert r[1][7:] == bytes([0x86, 1])
        assert r[2][7:] == bytes([0x83, 11])


def test_tcp_server_faults(modbus_plant: SimProcess) -> None:
    host, port = modbus_plant.tcp("tcp-dev")
    with socket.create_connection((host, port), timeout=5) as s:
        modbus_plant.control(fault="tcp-dev", kind="exception", code=6)
        assert _tcp_exchange(s, [_req(1, 1, 3, 10, 2)], 1)[0][7:] == bytes([0x83, 6])
        modbus_plant.control(fault="tcp-dev", kind="silent")
        s.sendall(_req(2, 1, 3, 10, 2))
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):
            s.recv(100)
        modbus_plant.control(clear="tcp-dev")
        s.settimeout(5)
        assert _tcp_exchange(s, [_req(3, 1, 3, 10, 2)], 1)[0][:2] == b"\x00\x03"


def _open_pty(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    attrs = termios.tcgetattr(fd)
    attrs[0] = attrs[1] = attrs[3] = 0
    attrs[2] = termios.CS8 | termios.CREAD | termios.CLOCAL
    # the simulated line runs at 9600 baud, and its units hear another rate as garbage
    attrs[4] = attrs[5] = termios.B9600
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    return fd


def _rtu_ask(fd: int, pdu: bytes, timeout: float = 1.0) -> bytes:
    os.write(fd, rtu_frame(pdu))
    buf = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return buf
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            return buf
        buf += os.read(fd, 256)
        if len(buf) >= 5 and (buf[1] & 0x80 or len(buf) >= 5 + buf[2]):
            return buf


def test_rtu_units_share_the_line(modbus_plant: SimProcess) -> None:
    fd = _open_pty(modbus_plant.endpoints["rtu-bus"]["port"])
    try:
        # unit 1: holding 0-1 = 1.25 float32 = 3F A0 00 00
        reply = _rtu_ask(fd, bytes.fromhex("010300000002"))
        assert reply[:7] == bytes.fromhex("0103043fa00000")
        assert int.from_bytes(reply[7:9], "little") == crc16(reply[:7])
        # unit 2: input 4 = 6.5 / 0.01 = 650 = 0x028A
        assert _rtu_ask(fd, bytes.fromhex("020400040001"))[:5] == bytes.fromhex("020402028a")
        # unit 7 is not on this line: silence, as on a real RS-485 bus
        assert _rtu_ask(fd, bytes.fromhex("070300000001"), timeout=0.3) == b""
        # a corrupted frame (bad CRC) is ignored; the next good one is answered
        os.write(fd, bytes.fromhex("0103000000020000"))
        assert _rtu_ask(fd, bytes.fromhex("020400040001"))[:5] == bytes.fromhex("020402028a")
        modbus_plant.control(fault="rtu-bus", unit=1, kind="exception", code=4)
        assert _rtu_ask(fd, bytes.fromhex("010300000002"))[:3] == bytes.fromhex("018304")
    finally:
        os.close(fd)


def test_ready_line_and_seconds(tmp_path: Path) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("signals: {A: {base: 1}}\ndevices:\n  - {name: d, protocol: modbus-tcp, port: 0, "
                   "units: [{unit: 1, points: [{signal: A, address: 'input:0'}]}]}\n")
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "simulators", "-c", str(cfg), "--seconds", "0.5"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("READY ")
    ep = json.loads(lines[0][6:])
    assert ep["d"]["protocol"] == "modbus-tcp" and ep["d"]["port"] > 0
    assert time.monotonic() - t0 < 30


def test_bad_config_exits_2_with_location(tmp_path: Path) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("signals: {A: {base: 1, nosie: 2}}\n")
    p = subprocess.run([sys.executable, "-m", "simulators", "-c", str(cfg)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2
    assert f"{cfg}:1:" in p.stderr and "signals.A.nosie" in p.stderr
    assert p.stdout == ""


def test_sigterm_stops_and_removes_links(sim_factory: Callable[..., SimProcess], tmp_path: Path) -> None:
    sim = sim_factory("signals: {A: {base: 1}}\ndevices:\n  - {name: bus, protocol: modbus-rtu, "
                      "link: '{tmp}/tty0', units: [{unit: 1, points: [{signal: A, address: 'input:0'}]}]}\n")
    link = Path(sim.endpoints["bus"]["port"])
    assert link.is_symlink()
    sim.stop()
    assert sim.proc.returncode == 0
    assert not link.is_symlink()
