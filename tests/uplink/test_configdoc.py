"""The signed config document (uplink/configdoc.py): what a gateway takes and what it
refuses, with which reason, for both suites (Ed25519; SM2/SM3 with gmssl-pyx)."""

from __future__ import annotations

import base64
import json

import pytest

from gateway.core import gmcrypto
from uplink import configdoc
from uplink.keys import NodeKeys

TEXT = "gateway: {id: gw-1, site: \"S\"}\n# 一级报警\n"
T = 1_764_000_000 * 10**9

ALGS = ["ed25519", pytest.param("sm2-sm3", marks=pytest.mark.skipif(
    not gmcrypto.sm2_available(), reason="gmssl-pyx not installed"))]


def _keys(node: str, alg: str) -> NodeKeys:
    return NodeKeys.generate(node, sm2=alg == "sm2-sm3")


def _outer(doc: bytes) -> dict:
    return json.loads(doc)


def _with_body(doc: bytes, body: bytes) -> bytes:
    d = _outer(doc)
    d["body"] = base64.b64encode(body).decode()
    return json.dumps(d).encode()


def _body(doc: bytes) -> bytes:
    return base64.b64decode(_outer(doc)["body"])


@pytest.mark.parametrize("alg", ALGS)
def test_a_signed_config_verifies_and_binds_what_it_says(alg: str) -> None:
    central = _keys("central-1", alg)
    doc = configdoc.sign(TEXT, gateway="gw-1", version=7, issued_ns=T, signer=central, alg=alg)
    sc = configdoc.verify(doc, [central.public], gateway="gw-1")
    got = (sc.gateway, sc.version, sc.issued_ns, sc.issuer, sc.alg, sc.text)
    assert got == ("gw-1", 7, T, "central-1", alg, TEXT)
    assert sc.sha256 == configdoc.sha256_text(TEXT) and sc.kid == central.kid
    head = json.loads(_body(doc).partition(b"\n")[0])
    assert head["sha256"] == sc.sha256 and head["length"] == len(TEXT.encode())


@pytest.mark.parametrize("alg", ALGS)
def test_what_is_refused_and_why(alg: str) -> None:
    central = _keys("central-1", alg)
    doc = configdoc.sign(TEXT, gateway="gw-1", version=3, issued_ns=T, signer=central, alg=alg)
    body = _body(doc)
    other = _keys("central-1", alg)  # same node name, another key: not trusted
    forged = configdoc.sign(TEXT, gateway="gw-1", version=3, issued_ns=T, signer=other, alg=alg)
    forged_as_ours = json.dumps({**_outer(forged), "kid": central.kid}).encode()
    head, _, text = body.partition(b"\n")
    cases = {
        "unknown_key": forged,
        "bad_signature": forged_as_ours,
    }
    for reason, data in cases.items():
        with pytest.raises(configdoc.ConfigDocError) as e:
            configdoc.verify(data, [central.public], gateway="gw-1")
        assert e.value.reason == reason, (reason, str(e.value))
    # a changed text, a changed version: the signature no longer matches
    for changed in (head + b"\n" + text.replace(b"gw-1, site", b"gw-1, sitx"),
                    head.replace(b'"version":3', b'"version":9') + b"\n" + text):
        with pytest.raises(configdoc.ConfigDocError) as e:
            configdoc.verify(_with_body(doc, changed), [central.public], gateway="gw-1")
        assert e.value.reason == "bad_signature" and "altered or forged" in str(e.value)
    # authentic, for another gateway
    with pytest.raises(configdoc.ConfigDocError) as e:
        configdoc.verify(doc, [central.public], gateway="gw-2")
    assert e.value.reason == "wrong_gateway" and "'gw-1'" in str(e.value) and "'gw-2'" in str(e.value)


def test_malformed_and_oversized_documents_are_refused_before_work() -> None:
    central = _keys("central-1", "ed25519")
    doc = configdoc.sign(TEXT, gateway="gw-1", version=1, issued_ns=T, signer=central)
    bad = {
        b"not json": "not JSON",
        b"[1]": "not a JSON object",
        json.dumps({**_outer(doc), "format": "x"}).encode(): "format",
        json.dumps({**_outer(doc), "alg": "rsa"}).encode(): "alg must be one of",
        json.dumps({**_outer(doc), "body": "%%%"}).encode(): "not base64",
        json.dumps({**_outer(doc), "kid": 5}).encode(): "field 'kid'",
    }
    for data, words in bad.items():
        with pytest.raises(configdoc.ConfigDocError) as e:
            configdoc.verify(data, [central.public], gateway="gw-1")
        assert e.value.reason in ("malformed", "unknown_key"), (data[:40], str(e.value))
        assert words in str(e.value), (data[:40], str(e.value))
    with pytest.raises(configdoc.ConfigDocError) as e:
        configdoc.verify(b" " * (configdoc.MAX_DOC + 1), [central.public], gateway="gw-1")
    assert e.value.reason == "too_large"
    with pytest.raises(configdoc.ConfigDocError) as e:
        configdoc.sign("x" * (configdoc.MAX_TEXT + 1), gateway="gw-1", version=1, issued_ns=T, signer=central)
    assert e.value.reason == "too_large"


@pytest.mark.skipif(not gmcrypto.sm2_available(), reason="gmssl-pyx not installed")
def test_an_sm2_signature_is_the_standard_form_over_the_domain_and_body() -> None:
    """The SM2 signature is GB/T 32918.2's over DOMAIN || body (Z_A with the default ID),
    checked here with the public key alone, apart from configdoc.verify."""
    central = _keys("central-1", "sm2-sm3")
    doc = configdoc.sign(TEXT, gateway="gw-1", version=1, issued_ns=T, signer=central, alg="sm2-sm3")
    sig = base64.b64decode(_outer(doc)["sig"])
    assert len(sig) == 64
    assert central.sm2 is not None
    central.sm2.public.verify(sig, configdoc.DOMAIN + _body(doc))
    with pytest.raises(configdoc.ConfigDocError) as e:  # an sm2 document against a key set without SM2
        configdoc.verify(doc, [NodeKeys.generate("central-1", sm2=False).public], gateway="gw-1")
    assert e.value.reason == "unknown_key"
