"""``safegw init`` (gateway/init_cmd.py) through the CLI subprocess: the config it writes
passes ``safegw check``; the keys load with the key tooling and match ``safegw keys show``;
the printed token is accepted by the token store and is stored only hashed; modes; the
refusals without ``--force``; the old files moved aside (never deleted) with it."""

from __future__ import annotations

import contextlib
import io
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.core.tokens import UserStore
from uplink import keys as keymod

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT, env=ENV, text=True,
                          capture_output=True, timeout=120, stdin=subprocess.DEVNULL)


def inproc(*args: str) -> subprocess.CompletedProcess[str]:
    """The same command in this process (the refusals need no fresh interpreter)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


def test_init_writes_a_checked_config_keys_and_a_hashed_token(tmp_path: Path) -> None:
    cfg, state = tmp_path / "etc" / "gateway.yaml", tmp_path / "var" / "safegw"
    r = cli("init", "-c", str(cfg), "--id", "gw-7", "--site", "91370100MA3C000000", "--state-dir", str(state),
            "--suite", "gm", "-y")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip().splitlines()[0]
    assert "shown only once" in r.stderr and "safegw check" in r.stderr  # the next steps
    check = cli("check", "-c", str(cfg))
    assert check.returncode == 0 and check.stdout.startswith("ok:"), check.stdout + check.stderr
    assert mode(state) == 0o700 and mode(cfg) == 0o640
    key_file = keymod.key_path(state)
    assert mode(key_file) == 0o600 and mode(key_file.parent) == 0o700
    k = keymod.load(state)
    assert k.sm2 is not None  # gmssl-pyx is installed here and the gm suite was asked for
    show = cli("keys", "show", "-c", str(cfg))
    assert show.returncode == 0 and k.kid in show.stdout
    users = state / "users.json"
    assert mode(users) == 0o600
    assert token not in users.read_text()  # stored hashed
    store = UserStore(users)
    assert [(u["name"], u["role"]) for u in store.users()] == [("admin", "admin")]
    assert store.verify(token) is not None and store.verify(token + "x") is None


def test_refuses_to_overwrite_without_force_and_moves_aside_with_it(tmp_path: Path) -> None:
    cfg, state = tmp_path / "gateway.yaml", tmp_path / "state"
    args = ["init", "-c", str(cfg), "--id", "gw-1", "--site", "S1", "--state-dir", str(state), "-y"]
    assert cli(*args).returncode == 0
    key_file = keymod.key_path(state)
    keys_before, users_before = key_file.read_bytes(), (state / "users.json").read_bytes()
    r = cli(*args)
    assert r.returncode == 1
    assert "refusing to overwrite" in r.stderr and "identify the gateway to central" in r.stderr
    assert "tokens people log in with" in r.stderr and "--force" in r.stderr
    assert key_file.read_bytes() == keys_before and (state / "users.json").read_bytes() == users_before
    r = cli(*args, "--force")
    assert r.returncode == 0, r.stderr
    assert key_file.read_bytes() != keys_before
    aside = [p for p in key_file.parent.iterdir() if ".replaced-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes() == keys_before and mode(aside[0]) == 0o600
    assert any(p.read_bytes() == users_before for p in state.glob("users.json.replaced-*"))


def test_bad_input_and_missing_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "g.yaml"
    r = inproc("init", "-c", str(cfg), "--site", "S1", "--state-dir", str(tmp_path / "s"), "-y")
    assert r.returncode == 1 and "give --id" in r.stderr
    s = str(tmp_path / "s")
    r = inproc("init", "-c", str(cfg), "--id", "bad id/..", "--site", "S1", "--state-dir", s)
    assert r.returncode == 1 and "gateway id" in r.stderr
    r = inproc("init", "-c", str(cfg), "--id", "gw", "--site", "x" * 65, "--state-dir", str(tmp_path / "s"))
    assert r.returncode == 1 and "site code" in r.stderr
    r = inproc("init", "-c", str(cfg), "--id", "gw", "--site", "S1", "--state-dir", "relative/dir")
    assert r.returncode == 1 and "absolute path" in r.stderr
    assert not cfg.exists() and not (tmp_path / "s").exists()  # nothing written on a refusal


def test_interactive_on_a_terminal(tmp_path: Path) -> None:
    """On a real pty (os.openpty) init asks for what the flags did not give."""
    import select
    import time

    cfg, state = tmp_path / "gateway.yaml", tmp_path / "state"
    master, slave = os.openpty()
    p = subprocess.Popen([sys.executable, "-m", "gateway.cli", "init", "-c", str(cfg)], cwd=ROOT, env=ENV,
                         stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    seen = b""

    def expect(text: bytes, timeout: float = 30) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while text not in seen:
            left = deadline - time.monotonic()
            assert left > 0, f"no {text!r} on the terminal; saw {seen[-500:]!r}"
            if select.select([master], [], [], left)[0]:
                try:
                    seen += os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
        assert text in seen, seen[-500:]
        seen = seen[seen.index(text) + len(text):]

    try:
        expect(b"gateway id")
        os.write(master, b"gw-tty\n")
        expect(b"site code")
        os.write(master, "站点-01\n".encode())
        expect(b"state directory [/var/lib/safegw]")
        os.write(master, f"{state}\n".encode())
        expect(b"uplink suite")
        os.write(master, b"\n")  # the default
        expect(b"shown only once")
        assert p.wait(timeout=60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
    assert cli("check", "-c", str(cfg)).returncode == 0
    assert 'site: "站点-01"' in cfg.read_text() and "id: gw-tty" in cfg.read_text()
    assert keymod.key_path(state).exists() and mode(state / "users.json") == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="handing files to another user needs root")
def test_init_as_root_hands_state_and_keys_to_the_service_user(tmp_path: Path) -> None:
    from gateway.init_cmd import run_init

    nobody = pwd.getpwnam("nobody")  # stands in for the package's safegw user: same code path
    cfg, state = tmp_path / "etc" / "gateway.yaml", tmp_path / "var" / "safegw"
    state.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.write_text("root's")
    (state / "planted").symlink_to(outside)  # must not hand over what a link points at
    _, done = run_init(config=cfg, gw_id="gw-7", site="S1", state_dir=state, suite="x25519-ed25519",
                       admin="admin", force=False, service_user="nobody")
    assert any("handed" in d for d in done), done
    made = [state, *state.rglob("*")]
    assert keymod.key_path(state) in made and state / "users.json" in made
    for p in made:
        st = p.lstat()
        assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid), p
    assert (cfg.stat().st_uid, cfg.stat().st_gid) == (0, nobody.pw_gid)
    assert outside.stat().st_uid == 0
    assert mode(keymod.key_path(state)) == 0o600 and mode(state) == 0o700
    # no such user (a developer's machine): nothing is handed over, files stay root's
    state2 = tmp_path / "var2"
    _, done = run_init(config=tmp_path / "etc2" / "g.yaml", gw_id="gw-8", site="S1", state_dir=state2,
                       suite="x25519-ed25519", admin="admin", force=False, service_user="no-such-user-x")
    assert not any("handed" in d for d in done)
    assert all(p.lstat().st_uid == 0 for p in [state2, *state2.rglob("*")])
