"""Helpers of the packaging tests (no tests of its own): run a command, build a tree's
.deb with that tree's own scripts/build_deb.py, make a throwaway dpkg root, run dpkg in it."""
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


def build_deb(src: Path, dest: Path) -> Path:
    """The .deb of the tree at ``src``, built by that tree's own scripts/build_deb.py."""
    sh("/usr/bin/python3", src / "scripts/build_deb.py", "--fast", "--out", dest / "out",
       "--work", dest / "work", timeout=600)
    (built,) = (dest / "out").glob("*.deb")
    shutil.rmtree(dest / "work")
    return built



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
