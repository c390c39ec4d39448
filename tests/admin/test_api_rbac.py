"""Role-based access over real HTTP against a running daemon polling the simulators:
every endpoint × (no token, bad token, viewer, operator, admin), and the audit trail."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fixtures.daemon import auth

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32

# (method, path, json body or raw bytes, least role). Paths use record 1, created first.
ENDPOINTS: list[tuple[str, str, Any, str | None]] = [
    ("GET", "/health", None, None),
    ("GET", "/page/settings", None, None),
    ("GET", "/", None, None),
    ("GET", "/whoami", None, "viewer"),
    ("GET", "/status", None, "viewer"),
    ("GET", "/metrics", None, "viewer"),
    ("GET", "/channels", None, "viewer"),
    ("GET", "/channels/GT-1", None, "viewer"),
    ("GET", "/alarms", None, "viewer"),
    ("POST", "/alarms/GT-1/ack", {}, "operator"),
    ("POST", "/alarms/GT-1/shelve", {"duration": "10m", "reason": "calibration"}, "operator"),
    ("POST", "/alarms/GT-1/unshelve", {}, "operator"),
    ("GET", "/history/GT-1?from=10m", None, "viewer"),
    ("GET", "/trend/GT-1?range=1h", None, "viewer"),
    ("GET", "/alarms/history?from=1h", None, "viewer"),
    ("GET", "/reports/shift?from=1h", None, "viewer"),
    ("GET", "/registers", None, "viewer"),
    ("GET", "/due", None, "viewer"),
    ("GET", "/registers/hidden_danger/schema", None, "viewer"),
    ("GET", "/registers/hidden_danger", None, "viewer"),
    (
        "POST",
        "/registers/hidden_danger",
        {"title": "rbac", "grade": "general", "found_on": "2026-01-02", "found_by": "x"},
        "operator",
    ),
    ("GET", "/registers/hidden_danger/export?format=csv", None, "viewer"),
    ("GET", "/registers/hidden_danger/export?format=xlsx&q=rbac", None, "viewer"),
    ("POST", "/registers/hidden_danger/import?format=json&dry_run=true", b'{"records": []}', "operator"),
    ("POST", "/registers/hidden_danger/import?format=json", b'{"records": []}', "operator"),
    ("GET", "/registers/hidden_danger/1", None, "viewer"),
    ("PATCH", "/registers/hidden_danger/1", {"location": "tank farm"}, "operator"),
    (
        "POST",
        "/registers/hidden_danger/1/transitions/assign",
        {"fields": {"responsible": "wang", "deadline": "2027-01-01", "measures": "fix"}},
        "operator",
    ),
    ("GET", "/registers/hidden_danger/1/history", None, "viewer"),
    # permits' gas analysis (404 here: a hidden danger is not a permit; the roles are what count)
    ("GET", "/registers/hidden_danger/1/analysis", None, "viewer"),
    ("POST", "/registers/hidden_danger/1/analysis", {}, "operator"),
    ("POST", "/registers/hidden_danger/1/attachments?filename=photo.png", PNG, "operator"),
    ("GET", "/registers/hidden_danger/1/attachments", None, "viewer"),
    ("GET", "/registers/hidden_danger/1/attachments/1", None, "viewer"),
    ("DELETE", "/registers/hidden_danger/1/attachments/1", None, "operator"),
    ("POST", "/registers/hidden_danger/1/archive", {"comment": "dup"}, "operator"),
    ("POST", "/registers/hidden_danger/1/restore", {}, "operator"),
    ("DELETE", "/registers/hidden_danger/1", None, "operator"),
    ("GET", "/audit", None, "admin"),
    ("GET", "/users", None, "admin"),
    ("POST", "/users", {"name": "rbac-probe", "role": "viewer", "rotate": True}, "admin"),
    ("DELETE", "/users/rbac-probe", None, "admin"),
    # the plant's daemon runs from a config text, not a file: a reload answers 422 (roles are what count)
    ("POST", "/config/reload", None, "admin"),
    ("GET", "/config", None, "admin"),
    ("GET", "/docs", None, None),
    ("GET", "/openapi.json", None, None),
]
RANK = {None: -1, "viewer": 0, "operator": 1, "admin": 2}


def _send(http: httpx.Client, method: str, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    if isinstance(body, bytes):
        headers = {**headers, "Content-Type": "application/octet-stream"}
        return http.request(method, path, content=body, headers=headers)
    return http.request(method, path, json=body, headers=headers)


@pytest.fixture(scope="module")
def seeded(plant: Any) -> Any:
    r = plant.http.post(
        "/registers/hidden_danger",
        headers=auth(plant.tokens["operator"]),
        json={"title": "first", "grade": "major", "found_on": "2026-01-01", "found_by": "li"},
    )
    assert r.status_code == 201 and r.json()["id"] == 1, r.text
    r = plant.http.post(
        "/registers/hidden_danger/1/attachments?filename=a.png",
        content=PNG,
        headers=auth(plant.tokens["operator"]),
    )
    assert r.status_code == 201, r.text
    return plant


def test_every_endpoint_is_in_the_matrix(seeded: Any) -> None:
    """A new route without an RBAC row fails here."""
    spec = seeded.http.get("/openapi.json").json()
    listed = {(m, p.split("?")[0]) for m, p, _b, _r in ENDPOINTS}
    for path, ops in spec["paths"].items():
        concrete = (
            path.replace("{rtype}", "hidden_danger")
            .replace("{rid}", "1")
            .replace("{aid}", "1")
            .replace("{channel}", "GT-1")
            .replace(
                "{name}",
                "GT-1"
                if path.startswith("/channels")
                else "assign"
                if "transitions" in path
                else "rbac-probe",
            )
        )
        for method in ops:
            assert (method.upper(), concrete) in listed, f"{method.upper()} {path} has no RBAC row"


@pytest.mark.parametrize("role", [None, "bad", "viewer", "operator", "admin"])
def test_rbac_matrix(seeded: Any, role: str | None) -> None:
    if role is None:
        headers: dict[str, str] = {}
    elif role == "bad":
        headers = auth("sgw_000000000000_" + "x" * 43)
    else:
        headers = auth(seeded.tokens[role])
    rank = RANK.get(role, -1)
    failures = []
    for method, path, body, need in ENDPOINTS:
        r = _send(seeded.http, method, path, body, headers)
        if r.status_code >= 500:
            failures.append(f"{method} {path}: server error {r.status_code} {r.text[:200]}")
        elif need is None:
            if r.status_code != 200:
                failures.append(f"{method} {path}: open endpoint answered {r.status_code}")
        elif rank < 0:
            if r.status_code != 401 or r.headers.get("www-authenticate") != "Bearer":
                failures.append(f"{method} {path}: expected 401 with WWW-Authenticate, got {r.status_code}")
        elif rank < RANK[need]:
            if r.status_code != 403:
                failures.append(f"{method} {path} as {role}: expected 403, got {r.status_code}")
        elif r.status_code in (401, 403):
            failures.append(f"{method} {path} as {role}: refused with {r.status_code}: {r.text[:200]}")
    assert not failures, "\n".join(failures)


def test_audit_trail_records_every_write_with_who_and_outcome(seeded: Any) -> None:
    http, tok = seeded.http, seeded.tokens
    r = http.post(
        "/registers/special_worker",
        headers=auth(tok["operator"]),
        json={"name": "Zhang San", "operation_type": "电工作业", "cert_no": "T1234", "expiry": "2027-03-01"},
    )
    assert r.status_code == 201
    rid = r.json()["id"]
    denied = http.patch(
        f"/registers/special_worker/{rid}", headers=auth(tok["viewer"]), json={"cert_no": "HACK"}
    )
    assert denied.status_code == 403
    bad = http.patch(
        f"/registers/special_worker/{rid}", headers=auth(tok["operator"]), json={"expiry": "next year"}
    )
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "expiry"]
    assert "YYYY-MM-DD" in bad.json()["detail"][0]["msg"]
    ok = http.patch(
        f"/registers/special_worker/{rid}", headers=auth(tok["operator"]), json={"expiry": "2027-04-01"}
    )
    assert ok.status_code == 200 and ok.json()["version"] == 2
    # from a loopback address of its own: after an address's first unauthenticated write in
    # a minute, the others are counted into one row (gateway/admin/auditing.py)
    with httpx.Client(base_url=seeded.url, transport=httpx.HTTPTransport(local_address="127.0.0.7")) as other:
        anon = other.delete(f"/registers/special_worker/{rid}")
    assert anon.status_code == 401

    trail = http.get("/audit?limit=1000", headers=auth(tok["admin"])).json()["items"]
    mine = [a for a in trail if a["path"].startswith("/registers/special_worker")]
    by = {(a["method"], a["actor"], a["status"]) for a in mine}
    assert ("POST", "operator-user", 201) in by
    assert ("PATCH", "viewer-user", 403) in by
    assert ("PATCH", "operator-user", 422) in by
    assert ("PATCH", "operator-user", 200) in by
    assert ("DELETE", "-", 401) in by
    create = next(a for a in mine if a["method"] == "POST" and a["status"] == 201)
    assert create["detail"]["register"] == "special_worker" and create["detail"]["id"] == rid
    assert create["remote"].startswith("127.0.0.1:") and create["role"] == "operator"
    update = next(a for a in mine if a["method"] == "PATCH" and a["status"] == 200)
    assert update["detail"]["changed"] == ["expiry"]
    # reads are not audited; tokens never appear in the trail
    assert not any(a["method"] == "GET" for a in trail)
    assert not any(t in str(trail) for t in tok.values())

    # the register's own history keeps before/after of the change, with who
    hist = http.get(f"/registers/special_worker/{rid}/history", headers=auth(tok["viewer"])).json()
    assert [h["action"] for h in hist] == ["create", "update"]
    assert hist[1]["before"]["data"]["expiry"] == "2027-03-01"
    assert hist[1]["after"]["data"]["expiry"] == "2027-04-01"
    assert hist[1]["actor"] == "operator-user"

    # and the change went into the journal for the uplink (报送)
    evs = [
        e for e in seeded.daemon.events("register") if e["register"] == "special_worker" and e["id"] == rid
    ]
    assert [e["action"] for e in evs] == ["create", "update"]
    assert evs[1]["changed"] == ["expiry"] and evs[1]["actor"] == "operator-user"


def test_revoked_token_stops_working_at_once(seeded: Any) -> None:
    http, admin = seeded.http, seeded.tokens["admin"]
    r = http.post("/users", headers=auth(admin), json={"name": "temp", "role": "operator"})
    assert r.status_code == 201
    token = r.json()["token"]
    assert http.get("/whoami", headers=auth(token)).json() == {"name": "temp", "role": "operator"}
    assert "token" not in str(http.get("/users", headers=auth(admin)).json()).replace('"token"', "")
    assert http.delete("/users/temp", headers=auth(admin)).status_code == 200
    assert http.get("/whoami", headers=auth(token)).status_code == 401
    # a user can not be created twice without rotating
    assert (
        http.post("/users", headers=auth(admin), json={"name": "viewer-user", "role": "viewer"}).status_code
        == 409
    )


def test_bad_input_is_4xx_naming_the_field(seeded: Any) -> None:
    http, op = seeded.http, auth(seeded.tokens["operator"])
    cases = [
        ("POST", "/registers/nope", {"a": 1}, 404, "unknown register type"),
        ("POST", "/registers/hidden_danger", [1, 2], 422, "body"),
        (
            "POST",
            "/registers/hidden_danger",
            {"title": "t", "grade": "huge", "found_on": "2026-01-01", "found_by": "x"},
            422,
            "grade",
        ),
        (
            "POST",
            "/registers/major_hazard_source",
            {"code": "H", "name": "n", "grade": "二级", "filing_status": "filed", "channels": ["NOPE-1"]},
            422,
            "no channel named",
        ),
        (
            "POST",
            "/registers/hidden_danger",
            {
                "title": "t",
                "grade": "general",
                "found_on": "2026-01-01",
                "found_by": "x",
                "hazard_source": 999,
            },
            422,
            "hazard_source",
        ),
        ("GET", "/registers/hidden_danger?grade=huge", None, 422, "grade"),
        ("GET", "/registers/hidden_danger?nosuchfield=1", None, 422, "nosuchfield"),
        ("GET", "/registers/hidden_danger?limit=0", None, 422, "limit"),
        ("POST", "/registers/hidden_danger/1/transitions/fly", {}, 404, "fly"),
        ("POST", "/alarms/GT-1/shelve", {"duration": "forever", "reason": "x"}, 422, "duration"),
        ("POST", "/alarms/NOPE/ack", {}, 404, "NOPE"),
        ("GET", "/history/GT-1?from=yesterday", None, 422, "from"),
        ("GET", "/trend/GT-1?range=2y", None, 422, "range"),
        ("GET", "/trend/GT-1?from=40d", None, 422, "31 days"),
        ("GET", "/trend/NOPE?range=1h", None, 404, "NOPE"),
        ("GET", "/alarms/history?level=" + "x" * 17, None, 422, "level"),
        ("GET", "/reports/shift?tz=Mars/Olympus", None, 422, "tz"),
        ("GET", "/reports/shift?format=docx", None, 422, "format"),
        (
            "POST",
            "/registers/hidden_danger/1/attachments?filename=x.pdf",
            b"MZ\x90\x00not a pdf",
            422,
            "PDF, PNG or JPEG",
        ),
    ]
    r = _send(
        http,
        "POST",
        "/registers/hidden_danger",
        {"title": "v", "grade": "general", "found_on": "2026-01-01", "found_by": "x"},
        op,
    )
    cases.append(
        ("PATCH", f"/registers/hidden_danger/{r.json()['id']}?version=999", {"location": "x"}, 409, "version")
    )
    for method, path, body, status, needle in cases:
        r = _send(http, method, path, body, op)
        assert r.status_code == status, f"{method} {path}: {r.status_code} {r.text}"
        assert needle in r.text, f"{method} {path}: {needle!r} not in {r.text}"


def test_metrics_and_status_reflect_the_plant(seeded: Any) -> None:
    http, viewer = seeded.http, auth(seeded.tokens["viewer"])
    text = http.get("/metrics", headers=viewer).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['safegw_device_polls_total{device="plc"}'] > 0
    assert samples['safegw_device_errors_total{device="dead-plc"}'] >= 1
    assert samples['safegw_device_up{device="dead-plc",protocol="modbus-tcp"}'] == 0
    assert samples["safegw_journal_depth_records"] > 0
    assert "safegw_alarms_active" in samples and "safegw_consumer_lag_records" in text
    assert text.count("# TYPE safegw_device_polls_total counter") == 1
    st = http.get("/status", headers=viewer).json()
    devs = {d["name"]: d for d in st["devices"]}
    assert devs["plc"]["state"] == "ok" and devs["dead-plc"]["state"] == "failing"
    assert devs["dead-plc"]["last_error"] and st["journal"]["last_seq"] > 0
    assert "path" not in st["journal"]
    chans = http.get("/channels?device=dead-plc", headers=viewer).json()
    assert chans["total"] == 1 and chans["channels"][0]["state"] == "fault"
    assert chans["channels"][0]["quality"] != "good"
    good = http.get("/channels?q=GT-*&state=normal", headers=viewer).json()
    assert {c["name"] for c in good["channels"]} <= {"GT-1", "GT-2"} and good["total"] >= 1
    page = http.get("/channels?limit=2&offset=1", headers=viewer).json()
    assert page["count"] == 2 and page["total"] == 5 and page["channels"][0]["index"] == 1


def test_history_of_a_channel_from_the_journal(seeded: Any) -> None:
    http, viewer = seeded.http, auth(seeded.tokens["viewer"])
    h = http.get("/history/GT-1?from=10m", headers=viewer).json()
    assert h["channel"] == "GT-1" and h["source"] == "journal" and h["points"]
    assert all(abs(p["value"] - 12.0) < 0.11 for p in h["points"] if p["quality"] == "good")
    agg = http.get("/history/GT-1?from=10m&every=1m", headers=viewer).json()
    assert (
        agg["every_s"] == 60.0
        and sum(p["n"] for p in agg["points"]) >= len([p for p in h["points"] if p["quality"] == "good"]) - 5
    )
    assert http.get("/history/NOPE", headers=viewer).status_code == 404
    assert http.get("/history/GT-1?from=5m&to=10m", headers=viewer).status_code == 422


def test_docs_page_works_offline(seeded: Any) -> None:
    """/docs loads Swagger UI from the gateway itself, not a CDN (plant networks are offline)."""
    page = seeded.http.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "/docs/assets/swagger-ui-bundle.js" in page.text
    js = seeded.http.get("/docs/assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
