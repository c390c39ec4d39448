#!/usr/bin/python3
"""Build dist/safegw_<version>_amd64.deb with dpkg-deb (no debhelper).

The package holds a self-contained virtual environment in /opt/safegw made with
Debian's own /usr/bin/python3 (so Depends: python3 (>= 3.11), python3 (<< 3.12)),
from the project's wheel and every dependency's wheel taken from the machine's
package index at build time: `dpkg -i` needs no network. See docs/packaging.md.

    /usr/bin/python3 scripts/build_deb.py [--out dist] [--work build/deb]
"""
from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "packaging" / "debian"
PYTHON = "/usr/bin/python3"  # Debian's interpreter: the venv's bin/python links to it
PREFIX = "/opt/safegw"


def version() -> str:
    """The version pyproject.toml declares (static, or dynamic via attr = module.__version__)."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    proj = meta["project"]
    if "version" in proj:
        return str(proj["version"])
    attr = meta["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    module, _, name = attr.rpartition(".")
    src = (ROOT / module.replace(".", "/") / "__init__.py").read_text()
    m = re.search(rf'^{name}\s*=\s*["\']([^"\']+)["\']', src, re.M)
    if not m:
        sys.exit(f"build_deb: no {attr} in {module}")
    return m.group(1)


# a PYTHONPATH (a checkout, a test run) would make pip think safegw is installed already
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def run(*cmd: str | Path) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, env=CLEAN_ENV)


def install(src: Path, dst: Path, mode: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    dst.chmod(mode)


def glibc_needed(tree: Path) -> str:
    """The newest GLIBC_x.y symbol version any shared object in the tree asks for."""
    best = (2, 17)
    for so in tree.rglob("*.so*"):
        if so.is_file() and not so.is_symlink():
            for m in re.finditer(rb"GLIBC_2\.(\d+)", so.read_bytes()):
                best = max(best, (2, int(m.group(1))))
    return f"{best[0]}.{best[1]}"


def build(out: Path, work: Path, fast: bool = False) -> Path:
    ver = version()
    if not Path(PYTHON).exists():
        sys.exit(f"build_deb: {PYTHON} missing: apt-get install python3 python3-venv")
    shutil.rmtree(work, ignore_errors=True)
    stage = work / "root"
    venv = stage / PREFIX.lstrip("/")
    wheels = work / "wheels"
    # a throwaway venv with pip to build the wheels (Debian's python3 may have no pip)
    run(PYTHON, "-m", "venv", work / "tool")
    tool_pip = work / "tool" / "bin" / "pip"
    # the project's wheel and every dependency's wheel, from the machine's package index
    run(tool_pip, "wheel", "--quiet", "--wheel-dir", wheels, ROOT)
    # the venv that ships: installed from those wheels only, never from the network
    run(PYTHON, "-m", "venv", venv)
    run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-index",
        "--find-links", wheels, "safegw")
    run(venv / "bin" / "python", "-m", "pip", "check")
    if not (venv / "bin" / "safegw").exists():
        sys.exit("build_deb: pip installed no bin/safegw")
    run(venv / "bin" / "python", "-m", "pip", "uninstall", "--quiet", "--yes", "pip", "setuptools")
    for act in venv.glob("bin/[Aa]ctivate*"):
        act.unlink()  # they would name the build path; the service never activates
    # rewrite the build path to the installed one (shebangs, pyvenv.cfg, RECORD files)
    built = str(venv).encode()
    for p in venv.rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            if built in data:
                p.write_bytes(data.replace(built, PREFIX.encode()))
    for p in venv.rglob("__pycache__"):
        shutil.rmtree(p)
    # byte-compile now: the venv is root-owned, the service user could not write .pyc files
    run(PYTHON, "-m", "compileall", "-q", "-j", "0", "-s", venv, "-p", PREFIX, venv / "lib")
    leftover = subprocess.run(["grep", "-rl", str(work), str(stage)], capture_output=True, text=True)
    if leftover.stdout.strip():
        sys.exit(f"build_deb: build path left in:\n{leftover.stdout}")

    # docs the units point at (Documentation=file:///opt/safegw/share/doc/safegw/config.md)
    for md in (ROOT / "docs").glob("*.md"):
        install(md, venv / "share/doc/safegw" / md.name, 0o644)
    (stage / "usr/bin").mkdir(parents=True)
    os.symlink(f"{PREFIX}/bin/safegw", stage / "usr/bin/safegw")
    for unit in ("safegw.service", "safegw-central.service"):
        install(ROOT / "systemd" / unit, stage / "lib/systemd/system" / unit, 0o644)
    install(ROOT / "systemd/safegw.sysusers", stage / "usr/lib/sysusers.d/safegw.conf", 0o644)
    install(PKG / "safegw.tmpfiles", stage / "usr/lib/tmpfiles.d/safegw.conf", 0o644)
    install(ROOT / "config/reference.yaml", stage / "etc/safegw/gateway.yaml", 0o640)
    install(ROOT / "config/central.yaml", stage / "etc/safegw/central.yaml", 0o640)
    doc = stage / "usr/share/doc/safegw"
    install(PKG / "copyright", doc / "copyright", 0o644)
    with gzip.GzipFile(doc / "changelog.gz", "wb", mtime=0) as gz:  # native: no .Debian
        gz.write((PKG / "changelog").read_bytes().replace(b"@VERSION@", ver.encode()))
    (doc / "changelog.gz").chmod(0o644)
    install(PKG / "lintian-overrides", stage / "usr/share/lintian/overrides/safegw", 0o644)
    for d in [stage, *stage.rglob("*")]:
        if d.is_dir() and not d.is_symlink():
            d.chmod(0o755)

    control = stage / "DEBIAN"
    control.mkdir()
    size_kib = sum(p.lstat().st_size for p in stage.rglob("*")) // 1024
    text = (PKG / "control").read_text().replace("@VERSION@", ver).replace("@SIZE@", str(size_kib))
    text = text.replace("@LIBC@", glibc_needed(venv))
    if "@localhost>" in text:
        # TODO(maintainer): the project has no contact address yet; set a real one in
        # packaging/debian/control and changelog (lintian: bogus-mail-host) when it has
        print("build_deb: TODO: Maintainer is the placeholder safegw@localhost (no project address yet)",
              file=sys.stderr)
    (control / "control").write_text(text)
    install(PKG / "conffiles", control / "conffiles", 0o644)
    for script in ("postinst", "prerm", "postrm"):
        install(PKG / script, control / script, 0o755)
    for script in ("prerm", "postrm"):  # they refuse / warn of a downgrade below their own version
        (control / script).write_text((control / script).read_text().replace("@VERSION@", ver))
    out.mkdir(parents=True, exist_ok=True)
    deb = out / f"safegw_{ver}_amd64.deb"
    # --fast (the tests): gzip -1 instead of xz, several times quicker, a bigger file
    comp = ["-Zgzip", "-z1"] if fast else ["-Zxz"]
    run("dpkg-deb", "--root-owner-group", *comp, "--build", stage, deb)
    return deb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "dist")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "deb")
    ap.add_argument("--fast", action="store_true", help="gzip -1, not xz (tests)")
    a = ap.parse_args()
    print(build(a.out.resolve(), a.work.resolve(), a.fast))


if __name__ == "__main__":
    main()
