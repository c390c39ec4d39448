"""The admin API's input as an attacker sends it, through the real daemon: far times,
deep nesting, lone surrogates, oversized records, CSV formulas, tokens in query strings,
floods of unauthenticated writes, and uploads refused after their bytes arrived."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import httpx

from gateway.core.units import iso_ns
from tests.fixtures.daemon import auth

HD = {"title": "t", "grade": "general", "found_on": "2026-01-01", "found_by": "x"}


def _post_raw(p: Any, path: str, text: str, role: str = "operator", **kw: Any) -> httpx.Response:
    """A JSON body as written (json.dumps would refuse what an attacker sends)."""
    return p.http.post(path, content=text.encode("utf-8"), headers={**auth(p.tokens[role]),
                       "Content-Type": "application/json"}, **kw)


def _locs(r: httpx.Response) -> list[list[Any]]:
    return [d["loc"] for d in r.json()["detail"]]


def test_far_times_never_give_500(plant: Any) -> None:
    h = auth(plant.tokens["viewer"])
    for q in ("from=99999999999d", "from=0001-01-01T00:00:00Z", "to=9999-12-31T23:59:59Z",
              "from=0001-01-01T00:00:00Z&to=9999-12-31T23:59:59Z", "from=3000d", "to=-99999d"):
        r = plant.http.get(f"/history/GT-1?{q}", headers=h)
        assert r.status_code in (200, 422), (q, r.status_code, r.text)
        if r.status_code == 422:
            assert any(loc[-1] in ("from", "to") for loc in _locs(r)), r.text


def test_iso_ns_never_raises() -> None:
    assert iso_ns(0) == "1970-01-01T00:00:00.000Z"
    assert iso_ns(-2**63).startswith("1677-09-21T") and iso_ns(-10**20) == "0001-01-01T00:00:00.000Z"
    assert iso_ns(2**63 - 1).startswith("2262-04-11T") and iso_ns(2**70) == "9999-12-31T23:59:59.999Z"


def test_deeply_nested_import_is_refused(plant: Any) -> None:
    r = plant.http.post("/registers/hidden_danger/import?format=json", content=b"[" * 200_000,
                        headers={**auth(plant.tokens["operator"]), "Content-Type": "application/json"})
    assert r.status_code in (413, 422), r.text
    r = _post_raw(plant, "/registers/hidden_danger", "[" * 200_000)
    assert r.status_code in (400, 413, 422), r.text  # FastAPI's own "error parsing the body"


def test_lone_surrogates_are_refused_naming_the_field(plant: Any) -> None:
    doc = json.dumps({**HD, "description": "x"}).replace('"x"', '"\\ud800"')
    r = _post_raw(plant, "/registers/hidden_danger", doc)
    assert r.status_code == 422, r.text
    assert ["body", "description"] in _locs(r)
    # in a field's name, in a list, in a comment, in an import
    r = _post_raw(plant, "/registers/hidden_danger", json.dumps(HD)[:-1] + ', "\\udfff": 1}')
    assert r.status_code == 422, r.text
    r = _post_raw(plant, "/registers/major_hazard_source",
                  '{"code": "c", "name": "n", "grade": "一级", "filing_status": "filed", '
                  '"channels": ["\\ud800"]}')
    assert r.status_code == 422, r.text
    rid = plant.http.post("/registers/hidden_danger", json=HD,
                          headers=auth(plant.tokens["operator"])).json()["id"]
    r = _post_raw(plant, f"/registers/hidden_danger/{rid}/archive", '{"comment": "\\ud800"}')
    assert r.status_code == 422, r.text
    r = _post_raw(plant, "/registers/hidden_danger/import?format=json",
                  json.dumps([{**HD, "title": "x"}]).replace('"x"', '"\\ud800"'))
    assert r.status_code == 422, r.text
    assert ["records", 0, "title"] in _locs(r)


def test_records_and_events_are_bounded(plant: Any) -> None:
    h = auth(plant.tokens["operator"])
    big = "危" * 2700  # 8 KB of UTF-8, within the 4000-character field limit
    rows = [{"name": big, "cas": big, "quantity_t": 1, "critical_t": 2} for _ in range(1000)]
    doc = {"code": "c", "name": "n", "grade": "一级", "filing_status": "filed", "chemicals": rows}
    # the probe's 16 MB record: over the body limit before anything reads it
    r = plant.http.post("/registers/major_hazard_source", json=doc, headers=h)
    assert r.status_code == 413, r.status_code
    # over the row limit
    doc["chemicals"] = [{"name": "n", "quantity_t": 1, "critical_t": 2}] * 600
    r = plant.http.post("/registers/major_hazard_source", json=doc, headers=h)
    assert r.status_code == 422 and ["body", "chemicals"] in _locs(r), r.text
    # within both (50 rows, 800 KB) but over the event limit: refused naming the record
    doc["chemicals"] = rows[:50]
    r = plant.http.post("/registers/major_hazard_source", json=doc, headers=h)
    assert r.status_code in (413, 422), r.status_code
    assert "256" in r.text
    r = plant.http.post("/registers/hidden_danger", json={**HD, "description": "d" * 4001}, headers=h)
    assert r.status_code == 422 and ["body", "description"] in _locs(r)
    # the same bound per record of an import
    r = plant.http.post("/registers/major_hazard_source/import?format=json", json=[doc], headers=h)
    assert r.status_code == 422 and ["records", 0] in _locs(r), r.text
    # what fits still goes in
    doc["chemicals"] = rows[:5]
    assert plant.http.post("/registers/major_hazard_source", json=doc, headers=h).status_code == 201


FORMULAS = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(1+1)", '=HYPERLINK("http://x")', "\tx", "\rx"]


def test_csv_export_neutralises_formulas_and_import_warns(plant: Any) -> None:
    h = auth(plant.tokens["operator"])
    for f in FORMULAS:
        r = plant.http.post("/registers/hidden_danger", json={**HD, "title": "formula", "description": f},
                            headers=h)
        assert r.status_code == 201, r.text
    out = plant.http.get("/registers/hidden_danger/export?format=csv", headers=h).text
    cells = [row["description"] for row in csv.DictReader(io.StringIO(out)) if row["title"] == "formula"]
    assert sorted(cells) == sorted("'" + f for f in FORMULAS)
    # the import takes such cells as text, and says so
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["title", "grade", "found_on", "found_by", "description"])
    w.writerow(["imported formula", "general", "2026-01-01", "x", "=1+2"])
    r = plant.http.post("/registers/hidden_danger/import?format=csv", content=buf.getvalue().encode(),
                        headers={**h, "Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    assert r.json()["created"] == 1
    assert any("formula" in w and "description" in w for w in r.json()["warnings"]), r.json()
    got = plant.http.get("/registers/hidden_danger?q=imported formula", headers=h).json()["items"]
    assert got[0]["data"]["description"] == "=1+2"


def test_a_refused_upload_leaves_no_file(plant: Any) -> None:
    h = auth(plant.tokens["operator"])
    att_dir = plant.state / "attachments"
    before = set(att_dir.iterdir()) if att_dir.exists() else set()
    r = plant.http.post("/registers/hidden_danger/999999/attachments?filename=a.pdf",
                        content=b"%PDF-1.4\n" + b"1" * 500_000, headers=h)
    assert r.status_code == 404
    after = set(att_dir.iterdir()) if att_dir.exists() else set()
    assert after == before


def _audit(p: Any, prefix: str) -> list[dict[str, Any]]:
    r = p.http.get("/audit", params={"path": prefix, "limit": 1000}, headers=auth(p.tokens["admin"]))
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def test_tokens_in_query_strings_are_not_audited(plant: Any) -> None:
    secret = plant.tokens["operator"]
    h = auth(plant.tokens["operator"])
    plant.http.post(f"/alarms/GT-1/ack?token={secret}&x=1", json={}, headers=h)
    plant.http.post(f"/alarms/GT-1/ack?access_token={secret}", json={}, headers=h)
    paths = [r["path"] for r in _audit(plant, "/alarms/GT-1/ack")]
    assert "/alarms/GT-1/ack?x=1" in paths and "/alarms/GT-1/ack" in paths, paths
    assert not any(secret in p for p in paths), paths


def test_unauthenticated_writes_are_aggregated(plant: Any) -> None:
    path = "/registers/flood_probe"
    # from an address of its own (any 127.x.y.z is loopback), so its minute starts here
    flood = httpx.Client(base_url=plant.url, transport=httpx.HTTPTransport(local_address="127.0.0.9"))
    with flood:
        for _ in range(300):
            assert flood.post(path, json={}).status_code == 401
    rows = _audit(plant, path)
    assert len(rows) == 1 and rows[0]["remote"].startswith("127.0.0.9:"), rows
    # the rest of the minute is one row with the count (written now: at the API's stop, or
    # with the address's next write after the minute)
    plant.daemon.run(plant.daemon.api.ctx.flush_audit())
    rows = _audit(plant, path)
    assert len(rows) == 2 and rows[0]["detail"]["count"] == 299, rows
    # authenticated writes are still each recorded
    h = auth(plant.tokens["operator"])
    for _ in range(3):
        plant.http.post("/registers/hidden_danger", json={**HD, "title": "counted"}, headers=h)
    mine = [r for r in _audit(plant, "/registers/hidden_danger") if r["actor"] == "operator-user"
            and r["status"] == 201]
    assert len(mine) >= 3
