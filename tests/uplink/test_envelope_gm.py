"""uplink.envelope, national suite (``suite="gm"``): SM4-GCM payload, content key
SM2-encrypted to each recipient, SM2/SM3 signature; refused where not accepted.

The envelope is also opened by hand here, step by step from docs/uplink-protocol.md,
with GmSSL's own SM2 calls (``gmssl_pyx.sm2_verify`` computes Z itself, from
GB/T 32918.2 §5.5, independently of gateway.core.gmcrypto's Z) and cryptography's SM4:
so the format is what the document says, not merely what the code reads back.
"""

from __future__ import annotations

import json

import gmssl_pyx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gateway.core.batch import Batch
from gateway.core.record import EVENT, SAMPLES, Record
from uplink import codec, envelope
from uplink.envelope import BadSignature, DecryptFailed, EnvelopeError, UnknownSender, WrongSuite
from uplink.keys import NodeKeys, PublicKeys, TrustStore

T0 = 1_764_000_000_000_000_000


@pytest.fixture(scope="module")
def nodes() -> dict[str, NodeKeys]:
    out = {n: NodeKeys.generate(n) for n in ("gw-1", "county", "province", "national")}
    out["old"] = NodeKeys.generate("old", sm2=False)  # a key set made before the suite existed
    return out


def records(first: int = 100, n: int = 20) -> list[Record]:
    rng = np.random.default_rng(first)
    out = []
    for i in range(n):
        b = Batch.build(np.arange(6), T0 + i * 10**9, rng.normal(20, 1, 6).round(1), 0)
        out.append(Record(first + i, SAMPLES, b.ts_min, b.ts_max, len(b), b.to_bytes()))
    ev = json.dumps({"type": "alarm", "ts": T0 + 5, "level": "hh"}, separators=(",", ":")).encode()
    out.append(Record(first + n, EVENT, T0 + 5, T0 + 5, 1, ev))
    return out


def test_round_trip_to_every_level(nodes: dict[str, NodeKeys]) -> None:
    recs = records()
    levels = [nodes["county"], nodes["province"], nodes["national"]]
    env = envelope.seal(recs, sender=nodes["gw-1"], recipients=[k.public for k in levels], suite="gm")
    trust = TrustStore([nodes["gw-1"].public])
    for node in levels:
        opened = envelope.open_envelope(env, recipient=node, trusted=trust, suites=["gm"])
        assert opened.records == recs
        h = opened.header
        assert (h.suite, h.cipher, h.key) == ("gm", "sm4-gcm", ("gw-1", 100, 120))
        assert h.recipients == tuple(k.kid for k in levels)
    # a forwarding node checks the SM2 signature without decrypting
    assert envelope.verify(env, trust, suites=["gm"]).suite == "gm"


def _by_hand(env: bytes, gw: NodeKeys, me: NodeKeys) -> list[Record]:
    """Open a one-recipient gm envelope from the byte layout of docs/uplink-protocol.md."""
    assert env[:3] == b"SG\x02"
    body, sig = env[:-64], env[-64:]
    assert gw.sm2 is not None and me.sm2 is not None
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    assert gmssl_pyx.sm2_verify(gw.sm2.public.raw, body, der, signer_id=b"1234567812345678")
    h = envelope.peek_header(env)  # the offsets only: everything below uses the raw bytes
    at = h.header_len - (8 + 1 + len(h.wrapped[0]))
    assert env[at - 1] == 1 and env[at:at + 8].hex() == me.kid  # recipient count, kid
    wrapped = env[at + 9:h.header_len]
    assert env[at + 8] == len(wrapped)
    key = gmssl_pyx.sm2_decrypt(me.sm2.private_bytes(), wrapped)
    assert len(key) == 16
    ct = env[h.header_len:-64]
    dec = Cipher(algorithms.SM4(key), modes.GCM(bytes(12), ct[-16:])).decryptor()
    dec.authenticate_additional_data(env[:h.header_len])
    return codec.decode(dec.update(ct[:-16]) + dec.finalize())


def test_layout_opened_with_gmssl_by_hand(nodes: dict[str, NodeKeys]) -> None:
    recs = records(5, 3)
    env = envelope.seal(recs, sender=nodes["gw-1"], recipients=[nodes["county"].public], suite="gm")
    assert env[3 + len(codec.write_varint(len(env)))] & 0x0F == envelope.GM_ID
    assert _by_hand(env, nodes["gw-1"], nodes["county"]) == recs


def test_each_side_refuses_the_other_suite_clearly(nodes: dict[str, NodeKeys]) -> None:
    trust = TrustStore([nodes["gw-1"].public])
    gm = envelope.seal(records(1, 2), sender=nodes["gw-1"], recipients=[nodes["county"].public], suite="gm")
    std = envelope.seal(records(1, 2), sender=nodes["gw-1"], recipients=[nodes["county"].public])
    with pytest.raises(WrongSuite, match="uses suite gm; this node accepts x25519-ed25519"):
        envelope.open_envelope(gm, recipient=nodes["county"], trusted=trust, suites=["x25519-ed25519"])
    with pytest.raises(WrongSuite, match="uses suite x25519-ed25519; this node accepts gm"):
        envelope.verify(std, trust, suites=["gm"])
    # accepting both (a node in transition) opens both
    for env in (gm, std):
        envelope.open_envelope(env, recipient=nodes["county"], trusted=trust, suites=envelope.SUITES)


def test_keys_without_sm2(nodes: dict[str, NodeKeys]) -> None:
    with pytest.raises(ValueError, match=r"has no SM2 key.*safegw keys rotate"):
        envelope.seal([], sender=nodes["old"], recipients=[nodes["county"].public], suite="gm")
    with pytest.raises(ValueError, match=r"recipient key set.*without an SM2 key: old"):
        envelope.seal([], sender=nodes["gw-1"], recipients=[nodes["old"].public], suite="gm")
    env = envelope.seal(records(1, 1), sender=nodes["gw-1"], recipients=[nodes["county"].public], suite="gm")
    # a trust bundle that lost its sm2 line has another kid, so the origin is unknown
    p = nodes["gw-1"].public
    stripped = PublicKeys(p.id, p.x25519, p.ed25519)
    with pytest.raises(UnknownSender):
        envelope.verify(env, TrustStore([stripped]))


def test_wrong_signer_and_altered_bytes(nodes: dict[str, NodeKeys]) -> None:
    env = envelope.seal(records(1, 2), sender=nodes["gw-1"],
                        recipients=[nodes["county"].public, nodes["province"].public], suite="gm")
    trust = TrustStore([nodes["gw-1"].public])
    kinds: dict[str, int] = {}
    for i in range(len(env)):
        bad = bytearray(env)
        bad[i] ^= 0x01
        with pytest.raises(EnvelopeError) as ei:
            envelope.open_envelope(bytes(bad), recipient=nodes["province"], trusted=trust)
        kinds[type(ei.value).__name__] = kinds.get(type(ei.value).__name__, 0) + 1
    assert set(kinds) <= {"Malformed", "Unsupported", "UnknownSender", "BadSignature"}
    assert kinds["BadSignature"] > len(env) // 2
    # signed by another node's SM2 key under gw-1's name and kid: BadSignature, says SM2
    forged = env[:-64] + nodes["county"].sm2.sign(env[:-64])  # type: ignore[union-attr]
    with pytest.raises(BadSignature, match="SM2 signature of gw-1"):
        envelope.verify(forged, trust)


def test_a_signed_envelope_with_a_bad_wrapped_key_is_decrypt_failed(nodes: dict[str, NodeKeys]) -> None:
    """The origin itself wraps garbage for one recipient: signed, so only the unwrap fails."""
    env = envelope.seal(records(1, 2), sender=nodes["gw-1"],
                        recipients=[nodes["county"].public, nodes["province"].public], suite="gm")
    h = envelope.peek_header(env)
    w = h.wrapped[1]
    at = env.index(w)
    body = bytearray(env[:-64])
    body[at + len(w) - 1] ^= 0x55  # C2 of province's wrapped key altered; C3 no longer matches
    resigned = bytes(body) + nodes["gw-1"].sm2.sign(bytes(body))  # type: ignore[union-attr]
    trust = TrustStore([nodes["gw-1"].public])
    with pytest.raises(DecryptFailed, match=f"SM2-wrapped key for {nodes['province'].kid}"):
        envelope.open_envelope(resigned, recipient=nodes["province"], trusted=trust)
    # the header is the payload's associated data: nobody opens a payload under an altered header
    with pytest.raises(DecryptFailed, match="payload does not decrypt"):
        envelope.open_envelope(resigned, recipient=nodes["county"], trusted=trust)
