"""The page's words in both languages: every strings file has the same keys and the same
{placeholders} in English and Chinese, every key the page's scripts and HTML ask for exists,
and every built-in register type, field, state, step and enumerated value has its Chinese."""

from __future__ import annotations

import json
import re

import pytest

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

    def zh(msg: str) -> str | None:
        for pattern, words in pairs:
            m = re.match(pattern, msg)
            if m:
                return m.expand(re.sub(r"\$(\d)", r"\\\1", words))
        return None

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
