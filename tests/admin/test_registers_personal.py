"""Personal data in the registers (ID card and phone numbers, fields marked ``personal``):
kept whole in registers.db and the admin API, never written to InfluxDB, and masked or
left out of the journal events the uplink carries when ``registers.personal_upstream``
says so."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.admin.registers import RegisterStore, load_schemas, mask, redact
from gateway.config import loads
from gateway.core.config import InfluxSection
from gateway.core.configcheck import ConfigError
from gateway.historian.writer import InfluxWriter
from tests.fixtures.daemon import SIM_PLANT, Daemon, auth, gateway_yaml, make_tokens
from tests.fixtures.helpers import wait_until
from tests.fixtures.influxd import Influxd, unique_db

ID = "110101199003071234"
PHONE = "13800138000"
ID2 = "110101199507150021"
WORKER = {"name": "Zhang San", "id_number": ID, "operation_type": "电工作业",
          "cert_no": "T-1", "expiry": "2026-03-20"}


def test_mask_keeps_only_the_tail() -> None:
    assert mask(ID) == "*" * 14 + "1234"
    assert mask(PHONE) == "********000"  # short values keep a third at most
    assert mask("12") == "**"
    assert mask(42) == "**"


def test_builtin_types_mark_id_and_phone_numbers() -> None:
    types = load_schemas()
    assert types["special_worker"].personal_fields() == ["id_number"]
    for name in ("principal_person", "safety_manager", "duty_roster", "emergency_resource"):
        assert "phone" in types[name].personal_fields(), name
    assert types["hidden_danger"].personal_fields() == []


def test_redact_top_level_and_table_columns() -> None:
    data: dict[str, Any] = {"name": "Li", "phone": PHONE,
                            "rows": [{"who": "a", "tel": "13900139000"}, {"who": "b"}]}
    paths = ["phone", "rows.tel", "absent"]
    assert redact(data, paths, "full") is data
    assert redact(data, paths, "omitted") == {"name": "Li", "rows": [{"who": "a"}, {"who": "b"}]}
    assert redact(data, paths, "masked") == {"name": "Li", "phone": "********000",
                                             "rows": [{"who": "a", "tel": "********000"}, {"who": "b"}]}
    assert data["phone"] == PHONE and data["rows"][0]["tel"] == "13900139000"  # not changed in place


@pytest.mark.parametrize("mode, want", [("full", ID), ("masked", "*" * 14 + "1234"), ("omitted", None)])
def test_journal_event_follows_the_mode_and_the_store_keeps_it_whole(tmp_path: Path, mode: str,
                                                                      want: str | None) -> None:
    day = int(dt.datetime(2026, 3, 1, 9).timestamp() * 1e9)
    s = RegisterStore(tmp_path / "registers.db", clock=lambda: day,
                      personal_upstream=mode)  # type: ignore[arg-type]
    try:
        doc, (ev,) = s.create("special_worker", WORKER, "wang")
        assert ev["data"].get("id_number") == want
        assert ("id_number" in ev["data"]) == (want is not None)
        assert ev["data"]["name"] == "Zhang San" and ev["data"]["cert_no"] == "T-1"
        assert ev["personal"] == ["id_number"]
        assert "id_number" in ev["changed"]  # the field's name, not its value
        # the plant's own copy: whole, in the record and its history
        assert s.get("special_worker", doc["id"])["data"]["id_number"] == ID
        hist = s.history("special_worker", doc["id"])
        assert ID in json.dumps(hist, ensure_ascii=False)
        _, evs = s.update("special_worker", doc["id"], {"id_number": ID2}, "wang")
        assert evs[-1]["changed"] == ["id_number"]
        assert evs[-1]["data"].get("id_number") == {"full": ID2, "masked": "*" * 14 + "0021",
                                                    "omitted": None}[mode]
    finally:
        s.close()


def test_a_plants_own_type_can_mark_personal_fields_in_tables(tmp_path: Path) -> None:
    f = tmp_path / "types.yaml"
    f.write_text("""
visitor_log:
  title: Visitors
  label: day
  fields:
    day: {type: date, required: true}
    visitors:
      type: table
      columns:
        name: {type: text}
        id_number: {type: text, personal: true}
""")
    types = load_schemas(f)
    assert types["visitor_log"].personal_fields() == ["visitors.id_number"]
    s = RegisterStore(tmp_path / "registers.db", schemas=types, personal_upstream="masked")
    try:
        visitors = [{"name": "Zhao", "id_number": ID}]
        _, (ev,) = s.create("visitor_log", {"day": "2026-03-01", "visitors": visitors}, "wang")
        assert ev["data"]["visitors"] == [{"name": "Zhao", "id_number": "*" * 14 + "1234"}]
    finally:
        s.close()


def test_a_wrong_mode_is_refused_where_it_is_written(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        loads(f"""
gateway: {{id: gw, site: S, state_dir: "{tmp_path}"}}
registers: {{personal_upstream: partly}}
""")
    assert "registers.personal_upstream" in str(e.value)
    assert "full" in str(e.value) and "masked" in str(e.value)


@pytest.mark.timeout(120)
def test_daemon_masks_upstream_and_keeps_influxdb_clean(tmp_path: Path, sim_factory: Any,
                                                        influxd: Influxd) -> None:
    """As a plant runs it: the admin API takes a special worker's ID card number and a
    safety manager's phone number; the API gives them back whole, the journal (what the
    uplink carries) has them masked, and the points in InfluxDB have neither."""
    sim = sim_factory(SIM_PLANT)
    host, port = sim.tcp("plc")
    tokens = make_tokens(tmp_path)
    db = unique_db()
    extra = f"""registers: {{personal_upstream: masked}}
influxdb: {{url: "{influxd.url}", database: {db}, flush_every: 100ms}}"""
    d = Daemon(gateway_yaml(host, port, tmp_path, extra=extra)).start()
    http = httpx.Client(base_url=d.url, headers=auth(tokens["operator"]), timeout=10)
    try:
        r = http.post("/registers/special_worker", json=WORKER)
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        assert http.get(f"/registers/special_worker/{rid}").json()["data"]["id_number"] == ID
        r = http.post("/registers/safety_manager", json={"name": "Li Si", "phone": PHONE})
        assert r.status_code == 201, r.text
        worker, manager = d.events("register")
        assert worker["data"]["id_number"] == "*" * 14 + "1234" and manager["data"]["phone"] == "********000"

        def points() -> list[dict[str, Any]]:
            try:
                got = [p for p in influxd.rows("SELECT * FROM events", db) if p.get("type") == "register"]
            except RuntimeError as e:  # until the historian has made its database
                assert "database not found" in str(e)
                return []
            return got if len(got) == 2 else []

        pts = wait_until(points, 30, what="the register events in InfluxDB")
        data = [json.loads(p["data"]) for p in pts]
        assert data[0]["name"] == "Zhang San" and data[0]["cert_no"] == "T-1" and data[1]["name"] == "Li Si"
        assert "id_number" not in data[0] and "phone" not in data[1]
        assert all("personal" not in p for p in pts)
        text = json.dumps(pts, ensure_ascii=False)
        for v in (ID, PHONE, mask(ID), mask(PHONE)):  # not even the masked forms
            assert v not in text, v
    finally:
        http.close()
        d.stop()


def test_historian_drops_personal_paths_and_ignores_junk_in_the_list() -> None:
    """An event from elsewhere (central writes the gateways' events through the same
    writer) may carry a bad ``personal`` list: the good paths still go, nothing breaks."""
    w = InfluxWriter(InfluxSection(), tags_for_channel=lambda i: {"channel": str(i)})
    ev = {"type": "register", "ts": 1, "register": "safety_manager", "id": 3,
          "data": {"name": "Li Si", "phone": PHONE, "t": [{"tel": PHONE, "x": 1}]},
          "personal": ["phone", 7, None, "t.tel"]}
    line = w.format_event(ev).decode()
    assert "Li Si" in line and '\\"x\\":1' in line
    assert PHONE not in line and "personal" not in line
