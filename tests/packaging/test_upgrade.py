"""Upgrade from the previous tagged version (issue 18, "Upgrade test"): build the .deb of
tag v0.1.0 with that tree's own scripts/build_deb.py (from `git archive`; conftest.py)
and the current tree's, install the old one into a throwaway root with the real dpkg, run the
INSTALLED old daemon on the Modbus simulators so it writes a journal, registers and a
cursor, upgrade with `dpkg -i` of the current .deb, and check that nothing is lost and
that the installed new daemon carries on from the same files. Then `dpkg -i` of the old
.deb again must be refused by the installed package (prerm), with the reason, leaving
the new version installed and working.

systemd is not PID 1 here: "the service comes back" is the installed new `safegw run`
started on the kept config and state, as the unit's ExecStart would (test_deb.py checks
postinst's restart-only-if-check-passes branch). Takes about 2-3 minutes: two package
builds (the current one is shared with the other packaging tests) and two daemon runs.
"""
from __future__ import annotations

import hashlib
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

import gateway
from tests.fixtures.helpers import db_rows as rows
from tests.fixtures.helpers import journal_last_seq as last_seq
from tests.fixtures.helpers import wait_until
from tests.fixtures.sims import SimProcess, gateway_yaml
from tests.packaging.debtools import dpkg, make_root, sh
from uplink import keys as keymod

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(not shutil.which("dpkg-deb") or not Path("/usr/bin/python3").exists(),
                       reason="needs dpkg-deb and Debian's /usr/bin/python3"),
]


def version_of(deb: Path) -> str:
    return sh("dpkg-deb", "-f", deb, "Version").stdout.strip()


def installed_version(root: Path) -> str:
    r = sh("dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f=${Version} ${Status}", "safegw")
    return r.stdout.strip()


def _installed(root: Path, args: tuple[str | Path, ...]) -> tuple[list[str], dict[str, str]]:
    """The INSTALLED safegw (its own venv, no PYTHONPATH), as the unit runs it."""
    venv = root / "opt/safegw/bin"
    return [str(venv / "python"), str(venv / "safegw"), *map(str, args)], {"PATH": "/usr/bin:/bin",
                                                                          "HOME": str(root)}


def safegw(root: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd, env = _installed(root, args)
    return subprocess.run(cmd, env=env, cwd=root, text=True, capture_output=True, timeout=120)


def safegw_daemon(root: Path, *args: str | Path) -> subprocess.Popen[str]:
    cmd, env = _installed(root, args)
    return subprocess.Popen(cmd, env=env, cwd=root, text=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def run_until(root: Path, cfg: Path, journal: Path, seq: int) -> str:
    """Run the installed daemon until the journal passes ``seq``; stop it with SIGTERM."""
    p = safegw_daemon(root, "run", "-c", cfg)
    assert isinstance(p, subprocess.Popen)
    try:
        wait_until(lambda: last_seq(journal) > seq or p.poll() is not None, timeout=60,
                   what=f"the installed daemon's records past {seq}")
        assert p.poll() is None, p.stderr.read() if p.stderr else ""
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err[-3000:]
    return err


REGISTERS = """
from gateway.admin.registers.db import open_db
import json, sys
from pathlib import Path
db = open_db(Path(sys.argv[1]))
for i in range(20):
    db.execute("INSERT INTO records(type, version, state, created_ns, created_by, updated_ns, updated_by,"
               " data) VALUES ('hot-work', 1, 'open', ?, 'ann', ?, 'ann', ?)",
               (i, i, json.dumps({"n": i, "who": "张三"})))
db.commit()
"""


def snapshot(state: Path) -> dict[str, Any]:
    j, r = state / "journal.db", state / "registers.db"
    return {
        "records": rows(j, "SELECT seq, kind, ts_min, ts_max, n, nbytes, codec, data FROM records"
                           " ORDER BY seq"),
        "cursors": rows(j, "SELECT name, seq, updated FROM cursors ORDER BY name"),
        "registers": rows(r, "SELECT * FROM records ORDER BY 1"),
        "files": {str(p.relative_to(state)): hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in sorted(state.rglob("*")) if p.is_file() and not p.name.endswith(("-wal", "-shm"))},
    }


def test_upgrade_from_the_tagged_version_keeps_everything_and_the_service_comes_back(
        old_deb: Path, deb: Path, tmp_path: Path, modbus_plant: SimProcess) -> None:
    old, new = version_of(old_deb), version_of(deb)
    assert new == gateway.__version__
    assert subprocess.run(["dpkg", "--compare-versions", old, "lt", new]).returncode == 0, (old, new)
    root = tmp_path / "root"
    make_root(root)
    dpkg(root, "-i", old_deb)
    assert installed_version(root) == f"{old} install ok installed"

    # the plant: its config in the conffile, keys, an operator, registers, the old daemon's journal
    state = root / "var/lib/safegw"
    cfg = root / "etc/safegw/gateway.yaml"
    cfg.write_text(gateway_yaml(modbus_plant, state, poll="200ms"))
    for args in (("keys", "init"), ("users", "add", "ops", "--role", "operator")):
        r = safegw(root, *args, "-c", cfg)
        assert r.returncode == 0, r.stderr
    r = sh(root / "opt/safegw/bin/python", "-c", REGISTERS, state / "registers.db", cwd=root,
           env={"PATH": "/usr/bin:/bin"})
    journal = state / "journal.db"
    run_until(root, cfg, journal, 5)
    con = sqlite3.connect(journal)  # a consumer's cursor, as the uplink keeps it
    con.execute("INSERT OR REPLACE INTO cursors VALUES ('uplink', 3, 1)")
    con.commit()
    con.close()
    before = snapshot(state)
    assert len(before["records"]) > 5 and before["cursors"] and len(before["registers"]) == 20
    conf_before = cfg.read_bytes()

    # the upgrade: the plant's edited conffile is kept
    up = dpkg(root, "-i", "--force-confold", deb)
    assert installed_version(root) == f"{new} install ok installed", up.stdout + up.stderr
    assert "installed (not started)" not in up.stdout  # postinst saw an upgrade
    assert cfg.read_bytes() == conf_before
    site = root / "opt/safegw/lib/python3.11/site-packages/gateway/__init__.py"
    assert f'__version__ = "{new}"' in site.read_text()
    assert snapshot(state) == before, "dpkg -i touched the state directory"

    # the service comes back: the new daemon's check accepts the kept config, and it
    # carries on from the same journal (sequence numbers continue), registers and keys
    r = safegw(root, "check", "-c", cfg)
    assert r.returncode == 0 and r.stdout.startswith("ok:"), r.stdout + r.stderr
    top = int(before["records"][-1][0])
    run_until(root, cfg, journal, top + 3)
    after = snapshot(state)
    assert after["records"][:len(before["records"])] == before["records"]
    assert len(after["records"]) > len(before["records"])
    assert after["registers"] == before["registers"]
    # cursors: kept; the daemon's own consumers move theirs on, never back
    was = {name: seq for name, seq, _ in before["cursors"]}
    now = {name: seq for name, seq, _ in after["cursors"]}
    assert set(was) <= set(now) and all(now[n] >= was[n] for n in was), (was, now)
    assert now["uplink"] == 3  # no consumer of it here: exactly as it was
    files: dict[str, str] = before["files"]
    secrets = [k for k in files if not k.startswith(("journal.db", "registers.db"))]
    assert str(keymod.key_path(state).relative_to(state)) in secrets and "users.json" in secrets, secrets
    for k in secrets:  # keys, tokens: byte-identical
        assert after["files"][k] == before["files"][k], k


def repack(deb: Path, version: str, dest: Path) -> Path:
    """The same package under another version (control and the scripts' own version)."""
    tree = dest / "tree"
    sh("dpkg-deb", "-R", deb, tree)
    old = sh("dpkg-deb", "-f", deb, "Version").stdout.strip()
    for f in ("DEBIAN/control", "DEBIAN/prerm", "DEBIAN/postrm"):
        t = tree / f
        text = t.read_text()
        t.write_text(text.replace(f"Version: {old}\n", f"Version: {version}\n") if f.endswith("control")
                     else text.replace(f'THIS="{old}"', f'THIS="{version}"'))
    out = dest / f"safegw_{version}_amd64.deb"
    sh("dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", tree, out)
    shutil.rmtree(tree)
    return out


def test_downgrade_is_refused_and_an_old_daemon_refuses_a_newer_schema(
        old_deb: Path, deb: Path, tmp_path: Path, modbus_plant: SimProcess) -> None:
    new = version_of(deb)
    newer = repack(deb, f"{new}+1", tmp_path)  # stands in for the next release: same scripts
    root = tmp_path / "root"
    make_root(root)
    dpkg(root, "-i", deb)
    up = dpkg(root, "-i", newer)
    assert installed_version(root) == f"{new}+1 install ok installed", up.stdout + up.stderr
    state = root / "var/lib/safegw"
    cfg = root / "etc/safegw/gateway.yaml"
    cfg.write_text(gateway_yaml(modbus_plant, state, poll="200ms"))
    run_until(root, cfg, state / "journal.db", 2)

    # a package with the check: its prerm and the installed one's both refuse; dpkg unwinds
    down = dpkg(root, "-i", deb, check=False)
    out = down.stdout + down.stderr
    assert down.returncode != 0, out
    assert f"refusing to downgrade from {new}+1 to {new}" in out and "schema" in out, out
    assert installed_version(root) == f"{new}+1 install ok installed", out
    assert (root / "opt/safegw/bin/safegw").exists()
    r = safegw(root, "check", "-c", cfg)
    assert r.returncode == 0, r.stdout + r.stderr

    # with the override, a downgrade of a checking package goes through (a restored backup)
    forced = sh("env", "SAFEGW_ALLOW_DOWNGRADE=1", "dpkg", f"--root={root}", "--force-script-chrootless",
                "--force-depends", "--log=/dev/null", "-i", deb, check=False)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert installed_version(root) == f"{new} install ok installed"

    # the released 0.1.0 predates the check: its prerm lets dpkg go on, the newer postrm
    # warns, and what protects the plant's files is the old daemon's schema refusal
    journal = state / "journal.db"
    con = sqlite3.connect(journal)
    con.execute("PRAGMA user_version = 99")  # as a future release's migration would leave it
    con.commit()
    con.close()
    frozen = hashlib.sha256(journal.read_bytes()).hexdigest()
    # the old package ships another example config: keep the plant's (no prompt on a pipe)
    down = dpkg(root, "-i", "--force-confold", old_deb, check=False)
    out = down.stdout + down.stderr
    assert f"refusing to downgrade from {new}" in out and "WARNING: downgraded" in out, out
    old = version_of(old_deb)
    assert installed_version(root) == f"{old} install ok installed", out
    p = safegw(root, "run", "-c", cfg)
    assert isinstance(p, subprocess.CompletedProcess)
    assert p.returncode != 0 and "newer" in (p.stdout + p.stderr).lower(), p.stdout + p.stderr
    assert hashlib.sha256(journal.read_bytes()).hexdigest() == frozen  # untouched
