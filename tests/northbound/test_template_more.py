"""The template publisher's base data, alarm messages, heartbeats and interval snapshots,
over real HTTPS to the platform's side written from the profile's text
(tests/northbound/province.py: GmSSL decrypts and checks the SM3 signature), from a real
journal, with the shipped HTTPS profile (config/regulators/beijing-db11.yaml)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import yaml

from gateway.core.channels import ChannelInfo, ChannelTable
from gateway.core.config import ChannelBase
from gateway.core.config_regulators import TemplateAdapter
from gateway.store.journal import Journal
from northbound.base import PointMap
from northbound.template.adapter import TemplatePublisher
from northbound.template.render import Sealer
from simulators.province_platform import HttpsReceiver, Province
from tests.fixtures.helpers import async_wait_until
from tests.fixtures.province import (
    ENTERPRISE,
    HAZARD,
    IV,
    KEY,
    NS,
    PROFILES,
    SIGN,
    T0,
    expected,
    profile_doc,
    rows,
    running,
)

ROOT = Path(__file__).resolve().parents[2]
BEIJING = next(p for p in PROFILES if p.stem == "beijing-db11")
PATHS = ["/api/v1/sensing/realtime", "/api/v1/sensing/alarm", "/api/v1/heartbeat", "/api/v1/base/enterprise",
         "/api/v1/base/hazard", "/api/v1/base/target"]


def specs() -> ChannelTable:
    """GT-1 on the configured hazard source, PT-1 on one only the channel names, SW-1 unmapped."""
    chans = [
        ChannelBase.model_validate({"name": "GT-1", "kind": "gas", "unit": "%LEL", "range": [0, 100],
                                    "alarms": {"h": 25, "hh": 50}, "hazard_source": HAZARD}),
        ChannelBase.model_validate({"name": "PT-1", "kind": "pressure", "unit": "MPa", "range": [0, 2.5],
                                    "alarms": {"h": 1.2, "l": 0.1}, "hazard_source": "罐区二"}),
        ChannelBase.model_validate({"name": "SW-1", "kind": "status"}),
    ]
    return ChannelTable([ChannelInfo(i, c.name, c.kind, c.unit, "plc", c) for i, c in enumerate(chans)])


ENTERPRISE_INFO = {"name": "一号化工", "address": "北京市某区某路1号", "contact": "张三", "phone": "010-1"}


def _urls(x: Any, base: str) -> Any:
    if isinstance(x, dict):
        return {k: _urls(v, base) for k, v in x.items()}
    if isinstance(x, list):
        return [_urls(v, base) for v in x]
    return x.replace("https://<platform host>", base) if isinstance(x, str) else x


def beijing(recv: HttpsReceiver, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = _urls(profile_doc(BEIJING), recv.base)
    doc["http"].update(ca_file=str(recv.ca), timeout="2s", backoff_max="300ms")
    doc["enterprise"] = ENTERPRISE_INFO
    doc["hazard_sources"][0]["name"] = "一号罐区"
    doc.update(start="oldest", batch_points=40, heartbeat=None)
    doc["points"] = [{"channel": "GT-1", "code": "A0001", "decimals": 2},
                     {"channel": "PT-1", "code": "P0001", "scale": 1000, "decimals": 1, "unit": "kPa"}]
    doc.update(over)
    return doc


def publisher(doc: dict[str, Any], j: Journal, state: Path) -> TemplatePublisher:
    cfg = TemplateAdapter.model_validate(doc)
    t = specs()
    return TemplatePublisher(cfg, j, PointMap(cfg.points, t), t.names(),
                             sealer=Sealer(cfg.crypto, KEY, IV, SIGN), table=t, state_dir=state,
                             gateway_id="gw-bj-1")


@contextlib.asynccontextmanager
async def journal(tmp: Path) -> AsyncIterator[Journal]:
    j = Journal(tmp / "journal.db", sync="normal")
    try:
        yield j
    finally:
        j.close()


def alarm(channel: str, transition: str, ts: int, value: float | None, level: str = "h",
          limit: float | None = 25.0) -> dict[str, Any]:
    """An alarm event as rules/events.py writes it to the journal."""
    state = {"raise": "active_unacked", "ack": "active_acked", "clear": "normal"}[transition]
    return {"type": "alarm", "id": None, "ts": ts, "channel": channel, "index": 0, "kind": "gas",
            "unit": "%LEL", "rule": "limit", "level": level, "code": 2, "transition": transition,
            "state": state, "priority": "high", "value": value, "limit": limit,
            "who": "op" if transition == "ack" else None}


async def test_base_data_on_start_and_on_change_only(tmp_path: Path) -> None:
    recv = HttpsReceiver(tmp_path / "certs", PATHS)
    state = tmp_path / "state"
    doc = beijing(recv)
    prov = Province(doc, KEY, IV, SIGN)
    try:
        async with journal(tmp_path) as j:
            async with running(publisher(doc, j, state)) as pub:
                await async_wait_until(lambda: pub.idle.is_set(), 20)
            got = prov.sort(recv.messages)
            assert prov.refused == []
            assert [k for k, _ in got] == ["base.enterprise", "base.hazard_sources", "base.points"]
            assert prov.fields(*got[0]) == {"enterprise": ENTERPRISE, **ENTERPRISE_INFO}
            assert prov.items(*got[1]) == [
                {"code": HAZARD, "name": "一号罐区", "grade": "三级", "location": "<所在位置>"},
                # a hazard source only a channel names
                {"code": "罐区二", "name": "罐区二", "grade": None, "location": None}]
            assert prov.items(*got[2]) == [
                {"code": "A0001", "channel": "GT-1", "unit": "%LEL", "hazard": HAZARD, "h": 25.0,
                 "hh": 50.0, "l": None, "ll": None, "range_lo": 0.0, "range_hi": 100.0},
                # MPa → kPa, the limits and the span too
                {"code": "P0001", "channel": "PT-1", "unit": "kPa", "hazard": "罐区二", "h": 1200.0,
                 "hh": None, "l": 100.0, "ll": None, "range_lo": 0.0, "range_hi": 2500.0}]
            f = state / "regulators" / "beijing.template.json"
            assert stat.S_IMODE(os.stat(f).st_mode) == 0o600

            # a restart with the same config: nothing resent
            async with running(publisher(doc, j, state)) as pub:
                await async_wait_until(lambda: pub.idle.is_set(), 20)
                assert pub.stats().get("base_sent", 0) == 0
            assert len(recv.messages) == 3

            # a restart with a changed point: only the point list goes again
            doc["points"][1]["code"] = "P0002"
            async with running(publisher(doc, j, state)) as pub:
                await async_wait_until(lambda: pub.idle.is_set(), 20)
            got = prov.sort(recv.messages)
            assert [k for k, _ in got][3:] == ["base.points"]
            assert [d["code"] for d in prov.items(*got[3])] == ["A0001", "P0002"]
    finally:
        recv.stop()


def register(rid: str, version: int, *, archived: bool = False, grade: str = "二级") -> dict[str, Any]:
    """A change of a major hazard source in the registers, as the admin side journals it."""
    return {"type": "register", "ts": T0, "register": "major_hazard_source", "id": rid, "version": version,
            "action": "archive" if archived else "update", "actor": "admin-user", "state": None,
            "archived": archived,
            "data": {"code": "110100009", "name": "二号罐区", "grade": grade, "location": "东区",
                     "filing_status": "filed",
                     "chemicals": [{"name": "液氨", "quantity_t": 12, "critical_t": 10}]}}


async def test_hazard_sources_from_the_registers_sent_when_they_change(tmp_path: Path) -> None:
    recv = HttpsReceiver(tmp_path / "certs", PATHS)
    doc = beijing(recv, mode="batch")
    prov = Province(doc, KEY, IV, SIGN)
    state = tmp_path / "state"

    def hazard_lists() -> list[list[tuple[Any, ...]]]:
        return [[(h["code"], h["grade"]) for h in prov.items(k, m)] for k, m in prov.sort(recv.messages)
                if k == "base.hazard_sources"]
    ours = (HAZARD, "三级")
    try:
        async with journal(tmp_path) as j:
            async with running(publisher(doc, j, state)) as pub:
                await async_wait_until(lambda: pub.idle.is_set(), 20)
                await j.append_event(register("r1", 1))
                await async_wait_until(lambda: len(hazard_lists()) >= 2, 20)
                await j.append_event(register("r1", 2))  # the same data again: nothing to send
                await j.append_event(register("r1", 3, grade="一级"))
                await async_wait_until(lambda: len(hazard_lists()) >= 3, 20)
                await async_wait_until(lambda: pub.c.cursor >= j.last_seq, 20)
            assert hazard_lists() == [[ours, ("罐区二", None)],
                                      [ours, ("110100009", "二级"), ("罐区二", None)],
                                      [ours, ("110100009", "一级"), ("罐区二", None)]]
            async with running(publisher(doc, j, state)) as pub:  # a restart: the list is known
                await async_wait_until(lambda: pub.idle.is_set(), 20)
                await j.append_event(register("r1", 4, archived=True))
                await async_wait_until(lambda: len(hazard_lists()) >= 4, 20)
            assert hazard_lists()[3:] == [[ours, ("罐区二", None)]]
    finally:
        recv.stop()


async def test_a_damaged_state_file_means_sending_the_base_data_again(tmp_path: Path) -> None:
    recv = HttpsReceiver(tmp_path / "certs", PATHS)
    state = tmp_path / "state"
    (state / "regulators").mkdir(parents=True)
    damaged = '{"base": 5, "latest": "x", "sent_until": []}'
    (state / "regulators" / "beijing.template.json").write_text(damaged)
    doc = beijing(recv)
    prov = Province(doc, KEY, IV, SIGN)
    try:
        async with journal(tmp_path) as j, running(publisher(doc, j, state)) as pub:
            await async_wait_until(lambda: pub.idle.is_set(), 20)
        assert [k for k, _ in prov.sort(recv.messages)] == ["base.enterprise", "base.hazard_sources",
                                                            "base.points"]
    finally:
        recv.stop()


async def test_alarms_in_journal_order_exactly_once_through_refusals(tmp_path: Path) -> None:
    recv = HttpsReceiver(tmp_path / "certs", PATHS)
    doc = beijing(recv, mode="batch", base={})
    prov = Province(doc, KEY, IV, SIGN)
    t = T0 + 10 * NS
    try:
        async with journal(tmp_path) as j:
            await j.append_batch(rows(0, 10))
            await j.append_event(alarm("GT-1", "raise", t, 30.0))
            await j.append_event(alarm("SW-1", "raise", t, 1.0))  # not mapped: not sent
            await j.append_batch(rows(10, 5))
            await j.append_event(alarm("GT-1", "ack", t + 2 * NS, 31.0))
            await j.append_event(alarm("GT-1", "clear", t + 4 * NS, 20.0))
            last = j.last_seq
            recv.faults = [503, 500]  # the first message (readings) is refused twice
            async with running(publisher(doc, j, tmp_path / "state")) as pub:
                await async_wait_until(lambda: pub.c.cursor >= last, 20)
                assert pub.stats()["resends"] == 2
            got = prov.sort(recv.messages)
            assert prov.refused == []
            assert [k for k, _ in got] == ["data", "alarm", "data", "alarm", "alarm"]
            readings = [(d["code"], d["value"], d["time"], d["flag"]) for k, m in got if k == "data"
                        for d in prov.items(k, m)]
            assert readings == expected(0, 15)
            alarms = [prov.fields(k, m) for k, m in got if k == "alarm"]
            assert [(a["event"], a["code"], a["level"], a["value"], a["limit"], a["time"])
                    for a in alarms] == [
                ("raised", "A0001", "h", 30.0, 25.0, "2026-01-01 08:00:10"),
                ("acknowledged", "A0001", "h", 31.0, 25.0, "2026-01-01 08:00:12"),
                ("cleared", "A0001", "h", 20.0, 25.0, "2026-01-01 08:00:14")]
            assert all(a["enterprise"] == ENTERPRISE and a["hazard"] == HAZARD for a in alarms)
    finally:
        recv.stop()


async def test_interval_snapshots_once_across_a_restart(tmp_path: Path) -> None:
    recv = HttpsReceiver(tmp_path / "certs", PATHS)
    doc = beijing(recv, base={})  # mode: interval, every 30 s (the profile's)
    prov = Province(doc, KEY, IV, SIGN)
    state = tmp_path / "state"

    def snapshots() -> list[list[tuple[Any, ...]]]:
        return [[(d["code"], d["value"], d["time"], d["flag"]) for d in prov.items(k, m)]
                for k, m in prov.sort(recv.messages) if k == "data"]

    def alarms() -> list[str]:
        return [prov.fields(k, m)["event"] for k, m in prov.sort(recv.messages) if k == "alarm"]
    try:
        async with journal(tmp_path) as j:
            seqs = [await j.append_batch(rows(i, 1)) for i in range(0, 95)]
            await j.append_event(alarm("GT-1", "raise", T0 + 94 * NS, 30.0))  # in the open window
            async with running(publisher(doc, j, state)) as pub:
                await async_wait_until(lambda: pub.idle.is_set() and len(snapshots()) >= 3 and alarms(), 20)
                # the window [90, 120) is open: the cursor stays before its first record
                assert pub.c.cursor == seqs[90] - 1
            # every 30 s of the data's time, each point's latest value (the last second's)
            assert snapshots() == [expected(29, 1), expected(59, 1), expected(89, 1)]
            assert alarms() == ["raised"]

            async with running(publisher(doc, j, state)) as pub:
                for i in range(95, 125):
                    await j.append_batch(rows(i, 1))
                await async_wait_until(lambda: len(snapshots()) >= 4, 20)
                await async_wait_until(lambda: pub.idle.is_set(), 20)
            assert snapshots() == [expected(29, 1), expected(59, 1), expected(89, 1), expected(119, 1)]
            assert alarms() == ["raised"], "the open window's alarm was not sent again after the restart"
    finally:
        recv.stop()


async def test_heartbeats_while_reachable(tmp_path: Path) -> None:
    recv = HttpsReceiver(tmp_path / "certs", PATHS)
    doc = beijing(recv, base={})
    doc["heartbeat"] = profile_doc(BEIJING)["heartbeat"]
    doc["heartbeat"].update(interval="1s", url=recv.base + "/api/v1/heartbeat")
    prov = Province(doc, KEY, IV, SIGN)

    def beats() -> list[dict[str, Any]]:
        return [prov.fields(k, m) for k, m in prov.sort(recv.messages) if k == "heartbeat"]
    try:
        async with journal(tmp_path) as j, running(publisher(doc, j, tmp_path / "state")) as pub:
            await async_wait_until(lambda: len(beats()) >= 2, 20)
            b = beats()[0]
            assert b["enterprise"] == ENTERPRISE and b["gateway"] == "gw-bj-1" and b["now"].startswith("20")
            recv.down = True
            await async_wait_until(lambda: pub.stats().get("heartbeat_failures", 0) >= 2, 20)
            n = len(beats())
            recv.down = False
            await async_wait_until(lambda: len(beats()) > n, 20)
    finally:
        recv.stop()


def sim_process(profile: Path, certs: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "simulators.province_platform", "--profile", str(profile), "--key", KEY.hex(),
         "--iv", IV.hex(), "--sign-key", SIGN.decode(), "--cert-dir", str(certs)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})


async def test_the_platform_simulator_by_hand(tmp_path: Path) -> None:
    """``python -m simulators.province_platform`` with the HTTPS profile: it opens what the
    publisher sends and refuses a body whose signature does not match."""
    doc = _urls(profile_doc(BEIJING), "https://127.0.0.1")
    prof = tmp_path / "beijing.yaml"
    prof.write_text(yaml.safe_dump(doc, allow_unicode=True))
    proc = sim_process(prof, tmp_path / "certs")
    log: list[str] = []
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line.startswith("READY "), line + proc.stderr.read()
        ready = json.loads(line[6:])
        err = proc.stderr
        threading.Thread(target=lambda: log.extend(iter(err.readline, "")), daemon=True).start()
        recv = SimpleNamespace(base=ready["base"], ca=ready["ca"])
        pub_doc = beijing(recv, mode="batch")  # type: ignore[arg-type]
        async with journal(tmp_path) as j:
            await j.append_batch(rows(0, 5))
            last = j.last_seq
            async with running(publisher(pub_doc, j, tmp_path / "state")) as pub:
                await async_wait_until(lambda: pub.c.cursor >= last, 20)
        await async_wait_until(lambda: sum(" data " in x for x in log) >= 1, 20)
        kinds = [x.split()[2] for x in log if len(x.split()) > 2]
        assert kinds[:4] == ["base.enterprise", "base.hazard_sources", "base.points", "data"], log
        assert '"A0001"' in next(x for x in log if " data " in x)
        bad = json.dumps({"enterpriseCode": ENTERPRISE, "timestamp": 1, "requestId": "x",
                          "data": "00" * 16, "sign": "0" * 64})
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=ready["ca"])) as c:
            r = await c.post(ready["base"] + "/api/v1/sensing/realtime", content=bad,
                             headers={"Content-Type": "application/json"})
        assert r.status_code == 200 and r.json()["code"] == 4001, r.text
        await async_wait_until(lambda: any("signature check failed" in x for x in log), 10)
    finally:
        proc.terminate()
        proc.wait(10)
