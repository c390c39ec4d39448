"""Request merging: which reads a set of channels needs, and where each value lands."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.modbus.codec import encode_raw, pack_bits, words_to_bytes
from drivers.modbus.plan import Point, plan


def P(address: str, type_: str = "uint16", unit: int = 1, **kw: object) -> Point:
    return Point.from_address(unit, address, type_, **kw)  # type: ignore[arg-type]


def spans(points: list[Point], *, max_gap: int = 8, max_registers: int = 125,
          max_bits: int = 2000) -> list[tuple[int, int, int, int]]:
    got = plan(points, max_gap=max_gap, max_registers=max_registers, max_bits=max_bits)
    return [(r.unit, r.fc, r.start, r.count) for r in got.requests]


def test_adjacent_and_small_gaps_merge() -> None:
    pts = [P("holding:0"), P("holding:1"), P("holding:5", "float32"), P("holding:14")]
    # gap 1..5 is 3 registers, 7..14 is 7: both <= max_gap 8
    assert spans(pts, max_gap=8) == [(1, 3, 0, 15)]
    # with max_gap 4 the second hole (7 registers) splits
    assert spans(pts, max_gap=4) == [(1, 3, 0, 7), (1, 3, 14, 1)]
    assert spans(pts, max_gap=0) == [(1, 3, 0, 2), (1, 3, 5, 2), (1, 3, 14, 1)]


def test_functions_and_units_never_mix() -> None:
    pts = [P("holding:0"), P("input:0"), P("holding:1", unit=2), P("coil:0", "bool"), P("discrete:0", "bool")]
    assert sorted(spans(pts)) == [(1, 1, 0, 1), (1, 2, 0, 1), (1, 3, 0, 1), (1, 4, 0, 1), (2, 3, 1, 1)]


def test_max_registers_limits_each_read() -> None:
    # 100 float32 back to back = 200 registers: two reads of at most 125, no value cut in half
    pts = [P(f"input:{2 * i}", "float32") for i in range(100)]
    reqs = spans(pts, max_registers=125)
    assert reqs == [(1, 4, 0, 124), (1, 4, 124, 76)]
    assert spans(pts, max_registers=10)[0] == (1, 4, 0, 10)
    assert len(spans(pts, max_registers=10)) == 20


def test_bits_merge_with_bit_gaps_and_max_bits() -> None:
    pts = [P("coil:0", "bool"), P("coil:100", "bool"), P("coil:300", "bool")]
    # max_gap 8 registers = 128 bits: 0→100 merges, 100→300 does not
    assert spans(pts, max_gap=8) == [(1, 1, 0, 101), (1, 1, 300, 1)]
    assert spans(pts, max_gap=8, max_bits=50) == [(1, 1, 0, 1), (1, 1, 100, 1), (1, 1, 300, 1)]


def test_overlapping_points_share_a_read() -> None:
    # a float32 at 10 and a bit of register 11 (its low word): one read of 2 registers
    pts = [P("holding:10", "float32"), P("holding:11.3", "bool")]
    assert spans(pts) == [(1, 3, 10, 2)]


def test_split_points_get_their_own_reads() -> None:
    pts = [P("holding:0"), P("holding:1"), P("holding:2")]
    assert spans(pts) == [(1, 3, 0, 3)]
    r = plan(pts, split=frozenset({1}))
    assert [(q.start, q.count) for q in r.requests] == [(0, 1), (1, 1), (2, 1)]


def test_too_wide_for_max_registers_is_an_error() -> None:
    with pytest.raises(ValueError, match="float64"):
        plan([P("holding:0", "float64")], max_registers=2)


def test_decode_through_the_plan_buffer() -> None:
    """Fill the poll buffer as replies would, decode, and get values in channel order."""
    pts = [
        P("holding:12", "float32", byte_order="CDAB"),  # channel order != address order
        P("holding:10", "int16", scale=0.1),
        P("holding:11.15", "bool"),
        P("coil:3", "bool"),
        P("input:0", "uint32", unit=2),
    ]
    pl = plan(pts)
    buf = np.zeros(pl.nbytes, np.uint8)
    regs = {10: encode_raw(-200, "int16"), 11: [0x8000], 12: encode_raw(10.0, "float32", "CDAB")}
    for r in pl.requests:
        if r.fc == 3:
            words = [w for a in range(r.start, r.start + r.count) for w in regs.get(a, [0])]
            data = words_to_bytes(words[:r.count])
        elif r.fc == 1:
            data = pack_bits([a == 3 for a in range(r.start, r.start + r.count)])
        else:
            data = words_to_bytes(encode_raw(2309737967, "uint32"))
        buf[r.buf_offset:r.buf_offset + r.nbytes] = np.frombuffer(data, np.uint8)
    values = pl.layout.decode(buf)
    assert values.tolist() == [10.0, pytest.approx(-20.0), 1.0, 1.0, 2309737967.0]
    # every point knows its request
    for i, p in enumerate(pts):
        r = pl.requests[pl.point_request[i]]
        assert r.unit == p.unit and r.fc == p.fc and r.start <= p.register < r.start + r.count
