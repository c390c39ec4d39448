"""The page's words in both languages: every strings file has the same keys and the same
{placeholders} in English and Chinese, every key the page's scripts and HTML ask for exists,
and every built-in register type, field, state, step and enumerated value has its Chinese."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from gateway.admin.registers import Invalid, RegisterStore
from gateway.admin.registers.schema import load_schemas
from gateway.admin.routes.page import STATIC

FILES = sorted((STATIC / "i18n").glob("*.json"))
LANGS = ("en", "zh-CN")


def strings(name: str) -> dict[str, dict[str, str]]:
    path = STATIC / "i18n" / f"{name}.json"
    doc: dict[str, dict[str, str]] = json.loads(path.read_text(encoding="utf-8"))
    return doc


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_both_languages_have_every_key_with_the_same_placeholders(path: object) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))  # type: ignore[attr-defined]
    assert set(doc) == set(LANGS), f"{path}: languages {sorted(doc)}"
    en, zh = doc["en"], doc["zh-CN"]
    assert sorted(set(en) ^ set(zh)) == [], f"{path}: keys in one language only"
    for k in en:
        assert isinstance(en[k], str) and en[k] and isinstance(zh[k], str) and zh[k], (path, k)
        assert set(re.findall(r"\{(\w+)\}", en[k])) == set(re.findall(r"\{(\w+)\}", zh[k])), (path, k)


def test_every_key_the_page_asks_for_exists() -> None:
    known = set()
    for p in FILES:
        known |= set(json.loads(p.read_text(encoding="utf-8"))["en"])
    asked: dict[str, str] = {}
    for js in [*STATIC.glob("*.js"), *STATIC.glob("views/**/*.js")]:
        # t("key") and t("key", {...}) with a literal key; keys built at run time are checked below
        for k in re.findall(r"""\bt\(\s*"([A-Za-z0-9_.]+)"\s*[,)]""", js.read_text(encoding="utf-8")):
            asked[k] = js.name
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    for k in re.findall(r'data-i18n="([^"]+)"', html):
        asked[k] = "index.html"
    assert len(asked) > 50  # the scan found the page's keys
    missing = {k: f for k, f in asked.items() if k not in known}
    assert not missing, missing
    # the keys made of a prefix and a value
    core, reg = strings("core")["en"], strings("registers")["en"]
    for role in ("viewer", "operator", "admin"):
        assert f"role.{role}" in core
    for k in ("reg.export_csv", "reg.export_xlsx", "reg.import_create", "reg.import_update"):
        assert k in reg


def test_built_in_register_types_are_labelled_in_chinese() -> None:
    words = strings("registers")["zh-CN"]
    missing: list[str] = []
    for name, spec in load_schemas().items():
        if not spec.title_zh:
            missing.append(name)
        for fname, f in spec.fields.items():
            if not f.title_zh:
                missing.append(f"{name}.{fname}")
            for cname, c in (f.columns or {}).items():
                if not c.title_zh:
                    missing.append(f"{name}.{fname}.{cname}")
            for e in [f, *(f.columns or {}).values()]:
                for v in e.values or []:
                    if f"enum.{e.words}.{v}" not in words and f"enum.{v}" not in words:
                        missing.append(f"enum.{v} ({e.words})")
        if spec.workflow:
            missing += [f"state.{s}" for s in spec.workflow.states if f"state.{s}" not in words]
            missing += [f"tr.{t}" for t in spec.workflow.transitions if f"tr.{t}" not in words]
    assert not missing, missing


def chinese(msg: str) -> str | None:
    """A server message as the page shows it in Chinese (static/messages.json), else None."""
    pairs = json.loads((STATIC / "messages.json").read_text(encoding="utf-8"))["zh-CN"]
    for pattern, words in pairs:
        m = re.match(pattern, msg)
        if m:
            return m.expand(re.sub(r"\$(\d)", r"\\\1", words))
    return None


def test_the_api_messages_in_chinese_match_what_the_server_says() -> None:
    """static/messages.json: each pattern compiles, uses only groups it has, and turns a
    message the server really sends into Chinese."""
    doc = json.loads((STATIC / "messages.json").read_text(encoding="utf-8"))
    pairs = doc["zh-CN"]
    for pattern, words in pairs:
        rx = re.compile(pattern)
        assert pattern.startswith("^") and pattern.endswith("$"), pattern
        assert all(int(n) <= rx.groups for n in re.findall(r"\$(\d)", words)), (pattern, words)
        assert re.search(r"[\u4e00-\u9fff]", words), words

    zh = chinese

    assert zh("invalid or revoked token") == "令牌无效或已被吊销"
    stale = "hidden_danger record 7 is at version 3, not 2: someone changed it meanwhile; reload and retry"
    assert zh(stale) == "记录 7 已被他人修改（当前为第 3 版，而非第 2 版）：请刷新后重试"
    assert zh("cannot verify a hidden_danger in state 'reported'; verify applies in ['rectified']") \
        == "记录当前状态为 reported，不能办理“verify”"
    assert zh("not a PDF, PNG or JPEG file (checked by content, not by name)") is not None


def enum_fields() -> dict[str, list[str]]:
    """Every built-in enum field and table column, by its ``words``: its values."""
    out: dict[str, list[str]] = {}
    for spec in load_schemas().values():
        for f in spec.fields.values():
            for e in [f, *(f.columns or {}).values()]:
                if e.type == "enum":
                    assert e.words and e.values
                    out[e.words] = e.values
    return out


def test_a_value_with_words_of_its_own_in_one_field_has_them_in_every_field() -> None:
    """``special`` is 特级 as a hot-work level and 特种 as a kind of PPE: a value given a field's
    own words (``enum.<type>.<field>.<value>``) is ambiguous, so it has no shared word
    (``enum.<value>``) to fall back on, and every field that uses it names its own; and
    every field's own word belongs to a field that has that value."""
    fields = enum_fields()
    for lang in LANGS:
        words = strings("registers")[lang]
        own = {k for k in words if k.startswith("enum.") and k.count(".") >= 3}
        ambiguous = set()
        for k in own:
            vocab, _, v = k[len("enum."):].rpartition(".")
            assert v in fields.get(vocab, []), f"{lang}: {k}: no built-in field {vocab} with the value {v!r}"
            ambiguous.add(v)
        assert ambiguous >= {"special", "periodic", "emergency", "cancelled"}
        for v in sorted(ambiguous):
            assert f"enum.{v}" not in words, f"{lang}: enum.{v} is ambiguous; give each field its own word"
            for vocab, values in fields.items():
                if v in values:
                    assert f"enum.{vocab}.{v}" in words, f"{lang}: {vocab} has {v!r} but no enum.{vocab}.{v}"
    zh = strings("registers")["zh-CN"]
    assert zh["enum.hot_work_permit.level.special"] == "特级"
    assert zh["enum.ppe.kind.special"] == "特种"


def test_what_register_forms_and_imports_refuse_is_said_in_chinese(tmp_path: Path) -> None:
    """The refusals a person meets most in a register's form and in an import, made by the
    store itself from bad data: each has its Chinese."""
    store = RegisterStore(tmp_path / "r.db", channels=["GT-1"])
    said: list[str] = []

    def refused(fn: Any, *a: Any, **kw: Any) -> None:
        with pytest.raises(Invalid) as e:
            fn(*a, **kw)
        said.extend(msg for _loc, msg in e.value.errors)

    try:
        ok = {"title": "t", "grade": "general", "found_on": "2026-02-01", "found_by": "li"}
        create = store.create
        bads: list[dict[str, Any]] = [
            {"found_on": "01/02/2026"}, {"found_on": 20260201}, {"title": 5}, {"grade": "worst"},
            {"funds": "lots"}, {"funds": -1}, {"hazard_source": "x"}, {"hazard_source": 99},
            {"reported_to_regulator": "maybe"}, {"colour": "red"}, {"title": "x" * 5000},
            {"title": "\ud800"}, {"found_by": None}]
        for bad in bads:
            refused(create, "hidden_danger", {**ok, **bad}, "op")
        refused(create, "training_exam", {"exam": "e", "held_on": "2026-01-01", "person": "p", "score": 101},
                "op")
        refused(create, "incident_log", {"received_at": "yesterday", "reporter": "r", "summary": "s"}, "op")
        refused(create, "duty_roster", {"date": "2026-01-01", "shift": "day", "leader": "l", "members": "a"},
                "op")
        refused(create, "major_hazard_source", {"code": "c", "name": "n", "grade": "一级",
                                                "filing_status": "filed", "chemicals": "benzene"}, "op")
        refused(create, "major_hazard_source", {"code": "c", "name": "n", "grade": "一级",
                                                "filing_status": "filed", "chemicals": ["benzene"]}, "op")
        refused(create, "special_equipment", {"name": "n", "category": "boiler", "registration_no": "r",
                                              "next_inspection": "2027-01-01", "channels": ["GT-9"]}, "op")
        refused(create, "accident_investigation", {"title": "t", "occurred_at": "2026-01-01T00:00:00",
                                                   "location": "l", "deaths": 2**60, "serious_injuries": 0},
                "op")
        refused(create, "accident_investigation", {"title": "t", "occurred_at": "2026-01-01T00:00:00",
                                                   "location": "l", "deaths": 1.5, "serious_injuries": 0},
                "op")
        chemicals = [{"name": "x" * 2000, "quantity_t": 1, "critical_t": 1}] * 200  # 400 kB: too large
        refused(create, "major_hazard_source", {"code": "c", "name": "n", "grade": "一级",
                                                "filing_status": "filed", "chemicals": chemicals}, "op")
        imp = store.import_
        refused(imp, "hidden_danger", "title,grade\nx,general,extra\n", "csv", "op")
        refused(imp, "hidden_danger", "id,title\nseven,x\n", "csv", "op")
        refused(imp, "hidden_danger", "id,title\n7,x\n", "csv", "op")
        refused(imp, "hidden_danger", "{", "json", "op")
        refused(imp, "hidden_danger", '{"rows": 1}', "json", "op")
        refused(imp, "hidden_danger", b"not a zip", "xlsx", "op")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("a.txt", "a")
        refused(imp, "hidden_danger", buf.getvalue(), "xlsx", "op")
        for rows in ([["title", None, "grade"]], [["title"], ["x", "y"]], [[None], ["x"]]):
            wb = openpyxl.Workbook()
            ws = wb.active
            assert ws is not None
            for r in rows:
                ws.append(r)
            buf = io.BytesIO()
            wb.save(buf)
            refused(imp, "hidden_danger", buf.getvalue(), "xlsx", "op")
    finally:
        store.close()
    assert len(said) >= 30
    untranslated = sorted({m for m in said if chinese(m) is None})
    assert not untranslated, untranslated
