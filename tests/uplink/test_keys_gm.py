"""SM2 keys in the node key sets: made by ``safegw keys`` (a real subprocess), stored
0600 with the documented hex format, checked as a pair when loaded, published in the
public bundle as ``04 || x || y`` hex, and covered by the kid and fingerprint."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import gmssl_pyx
import pytest
import yaml

from gateway.core import gmcrypto
from uplink import keys
from uplink.keys import KeyFileError


def safegw(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_makes_sm2_keys_private_and_publishes_them(tmp_path: Path) -> None:
    r = safegw("keys", "init", "--state-dir", str(tmp_path / "st"), "--id", "gw-gm-1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    path = keys.key_path(tmp_path / "st")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())["keys"][0]
    d, pub = bytes.fromhex(doc["sm2"]), bytes.fromhex(doc["sm2_public"])
    assert len(d) == 32 and len(pub) == 65 and pub[0] == 4
    # the stored pair works with GmSSL directly: sign there, verify with the published key
    bundle = yaml.safe_load(r.stdout)
    assert bundle["keys"][0]["sm2"] == pub.hex()
    sig = gmssl_pyx.sm2_sign(d, pub[1:], b"m")
    assert gmssl_pyx.sm2_verify(bytes.fromhex(bundle["keys"][0]["sm2"])[1:], b"m", sig)
    assert doc["sm2"] not in r.stdout + r.stderr  # the secret is never printed
    # rotate keeps SM2 in the new set; the old set stays
    r = safegw("keys", "rotate", "--state-dir", str(tmp_path / "st"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    sets = keys.load_all(tmp_path / "st")
    assert len(sets) == 2 and all(s.sm2 is not None for s in sets)


def test_sm2_in_the_kid_and_a_mismatched_pair_is_refused(tmp_path: Path) -> None:
    k = keys.init(tmp_path, "gw-1")
    assert k.sm2 is not None
    assert k.kid == keys.compute_kid(k.public.x25519_raw, k.public.ed25519_raw, k.sm2.public.raw).hex()
    pub = keys.parse_public(keys.public_bundle(k))[0]
    assert pub.sm2 == k.sm2.public and pub.kid == k.kid
    # a bundle whose sm2 line was replaced no longer matches its kid: caught when read
    other = gmcrypto.SM2PrivateKey.generate().public.uncompressed.hex()
    text = keys.public_bundle(k).replace(k.sm2.public.uncompressed.hex(), other)
    with pytest.raises(KeyFileError, match="does not match its keys"):
        keys.parse_public(text)
    bad = keys.public_bundle(k).replace(k.sm2.public.uncompressed.hex(), "04" + "ab" * 64)
    with pytest.raises(KeyFileError, match="not a point of the SM2 curve"):
        keys.parse_public(bad)
    # a key file whose SM2 public half belongs to another key
    path = keys.key_path(tmp_path)
    doc = json.loads(path.read_text())
    doc["keys"][0]["sm2_public"] = other
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyFileError, match="do not belong together"):
        keys.load_all(tmp_path)


def test_check_reports_a_suite_cipher_clash_at_its_line(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f'gateway: {{id: gw-1, site: "S1", state_dir: {tmp_path / "st"}}}\n'
                   "uplink:\n"
                   "  suite: gm\n"
                   "  cipher: aes-256-gcm\n"
                   "  central_keys: [county.pub.yaml]\n")
    assert main(["check", "-c", str(cfg)]) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"{cfg}:3:") and "suite gm encrypts with SM4-GCM" in out, out
    cfg.write_text(cfg.read_text().replace("aes-256-gcm", "sm4-gcm"))
    # a central bundle from before SM2: caught by check at its line, not at the daemon's start
    keys.save_public(tmp_path / "county.pub.yaml", keys.NodeKeys.generate("county", sm2=False))
    assert main(["check", "-c", str(cfg)]) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"{cfg}:5:18: uplink.central_keys[0]: suite gm: no key set of county") \
        and "safegw keys rotate" in out, out
    keys.save_public(tmp_path / "county.pub.yaml", keys.NodeKeys.generate("county"))
    assert main(["check", "-c", str(cfg)]) == 0, capsys.readouterr().out
    cfg.write_text(cfg.read_text().replace("suite: gm", "suite: sm9"))
    assert main(["check", "-c", str(cfg)]) == 2
    out = capsys.readouterr().out
    assert f"{cfg}:3:10: uplink.suite:" in out and "gm" in out, out


def test_without_the_sm2_library_the_standard_suite_still_works(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """gmssl-pyx is optional (no ARM wheels): its absence costs the gm suite only."""
    from uplink import envelope

    made = keys.init(tmp_path / "had-sm2", "gw-2")  # a key file from when it was installed
    monkeypatch.setattr(gmcrypto, "_GM", None)
    assert not gmcrypto.sm2_available()
    assert gmcrypto.sm3(b"abc").hex().startswith("66c7f0f4")  # SM3/SM4 need nothing more
    with pytest.raises(gmcrypto.GmCryptoError, match=r"pip install 'safegw\[gm\]'"):
        gmcrypto.SM2PrivateKey.generate()
    assert made.sm2 is not None
    with pytest.raises(gmcrypto.GmCryptoError, match="gmssl-pyx"):
        made.sm2.public.verify(b"\x01" * 64, b"m")
    gw = keys.init(tmp_path / "gw", "gw-1")
    assert gw.sm2 is None  # made without, with a warning; rotate once installed
    again = keys.load_all(tmp_path / "had-sm2")[0]  # loads, its SM2 key kept unused
    assert again.kid == made.kid and again.sm2 is not None
    env = envelope.seal([], sender=gw, recipients=[again.public])
    assert envelope.open_envelope(env, recipient=again, trusted=keys.TrustStore([gw.public])).records == []
    with pytest.raises(ValueError, match="has no SM2 key"):
        envelope.seal([], sender=gw, recipients=[again.public], suite="gm")
