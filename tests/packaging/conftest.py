"""Builds shared by the packaging tests, once a session: the current tree's .deb and,
when the upgrade test is collected, the previous tagged version's, built beside it (two
processes: the machine has two cores). Both with ``--fast`` (gzip -1)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.packaging.debtools import REPO, build_deb, finish_build, start_build, tagged_source

PREVIOUS = "v0.1.0"  # the last released version: the upgrade test starts from it
#: the commit PREVIOUS tags: a clone without tags (CI's) still finds the release by it
PREVIOUS_COMMIT = "73925865c3f239e7cb82b09d8a48e4b6ce1005d3"
_previous: list[tuple[subprocess.Popen[bytes], Path] | str] = []


def _start_previous(tmp_path_factory: pytest.TempPathFactory) -> None:
    d = tmp_path_factory.mktemp("previous")
    src = tagged_source(PREVIOUS, PREVIOUS_COMMIT, d / "src")
    _previous.append(src if isinstance(src, str) else (start_build(src, d), d))


@pytest.fixture(scope="session")
def deb(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not _previous and any("test_upgrade" in item.nodeid for item in request.session.items):
        _start_previous(tmp_path_factory)
    return build_deb(REPO, tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="session")
def old_deb(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb of PREVIOUS, built by its own scripts/build_deb.py (skipped, with the
    reason, where the checkout has no such tag)."""
    if not _previous:
        _start_previous(tmp_path_factory)
    got = _previous[0]
    if isinstance(got, str):
        pytest.skip(got)
    return finish_build(*got)
