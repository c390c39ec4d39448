"""Benchmark: the national suite's costs per operation, against the standard suite measured
in the same run.

Measures, on one core: SM2 signature and verification (with SM3 and the Z value, over a
typical one-minute envelope body), SM2 encryption and decryption of a 16-byte content
key, and whole envelopes sealed and opened with ``suite="gm"`` and the standard suite
(X25519/Ed25519, AES-256-GCM). An envelope a minute per gateway is the load stated:
``gateways_per_core_verify`` is how many gateways one core of a central node can check
the SM2 signatures of, at that rate (verify/s x 60); ``..._open`` the same for opening
whole envelopes (signature, key unwrap, SM4-GCM, decode).

    .venv/bin/python bench/gm.py [--rounds 5] [--seconds 0.5] [--channels 200]

Last line: JSON of medians over rounds (operations per second).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

T0 = 1_764_000_000 * 10**9


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Operations per second of ``fn`` over about ``seconds`` (at least 5 calls)."""
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds and n >= 5:
            return n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.5, help="per operation and round")
    ap.add_argument("--channels", type=int, default=200, help="channels sampled each second in the "
                    "one-minute envelope")
    a = ap.parse_args()

    from gateway.core import gmcrypto
    from gateway.core.batch import Batch
    from gateway.core.record import SAMPLES, Record
    from uplink import envelope
    from uplink.keys import NodeKeys, TrustStore

    gw, central = NodeKeys.generate("gw-1"), NodeKeys.generate("county")
    assert gw.sm2 is not None and central.sm2 is not None
    rng = np.random.default_rng(1)
    recs = []
    for s in range(60):  # one minute, one record a second
        vals = np.round(20 + rng.normal(0, 1, a.channels), 2)
        b = Batch.build(np.arange(a.channels), T0 + s * 10**9, vals, 0)
        recs.append(Record(s + 1, SAMPLES, b.ts_min, b.ts_max, len(b), b.to_bytes()))
    env_gm = envelope.seal(recs, sender=gw, recipients=[central.public], suite="gm")
    env_std = envelope.seal(recs, sender=gw, recipients=[central.public])
    body = env_gm[:-64]
    sig = gw.sm2.sign(body)
    ed_sig = gw.ed25519.sign(body)
    wrapped = central.sm2.public.encrypt(bytes(16))
    trust = TrustStore([gw.public])

    ops: dict[str, Callable[[], object]] = {
        "sm2_sign": lambda: gw.sm2.sign(body),  # type: ignore[union-attr]
        "sm2_verify": lambda: gw.sm2.public.verify(sig, body),  # type: ignore[union-attr]
        "sm2_encrypt_key": lambda: central.sm2.public.encrypt(bytes(16)),  # type: ignore[union-attr]
        "sm2_decrypt_key": lambda: central.sm2.decrypt(wrapped),  # type: ignore[union-attr]
        "ed25519_sign": lambda: gw.ed25519.sign(body),
        "ed25519_verify": lambda: gw.public.ed25519.verify(ed_sig, body),
        "seal_gm": lambda: envelope.seal(recs, sender=gw, recipients=[central.public], suite="gm"),
        "seal_std": lambda: envelope.seal(recs, sender=gw, recipients=[central.public]),
        "open_gm": lambda: envelope.open_envelope(env_gm, recipient=central, trusted=trust),
        "open_std": lambda: envelope.open_envelope(env_std, recipient=central, trusted=trust),
    }
    runs: dict[str, list[float]] = {k: [] for k in ops}
    for _ in range(a.rounds):
        for name, fn in ops.items():
            runs[name].append(rate(fn, a.seconds))
    med = {k: round(statistics.median(v), 1) for k, v in runs.items()}
    for k, v in med.items():
        print(f"{k:>16}: {v:>10,.1f}/s")
    out = {
        **{f"{k}_per_s": v for k, v in med.items()},
        "envelope_bytes_gm": len(env_gm), "envelope_bytes_std": len(env_std),
        "samples_per_envelope": 60 * a.channels,
        "gateways_per_core_verify": int(med["sm2_verify"] * 60),
        "gateways_per_core_open_gm": int(med["open_gm"] * 60),
        "gateways_per_core_open_std": int(med["open_std"] * 60),
        "sm2_backend": gmcrypto.backend(),
        "rounds": a.rounds,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
