#!/usr/bin/python3
"""Build dist/safegw-offline_<version>_amd64.tar: safegw's .deb, the optional servers'
.debs and every dependency a bare Debian 12 lacks, as a local apt repository with an
`install.sh`, for a plant PC with no network and no mirror (docs/packaging.md).

    /usr/bin/python3 scripts/build_bundle.py [--deb dist/safegw_X_amd64.deb] [--out dist]

What goes in: first the packages of a bare Debian 12 (debootstrap --variant=minbase):
the archive's Priority `required` packages and what they depend on, as apt resolves
them with nothing installed. Then apt resolves safegw's .deb plus OPTIONAL against a
dpkg status holding just that bare set, and downloads from this machine's mirror what
it lacks (`--with-base`: against an empty status, so the base packages of the closure
come too). On the
target, install.sh lets apt resolve against the bundle's own flat repository (a
`Packages` index by dpkg-scanpackages) and what is installed: apt never downgrades
an installed package, and upgrades one from the bundle only when a dependency needs
a newer version.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_deb

ROOT = build_deb.ROOT
#: what a plant may run beside safegw (docs/packaging.md, "Offline bundle"): the MQTT
#: broker and the historian the package Recommends, socat for RTU commissioning (Suggests),
#: wg for the VPN to central (docs/security.md, "VPN").
OPTIONAL = ("mosquitto", "influxdb", "socat", "wireguard-tools")
BARE = "required"  # Priority of the packages every Debian 12 has, with their dependencies


def run(*cmd: str | Path, cwd: Path | None = None) -> str:
    print("+", " ".join(map(str, cmd)), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, cwd=cwd, stdout=subprocess.PIPE,
                          text=True, env=build_deb.CLEAN_ENV).stdout


def download_closure(deb: Path, work: Path, status: str) -> list[Path]:
    """Every .deb apt would install for safegw + OPTIONAL on a machine whose dpkg status is
    ``status`` (a bare Debian 12's, or empty)."""
    state, archives = work / "state", work / "archives"
    (archives / "partial").mkdir(parents=True)
    state.mkdir()
    (state / "status").write_text(status)
    # the status in a private admin dir: the lock apt takes is ours, not the system's
    run("apt-get", "-q", "-y", "--download-only", "--no-install-recommends",
        "-o", f"Dir::State::status={state / 'status'}", "-o", f"Dir::Cache::archives={archives}",
        "-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root",
        "install", deb.resolve(), *OPTIONAL)
    return sorted(archives.glob("*.deb"))


def bare_debian(work: Path) -> dict[str, str]:
    """Name -> version of every package a bare Debian 12 (debootstrap --variant=minbase)
    has: the archive's Priority required packages (its index decides, not the .deb's own
    field) and what they depend on, as apt resolves it with nothing installed."""
    import apt_pkg  # python3-apt: Debian's python3 only, hence the import here

    apt_pkg.init()
    cache = apt_pkg.Cache(progress=None)
    dep = apt_pkg.DepCache(cache)
    required = sorted(p.name for p in cache.packages
                      if (v := dep.get_candidate_ver(p)) is not None and v.priority_str == BARE)
    # debootstrap satisfies init-system-helpers' "usrmerge | usr-is-merged" with the second
    # (apt would take the first, and perl with it): name it, as debootstrap ends up with it
    required.append("usr-is-merged")
    state = work / "bare-state"
    state.mkdir(parents=True, exist_ok=True)
    (state / "status").touch()
    sim = run("apt-get", "-s", "-q", "--no-install-recommends", "-o", "Debug::NoLocking=1",
              "-o", f"Dir::State::status={state / 'status'}", "install", *required)
    # "Inst libc6 (2.36-9+deb12u10 Debian:12.11/stable [amd64])"
    out = {}
    for line in sim.splitlines():
        if line.startswith("Inst "):
            _, name, ver, *_ = line.split()
            out[name] = ver.lstrip("(")
    if not required or len(out) < len(required):
        sys.exit(f"build_bundle: apt did not resolve the {len(required)} required packages")
    return out


def bare_status(work: Path, bare: dict[str, str] | None = None) -> str:
    """A dpkg status file of a bare Debian 12, for a dry run of install.sh on this machine:
    SAFEGW_APT_OPTS="-o Dir::State::status=FILE" ./install.sh --simulate"""
    bare = bare if bare is not None else bare_debian(work)
    shown = run("apt-cache", "show", *(f"{n}={v}" for n, v in sorted(bare.items())))
    stanzas = [st for st in shown.strip().split("\n\n") if st]
    # installed packages carry Status; the index's Filename/Size/checksums mean nothing there
    return "".join(st.replace("\n", "\nStatus: install ok installed\n", 1) + "\n\n" for st in stanzas)


def field(deb: Path, name: str) -> str:
    return run("dpkg-deb", "-f", deb, name).strip()


def sha256(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build(deb: Path, out: Path, work: Path, with_base: bool = False) -> Path:
    ver = field(deb, "Version")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    name = f"safegw-offline_{ver}_amd64"
    top = work / name
    debs = top / "debs"
    debs.mkdir(parents=True)
    bare = bare_debian(work)
    manifest = []
    for d in [deb, *download_closure(deb, work, "" if with_base else bare_status(work, bare))]:
        pkg = field(d, "Package")
        shutil.copyfile(d, debs / d.name)
        role = "safegw" if d == deb else "optional" if pkg in OPTIONAL else "dependency"
        manifest.append((pkg, field(d, "Version"), role, d.name))
    packages = run("dpkg-scanpackages", "--multiversion", ".", "/dev/null", cwd=debs)
    (debs / "Packages").write_text(packages)
    shutil.copyfile(ROOT / "packaging" / "install.sh", top / "install.sh")
    (top / "install.sh").chmod(0o755)
    (top / "MANIFEST").write_text(
        f"# safegw offline bundle {ver}: package version role file (docs/packaging.md)\n"
        + ("# --with-base: the bare Debian 12 packages of the closure are in too\n" if with_base else
           f"# left out: the {len(bare)} packages of a bare Debian 12 "
           f"(Priority {BARE} and their dependencies)\n")
        + "".join(f"{p} {v} {r} debs/{f}\n" for p, v, r, f in sorted(manifest)))
    files = sorted(p for p in top.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    (top / "SHA256SUMS").write_text("".join(f"{sha256(p)}  {p.relative_to(top)}\n" for p in files))
    out.mkdir(parents=True, exist_ok=True)
    tar_path = out / f"{name}.tar"
    tmp = tar_path.with_suffix(".tar.part")

    def norm(ti: tarfile.TarInfo) -> tarfile.TarInfo:
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        ti.mtime = 0  # the same inputs give the same tarball
        return ti

    # plain tar: the .debs inside are compressed already
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for p in [top, *sorted(top.rglob("*"))]:
            tar.add(p, arcname=str(p.relative_to(work)), recursive=False, filter=norm)
    os.replace(tmp, tar_path)
    return tar_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deb", type=Path, help="safegw's .deb (default: build it, as make deb)")
    ap.add_argument("--out", type=Path, default=ROOT / "dist")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bundle")
    ap.add_argument("--fast", action="store_true", help="when building the .deb: gzip -1, not xz (tests)")
    ap.add_argument("--with-base", action="store_true",
                    help="also ship the bare-Debian packages of the closure (libc6, zlib1g...): for targets "
                         "older than this machine's point release (apt upgrades them only where needed)")
    ap.add_argument("--bare-status", type=Path, metavar="FILE",
                    help="only write a dpkg status of a bare Debian 12 to FILE (for install.sh --simulate)")
    a = ap.parse_args()
    if a.bare_status:
        a.bare_status.write_text(bare_status((a.work / "tree").resolve()))
        return
    deb = a.deb
    if deb is None:
        deb = build_deb.build(a.out.resolve(), (a.work / "deb").resolve(), a.fast)
    print(build(deb.resolve(), a.out.resolve(), (a.work / "tree").resolve(), a.with_base))


if __name__ == "__main__":
    main()
