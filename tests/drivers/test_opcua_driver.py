"""The OPC-UA driver against the OPC-UA simulator over real TCP (loopback).

Poll and subscribe modes, NodeId forms and browse paths, missing nodes, status codes,
timestamps, security (None and signed+encrypted with certificates made here), user
names, and a server restart in the middle of a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import os
import re
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from asyncua import Server
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from drivers.base import DeviceUnavailable, make_driver, stamp
from gateway.config import loads
from gateway.core.batch import Batch, Quality
from gateway.core.channels import ChannelTable
from rules.engine import RulesEngine
from simulators.config import loads as sim_loads
from simulators.runner import Simulator
from simulators.scenario import Fault
from tests.fixtures.helpers import async_wait_until, free_port

# one simulator per module (building an asyncua server's address space costs seconds)
pytestmark = [pytest.mark.timeout(90), pytest.mark.asyncio(loop_scope="module")]

GUID = "72962b91-fa75-4ae6-8d28-b404dc7daf63"
ROOT = Path(__file__).resolve().parents[2]

SIM = f"""
signals:
  R201.PT01: {{base: 1.2}}
  R201.TT01: {{base: 80.0}}
  T101.LT01: {{base: 5.0}}
devices:
  - name: dcs
    protocol: opcua
    {{extra}}
    points:
      - {{signal: R201.PT01, node: "s=R201.PT01"}}
      - {{signal: R201.TT01, node: "i=1001", browse: "R201/TT01"}}
      - {{signal: T101.LT01, node: "g={GUID}"}}
"""

CHANNELS = f"""
    channels:
      - {{name: R201.pressure, kind: pressure, unit: MPa, node: "ns=2;s=R201.PT01"}}
      - {{name: R201.temperature, kind: temperature, unit: degC,
          browse_path: ["0:Objects", "2:Plant", "2:R201", "2:TT01"]}}
      - {{name: T101.level, kind: level, unit: m, node: "ns=2;g={GUID}"}}
"""


def gw_yaml(tmp: Path, endpoint: str, *, mode: str = "poll", extra: str = "", channels: str = CHANNELS,
            poll: str = "1s") -> str:
    return f"""
gateway: {{id: gw-test, site: "test", state_dir: {tmp / 'state'}}}
devices:
  - name: dcs
    protocol: opcua
    endpoint: {endpoint}
    mode: {mode}
    poll: {poll}
    timeout: {poll}
    {extra}
{channels}
"""


@contextlib.asynccontextmanager
async def simulator(extra: str = ""):
    sim = Simulator(sim_loads(SIM.replace("{extra}", extra)))
    eps = await sim.start()
    try:
        yield sim, eps["dcs"]["endpoint"]
    finally:
        await sim.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def plain_sim():
    async with simulator() as (sim, url):
        yield sim, url


@pytest_asyncio.fixture(loop_scope="module")
async def dcs(plain_sim):
    """The shared plain simulator, reset to its configured behaviour for each test."""
    sim, url = plain_sim
    yield sim, url
    sim.plant._forced_values.clear()
    sim.plant._forced_faults.clear()
    sim.plant._status_sc.clear()
    await sim.tick()


def driver_for(text: str):
    cfg = loads(text)
    return make_driver(cfg.devices[0], ChannelTable.from_config(cfg).by_device["dcs"])


async def test_poll_reads_every_node_form_in_one_request(tmp_path, dcs, monkeypatch):
    sim, url = dcs
    drv = driver_for(gw_yaml(tmp_path, url))
    assert type(drv).__name__ == "OpcUaPollDriver"
    await drv.open()
    try:
        from asyncua.server.internal_session import InternalSession

        calls = []
        ours = {str(n) for n in drv.nodeids}
        real_read = InternalSession.read

        async def counting_read(self, params):  # a spy on the server's Read service, not a mock
            ids = {str(r.NodeId) for r in params.NodesToRead}
            if ids & ours:  # not the client's keep-alive reads
                calls.append(len(ids))
            return await real_read(self, params)

        monkeypatch.setattr(InternalSession, "read", counting_read)
        b = await drv.poll()
        assert calls == [3]
        assert b.channel.tolist() == [0, 1, 2]
        assert b.quality.tolist() == [Quality.GOOD] * 3
        assert b.value.tolist() == pytest.approx([1.2, 80.0, 5.0])
        sim.plant.force_value("R201.PT01", 1.55)
        await sim.tick()
        b = await drv.poll()
        assert b.value[0] == pytest.approx(1.55)
        assert calls == [3, 3] and drv.info["reads"] == 2
        # source timestamps from the server, within the last seconds
        assert drv.info["timestamps"] == "source"
        now = dt.datetime.now(dt.UTC).timestamp() * 1e9
        assert (abs(b.ts - now) < 5e9).all()
    finally:
        await drv.close()


async def test_missing_node_is_named_and_others_keep_working(tmp_path, dcs):
    chans = CHANNELS + """      - {name: GHOST, kind: level, node: "ns=2;s=NoSuch.Tag"}
      - {name: GHOST2, kind: level, browse_path: ["0:Objects", "2:Plant", "2:Nope"]}
"""
    _sim, url = dcs
    for mode in ("poll", "subscribe"):
        drv = driver_for(gw_yaml(tmp_path, url, mode=mode, channels=chans))
        got: list[Batch] = []
        await drv.open()
        try:
            errs = drv.info["channel_errors"]
            assert "ns=2;s=NoSuch.Tag" in errs["GHOST"] and "BadNodeIdUnknown" in errs["GHOST"]
            assert "Objects/2:Plant/2:Nope" in errs["GHOST2"]
            if mode == "poll":
                got.append(await drv.poll())
            else:
                task = asyncio.create_task(drv.stream(got.append))
                await async_wait_until(lambda: len({c for b in got for c in b.channel.tolist()}) == 5,  # noqa: B023
                                       10, what="all five channels")
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            b = Batch.concat(got)
            q = dict(zip(b.channel.tolist(), b.quality.tolist(), strict=True))
            assert q == {0: Quality.GOOD, 1: Quality.GOOD, 2: Quality.GOOD, 3: Quality.CONFIG,
                         4: Quality.CONFIG}
        finally:
            await drv.close()


async def test_status_codes_map_to_quality_and_are_kept(tmp_path, dcs):
    sim, url = dcs
    # scripted bad status: the engine's bad_status scenario, forced here through a scenario list
    from simulators.config import Scenario

    sim.plant._status_sc.append(Scenario(kind="bad_status", signal="R201.PT01", start="0s",
                                         duration="1h", status="BadSensorFailure"))
    sim.plant._status_sc.append(Scenario(kind="bad_status", signal="T101.LT01", start="0s",
                                         duration="1h", status="UncertainLastUsableValue"))
    await sim.tick()
    drv = driver_for(gw_yaml(tmp_path, url))
    await drv.open()
    try:
        b = await drv.poll()
        assert b.quality.tolist() == [Quality.BAD_STATUS, Quality.GOOD, Quality.UNCERTAIN_STATUS]
        assert drv.info["status"]["R201.pressure"] == "BadSensorFailure (0x808C0000)"
        assert drv.info["status"]["T101.level"].startswith("UncertainLastUsableValue")
        assert drv.status_codes[0] == 0x808C0000
        sim.plant._status_sc.clear()
        await sim.tick()
        b = await drv.poll()
        assert b.quality.tolist() == [Quality.GOOD] * 3 and drv.info["status"] == {}
    finally:
        await drv.close()


async def test_subscribe_streams_changes_with_absolute_deadband(tmp_path, dcs):
    chans = CHANNELS.replace('node: "ns=2;s=R201.PT01"}', 'node: "ns=2;s=R201.PT01", deadband: 0.5}')
    sim, url = dcs
    drv = driver_for(gw_yaml(tmp_path, url, mode="subscribe", channels=chans,
                             extra="sampling_interval: 100ms\n    queue_size: 5"))
    assert drv.streaming
    got: list[Batch] = []
    await drv.open()
    task = asyncio.create_task(drv.stream(got.append))
    try:
        def values(ch: int) -> list[float]:
            return [v for b in got for c, v in zip(b.channel.tolist(), b.value.tolist(), strict=True)
                    if c == ch]

        await async_wait_until(lambda: values(0) and values(1), 10, what="first values")
        sim.plant.force_value("R201.PT01", 1.3)   # inside the 0.5 deadband: no notification
        sim.plant.force_value("R201.TT01", 81.0)  # no deadband: notified
        await sim.tick()
        await async_wait_until(lambda: 81.0 in values(1), 10, what="temperature change")
        sim.plant.force_value("R201.PT01", 2.0)   # beyond the deadband
        await sim.tick()
        await async_wait_until(lambda: 2.0 in values(0), 10, what="pressure change")
        assert 1.3 not in values(0)
        assert drv.info["notifications"] >= 4
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await drv.close()


async def test_timestamps_sane_or_receive_time():
    """The timestamp rule on its own: future beyond the skew or too old → receive time."""
    text = gw_yaml(Path("/tmp/unused"), "opc.tcp://127.0.0.1:1/x", extra="max_clock_skew: 2s\n    "
                   "max_timestamp_age: 1h")
    drv = driver_for(text)
    now = 1_800_000_000 * 10**9
    src = [now / 1e9 - 10, now / 1e9 + 60, now / 1e9 - 7200]  # 10 s ago, 1 min ahead, 2 h old
    b = drv._samples(np.arange(3), [1.0, 2.0, 3.0], [0, 0, 0], src, now)
    assert b.ts.tolist() == [now - 10 * 10**9, now, now]
    assert drv.info["timestamps"] == "mixed" and drv.info["source_ts"] == 1 and drv.info["receive_ts"] == 2
    b = drv._samples(np.arange(3), ["text", None, True], [0, 0x80000000, 0], [0, 0, 0], now)
    assert b.quality.tolist() == [Quality.PARSE, Quality.BAD_STATUS, Quality.GOOD] and b.value[2] == 1.0


async def test_unchanged_source_time_is_reported_at_receive_time():
    """A server that keeps a value's source time until the value changes: read again, the
    unchanged value comes at our receive time, so the gateway's times always move on (the
    rules would take repeats for no data and raise stale alarms on a steady value)."""
    drv = driver_for(gw_yaml(Path("/tmp/unused"), "opc.tcp://127.0.0.1:1/x"))
    s = 10**9
    t0 = 1_800_000_000 * s
    reads = [  # (receive time, the source time the server gives for channel 0 and 1)
        (t0, [t0 - 3 * s, t0 - 1 * s]),
        (t0 + 1 * s, [t0 - 3 * s, t0 + s // 2]),  # 0 unchanged; 1 changed at t0 + 0.5 s
        (t0 + 2 * s, [t0 - 3 * s, t0 + s // 2]),  # both unchanged
        (t0 + 3 * s, [t0 + 2 * s + s // 2, t0 + s // 2]),  # 0 changed at t0 + 2.5 s
        # 1 changed at t0 + 1.5 s, seen only now (after a time already reported): ours
        (t0 + 4 * s, [t0 + 2 * s + s // 2, t0 + s + s // 2]),
    ]
    got = []
    for recv, src in reads:
        b = drv._samples(np.arange(2), [1.0, 2.0], [0, 0], [x / 1e9 for x in src], recv)
        got.append(b.ts.tolist())
    assert got == [[t0 - 3 * s, t0 - 1 * s], [t0 + s, t0 + s // 2], [t0 + 2 * s, t0 + 2 * s],
                   [t0 + 2 * s + s // 2, t0 + 3 * s], [t0 + 4 * s, t0 + 4 * s]]
    assert all(a[i] < b[i] for a, b in itertools.pairwise(got) for i in range(2))


async def test_steady_value_on_a_real_server_does_not_go_stale(tmp_path):
    """Against an asyncua server whose node is written once: polled every 100 ms, the
    gateway's sample times move on and the stale rule (3 polls, the default) stays quiet."""
    srv = Server()
    await srv.init()
    url = f"opc.tcp://127.0.0.1:{free_port()}/steady"
    srv.set_endpoint(url)
    idx = await srv.register_namespace("urn:steady")
    var = await srv.nodes.objects.add_variable(idx, "PT01", 1.5)
    await var.write_value(1.5)  # once: its source time stays
    channels = f"""
    channels:
      - {{name: PT01, kind: pressure, unit: MPa, node: "{var.nodeid.to_string()}"}}
"""
    async with srv:
        cfg = loads(gw_yaml(tmp_path, url, channels=channels, poll="100ms"))
        table = ChannelTable.from_config(cfg)
        drv = make_driver(cfg.devices[0], table.by_device["dcs"])
        eng = RulesEngine.for_gateway(cfg, table)
        await drv.open()
        try:
            times, events = [], []
            last = stamp()
            for _ in range(8):
                # the gateway's cadence: a read every poll period, the rules' clock ticking
                await async_wait_until(lambda: stamp() >= last + 100_000_000, what="the next poll")  # noqa: B023
                last = stamp()
                b = await drv.poll()
                times.append(int(b.ts[0]))
                events += eng.process(b)
                events += eng.tick(stamp())
            assert stamp() - times[0] > 500_000_000  # past 3 polls of the first (only) source time
            assert all(a < b for a, b in itertools.pairwise(times)), times
            assert eng.stats["ignored_old"] == 0
            assert [(e["rule"], e["transition"]) for e in events if e["rule"] == "stale"] == []
        finally:
            await drv.close()


# ---------------------------------------------------------------------- security

def make_cert(dir_: Path, name: str, uri: str) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                                     data_encipherment=True, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = dir_ / f"{name}.der", dir_ / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return cert_path, key_path


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    return {"server": make_cert(d, "server", "urn:safegw:sim:dcs"),
            "client": make_cert(d, "client", "urn:safegw:client")}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secure_sim(certs):
    scert, skey = certs["server"]
    extra = ("security: [Basic256Sha256_SignAndEncrypt, Basic256Sha256_Sign,"
             " Aes128Sha256RsaOaep_SignAndEncrypt, Aes128Sha256RsaOaep_Sign]\n"
             f"    certificate: {scert}\n"
             f"    private_key: {skey}\n    users: {{operator: s3cret}}")
    async with simulator(extra) as (sim, url):
        yield sim, url


@pytest.mark.parametrize("policy", ["Basic256Sha256", "Aes128Sha256RsaOaep"])
async def test_sign_and_encrypt_with_certificates(tmp_path, certs, secure_sim, policy):
    scert, _skey = certs["server"]
    ccert, ckey = certs["client"]
    _sim, url = secure_sim
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    pw.chmod(0o600)
    sec = (f"security: {{policy: {policy}, mode: SignAndEncrypt, certificate: {ccert}, "
           f"private_key: {ckey}, server_certificate: {scert}}}\n    username: operator\n"
           f"    password_file: {pw}")
    drv = driver_for(gw_yaml(tmp_path, url, extra=sec))
    await drv.open()
    try:
        b = await drv.poll()
        assert b.quality.tolist() == [Quality.GOOD] * 3
        assert drv.info["security"] == f"{policy}/SignAndEncrypt"
    finally:
        await drv.close()
    # the server offers no unsecured endpoint: a plain client is turned away
    plain = driver_for(gw_yaml(tmp_path, url, extra="username: operator\n    password: s3cret"))
    with pytest.raises(DeviceUnavailable):
        await plain.open()
    await plain.close()
    # wrong password: refused, as a config problem
    pw.write_text("wrong\n")
    bad = driver_for(gw_yaml(tmp_path, url, extra=sec))
    with pytest.raises(DeviceUnavailable) as ei:
        await bad.open()
    await bad.close()
    assert ei.value.cause == Quality.CONFIG


async def test_password_file_readable_by_others_is_refused(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    pw.chmod(0o644)
    extra = f"username: u\n    password_file: {pw}"
    drv = driver_for(gw_yaml(tmp_path, "opc.tcp://127.0.0.1:1/x", extra=extra))
    with pytest.raises(DeviceUnavailable, match="chmod 600") as ei:
        await drv.open()
    assert ei.value.cause == Quality.CONFIG



async def test_password_file_is_read_from_the_config_folder(tmp_path):
    """A relative password_file names a file in the config file's folder (make_driver's
    base_dir), not in the working directory; refused while others may read it."""
    conf = tmp_path / "conf"
    conf.mkdir()
    pw = conf / "pw"
    pw.write_text("x\n")
    pw.chmod(0o640)
    url = f"opc.tcp://127.0.0.1:{free_port()}/x"
    cfg = loads(gw_yaml(tmp_path, url, extra="username: u\n    password_file: pw"))
    drv = make_driver(cfg.devices[0], ChannelTable.from_config(cfg).by_device["dcs"], base_dir=conf)
    with pytest.raises(DeviceUnavailable, match=re.escape(f"{pw} is readable by others (mode 0640)")) as ei:
        await drv.open()
    assert ei.value.cause == Quality.CONFIG
    pw.chmod(0o600)
    with pytest.raises(DeviceUnavailable) as ei:  # the password read, the server is not there
        await drv.open()
    assert ei.value.cause == Quality.COMMS
    await drv.close()


async def test_unreachable_server_is_device_unavailable(tmp_path):
    from tests.fixtures.helpers import free_port

    drv = driver_for(gw_yaml(tmp_path, f"opc.tcp://127.0.0.1:{free_port()}/x"))
    with pytest.raises(DeviceUnavailable) as ei:
        await drv.open()
    assert ei.value.cause == Quality.COMMS
    await drv.close()


# ---------------------------------------------------------------------- restart

@pytest.mark.parametrize("mode", ["poll", "subscribe"])
async def test_gateway_recovers_after_server_restart(tmp_path, dcs, mode):
    """The daemon against a DCS that goes down and comes back: COMMS while down, new session after."""
    from gateway.app import Gateway

    sim, url = dcs
    cfg = loads(gw_yaml(tmp_path, url, mode=mode, poll="500ms"))
    gw = Gateway(cfg)
    run = asyncio.create_task(gw.run(drain_s=1.0))
    try:
        await async_wait_until(lambda: (gw.live.quality == Quality.GOOD).all(), 15, what="good values")
        sim.plant.force_fault("dcs", Fault("restart"))
        await sim.tick()
        await async_wait_until(lambda: (gw.live.quality == Quality.COMMS).all(), 15, what="COMMS")
        sim.plant.force_fault("dcs", None)
        sim.plant.force_value("R201.PT01", 1.75)
        await sim.tick()  # the server comes back (a fresh one: old sessions are gone)
        await async_wait_until(lambda: gw.live.value[0] == pytest.approx(1.75)
                               and (gw.live.quality == Quality.GOOD).all(), 30, what="recovery")
        assert gw.drivers["dcs"].info["sessions"] >= 2
        assert gw.devices["dcs"].state == "ok"
    finally:
        gw.stop()
        await asyncio.wait_for(run, 15)


@pytest.mark.parametrize("mode", ["poll", "subscribe"])
async def test_safegw_read_names_the_missing_node(tmp_path, dcs, mode):
    """Commissioning (``safegw read``): a node the server does not have is named; the rest read."""
    import io

    from gateway.commission import read_once

    _sim, url = dcs
    chans = CHANNELS + '      - {name: GHOST, kind: level, node: "ns=2;s=R999.PT01"}\n'
    out = io.StringIO()
    code = await read_once(loads(gw_yaml(tmp_path, url, mode=mode, channels=chans)), out=out)
    text = out.getvalue()
    assert code == 1
    assert "ns=2;s=R999.PT01" in text and "does not exist" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("R201.pressure"))
    assert "1.2" in line and "good" in line


async def test_fast_read_simulator_answers_like_asyncua(tmp_path):
    """The benchmark's cached-Read simulator (own process) gives the same values and status codes."""
    import json
    import sys

    cfg = sim_loads(SIM.replace("{extra}", "fast_read: true\n    bulk: 50"))  # validates the file
    assert cfg.device_models[0].fast_read  # type: ignore[attr-defined]  # an OPC-UA device model
    path = tmp_path / "sim.yaml"
    path.write_text(SIM.replace("{extra}", "fast_read: true\n    bulk: 50") + """
scenarios:
  - {kind: bad_status, signal: R201.TT01, status: BadSensorFailure, start: 0s, duration: 1h}
""")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators", "-c", str(path), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line.startswith("READY "), line
        url = json.loads(line[6:])["dcs"]["endpoint"]
        chans = CHANNELS + "".join(f'      - {{name: B{k}, kind: other, node: "ns=2;s=Bulk.{k:06d}"}}\n'
                                   for k in (0, 7, 49))
        drv = driver_for(gw_yaml(tmp_path, url, channels=chans))
        await drv.open()
        try:
            stamps, times = [], []
            for _ in range(2):  # the second Read is answered from the cache
                b = await drv.poll()
                assert b.value[[0, 2]].tolist() == pytest.approx([1.2, 5.0])
                assert b.quality.tolist()[:3] == [Quality.GOOD, Quality.BAD_STATUS, Quality.GOOD]
                assert drv.info["status"]["R201.temperature"].startswith("BadSensorFailure")
                assert (b.quality[3:] == Quality.GOOD).all() and b.value[3] == pytest.approx(0.0, abs=100)
                stamps.append(drv.info["timestamps"])
                times.append(b.ts)
            # a repeated source time (a value the simulator did not write again in between)
            # comes at the receive time: every channel's time moves on
            assert stamps[0] == "source" and (times[1] > times[0]).all()
            assert drv.info.get("slow_reads", 0) == 0
        finally:
            await drv.close()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
