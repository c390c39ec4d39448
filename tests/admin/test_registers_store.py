"""The register store on its own: schemas, validation, workflow, history, reminders on a
frozen date, import/export, attachments, and plant-defined types."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from gateway.admin.registers import (
    BUILTIN_TYPES,
    Conflict,
    Invalid,
    NotFound,
    RegisterStore,
    SchemaError,
    load_schemas,
    sniff,
)

GUIDELINE_TYPES = {
    "principal_person",
    "safety_manager",
    "qualification_training",
    "special_worker",
    "special_equipment",
    "major_hazard_source",
    "fire_equipment",
    "hidden_danger",
    "training_plan",
    "training_material",
    "training_exam",
    "emergency_plan",
    "duty_roster",
    "incident_log",
    "emergency_resource",
    "drill",
    "health_record",
    "hazard_measurement",
    "ppe",
    "standardisation",
}


class Clock:
    """A frozen, settable plant-local clock (ns)."""

    def __init__(self, day: dt.date):
        self.set(day)

    def set(self, day: dt.date, hour: int = 9) -> None:
        self.ns = int(dt.datetime(day.year, day.month, day.day, hour).timestamp() * 1e9)

    def __call__(self) -> int:
        return self.ns


@pytest.fixture
def clock() -> Clock:
    return Clock(dt.date(2026, 3, 1))


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Any:
    s = RegisterStore(
        tmp_path / "registers.db", channels=["GT-1", "LT-1"], clock=clock, remind_days=[30, 7, 1]
    )
    yield s
    s.close()


def hd(**kw: Any) -> dict[str, Any]:
    return {"title": "valve leaks", "grade": "major", "found_on": "2026-02-27", "found_by": "li", **kw}


def test_every_guideline_register_is_declared() -> None:
    types = load_schemas()
    assert GUIDELINE_TYPES <= set(types)
    sw = types["special_worker"].fields
    assert {"cert_no", "cert_type", "issued_on", "expiry"} <= set(sw) and sw["expiry"].due
    assert types["special_equipment"].fields["next_inspection"].due
    assert types["fire_equipment"].fields["next_inspection"].due
    mhs = types["major_hazard_source"].fields
    assert mhs["grade"].values == ["一级", "二级", "三级", "四级"]
    assert set(mhs["chemicals"].columns or {}) >= {"name", "quantity_t", "critical_t"}
    assert mhs["channels"].type == "channels" and mhs["filing_status"].required
    wf = types["hidden_danger"].workflow
    assert wf is not None and wf.states == ["reported", "assigned", "rectified", "closed"]
    assert set(wf.transitions["assign"].requires) == {"responsible", "deadline", "measures"}
    assert {"funds", "measures", "deadline"} <= set(types["hidden_danger"].fields)


def test_database_file_is_private(store: Any, tmp_path: Path) -> None:
    assert stat.S_IMODE(os.stat(tmp_path / "registers.db").st_mode) == 0o600


def test_validation_names_every_bad_field(store: Any) -> None:
    with pytest.raises(Invalid) as e:
        store.create(
            "major_hazard_source",
            {
                "code": "HS-1",
                "name": "tanks",
                "grade": "五级",
                "filing_status": "filed",
                "location": 12,
                "chemicals": [{"name": "benzene", "quantity_t": -1}, "row"],
                "channels": ["GT-1", "NOPE"],
                "colour": "red",
            },
            "op",
        )
    errs = {".".join(map(str, loc)): msg for loc, msg in e.value.errors}
    assert "一级" in errs["body.grade"]
    assert errs["body.location"].startswith("expected text")
    assert errs["body.chemicals.0.quantity_t"] == "must be >= 0"
    assert errs["body.chemicals.0.critical_t"] == "required"
    assert "expected an object" in errs["body.chemicals.1"]
    assert "NOPE" in errs["body.channels.1"]
    assert "unknown field" in errs["body.colour"]
    assert "body.grade" in errs and "required" not in errs["body.grade"]


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("found_on", "2026-02-30", "YYYY-MM-DD"),
        ("found_on", "1.3.2026", "YYYY-MM-DD"),
        ("funds", float("nan"), "finite"),
        ("funds", -5, ">= 0"),
        ("funds", True, "finite number"),
        ("reported_to_regulator", "yes", "true or false"),
        ("hazard_source", 42, "no major_hazard_source record with id 42"),
        ("hazard_source", "1", "integer"),
        ("title", "x" * 5000, "longer than"),
    ],
)
def test_field_types(store: Any, field: str, value: Any, needle: str) -> None:
    with pytest.raises(Invalid) as e:
        store.create("hidden_danger", hd(**{field: value}), "op")
    assert e.value.errors[0][0] == ("body", field)
    assert needle in e.value.errors[0][1]


def test_hidden_danger_workflow_history_and_overdue(store: Any, clock: Clock) -> None:
    doc, evs = store.create("hidden_danger", hd(), "li")
    rid = doc["id"]
    assert doc["state"] == "reported" and evs[0]["type"] == "register" and evs[0]["action"] == "create"
    with pytest.raises(Conflict, match="cannot verify"):
        store.transition("hidden_danger", rid, "verify", {}, "boss")
    with pytest.raises(Invalid) as e:
        store.transition("hidden_danger", rid, "assign", {"responsible": "wang"}, "boss")
    assert {loc[-1] for loc, _ in e.value.errors} == {"deadline", "measures"}
    doc, evs = store.transition(
        "hidden_danger",
        rid,
        "assign",
        {"responsible": "wang", "deadline": "2026-03-10", "measures": "replace gasket", "funds": 1200},
        "boss",
        comment="urgent",
    )
    assert doc["state"] == "assigned" and evs[0]["from_state"] == "reported"
    assert evs[0]["action"] == "transition:assign" and evs[0]["state"] == "assigned"
    assert not doc["overdue"]
    clock.set(dt.date(2026, 3, 11))
    assert store.get("hidden_danger", rid)["overdue"]
    assert store.query("hidden_danger", overdue=True)["total"] == 1
    store.transition(
        "hidden_danger", rid, "rectify", {"rectified_on": "2026-03-11", "rectification": "done"}, "wang"
    )
    doc, _ = store.transition("hidden_danger", rid, "reject", None, "safety")
    assert doc["state"] == "assigned"
    store.transition("hidden_danger", rid, "rectify", {"rectification": "done properly"}, "wang")
    doc, _ = store.transition(
        "hidden_danger", rid, "verify", {"verified_by": "zhao", "verified_on": "2026-03-12"}, "zhao"
    )
    assert doc["state"] == "closed" and not doc["overdue"] and doc["due"] == []
    hist = store.history("hidden_danger", rid)
    assert [h["action"] for h in hist] == [
        "create",
        "transition:assign",
        "transition:rectify",
        "transition:reject",
        "transition:rectify",
        "transition:verify",
    ]
    assert hist[1]["actor"] == "boss" and hist[1]["comment"] == "urgent"
    assert hist[1]["before"]["state"] == "reported" and hist[1]["after"]["state"] == "assigned"
    assert hist[1]["after"]["data"]["funds"] == 1200 and "funds" not in hist[1]["before"]["data"]
    assert [h["version"] for h in hist] == [1, 2, 3, 4, 5, 6]


def test_never_deleted_only_archived(store: Any) -> None:
    doc, _ = store.create(
        "fire_equipment",
        {"name": "FE-1", "kind": "extinguisher", "location": "hall", "next_inspection": "2026-06-01"},
        "op",
    )
    doc, evs = store.archive("fire_equipment", doc["id"], "op", comment="scrapped")
    assert doc["archived"] and evs[0]["action"] == "archive"
    assert store.query("fire_equipment")["total"] == 0
    assert store.query("fire_equipment", archived="all")["total"] == 1
    with pytest.raises(Conflict, match="archived"):
        store.update("fire_equipment", doc["id"], {"location": "yard"}, "op")
    with pytest.raises(Conflict):
        store.archive("fire_equipment", doc["id"], "op")
    doc, _ = store.archive("fire_equipment", doc["id"], "op", archived=False)
    assert not doc["archived"]
    assert [h["action"] for h in store.history("fire_equipment", doc["id"])] == [
        "create",
        "archive",
        "restore",
    ]


def test_update_null_clears_and_version_conflict(store: Any) -> None:
    doc, _ = store.create("hidden_danger", hd(location="tank 3"), "op")
    doc, evs = store.update(
        "hidden_danger", doc["id"], {"location": None, "category": "leak"}, "op", version=1
    )
    assert "location" not in doc["data"] and doc["data"]["category"] == "leak"
    assert evs[0]["changed"] == ["category", "location"]
    with pytest.raises(Conflict, match="version 2"):
        store.update("hidden_danger", doc["id"], {"category": "x"}, "other", version=1)
    with pytest.raises(Invalid):
        store.update("hidden_danger", doc["id"], {"title": None}, "op")  # required
    with pytest.raises(NotFound):
        store.update("hidden_danger", 999, {"category": "x"}, "op")
    with pytest.raises(NotFound, match="known"):
        store.query("nope")


def test_filters_search_sort_paging(store: Any) -> None:
    for i in range(25):
        store.create(
            "special_worker",
            {
                "name": f"worker {i:02d}",
                "operation_type": "电工作业" if i % 2 else "焊接",
                "cert_no": f"C{i}",
                "expiry": f"2027-01-{i + 1:02d}",
            },
            "op",
        )
    assert store.query("special_worker", filters={"operation_type": "电工作业"})["total"] == 12
    page = store.query("special_worker", sort="expiry", desc=True, limit=10, offset=10)
    assert page["total"] == 25 and [d["data"]["cert_no"] for d in page["items"]][:2] == ["C14", "C13"]
    assert store.query("special_worker", q="worker 07")["total"] == 1
    assert store.query("special_worker", q="焊接")["total"] == 13
    with pytest.raises(Invalid, match="unknown filter"):
        store.query("special_worker", filters={"colour": "x"})


def test_reminders_fire_once_per_threshold_on_frozen_dates(store: Any, clock: Clock) -> None:
    store.create(
        "special_worker",
        {"name": "Zhang", "operation_type": "电工作业", "cert_no": "T1", "expiry": "2026-04-15"},
        "op",
    )
    store.create(
        "special_equipment",
        {"name": "boiler 1", "category": "boiler", "registration_no": "R1", "next_inspection": "2026-03-05"},
        "op",
    )
    closed, _ = store.create("hidden_danger", hd(), "op")
    store.transition(
        "hidden_danger",
        closed["id"],
        "assign",
        {"responsible": "w", "deadline": "2026-03-02", "measures": "m"},
        "op",
    )
    arch, _ = store.create(
        "fire_equipment",
        {"name": "FE", "kind": "hydrant", "location": "x", "next_inspection": "2026-03-03"},
        "op",
    )
    store.archive("fire_equipment", arch["id"], "op")

    def fire() -> list[tuple[str, str, int | None, bool]]:
        return sorted(
            (e["register"], e["due"], e["threshold"], e["overdue"]) for e in store.check_reminders()
        )

    # 2026-03-01: boiler in 4 days (7-day band), deadline tomorrow (1-day band), cert in 45 days (none)
    assert fire() == [
        ("hidden_danger", "2026-03-02", 1, False),
        ("special_equipment", "2026-03-05", 7, False),
    ]
    assert fire() == []  # every tick after: nothing new
    clock.set(dt.date(2026, 3, 1), hour=23)
    assert fire() == []
    clock.set(dt.date(2026, 3, 3))
    assert fire() == [("hidden_danger", "2026-03-02", None, True)]
    clock.set(dt.date(2026, 3, 4))
    assert fire() == [("special_equipment", "2026-03-05", 1, False)]
    clock.set(dt.date(2026, 3, 16))  # 30 days before the certificate; boiler overdue
    assert fire() == [
        ("special_equipment", "2026-03-05", None, True),
        ("special_worker", "2026-04-15", 30, False),
    ]
    # a gateway that was off jumps straight to the tightest band reached, once
    clock.set(dt.date(2026, 4, 14))
    assert fire() == [("special_worker", "2026-04-15", 1, False)]
    clock.set(dt.date(2026, 4, 20))
    assert fire() == [("special_worker", "2026-04-15", None, True)]
    assert fire() == []
    # a renewed certificate re-arms its reminders
    rid = store.query("special_worker")["items"][0]["id"]
    store.update("special_worker", rid, {"expiry": "2026-05-01"}, "op")
    evs = store.check_reminders()
    assert (
        len(evs) == 1
        and evs[0]["due"] == "2026-05-01"
        and evs[0]["days_left"] == 11
        and evs[0]["threshold"] == 30
    )
    assert evs[0]["type"] == "reminder" and evs[0]["label"] == "Zhang" and evs[0]["field"] == "expiry"
    # closed hidden dangers and archived records never remind
    store.transition(
        "hidden_danger", closed["id"], "rectify", {"rectified_on": "2026-03-05", "rectification": "ok"}, "op"
    )
    store.transition(
        "hidden_danger", closed["id"], "verify", {"verified_by": "z", "verified_on": "2026-03-06"}, "op"
    )
    assert all(e["register"] not in ("hidden_danger", "fire_equipment") for e in store.check_reminders())


def test_reminders_survive_a_restart(tmp_path: Path, clock: Clock) -> None:
    s = RegisterStore(tmp_path / "r.db", clock=clock, remind_days=30)
    s.create(
        "ppe",
        {
            "item": "SCBA",
            "kind": "special",
            "person": "li",
            "issued_on": "2025-03-01",
            "replace_by": "2026-03-20",
        },
        "op",
    )
    assert len(s.check_reminders()) == 1
    s.close()
    s = RegisterStore(tmp_path / "r.db", clock=clock, remind_days=30)
    assert s.check_reminders() == []
    s.close()


def test_due_list_across_registers(store: Any) -> None:
    store.create(
        "special_worker", {"name": "A", "operation_type": "x", "cert_no": "1", "expiry": "2026-03-10"}, "o"
    )
    store.create(
        "emergency_plan",
        {
            "title": "fire",
            "kind": "specific",
            "revision": "v3",
            "filing_status": "filed",
            "next_review": "2026-02-20",
        },
        "o",
    )
    store.create(
        "special_worker", {"name": "B", "operation_type": "x", "cert_no": "2", "expiry": "2027-03-10"}, "o"
    )
    due = store.due(30)
    assert [(d["type"], d["days_left"]) for d in due] == [("emergency_plan", -9), ("special_worker", 9)]


def test_csv_and_json_export_import_round_trip(store: Any, tmp_path: Path) -> None:
    store.create(
        "major_hazard_source",
        {
            "code": "HS-01",
            "name": "罐区",
            "grade": "二级",
            "filing_status": "filed",
            "chemicals": [
                {"name": "苯", "quantity_t": 30, "critical_t": 50},
                {"name": "甲苯", "quantity_t": 200, "critical_t": 500},
            ],
            "channels": ["GT-1"],
            "next_assessment": "2027-01-01",
        },
        "op",
    )
    doc = store.query("major_hazard_source")["items"][0]
    assert doc["q_over_q"] == pytest.approx(30 / 50 + 200 / 500)
    csv_text = store.export("major_hazard_source", "csv")
    assert csv_text.splitlines()[0].startswith("id,state,archived,version,code,name,grade")
    js = store.export("major_hazard_source", "json")
    other = RegisterStore(tmp_path / "other.db", channels=["GT-1"])
    res, evs = other.import_(
        "major_hazard_source", csv_text.replace("1,,false,1,", ",,false,1,", 1), "csv", "imp"
    )
    assert res == {"created": 1, "updated": 0, "unchanged": 0} and evs[0]["action"] == "import"
    got = other.query("major_hazard_source")["items"][0]["data"]
    assert got == doc["data"]
    # JSON import with ids updates; unchanged rows are not new versions
    res, _ = store.import_("major_hazard_source", js, "json", "imp")
    assert res == {"created": 0, "updated": 0, "unchanged": 1}
    recs = json.loads(js)["records"]
    recs[0]["grade"] = "一级"
    res, evs = store.import_("major_hazard_source", json.dumps(recs), "json", "imp")
    assert res["updated"] == 1 and evs[0]["changed"] == ["grade"]
    # all or nothing, errors name the row and field
    bad = "code,name,grade,filing_status\nHS-9,ok,三级,filed\nHS-10,bad,九级,filed\n"
    with pytest.raises(Invalid) as e:
        store.import_("major_hazard_source", bad, "csv", "imp")
    assert e.value.errors[0][0] == ("row", 3, "grade")
    assert store.query("major_hazard_source")["total"] == 1
    other.close()


def test_attachments_checked_by_content_and_size(store: Any, tmp_path: Path) -> None:
    doc, _ = store.create(
        "emergency_plan",
        {"title": "fire", "kind": "specific", "revision": "v1", "filing_status": "filed"},
        "op",
    )
    pdf = b"%PDF-1.7\n" + os.urandom(1000)
    att, evs = store.attach("emergency_plan", doc["id"], "../../etc/plan.pdf", pdf, "op")
    assert att["mime"] == "application/pdf" and att["filename"] == "plan.pdf" and evs[0]["action"] == "attach"
    meta, path = store.attachment("emergency_plan", doc["id"], att["id"])
    assert path.read_bytes() == pdf and meta["size"] == len(pdf)
    with pytest.raises(Invalid, match="PDF, PNG or JPEG"):
        store.attach("emergency_plan", doc["id"], "evil.pdf", b"<html><script>", "op")
    store.max_attachment = 500
    with pytest.raises(Invalid, match="limit"):
        store.attach("emergency_plan", doc["id"], "big.pdf", pdf, "op")
    assert sniff(b"\xff\xd8\xff\xe0JFIF") == "image/jpeg"
    assert sniff(b"\x89PNG\r\n\x1a\n....") == "image/png"
    store.detach("emergency_plan", doc["id"], att["id"], "op")
    assert store.attachments("emergency_plan", doc["id"]) == []


def test_plant_adds_its_own_type_and_fields_by_config(tmp_path: Path) -> None:
    extra = tmp_path / "types.yaml"
    extra.write_text("""
tank_entry_permit:
  title: Confined-space entry permits
  title_zh: 有限空间作业票
  label: space
  fields:
    space: {type: text, required: true}
    gas_channel: {type: channel}
    valid_until: {type: date, due: true}
  workflow:
    states: [requested, approved, closed]
    initial: requested
    final: [closed]
    transitions:
      approve: {from: [requested], to: approved, requires: [gas_channel]}
      close: {from: [approved], to: closed}
special_worker:
  fields:
    badge: {type: text}
""")
    types = load_schemas(extra)
    assert "badge" in types["special_worker"].fields
    s = RegisterStore(tmp_path / "r.db", schemas=types, channels=["GT-1"])
    doc, _ = s.create("tank_entry_permit", {"space": "tank 3", "valid_until": "2030-01-01"}, "op")
    with pytest.raises(Invalid):
        s.transition("tank_entry_permit", doc["id"], "approve", {}, "op")
    doc, _ = s.transition("tank_entry_permit", doc["id"], "approve", {"gas_channel": "GT-1"}, "op")
    assert doc["state"] == "approved"
    s.close()


@pytest.mark.parametrize(
    "text,needle",
    [
        ("x:\n  title: X\n  fields: {a: {type: colour}}\n", "x.fields.a.type"),
        ("x:\n  title: X\n  fields: {a: {type: ref, to: nowhere}}\n", "unknown register 'nowhere'"),
        ("x:\n  title: X\n  fields: {a: {type: text, due: true}}\n", "only a date"),
        ("x:\n  title: X\n  fields: {id: {type: text}}\n", "x.fields.id"),
        (
            "x:\n  title: X\n  fields: {a: {type: date}}\n"
            "  workflow: {states: [a], initial: b, transitions: {}}\n",
            "workflow.initial",
        ),
        ("special_worker:\n  fields: {expiry: {type: date}}\n", "already defined"),
        ("Bad-Name:\n  title: X\n  fields: {a: {type: text}}\n", "lower-case"),
        ("x:\n  title: X\n  fields: {a: {type: text, words: ppe.kind}}\n", "enum fields only"),
        ("x:\n  title: X\n  fields: {a: {type: enum, values: [v], words: \"PPE kind\"}}\n",
         "x.fields.a.words"),
    ],
)
def test_bad_type_files_are_explained(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "t.yaml"
    f.write_text(text)
    with pytest.raises(SchemaError) as e:
        load_schemas(f)
    assert needle in str(e.value) and str(f) in str(e.value)


def test_each_enum_field_says_where_its_words_are(tmp_path: Path) -> None:
    """``words``: the field's own (type.field, type.field.column), or a built-in field's
    that a plant's field names to borrow its words."""
    f = tmp_path / "t.yaml"
    f.write_text("welding_log:\n  title: Welding log\n  fields:\n"
                 "    level: {type: enum, values: [special, first], words: hot_work_permit.level}\n"
                 "    result: {type: enum, values: [passed, failed]}\n"
                 "    checks: {type: table, columns: {kind: {type: enum, values: [a, b]}}}\n")
    types = load_schemas(f)
    w = types["welding_log"].fields
    assert w["level"].words == "hot_work_permit.level" and w["result"].words == "welding_log.result"
    assert (w["checks"].columns or {})["kind"].words == "welding_log.checks.kind"
    assert types["ppe"].fields["kind"].words == "ppe.kind"
    assert types["ppe"].fields["item"].words is None  # not an enum
    role = (types["lifting_permit"].fields["signatures"].columns or {})["role"]
    assert role.words == "lifting_permit.signatures.role"


def test_builtin_file_is_the_one_place() -> None:
    assert BUILTIN_TYPES.name == "register_types.yaml" and BUILTIN_TYPES.exists()
