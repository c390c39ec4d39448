"""What the page's import preview and export rest on: an import with ``dry_run`` runs every
check and lists each row's change but writes nothing; the export takes the list's filters,
search and sort, and its XLSX keeps formula-like text as neutralized text."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from gateway.admin.registers import Invalid, RegisterStore
from tests.admin.test_registers_store import Clock


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = RegisterStore(tmp_path / "registers.db", channels=["GT-1"], clock=Clock(dt.date(2026, 3, 1)))
    yield s
    s.close()


def hd(title: str, **kw: Any) -> dict[str, Any]:
    return {"title": title, "grade": "general", "found_on": "2026-02-01", "found_by": "li", **kw}


def test_a_dry_run_import_lists_the_changes_and_writes_nothing(store: Any) -> None:
    a, _ = store.create("hidden_danger", hd("ladder"), "op")
    store.create("hidden_danger", hd("railing"), "op")
    text = json.dumps({"records": [
        {"id": a["id"], **hd("ladder", location="dock")},   # one field changes
        {"id": a["id"] + 1, **hd("railing")},                # as it is
        hd("new cover", grade="major"),                      # created
    ]})
    before = store.export("hidden_danger", "json")
    result, events = store.import_("hidden_danger", text, "json", "op", dry_run=True)
    assert events == []
    assert (result["created"], result["updated"], result["unchanged"]) == (1, 1, 1)
    assert result["dry_run"] is True
    by_action = {c["action"]: c for c in result["changes"]}
    assert by_action["update"]["id"] == a["id"]
    assert by_action["update"]["changes"] == {"location": [None, "dock"]}
    assert by_action["create"]["data"]["title"] == "new cover"
    assert by_action["unchanged"]["id"] == a["id"] + 1
    # nothing written: same records, same versions, no history rows
    assert store.export("hidden_danger", "json").split('"records"')[1] == before.split('"records"')[1]
    assert len(store.history("hidden_danger", a["id"])) == 1
    # the same import for real does what the preview said
    result, events = store.import_("hidden_danger", text, "json", "op")
    assert (result["created"], result["updated"], result["unchanged"]) == (1, 1, 1) and len(events) == 2
    assert "changes" not in result
    assert store.get("hidden_danger", a["id"])["data"]["location"] == "dock"


def test_a_dry_run_refuses_what_the_import_would_refuse(store: Any) -> None:
    with pytest.raises(Invalid) as e:
        bad = json.dumps([hd("x", grade="catastrophic")])
        store.import_("hidden_danger", bad, "json", "op", dry_run=True)
    assert e.value.errors[0][0][:2] == ("records", 0)
    assert store.query("hidden_danger")["total"] == 0


def test_the_export_is_the_lists_view_and_xlsx_keeps_formulas_as_text(store: Any) -> None:
    store.create("hidden_danger", hd("ladder", found_by='=HYPERLINK("http://x","y")', location="-1+2"), "op")
    store.create("hidden_danger", hd("railing", grade="major"), "op")
    store.create("hidden_danger", hd("cover", grade="major"), "op")
    # filters, search, sort: the same records as the list, in its order
    listed = store.query("hidden_danger", filters={"grade": "major"}, sort="title")["items"]
    # (the list's paging does not cut the export)
    csv_text = store.export("hidden_danger", "csv", filters={"grade": "major"}, sort="title",
                            limit=1, offset=1)
    assert [ln.split(",")[0] for ln in csv_text.splitlines()[1:]] == [str(d["id"]) for d in listed]
    assert [d["data"]["title"] for d in listed] == ["cover", "railing"]
    raw = store.export("hidden_danger", "xlsx", q="HYPERLINK")
    ws = openpyxl.load_workbook(io.BytesIO(raw)).active
    assert ws is not None
    rows = list(ws.iter_rows())
    head = [c.value for c in rows[0]]
    assert len(rows) == 2
    found_by, location = rows[1][head.index("found_by")], rows[1][head.index("location")]
    assert (found_by.data_type, found_by.value) == ("s", '\'=HYPERLINK("http://x","y")')
    assert (location.data_type, location.value) == ("s", "'-1+2")
    assert rows[1][head.index("id")].value == 1  # numbers stay numbers
