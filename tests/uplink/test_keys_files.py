"""uplink.keys: key files (0600, never overwritten), rotation, public bundles, and the
``safegw keys`` command run as a real subprocess."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from uplink import keys
from uplink.keys import KeyFileError, NodeKeys, PublicKeys, TrustStore


def test_init_makes_private_files_and_refuses_to_overwrite(tmp_path: Path) -> None:
    k = keys.init(tmp_path, "gw-1")
    path = keys.key_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        keys.init(tmp_path, "gw-1")
    assert path.read_bytes() == before
    loaded = keys.load_or_none(tmp_path)
    assert loaded is not None and loaded.kid == k.kid and loaded.id == "gw-1"
    assert keys.load_or_none(tmp_path / "elsewhere") is None


def test_kid_is_a_fingerprint_of_both_public_keys() -> None:
    a = NodeKeys.generate("n")
    assert len(a.kid) == 16 and a.kid == a.public.kid
    assert a.public.fingerprint.replace(":", "").startswith(a.kid)
    b = NodeKeys(a.id, a.x25519, NodeKeys.generate("n").ed25519)
    assert b.kid != a.kid  # changing either key changes the id


def test_bundle_round_trip_and_trust_store(tmp_path: Path) -> None:
    k = keys.init(tmp_path, "gw-7")
    text = keys.public_bundle(k)
    assert "PRIVATE" not in text.upper()
    (pub,) = keys.parse_public(text)
    assert (pub.id, pub.kid, pub.x25519_raw, pub.ed25519_raw) == (
        "gw-7", k.kid, k.public.x25519_raw, k.public.ed25519_raw)
    # central's list of several gateways: a YAML list of bundles
    other = NodeKeys.generate("gw-8")
    many = "\n".join("- " + "\n  ".join(keys.public_bundle(x).splitlines()[2:]) for x in (k, other))
    got = keys.parse_public(many)
    trust = TrustStore(got)
    assert trust("gw-7", k.kid) is not None and trust("gw-8", other.kid) is not None
    assert trust("gw-8", k.kid) is None
    keys.save_public(tmp_path / "gw7.pub", k)
    assert keys.load_public(tmp_path / "gw7.pub")[0].kid == k.kid


def test_bundle_errors_say_what_and_where(tmp_path: Path) -> None:
    k = NodeKeys.generate("gw-1")
    doc: dict[str, Any] = {"id": "gw-1", "keys": [k.public.to_dict()]}
    doc["keys"][0]["kid"] = "0" * 16
    with pytest.raises(KeyFileError, match=r"bundle: keys\[0\].*does not match"):
        keys.parse_public(json.dumps(doc), where="bundle")
    doc["keys"][0] = {"kid": k.kid, "x25519": "not base64!"}
    with pytest.raises(KeyFileError, match=r"bad public key|lacks"):
        keys.parse_public(json.dumps(doc))
    with pytest.raises(KeyFileError, match="missing node 'id'"):
        keys.parse_public("keys: []")
    p = tmp_path / "absent.pub"
    with pytest.raises(KeyFileError, match=r"absent\.pub"):
        keys.load_public(p)


def test_rotate_and_retire(tmp_path: Path) -> None:
    first = keys.init(tmp_path, "county-1")
    second = keys.rotate(tmp_path)
    sets = keys.load_all(tmp_path)
    assert [s.kid for s in sets] == [second.kid, first.kid]
    with pytest.raises(KeyFileError, match="current"):
        keys.retire(tmp_path, second.kid)
    keys.retire(tmp_path, first.kid)
    assert [s.kid for s in keys.load_all(tmp_path)] == [second.kid]
    with pytest.raises(KeyFileError, match="no key set"):
        keys.retire(tmp_path, first.kid)
    assert stat.S_IMODE(keys.key_path(tmp_path).stat().st_mode) == 0o600


def test_corrupt_key_file(tmp_path: Path) -> None:
    keys.init(tmp_path, "gw-1")
    p = keys.key_path(tmp_path)
    doc = json.loads(p.read_text())
    doc["keys"][0]["ed25519"] = doc["keys"][0]["ed25519"][:-4] + "AAA="
    p.write_text(json.dumps(doc))
    with pytest.raises(KeyFileError, match=r"kid .* does not match|bad private key"):
        keys.load_all(tmp_path)
    p.write_text("{not json")
    with pytest.raises(KeyFileError, match=r"node.json:1:2: not JSON"):
        keys.load_all(tmp_path)


# ------------------------------------------------------------------------ CLI

def safegw(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_init_show_with_gateway_config(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f'gateway: {{id: gw-cli-1, site: "S1", state_dir: {tmp_path / "state"}}}\n')
    r = safegw("keys", "init", "-c", str(cfg), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "made keys for gw-cli-1" in r.stderr
    printed = keys.parse_public(r.stdout)
    assert printed[0].id == "gw-cli-1"
    r2 = safegw("keys", "init", "-c", str(cfg), cwd=tmp_path)
    assert r2.returncode == 1 and "never overwritten" in r2.stderr
    out = tmp_path / "gw.pub"
    r3 = safegw("keys", "show", "-c", str(cfg), "-o", str(out), cwd=tmp_path)
    assert r3.returncode == 0
    assert keys.load_public(out)[0].kid == printed[0].kid == keys.parse_public(r3.stdout)[0].kid
    # what show prints is public only: no private key bytes appear anywhere in it
    priv = json.loads(keys.key_path(tmp_path / "state").read_text())["keys"][0]
    assert priv["x25519"] not in r3.stdout and priv["ed25519"] not in r3.stdout


def test_cli_state_dir_and_errors(tmp_path: Path) -> None:
    r = safegw("keys", "show", "--state-dir", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 1 and "run 'safegw keys init'" in r.stderr
    r = safegw("keys", "init", "--state-dir", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 1 and "node id" in r.stderr
    r = safegw("keys", "init", "--state-dir", str(tmp_path), "--id", "province-37", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = safegw("keys", "rotate", "--state-dir", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 0 and len(keys.parse_public(r.stdout)) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway: {id: x, site: 1}\n")
    r = safegw("keys", "show", "-c", str(bad), cwd=tmp_path)
    assert r.returncode == 2 and "bad.yaml:1:" in r.stderr


def test_cli_reads_a_central_config_leniently(tmp_path: Path) -> None:
    cfg = tmp_path / "central.yaml"
    cfg.write_text(f"central: {{id: county-9, state_dir: {tmp_path / 'c'}}}\ngateways: []\n")
    r = safegw("keys", "init", "-c", str(cfg), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert keys.load(tmp_path / "c").id == "county-9"


def test_public_keys_from_raw_match() -> None:
    k = NodeKeys.generate("x")
    p = PublicKeys.from_raw("x", k.public.x25519_raw, k.public.ed25519_raw, k.public.sm2_raw)
    assert p.kid == k.kid
    # a set made before the national suite (no SM2 key) keeps the kid it always had
    old = NodeKeys.generate("x", sm2=False)
    assert PublicKeys.from_raw("x", old.public.x25519_raw, old.public.ed25519_raw).kid == old.kid
    assert old.kid == keys.compute_kid(old.public.x25519_raw, old.public.ed25519_raw).hex()
