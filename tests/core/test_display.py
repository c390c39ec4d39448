"""gateway.core.display: numbers as a person reads them, checked against what safegw did
not write: the float32 shortest-representation vectors of the Ryu project
(ulfjack/ryu, ``ryu/tests/f2s_test.cc``, Ulf Adams 2018, Apache-2.0/Boost), numpy's
Dragon4 (``np.format_float_positional(..., unique=True)``) on random float32s, and
Python's correctly rounded ``round``/``repr`` for the scaled integers."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest

from gateway.core.config import ModbusChannel, OpcUaChannel, SerialChannel
from gateway.core.display import (
    DisplayTable,
    Rendering,
    decimals_of,
    float32_shortest,
    readable_event,
    rendering_of,
    shortest,
    text,
)


def _bits(b: int) -> float:
    return float(struct.unpack("<f", struct.pack("<I", b))[0])


#: (Ryu's expected text, the float32 it is printed from) from ryu/tests/f2s_test.cc:
#: Basic, SwitchToSubnormal, MinAndMax, BoundaryRoundEven, ExactValueRoundEven,
#: LotsOfTrailingZeros, Regression, OutputLength
RYU_F2S = [
    ("1E0", "1.0"), ("-1E0", "-1.0"), ("1.1754944E-38", "1.1754944E-38"),
    ("3.4028235E38", _bits(0x7F7FFFFF)), ("1E-45", _bits(1)),
    ("3.355445E7", "3.355445E7"), ("9E9", "8.999999E9"), ("3.436672E10", "3.4366717E10"),
    ("3.0540412E5", "3.0540412E5"), ("8.0990312E3", "8.0990312E3"),
    ("2.4414062E-4", "2.4414062E-4"), ("2.4414062E-3", "2.4414062E-3"), ("4.3945312E-3", "4.3945312E-3"),
    ("6.3476562E-3", "6.3476562E-3"),
    ("4.7223665E21", "4.7223665E21"), ("8.388608E6", "8388608.0"), ("1.6777216E7", "1.6777216E7"),
    ("3.3554436E7", "3.3554436E7"), ("6.7131496E7", "6.7131496E7"), ("1.9310392E-38", "1.9310392E-38"),
    ("-2.47E-43", "-2.47E-43"), ("1.993244E-38", "1.993244E-38"), ("4.1039004E3", "4103.9003"),
    ("5.3399997E9", "5.3399997E9"), ("6.0898E-39", "6.0898E-39"), ("1.0310042E-3", "0.0010310042"),
    ("2.882326E17", "2.8823261E17"), ("7.038531E-26", "7.038531E-26"), ("9.223404E17", "9.2234038E17"),
    ("6.710887E7", "6.7108872E7"), ("1E-44", "1.0E-44"), ("2.816025E14", "2.816025E14"),
    ("9.223372E18", "9.223372E18"), ("1.5846086E29", "1.5846085E29"), ("1.1811161E19", "1.1811161E19"),
    ("5.368709E18", "5.368709E18"), ("4.6143166E18", "4.6143165E18"), ("7.812537E-3", "0.007812537"),
    ("1E-45", "1.4E-45"), ("1.18697725E20", "1.18697724E20"), ("1.00014165E-36", "1.00014165E-36"),
    ("2E2", "200.0"), ("3.3554432E7", "3.3554432E7"),
    ("1.2E0", "1.2"), ("1.23E0", "1.23"), ("1.234E0", "1.234"), ("1.2345E0", "1.2345"),
    ("1.23456E0", "1.23456"), ("1.234567E0", "1.234567"), ("1.2345678E0", "1.2345678"),
    ("1.23456735E-36", "1.23456735E-36"),
]


@pytest.mark.parametrize(("want", "given"), RYU_F2S, ids=[w for w, _ in RYU_F2S])
def test_float32_shortest_matches_ryu(want: str, given: str | float) -> None:
    f = np.float32(float(given))
    got = float32_shortest(np.array([float(f)]))[0]
    # the decimal Ryu prints, as a double: what the JSON encoder then prints
    assert got == float(want), (want, got)
    assert np.float32(got) == f


def test_float32_shortest_matches_numpy_dragon4_on_random_floats() -> None:
    rng = np.random.default_rng(20261207)
    bits = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)
    f = bits.view(np.float32)
    f = f[np.isfinite(f)]
    got = float32_shortest(f.astype(np.float64))
    want = np.array([float(np.format_float_positional(x, unique=True, trim="-")) for x in f])
    assert np.array_equal(got, want), [(x, g, w) for x, g, w in zip(f, got, want, strict=True) if g != w][:5]


def test_zeros_and_non_finite_stay() -> None:
    got = float32_shortest(np.array([0.0, -0.0, math.nan, math.inf, -math.inf]))
    assert got[0] == 0.0 and math.copysign(1.0, got[1]) == -1.0
    assert math.isnan(got[2]) and got[3] == math.inf and got[4] == -math.inf
    assert Rendering(float32=True).value(math.nan) is None and Rendering(decimals=1).value(None) is None


@pytest.mark.parametrize(("step", "decimals"), [(0.1, 1), (0.25, 2), (0.01, 2), (0.001, 3), (1.0, 0), (5, 0),
                                                 (100.0, 0), (1e-5, 5), (0.05, 2), (0.125, 3), (1e-20, 12)])
def test_decimals_of_a_scale(step: float, decimals: int) -> None:
    assert decimals_of(step) == decimals


def test_scaled_integers_at_their_resolution_like_pythons_round() -> None:
    """raw × scale + offset, rendered at the scale's decimals, equals Python's correctly
    rounded ``round(value, decimals)`` and prints as the decimal the raw count means."""
    rng = np.random.default_rng(7)
    for scale, offset in ((0.1, 0.0), (0.01, 0.0), (0.001, 0.0), (0.25, 0.0), (0.1, -40.0), (0.1, -40.05)):
        spec = ModbusChannel(name="X", kind="other", address="holding:0", type="int16", scale=scale,
                             offset=offset)
        r = rendering_of(spec)
        raw = rng.integers(-32768, 32768, 2000)
        vals = (raw * scale + offset).astype(np.float64)
        got = r.array(vals)
        d = max(decimals_of(scale), decimals_of(offset))
        assert r.decimals == d
        assert got.tolist() == [round(v, d) for v in vals.tolist()]
    assert Rendering(decimals=1).value(222 * 0.1) == 22.2 and json.dumps(222 * 0.1) == "22.200000000000003"
    assert json.dumps(Rendering(decimals=1).value(222 * 0.1)) == "22.2"


def test_rendering_follows_the_wire_type() -> None:
    f32 = ModbusChannel(name="A", kind="other", address="holding:0", type="float32")
    i16 = ModbusChannel(name="B", kind="other", address="input:0", type="int16", scale=0.1)
    u32 = ModbusChannel(name="C", kind="other", address="input:2", type="uint32", scale=0.001)
    f64 = ModbusChannel(name="D", kind="other", address="holding:4", type="float64")
    ua = OpcUaChannel(name="E", kind="other", node="ns=2;s=X")
    ser = SerialChannel(name="F", kind="other", pattern="v=(?P<value>[0-9.]+)", scale=0.1)
    assert rendering_of(f32) == Rendering(float32=True)
    assert rendering_of(i16) == Rendering(decimals=1) and rendering_of(u32) == Rendering(decimals=3)
    assert rendering_of(f64) == rendering_of(ua) == rendering_of(ser) == Rendering()
    table = DisplayTable([f32, i16, u32, f64, ua, ser], ["A", "B", "C", "D", "E", "F"])
    raw = np.array([float(np.float32(19.31)), 222 * 0.1, 1234567 * 0.001, 0.1 + 0.2,
                    float(np.float32(7.7)), 123 * 0.1])
    got = table.values(np.arange(6), raw)
    assert got.tolist() == [19.31, 22.2, 1234.567, 0.3, 7.7, 12.3]
    assert json.dumps(got.tolist()) == "[19.31, 22.2, 1234.567, 0.3, 7.7, 12.3]"
    # one by one gives the same as the column
    assert [table[i].value(v) for i, v in enumerate(raw.tolist())] == got.tolist()
    nan, zero = table.values(np.array([1, 0]), np.array([math.nan, -0.0])).tolist()
    assert math.isnan(nan) and zero == 0.0 and math.copysign(1.0, zero) == -1.0


def test_scaled_float32_shows_the_registers_shortest_form_scaled() -> None:
    """A float32 register of 193.1 with scale 0.1 reads 19.310000610351565: shown 19.31
    (its own float32 shortest form would be 19.310001). Checked over random registers
    against Python's decimal arithmetic on numpy's shortest register text."""
    from decimal import Decimal

    spec = ModbusChannel(name="S", kind="other", address="holding:0", type="float32", scale=0.1, offset=-5)
    r = rendering_of(spec)
    assert r.value(float(np.float32(193.1)) * 0.1 - 5) == 14.31
    rng = np.random.default_rng(3)
    regs = rng.uniform(-1000, 1000, 2000).astype(np.float32)
    got = r.array(regs.astype(np.float64) * 0.1 - 5)
    want = [float(Decimal(np.format_float_positional(f, unique=True)) * Decimal("0.1") - 5) for f in regs]
    assert got.tolist() == want
    table = DisplayTable([spec], ["S"])
    assert table.values(np.array([0, 0]), regs[:2].astype(np.float64) * 0.1 - 5).tolist() == want[:2]


def test_shortest_and_text() -> None:
    assert shortest(float(np.float32(19.31)), float32=True) == 19.31
    assert shortest(222 * 0.1, resolution=0.1) == 22.2 and shortest(-12.25, resolution=0.25) == -12.25
    assert shortest(22.200000000000003) == 22.2 and shortest(1 / 3) == 0.333333333333333
    assert text(22.0) == "22" and text(19.31) == "19.31" and text(None) == "-" and text(1e20) == "1e+20"


def test_readable_event_each_field_in_its_own_unit() -> None:
    f32 = Rendering(float32=True)
    limit = {"type": "alarm", "rule": "limit", "value": float(np.float32(19.31)), "limit": 19.0, "unit": "°C"}
    assert readable_event(limit, f32)["value"] == 19.31
    bad = {"rule": "bad", "value": None, "limit": None, "duration_s": 3.5487123456, "threshold_s": 3.0}
    out = readable_event(bad, f32)
    assert out["duration_s"] == 3.549 and out["threshold_s"] == 3.0 and out["value"] is None
    roc = {"rule": "roc", "value": 0.30000000000000004 / 7, "limit": 0.1}
    assert readable_event(roc, f32)["value"] == 0.0428571  # a derived figure: 6 significant digits
    frozen = {"rule": "frozen", "value": 222 * 0.1, "limit": None, "threshold_s": 600.0}
    assert readable_event(frozen, Rendering(decimals=1)) == {**frozen, "value": 22.2}
    assert readable_event(frozen, None)["value"] == 22.2  # a channel no longer configured: generic
    assert limit["value"] != 19.31  # the input is not changed
