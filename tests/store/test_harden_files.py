"""Files with personal data are the service user's alone whatever the umask: the real
daemon's journal (and its -wal/-shm), registers and attachments, and a real central
node's state and per-origin journals, created under umask 022."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.store.journal import Journal
from tests.fixtures.central import CentralSide, central_config, central_pub, make_keys
from tests.fixtures.daemon import Daemon, auth, make_tokens

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _private(folder: Path, names: list[str]) -> None:
    for name in names:
        p = folder / name
        assert p.exists(), p
        want = 0o700 if p.is_dir() else 0o600
        assert _mode(p) == want, f"{p} is {oct(_mode(p))}, not {oct(want)}"


def test_the_daemons_files_are_private(tmp_path: Path, umask_022: None) -> None:
    state = tmp_path / "state"
    tokens = make_tokens(tmp_path)
    d = Daemon(f'gateway: {{id: g, site: "S", state_dir: "{state}"}}\n'
               f'api: {{listen: "127.0.0.1:0", users_file: "{tmp_path / "users.json"}"}}\n').start()
    try:
        h = auth(tokens["operator"])
        r = httpx.post(d.url + "/registers/hidden_danger", headers=h,
                       json={"title": "t", "grade": "general", "found_on": "2026-01-01", "found_by": "x"})
        assert r.status_code == 201, r.text
        r = httpx.post(d.url + f"/registers/hidden_danger/{r.json()['id']}/attachments?filename=a.png",
                       headers=h, content=PNG)
        assert r.status_code == 201, r.text
        _private(tmp_path, ["state"])
        _private(state, ["journal.db", "journal.db-wal", "journal.db-shm", "registers.db", "registers.db-wal",
                         "attachments", f"attachments/{r.json()['sha256']}"])
    finally:
        d.stop()


def test_files_made_before_are_made_private(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "journal.db"
    Journal(path).close()
    for p in tmp_path.iterdir():
        os.chmod(p, 0o644)  # as an older version left them
    j = Journal(path)
    try:
        _private(tmp_path, [p.name for p in tmp_path.iterdir()])
    finally:
        j.close()


async def test_centrals_files_are_private(tmp_path: Path, umask_022: None) -> None:
    pub_dir = tmp_path / "pub"
    pub_dir.mkdir()
    gpub = make_keys(tmp_path / "gw-1", "gw-1", pub_dir)
    central_pub(tmp_path, "c1", pub_dir)
    c = await CentralSide(central_config(tmp_path, "c1", [{"id": "gw-1", "keys": str(gpub), "mode": "push"}])
                          ).start()
    try:
        c.node.journals.open("gw-1")
        await asyncio.sleep(0)
        folder = Path(c.cfg.node.state_dir)
        _private(folder, ["central.db", "central.db-wal", "journals", "journals/gw-1.db"])
    finally:
        await c.stop()
