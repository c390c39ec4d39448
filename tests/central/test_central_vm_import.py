"""VictoriaMetrics' JSON line import (central/vmimport.py) against line protocol.

- a hand-computed case: the lines, labels, values and millisecond times;
- against the real victoria-metrics: the same data through ``/api/v1/import`` and
  ``/write`` comes back as the same series, labels, times and values (bit-identical at
  the instrument's resolution, the same float32 for float32 registers); NaN, inf and
  bad samples have a quality point only; a replay, in either format, doubles nothing;
- the endpoints each format writes to, single node and cluster.
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import numpy as np
import pytest

from central import vmimport
from central.config_vm import VictoriaMetricsSection
from gateway.core.batch import Batch, Quality
from gateway.historian import lineproto
from tests.fixtures.victoria import VictoriaMetrics

pytestmark = pytest.mark.timeout(120)


def test_hand_computed_lines() -> None:
    s = vmimport.ImportSeries("m", [{"gateway": "g", "channel": "A,b c", "unit": "℃", "area": None,
                                     "x": "a\nb", "empty": ""},
                                    {"gateway": "g", "channel": "B"}])
    b = Batch.build(np.array([0, 1, 0, 1], np.int32),
                    np.array([1_000_000_123, 1_000_000_123, 2_000_999_999, 2_000_999_999], np.int64),
                    np.array([1.5, np.nan, -0.25, 19.429]),
                    np.array([0, 0, 0, int(Quality.BAD)], np.uint8))
    assert vmimport.format_import(b, s).decode().splitlines() == [
        '{"metric":{"__name__":"m_value","channel":"A,b c","gateway":"g","unit":"℃","x":"a b"},'
        '"values":[15e-1,-25e-2],"timestamps":[1000,2000]}',
        '{"metric":{"__name__":"m_quality","channel":"A,b c","gateway":"g","unit":"℃","x":"a b"},'
        '"values":[0,0],"timestamps":[1000,2000]}',
        f'{{"metric":{{"__name__":"m_quality","channel":"B","gateway":"g"}},'
        f'"values":[0,{int(Quality.BAD)}],"timestamps":[1000,2000]}}',
    ]
    with pytest.raises(IndexError):
        vmimport.format_import(Batch.build(np.array([2], np.int32), np.array([0], np.int64),
                                           np.array([1.0]), 0), s)


# tag values line protocol must escape, and what it cleans (control characters)
TAGS: list[dict[str, Any]] = [
    {"gateway": "gw-x", "site": "91370100MA3C000000", "device": "plc 1", "channel": "T,1=a",
     "kind": "gas", "unit": "%LEL", "area": "罐区 A", "hazard_source": "HS-01"},
    {"gateway": "gw-x", "site": "91370100MA3C000000", "device": 'quo"te', "channel": "back\\slash",
     "kind": "temperature", "unit": "℃", "area": "line\nbreak", "hazard_source": None},
    {"gateway": "gw-x", "site": "91370100MA3C000000", "device": "d", "channel": "3", "kind": "level",
     "unit": "m", "area": "", "hazard_source": "HS-02"},
]


def _data(t0: int) -> Batch:
    """Polls of 3 channels at sub-millisecond times: values at instrument resolution,
    float32 registers widened, awkward numbers, and samples without a usable value;
    two polls out of time order (a gateway's clock stepped back)."""
    rng = np.random.default_rng(7)
    ticks = 40
    ch = np.tile(np.arange(3, dtype=np.int32), ticks)
    order = np.arange(ticks, dtype=np.int64)
    order[[20, 21]] = order[[21, 20]]
    tick = np.repeat(order, 3)
    ts = t0 + tick * 10**9 + ch.astype(np.int64) * 1_000_000 + 999_999
    val = np.round(rng.normal(20, 30, len(ch)), 3)
    f32 = ch == 1
    val[f32] = rng.normal(300, 5, int(f32.sum())).astype(np.float32).astype(np.float64)
    val[:6] = [0.0, -0.0, 1e-6, -123456.789, 99999.5, 0.001]
    q = np.zeros(len(ch), np.uint8)
    val[9], val[10], val[11] = np.nan, np.inf, -np.inf
    q[12] = int(Quality.BAD)  # a value is present but the sample is bad
    q[13] = int(Quality.TIMEOUT)
    val[13] = np.nan
    return Batch.build(ch, ts, val, q)


def _export(vm: VictoriaMetrics, name: str) -> dict[str, dict[str, Any]]:
    vm.flush()
    return {e["metric"]["channel"]: e for e in vm.export(f'{{__name__="{name}",gateway="gw-x"}}')}


def _labels(e: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in e["metric"].items() if k != "__name__"}


def _post(vm: VictoriaMetrics, path: str, body: bytes) -> None:
    r = httpx.post(vm.url + path, content=body, timeout=30)
    assert r.status_code == 204, r.text


def test_json_import_stores_what_line_protocol_stores(victoria: VictoriaMetrics) -> None:
    import time

    t0 = (time.time_ns() // 10**9 - 900) * 10**9
    b = _data(t0)
    _post(victoria, "/api/v1/import", vmimport.format_import(b, vmimport.ImportSeries("js", TAGS)))
    keys = [lineproto.series_key("lp", t) for t in TAGS]
    _post(victoria, "/write", lineproto.format_samples(b, lineproto.SeriesTable(keys)))
    good = lineproto.usable(b)
    for kind in ("value", "quality"):
        js, lp = _export(victoria, f"js_{kind}"), _export(victoria, f"lp_{kind}")
        assert sorted(js) == sorted(lp) == sorted(vmimport.labels(t)["channel"] for t in TAGS)
        for i, tags in enumerate(TAGS):
            name = vmimport.labels(tags)["channel"]
            # the same labels as line protocol gives, and as the channel table says
            assert _labels(js[name]) == _labels(lp[name]) == vmimport.labels(tags)
            sel = np.flatnonzero((b.channel == i) & (good if kind == "value" else True))
            sel = sel[np.argsort(b.ts[sel], kind="stable")]  # the server answers in time order
            # times: nanoseconds cut to the millisecond
            assert js[name]["timestamps"] == lp[name]["timestamps"] == (b.ts[sel] // 10**6).tolist()
            # values: what line protocol stores, to the bit
            v_js = np.array(js[name]["values"], np.float64)
            assert v_js.tobytes() == np.array(lp[name]["values"], np.float64).tobytes()
            if kind == "quality":
                assert v_js.tolist() == b.quality[sel].tolist()
            elif i == 1:  # float32 registers: the very float32 back
                assert np.array_equal(v_js.astype(np.float32), b.value[sel].astype(np.float32))
            else:  # instrument resolution: bit-identical (-0.0 comes back as 0.0, equal)
                assert np.array_equal(v_js, b.value[sel]), (v_js, b.value[sel])
    # NaN, inf and a bad sample: a quality point, no value point
    assert int(good.sum()) == len(b) - 5
    assert sum(len(e["values"]) for e in _export(victoria, "js_value").values()) == int(good.sum())
    assert all(math.isfinite(v) for e in _export(victoria, "js_value").values() for v in e["values"])


def test_replay_in_either_format_doubles_nothing(victoria: VictoriaMetrics) -> None:
    """A worker killed mid-write replays the envelope (docs/central.md): the same series,
    milliseconds and values overwrite themselves (``-dedup.minScrapeInterval=1ms``), also
    when the replay goes out in the other format (a config change between the two)."""
    import time

    t0 = (time.time_ns() // 10**9 - 900) * 10**9
    b = _data(t0)
    body = vmimport.format_import(b, vmimport.ImportSeries("safegw", TAGS))
    lp = lineproto.format_samples(b, lineproto.SeriesTable(lineproto.series_key("safegw", t) for t in TAGS))
    _post(victoria, "/api/v1/import", body)
    once = {k: e["values"] for k, e in _export(victoria, "safegw_value").items()}
    _post(victoria, "/api/v1/import", body)
    _post(victoria, "/write", lp)
    _post(victoria, "/api/v1/import", body[: len(body) // 2].rsplit(b"\n", 1)[0] + b"\n")  # a cut write
    again = {k: e["values"] for k, e in _export(victoria, "safegw_value").items()}
    assert again == once
    assert sum(map(len, once.values())) == int(lineproto.usable(b).sum())
    q = _export(victoria, "safegw_quality")
    assert sum(len(e["values"]) for e in q.values()) == len(b)


def test_endpoints_of_each_format() -> None:
    def urls(url: str, fmt: str) -> list[str]:
        return VictoriaMetricsSection(url=[url], format=fmt).write_urls()

    for given in ("http://vm:8428", "http://vm:8428/", "http://vm:8428/write", "http://vm:8428/api/v1/import"):
        assert urls(given, "json") == ["http://vm:8428/api/v1/import"], given
        assert urls(given, "influx") == ["http://vm:8428/write"], given
    for given in ("http://vminsert:8480/insert/7", "http://vminsert:8480/insert/7/influx/write",
                  "http://vminsert:8480/insert/7/prometheus/api/v1/import"):
        assert urls(given, "json") == ["http://vminsert:8480/insert/7/prometheus/api/v1/import"], given
        assert urls(given, "influx") == ["http://vminsert:8480/insert/7/influx/write"], given
    assert urls("https://vminsert:8480/insert/7:3/", "json") == [
        "https://vminsert:8480/insert/7:3/prometheus/api/v1/import"]
    sec = VictoriaMetricsSection(url=["http://vm:8428/api/v1/import"])
    assert sec.format == "json" and sec.prometheus_url() == "http://vm:8428"
    for bad in ("http://vm:8428/insert/x/influx/write", "http://vm:8428/api/v1/write", "ftp://vm:8428"):
        with pytest.raises(ValueError):
            VictoriaMetricsSection(url=[bad])
    with pytest.raises(ValueError):
        VictoriaMetricsSection(url=["http://vm:8428"], format="csv")


@pytest.mark.parametrize("spread", ["even", "skewed"])
def test_json_lines_parse(spread: str) -> None:
    """Every line is one JSON object with as many values as times (what the server checks),
    whether the channels have about as many samples each (one padded matrix) or one
    channel has most of them (lines joined one by one)."""
    rng = np.random.default_rng(3)
    n = 5000
    ch = rng.integers(0, 50, n).astype(np.int32)
    if spread == "skewed":
        ch[ch < 45] = 0
    ts = np.sort(rng.integers(10**18, 2 * 10**18, n)).astype(np.int64)
    val = rng.normal(0, 1e3, n) * 10.0 ** rng.integers(-8, 8, n)
    q = rng.choice(np.array([0, 0, 0, int(Quality.BAD)], np.uint8), n)
    b = Batch.build(ch, ts, val, q)
    body = vmimport.format_import(b, vmimport.ImportSeries("m", [{"channel": f"c{i}"} for i in range(50)]))
    seen: dict[str, list[float]] = {}
    for line in body.decode().splitlines():
        d = json.loads(line)
        assert len(d["values"]) == len(d["timestamps"]) > 0
        assert d["timestamps"] == sorted(d["timestamps"])
        seen[d["metric"]["__name__"] + d["metric"]["channel"]] = d["values"]
    good = lineproto.usable(b)
    for i in range(50):
        sel = ch == i
        if sel.any():
            assert seen[f"m_qualityc{i}"] == q[sel].tolist()
        if (sel & good).any():
            # JSON parses back to the same doubles (the server's own parser: test above)
            assert np.array_equal(np.array(seen[f"m_valuec{i}"]), val[sel & good])


def test_poll_order_and_channel_order_give_the_same_lines() -> None:
    """Polls of rising channels (transposed, no sort) and the same samples channel by
    channel (sorted) give the same bytes; a poll missing a channel still parses right."""
    polls, chans = 7, 40
    rng = np.random.default_rng(5)
    ch = np.tile(np.arange(chans, dtype=np.int32), polls)
    ts = np.repeat(10**18 + np.arange(polls, dtype=np.int64) * 10**9, chans) + ch.astype(np.int64) * 1000
    val = np.round(rng.normal(0, 50, len(ch)), 2)
    q = np.zeros(len(ch), np.uint8)
    q[5] = int(Quality.BAD)
    series = vmimport.ImportSeries("m", [{"channel": f"c{i}"} for i in range(chans)])
    by_poll = Batch.build(ch, ts, val, q)
    o = np.argsort(ch, kind="stable")
    by_channel = Batch.build(ch[o], ts[o], val[o], q[o])
    body = vmimport.format_import(by_poll, series)
    assert body == vmimport.format_import(by_channel, series)
    lines = [json.loads(x) for x in body.decode().splitlines()]
    assert len(lines) == 2 * chans
    assert lines[chans]["metric"]["__name__"] == "m_quality" and lines[chans]["values"] == q[ch == 0].tolist()
    # the last poll lacks channel 3: uneven lines
    keep = ~((ch == 3) & (np.arange(len(ch)) >= (polls - 1) * chans))
    cut = Batch.build(ch[keep], ts[keep], val[keep], q[keep])
    got = {(d["metric"]["__name__"], d["metric"]["channel"]): d
           for d in map(json.loads, vmimport.format_import(cut, series).decode().splitlines())}
    assert got[("m_quality", "c3")]["timestamps"] == (ts[keep & (ch == 3)] // 10**6).tolist()
    assert got[("m_value", "c3")]["values"] == val[keep & (ch == 3)].tolist()
    assert got[("m_value", "c5")]["values"] == val[ch == 5][1:].tolist()  # its first sample is bad
