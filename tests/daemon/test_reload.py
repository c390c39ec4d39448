"""Live reload of the config (issue 16, item 4): ``safegw run`` in a subprocess, polling the
plant simulators over real TCP, reloaded by SIGHUP and by ``POST /config/reload``.

What a reload must do, each checked against the journal the daemon wrote, the simulator's
own counters and the admin API: only the difference applied (the unchanged device's
poller keeps its one TCP connection), alarms that still hold not raised again and their
acknowledgement kept, a changed limit in force, channels followed by name across a
renumbering (history), removed channels recorded, an invalid file refused as a whole
with FILE:LINE:COL, and every applied config journaled with its hash and diff.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.core.batch import Batch
from gateway.core.record import EVENT, SAMPLES, decode_data
from gateway.historian.history import fmt_ns
from tests.fixtures.daemon import auth, make_tokens
from tests.fixtures.helpers import free_port, wait_until
from tests.fixtures.mosquitto import Subscriber
from tests.fixtures.sims import SimProcess

ROOT = Path(__file__).resolve().parents[2]

SIM = """
seed: 7
tick: 100ms
signals:
  GA-1: {base: 12.0}
  GA-2: {base: 30.0}
  GB-1: {base: 5.0}
  GC-1: {base: 7.0}
devices:
  - name: plc-a
    protocol: modbus-tcp
    port: 0
    units: [{unit: 1, points: [{signal: GA-1, address: input:0, type: int16, scale: 0.1},
                               {signal: GA-2, address: input:1, type: int16, scale: 0.1}]}]
  - name: plc-b
    protocol: modbus-tcp
    port: 0
    units: [{unit: 1, points: [{signal: GB-1, address: input:0, type: int16, scale: 0.1}]}]
  - name: plc-c
    protocol: modbus-tcp
    port: 0
    units: [{unit: 1, points: [{signal: GC-1, address: input:0, type: int16, scale: 0.1}]}]
"""


def device(sim: SimProcess, name: str, channels: str) -> str:
    host, port = sim.tcp(name)
    # a timeout far above a loopback read even on a loaded machine: a reconnect would be load
    return f"""
  - name: {name}
    protocol: modbus-tcp
    host: {host}
    port: {port}
    poll: 1s
    timeout: 1s
    retries: 0
    channels:
{channels}"""


def chan(name: str, address: str, alarms: str = "") -> str:
    extra = f", alarms: {{{alarms}}}" if alarms else ""
    return (f'      - {{name: {name}, kind: gas, unit: "%LEL", address: {address}, type: int16, '
            f'scale: 0.1{extra}}}\n')


def config(state: Path, api_port: int, devices: str, extra: str = "") -> str:
    return (f'gateway: {{id: gw-rl, site: "91370100MA3C000000", state_dir: "{state}"}}\n'
            f"devices:{devices}\n"
            f'api: {{listen: "127.0.0.1:{api_port}", max_failures: 1000}}\n{extra}')


class Gw:
    """``safegw run`` in a subprocess; its log lines collected as they come."""

    def __init__(self, cfg: Path):
        self.cfg = cfg
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(cfg), "--drain", "2"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def logged(self, text: str) -> list[str]:
        return [line for line in list(self.log) if text in line]

    def wait(self, cond: Any, timeout: float, what: str) -> Any:
        """wait_until, with the daemon's last log lines when it fails."""
        try:
            return wait_until(cond, timeout, what=what)
        except AssertionError as e:
            raise AssertionError(f"{e}; the daemon's log:\n" + "".join(self.log[-40:])) from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def journal_events(jpath: Path) -> list[tuple[int, dict[str, Any]]]:
    if not jpath.exists():
        return []
    db = sqlite3.connect(f"file:{jpath}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT seq, codec, data FROM records WHERE kind = ? ORDER BY seq",
                          (EVENT,)).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        db.close()
    return [(int(s), json.loads(decode_data(c, d))) for s, c, d in rows]


def journal_samples(jpath: Path) -> list[tuple[int, Batch]]:
    if not jpath.exists():
        return []
    db = sqlite3.connect(f"file:{jpath}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT seq, codec, data FROM records WHERE kind = ? ORDER BY seq",
                          (SAMPLES,)).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()
    return [(int(s), Batch.from_bytes(decode_data(c, d))) for s, c, d in rows]


def values_after(jpath: Path, index: int, after_seq: int) -> set[float]:
    return {round(float(v), 3) for s, b in journal_samples(jpath) if s > after_seq
            for v in b.value[b.channel == index]}


def alarms(jpath: Path, channel: str, after_seq: int = 0) -> list[dict[str, Any]]:
    return [ev for s, ev in journal_events(jpath)
            if s > after_seq and ev.get("type") == "alarm" and ev.get("channel") == channel]


def config_events(jpath: Path, source: str) -> list[tuple[int, dict[str, Any]]]:
    return [(s, ev) for s, ev in journal_events(jpath)
            if ev.get("type") == "config" and ev.get("source") == source]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    p = tmp_path_factory.mktemp("sim") / "sim.yaml"
    p.write_text(SIM)
    s = SimProcess(p)
    try:
        yield s
    finally:
        s.stop()


def connections(sim: SimProcess, name: str) -> int:
    return int(sim.control(to=name, stats=True)["connections"])


def requests(sim: SimProcess, name: str) -> int:
    return int(sim.control(to=name, stats=True)["requests"])


def test_sighup_applies_only_the_difference(sim: SimProcess, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    tokens = make_tokens(state)
    api_port = free_port()
    jpath = state / "journal.db"
    ga2 = chan("GA-2", "input:1", "h: 25, hh: 50")
    v1 = config(state, api_port, device(sim, "plc-a", chan("GA-1", "input:0", "h: 25") + ga2)
                + device(sim, "plc-b", chan("GB-1", "input:0", "h: 10")))
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(v1)
    conns_a0, reqs_a0 = connections(sim, "plc-a"), requests(sim, "plc-a")
    gw = Gw(cfg)
    http = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=10)
    seq = 0
    try:
        # GA-2 reads 30 > h 25: its alarm is raised; an operator acknowledges it
        gw.wait(lambda: any(e["state"] == "active_unacked" for e in alarms(jpath, "GA-2")), 30,
                   "GA-2's alarm raised")
        gw.wait(lambda: gw.proc.poll() is None and _up(http), 30, "the API")
        r = http.post("/alarms/GA-2/ack", headers=auth(tokens["operator"]), json={})
        assert r.status_code == 200, r.text
        gw.wait(lambda: any(e["state"] == "active_acked" for e in alarms(jpath, "GA-2")), 10,
                   "GA-2's ack journaled")
        assert not alarms(jpath, "GA-1")  # 12 < h 25
        conns_a = connections(sim, "plc-a")
        assert conns_a == conns_a0 + 1, "plc-a's poller has one connection"
        before = max(s for s, _ in journal_events(jpath))
        t_before = time.time_ns()

        # v2: plc-c added before plc-a (so plc-a's channels move), plc-b removed, GA-1's limit lowered
        v2 = config(state, api_port,
                    device(sim, "plc-c", chan("GC-1", "input:0", "h: 50"))
                    + device(sim, "plc-a", chan("GA-1", "input:0", "h: 10") + ga2))
        cfg.write_text(v2)
        reqs_a = requests(sim, "plc-a")
        gw.proc.send_signal(signal.SIGHUP)
        found = gw.wait(lambda: config_events(jpath, "sighup"), 20, "the reload's config event")
        seq, ev = found[0]  # type: ignore[index]
        assert seq > before
        assert ev["sha256"] == hashlib.sha256(v2.encode()).hexdigest()
        d = ev["diff"]
        assert d["devices"] == {"added": ["plc-c"], "removed": ["plc-b"], "changed": []}
        assert d["channels"]["added"] == ["GC-1"] and d["channels"]["removed"] == ["GB-1"]
        assert d["channels"]["changed"] == ["GA-1"]
        assert d["channels"]["moved"] == {"GA-1": [0, 1], "GA-2": [1, 2]}
        # the new channel table follows the config event, so central reads what comes next by it
        tables = [(s, e) for s, e in journal_events(jpath) if e.get("type") == "channel_table" and s > seq]
        assert tables and tables[0][0] == seq + 1
        assert [c["name"] for c in tables[0][1]["channels"]] == ["GC-1", "GA-1", "GA-2"]

        # the new device is polled, into its new index; the unchanged one was never reconnected
        gw.wait(lambda: 7.0 in values_after(jpath, 0, seq), 20, "GC-1 polled at index 0")
        gw.wait(lambda: requests(sim, "plc-a") > reqs_a + 2, 20, "plc-a still polled")
        assert connections(sim, "plc-a") == conns_a, "plc-a's poller was restarted"
        assert values_after(jpath, 1, seq) == {12.0} and values_after(jpath, 2, seq) == {30.0}
        # the lowered limit takes effect: GA-1 (12) now above h 10
        gw.wait(lambda: any(e["transition"] == "raise" for e in alarms(jpath, "GA-1", seq)), 20,
                   "GA-1 raised at its new limit")
        # GA-2's alarm holds: not raised again, still acknowledged
        assert not alarms(jpath, "GA-2", seq), alarms(jpath, "GA-2", seq)
        active = http.get("/alarms", headers=auth(tokens["viewer"]), params={"history": 0}).json()["active"]
        held = [a for a in active if a["channel"] == "GA-2"]
        assert held and held[0]["state"] == "active_acked", active
        assert "GB-1" not in {a["channel"] for a in active}

        # history by name: GA-1 before (index 0) and after (index 1) the reload, nothing of GA-2's
        h = http.get("/history/GA-1", headers=auth(tokens["viewer"]), params={"from": "10m"}).json()
        points = h["points"]
        assert {round(p["value"], 3) for p in points} == {12.0}, points[:5]
        assert min(p["ts"] for p in points) < fmt_ns(t_before) < max(p["ts"] for p in points)

        # `safegw status` shows the reloaded config as the one in force, the same as the file
        st = subprocess.run([sys.executable, "-m", "gateway.cli", "status", "-c", str(cfg), "--json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert st.returncode == 0, st.stderr
        doc = json.loads(st.stdout)
        assert doc["config"]["sha256"] == doc["config"]["file_sha256"]
        assert doc["config"]["text_sha256"] == ev["sha256"]
        assert [dv["name"] for dv in doc["devices"]] == ["plc-a", "plc-c"] or \
            sorted(dv["name"] for dv in doc["devices"]) == ["plc-a", "plc-c"]
    finally:
        http.close()
        gw.stop()
    assert gw.proc.returncode == 0, "".join(gw.log[-30:])
    # no reading of the unchanged device lost across the reload: every answer plc-a gave is
    # journaled as GA-1 (index 0 before the reload, 1 after), but one in flight at the stop
    answered = requests(sim, "plc-a") - reqs_a0
    ga1 = sum(int((b.channel == (0 if s < seq else 1)).sum()) for s, b in journal_samples(jpath))
    assert ga1 >= answered - 1, (ga1, answered)


def _up(http: httpx.Client) -> bool:
    try:
        return http.get("/health").status_code == 200
    except httpx.TransportError:
        return False


def test_invalid_file_is_refused_as_a_whole(sim: SimProcess, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    tokens = make_tokens(state)
    api_port = free_port()
    jpath = state / "journal.db"
    a = device(sim, "plc-a", chan("GA-1", "input:0", "h: 25") + chan("GA-2", "input:1", "h: 25"))
    v1 = config(state, api_port, a)
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(v1)
    gw = Gw(cfg)
    http = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=30)
    try:
        gw.wait(lambda: gw.proc.poll() is None and _up(http), 30, "the API")
        for role in ("viewer", "operator"):
            r = http.post("/config/reload", headers=auth(tokens[role]))
            assert r.status_code == 403, (role, r.text)
        # the same file again: applied, nothing changed, journaled with who asked
        r = http.post("/config/reload", headers=auth(tokens["admin"]))
        assert r.status_code == 200, r.text
        assert r.json() == {"ok": True, "sha256": hashlib.sha256(v1.encode()).hexdigest(), "diff": {},
                            "error": None}
        evs = gw.wait(lambda: config_events(jpath, "api:admin-user"), 10, "the config event")
        assert len(evs) == 1 and evs[0][1]["diff"] == {}

        # a new device and a typo in another: nothing of it is applied
        bad = config(state, api_port, device(sim, "plc-c", chan("GC-1", "input:0"))
                     + a.replace("scale: 0.1", "scael: 0.1", 1))
        cfg.write_text(bad)
        line = next(i for i, t in enumerate(bad.splitlines(), 1) if "scael" in t)
        r = http.post("/config/reload", headers=auth(tokens["admin"]))
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["ok"] is False and body["diff"] == {}
        assert body["sha256"] == hashlib.sha256(v1.encode()).hexdigest()
        assert body["error"].startswith(f"{cfg}:{line}:"), body["error"]
        assert "scael" in body["error"]
        # SIGHUP with the same file: refused too, the error logged with FILE:LINE:COL
        gw.proc.send_signal(signal.SIGHUP)
        gw.wait(lambda: len(gw.logged(f"refused, the running config kept: {cfg}:{line}:")) >= 2, 20,
                "the refusals logged with FILE:LINE:COL")
        # a change only a restart can make is refused with where and why
        moved = v1.replace(f'state_dir: "{state}"', f'state_dir: "{tmp_path / "elsewhere"}"')
        cfg.write_text(moved)
        r = http.post("/config/reload", headers=auth(tokens["admin"]))
        assert r.status_code == 422 and f"{cfg}:1:" in r.json()["error"] and "restart" in r.json()["error"]
        # the running config is the first one: same devices, no config event, same table
        st = http.get("/status", headers=auth(tokens["viewer"])).json()
        assert [d["name"] for d in st["devices"]] == ["plc-a"]
        assert http.get("/config", headers=auth(tokens["admin"])).json()["sha256"] == \
            hashlib.sha256(v1.encode()).hexdigest()

        # fixed: applied
        good = bad.replace("scael", "scale")
        cfg.write_text(good)
        r = http.post("/config/reload", headers=auth(tokens["admin"]))
        assert r.status_code == 200, r.text
        assert r.json()["diff"]["devices"]["added"] == ["plc-c"]
        st = http.get("/status", headers=auth(tokens["viewer"])).json()
        assert sorted(d["name"] for d in st["devices"]) == ["plc-a", "plc-c"]
        # journaled: the no-op and the fixed file, nothing of the refused ones in between
        evs = gw.wait(lambda: len(config_events(jpath, "api:admin-user")) >= 2 and
                      config_events(jpath, "api:admin-user"), 10, "the second config event")
        assert [e["sha256"] for _, e in evs] == [hashlib.sha256(t.encode()).hexdigest() for t in (v1, good)]
        assert not config_events(jpath, "sighup")
        tables = [s for s, e in journal_events(jpath) if e.get("type") == "channel_table"]
        assert len(tables) == 2 and tables[0] < evs[0][0] < evs[1][0] < tables[1]  # at start, then the fix
    finally:
        http.close()
        gw.stop()
    assert gw.proc.returncode == 0, "".join(gw.log[-30:])


def test_changed_mqtt_section_restarts_from_its_cursor(sim: SimProcess, tmp_path: Path,
                                                       mosquitto_factory: Any) -> None:
    """The MQTT section moves to another broker and prefix while the first broker is down:
    the service restarts and delivers what its cursor had not acknowledged, once."""
    a_broker, b_broker = mosquitto_factory(), mosquitto_factory()
    sa, sb = Subscriber(a_broker, ["#"], client_id="sub-a"), Subscriber(b_broker, ["#"], client_id="sub-b")
    state = tmp_path / "state"
    state.mkdir()
    tokens = make_tokens(state)
    api_port = free_port()
    jpath = state / "journal.db"
    devs = device(sim, "plc-a", chan("GA-1", "input:0", "h: 25") + chan("GA-2", "input:1", "h: 25"))
    mqtt_a = json.dumps(a_broker.section(topic_prefix="p1"))
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(config(state, api_port, devs, f"mqtt: {mqtt_a}\n"))
    gw = Gw(cfg)
    http = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=30)

    def delivered(s: Subscriber) -> list[dict[str, Any]]:
        return s.json(lambda t: "/alarms/" in t and not t.endswith("/alarms/active"))

    def mqtt_cursor() -> int:
        return int(http.get("/status", headers=auth(tokens["viewer"])).json()["services"]["mqtt"]["cursor"])

    try:
        gw.wait(lambda: gw.proc.poll() is None and _up(http), 30, "the API")
        gw.wait(lambda: [e for e in delivered(sa) if e.get("channel") == "GA-2"], 30,
                "GA-2's raise on broker A")
        raised = [s for s, e in journal_events(jpath) if e.get("type") == "alarm"]
        gw.wait(lambda: mqtt_cursor() >= max(raised), 10, "broker A's PUBACK of the raise")
        a_broker.kill()
        r = http.post("/alarms/GA-2/ack", headers=auth(tokens["operator"]), json={})
        assert r.status_code == 200, r.text
        gw.wait(lambda: any(e["state"] == "active_acked" for e in alarms(jpath, "GA-2")), 10,
                "the ack journaled")

        mqtt_b = json.dumps(b_broker.section(topic_prefix="p2"))
        cfg.write_text(config(state, api_port, devs.replace("h: 25}", "h: 10}", 1), f"mqtt: {mqtt_b}\n"))
        r = http.post("/config/reload", headers=auth(tokens["admin"]))
        assert r.status_code == 200, r.text
        assert "mqtt" in r.json()["diff"]["sections"]
        # the ack (journaled while A was down) and GA-1's raise at its new limit reach B, under p2
        gw.wait(lambda: {(e.get("channel"), e.get("transition")) for e in delivered(sb)}
                >= {("GA-2", "ack"), ("GA-1", "raise")}, 30, "the backlog and the new alarm on broker B")
        journaled = [s for s, e in journal_events(jpath) if e.get("type") == "alarm"]
        gw.wait(lambda: mqtt_cursor() >= max(journaled), 10, "broker B's PUBACKs")
        topics_b = {t for t, *_ in sb.messages}
        assert all(t.startswith("p2/") for t in topics_b), topics_b
        # every journaled alarm event went out exactly once, over A before and B after
        ids = [e["id"] for _, e in journal_events(jpath) if e.get("type") == "alarm"]
        got = [e["id"] for e in delivered(sa) + delivered(sb)]
        assert sorted(got) == sorted(ids), (got, ids)
    finally:
        http.close()
        sa.close()
        sb.close()
        gw.stop()
    assert gw.proc.returncode == 0, "".join(gw.log[-30:])


def test_reload_with_a_text_is_serialized_and_leaves_the_file(sim: SimProcess, tmp_path: Path) -> None:
    """The contract configuration-from-central codes against: ``reload_config(text, source=)``
    validates the text as if it were the file (relative paths against the file's folder),
    applies it without writing the file, one reload after the other."""
    from tests.fixtures.daemon import Daemon

    state = tmp_path / "state"
    a = device(sim, "plc-a", chan("GA-1", "input:0") + chan("GA-2", "input:1"))
    c = device(sim, "plc-c", chan("GC-1", "input:0"))
    base = f'gateway: {{id: gw-rl, site: "S", state_dir: "{state}"}}\ndevices:'
    v1, with_c = base + a + "\n", base + a + c + "\n"
    path = tmp_path / "gateway.yaml"
    path.write_text(v1)
    d = Daemon(v1, config_path=path).start()
    try:
        assert d.gw is not None
        gw = d.gw
        assert gw.config_sha256 == hashlib.sha256(v1.encode()).hexdigest() and gw.config_text == v1

        async def both() -> list[Any]:
            import asyncio

            return list(await asyncio.gather(gw.reload_config(with_c, source="central"),
                                             gw.reload_config(v1, source="central")))

        first, second = d.run(both(), timeout=60)
        assert first.ok and first.diff["devices"]["added"] == ["plc-c"], first
        assert second.ok and second.diff["devices"]["removed"] == ["plc-c"], second  # saw the first applied
        assert second.sha256 == gw.config_sha256 == hashlib.sha256(v1.encode()).hexdigest()
        assert path.read_text() == v1  # the caller decides about the file
        assert list(gw.devices) == ["plc-a"]

        # refused: the error names the file (the text stands for it), the running config stays
        bad = d.run(gw.reload_config(v1 + "uplink: {central_keys: [keys/central.pub]}\n", source="central"))
        assert not bad.ok and bad.diff == {} and bad.sha256 == second.sha256
        assert bad.error.startswith(f"{path}:"), bad.error
        assert f"no file {tmp_path / 'keys' / 'central.pub'}" in bad.error  # relative to the file's folder
        broken = d.run(gw.reload_config("gateway: [", source="central"))
        assert not broken.ok and broken.error.startswith(f"{path}:2:1: "), broken.error  # where YAML saw it
        # without a text: the file, as it is on disk
        path.write_text(with_c)
        again = d.run(gw.reload_config(source="api:admin"))
        assert again.ok and again.diff["devices"]["added"] == ["plc-c"]
        assert [(e["source"], e["sha256"]) for e in d.events("config")] == [
            ("start", second.sha256), ("central", first.sha256), ("central", second.sha256),
            ("api:admin", again.sha256)]
    finally:
        d.stop()


def test_a_restart_after_a_reload_warms_the_rules_by_name(tmp_path: Path) -> None:
    """The rules' warm-up at start replays journaled samples: those journaled before a
    reload renumbered the channels are read by the table journaled before them."""
    from gateway.app import Gateway
    from gateway.config import loads
    from gateway.core.channels import ChannelTable
    from gateway.core.chantable import table_doc
    from gateway.store.journal import Journal

    state = tmp_path / "state"
    state.mkdir()
    dev = ("  - {{name: plc, protocol: modbus-tcp, host: 127.0.0.1, port: {port}, poll: 1s,\n"
           "     channels: [{chans}]}}\n")

    def cfg_of(names: list[str]) -> Any:
        chans = ", ".join(f'{{name: {n}, kind: gas, unit: "%LEL", address: "input:{i}"}}'
                          for i, n in enumerate(names))
        return loads(f'gateway: {{id: gw-w, site: "S", state_dir: "{state}"}}\ndevices:\n'
                     + dev.format(port=free_port(), chans=chans))

    before, after = cfg_of(["GA-1", "GA-2"]), cfg_of(["GC-1", "GA-1", "GA-2"])
    now = time.time_ns()
    with Journal(state / "journal.db") as j:
        j.append_sync([table_doc(ChannelTable.from_config(before), "gw-w", "S", now - 10**9),
                       Batch.build([0, 1], [now - 900_000_000] * 2, [12.0, 30.0], [0, 0]),
                       table_doc(ChannelTable.from_config(after), "gw-w", "S", now - 5 * 10**8),
                       Batch.build([0, 1, 2], [now - 400_000_000] * 3, [7.0, 12.0, 30.0], [0, 0, 0])])
    gw = Gateway(after)
    try:
        seen: dict[str, set[float]] = {}
        for b in gw._journal_samples(0, 0):
            for c, v in zip(b.channel.tolist(), b.value.tolist(), strict=True):
                seen.setdefault(gw.table[c].name, set()).add(v)
        assert seen == {"GC-1": {7.0}, "GA-1": {12.0}, "GA-2": {30.0}}
    finally:
        gw.journal.close()


def test_reload_under_polling_at_1000_channels(tmp_path: Path, sim_factory: Any) -> None:
    """Ten devices of 100 channels, a tenth of them in alarm and acknowledged: a reload adds
    a device, removes one and changes one limit. The unchanged devices lose no reading and
    keep their connection, and no alarm that holds is raised again."""
    n_dev, per = 10, 100
    names = [f"d{d}" for d in range(n_dev + 1)]  # the last one is added by the reload
    signals = "\n".join(f"  S{d}-{i}: {{base: {30.0 if i % 10 == 0 else 12.0}}}"
                        for d in range(n_dev + 1) for i in range(per))
    sim_devices = "".join(
        f"  - name: {names[d]}\n    protocol: modbus-tcp\n    port: 0\n    units: [{{unit: 1, points: ["
        + ", ".join(f"{{signal: S{d}-{i}, address: 'input:{i}', type: int16, scale: 0.1}}"
                    for i in range(per))
        + "]}]\n" for d in range(n_dev + 1))
    sim = sim_factory(f"seed: 1\ntick: 200ms\nsignals:\n{signals}\ndevices:\n{sim_devices}")

    def dev(d: int, limit_of: dict[str, float] | None = None) -> str:
        chans = "".join(chan(f"S{d}-{i}", f"input:{i}", f"h: {(limit_of or {}).get(f'S{d}-{i}', 25)}")
                        for i in range(per))
        return device(sim, names[d], chans)

    state = tmp_path / "state"
    state.mkdir()
    tokens = make_tokens(state)
    api_port = free_port()
    jpath = state / "journal.db"
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(config(state, api_port, "".join(dev(d) for d in range(n_dev))))
    kept = names[1:n_dev]  # d0 is removed, d10 added, d1..d9 kept (d5 gets one limit changed)
    reqs0 = {n: requests(sim, n) for n in kept}
    gw = Gw(cfg)
    http = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=30)
    seq = 0
    try:
        gw.wait(lambda: gw.proc.poll() is None and _up(http), 60, "the API")
        gw.wait(lambda: len({e["channel"] for _, e in journal_events(jpath) if e.get("type") == "alarm"})
                >= n_dev * per // 10, 60, "a tenth of the channels in alarm")
        r = http.post("/alarms/*/ack", headers=auth(tokens["operator"]), json={})
        assert r.status_code == 200, r.text
        gw.wait(lambda: len({e["channel"] for _, e in journal_events(jpath) if e.get("type") == "alarm"
                             and e.get("state") == "active_acked"}) >= n_dev * per // 10, 30,
                "the acks journaled")
        conns = {n: connections(sim, n) for n in kept}
        cfg.write_text(config(state, api_port, "".join(dev(d, {"S5-1": 10.0}) for d in range(1, n_dev + 1))))
        gw.proc.send_signal(signal.SIGHUP)
        seq, ev = gw.wait(lambda: config_events(jpath, "sighup"), 60, "the config event")[0]
        assert ev["diff"]["devices"] == {"added": ["d10"], "removed": ["d0"], "changed": []}
        assert ev["diff"]["channels"]["changed"] == ["S5-1"]
        assert len(ev["diff"]["channels"]["removed"]) == len(ev["diff"]["channels"]["added"]) == per
        gw.wait(lambda: any(e["transition"] == "raise" for e in alarms(jpath, "S5-1", seq)), 30,
                "S5-1 raised at its new limit")
        gw.wait(lambda: any(e.get("channel", "").startswith("S10-") for e in
                            (ev for s, ev in journal_events(jpath) if s > seq and ev.get("type") == "alarm")),
                30, "the new device's alarms")
        for n in kept:
            gw.wait(lambda n=n: requests(sim, n) > reqs0[n] + 3, 30, f"{n} polled after the reload")
    finally:
        http.close()
        gw.stop()
    assert gw.proc.returncode == 0, "".join(gw.log[-30:])
    assert {n: connections(sim, n) for n in kept} == conns, "a kept device's poller reconnected"
    again = [e for s, e in journal_events(jpath) if s > seq and e.get("type") == "alarm"
             and e["transition"] == "raise" and not e["channel"].startswith("S10-")
             and e["channel"] != "S5-1"]
    assert not again, again[:3]
    # every answer of a kept device is journaled: 100 readings each, but one in flight at the stop
    tables = [(s, e) for s, e in journal_events(jpath) if e.get("type") == "channel_table"]
    got = dict.fromkeys(kept, 0)
    for s, b in journal_samples(jpath):
        doc = [e for ts, e in tables if ts < s][-1]
        dev_of = np.array([c["name"].split("-")[0] for c in doc["channels"]])
        for n in kept:
            got[n] += int((dev_of[b.channel] == f"S{n[1:]}").sum())
    for n in kept:
        answered = requests(sim, n) - reqs0[n]
        assert got[n] >= (answered - 1) * per, (n, got[n], answered)


def test_a_template_edited_on_disk_is_read_again(tmp_path: Path) -> None:
    """Templates are cached per process; a reload reads the ones it uses afresh."""
    from tests.fixtures.daemon import Daemon

    shipped = ROOT / "config" / "templates" / "gas-transmitter-status.yaml"
    (tmp_path / "gt.yaml").write_text(shipped.read_text())
    text = (f'gateway: {{id: gw-t, site: "S", state_dir: "{tmp_path / "state"}"}}\n'
            "devices:\n"
            f"  - {{name: gt, protocol: modbus-tcp, host: 127.0.0.1, port: {free_port()}, unit: 1,\n"
            "     template: ./gt.yaml, prefix: GT1.}\n")
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    d = Daemon(text, config_path=path).start()
    try:
        assert d.gw is not None
        gw = d.gw
        assert gw.table.by_name["GT1.gas"].unit == "ppm"
        (tmp_path / "gt.yaml").write_text(shipped.read_text().replace("unit: ppm", 'unit: "%LEL"', 1))
        res = d.run(gw.reload_config(source="sighup"))
        assert res.ok and res.diff["channels"]["changed"] == ["GT1.gas"], res
        assert gw.table.by_name["GT1.gas"].unit == "%LEL"
    finally:
        d.stop()
