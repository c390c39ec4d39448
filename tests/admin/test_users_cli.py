"""``safegw users``: tokens printed once, stored hashed (scrypt) in a 0600 file, revocable,
and the daemon honours a revoke made with the CLI while it runs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx

from gateway.cli import main
from gateway.core.tokens import Principal, UserStore, check_secret, hash_secret
from tests.fixtures.daemon import Daemon, auth

ROOT = Path(__file__).resolve().parents[2]


def safegw(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command line, in-process (a subprocess per call costs seconds on a busy box)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse errors
            code = int(e.code or 0)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def test_console_script_runs(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "users",
            "--state-dir",
            str(tmp_path),
            "add",
            "x",
            "--role",
            "viewer",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and r.stdout.startswith("sgw_"), r.stderr


def test_users_add_list_revoke(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f'gateway: {{id: g, site: "S", state_dir: "{tmp_path / "state"}"}}\n')
    r = safegw("users", "add", "alice", "--role", "operator", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("sgw_") and "shown once" in r.stderr
    users_file = tmp_path / "state" / "users.json"
    assert stat.S_IMODE(os.stat(users_file).st_mode) == 0o600
    raw = users_file.read_text()
    secret = token.split("_", 2)[2]
    assert secret not in raw and token not in raw
    entry = json.loads(raw)["users"][0]
    assert entry["hash"].startswith("scrypt$") and check_secret(secret, entry["hash"])

    again = safegw("users", "add", "alice", "--role", "admin", "-c", str(cfg))
    assert again.returncode == 1 and "exists" in again.stderr
    bad = safegw("users", "add", "bob", "--role", "root", "-c", str(cfg))
    assert bad.returncode == 2 and "invalid choice" in bad.stderr

    lst = safegw("users", "list", "--json", "-c", str(cfg))
    rows = json.loads(lst.stdout)
    assert rows == [
        {
            "name": "alice",
            "role": "operator",
            "key_id": token.split("_")[1],
            "created": rows[0]["created"],
            "created_by": rows[0]["created_by"],
            "revoked": None,
        }
    ]
    assert "hash" not in lst.stdout and secret not in lst.stdout

    rot = safegw("users", "--state-dir", str(tmp_path / "state"), "rotate", "alice", "--role", "operator")
    assert rot.returncode == 0 and rot.stdout.strip() != token
    store = UserStore(users_file)
    assert store.verify(token) is None
    assert store.verify(rot.stdout.strip()) == Principal(
        "alice", "operator", rot.stdout.strip().split("_")[1]
    )

    rv = safegw("users", "revoke", "alice", "-c", str(cfg))
    assert rv.returncode == 0
    assert store.verify(rot.stdout.strip()) is None
    assert safegw("users", "revoke", "alice", "-c", str(cfg)).returncode == 1
    # the CLI's actions are in the audit trail too
    import sqlite3

    db = sqlite3.connect(tmp_path / "state" / "registers.db")
    paths = [row[0] for row in db.execute("SELECT path FROM audit ORDER BY seq")]
    db.close()
    assert paths == ["users add", "users rotate", "users revoke"]


def test_hash_is_salted_and_checked_in_constant_form() -> None:
    a, b = hash_secret("same", n=2**10), hash_secret("same", n=2**10)
    assert a != b and check_secret("same", a) and check_secret("same", b)
    assert not check_secret("other", a) and not check_secret("same", "garbage") and not check_secret("x", "")


def test_token_format_garbage_is_refused_cheaply(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "users.json", scrypt_n=2**10)
    tok = store.add("u", "viewer")
    for bad in (
        "",
        "Bearer",
        tok + "x",
        tok[:-1],
        "sgw_" + "0" * 12 + "_" + tok.split("_", 2)[2],
        tok.upper(),
    ):
        assert store.verify(bad) is None, bad
    assert store.verify(tok) is not None


def test_cli_revoke_takes_effect_in_the_running_daemon(tmp_path: Path) -> None:
    cfg_text = f'gateway: {{id: g, site: "S", state_dir: "{tmp_path}"}}\napi: {{listen: "127.0.0.1:0"}}\n'
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(cfg_text)
    token = safegw("users", "add", "op", "--role", "operator", "-c", str(cfg)).stdout.strip()
    d = Daemon(cfg_text).start()
    try:
        with httpx.Client(base_url=d.url, timeout=10) as http:
            assert http.get("/whoami", headers=auth(token)).json()["name"] == "op"
            assert safegw("users", "revoke", "op", "-c", str(cfg)).returncode == 0
            assert http.get("/whoami", headers=auth(token)).status_code == 401
    finally:
        d.stop()
