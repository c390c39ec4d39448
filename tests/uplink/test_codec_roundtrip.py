"""uplink.codec: lossless round trips of every record kind, edge values, compactness,
and rejection of corrupt input (only CodecError may come out)."""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.batch import Batch
from gateway.core.record import EVENT, SAMPLES, Record
from uplink import codec
from uplink.codec import samples

T0 = 1_764_000_000_000_000_000  # 2025-11, in ns


def sample_record(seq: int, b: Batch) -> Record:
    return Record(seq, SAMPLES, b.ts_min, b.ts_max, len(b), b.to_bytes())


def event_record(seq: int, ev: dict) -> Record:
    data = json.dumps(ev, separators=(",", ":"), ensure_ascii=False).encode()
    return Record(seq, EVENT, ev["ts"], ev["ts"], 1, data)


def f64(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def roundtrip(records: list[Record]) -> bytes:
    enc = codec.encode(records)
    dec = codec.decode(enc)
    assert dec == records  # dataclass equality: data bytes compared exactly, NaN bits included
    return enc


# ------------------------------------------------------------------ hand-made cases

def test_empty_list() -> None:
    assert codec.decode(codec.encode([])) == []


def test_empty_batch_and_events_keep_their_fields() -> None:
    recs = [
        Record(7, SAMPLES, 0, 0, 0, b""),  # an empty poll
        event_record(8, {"type": "gap", "ts": T0, "first": 1, "last": 6, "samples": 600}),
        event_record(9, {"type": "alarm", "ts": T0 + 5, "channel": "GT-101", "level": "hh", "value": 41.2}),
        event_record(10, {"type": "register", "ts": T0 + 9, "table": "hidden_danger", "id": 3,
                          "change": {"state": "rectified"}, "by": "张三"}),
        Record(11, 99, -5, 17, 3, b"\x00\xff future kind \n\r"),  # a kind this version does not know
        Record(12, EVENT, T0, T0, 1, b'{ "type": "alarm", "ts": 1764000000000000000 }'),  # not canonical
        Record(13, EVENT, 5, 5, 1, b'{"type":"x","ts":5,"ts":5}'),  # duplicate key
        Record(14, EVENT, T0, T0, 1, b"not json at all"),
        Record(15, EVENT, 0, 0, 1, b"[1,2,3]"),  # JSON, but not an object
    ]
    roundtrip(recs)
    weird: list[dict[str, Any]] = [
             {"type": "register", "ts": T0, "data": {"a": [1, 2.5, None, {"b": "\u00e9\n"}]}, "big": 2**70,
              "neg": -(2**63), "f": float("nan"), "g": -0.0, "inf": float("inf"), "t": True, "n": None},
             {"type": "register", "ts": T0 - 10**18, "big": -(2**64), "f": 1e-310, "extra": "x"},
             {"ts": "not an int", "type": "odd"},  # travels opaque: ts_min cannot match
             {"type": "alarm", "ts": T0, "value": 43.400000000000006, "channel": "GT-101"},
             {"type": "alarm", "ts": T0 + 1, "value": 43.4, "channel": "GT-101"}]
    recs2 = []
    for i, ev in enumerate(weird):
        data = json.dumps(ev, separators=(",", ":"), ensure_ascii=False).encode()
        ts = ev["ts"] if isinstance(ev["ts"], int) else 0
        recs2.append(Record(i + 1, EVENT, ts, ts, 1, data))
    roundtrip(recs2)


def test_float_edge_values_are_bit_exact() -> None:
    vals = [0.0, -0.0, np.inf, -np.inf, np.nan, f64(0x7FF8_0000_0000_0001), f64(0xFFF0_0000_DEAD_BEEF),
            f64(0x0000_0000_0000_0001), 5e-324, 1.7976931348623157e308, -1.7976931348623157e308,
            0.1 * 3, 0.3, 1e300, 123456789.123, float(2**53), float(2**53 + 2), -1.5]
    b = Batch.build(np.arange(len(vals)), T0, vals, 0)
    enc = roundtrip([sample_record(1, b)])
    # and a series per channel, so each value is also someone's predecessor
    ch = np.tile(np.arange(3), len(vals))
    v = np.repeat(np.array(vals), 3)
    roundtrip([sample_record(1, Batch.build(ch, T0 + np.arange(len(ch)), v, 0))])
    assert len(enc) < 400


def test_timestamps_huge_gaps_out_of_order_and_extremes() -> None:
    i64 = np.iinfo(np.int64)
    ts = np.array([T0, T0 - 10**18, i64.max, i64.min, 0, -1, T0 + 1, T0, i64.max, i64.min + 1])
    b = Batch.build(np.zeros(len(ts), np.int32), ts, np.arange(len(ts)) * 0.5, 0)
    roundtrip([sample_record(1, b)])
    # records of one device far apart and backwards in time
    recs = [sample_record(i + 1, Batch.build([0, 1], t, [1.0, 2.0], 0))
            for i, t in enumerate([T0, T0 + 86400 * 10**9 * 365, T0 - 10**17, i64.min, i64.max, 0])]
    roundtrip(recs)


def test_sequence_numbers_kept_even_when_not_contiguous() -> None:
    b = Batch.build([0], T0, [1.0], 0)
    roundtrip([sample_record(s, b) for s in (5, 6, 9, 2**62, 3, 1, 2**63 - 1)])


def test_channel_ids_negative_large_and_repeated() -> None:
    i32 = np.iinfo(np.int32)
    b = Batch.build([i32.max, i32.min, 0, -1, 7, 7, 7, i32.max], T0, np.arange(8) / 10,
                    [0, 0x81, 0x40, 0, 0, 1, 2, 255])
    roundtrip([sample_record(1, b), sample_record(2, b)])
    big = Batch.build(np.arange(70_000) * 3, T0, 1.0, 0)  # beyond the uint16 fast path
    roundtrip([sample_record(3, big)])


def test_inconsistent_sample_records_travel_opaque() -> None:
    b = Batch.build([0, 1], [T0, T0 + 5], [1.0, 2.0], 0)
    recs = [
        Record(1, SAMPLES, T0 - 1, T0 + 5, 2, b.to_bytes()),  # ts_min does not match
        Record(2, SAMPLES, T0, T0 + 5, 3, b.to_bytes()),  # n does not match
        Record(3, SAMPLES, T0, T0 + 5, 2, b.to_bytes()[:-1]),  # truncated
        Record(4, SAMPLES, T0, T0 + 5, 2, b.to_bytes()),  # fine
    ]
    roundtrip(recs)


def test_value_modes_cover_driver_outputs() -> None:
    rng = np.random.default_rng(3)
    raw = rng.integers(-32768, 32767, 500)
    cases = {
        "raw*0.1": raw * 0.1,  # how the Modbus driver scales int16 registers
        "raw/100": raw / 100,
        "float32 registers": (raw / 100).astype(np.float32).astype(np.float64),
        "integers": raw.astype(np.float64),
        "micro": raw * 1e-6,
        "random doubles": rng.standard_normal(500),
        "nan run": np.full(500, np.nan),
    }
    for name, v in cases.items():
        b = Batch.build(np.zeros(500, np.int32), T0 + np.arange(500) * 10**9, v, 0)
        enc = roundtrip([sample_record(1, b)])
        if name != "random doubles":
            # 16-bit integers with ~15 bits of entropy each: about 2 bytes a sample at most
            assert len(enc) < 2.3 * 500 + 120, (name, len(enc))


def test_mixed_grid_with_off_grid_outliers() -> None:
    v = np.round(np.linspace(0, 50, 1000), 1)
    v[::97] = np.pi  # off the 0.1 grid: exceptions
    v[5] = np.nan
    v[6] = -0.0
    roundtrip([sample_record(1, Batch.build(np.arange(1000) % 4, T0, v, 0))])


def test_first_guess_wrong_is_corrected() -> None:
    # integers at the sampled positions, tenths elsewhere: the full check must notice
    v = np.arange(1000, dtype=np.float64)
    v[1::2] += 0.5
    enc = roundtrip([sample_record(1, Batch.build(np.zeros(1000, np.int32), T0, v, 0))])
    assert len(enc) < 600


def test_constant_channels_on_a_steady_clock_cost_next_to_nothing() -> None:
    """Groups whose residuals are all zero (bools that do not move, an exact poll clock)
    send no Rice bits: 1,000 samples in well under 100 bytes."""
    recs = [sample_record(i + 1, Batch.build([7, 8], T0 + i * 10**9, [0.0, 1.0], 0)) for i in range(500)]
    assert len(roundtrip(recs)) < 100


def test_remembered_modes_never_cost_size() -> None:
    """The encoder starts from each channel's previous mode: when the channel's values
    change resolution (or kind), it must notice and choose again."""
    rng = np.random.default_rng(4)
    ch = np.full(600, 424242, np.int32)  # a channel id no other test uses
    ts = T0 + np.arange(600) * 10**9
    fine = np.round(rng.normal(50, 5, 600), 3)  # thousandths
    coarse = np.round(rng.normal(50, 5, 600))  # integers now
    scaled = rng.integers(0, 4000, 600) * 0.1  # raw * 0.1, as a driver scales
    for v in (fine, coarse, scaled, fine):
        samples._MODE_CACHE.pop(424242, None)
        fresh = codec.encode([sample_record(1, Batch.build(ch, ts, v, 0))])
        after = roundtrip([sample_record(1, Batch.build(ch, ts, v, 0))])  # remembered mode now
        # a remembered mode from the previous kind of data, then this data
        assert len(after) <= len(fresh) + 2
    for prev, v in ((fine, coarse), (coarse, fine), (scaled, coarse), (fine, scaled)):
        samples._MODE_CACHE.pop(424242, None)
        codec.encode([sample_record(1, Batch.build(ch, ts, prev, 0))])
        switched = roundtrip([sample_record(1, Batch.build(ch, ts, v, 0))])
        samples._MODE_CACHE.pop(424242, None)
        assert len(switched) <= len(codec.encode([sample_record(1, Batch.build(ch, ts, v, 0))])) + 2


def test_typical_plant_minute_is_compact() -> None:
    """16 channels, 3 devices polled each second, jittered ns timestamps: ~1 byte a sample."""
    rng = np.random.default_rng(7)
    devs = [np.arange(0, 5), np.arange(5, 10), np.arange(10, 16)]
    recs = []
    seq = 1
    base = rng.uniform(0, 100, 16).round(1)
    for s in range(60):
        for d in devs:
            v = np.round((base[d] + rng.normal(0, 0.2, len(d))) * 10) * 0.1
            ts = T0 + s * 10**9 + int(rng.integers(0, 2_000_000))
            recs.append(sample_record(seq, Batch.build(d, ts, v, 0)))
            seq += 1
    enc = roundtrip(recs)
    per_sample = len(enc) / (60 * 16)
    assert per_sample < 1.45, per_sample


def alarm(seq_no: int, ts: int, ch: int, **kw: object) -> dict:
    """An event shaped like rules.events.alarm_event (key order included)."""
    names = ["GT-101", "GT-102", "AT-201", "R201.pressure", "LSHH-101"]
    kinds = ["gas", "gas", "gas", "pressure", "level"]
    units = ["%LEL", "%LEL", "ppm", "MPa", None]
    ev = {"type": "alarm", "id": f"safegw-{seq_no}", "ts": ts, "channel": names[ch], "index": ch,
          "kind": kinds[ch], "unit": units[ch], "rule": "limit", "level": "h", "code": 1,
          "transition": "raise", "state": "active_unacked", "priority": "medium",
          "value": round(20 + ch + seq_no * 0.1, 1), "limit": 20.0, "who": None}
    ev.update(kw)
    return ev


def test_alarm_events_between_samples_are_compact_and_exact() -> None:
    """Alarm events refer to the time of the sample that raised them; ids count up."""
    rng = np.random.default_rng(11)
    recs: list[Record] = []
    seq = 1
    n_ev = 0
    for s in range(60):
        ts = T0 + s * 10**9 + int(rng.integers(0, 10**6))
        # an OPC-UA-like record: every sample its own time
        b = Batch.build(np.arange(5), ts + np.arange(5) * 20_000, rng.normal(20, 1, 5).round(1), 0)
        recs.append(sample_record(seq, b))
        seq += 1
        if s % 4 == 0:
            ch = int(rng.integers(0, 5))
            clear = s % 8 == 4
            t_ev = int(b.ts[ch]) if ch else ts  # a sample's own time, or the record's
            cleared = {"code": 0, "transition": "clear", "state": "cleared_unacked"}
            ev = alarm(1000 + n_ev, t_ev, ch, **(cleared if clear else {}))
            recs.append(event_record(seq, ev))
            seq += 1
            n_ev += 1
    # a maintenance event (id null, a reason), a shelved one, an event whose time is its own
    recs.append(event_record(seq, alarm(0, T0 + 7, 1, id=None, rule="maintenance", reason="calibration")))
    recs.append(event_record(seq + 1, alarm(2000, T0 + 8, 2, shelved=True, value=float("nan"), limit=-0.0)))
    recs.append(event_record(seq + 2, alarm(2001, T0 - 10**15, 3, value=1.6979999542236328, who="张三")))
    with_events = roundtrip(recs)
    without = codec.encode([r for r in recs if r.kind == SAMPLES])
    per_event = (len(with_events) - len(without)) / (n_ev + 3)
    assert per_event < 28, per_event  # ~270 bytes of JSON each; format 1 took ~42


def test_event_whose_ts_key_differs_from_the_record_time() -> None:
    recs = [Record(1, EVENT, 5, 5, 1, b'{"type":"x","ts":7}'),
            Record(2, EVENT, 9, 9, 1, b'{"type":"x","ts":9,"id":"a-1"}'),
            Record(3, EVENT, -(2**63), -(2**63), 1, b'{"ts":null,"id":"a-3","n":[1,{"b":2}]}'),
            Record(4, EVENT, 2**63 - 1, 2**63 - 1, 1, b'{"type":"x","ts":1.5e300,"id":"a-2"}')]
    roundtrip(recs)


def test_event_ids_out_of_sequence_and_shared_prefix_edge_cases() -> None:
    ids = ["gw-7", "gw-5", "gw-100000000000000000", "gw-0", "gw-6"]
    recs = [event_record(i + 1, {"type": "alarm", "id": v, "ts": T0 + i}) for i, v in enumerate(ids)]
    roundtrip(recs)
    ids = ["a-01", "a-02", "a-1"]
    recs = [event_record(i + 1, {"type": "alarm", "id": v, "ts": T0}) for i, v in enumerate(ids)]
    roundtrip(recs)


# ------------------------------------------------------------------------ hypothesis

any_float = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(0, 2**64 - 1).map(f64),  # every bit pattern, NaN payloads included
    st.integers(-10**7, 10**7).map(lambda q: q * 0.1),
    st.integers(-10**7, 10**7).map(lambda q: q / 1000),
    st.integers(-10**5, 10**5).map(lambda q: float(np.float32(q / 100))),
)
i64s = st.integers(-(2**63), 2**63 - 1)


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    n = draw(st.integers(0, 40))
    chans = draw(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=6))
    ch = [draw(st.sampled_from(chans)) for _ in range(n)]
    if draw(st.booleans()):
        ts: list[int] | int = draw(i64s)
    else:
        ts = [draw(i64s) for _ in range(n)]
    vals = [draw(any_float) for _ in range(n)]
    q = [draw(st.integers(0, 255)) for _ in range(n)]
    return Batch.build(ch, ts, vals, q)


@st.composite
def record_lists(draw: st.DrawFn) -> list[Record]:
    out = []
    seq = draw(st.integers(1, 2**62))
    for _ in range(draw(st.integers(0, 12))):
        step = draw(st.sampled_from([1, 1, 1, 2, 1000]))
        jump = not draw(st.integers(0, 9)) or seq + step >= 2**63
        seq = draw(st.integers(0, 2**63 - 1)) if jump else seq + step
        kind = draw(st.sampled_from([SAMPLES, SAMPLES, SAMPLES, EVENT, 3]))
        if kind == SAMPLES:
            b = draw(batches())
            if draw(st.integers(0, 9)) == 0:  # fields that disagree with the batch
                out.append(Record(seq, kind, draw(i64s), draw(i64s), draw(st.integers(0, 99)), b.to_bytes()))
            else:
                out.append(sample_record(seq, b))
        elif kind == EVENT:
            ts = draw(i64s)
            ev = {"type": draw(st.sampled_from(["alarm", "gap", "register"])), "ts": ts,
                  "text": draw(st.text(max_size=20))}
            out.append(event_record(seq, ev))
        else:
            out.append(Record(seq, kind, draw(i64s), draw(i64s), draw(st.integers(0, 2**31)),
                              draw(st.binary(max_size=50))))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record_lists())
def test_roundtrip_any_records(records: list[Record]) -> None:
    roundtrip(records)


@settings(max_examples=100, deadline=None)
@given(st.lists(any_float, min_size=1, max_size=300), st.integers(1, 5))
def test_roundtrip_series(values: list[float], n_ch: int) -> None:
    ch = np.arange(len(values)) % n_ch
    b = Batch.build(ch, T0 + np.arange(len(values)) * 10**9, values, 0)
    roundtrip([sample_record(1, b)])


event_values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**64), 2**64), any_float,
    st.sampled_from(["alarm", "gas", "%LEL", "h", "raise", "clear", "GT-101", "GT-102", "gw-1", ""]),
    st.text(max_size=8), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 3), st.booleans(), st.dictionaries(
    st.sampled_from(["type", "id", "channel", "index", "value", "limit", "x"]), event_values, max_size=6)),
    min_size=1, max_size=12))
def test_roundtrip_any_events_between_samples(items: list[tuple[int, bool, dict]]) -> None:
    recs: list[Record] = []
    seq = 1
    for gap, sample_time, fields in items:
        b = Batch.build(np.arange(3), T0 + seq * 1000 + np.arange(3), [1.0, 2.0, 3.0], 0)
        recs.append(sample_record(seq, b))
        ts = int(b.ts[gap % 3]) if sample_time else T0 - gap
        ev = {"type": "alarm", "ts": ts, **fields}
        for _ in range(gap):
            seq += 1
            recs.append(event_record(seq, {**ev, "ts": ts + seq}))
        seq += 1
        recs.append(event_record(seq, ev))
        seq += 1
    roundtrip(recs)


# ------------------------------------------------------------------ corrupt input

def _plant_records() -> list[Record]:
    rng = np.random.default_rng(1)
    recs = [sample_record(i + 1, Batch.build(np.arange(4), T0 + i * 10**9, rng.normal(0, 1, 4).round(2), 0))
            for i in range(20)]
    recs.append(event_record(21, {"type": "alarm", "ts": T0, "level": "h"}))
    return recs


def test_corrupt_payloads_raise_codec_error_only() -> None:
    enc = codec.encode(_plant_records())
    raw = codec._decompressor().decompress(enc)
    cctx = codec._compressor(3)
    rng = np.random.default_rng(5)
    rejected = 0
    for i in range(len(raw)):
        for mutation in (raw[:i], raw[:i] + bytes([raw[i] ^ (1 << int(rng.integers(0, 8)))]) + raw[i + 1:]):
            try:
                codec.decode(cctx.compress(mutation))
            except codec.CodecError:
                rejected += 1
    assert rejected > len(raw)  # every truncation at least
    for junk in (b"", b"\x00" * 10, bytes(range(256)), enc[:-3], enc[:5]):
        with pytest.raises(codec.CodecError):
            codec.decode(junk)


def test_decompression_bomb_refused() -> None:
    bomb = codec._compressor(3).compress(bytes([codec.FORMAT]) + b"\x00" * (1 << 22))
    with pytest.raises(codec.CodecError, match="limit"):
        codec.decode(bomb, max_size=1 << 20)


def test_format_1_payloads_are_refused_by_name() -> None:
    with pytest.raises(codec.CodecError, match="format 1"):
        codec.decode(bytes.fromhex(GOLDEN_1))


def test_golden_vector_still_decodes() -> None:
    """A payload written by format 2; a decoder change that breaks it breaks sealed envelopes."""
    recs = [sample_record(1, Batch.build([3, 4], T0, [21.5, float("nan")], [0, 0x81])),
            sample_record(2, Batch.build([3, 4], T0 + 10**9, [21.6, 0.25], [0, 0])),
            event_record(3, {"type": "alarm", "ts": T0 + 10**9, "level": "h"})]
    assert codec.decode(bytes.fromhex(GOLDEN)) == recs


GOLDEN_1 = ("28b52ffd207f25030052c5121f9029e9b0f5ed4f5f6fec8791ff8f4222f4d49fdfcb56087a146d34b2b74c29898aaa36"
          "3b794e786c815d38234b0ab306e8c6bc7ac36760b9382810464341e7780e88152d703fd5364974080062a489829196d5"
          "16318e636f80acc9c45a840bea")


GOLDEN = ("28b52ffd205b5d020062840f1bb0271dad0184150c90b480ae5a0dc300e9de90e0b48c10b2a54c01857a50931d6f0646"
          "0370a4d029841325ccb3b4f6ec17f8f1e5bd5d6c22bfd4f2fe6b03002e83f8a9fc089004")


# ------------------------------------------------------------------ byte-for-byte output

def _seeded_records() -> list[Record]:
    """A fixed mix of every path the encoder takes: several poll patterns, values on a
    decimal grid, float32 and off-grid values, NaN and inf exceptions, per-sample times,
    alarm events (time refs, ids, shapes), other events, opaque and non-canonical records."""
    rng = np.random.default_rng(20261207)
    recs: list[Record] = []
    seq = 1
    devs = [np.arange(0, 4), np.arange(4, 9), np.array([20, 7, 31])]
    for s in range(40):
        for d_i, d in enumerate(devs):
            ts = T0 + s * 10**9 + int(rng.integers(0, 3_000_000)) * 1000
            v = np.round(rng.normal(50, 5, len(d)), 2)
            if d_i == 1:
                v = v.astype(np.float32).astype(np.float64)  # float32 registers
            if d_i == 2:
                v = v * 0.001 + rng.normal(0, 1e-9, len(d))  # off the grid
            if s % 13 == 5:
                v[0] = float("nan")
            if s % 17 == 3:
                v[-1] = float("inf")
            t = ts + np.arange(len(d)) * 20_000 if d_i == 2 else ts
            q = np.where(np.isfinite(v), 0, 0x81)
            recs.append(sample_record(seq, Batch.build(d, t, v, q)))
            seq += 1
        if s % 5 == 2:
            ch = int(rng.integers(0, 5))
            recs.append(event_record(seq, alarm(500 + s, int(recs[-2].ts_min), ch)))
            seq += 1
        if s % 11 == 10:
            recs.append(event_record(seq, {"type": "gap", "ts": T0 + s, "from_seq": 1, "to_seq": seq,
                                           "samples": 10 * s, "events": s, "reason": "quota"}))
            seq += 3  # a gap in the sequence
    recs.append(Record(seq, 99, -5, 17, 3, b"\x00\xff future kind"))
    recs.append(Record(seq + 1, EVENT, T0, T0, 1, b'{ "type": "alarm" }'))
    recs.append(event_record(seq + 2, alarm(9000, T0 - 10**12, 3, shelved=True, value=-0.0, who="张三")))
    return recs


def test_encoded_bytes_are_unchanged() -> None:
    """The encoder's output, byte for byte (an envelope's bytes are signed and compared):
    from a cold mode cache, then again with the modes remembered."""
    recs = _seeded_records()
    for c in range(-1, 40):
        samples._MODE_CACHE.pop(c, None)
    first = codec.encode(recs)
    again = codec.encode(recs)
    big = codec.encode(recs * 90)  # over 256 kB before zstd: the backlog level
    assert codec.decode(first) == recs
    digest = hashlib.sha256(first + again + big).hexdigest()
    assert digest == "e2962898a8515e960ac792da61b5b698ec99051a23ae60f5d158dde2198eeb7e", digest
