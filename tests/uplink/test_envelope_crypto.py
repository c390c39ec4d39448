"""uplink.envelope: seal/open with both ciphers, several recipients, forwarding checks,
and rejection of anything altered, forged or misaddressed (EnvelopeError subclasses only)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from gateway.core.batch import Batch
from gateway.core.record import EVENT, SAMPLES, Record
from uplink import codec, envelope
from uplink.envelope import (
    BadSignature,
    DecryptFailed,
    EnvelopeError,
    Malformed,
    NotForMe,
    UnknownSender,
    Unsupported,
)
from uplink.keys import NodeKeys, TrustStore

T0 = 1_764_000_000_000_000_000


@pytest.fixture(scope="module")
def nodes() -> dict[str, NodeKeys]:
    return {n: NodeKeys.generate(n) for n in ("gw-1", "gw-2", "county", "province", "national", "stranger")}


def records(first: int = 100, n: int = 30) -> list[Record]:
    rng = np.random.default_rng(first)
    out = []
    for i in range(n):
        b = Batch.build(np.arange(6), T0 + i * 10**9, rng.normal(20, 1, 6).round(1), 0)
        out.append(Record(first + i, SAMPLES, b.ts_min, b.ts_max, len(b), b.to_bytes()))
    ev = json.dumps({"type": "alarm", "ts": T0 + 5, "level": "hh"}, separators=(",", ":")).encode()
    out.append(Record(first + n, EVENT, T0 + 5, T0 + 5, 1, ev))
    return out


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "sm4-gcm"])
def test_round_trip_to_every_level(nodes: dict[str, NodeKeys], cipher: str) -> None:
    recs = records()
    levels = [nodes["county"], nodes["province"], nodes["national"]]
    env = envelope.seal(recs, sender=nodes["gw-1"], recipients=[k.public for k in levels], cipher=cipher)
    trust = TrustStore([nodes["gw-1"].public])
    for node in levels:
        opened = envelope.open_envelope(env, recipient=node, trusted=trust)
        assert opened.records == recs
        h = opened.header
        assert (h.origin, h.first_seq, h.last_seq) == ("gw-1", 100, 130) == h.key
        assert (h.n_records, h.n_samples, h.cipher) == (31, 180, cipher)
        assert (h.ts_min, h.ts_max) == (T0, T0 + 29 * 10**9)
        assert h.recipients == tuple(k.kid for k in levels)
        assert h.sender_kid == nodes["gw-1"].kid
        assert h.size == len(env)


def test_forwarding_node_verifies_without_decrypting(nodes: dict[str, NodeKeys]) -> None:
    env = envelope.seal(records(), sender=nodes["gw-1"], recipients=[nodes["national"].public])
    # the county is not a recipient, but it can prove origin and integrity before forwarding
    h = envelope.verify(env, TrustStore([nodes["gw-1"].public]))
    assert h.origin == "gw-1" and h.n_samples == 180
    with pytest.raises(NotForMe, match=nodes["county"].kid):
        envelope.open_envelope(env, recipient=nodes["county"], trusted=TrustStore([nodes["gw-1"].public]))


def test_peek_header_needs_no_keys(nodes: dict[str, NodeKeys]) -> None:
    env = envelope.seal(records(7, 3), sender=nodes["gw-2"], recipients=[nodes["county"].public])
    h = envelope.peek_header(env)
    assert (h.origin, h.first_seq, h.last_seq, h.n_records) == ("gw-2", 7, 10, 4)
    assert envelope.envelope_size(env[: envelope.SIZE_PREFIX]) == len(env)


def test_empty_envelope(nodes: dict[str, NodeKeys]) -> None:
    env = envelope.seal([], sender=nodes["gw-1"], recipients=[nodes["county"].public])
    o = envelope.open_envelope(env, recipient=nodes["county"], trusted=TrustStore([nodes["gw-1"].public]))
    assert o.records == [] and o.header.key == ("gw-1", 0, 0)


def test_every_byte_flipped_is_rejected(nodes: dict[str, NodeKeys]) -> None:
    env = envelope.seal(records(1, 4), sender=nodes["gw-1"],
                        recipients=[nodes["county"].public, nodes["province"].public])
    trust = TrustStore([nodes["gw-1"].public])
    kinds: dict[str, int] = {}
    for i in range(len(env)):
        for bit in (0x01, 0x80):
            bad = bytearray(env)
            bad[i] ^= bit
            with pytest.raises(EnvelopeError) as ei:
                envelope.open_envelope(bytes(bad), recipient=nodes["province"], trusted=trust)
            kinds[type(ei.value).__name__] = kinds.get(type(ei.value).__name__, 0) + 1
            # a forwarding node's check catches it too
            with pytest.raises(EnvelopeError):
                envelope.verify(bytes(bad), trust)
    assert set(kinds) <= {"Malformed", "Unsupported", "UnknownSender", "BadSignature"}
    assert kinds["BadSignature"] > len(env)  # most flips land in signed bytes


def test_truncated_and_extended_envelopes_rejected(nodes: dict[str, NodeKeys]) -> None:
    env = envelope.seal(records(1, 2), sender=nodes["gw-1"], recipients=[nodes["county"].public])
    trust = TrustStore([nodes["gw-1"].public])
    for cut in range(len(env)):
        with pytest.raises((Malformed, Unsupported)):
            envelope.open_envelope(env[:cut], recipient=nodes["county"], trusted=trust)
    with pytest.raises(Malformed, match="length"):
        envelope.open_envelope(env + b"\x00", recipient=nodes["county"], trusted=trust)


def _offsets(env: bytes) -> dict[str, int]:
    """Where the fields are (docs/uplink-protocol.md, version 2): after the varint length."""
    i = 3
    while env[i] & 0x80:
        i += 1
    params = i + 1
    origin_len = env[params + 1]
    kid = params + 2 + origin_len
    return {"version": 2, "params": params, "kid": kid, "first_seq": kid + 8}


def test_header_change_with_fixed_length_rejected(nodes: dict[str, NodeKeys]) -> None:
    """Rewriting the sequence range (e.g. to dodge central's dedup) breaks the signature."""
    env = bytearray(envelope.seal(records(), sender=nodes["gw-1"], recipients=[nodes["county"].public]))
    at = _offsets(bytes(env))["first_seq"]
    assert env[at:at + 2] == bytes([200, 1])  # zigzag(100) as a varint
    env[at:at + 2] = bytes([0x90, 0x4E])  # zigzag(5000), same length
    trust = TrustStore([nodes["gw-1"].public])
    with pytest.raises(BadSignature, match=r"gw-1 5000\.\.5030"):
        envelope.open_envelope(bytes(env), recipient=nodes["county"], trusted=trust)


def test_wrong_or_unknown_sender(nodes: dict[str, NodeKeys]) -> None:
    env = envelope.seal(records(), sender=nodes["gw-1"], recipients=[nodes["county"].public])
    with pytest.raises(UnknownSender, match="gw-1"):
        envelope.open_envelope(env, recipient=nodes["county"], trusted=TrustStore([nodes["gw-2"].public]))
    # an impostor signs as gw-1 with its own key set: its kid is not gw-1's
    impostor = NodeKeys(  # the stranger's keys under gw-1's name
        "gw-1", nodes["stranger"].x25519, nodes["stranger"].ed25519)
    forged = envelope.seal(records(), sender=impostor, recipients=[nodes["county"].public])
    with pytest.raises(UnknownSender):
        envelope.open_envelope(forged, recipient=nodes["county"], trusted=TrustStore([nodes["gw-1"].public]))
    # the impostor writes gw-1's real kid in the header: the signature gives it away
    kid_at = _offsets(forged)["kid"]
    assert forged[kid_at:kid_at + 8] == impostor.kid_bytes
    forged = forged[:kid_at] + nodes["gw-1"].kid_bytes + forged[kid_at + 8:]
    with pytest.raises(BadSignature):
        envelope.open_envelope(forged, recipient=nodes["county"], trusted=TrustStore([nodes["gw-1"].public]))


def test_spliced_payload_from_another_envelope(nodes: dict[str, NodeKeys]) -> None:
    a = envelope.seal(records(1, 5), sender=nodes["gw-1"], recipients=[nodes["county"].public])
    b = envelope.seal(records(1, 5), sender=nodes["gw-1"], recipients=[nodes["county"].public])
    ha = envelope.peek_header(a)
    spliced = a[: ha.header_len] + b[ha.header_len:]
    with pytest.raises(BadSignature):
        envelope.open_envelope(spliced, recipient=nodes["county"], trusted=TrustStore([nodes["gw-1"].public]))


def test_key_rotation_old_kid_still_opens(nodes: dict[str, NodeKeys]) -> None:
    old = nodes["county"]
    new = NodeKeys.generate("county")
    env_old = envelope.seal(records(), sender=nodes["gw-1"], recipients=[old.public])
    env_new = envelope.seal(records(), sender=nodes["gw-1"], recipients=[new.public])
    trust = TrustStore([nodes["gw-1"].public])
    for env in (env_old, env_new):
        assert envelope.open_envelope(env, recipient=[new, old], trusted=trust).header.n_samples == 180
    with pytest.raises(NotForMe):
        envelope.open_envelope(env_old, recipient=[new], trusted=trust)


def test_signed_garbage_from_a_trusted_sender_is_decrypt_failed(nodes: dict[str, NodeKeys]) -> None:
    """A sender bug (ciphertext its own key does not open) is told apart from tampering."""
    env = bytearray(envelope.seal(records(1, 3), sender=nodes["gw-1"], recipients=[nodes["county"].public]))
    h = envelope.peek_header(bytes(env))
    env[h.header_len] ^= 1  # ciphertext byte, then re-sign as the (buggy but genuine) sender
    body = bytes(env[: -envelope.SIG_LEN])
    resigned = body + nodes["gw-1"].ed25519.sign(body)
    trust = TrustStore([nodes["gw-1"].public])
    with pytest.raises(DecryptFailed, match="does not decrypt"):
        envelope.open_envelope(resigned, recipient=nodes["county"], trusted=trust)


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "sm4-gcm"])
def test_a_sender_cannot_give_recipients_different_keys(nodes: dict[str, NodeKeys], cipher: str) -> None:
    """The key commitment: a (buggy or malicious) sender that wraps another key for the
    second recipient, and signs that, is caught by the second recipient."""
    env = envelope.seal(records(1, 3), sender=nodes["gw-1"],
                        recipients=[nodes["county"].public, nodes["province"].public], cipher=cipher)
    h = envelope.peek_header(env)
    assert len(h.wrapped[1]) == (32 if cipher == "aes-256-gcm" else 16) and h.wrapped[0] == b""
    at = h.header_len - len(h.key_commit) - len(h.wrapped[1])  # the second recipient's wrapped key
    head = bytearray(env[:h.header_len])
    head[at] ^= 1
    # the sender knows the payload key: here the first recipient's derived key
    county = nodes["county"]
    cid = envelope.CIPHERS[cipher]
    shared = county.x25519.exchange(X25519PublicKey.from_public_bytes(h.ephemeral))
    key = envelope._derive(cid, shared, h.salt, h.ephemeral, county.public.x25519_raw, county.kid_bytes)
    payload = codec.encode(records(1, 3))
    body = bytes(head) + envelope._encrypt(cid, key, envelope._NONCE, payload, bytes(head))
    resigned = body + nodes["gw-1"].ed25519.sign(body)
    trust = TrustStore([nodes["gw-1"].public])
    assert envelope.open_envelope(resigned, recipient=nodes["county"], trusted=trust).records == records(1, 3)
    with pytest.raises(DecryptFailed, match="commitment"):
        envelope.open_envelope(resigned, recipient=nodes["province"], trusted=trust)


def test_unsupported_version_cipher_and_codec(nodes: dict[str, NodeKeys]) -> None:
    env = envelope.seal(records(1, 2), sender=nodes["gw-1"], recipients=[nodes["county"].public])
    at = _offsets(env)
    cases = ((2, 3, "version"), (at["params"], 0x29, "cipher"), (at["params"], 0x11, "codec"))
    for offset, value, what in cases:
        bad = bytearray(env)
        bad[offset] = value
        with pytest.raises(Unsupported, match=what):
            envelope.peek_header(bytes(bad))
    with pytest.raises(Malformed, match="magic"):
        envelope.peek_header(b"HTTP/1.1 200 OK\r\n" + env)


def test_version_1_envelopes_are_refused_clearly(nodes: dict[str, NodeKeys]) -> None:
    """The 141-byte fixed header of version 1 (magic SGWE): Unsupported, saying so."""
    old = b"SGWE\x01\x01\x01\x00" + struct.pack("<I", 300) + bytes(288)
    for call in (envelope.peek_header, envelope.envelope_size):
        with pytest.raises(Unsupported, match="version 1"):
            call(old)
    with pytest.raises(Unsupported, match="version 1"):
        envelope.open_envelope(old, recipient=nodes["county"], trusted=TrustStore([nodes["gw-1"].public]))


def test_seal_argument_errors(nodes: dict[str, NodeKeys]) -> None:
    with pytest.raises(ValueError, match="cipher"):
        envelope.seal([], sender=nodes["gw-1"], recipients=[nodes["county"].public], cipher="des")
    with pytest.raises(ValueError, match="recipient"):
        envelope.seal([], sender=nodes["gw-1"], recipients=[])
    with pytest.raises(ValueError, match="twice"):
        envelope.seal([], sender=nodes["gw-1"], recipients=[nodes["county"].public] * 2)


def test_sizes_are_small(nodes: dict[str, NodeKeys]) -> None:
    """The fixed cost of an envelope: what a 60 s envelope pays on top of its payload."""
    env = envelope.seal([], sender=nodes["gw-1"], recipients=[nodes["county"].public])
    payload = len(codec.encode([]))
    # magic 2, version 1, length 2, cipher/codec 1, origin 1 + 4, kid 8, seqs/counts/times 6,
    # salt 16, ephemeral 32, recipients 1 + 8, tag 16, signature 64
    assert len(env) - payload == 162
    env3 = envelope.seal([], sender=nodes["gw-1"], recipients=[nodes[n].public for n in
                                                              ("county", "province", "national")])
    # each further recipient: kid 8 + wrapped key 32; with several, a 16-byte key commitment
    assert len(env3) - len(env) == 2 * (8 + 32) + 16
    two = [nodes[n].public for n in ("county", "province")]
    sm4 = envelope.seal([], sender=nodes["gw-1"], recipients=two, cipher="sm4-gcm")
    assert len(sm4) - len(env) == 8 + 16 + 16
