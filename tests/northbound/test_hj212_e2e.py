"""HJ 212 end to end: the daemon polling a simulated Modbus plant, its ``regulators:``
adapter connected to the platform simulator (``simulators/hj212_platform.py``, a separate
process with its own frame code), all over real sockets.

- A past hour already in the journal (with every quality the flags map) is sent first:
  real-time, minute and hourly data, each flag as HJ 212-2017 table 6 names it.
- The platform is killed (SIGKILL) for a while and started again on the same port:
  afterwards every real-time window the journal holds arrived exactly once, in order.
- The platform asks for the past hour again (2061 and 2051 with BeginTime/EndTime): the
  answer comes from the journal and matches the samples, computed here independently.
- Garbage, a bad CRC, an unknown command, a wrong PW: each gets its answer (or a log)
  and the uploads go on; a platform that withholds 9014 gets resends, then the message
  is kept for later and delivered once the platform answers again.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.core.batch import Batch, Quality
from gateway.core.record import SAMPLES
from gateway.store.journal import Journal
from tests.fixtures.daemon import Daemon, auth, make_tokens
from tests.fixtures.helpers import jsonl_records, wait_until
from tests.fixtures.hj212 import NS, beijing_hour, cp_values, dt, dt_ns, hj212_platform
from tests.fixtures.sims import SimProcess, plc_device, tcp_plant

PLANT = tcp_plant(
    ("GT-1", 2.5, "input:0", "int16", 0.1),
    ("TT-1", 21.75, "holding:10", "float32", None),
    ("SW-1", 1, "coil:5", "bool", None),
    seed=3,
)

#: the gateway's channels of the plant
CHANNELS = ('{name: GT-1, kind: gas, unit: "%LEL", address: input:0, type: int16, scale: 0.1}',
            '{name: TT-1, kind: temperature, unit: "°C", address: holding:10, type: float32}',
            "{name: SW-1, kind: status, address: coil:5, type: bool}")

MN = "88888880000001"
PW = "123456"


def gateway_yaml(plc: tuple[str, int], platform_port: int, state: Path, more: str = "") -> str:
    return f"""
gateway: {{id: gw-hj, site: "91370100MA3C000000", state_dir: "{state}"}}
{plc_device(plc, *CHANNELS)}
regulators:
  - type: hj212
    name: epb
    host: 127.0.0.1
    port: {platform_port}
    mn: "{MN}"
    password: "{PW}"
    st: "22"
    start: oldest          # the past hour already journaled goes out too
    rtd_interval: 1s
    minute_interval: 1m
    hourly: true
    daily: false
    late: 300ms
    ack_timeout: 1s
    retries: 1
    retry_later: 1s
    reconnect_max: 500ms
    points:
      - {{channel: GT-1, code: a21026, scale: 10, decimals: 2}}   # %LEL ×10: a unit conversion
      - {{channel: TT-1, code: a01012, decimals: 2}}
{more}
api: {{listen: "127.0.0.1:0"}}
"""


#: the past hour written into the journal before the daemon starts: 10 s apart, one
#: quality per 10 minutes (minute m: QUALITIES[m // 10]), GT-1 = (i % 7) / 2, TT-1 = 20 + i % 5
QUALITIES = [Quality.GOOD, Quality.MAINTENANCE, Quality.SENSOR_FAULT, Quality.CALIBRATING,
             Quality.OUT_OF_RANGE, Quality.COMMS]
FLAG = {Quality.GOOD: "N", Quality.MAINTENANCE: "M", Quality.SENSOR_FAULT: "D", Quality.CALIBRATING: "C",
        Quality.OUT_OF_RANGE: "T", Quality.COMMS: "B"}


def past_hour(start_ns: int) -> list[tuple[int, float, float, Quality]]:
    rows = []
    for i in range(360):
        q = QUALITIES[(i // 6) // 10]
        gt = math.nan if q == Quality.COMMS else (i % 7) / 2
        rows.append((start_ns + i * 10 * NS, gt, 20.0 + i % 5, q))
    return rows


def prefill(state: Path, rows: list[tuple[int, float, float, Quality]]) -> None:
    state.mkdir(parents=True, exist_ok=True)
    with Journal(state / "journal.db") as j:
        for k in range(0, len(rows), 30):  # one record per 5 minutes, as a poller would make many
            part = rows[k:k + 30]
            ch, ts, val, q = [], [], [], []
            for t, gt, tt, qq in part:
                ch += [0, 1]
                ts += [t, t]
                val += [gt, tt]
                q += [qq, Quality.GOOD]
            j.submit_batch(Batch.build(ch, ts, val, q)).result(10)


def adapter_stats(d: Daemon, name: str = "epb") -> dict[str, Any]:
    assert d.gw is not None
    svc = next(s for s in d.gw.services if s.name == "regulators")
    out: dict[str, Any] = svc.stats()[name]
    return out


def records(path: Path) -> list[dict[str, Any]]:
    return jsonl_records(path)


def journal_windows(d: Daemon) -> set[int]:
    """The 1 s windows (Beijing-aligned = UTC-aligned for seconds) holding samples of GT-1 or TT-1."""
    assert d.gw is not None
    wins: set[int] = set()
    after = 0
    while True:
        recs = d.gw.journal.read_sync(after, 1000, kinds=(SAMPLES,))
        if not recs:
            return wins
        for r in recs:
            b = r.batch()
            m = b.channel <= 1
            wins.update(((b.ts[m] // NS) * NS).tolist())
        after = recs[-1].seq


@pytest.fixture
def setup(sim_factory: Any, tmp_path: Path) -> Any:
    plant = sim_factory(PLANT)
    record = tmp_path / "platform.jsonl"
    platform: SimProcess = hj212_platform(sim_factory, record)
    port = platform.tcp("platform")[1]
    state = tmp_path / "state"
    now = time.time_ns()
    hour0 = beijing_hour(now, 2)  # a whole Beijing hour, 1-2 h ago
    rows = past_hour(hour0)
    prefill(state, rows)
    tokens = make_tokens(state)
    d = Daemon(gateway_yaml(plant.tcp("plc"), port, state)).start()
    d.viewer = auth(tokens["viewer"])  # type: ignore[attr-defined]
    yield d, platform, port, record, hour0, rows
    d.stop()


def test_past_hour_outage_and_history(setup: Any, sim_factory: Any, tmp_path: Path) -> None:
    d, platform, port, record, hour0, rows = setup

    # 1. the past hour goes out first: real-time windows, 60 minutes and the hour
    def sent(cn: str) -> list[dict[str, Any]]:
        return [m for m in records(record) if m["cn"] == cn and not m["duplicate"]]

    wait_until(lambda: any(m["cp"].startswith(f"DataTime={dt(hour0)}") for m in sent("2061")), 30,
               what="the past hour's hourly data")
    rtd = {cp_values(m["cp"])[0]: cp_values(m["cp"])[1] for m in sent("2011")}
    for t, gt, tt, q in rows:
        got = rtd[dt(t)]
        assert got["a21026-Flag"] == FLAG[q] and got["a01012-Flag"] == "N", dt(t)
        if math.isnan(gt):
            assert "a21026-Rtd" not in got  # no value, the flag only
        else:
            assert got["a21026-Rtd"] == f"{gt * 10:.2f}"  # the unit conversion
        assert got["a01012-Rtd"] == f"{tt:.2f}"
        assert not any(k.startswith("SW-1") for k in got)  # unmapped: never sent
    minutes = {cp_values(m["cp"])[0]: cp_values(m["cp"])[1] for m in sent("2051")}
    for minute in range(60):
        start = hour0 + minute * 60 * NS
        inside = [r for r in rows if start <= r[0] < start + 60 * NS]
        got = minutes[dt(start)]
        q = inside[0][3]
        vals = [r[1] * 10 for r in inside if not math.isnan(r[1])]
        assert got["a21026-Flag"] == FLAG[q], minute
        if vals:
            assert float(got["a21026-Min"]) == pytest.approx(min(vals), abs=0.006)
            assert float(got["a21026-Avg"]) == pytest.approx(sum(vals) / len(vals), abs=0.006)
            assert float(got["a21026-Max"]) == pytest.approx(max(vals), abs=0.006)
    hour = cp_values(next(m for m in sent("2061") if dt(hour0) in m["cp"])["cp"])[1]
    good = [r[1] * 10 for r in rows if r[3] == Quality.GOOD]  # Min/Avg/Max over N-flagged samples only
    assert hour["a21026-Flag"] == "N"
    assert float(hour["a21026-Avg"]) == pytest.approx(sum(good) / len(good), abs=0.006)
    assert float(hour["a21026-Max"]) == pytest.approx(max(good), abs=0.006)

    # 2. live data flows; kill the platform for a while; start it again on the same port
    live_from = time.time_ns() // NS * NS
    wait_until(lambda: any(dt_ns(cp_values(m["cp"])[0]) >= live_from for m in sent("2011")), 20,
               what="live real-time data")
    platform.kill()
    wait_until(lambda: not adapter_stats(d)["connected"], 10, what="the adapter to see the platform gone")
    assert d.gw is not None
    seq0 = d.gw.journal.last_seq
    wait_until(lambda: d.gw is not None and d.gw.journal.last_seq >= seq0 + 15, 20,
               what="polls during the outage")
    down_until = time.time_ns()
    restarted: SimProcess = hj212_platform(sim_factory, record, port)
    wait_until(lambda: any(dt_ns(cp_values(m["cp"])[0]) > down_until for m in sent("2011")), 30,
               what="the backlog and live data after the outage")

    msgs = sent("2011")
    times = [dt_ns(cp_values(m["cp"])[0]) for m in msgs]
    assert times == sorted(times) and len(times) == len(set(times)), "in order, exactly once"
    expected = sorted(w for w in journal_windows(d) if w <= times[-1])
    assert times == expected, "every real-time window the journal holds, none missing"
    outage = [t for t in times if live_from < t < down_until]
    assert len(times) > 360 + len(outage) and len(outage) >= 3, (len(times), len(outage))
    live = [cp_values(m["cp"])[1] for m in msgs if dt_ns(cp_values(m["cp"])[0]) >= live_from]
    assert live and all(v["a21026-Flag"] == "N" for v in live)

    # 3. the platform asks for the past hour again: answered from the journal
    n0 = len(records(record))
    qn = restarted.control(to="platform", command="2061", mn=MN, pw=PW,
                           cp=f"BeginTime={dt(hour0)};EndTime={dt(hour0 + 3599 * NS)}")["qn"]
    wait_until(lambda: any(m["cn"] == "9012" and m["qn"] == qn for m in records(record)[n0:]), 15,
               what="the history answer's execution result")
    answer = [m for m in records(record)[n0:] if m["qn"] == qn]
    assert [m["cn"] for m in answer] == ["9011", "2061", "9012"]
    assert answer[0]["cp"] == "QnRtn=1" and answer[2]["cp"] == "ExeRtn=1"
    again = cp_values(answer[1]["cp"])
    assert again == (dt(hour0), hour)  # the same hour, the same figures as sent live
    qn = restarted.control(to="platform", command="2051", mn=MN, pw=PW,
                           cp=f"BeginTime={dt(hour0)};EndTime={dt(hour0 + 3599 * NS)}")["qn"]
    wait_until(lambda: any(m["cn"] == "9012" and m["qn"] == qn for m in records(record)[n0:]), 15,
               what="the minute history")
    mins = [cp_values(m["cp"]) for m in records(record)[n0:] if m["qn"] == qn and m["cn"] == "2051"]
    assert len(mins) == 60 and dict(mins) == minutes
    st = adapter_stats(d)
    assert st["acked"] >= len(msgs) and st["bad_frames"] == 0 and st["later"] == 0


def _crc(seg: bytes) -> int:
    """HJ 212-2017 appendix A, written out again for the hand-made frames below."""
    reg = 0xFFFF
    for b in seg:
        reg = (reg >> 8) ^ b
        for _ in range(8):
            reg = (reg >> 1) ^ 0xA001 if reg & 1 else reg >> 1
    return reg


def test_bad_input_commands_and_withheld_acks(setup: Any) -> None:
    d, platform, _, record, _, _ = setup

    def after(n: int) -> list[dict[str, Any]]:
        return records(record)[n:]

    def answers(qn: str, n: int, count: int) -> list[dict[str, Any]]:
        wait_until(lambda: len([m for m in after(n) if m["qn"] == qn]) >= count, 15, what=f"answers to {qn}")
        return [m for m in after(n) if m["qn"] == qn]

    def live_rtd_after(t_ns: int) -> bool:
        return any(m["cn"] == "2011" and dt_ns(cp_values(m["cp"])[0]) > t_ns for m in records(record))

    wait_until(lambda: live_rtd_after(time.time_ns() - 2 * NS), 30, what="live real-time data")

    # garbage: logged, counted, nothing answered; a bad CRC: 9011 QnRtn=9 for its QN
    n = len(records(record))
    platform.control(to="platform", raw="GET / HTTP/1.1\r\n\r\n\x00\xff")
    seg = f"QN=20261207101010101;ST=22;CN=1061;PW={PW};MN={MN};Flag=5;CP=&&&&".encode()
    bad = b"##%04d%s%04X\r\n" % (len(seg), seg, _crc(seg) ^ 0x0101)
    platform.control(to="platform", raw=bad.decode())
    got = answers("20261207101010101", n, 1)
    assert [(m["cn"], m["cp"]) for m in got] == [("9011", "QnRtn=9")]
    wait_until(lambda: adapter_stats(d)["bad_frames"] >= 2, 10, what="both bad frames counted")

    # an unknown command; a wrong PW; another station's MN
    for cn, pw, mn, rtn in [("3020", PW, MN, "QnRtn=8"), ("1061", "999999", MN, "QnRtn=3"),
                            ("1061", PW, "OTHERSTATION1", "QnRtn=4")]:
        qn = platform.control(to="platform", command=cn, mn=MN, pw=pw, cp="")["qn"] if mn == MN else None
        if qn is None:  # a command for a station that is not this one, on this connection
            qn = "20261207101010202"
            s = f"QN={qn};ST=22;CN={cn};PW={pw};MN={mn};Flag=5;CP=&&&&".encode()
            platform.control(to="platform", raw=(b"##%04d%s%04X\r\n" % (len(s), s, _crc(s))).decode())
        assert [m["cp"] for m in answers(qn, n, 1)] == [rtn], cn

    # get the time and the real-time interval; a set time far off is refused, near is accepted
    qn = platform.control(to="platform", command="1011", mn=MN, pw=PW, cp="PolId=a21026")["qn"]
    got = answers(qn, n, 3)
    assert [m["cn"] for m in got] == ["9011", "1011", "9012"]
    theirs = dt_ns(got[1]["cp"].split("SystemTime=")[1])
    assert got[1]["cp"].startswith("PolId=a21026;") and abs(theirs - time.time_ns()) < 5 * NS
    qn = platform.control(to="platform", command="1061", mn=MN, pw=PW)["qn"]
    assert [m["cp"] for m in answers(qn, n, 3)] == ["QnRtn=1", "RtdInterval=1", "ExeRtn=1"]
    for when, rtn in [(time.time_ns() - 3600 * NS, "ExeRtn=2"), (time.time_ns(), "ExeRtn=1"),
                      (None, "ExeRtn=3")]:
        cp = f"SystemTime={dt(when)}" if when else "SystemTime=2026-12-07"
        qn = platform.control(to="platform", command="1012", mn=MN, pw=PW, cp=cp)["qn"]
        assert [m["cp"] for m in answers(qn, n, 2)] == ["QnRtn=1", rtn], cp

    # stop real-time data (2012 → 9013): no 2011 while stopped; start again (2011 → 9011)
    qn = platform.control(to="platform", command="2012", mn=MN, pw=PW)["qn"]
    assert [m["cn"] for m in answers(qn, n, 1)] == ["9013"]
    stopped = time.time_ns() + 2 * NS  # windows closing up to now may still be on their way
    assert d.gw is not None
    seq0 = d.gw.journal.last_seq
    wait_until(lambda: d.gw is not None and d.gw.journal.last_seq >= seq0 + 30, 20,
               what="polls while stopped")
    qn = platform.control(to="platform", command="2011", mn=MN, pw=PW)["qn"]
    assert [m["cp"] for m in answers(qn, n, 1)] == ["QnRtn=1"]
    restart = time.time_ns()
    wait_until(lambda: live_rtd_after(restart), 15, what="real-time data again")
    gap = [m for m in after(n)
           if m["cn"] == "2011" and stopped < dt_ns(cp_values(m["cp"])[0]) < restart - 2 * NS]
    assert gap == [], "no real-time data while the platform had it stopped"

    # withhold 9014: the adapter resends (same QN), keeps it for later, and delivers it when
    # the platform answers again; uploads go on meanwhile
    platform.control(to="platform", ack=False)
    wait_until(lambda: adapter_stats(d)["kept_for_later"] >= 1, 20, what="a message kept for later")
    st = adapter_stats(d)
    assert st["resends"] >= 1
    dups = [m for m in records(record) if m["duplicate"] and m["cn"] == "2011"]
    assert dups, "a resend carries the QN of the first send"
    platform.control(to="platform", ack=True)
    wait_until(lambda: adapter_stats(d)["later"] == 0, 20, what="the kept messages delivered")
    sent = [m for m in records(record) if m["cn"] == "2011" and not m["duplicate"]]
    times = [dt_ns(cp_values(m["cp"])[0]) for m in sent]
    assert len(times) == len(set(times)), "each window taken once"

    # set the real-time interval: valid (30 s, HJ 212-2017: 30-3600) and not
    for value, rtn in [("7", "ExeRtn=3"), ("30", "ExeRtn=1")]:
        qn = platform.control(to="platform", command="1062", mn=MN, pw=PW, cp=f"RtdInterval={value}")["qn"]
        assert [m["cp"] for m in answers(qn, n, 2)] == ["QnRtn=1", rtn], value
    qn = platform.control(to="platform", command="1061", mn=MN, pw=PW)["qn"]
    assert answers(qn, n, 3)[1]["cp"] == "RtdInterval=30"
    assert adapter_stats(d)["connected"]

    # the adapter in /status and /metrics
    with httpx.Client(base_url=d.url, headers=d.viewer, timeout=10) as http:  # type: ignore[attr-defined]
        status = http.get("/status").json()["services"]["regulators"]["epb"]
        assert status["connected"] and status["kept_for_later"] >= 1 and status["bad_frames"] >= 2
        assert status["name"] == "regulator.epb" and status["unmapped_channels"] == 1
        metrics = http.get("/metrics").text
        assert 'safegw_regulator_connected{adapter="epb"} 1' in metrics
        assert 'safegw_consumer_lag_records{consumer="regulator.epb"}' in metrics


def test_two_platforms_each_with_its_own_station_and_cursor(sim_factory: Any, tmp_path: Path) -> None:
    """A second platform (the province's, say) with its own MN and PW: it gets the same data
    under its own identity, and one platform withholding its answers does not slow the other."""
    plant = sim_factory(PLANT)
    rec_a, rec_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    pa = hj212_platform(sim_factory, rec_a)
    pb = hj212_platform(sim_factory, rec_b)
    second = f"""  - type: hj212
    name: province
    host: 127.0.0.1
    port: {pb.tcp("platform")[1]}
    mn: "PROV0000000009"
    password: "654321"
    st: "31"
    rtd_interval: 1s
    minute_interval: null
    hourly: false
    daily: false
    late: 300ms
    points:
      - {{channel: TT-1, code: a01012}}
"""
    d = Daemon(gateway_yaml(plant.tcp("plc"), pa.tcp("platform")[1], tmp_path / "state", more=second)).start()
    try:
        def latest(rec: Path) -> int:
            times = [dt_ns(cp_values(m["cp"])[0]) for m in records(rec) if m["cn"] == "2011"]
            return max(times, default=0)

        wait_until(lambda: latest(rec_a) and latest(rec_b), 20, what="data at both platforms")
        a, b = records(rec_a)[0], records(rec_b)[0]
        assert (a["mn"], a["pw"], a["st"]) == (MN, PW, "22")
        assert (b["mn"], b["pw"], b["st"]) == ("PROV0000000009", "654321", "31")
        assert all(set(cp_values(m["cp"])[1]) == {"a01012-Rtd", "a01012-Flag"} for m in records(rec_b))
        # A stops answering: its cursor stalls, B's data keeps flowing, up to date
        pa.control(to="platform", ack=False)
        wait_until(lambda: adapter_stats(d)["awaiting_ack"] == 1, 10, what="A waiting for a 9014")
        t = time.time_ns()
        wait_until(lambda: latest(rec_b) > t + NS, 15, what="B's data while A is silent")
        assert adapter_stats(d, "province")["name"] == "regulator.province"
        wait_until(lambda: adapter_stats(d)["cursor"] < adapter_stats(d, "province")["cursor"], 10,
                   what="B's cursor past A's")
    finally:
        d.stop()


def test_a_gateway_restart_sends_nothing_twice_and_misses_nothing(sim_factory: Any, tmp_path: Path) -> None:
    """The cursor and the state file together: after the daemon stops and starts again on
    the same state directory, every real-time window the journal holds went out once."""
    plant = sim_factory(PLANT)
    record = tmp_path / "platform.jsonl"
    platform = hj212_platform(sim_factory, record)
    text = gateway_yaml(plant.tcp("plc"), platform.tcp("platform")[1], tmp_path / "state")

    def sent() -> list[int]:
        return [dt_ns(cp_values(m["cp"])[0]) for m in records(record)
                if m["cn"] == "2011" and not m["duplicate"]]

    d = Daemon(text).start()
    try:
        wait_until(lambda: len(sent()) >= 3, 20, what="real-time data before the restart")
    finally:
        d.stop()
    first = max(sent())
    d = Daemon(text).start()
    try:
        wait_until(lambda: max(sent()) > first + 2 * NS, 20, what="real-time data after the restart")
        times = sent()
        assert times == sorted(times) and len(times) == len(set(times)), "in order, once"
        assert times == sorted(w for w in journal_windows(d) if w <= times[-1]), "none missing"
        resent = [m for m in records(record) if m["duplicate"]]
        assert resent == [], "nothing sent twice, not even with the same QN"
    finally:
        d.stop()
