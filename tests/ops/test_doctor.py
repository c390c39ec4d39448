"""``safegw doctor`` run as a command on real things: a port nothing listens on and one a
real server listens on, an expired self-signed certificate made with ``cryptography``, a
key file of mode 0644, a small tmpfs under the journal's quota, a pseudo-terminal as the
serial port (and one this user may not open), and the kernel's clock state read by
Debian's ``adjtimex`` tool, which the doctor's own reading must agree with."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fixtures.helpers import free_port, mount_tmpfs

ROOT = Path(__file__).resolve().parents[2]


def doctor(cfg: Path, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "gateway.cli", "doctor", "-c", str(cfg), "--timeout", "2", *args]
    if user:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]  # numeric ids
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


def lines(r: subprocess.CompletedProcess[str], level: str, check: str) -> list[str]:
    return [ln for ln in r.stdout.splitlines() if ln.startswith(f"{level} {check}")]


def write_cert(path: Path, *, not_before: datetime, not_after: datetime, cn: str = "safegw-test") -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def base(tmp: Path, extra: str = "", state: Path | None = None) -> Path:
    cfg = tmp / "gw.yaml"
    cfg.write_text(f'gateway: {{id: gw-doc, site: "TEST", state_dir: "{state or tmp / "state"}"}}\n{extra}')
    return cfg


@pytest.fixture
def listener() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def test_servers_reachable_and_not(tmp_path: Path, listener: int) -> None:
    dead = free_port()
    cfg = base(tmp_path, f"mqtt: {{host: 127.0.0.1, port: {listener}}}\n"
                         f'influxdb: {{url: "http://127.0.0.1:{dead}", database: plant}}\n')
    r = doctor(cfg, "--skip", "clock")
    assert r.returncode == 1, r.stdout + r.stderr
    assert lines(r, "ok  ", "servers") == [f"ok   servers  mqtt: 127.0.0.1:{listener} reachable"]
    bad = lines(r, "FAIL", "servers")
    assert bad == [f"FAIL servers  influxdb.url: 127.0.0.1:{dead} Connection refused"]
    assert "fix: start the server" in r.stdout
    ok = doctor(base(tmp_path, f"mqtt: {{host: 127.0.0.1, port: {listener}}}\n"), "--skip", "clock")
    assert ok.returncode == 0, ok.stdout
    assert re.search(r"^0 to fix, 0 warning\(s\), \d+ ok$", ok.stdout, re.M)


def test_expired_certificate_and_open_key(tmp_path: Path, listener: int) -> None:
    now = datetime.now(UTC)
    write_cert(tmp_path / "old.pem", not_before=now - timedelta(days=400), not_after=now - timedelta(days=2))
    write_cert(tmp_path / "soon.pem", not_before=now - timedelta(days=1), not_after=now + timedelta(days=5))
    write_cert(tmp_path / "good.pem", not_before=now - timedelta(days=1), not_after=now + timedelta(days=400))
    key = tmp_path / "client.key"
    key.write_text("not really a key\n")
    key.chmod(0o644)
    pw = tmp_path / "mqtt.pass"
    pw.write_text("pw\n")
    pw.chmod(0o600)
    cfg = base(tmp_path, f"mqtt: {{host: 127.0.0.1, port: {listener}, password_file: mqtt.pass,\n"
                         "       tls: {ca: old.pem, cert: soon.pem, key: client.key}}\n"
                         "uplink: {ca: good.pem}\n")
    r = doctor(cfg, "--skip", "clock", "--skip", "servers")
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    assert re.search(rf"^FAIL certs +mqtt\.tls\.ca: {tmp_path}/old\.pem \(CN=safegw-test\) expired "
                     rf"{(now - timedelta(days=2)):%Y-%m-%d}$", out, re.M), out
    assert re.search(rf"^WARN certs +mqtt\.tls\.cert: {tmp_path}/soon\.pem .* in [45] days$", out, re.M), out
    assert re.search(rf"^ok   certs +uplink\.ca: {tmp_path}/good\.pem", out, re.M), out
    assert f"FAIL files    mqtt.tls.key: {key} has mode 0644, readable by group or others" in out
    assert f"fix: chmod 600 {key}" in out
    assert f"ok   files    mqtt.password_file: {pw} mode 0600" in out
    key.chmod(0o600)
    (tmp_path / "old.pem").write_bytes((tmp_path / "good.pem").read_bytes())
    r = doctor(cfg, "--skip", "clock", "--skip", "servers")
    assert r.returncode == 0, r.stdout  # the one left is a warning
    assert "1 warning(s)" in r.stdout


def test_secrets_in_the_state_directory(tmp_path: Path) -> None:
    from uplink.keys import key_path

    state = tmp_path / "state"
    node = key_path(state)
    node.parent.mkdir(parents=True)
    node.write_text("{}")
    node.chmod(0o640)
    (state / "users.json").write_text("{}")
    (state / "users.json").chmod(0o600)
    r = doctor(base(tmp_path), "--skip", "clock")
    assert r.returncode == 1, r.stdout
    assert f"FAIL files    uplink node keys: {node} has mode 0640, readable by group or others" in r.stdout
    assert f"ok   files    token store: {state / 'users.json'} mode 0600" in r.stdout


def test_not_a_certificate(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    r = doctor(base(tmp_path, "uplink: {ca: junk.pem}\n"), "--skip", "clock")
    assert r.returncode == 1 and "is not a certificate" in r.stdout, r.stdout


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    yield from mount_tmpfs(tmp_path, "4m")


def test_disk_too_small_for_the_journal_quota(tmp_path: Path, small_tmpfs: Path) -> None:
    state = small_tmpfs / "state"
    state.mkdir()
    cfg = base(tmp_path, "journal: {quota: 64MB}\n", state=state)
    r = doctor(cfg, "--skip", "clock")
    assert r.returncode == 1, r.stdout
    assert re.search(rf"^FAIL disk +0\.00 GB free on {state}; .* of its 0\.06 GB quota: 0\.06 GB short$",
                     r.stdout, re.M), r.stdout
    assert "lower journal.quota" in r.stdout
    ok = doctor(base(tmp_path, "journal: {quota: 2MB}\n", state=state), "--skip", "clock")
    assert ok.returncode == 0 and "ok   disk" in ok.stdout, ok.stdout


def _rtu(port: str) -> str:
    return ("devices:\n  - name: rtu\n    protocol: modbus-rtu\n"
            f"    port: {port}\n    units:\n      - unit: 1\n        channels:\n"
            "          - {name: T1, kind: temperature, unit: C, address: 'holding:0', type: int16}\n")


def test_serial_ports(tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        tty = os.ttyname(slave)
        r = doctor(base(tmp_path, _rtu(tty)), "--skip", "clock")
        assert r.returncode == 0, r.stdout
        assert f"ok   serial   device rtu: {tty} readable and writable" in r.stdout
        r = doctor(base(tmp_path, _rtu(str(tmp_path / "ttyNONE"))), "--skip", "clock")
        assert r.returncode == 1 and "ttyNONE does not exist" in r.stdout
        plain = tmp_path / "plain"
        plain.write_text("")
        r = doctor(base(tmp_path, _rtu(str(plain))), "--skip", "clock")
        assert r.returncode == 1 and "is not a character device" in r.stdout
        if os.geteuid() != 0 or shutil.which("setpriv") is None:
            return
        # as an unprivileged user, a root-owned 0600 tty: what a missing dialout group looks like
        os.chmod(tty, 0o600)
        # pytest's tmp folders are root's 0700: the config goes where uid 65534 can read it
        shared = Path(tempfile.mkdtemp(prefix="safegw-doctor-"))
        try:
            shared.chmod(0o755)
            cfg = base(shared, _rtu(tty))
            cfg.chmod(0o644)
            r = doctor(cfg, "--skip", "clock", "--skip", "disk", user="65534")
        finally:
            shutil.rmtree(shared)
        if "Traceback" in r.stderr or "setpriv:" in r.stderr:
            pytest.skip(f"cannot run the doctor as uid 65534 here: {r.stderr[-300:]}")
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"FAIL serial   device rtu: {tty}: not readable and writable by this user" in r.stdout
        assert "fix: add the service user to group" in r.stdout
    finally:
        os.close(master)
        os.close(slave)


def test_clock_agrees_with_the_adjtimex_tool(tmp_path: Path) -> None:
    if shutil.which("adjtimex") is None:
        pytest.skip("Debian's adjtimex tool is not installed")
    td = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"], capture_output=True,
                        text=True) if shutil.which("timedatectl") else None
    if (td and td.returncode == 0) or shutil.which("chronyc"):
        pytest.skip("timedatectl or chrony answers here: the doctor asks them first")
    tool = subprocess.run(["adjtimex", "--print"], capture_output=True, text=True, timeout=10)
    state = int(re.search(r"return value = (\d+)", tool.stdout).group(1))  # type: ignore[union-attr]
    r = doctor(base(tmp_path), "--skip", "servers", "--skip", "disk")
    if state == 5:  # TIME_ERROR (adjtimex(2))
        assert "FAIL clock    not synchronised (kernel adjtimex state TIME_ERROR)" in r.stdout
        assert r.returncode == 1 and "fix: enable time sync" in r.stdout
    else:
        assert f"ok   clock    synchronised (kernel adjtimex state {state})" in r.stdout
        assert r.returncode == 0


def test_bad_config_and_bad_arguments(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway: {id: x, site: T}\nmqtt: {host: 127.0.0.1, port: 99999}\n")
    r = doctor(bad)
    assert r.returncode == 2 and re.search(rf"^{bad}:2:\d+: mqtt\.port", r.stderr, re.M), r.stderr
    r = doctor(base(tmp_path), "--timeout", "1e9")
    assert r.returncode == 2 and "give 0.05 to 60" in r.stderr
