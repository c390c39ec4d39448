"""Permits to work end to end: the real daemon polling the Modbus plant simulator, its admin
API over HTTP, the simulator driven to a leak.

- a hot-work approval refused because a detector in the permit's area reads above the
  GB 30871-2022 §5.3.2 criterion (methane: 0.5 %vol = 10 %LEL), the readings in the 409 and
  in the permit; approved once the reading is back;
- a permit in progress flagged (and suspended) when an alarm is raised on a detector of its
  area, the flag journaled as a reminder, the resume refused until a new analysis passes;
- a detector that does not answer (a dead PLC) refuses the analysis: bad, never stale-but-ok.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.daemon import Daemon, auth, make_tokens
from tests.fixtures.helpers import free_port, wait_until
from tests.fixtures.sims import SimProcess, tcp_plant

SIM = tcp_plant(
    ("GT-1", 3.0, "input:0", "int16", 0.1),
    ("GT-2", 2.0, "input:1", "int16", 0.1),
    ("OX-1", 20.9, "input:2", "int16", 0.1),
    seed=7,
)


def gateway_yaml(host: str, port: int, state: Path) -> str:
    return f"""
gateway: {{id: gw-permits, site: "91370100MA3C000000", state_dir: "{state}"}}
devices:
  - name: plc
    protocol: modbus-tcp
    host: {host}
    port: {port}
    poll: 200ms
    timeout: 200ms
    retries: 0
    channels:
      - {{name: GT-1, kind: gas, gas: methane, unit: "%LEL", address: input:0, type: int16, scale: 0.1,
          area: R-101, alarms: {{h: 25, hh: 50}}}}
      - {{name: OX-1, kind: gas, gas: o2, unit: "%vol", address: input:2, type: int16, scale: 0.1,
          area: R-101}}
      - {{name: GT-2, kind: gas, gas: methane, unit: "%LEL", address: input:1, type: int16, scale: 0.1,
          area: R-102, alarms: {{h: 25, hh: 50}}}}
  - name: dead-plc
    protocol: modbus-tcp
    host: 127.0.0.1
    port: {free_port()}
    poll: 1s
    timeout: 200ms
    retries: 0
    channels:
      - {{name: GT-9, kind: gas, gas: methane, unit: "%LEL", address: input:0, type: int16, scale: 0.1,
          area: TK-7}}
api: {{listen: "127.0.0.1:0"}}
permits: {{stale_after: 5s}}
"""


class Site:
    sim: SimProcess
    daemon: Daemon
    http: httpx.Client
    tokens: dict[str, str]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("permits")
    (tmp / "sim.yaml").write_text(SIM)
    s = Site()
    s.sim = SimProcess(tmp / "sim.yaml")
    state = tmp / "state"
    state.mkdir()
    s.tokens = make_tokens(state)
    host, port = s.sim.tcp("plc")
    s.daemon = Daemon(gateway_yaml(host, port, state)).start()
    s.http = httpx.Client(base_url=s.daemon.url, timeout=10)
    try:
        yield s
    finally:
        s.http.close()
        s.daemon.stop()
        s.sim.stop()


def hdr(s: Site, role: str) -> dict[str, str]:
    return auth(s.tokens[role])


def reading(s: Site, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = s.http.get(f"/channels/{name}", headers=hdr(s, "viewer")).json()
    return doc


def wait_reading(s: Site, name: str, cond: Any, what: str) -> None:
    def ok() -> bool:
        c = reading(s, name)
        return c.get("quality") == "good" and c.get("value") is not None and bool(cond(c["value"]))

    wait_until(ok, 15, what=what)


SIGNED = [
    {"role": r, "name": f"{r}-person", "signed_at": "2026-12-07T07:50:00+08:00"}
    for r in ("applicant", "work_leader", "guardian", "analyst", "approver")
]


def new_permit(s: Site, no: str, area: str) -> int:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    body = {
        "permit_no": no,
        "applicant_unit": "maintenance",
        "location": f"{area} manway",
        "content": "weld",
        "work_leader": "Wang",
        "area": area,
        "level": "first",
        "valid_from": (now - dt.timedelta(minutes=5)).isoformat(),
        "valid_to": (now + dt.timedelta(hours=7)).isoformat(),
    }
    r = s.http.post("/registers/hot_work_permit", json=body, headers=hdr(s, "operator"))
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def step(s: Site, rid: int, name: str, role: str = "operator", **fields: Any) -> httpx.Response:
    return s.http.post(
        f"/registers/hot_work_permit/{rid}/transitions/{name}", json={"fields": fields}, headers=hdr(s, role)
    )


def test_hot_work_approval_refused_while_a_detector_in_its_area_reads_above_the_criterion(site: Site) -> None:
    """GB 30871-2022 §5.3.2: methane (LEL 5 %vol ≥ 4 %) may be at most 0.5 %vol, 10 %LEL. GT-1
    in the permit's area reads 14 %LEL (below its alarm at 25: the criterion refuses, not an
    alarm): the approval is refused with the readings, recorded in the permit and its history."""
    s = site
    wait_reading(s, "GT-1", lambda v: v < 5, "GT-1 good and low")
    wait_reading(s, "OX-1", lambda v: 19.5 <= v <= 21, "OX-1 good")
    rid = new_permit(s, "DH-E2E-1", "R-101")
    r = step(s, rid, "analyse")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "analysed"
    try:
        s.sim.control(set="GT-1", value=14.0)
        wait_reading(s, "GT-1", lambda v: abs(v - 14.0) < 0.05, "GT-1 at 14 %LEL")
        shown = s.http.get(f"/registers/hot_work_permit/{rid}/analysis", headers=hdr(s, "viewer")).json()
        assert not shown["ok"] and {x["channel"] for x in shown["readings"]} == {"GT-1", "OX-1"}
        # approval is the approver's: an operator may not, whatever the readings
        assert step(s, rid, "approve", "operator", signatures=SIGNED).status_code == 403
        r = step(s, rid, "approve", "admin", signatures=SIGNED)
        assert r.status_code == 409, r.text
        body = r.json()
        assert "GT-1 reads 14 %LEL" in body["detail"] and "10 %LEL" in body["detail"]
        by = {x["channel"]: x for x in body["analysis"]["readings"]}
        assert by["GT-1"]["verdict"] == "fail" and by["OX-1"]["verdict"] == "pass"
        doc = s.http.get(f"/registers/hot_work_permit/{rid}", headers=hdr(s, "viewer")).json()
        assert doc["state"] == "analysed"
        failed = [x for x in doc["data"]["gas_analyses"] if not x["ok"]]
        assert [(x["channel"], x["value"]) for x in failed if x["verdict"] == "fail"] == [("GT-1", 14.0)]
        hist = s.http.get(f"/registers/hot_work_permit/{rid}/history", headers=hdr(s, "viewer")).json()
        assert [h["action"] for h in hist][-1] == "refused:approve"
    finally:
        s.sim.control(set="GT-1", value=None)
    wait_reading(s, "GT-1", lambda v: v < 5, "GT-1 back to normal")
    r = step(s, rid, "approve", "admin", signatures=SIGNED)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "approved"


def test_permit_flagged_by_an_alarm_during_the_work(site: Site) -> None:
    """While a permit is in progress an alarm on a detector of its area flags and suspends it;
    the flag is journaled as a reminder (what MQTT and the notifiers carry); work resumes only
    after a new analysis passes."""
    s = site
    wait_reading(s, "GT-1", lambda v: v < 5, "GT-1 good and low")
    rid = new_permit(s, "DH-E2E-2", "R-101")
    assert step(s, rid, "analyse").status_code == 200
    assert step(s, rid, "approve", "admin", signatures=SIGNED).status_code == 200
    r = step(s, rid, "start")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "in_progress"
    try:
        s.sim.control(set="GT-1", value=30.0)  # above the h alarm at 25 %LEL

        def flagged() -> Any:
            d = s.http.get(f"/registers/hot_work_permit/{rid}", headers=hdr(s, "viewer")).json()
            return d if d["state"] == "suspended" and d["data"].get("flagged") else None

        doc = wait_until(flagged, 15, what="permit flagged")
        assert "alarm on GT-1" in doc["data"]["flag_reason"]  # type: ignore[index]

        def flag_notices() -> list[dict[str, Any]]:
            return [
                e for e in s.daemon.events("reminder") if e.get("rule") == "permit_flagged" and e["id"] == rid
            ]

        wait_until(flag_notices, 10, what="the flag journaled as a reminder")
        notices = flag_notices()
        assert len(notices) == 1 and notices[0]["channel"] == "GT-1" and notices[0]["alarm"]["level"] == "h"
        r = step(s, rid, "resume")
        assert r.status_code == 409 and "GT-1" in r.json()["detail"]
    finally:
        s.sim.control(set="GT-1", value=None)
    wait_reading(s, "GT-1", lambda v: v < 5, "GT-1 back to normal")

    def resumed() -> bool:
        # the alarm clears on the next polls; until then the analysis still refuses (in alarm)
        return step(s, rid, "resume").status_code == 200

    wait_until(resumed, 15, interval=0.3, what="resume once the alarm cleared")
    doc = s.http.get(f"/registers/hot_work_permit/{rid}", headers=hdr(s, "viewer")).json()
    assert doc["state"] == "in_progress" and doc["data"]["flagged"] is False
    # a periodic analysis during the work, recorded; a viewer may look but not take one
    assert (
        s.http.post(f"/registers/hot_work_permit/{rid}/analysis", headers=hdr(s, "viewer")).status_code == 403
    )
    r = s.http.post(f"/registers/hot_work_permit/{rid}/analysis", headers=hdr(s, "operator"))
    assert r.status_code == 200, r.text
    assert r.json()["analysis"]["ok"] and r.json()["record"]["state"] == "in_progress"
    assert r.json()["record"]["data"]["gas_analyses"][-1]["step"] == "periodic"
    # an alarm in another area leaves it alone
    try:
        s.sim.control(set="GT-2", value=30.0)
        wait_until(
            lambda: any(
                a["channel"] == "GT-2"
                for a in s.http.get("/alarms", headers=hdr(s, "viewer")).json()["active"]
            ),
            15,
            what="GT-2 alarm",
        )
        s.daemon.run(s.daemon.gw.flush())  # type: ignore[union-attr]
        svc = s.daemon.api.registers.watch
        target = s.daemon.gw.journal.last_seq  # type: ignore[union-attr]
        wait_until(lambda: svc.cursor >= target, 10, what="the watch read the GT-2 alarm")
        doc = s.http.get(f"/registers/hot_work_permit/{rid}", headers=hdr(s, "viewer")).json()
        assert doc["state"] == "in_progress"
    finally:
        s.sim.control(set="GT-2", value=None)


def test_a_dead_detector_refuses_the_analysis(site: Site) -> None:
    """A detector that does not answer gives no usable reading: the analysis is refused
    (bad quality or no data), never passed on an old value."""
    s = site
    rid = new_permit(s, "DH-E2E-3", "TK-7")
    r = step(s, rid, "analyse")
    assert r.status_code == 409, r.text
    (gt9,) = r.json()["analysis"]["readings"]
    assert gt9["channel"] == "GT-9" and gt9["verdict"] in ("bad", "no_data")
    # a step's own fields of the wrong type: 422 naming them, not a server error
    r = step(s, rid, "analyse", channels=[{"x": 1}, "GT-404"], area=5, lel_percent=True)
    assert r.status_code == 422, r.text
    assert {tuple(e["loc"]) for e in r.json()["detail"]} >= {("body", "area"), ("body", "lel_percent")}
    # a permit that names no detector at all cannot be analysed either
    rid2 = new_permit(s, "DH-E2E-4", "nowhere")
    r = step(s, rid2, "analyse")
    assert r.status_code == 409 and "no gas detector" in r.json()["detail"]
