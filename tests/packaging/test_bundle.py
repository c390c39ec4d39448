"""`make offline-bundle` (scripts/build_bundle.py): build the bundle from the session's
.deb with this machine's real apt and mirror, then check what a plant PC with no network
would get: the manifest and checksums, the bundle's own apt index, and install.sh's
resolution with the real apt against (a) a bare Debian 12's dpkg status and (b) that
status with one library newer and one older than the bundle's.

The real install: debootstrap --variant=minbase makes a bare Debian 12 from the mirror,
and install.sh runs inside it (chroot): safegw, python3 and the servers installed from
the bundle alone, the base packages kept, the installed `safegw check` passing. That
test is marked slow (debootstrap: 1-4 minutes) and skipped without debootstrap.
"""
from __future__ import annotations

import hashlib
import re
import shutil
import tarfile
from pathlib import Path

import pytest

import gateway
from tests.packaging.debtools import REPO, sh

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(not shutil.which("apt-get") or not shutil.which("dpkg-scanpackages")
                       or not Path("/usr/bin/python3").exists(),
                       reason="needs apt-get, dpkg-scanpackages (dpkg-dev) and Debian's /usr/bin/python3"),
]
SERVERS = ("mosquitto", "influxdb")


@pytest.fixture(scope="module")
def bundle(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the tarball, the tree it unpacks to)."""
    d = tmp_path_factory.mktemp("bundle")
    r = sh("/usr/bin/python3", REPO / "scripts/build_bundle.py", "--deb", deb, "--out", d / "out",
           "--work", d / "work", check=False, timeout=600)
    if r.returncode and ("Temporary failure resolving" in r.stdout + r.stderr or "Could not" in r.stderr):
        pytest.skip(f"the mirror is not reachable from here: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (tar,) = (d / "out").glob("*.tar")
    with tarfile.open(tar) as t:
        t.extractall(d / "x", filter="data")
    (top,) = (d / "x").iterdir()
    return tar, top


@pytest.fixture(scope="module")
def bare_status(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bare")
    sh("/usr/bin/python3", REPO / "scripts/build_bundle.py", "--bare-status", d / "status", "--work", d / "w")
    return d / "status"


def manifest(top: Path) -> dict[str, tuple[str, str, str]]:
    """package -> (version, role, file)."""
    rows = [ln.split() for ln in (top / "MANIFEST").read_text().splitlines() if not ln.startswith("#")]
    return {p: (v, role, f) for p, v, role, f in rows}


def simulate(top: Path, status: Path, *args: str) -> tuple[int, str, dict[str, tuple[str | None, str]]]:
    """install.sh --simulate against a dpkg status: (exit, output, package -> (old, new))."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
           "SAFEGW_APT_OPTS": f"-o Dir::State::status={status} -o Debug::NoLocking=1"}
    r = sh(top / "install.sh", "--simulate", *args, env=env, check=False, cwd=top)
    out = r.stdout + r.stderr
    # "Inst libssl3 [3.0.1-1] (3.0.22-1~deb12u2 localhost [amd64])" or "Inst safegw (0.2.0 localhost [amd64])"
    inst = {m[0]: (m[1] or None, m[2])
            for m in re.findall(r"^Inst (\S+) (?:\[(\S+)\] )?\((\S+) ", out, re.M)}
    return r.returncode, out, inst


def test_manifest_checksums_and_index(bundle: tuple[Path, Path]) -> None:
    tar, top = bundle
    assert tar.name == f"safegw-offline_{gateway.__version__}_amd64.tar"
    with tarfile.open(tar) as t:
        members = t.getmembers()
    assert all(m.name.startswith(top.name) and m.uid == 0 and m.gid == 0 for m in members)
    files = {str(p.relative_to(top)) for p in top.rglob("*") if p.is_file()}
    lines = (top / "SHA256SUMS").read_text().splitlines()
    sums = {name: digest for digest, name in (ln.split("  ", 1) for ln in lines)}
    assert set(sums) == files - {"SHA256SUMS"}
    for name, digest in sums.items():
        assert hashlib.sha256((top / name).read_bytes()).hexdigest() == digest, name
    m = manifest(top)
    assert m["safegw"][:2] == (gateway.__version__, "safegw")
    for pkg in (*SERVERS, "socat", "wireguard-tools"):
        assert m[pkg][1] == "optional", pkg
    assert m["python3.11"][1] == "dependency"  # a bare Debian 12 has no python3
    for base in ("libc6", "dpkg", "base-files", "zlib1g"):
        assert base not in m, f"{base} is on every Debian 12"
    debs = sorted(p.name for p in (top / "debs").glob("*.deb"))
    assert debs == sorted(Path(f).name for _, _, f in m.values())
    for pkg, (ver, _, f) in m.items():
        got = sh("dpkg-deb", "-f", top / f, "Package", "Version").stdout.split()
        assert got == ["Package:", pkg, "Version:", ver], (f, got)
    index = (top / "debs/Packages").read_text()
    stanzas = [dict(re.findall(r"^(\S+): (.*)$", st, re.M)) for st in index.strip().split("\n\n")]
    assert sorted(s["Package"] for s in stanzas) == sorted(m)
    for s in stanzas:
        assert s["SHA256"] == sums[f"debs/{Path(s['Filename']).name}"]


def test_bare_debian_installs_everything_from_the_bundle(bundle: tuple[Path, Path],
                                                         bare_status: Path) -> None:
    _, top = bundle
    code, out, inst = simulate(top, bare_status)
    assert code == 0, out[-3000:]
    for pkg in ("safegw", "python3", "python3.11", *SERVERS):
        assert pkg in inst, (pkg, sorted(inst))
    assert set(inst) <= set(manifest(top)), "apt may only take packages from the bundle"
    code, out, inst = simulate(top, bare_status, "--minimal")
    assert code == 0, out[-3000:]
    assert "safegw" in inst and not set(SERVERS) & set(inst)
    code, out, inst = simulate(top, bare_status, "--minimal", "socat", "wireguard-tools")
    assert code == 0 and {"socat", "wireguard-tools"} <= set(inst), out[-3000:]
    # the check can fail: a package the bundle lacks is an error, not a download
    code, out, _ = simulate(top, bare_status, "nginx")
    assert code != 0 and "nginx" in out


def test_never_downgrades_and_upgrades_only_what_a_dependency_needs(
        bundle: tuple[Path, Path], bare_status: Path, tmp_path: Path) -> None:
    _, top = bundle
    m = manifest(top)
    newer_ssl = m["libssl3"][0] + "+plant1"  # the plant patched libssl3 after the bundle was made
    old_minimal = "3.11.2-6"  # an old python3.11-minimal: python3.11 wants exactly the bundle's
    assert m["python3.11-minimal"][0] != old_minimal
    status = tmp_path / "status"
    status.write_text(bare_status.read_text()
                      + f"Package: libssl3\nStatus: install ok installed\nVersion: {newer_ssl}\n"
                        "Architecture: amd64\nMulti-Arch: same\nDepends: libc6 (>= 2.34)\n\n"
                      + f"Package: python3.11-minimal\nStatus: install ok installed\nVersion: {old_minimal}\n"
                        "Architecture: amd64\n\n")
    code, out, inst = simulate(top, status)
    assert code == 0, out[-3000:]
    assert "libssl3" not in inst, "the target's newer libssl3 is kept"
    assert inst.get("python3.11-minimal") == (old_minimal, m["python3.11-minimal"][0]), out[-3000:]


def mirror() -> str:
    """The Debian mirror this machine's apt uses for bookworm (debootstrap needs one)."""
    pol = sh("apt-cache", "policy").stdout
    m = re.search(r"^\s*\d+ (\S+) bookworm/main amd64 Packages", pol, re.M)
    if not m:
        pytest.skip("no bookworm/main source in apt's configuration")
    return m.group(1)


def chroot_packages(root: Path) -> dict[str, str]:
    out = sh("dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W",
             "-f=${Package} ${Version} ${Status}\n").stdout
    return {ln.split()[0]: ln.split()[1] for ln in out.splitlines() if ln.endswith("install ok installed")}


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("debootstrap") or not shutil.which("chroot"),
                    reason="debootstrap not installed (scripts/setup.sh --test installs it)")
def test_real_install_into_a_bare_debian_12(bundle: tuple[Path, Path], bare_status: Path,
                                            tmp_path: Path) -> None:
    _, top = bundle
    root = tmp_path / "bookworm"
    r = sh("debootstrap", "--variant=minbase", "bookworm", root, mirror(), check=False, timeout=1200)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    base = chroot_packages(root)
    # the bare set the bundle leaves out is exactly what debootstrap made
    assert set(base) == set(re.findall(r"^Package: (\S+)$", bare_status.read_text(), re.M))
    shutil.copytree(top, root / "root/bundle", symlinks=True)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
    r = sh("chroot", root, "/root/bundle/install.sh", env=env, check=False, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    now = chroot_packages(root)
    m = manifest(top)
    for pkg in ("safegw", "python3.11", *SERVERS):
        assert now.get(pkg) == m[pkg][0], pkg
    assert {p: now.get(p) for p in base} == base, "a base package was changed or removed"
    assert set(now) - set(base) <= set(m), "installed from somewhere else than the bundle"
    r = sh("chroot", root, "safegw", "check", "-c", "/etc/safegw/gateway.yaml", env=env, check=False)
    assert r.returncode == 0 and r.stdout.startswith("ok:"), r.stdout + r.stderr
    assert re.search(r"^safegw:", (root / "etc/passwd").read_text(), re.M)  # postinst ran (adduser)


def test_damaged_bundle_and_bad_options_are_refused(bundle: tuple[Path, Path], tmp_path: Path,
                                                    bare_status: Path) -> None:
    _, src = bundle
    top = tmp_path / src.name
    shutil.copytree(src, top, symlinks=True)
    code, out, _ = simulate(top, bare_status, "--bogus")
    assert code == 2 and "unknown option --bogus" in out
    victim = next((top / "debs").glob("python3.11_*.deb"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    code, out, inst = simulate(top, bare_status)
    assert code == 1 and "bundle is damaged" in out and not inst, out[-2000:]
