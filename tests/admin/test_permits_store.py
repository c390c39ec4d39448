"""The permit workflow in the register store (gateway/admin/registers/permits.py) with a
clock the test moves: each step audited, only the allowed steps per state, signatures, the
refusal recorded with its readings, an alarm's flag, the timing reminders once each; and the
three registers that were missing (safety investment, accident investigation, equipment
inspection). The API and the daemon: test_permits_daemon.py."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.admin.permits.analysis import Snapshot, analyse
from gateway.admin.registers import Conflict, Invalid, Refused, RegisterStore
from gateway.core.batch import Quality

T0 = int(dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC).timestamp()) * 10**9
MIN = 60 * 10**9


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat()


def reading(clock: Clock, value: float, quality: int = Quality.GOOD) -> dict[str, Any]:
    snaps = [Snapshot("GT-1", "gas", "%LEL", None, "R-101", value, quality, clock.now - 10**9)]
    return analyse(snaps, clock.now, stale_after_s=30.0, step="test", medium="methane")


def sign(*roles: str) -> list[dict[str, str]]:
    return [{"role": r, "name": f"{r}-person", "signed_at": "2026-12-07T07:50:00+00:00"} for r in roles]


HOT = {
    "permit_no": "DH-2026-0001",
    "applicant_unit": "maintenance",
    "location": "R-101 manway",
    "content": "weld a nozzle",
    "work_leader": "Wang",
    "area": "R-101",
    "level": "first",
    "medium": "methane",
    "valid_from": "2026-12-07T08:00:00+00:00",
    "valid_to": "2026-12-07T16:00:00+00:00",
}


@pytest.fixture
def store(tmp_path: Path) -> Any:
    clock = Clock()
    s = RegisterStore(tmp_path / "r.db", channels=["GT-1", "GT-2"], clock=clock)
    s.test_clock = clock  # type: ignore[attr-defined]
    yield s
    s.close()


def test_hot_work_through_its_workflow_every_step_audited(store: Any) -> None:
    """GB 30871-2022 §5: apply → analysis → approve (signatures) → in progress → suspend →
    resume (re-analysis) → close (acceptance); each step is a change in the history."""
    clock = store.test_clock
    doc, _ = store.create("hot_work_permit", HOT, "applicant")
    rid = doc["id"]
    assert doc["state"] == "applied"
    with pytest.raises(Conflict, match="approve applies in"):
        store.transition("hot_work_permit", rid, "approve", {}, "boss", analysis=reading(clock, 2.0))
    doc, _ = store.transition("hot_work_permit", rid, "analyse", {}, "analyst", analysis=reading(clock, 2.0))
    assert doc["state"] == "analysed" and doc["data"]["last_analysis_at"].startswith("2026-12-07T08:00")
    with pytest.raises(Invalid) as e:
        store.transition(
            "hot_work_permit",
            rid,
            "approve",
            {"signatures": sign("applicant")},
            "boss",
            analysis=reading(clock, 2.0),
        )
    assert "a work_leader signature is required to approve" in str(e.value)
    sigs = sign("applicant", "work_leader", "guardian", "analyst", "approver")
    doc, _ = store.transition(
        "hot_work_permit", rid, "approve", {"signatures": sigs}, "boss", analysis=reading(clock, 2.5)
    )
    assert doc["state"] == "approved"
    clock.now += 5 * MIN
    doc, _ = store.transition("hot_work_permit", rid, "start", {}, "leader", analysis=reading(clock, 2.0))
    assert doc["state"] == "in_progress" and doc["data"]["started_at"]
    with pytest.raises(Invalid, match="suspend_reason"):
        store.transition("hot_work_permit", rid, "suspend", {}, "leader")
    doc, _ = store.transition("hot_work_permit", rid, "suspend", {"suspend_reason": "lunch"}, "leader")
    assert doc["state"] == "suspended" and doc["data"]["suspended_at"]
    doc, _ = store.transition("hot_work_permit", rid, "resume", {}, "leader", analysis=reading(clock, 1.0))
    assert doc["state"] == "in_progress"
    with pytest.raises(Invalid, match="acceptor"):
        store.transition("hot_work_permit", rid, "close", {"completion": "done"}, "leader")
    doc, _ = store.transition(
        "hot_work_permit",
        rid,
        "close",
        {"completion": "done, site clear", "signatures": [*sigs, *sign("acceptor")]},
        "leader",
    )
    assert doc["state"] == "closed" and doc["due"] == []
    actions = [h["action"] for h in store.history("hot_work_permit", rid)]
    assert actions == [
        "create",
        "transition:analyse",
        "transition:approve",
        "transition:start",
        "transition:suspend",
        "transition:resume",
        "transition:close",
    ]
    # the analyses are in the permit: one row per reading per step
    steps = [r["step"] for r in doc["data"]["gas_analyses"]]
    assert steps == ["test"] * 4 and all(r["ok"] for r in doc["data"]["gas_analyses"])


def test_refused_step_is_recorded_with_its_readings(store: Any) -> None:
    """A failing reading refuses the step (409), and the refusal stays in the permit: its
    readings in gas_analyses and a ``refused:analyse`` change with the reason."""
    clock = store.test_clock
    doc, _ = store.create("hot_work_permit", HOT, "applicant")
    with pytest.raises(Refused) as e:
        store.transition(
            "hot_work_permit", doc["id"], "analyse", {}, "analyst", analysis=reading(clock, 14.0)
        )
    assert "GT-1 reads 14 %LEL" in str(e.value) and "10 %LEL" in str(e.value)
    assert e.value.events[0]["action"] == "refused:analyse"
    after = store.get("hot_work_permit", doc["id"])
    assert after["state"] == "applied" and "last_analysis_at" not in after["data"]
    row = after["data"]["gas_analyses"][0]
    assert (row["ok"], row["verdict"], row["value"], row["channel"]) == (False, "fail", 14.0, "GT-1")
    with pytest.raises(Refused, match="timeout"):
        store.transition(
            "hot_work_permit",
            doc["id"],
            "analyse",
            {},
            "analyst",
            analysis=reading(clock, 2.0, Quality.TIMEOUT),
        )
    hist = store.history("hot_work_permit", doc["id"])
    assert [h["action"] for h in hist] == ["create", "refused:analyse", "refused:analyse"]
    assert "GT-1 reads 14" in hist[1]["comment"]
    # a gas step without an analysis is refused outright (only the API can take one)
    with pytest.raises(Invalid, match="needs a gas analysis"):
        store.transition("hot_work_permit", doc["id"], "analyse", {}, "analyst")


def test_validity_checked_on_create_update_and_start(store: Any) -> None:
    """GB 30871-2022 §5: a first-level hot-work permit is valid for at most 8 h; work starts
    only within the validity."""
    clock = store.test_clock
    with pytest.raises(Invalid, match="at most 8 h"):
        store.create("hot_work_permit", {**HOT, "valid_to": "2026-12-07T17:00:00+00:00"}, "applicant")
    doc, _ = store.create("hot_work_permit", {**HOT, "valid_from": "2026-12-07T09:00:00+00:00"}, "applicant")
    with pytest.raises(Invalid, match="at most 8 h"):
        store.update("hot_work_permit", doc["id"], {"valid_to": "2026-12-08T09:00:00+00:00"}, "applicant")
    sigs = sign("applicant", "work_leader", "guardian", "analyst", "approver")
    store.transition("hot_work_permit", doc["id"], "analyse", {}, "a", analysis=reading(clock, 1.0))
    store.transition(
        "hot_work_permit", doc["id"], "approve", {"signatures": sigs}, "b", analysis=reading(clock, 1.0)
    )
    with pytest.raises(Invalid, match="valid from"):
        store.transition("hot_work_permit", doc["id"], "start", {}, "c", analysis=reading(clock, 1.0))
    clock.now += 61 * MIN
    doc, _ = store.transition("hot_work_permit", doc["id"], "start", {}, "c", analysis=reading(clock, 1.0))
    assert doc["state"] == "in_progress"


def _in_progress(store: Any, data: dict[str, Any] | None = None) -> int:
    clock = store.test_clock
    number = f"DH-IP-{len(store.query('hot_work_permit', archived='all')['items']) + 1}"
    doc, _ = store.create("hot_work_permit", {**HOT, "permit_no": number, **(data or {})}, "applicant")
    rid = doc["id"]
    store.transition("hot_work_permit", rid, "analyse", {}, "a", analysis=reading(clock, 1.0))
    store.transition(
        "hot_work_permit",
        rid,
        "approve",
        {"signatures": sign("applicant", "work_leader", "guardian", "analyst", "approver")},
        "b",
        analysis=reading(clock, 1.0),
    )
    store.transition("hot_work_permit", rid, "start", {}, "c", analysis=reading(clock, 1.0))
    return int(rid)


def test_alarm_flags_a_permit_in_progress_and_resume_needs_a_passing_analysis(store: Any) -> None:
    """While a permit is in progress, an alarm on one of its channels flags and suspends it;
    the flag is published like a reminder; resuming runs a new analysis, which must pass."""
    clock = store.test_clock
    rid = _in_progress(store, {"channels": ["GT-1"]})
    assert store.permits_in_progress() == [("hot_work_permit", rid, ["GT-1"], "R-101")]
    alarm = {
        "type": "alarm",
        "channel": "GT-1",
        "rule": "limit",
        "level": "h",
        "value": 27.0,
        "limit": 25.0,
        "unit": "%LEL",
        "transition": "raise",
        "ts": clock.now,
    }
    events = store.flag_alarm("hot_work_permit", rid, alarm)
    reg, notice = events
    assert reg["action"] == "flag" and reg["state"] == "suspended"
    assert notice["type"] == "reminder" and notice["rule"] == "permit_flagged" and notice["channel"] == "GT-1"
    assert "h alarm on GT-1 (27 %LEL)" in notice["reason"] and notice["location"] == "R-101 manway"
    doc = store.get("hot_work_permit", rid)
    assert doc["data"]["flagged"] is True and doc["state"] == "suspended"
    assert store.flag_alarm("hot_work_permit", rid, alarm) == []  # not in progress any more: once
    with pytest.raises(Refused):
        store.transition("hot_work_permit", rid, "resume", {}, "c", analysis=reading(clock, 27.0))
    assert store.get("hot_work_permit", rid)["state"] == "suspended"
    doc, _ = store.transition("hot_work_permit", rid, "resume", {}, "c", analysis=reading(clock, 1.0))
    assert doc["state"] == "in_progress" and doc["data"]["flagged"] is False
    # a failing periodic analysis during the work flags it too
    doc, events = store.record_analysis("hot_work_permit", rid, reading(clock, 11.0), "analyst")
    assert doc["state"] == "suspended" and events[1]["rule"] == "permit_flagged"
    actions = [h["action"] for h in store.history("hot_work_permit", rid)]
    assert actions[-4:] == ["flag", "refused:resume", "transition:resume", "flag"]


def test_timing_reminders_fire_once_each(store: Any) -> None:
    """GB 30871-2022: an approved permit whose analysis is older than 30 min, an interruption
    longer than the hot work's limit (first level: 30 min), the end of validity: one reminder
    each, at the moment the rule is reached, not before and not twice."""
    clock = store.test_clock
    doc, _ = store.create("hot_work_permit", {**HOT, "level": "first"}, "applicant")
    rid = doc["id"]
    store.transition("hot_work_permit", rid, "analyse", {}, "a", analysis=reading(clock, 1.0))
    store.transition(
        "hot_work_permit",
        rid,
        "approve",
        {"signatures": sign("applicant", "work_leader", "guardian", "analyst", "approver")},
        "b",
        analysis=reading(clock, 1.0),
    )
    clock.now += 30 * MIN
    assert store.check_permit_timing() == []
    clock.now += 1 * MIN
    (ev,) = store.check_permit_timing()
    assert ev["type"] == "reminder" and ev["rule"] == "analysis_stale" and "30 min" in ev["reason"]
    assert store.check_permit_timing() == []
    store.transition("hot_work_permit", rid, "start", {}, "c", analysis=reading(clock, 1.0))
    store.transition("hot_work_permit", rid, "suspend", {"suspend_reason": "rain"}, "c")
    clock.now += 31 * MIN
    (ev,) = store.check_permit_timing()
    assert ev["rule"] == "reanalysis_required"
    clock.now = int(dt.datetime(2026, 12, 7, 16, 0, 1, tzinfo=dt.UTC).timestamp()) * 10**9
    rules = sorted(e["rule"] for e in store.check_permit_timing())
    assert rules == ["validity_expired"]
    assert store.check_permit_timing() == []


def test_plain_kinds_have_no_analysis_step(store: Any) -> None:
    """Lifting (GB 30871-2022 §9): approve straight from applied, no gas analysis; its level
    must match its mass."""
    data = {
        **{k: v for k, v in HOT.items() if k not in ("level", "medium")},
        "permit_no": "DZ-1",
        "level": "second",
        "mass_t": 60,
    }
    doc, _ = store.create("lifting_permit", data, "applicant")
    assert store.spec("lifting_permit").workflow.transitions.get("analyse") is None
    doc, _ = store.transition(
        "lifting_permit",
        doc["id"],
        "approve",
        {"signatures": sign("applicant", "work_leader", "approver")},
        "b",
    )
    assert doc["state"] == "approved"
    with pytest.raises(Invalid, match="level first"):
        store.update("lifting_permit", doc["id"], {"mass_t": 120}, "b")


def test_the_missing_registers(store: Any) -> None:
    """Safety investment (财资〔2022〕136号 categories), accident investigation (casualties,
    losses, causes, corrective actions, workflow), general equipment inspection."""
    inv, _ = store.create(
        "safety_investment",
        {
            "year": 2026,
            "date": "2026-03-01",
            "entry": "expenditure",
            "category": "ppe",
            "amount": 12000,
            "description": "gas masks",
        },
        "op",
    )
    assert inv["label"] == "gas masks"
    with pytest.raises(Invalid, match="category"):
        store.create(
            "safety_investment",
            {
                "year": 2026,
                "date": "2026-03-01",
                "entry": "expenditure",
                "category": "parties",
                "amount": 1,
                "description": "x",
            },
            "op",
        )
    acc, _ = store.create(
        "accident_investigation",
        {
            "title": "scald at P-3",
            "occurred_at": "2026-11-02T10:00:00+08:00",
            "location": "pump house",
            "deaths": 0,
            "serious_injuries": 1,
            "direct_loss_cny": 85000.0,
            "corrective_actions": [
                {"action": "guard the hot line", "responsible": "Li", "deadline": "2026-12-01"}
            ],
            "actions_due": "2026-12-01",
        },
        "op",
    )
    assert acc["state"] == "investigating" and acc["grade_by_rule"] == "一般"
    with pytest.raises(Invalid, match="required to conclude"):
        store.transition("accident_investigation", acc["id"], "conclude", {}, "op")
    acc, _ = store.transition(
        "accident_investigation",
        acc["id"],
        "conclude",
        {
            "direct_causes": "missing guard",
            "responsibility": "maintenance",
            "report_no": "AI-7",
            "concluded_on": "2026-11-20",
        },
        "op",
    )
    assert acc["state"] == "concluded" and acc["overdue"] is True  # the actions were due 2026-12-01
    eq, _ = store.create(
        "equipment_inspection",
        {
            "equipment": "P-3",
            "category": "rotating",
            "inspection": "periodic",
            "inspected_on": "2026-12-01",
            "inspector": "Zhao",
            "result": "ok",
            "next_inspection": "2027-03-01",
            "channels": ["GT-2"],
        },
        "op",
    )
    assert eq["due"][0]["field"] == "next_inspection"


@pytest.mark.parametrize(
    ("deaths", "serious", "loss", "grade"),
    [
        (0, 0, 0.0, "一般"),
        (2, 9, 9_999_999.0, "一般"),
        (3, 0, 0.0, "较大"),
        (0, 10, 0.0, "较大"),
        (0, 0, 1e7, "较大"),
        (10, 0, 0.0, "重大"),
        (0, 50, 0.0, "重大"),
        (0, 0, 5e7, "重大"),
        (29, 99, 9.9e7, "重大"),
        (30, 0, 0.0, "特别重大"),
        (0, 100, 0.0, "特别重大"),
        (0, 0, 1e8, "特别重大"),
    ],
)
def test_accident_grade_by_the_regulation(deaths: int, serious: int, loss: float, grade: str) -> None:
    """《生产安全事故报告和调查处理条例》 第三条: the grade by deaths, serious injuries (incl.
    acute industrial poisoning) and direct loss, each band's lower bound included (第三条:
    "以上" includes the number itself, "以下" does not)."""
    from gateway.admin.registers import permits as rp

    assert (
        rp.accident_grade({"deaths": deaths, "serious_injuries": serious, "direct_loss_cny": loss}) == grade
    )


def test_clients_cannot_write_the_gateways_fields_nor_change_an_approved_permit(store: Any) -> None:
    """An analysis cannot be faked (gas_analyses, last_analysis_at, the flag are the gateway's),
    by create, update, a step's fields or an import; what was approved (area, validity, level,
    ...) is fixed once approved: a change needs a new permit."""
    clock = store.test_clock
    fake = {"last_analysis_at": "2026-12-07T08:00:00+00:00"}
    with pytest.raises(Invalid, match="written by the gateway"):
        store.create("hot_work_permit", {**HOT, **fake}, "applicant")
    doc, _ = store.create("hot_work_permit", HOT, "applicant")
    rid = doc["id"]
    with pytest.raises(Invalid, match="written by the gateway"):
        store.update("hot_work_permit", rid, {"flagged": False}, "applicant")
    with pytest.raises(Invalid, match="written by the gateway"):
        store.transition("hot_work_permit", rid, "analyse", fake, "a", analysis=reading(clock, 1.0))
    with pytest.raises(Invalid, match="written by the gateway"):
        store.import_(
            "hot_work_permit", json.dumps({"records": [{"id": rid, "gas_analyses": []}]}), "json", "op"
        )
    store.update("hot_work_permit", rid, {"area": "R-102"}, "applicant")  # still being prepared: fine
    rid = _in_progress(store)
    with pytest.raises(Invalid, match="fixed since the approval"):
        store.update("hot_work_permit", rid, {"area": "elsewhere"}, "leader")
    with pytest.raises(Invalid, match="fixed since the approval"):
        store.transition(
            "hot_work_permit",
            rid,
            "suspend",
            {"suspend_reason": "x", "valid_to": HOT["valid_to"][:-6] + "+01:00"},
            "leader",
        )
    doc, _ = store.update(
        "hot_work_permit", rid, {"hazards": "hot surfaces"}, "leader"
    )  # not what was approved
    assert doc["data"]["hazards"] == "hot surfaces"


def test_temporary_electricity_analyses_only_when_it_names_a_place(store: Any) -> None:
    """GB 30871-2022 §10: temporary electricity is approved with the electrician's signature;
    the gas steps analyse only a permit that names an area or channels."""
    clock = store.test_clock
    base = {
        **{k: v for k, v in HOT.items() if k not in ("level", "area", "medium")},
        "permit_no": "LS-1",
        "supply_point": "MCC-2 spare breaker",
        "electrician_cert": "T-99",
    }
    sigs = {"signatures": sign("applicant", "work_leader", "electrician", "approver")}
    doc, _ = store.create("temp_electricity_permit", base, "applicant")
    doc, _ = store.transition("temp_electricity_permit", doc["id"], "approve", sigs, "boss")
    assert doc["state"] == "approved" and "gas_analyses" not in doc["data"]
    doc, _ = store.create(
        "temp_electricity_permit",
        {**base, "permit_no": "LS-2", "area": "R-101", "medium": "methane"},
        "applicant",
    )
    with pytest.raises(Invalid, match="needs a gas analysis"):
        store.transition("temp_electricity_permit", doc["id"], "approve", sigs, "boss")
    with pytest.raises(Refused):
        store.transition(
            "temp_electricity_permit", doc["id"], "approve", sigs, "boss", analysis=reading(clock, 12.0)
        )


def test_many_analyses_keep_the_record_inside_one_journal_event(store: Any) -> None:
    """A long job analysed again and again: the record keeps the newest 200 rows and stays
    under the journal event bound (every analysis stays in the history)."""
    clock = store.test_clock
    rid = _in_progress(store)
    names = [f"GT-{'X' * 100}-{i}" for i in range(4)]  # long names: the largest rows
    for _ in range(70):
        snaps = [
            Snapshot(n, "gas", "%LEL", None, "R-101", 1.0, Quality.GOOD, clock.now - 10**9) for n in names
        ]
        doc, events = store.record_analysis(
            "hot_work_permit",
            rid,
            analyse(snaps, clock.now, stale_after_s=30.0, step="periodic", medium="methane"),
            "analyst",
        )
    assert len(doc["data"]["gas_analyses"]) == 200 and doc["state"] == "in_progress"
    assert len(json.dumps(events[0], ensure_ascii=False).encode()) < 256 * 1024
    assert len(store.history("hot_work_permit", rid)) == 4 + 70


def test_permit_numbers_are_unique_and_a_blinding_permit_covers_one_blind(store: Any) -> None:
    """A permit number names one permit (409 for a second one); GB 30871-2022 §7: one blinding
    permit for one action on one blind."""
    doc, _ = store.create("hot_work_permit", HOT, "applicant")
    with pytest.raises(Conflict, match="already record"):
        store.create("hot_work_permit", HOT, "applicant")
    other, _ = store.create("hot_work_permit", {**HOT, "permit_no": "DH-2026-0002"}, "applicant")
    with pytest.raises(Conflict, match="already record"):
        store.update("hot_work_permit", other["id"], {"permit_no": HOT["permit_no"]}, "applicant")
    with pytest.raises(Conflict, match="already record"):
        store.import_(
            "hot_work_permit", json.dumps({"records": [{**HOT, "permit_no": "DH-9"}] * 2}), "json", "a"
        )
    store.archive("hot_work_permit", doc["id"], "applicant")
    store.update("hot_work_permit", other["id"], {"permit_no": HOT["permit_no"]}, "applicant")  # freed
    blind = {
        **{k: v for k, v in HOT.items() if k not in ("level", "area")},
        "permit_no": "MB-1",
        "equipment": "P-7",
    }
    one = [{"blind_no": "B-1", "action": "insert"}]
    store.create("blinding_permit", {**blind, "blinds": one}, "applicant")
    with pytest.raises(Invalid, match="one action on one blind"):
        store.create(
            "blinding_permit",
            {**blind, "permit_no": "MB-2", "blinds": [*one, {"blind_no": "B-1", "action": "remove"}]},
            "a",
        )


def test_an_exported_permit_imports_back_unchanged(store: Any) -> None:
    """Export then import (the registers' backup path) leaves a permit as it was: the
    gateway's own fields come back identical, so they are not taken for a client's write."""
    rid = _in_progress(store, {"channels": ["GT-1"]})
    before = store.get("hot_work_permit", rid)
    text = store.export("hot_work_permit", "json")
    result, events = store.import_("hot_work_permit", text, "json", "op")
    assert result == {"created": 0, "updated": 0, "unchanged": 1} and events == []
    assert store.get("hot_work_permit", rid)["data"] == before["data"]
