"""Line protocol formatting (gateway/lineproto.py): escaping vectors, golden lines, and
float formatting that parses back to the same double (property test)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.batch import Batch, Quality
from gateway.historian.lineproto import (
    SeriesTable,
    count_lines,
    escape_field_string,
    escape_measurement,
    escape_tag,
    format_event,
    format_floats,
    format_samples,
    format_stats,
    series_key,
    split_lines,
)


def text(row: np.ndarray) -> str:
    return bytes(row[row != 0]).decode()


@pytest.mark.parametrize("raw, want", [
    ("plain", "plain"),
    ("a b", r"a\ b"),
    ("a,b", r"a\,b"),
    ("a=b", r"a\=b"),
    ("line1\nline2", r"line1\ line2"),
    ("tab\there", r"tab\ here"),
    ("ends\\", "ends\\\\"),
    ("°C/%LEL", "°C/%LEL"),
    ("nul\0x", "nulx"),
])
def test_escape_tag(raw: str, want: str) -> None:
    assert escape_tag(raw) == want


def test_escape_measurement_and_field_strings() -> None:
    assert escape_measurement("wind speed,x=1") == r"wind\ speed\,x=1"
    assert escape_field_string('he said "hi" \\ bye\n') == r'"he said \"hi\" \\ bye\n"'


def test_series_key_sorts_tags_and_drops_empty_values() -> None:
    key = series_key("gas", {"site": "S 1", "channel": "GT-1", "area": "", "hazard_source": None,
                             "unit": "%LEL"})
    assert key == r"gas,channel=GT-1,site=S\ 1,unit=%LEL"


def test_format_samples_golden() -> None:
    series = SeriesTable([series_key("gas", {"channel": "GT-1"}),
                          series_key("temperature", {"channel": "TT 1"})])
    b = Batch.build([0, 1, 0, 1], [1, 2, 10**18, 1764000000123456789], [12.5, -0.001, np.nan, 7.0],
                    [0, Quality.CALIBRATING, Quality.TIMEOUT, Quality.COMMS])
    assert format_samples(b, series).decode().splitlines() == [
        "gas,channel=GT-1 value=125e-1,quality=0i 1",
        r"temperature,channel=TT\ 1 value=-1e-3,quality=65i 2",
        "gas,channel=GT-1 quality=129i 1000000000000000000",  # bad: no value field
        r"temperature,channel=TT\ 1 quality=130i 1764000000123456789",  # bad even with a number
    ]


def test_format_samples_refuses_unknown_channels_and_negative_times() -> None:
    series = SeriesTable(["m,channel=a"])
    with pytest.raises(IndexError):
        format_samples(Batch.build([1], [1], [1.0], [0]), series)
    with pytest.raises(ValueError, match="1970"):
        format_samples(Batch.build([0], [-5], [1.0], [0]), series)


def test_format_event_types() -> None:
    line = format_event("alarms", {"type": "alarm", "channel": "GT 1"},
                        {"value": 3, "ok": True, "msg": 'x "y"', "none": None, "nan": float("nan"),
                         "details": {"a": 1}}, 42)
    assert line == (b'alarms,channel=GT\\ 1,type=alarm details="{\\"a\\":1}",msg="x \\"y\\"",ok=true,'
                    b'value=3.0 42\n')
    assert format_event("events", {"type": "x"}, {}, 1) == b'events,type=x event="1" 1\n'


def test_format_stats_golden() -> None:
    series = SeriesTable([series_key("stats_5m", {"channel": "A"}), series_key("stats_5m", {"channel": "B"})])
    body = format_stats(series, np.array([0, 1]), 300 * 10**9, np.array([1.5, np.nan]),
                        np.array([2.5, np.nan]), np.array([2.0, np.nan]), np.array([3, 0]), np.array([4, 2]))
    assert body.decode().splitlines() == [
        "stats_5m,channel=A count=3i,max=25e-1,mean=2,min=15e-1,samples=4i 300000000000",
        "stats_5m,channel=B count=0i,samples=2i 300000000000",
    ]


def test_split_and_count_lines() -> None:
    body = b"".join(b"m v=%d %d\n" % (i, i) for i in range(10))
    parts = split_lines(body, 4)
    assert [count_lines(p) for p in parts] == [4, 4, 2] and b"".join(parts) == body
    assert split_lines(body, 10) == [body] and split_lines(b"", 3) == []


def test_same_timestamp_runs_are_formatted_once_and_right() -> None:
    series = SeriesTable([f"m,c={i}" for i in range(100)])
    b = Batch.build(np.arange(100), 1764000000000000001, np.arange(100) * 0.5, 0)
    lines = format_samples(b, series).decode().splitlines()
    assert all(ln.endswith(" 1764000000000000001") for ln in lines) and len(lines) == 100


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=50))
def test_floats_parse_back_bit_identical(values: list[float]) -> None:
    arr = np.array(values)
    out = format_floats(arr)
    for v, row in zip(values, out, strict=True):
        back = float(text(row))  # Python's float() rounds correctly, like the server's parser
        assert back == v and (np.float64(back).view(np.int64) == np.float64(v).view(np.int64) or v == 0)


@pytest.mark.parametrize("v", [0.1, 0.3, 1 / 3, 2.0**-1074, 1.7976931348623157e308, 1e16,
                               9.999999999999999e22, 123456789012345678.0, -2.5e-11, 1e-11, 1e27,
                               float(np.float32(0.1))])
def test_float_edge_cases(v: float) -> None:
    s = text(format_floats(np.array([v]))[0])
    assert float(s) == v
    assert len(s) <= 26
