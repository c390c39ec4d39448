"""The fast Read-response decoder, checked against asyncua's own encoder and decoder."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from asyncua import ua
from asyncua.ua.ua_binary import struct_to_binary, to_binary

from drivers.opcua.decode import NotSimple, decode_results, status_quality
from gateway.core.batch import Quality

T0 = dt.datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=dt.UTC)


def encode(dvs: list[ua.DataValue]) -> bytes:
    return to_binary(list[ua.DataValue], dvs)


def dv(value, vt, code=0, src=T0, server=None):
    return ua.DataValue(ua.Variant(value, vt), ua.StatusCode(code) if code else None,
                        SourceTimestamp=src, ServerTimestamp=server)


def ns(t: dt.datetime) -> int:
    return round(t.timestamp() * 1e6) * 1000


def test_uniform_doubles_with_source_time():
    dvs = [dv(float(k) + 0.5, ua.VariantType.Double) for k in range(1000)]
    vals, codes, src, not_num = decode_results(encode(dvs), 0, 1000)
    assert vals.tolist() == [k + 0.5 for k in range(1000)]
    assert not codes.any() and not not_num.any()
    assert (src == ns(T0)).all()


@pytest.mark.parametrize("vt,value,want", [
    (ua.VariantType.Float, 1.5, 1.5), (ua.VariantType.Int32, -7, -7.0),
    (ua.VariantType.UInt16, 65535, 65535.0),
    (ua.VariantType.Boolean, True, 1.0), (ua.VariantType.Int64, 2**40, float(2**40)),
    (ua.VariantType.Byte, 200, 200.0), (ua.VariantType.SByte, -3, -3.0),
])
def test_each_scalar_type(vt, value, want):
    vals, *_ = decode_results(encode([dv(value, vt), dv(value, vt)]), 0, 2)
    assert vals.tolist() == [want, want]


def test_mixed_layouts_status_strings_and_missing_values():
    dvs = [
        dv(1.25, ua.VariantType.Double),
        dv(3, ua.VariantType.Int32, code=ua.StatusCodes.UncertainLastUsableValue),
        ua.DataValue(ua.Variant(None), ua.StatusCode(ua.UInt32(ua.StatusCodes.BadNodeIdUnknown))),
        dv("OVER", ua.VariantType.String),
        dv(2.0, ua.VariantType.Double, src=None, server=T0),
    ]
    vals, codes, src, not_num = decode_results(encode(dvs), 0, 5)
    assert vals[:2].tolist() == [1.25, 3.0] and np.isnan(vals[2]) and np.isnan(vals[3]) and vals[4] == 2.0
    assert codes.tolist() == [0, ua.StatusCodes.UncertainLastUsableValue, ua.StatusCodes.BadNodeIdUnknown,
                              0, 0]
    assert not_num.tolist() == [False, False, False, True, False]
    assert src.tolist() == [ns(T0), ns(T0), 0, ns(T0), 0]
    q = status_quality(codes)
    assert q.tolist() == [Quality.GOOD, Quality.UNCERTAIN_STATUS, Quality.CONFIG, Quality.GOOD, Quality.GOOD]


def test_arrays_and_structures_go_to_asyncua():
    with pytest.raises(NotSimple):
        decode_results(encode([dv(1.0, ua.VariantType.Double), dv([1.0, 2.0], ua.VariantType.Double)]), 0, 2)
    with pytest.raises(NotSimple):
        decode_results(encode([dv(1.0, ua.VariantType.Double)]), 0, 2)  # count mismatch


def test_picoseconds_go_to_asyncua():
    d = dv(1.0, ua.VariantType.Double)
    d.SourcePicoseconds = 5
    with pytest.raises(NotSimple):
        decode_results(encode([d]), 0, 1)


def test_header_then_results_offset():
    hdr = struct_to_binary(ua.ResponseHeader())
    data = hdr + encode([dv(9.0, ua.VariantType.Double)])
    vals, *_ = decode_results(data, len(hdr), 1)
    assert vals.tolist() == [9.0]
