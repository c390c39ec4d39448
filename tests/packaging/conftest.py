"""Builds shared by the packaging tests, once a session: the current tree's .deb
(``--fast``: gzip -1). The upgrade test builds the tagged version's itself."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.packaging.debtools import REPO, build_deb


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_deb(REPO, tmp_path_factory.mktemp("deb"))
