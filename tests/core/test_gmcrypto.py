"""gateway.core.gmcrypto against the published examples of the standards.

Sources of the vectors (each checked byte for byte, none produced by this project):

- SM3: GB/T 32905-2016 Appendix A, examples 1 ("abc") and 2 ("abcd" x 16).
- SM4: GB/T 32907-2016 Appendix A, example 1 (one block) and example 2 (the same block
  encrypted 1,000,000 times with the same key).
- SM2 (recommended curve, GB/T 32918.5-2017 / GM/T 0003.5-2012):
  * key pair d = 3945208F…C5B8, P = (09F9DF31…5020, CCEA490C…AD13) and its Z value with
    the default ID, GM/T 0003.5-2012 Annex A.2 (Z also in the Go test of
    tjfoc-style implementations, found with `search`: "Test_ZA");
  * the signature of "message digest" (r = F5A03B06…20B3, s = B1B6AA29…C1AA), Annex A;
  * the encryption of "encryption standard", Annex C, in the GM/T 0009-2012 DER form as
    OpenSSL's test/sm2_internal_test.c (openssl/openssl, sm2_crypt_test) writes it.
  The library takes no custom curve, so the Fp-256 example curve of GB/T 32918.2/.4
  Appendix A is not used (its signature is fixed by a chosen k that this API cannot take
  either); the recommended-curve examples above are checked instead.
"""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidSignature, InvalidTag

from gateway.core import gmcrypto as gm

H = bytes.fromhex

# GM/T 0003.5-2012 Annex A / C (recommended curve)
D = H("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8")
PX = H("09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020")
PY = H("CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13")
Z_DEFAULT = H("B2E14C5C79C6DF5B85F4FE7ED8DB7A262B9DA7E07CCB0EA9F4747B8CCDA8A4F3")
SIG_R = H("F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3")
SIG_S = H("B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA")
ENC_DER = H(
    "307C"
    "0220" "04EBFC718E8D1798620432268E77FEB6415E2EDE0E073C0F4F640ECD2E149A73"
    "0221" "00" "E858F9D81E5430A57B36DAAB8F950A3C64E6EE6A63094D99283AFF767E124DF0"
    "0420" "59983C18F809E262923C53AEC295D30383B54E39D609D160AFCB1908D0BD8766"
    "0413" "21886CA989CA9C7D58087307CA93092D651EFA")


def test_sm3_gbt32905_examples():
    assert gm.sm3(b"abc").hex() == ("66c7f0f462eeedd9d1f2d46bdc10e4e2"
                                    "4167c4875cf2f7a2297da02b8f4ba8e0")
    assert gm.sm3(b"abcd" * 16).hex() == ("debe9ff92275b8a138604889c18e5a4d"
                                          "6fdb70e5387e5765293dcba39c0c5732")


def test_hmac_sm3_is_rfc2104_over_sm3():
    # an independent HMAC written here from RFC 2104 §2 with the SM3 of the standard's vectors
    key, msg = b"k" * 70, b"safegw"
    k = gm.sm3(key).ljust(64, b"\0")  # keys longer than the 64-byte block are hashed first
    inner = gm.sm3(bytes(b ^ 0x36 for b in k) + msg)
    assert gm.hmac_sm3(key, msg) == gm.sm3(bytes(b ^ 0x5C for b in k) + inner)
    assert gm.hmac_sm3_verify(key, msg, gm.hmac_sm3(key, msg))
    assert not gm.hmac_sm3_verify(key, msg + b"!", gm.hmac_sm3(key, msg))


SM4_KEY = H("0123456789abcdeffedcba9876543210")


def test_sm4_gbt32907_example_1():
    assert gm.sm4_ecb_encrypt(SM4_KEY, SM4_KEY, pad=False).hex() == "681edf34d206965e86b3e94f536e4246"
    assert gm.sm4_ecb_decrypt(SM4_KEY, H("681edf34d206965e86b3e94f536e4246"), pad=False) == SM4_KEY


def test_sm4_gbt32907_example_2_million_rounds():
    # about a second: one ECB context, a block at a time, as the standard iterates
    enc = gm.Cipher(gm.algorithms.SM4(SM4_KEY), gm.modes.ECB()).encryptor()
    block = SM4_KEY
    for _ in range(1_000_000):
        block = enc.update(block)
    assert block.hex() == "595298c7c6fd271f0402f804c33d3f66"


def test_sm4_cbc_pkcs7_and_its_errors():
    iv = bytes(range(16))
    for n in (0, 1, 15, 16, 17, 100):
        data = bytes(range(n))
        ct = gm.sm4_cbc_encrypt(SM4_KEY, iv, data)
        assert len(ct) == (n // 16 + 1) * 16  # PKCS#7 always adds 1..16 bytes
        assert gm.sm4_cbc_decrypt(SM4_KEY, iv, ct) == data
    # the first block of CBC is ECB of (P1 xor IV): checks the mode against example 1
    p1 = bytes(a ^ b for a, b in zip(SM4_KEY, iv, strict=True))
    assert gm.sm4_cbc_encrypt(SM4_KEY, iv, p1)[:16].hex() == "681edf34d206965e86b3e94f536e4246"
    with pytest.raises(gm.GmCryptoError, match="padding"):
        gm.sm4_cbc_decrypt(H("00" * 16), iv, gm.sm4_cbc_encrypt(SM4_KEY, iv, b"hello"))
    with pytest.raises(gm.GmCryptoError, match="multiple of 16"):
        gm.sm4_cbc_decrypt(SM4_KEY, iv, b"x" * 17)
    with pytest.raises(gm.GmCryptoError, match="16 bytes"):
        gm.sm4_cbc_encrypt(b"short", iv, b"x")


def test_sm4_gcm_roundtrip_and_tamper():
    nonce = bytes(12)
    ct = gm.sm4_gcm_encrypt(SM4_KEY, nonce, b"payload", b"head")
    assert gm.sm4_gcm_decrypt(SM4_KEY, nonce, ct, b"head") == b"payload"
    # GCM's counter mode: the keystream block for counter 2 is ECB(J0 + 1) (NIST SP 800-38D §7.1)
    ks = gm.sm4_ecb_encrypt(SM4_KEY, nonce + b"\0\0\0\x02", pad=False)
    assert bytes(a ^ b for a, b in zip(ct[:7], ks, strict=False)) == b"payload"
    with pytest.raises(InvalidTag):
        gm.sm4_gcm_decrypt(SM4_KEY, nonce, ct, b"other head")
    with pytest.raises(InvalidTag):
        gm.sm4_gcm_decrypt(SM4_KEY, nonce, ct[:-1] + bytes([ct[-1] ^ 1]), b"head")


def test_sm2_z_value_of_the_standard():
    assert gm.sm2_z(PX + PY) == Z_DEFAULT
    assert gm.SM2PublicKey(b"\x04" + PX + PY).z() == Z_DEFAULT


def test_sm2_verifies_the_standards_signature():
    pub = gm.SM2PublicKey(PX + PY)
    pub.verify(SIG_R + SIG_S, b"message digest")
    with pytest.raises(InvalidSignature):
        pub.verify(SIG_R + SIG_S, b"message digest!")
    with pytest.raises(InvalidSignature):  # another user ID gives another Z, another e
        pub.verify(SIG_R + SIG_S, b"message digest", b"ALICE123@YAHOO.COM")
    n = gm.N.to_bytes(32, "big")
    for bad in (bytes(32) + SIG_S, n + SIG_S, SIG_R + n, SIG_R + SIG_S[:-1]):
        with pytest.raises(InvalidSignature):
            pub.verify(bad, b"message digest")


def test_sm2_decrypts_the_standards_ciphertext():
    key = gm.SM2PrivateKey(D, PX + PY)
    assert key.decrypt(ENC_DER) == b"encryption standard"
    altered = bytearray(ENC_DER)
    altered[-1] ^= 1  # C2 altered: C3 = SM3(x2 || M || y2) no longer matches
    with pytest.raises(gm.GmCryptoError, match="does not decrypt"):
        key.decrypt(bytes(altered))
    with pytest.raises(gm.GmCryptoError, match="does not decrypt"):
        gm.SM2PrivateKey.generate().decrypt(ENC_DER)


def test_sm2_sign_with_the_standards_key_verifies_and_with_any_id():
    key = gm.SM2PrivateKey(D, PX + PY)
    key.check_pair()
    sig = key.sign(b"message digest")
    assert len(sig) == 64 and sig != SIG_R + SIG_S  # k is random: a fresh signature each time
    key.public.verify(sig, b"message digest")
    sig2 = key.sign(b"m", b"ALICE123@YAHOO.COM")
    key.public.verify(sig2, b"m", b"ALICE123@YAHOO.COM")
    with pytest.raises(InvalidSignature):
        key.public.verify(sig2, b"m")


def test_sm2_encrypt_roundtrip_and_bad_keys():
    k = gm.SM2PrivateKey.generate()
    ct = k.public.encrypt(b"\x01" * 16)
    assert k.decrypt(ct) == b"\x01" * 16
    assert k.public.encrypt(b"\x01" * 16) != ct  # randomised
    with pytest.raises(gm.GmCryptoError, match="not a point"):
        gm.SM2PublicKey(PX + bytes(32))
    with pytest.raises(gm.GmCryptoError, match="64 bytes"):
        gm.SM2PublicKey(PX)
    with pytest.raises(gm.GmCryptoError, match="range"):
        gm.SM2PrivateKey(bytes(32), PX + PY)
    with pytest.raises(gm.GmCryptoError, match="do not belong"):
        gm.SM2PrivateKey(k.private_bytes(), PX + PY).check_pair()
    with pytest.raises(gm.GmCryptoError, match=r"1\.\.255"):
        k.public.encrypt(b"")


def test_sm2_signatures_interoperate_with_gmssl_for_any_user_id():
    """GmSSL computes Z itself (its sm2_sign/sm2_verify take the ID): our Z, e and r || s
    must be what it expects, for the default ID and another one, both ways."""
    import gmssl_pyx

    key = gm.SM2PrivateKey.generate()
    pub = key.public.raw
    for uid in (gm.DEFAULT_ID, b"ALICE123@YAHOO.COM"):
        sig = key.sign(b"safegw envelope", uid)
        der = gm.encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        assert gmssl_pyx.sm2_verify(pub, b"safegw envelope", der, signer_id=uid)
        r, s = gm.decode_dss_signature(gmssl_pyx.sm2_sign(key.private_bytes(), pub, b"from GmSSL",
                                                          signer_id=uid))
        key.public.verify(r.to_bytes(32, "big") + s.to_bytes(32, "big"), b"from GmSSL", uid)
