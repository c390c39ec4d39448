"""Helpers of the packaging tests (no tests of its own): run a command, build a tree's
.deb with that tree's own scripts/build_deb.py (a tagged tree from git archive), make a
throwaway dpkg root, run dpkg in it."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def sh(*cmd: str | Path, env: dict[str, str] | None = None, check: bool = True, cwd: Path | None = None,
       timeout: float = 300) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=timeout,
                       cwd=cwd)
    if check and r.returncode:
        raise AssertionError(f"{cmd} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def start_build(src: Path, dest: Path) -> subprocess.Popen[bytes]:
    """Start building the .deb of the tree at ``src`` with that tree's own scripts/build_deb.py."""
    dest.mkdir(parents=True, exist_ok=True)
    with (dest / "build.log").open("wb") as log:
        return subprocess.Popen(["/usr/bin/python3", str(src / "scripts/build_deb.py"), "--fast",
                                 "--out", str(dest / "out"), "--work", str(dest / "work")],
                                stdout=log, stderr=subprocess.STDOUT)


def finish_build(proc: subprocess.Popen[bytes], dest: Path) -> Path:
    proc.wait(timeout=900)
    if proc.returncode:
        raise AssertionError(f"build_deb -> {proc.returncode}\n{(dest / 'build.log').read_text()[-4000:]}")
    (built,) = (dest / "out").glob("*.deb")
    shutil.rmtree(dest / "work")
    return built


def build_deb(src: Path, dest: Path) -> Path:
    return finish_build(start_build(src, dest), dest)


def tagged_source(tag: str, commit: str, dest: Path) -> Path | str:
    """The tree of ``tag`` (git archive) in ``dest``, or why it is not available. A clone
    made without tags (a CI checkout, a recovered working copy) finds the release by
    ``commit``, the one the tag names; only a shallow clone has neither."""
    git = ["git", "-C", str(REPO)]
    if subprocess.run([*git, "rev-parse", "--git-dir"], capture_output=True).returncode:
        return f"not a git checkout: no source of {tag} here"
    for rev in (tag, commit):
        found = subprocess.run([*git, "rev-parse", "-q", "--verify", f"{rev}^{{commit}}"],
                               capture_output=True, text=True)
        if found.returncode == 0:
            if found.stdout.strip() != commit:
                return f"tag {tag} names {found.stdout.strip()}, not the release {commit}"
            break
    else:
        shallow = subprocess.run([*git, "rev-parse", "--is-shallow-repository"], capture_output=True,
                                 text=True).stdout.strip() == "true"
        why = "a shallow clone has no history" if shallow else "neither the tag nor its commit is here"
        return f"no {tag} ({commit}) here ({why}): git fetch --unshallow --tags to run the upgrade test"
    dest.mkdir(parents=True)
    archive = subprocess.run([*git, "archive", "--format=tar", commit], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def make_root(root: Path) -> None:
    """An empty dpkg root: dpkg --root installs into it; scripts act on it through DPKG_ROOT."""
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "var/lib/dpkg/updates").mkdir()
    (root / "var/lib/dpkg/status").touch()
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\ndialout:x:20:\n")


def dpkg(root: Path, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends",
              "--log=/dev/null", *args, check=check)
