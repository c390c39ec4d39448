"""`make deb`: build the package once (module fixture), inspect it, install it into a
throwaway root with the real dpkg (maintainer scripts run against that root through
DPKG_ROOT), run the installed safegw and systemd-analyze on what was installed.

systemd is not PID 1 on the test machine, so the upgrade branch of postinst (restart
only if `safegw check` passes) runs against a recording `systemctl` on PATH: that is
the one stand-in here, and it only records what postinst asks systemd to do.
"""
from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import gateway
from tests.packaging.debtools import dpkg, make_root, sh

REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(not shutil.which("dpkg-deb") or not Path("/usr/bin/python3").exists(),
                       reason="needs dpkg-deb and Debian's /usr/bin/python3"),
]
NETWORK = re.compile(r"\b(curl|wget|apt-get|apt|aptitude|pip|git|nc|ssh|scp|rsync)\b|https?://|ftp://")


def contents(deb: Path) -> dict[str, tuple[str, str, str]]:
    """path -> (mode string, owner/group, symlink target) from `dpkg-deb -c`."""
    out = {}
    for line in sh("dpkg-deb", "-c", deb).stdout.splitlines():
        perm, owner, _size, _date, _time, rest = line.split(None, 5)
        name, _, target = rest.partition(" -> ")
        out[name.removeprefix(".").rstrip("/") or "/"] = (perm, owner, target)
    return out


def test_name_version_and_control_fields(deb: Path) -> None:
    assert deb.name == f"safegw_{gateway.__version__}_amd64.deb"
    f = dict(re.findall(r"^(\S+): (.*)$", sh("dpkg-deb", "-f", deb).stdout, re.M))
    assert f["Package"] == "safegw" and f["Architecture"] == "amd64"
    assert f["Version"] == gateway.__version__
    deps = f["Depends"]
    assert "python3 (>= 3.11)" in deps and "python3 (<< 3.12)" in deps
    assert re.search(r"libc6 \(>= 2\.\d+\)", deps)
    assert "socat" not in deps and "mosquitto" not in deps and "influxdb" not in deps
    assert f["Recommends"] == "mosquitto, influxdb"


def test_files_modes_and_conffiles(deb: Path, tmp_path: Path) -> None:
    c = contents(deb)
    assert {owner for _, owner, _ in c.values()} == {"root/root"}
    assert c["/usr/bin/safegw"][0].startswith("l") and c["/usr/bin/safegw"][2] == "/opt/safegw/bin/safegw"
    assert c["/opt/safegw/bin/safegw"][0] == "-rwxr-xr-x"
    assert c["/opt/safegw/bin/python"][2] == "python3"
    assert c["/opt/safegw/bin/python3"][2] == "/usr/bin/python3"  # Debian's interpreter
    for unit in ("safegw.service", "safegw-central.service"):
        assert c[f"/lib/systemd/system/{unit}"][0] == "-rw-r--r--"
    assert c["/usr/lib/sysusers.d/safegw.conf"][0] == "-rw-r--r--"
    assert c["/usr/lib/tmpfiles.d/safegw.conf"][0] == "-rw-r--r--"
    for conf in ("gateway.yaml", "central.yaml"):
        assert c[f"/etc/safegw/{conf}"][0] == "-rw-r-----"
    # every dependency is in the venv: nothing to fetch at install time
    site = "/opt/safegw/lib/python3.11/site-packages"
    deps = ("gateway", "numpy", "pydantic_core", "cryptography", "asyncua", "pymodbus", "yaml", "zstandard")
    for pkg in deps:
        assert f"{site}/{pkg}" in c, pkg
    assert not any(p.startswith(f"{site}/pip/") for p in c), "pip is not shipped"
    assert not any("/bin/activate" in p for p in c)
    ctl = tmp_path / "DEBIAN"
    sh("dpkg-deb", "-e", deb, ctl)
    assert (ctl / "conffiles").read_text().split() == ["/etc/safegw/gateway.yaml", "/etc/safegw/central.yaml"]
    for script in ("postinst", "prerm", "postrm"):
        assert stat.S_IMODE((ctl / script).stat().st_mode) == 0o755
        sh("sh", "-n", ctl / script)  # parses


def test_maintainer_scripts_use_no_network(deb: Path, tmp_path: Path) -> None:
    ctl = tmp_path / "DEBIAN"
    sh("dpkg-deb", "-e", deb, ctl)
    for script in ("postinst", "prerm", "postrm"):
        code = [ln for ln in (ctl / script).read_text().splitlines() if not ln.lstrip().startswith("#")]
        hits = [ln for ln in code if NETWORK.search(ln)]
        assert not hits, f"{script}: {hits}"
    # the check itself can fail: a line that would fetch is caught
    assert NETWORK.search("    pip install safegw") and NETWORK.search("curl -fsS https://x")


def test_no_build_path_inside(deb: Path, tmp_path: Path) -> None:
    tree = tmp_path / "x"
    sh("dpkg-deb", "-x", deb, tree)
    for built_at in (str(REPO), str(deb.parent.parent)):  # the checkout and the build dir
        hits = sh("grep", "-rl", "--", built_at, tree, check=False).stdout.split()
        assert hits == [], (built_at, hits[:5])


@pytest.fixture(scope="module")
def installed(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("root")
    make_root(root)
    r = dpkg(root, "-i", deb)
    return root, r.stdout + r.stderr


def user(root: Path, name: str) -> list[str]:
    for line in (root / "etc/passwd").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":")
    raise AssertionError(f"no {name} in {root}/etc/passwd")


def test_postinst_makes_user_dirs_and_modes(installed: tuple[Path, str]) -> None:
    root, out = installed
    assert "installed (not started)" in out
    uid, gid = int(user(root, "safegw")[2]), int(user(root, "safegw")[3])
    assert uid != 0 and user(root, "safegw")[6] == "/usr/sbin/nologin"
    assert re.search(r"^dialout:x:20:.*\bsafegw\b", (root / "etc/group").read_text(), re.M)
    for d in ("var/lib/safegw", "var/lib/safegw-central"):
        st = (root / d).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, uid, gid), d
    st = (root / "etc/safegw").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 0, gid)
    st = (root / "etc/safegw/gateway.yaml").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, gid)
    status = (root / "var/lib/dpkg/status").read_text()
    assert "Status: install ok installed" in status


def installed_safegw(root: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(root)}  # no PYTHONPATH: only the venv
    venv = root / "opt/safegw/bin"
    return sh(venv / "python", venv / "safegw", *args, env=env, check=False, cwd=root)


def test_installed_safegw_checks_the_example_configs(installed: tuple[Path, str]) -> None:
    root, _ = installed
    r = installed_safegw(root, "check", "-c", root / "etc/safegw/gateway.yaml")
    assert r.returncode == 0 and r.stdout.startswith("ok:"), r.stdout + r.stderr
    r = installed_safegw(root, "central", "-c", root / "etc/safegw/central.yaml", "--check")
    assert r.returncode == 0 and r.stdout.startswith("ok:"), r.stdout + r.stderr
    probe = "import gateway, numpy; print(gateway.__file__, numpy.__file__)"
    where = sh(root / "opt/safegw/bin/python", "-c", probe,
               env={"PATH": "/usr/bin:/bin"}, cwd=root).stdout.split()  # cwd: not the checkout
    assert all(p.startswith(str(root / "opt/safegw/lib/python3.11/site-packages/")) for p in where), where
    bad = root / "bad.yaml"
    bad.write_text("gateway:\n  id: gw-1\n  site: x\n  bogus_key: 1\n")
    r = installed_safegw(root, "check", "-c", bad)
    assert r.returncode != 0 and f"{bad}:4:" in r.stdout + r.stderr


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_analyze_verify_installed_units(installed: tuple[Path, str]) -> None:
    root, _ = installed
    units = [root / "lib/systemd/system" / u for u in ("safegw.service", "safegw-central.service")]
    # the throwaway root has no OS: lend it the host's targets and slices to resolve against
    for f in [*Path("/lib/systemd/system").glob("*.target"), *Path("/lib/systemd/system").glob("*.slice")]:
        if not (root / "lib/systemd/system" / f.name).exists():
            shutil.copy(f, root / "lib/systemd/system" / f.name)
    # and the base system's kill(1), which ExecReload names (procps: every Debian has it)
    kill = root / "bin" / "kill"
    if not kill.exists():
        kill.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shutil.which("kill", path="/usr/bin:/bin") or "/bin/kill", kill)
    r = sh("systemd-analyze", "verify", f"--root={root}", *units, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    # the verifier does look: a unit with a missing ExecStart binary fails
    broken = root / "lib/systemd/system/broken.service"
    broken.write_text("[Service]\nExecStart=/opt/safegw/bin/nonexistent\n")
    r = sh("systemd-analyze", "verify", f"--root={root}", broken, check=False)
    broken.unlink()
    assert r.returncode != 0


FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> "$SYSTEMCTL_LOG"
case "$1" in
is-active) exit 0 ;;
show) echo "SAFEGW_CONFIG=/etc/safegw/gateway.yaml PYTHONUNBUFFERED=1" ;;
esac
exit 0
"""


def run_postinst_upgrade(root: Path, tmp: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bindir = tmp / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "systemctl").write_text(FAKE_SYSTEMCTL)
    (bindir / "systemctl").chmod(0o755)
    log = tmp / "systemctl.log"
    log.unlink(missing_ok=True)
    (root / "run/systemd/system").mkdir(parents=True, exist_ok=True)
    env = {"PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin", "DPKG_ROOT": str(root),
           "SYSTEMCTL_LOG": str(log)}
    r = sh("sh", root / "var/lib/dpkg/info/safegw.postinst", "configure", "0.0.9", env=env, check=False)
    return r, log.read_text().splitlines() if log.exists() else []


def test_upgrade_restarts_only_when_the_new_check_passes(installed: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = installed
    conf = root / "etc/safegw/gateway.yaml"
    good = conf.read_text()
    try:
        r, calls = run_postinst_upgrade(root, tmp_path)
        assert r.returncode == 0, r.stderr
        assert "restart safegw.service" in calls and "restart safegw-central.service" in calls, calls
        conf.write_text(good.replace("gateway:\n", "gateway:\n  no_such_key: 1\n", 1))
        r, calls = run_postinst_upgrade(root, tmp_path)
        assert r.returncode == 0, r.stderr  # the upgrade itself does not fail
        assert "restart safegw.service" not in calls, calls
        assert "restart safegw-central.service" in calls  # its own config is fine
        assert "NOT restarting safegw.service" in r.stderr and f"{conf}:" in r.stderr, r.stderr
        assert "old safegw.service keeps running" in r.stderr
    finally:
        conf.write_text(good)
        shutil.rmtree(root / "run")


def test_remove_keeps_state_purge_removes_config(deb: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_root(root)
    dpkg(root, "-i", deb)
    (root / "var/lib/safegw/journal.db").write_bytes(b"plant records")
    # an upgrade (same package again) keeps the plant's edited conffile and its modes
    conf = root / "etc/safegw/gateway.yaml"
    edited = conf.read_text().replace("gw-tankfarm-1", "gw-plant-7")
    assert edited != conf.read_text()
    conf.write_text(edited)
    again = dpkg(root, "-i", deb)
    assert "installed (not started)" not in again.stdout  # postinst saw an upgrade
    assert conf.read_text() == edited and stat.S_IMODE(conf.stat().st_mode) == 0o640
    (root / "opt/safegw/lib/python3.11/site-packages/gateway/__pycache__/stray.pyc").write_bytes(b"")
    dpkg(root, "-r", "safegw")
    assert not (root / "opt/safegw").exists() and not (root / "usr/bin/safegw").is_symlink()
    assert (root / "etc/safegw/gateway.yaml").exists()  # conffiles stay until purge
    dpkg(root, "-P", "safegw")
    assert not (root / "etc/safegw").exists()
    assert (root / "var/lib/safegw/journal.db").read_bytes() == b"plant records"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
