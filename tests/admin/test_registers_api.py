"""Registers through the running daemon: reminders on a frozen date reach the journal once
per threshold, register changes are journaled, CSV/JSON over HTTP, attachments, and a
plant's own register type from the config."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import httpx

from tests.fixtures.daemon import SIM_PLANT, Daemon, auth, gateway_yaml, make_tokens
from tests.fixtures.helpers import wait_until


class ShiftedClock:
    """Real time moved to a chosen plant date: days are under the test's control, while
    seconds still pass (pollers and timers keep working)."""

    def __init__(self, day: dt.date):
        self.offset = 0
        self.set(day)

    def set(self, day: dt.date) -> None:
        target = int(dt.datetime(day.year, day.month, day.day, 9).timestamp() * 1e9)
        self.offset = target - time.time_ns()

    def __call__(self) -> int:
        return time.time_ns() + self.offset


def test_reminders_on_a_frozen_date_reach_the_journal_once(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(SIM_PLANT)
    host, port = sim.tcp("plc")
    tokens = make_tokens(tmp_path)
    clock = ShiftedClock(dt.date(2026, 3, 1))
    d = Daemon(
        gateway_yaml(host, port, tmp_path, extra="registers: {remind_days: [30, 7], check_every: 100ms}"),
        clock=clock,
    ).start()
    http = httpx.Client(base_url=d.url, headers=auth(tokens["operator"]), timeout=10)
    try:
        r = http.post(
            "/registers/special_worker",
            json={
                "name": "Zhang San",
                "operation_type": "电工作业",
                "cert_no": "T-1",
                "expiry": "2026-03-20",
            },
        )
        assert r.status_code == 201
        r = http.post(
            "/registers/special_equipment",
            json={
                "name": "boiler",
                "category": "boiler",
                "registration_no": "R-1",
                "next_inspection": "2026-03-05",
            },
        )
        assert r.status_code == 201

        def reminders() -> list[dict[str, Any]]:
            return d.events("reminder")

        got = wait_until(lambda: reminders() if len(reminders()) >= 2 else [], 10, what="two reminders")
        assert sorted((e["register"], e["threshold"], e["days_left"]) for e in got) == [
            ("special_equipment", 7, 4),
            ("special_worker", 30, 19),
        ]
        sw = next(e for e in got if e["register"] == "special_worker")
        assert sw["due"] == "2026-03-20" and sw["field"] == "expiry" and sw["label"] == "Zhang San"
        # many more checks on the same day: nothing new
        n_checks = d.api.registers.reminders
        api = d.api
        checked: list[int] = []  # reminders raised by each check from now on
        check = api.registers.check_reminders

        async def counted() -> list[dict[str, Any]]:
            events = await check()
            checked.append(len(events))
            return events

        api.registers.check_reminders = counted  # the service's loop looks it up on every round
        wait_until(lambda: len(checked) >= 5, 10, what="five more reminder checks")
        assert not any(checked), checked
        assert len(reminders()) == 2 and d.api.registers.reminders == n_checks
        # a week later: the certificate crosses 7 days, the boiler is overdue
        clock.set(dt.date(2026, 3, 14))
        got = wait_until(lambda: reminders() if len(reminders()) >= 4 else [], 10, what="second round")
        assert sorted((e["register"], e["threshold"], e["overdue"]) for e in got[2:]) == [
            ("special_equipment", None, True),
            ("special_worker", 7, False),
        ]
        # the page's due list shows the same picture
        due = http.get("/due?within_days=60").json()
        assert [(x["type"], x["days_left"]) for x in due] == [
            ("special_equipment", -9),
            ("special_worker", 6),
        ]
        metrics = http.get("/metrics").text
        assert "safegw_reminders_total 4" in metrics
    finally:
        http.close()
        d.stop()


def test_registers_over_http_export_import_and_attachments(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(SIM_PLANT)
    host, port = sim.tcp("plc")
    tokens = make_tokens(tmp_path)
    types = tmp_path / "plant-types.yaml"
    types.write_text("""
plant_work_permit:
  title: Hot-work permits
  title_zh: 动火作业票
  label: place
  fields:
    place: {type: text, required: true}
    gas_channel: {type: channel, required: true}
    expires: {type: date, due: true}
""")
    d = Daemon(
        gateway_yaml(host, port, tmp_path, extra=f'registers: {{types_file: "{types}", max_attachment: 2KB}}')
    ).start()
    op = httpx.Client(base_url=d.url, headers=auth(tokens["operator"]), timeout=10)
    try:
        # the plant's own type works like a built-in one, channel references checked
        assert any(t["type"] == "plant_work_permit" for t in op.get("/registers").json())
        bad = op.post("/registers/plant_work_permit", json={"place": "tank 3", "gas_channel": "GT-404"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "gas_channel"]
        ok = op.post("/registers/plant_work_permit", json={"place": "tank 3", "gas_channel": "GT-1"})
        assert ok.status_code == 201

        csv_text = (
            "name,category,location,keeper,quantity,next_check\n"
            "SCBA set,equipment,gate house,li,6,2026-12-01\n"
            "sand,supplies,yard,wang,2.5,\n"
        )
        r = op.post(
            "/registers/emergency_resource/import",
            content=csv_text.encode(),
            headers={"Content-Type": "text/csv"},
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"created": 2, "updated": 0, "unchanged": 0}
        listing = op.get("/registers/emergency_resource?category=equipment").json()
        assert listing["total"] == 1 and listing["items"][0]["data"]["quantity"] == 6
        exp = op.get("/registers/emergency_resource/export?format=csv")
        assert exp.headers["content-type"].startswith("text/csv")
        assert "SCBA set,equipment" in exp.text and exp.text.startswith("id,state,archived,version,name")
        js = op.get("/registers/emergency_resource/export?format=json").json()
        assert [x["name"] for x in js["records"]] == ["SCBA set", "sand"]
        bad = op.post(
            "/registers/emergency_resource/import?format=csv", content=b"name,category\nfoam,liquid\n"
        )
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["row", 2, "category"]

        rid = listing["items"][0]["id"]
        png = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
        r = op.post(f"/registers/emergency_resource/{rid}/attachments?filename=scba.png", content=png)
        assert r.status_code == 201 and r.json()["mime"] == "image/png"
        got = op.get(f"/registers/emergency_resource/{rid}/attachments/{r.json()['id']}")
        assert got.content == png and got.headers["content-type"] == "image/png"
        too_big = op.post(
            f"/registers/emergency_resource/{rid}/attachments?filename=x.pdf", content=b"%PDF-" + b"x" * 3000
        )
        assert too_big.status_code in (413, 422) and "limit" in too_big.text
        fake = op.post(
            f"/registers/emergency_resource/{rid}/attachments?filename=x.pdf", content=b"GIF89a...."
        )
        assert fake.status_code == 422
        assert [
            a["filename"] for a in op.get(f"/registers/emergency_resource/{rid}").json()["attachments"]
        ] == ["scba.png"]

        actions = [(e["register"], e["action"]) for e in d.events("register")]
        assert actions == [
            ("plant_work_permit", "create"),
            ("emergency_resource", "import"),
            ("emergency_resource", "import"),
            ("emergency_resource", "attach"),
        ]
        att_ev = d.events("register")[-1]
        assert att_ev["attachment"]["sha256"] and "content" not in att_ev["attachment"]
    finally:
        op.close()
        d.stop()
