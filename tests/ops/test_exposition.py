"""``Exposition``, the layer every /metrics block writes through, read back by
prometheus-client's own parser: awkward label values survive, and a block's mistake (a
counter without ``_total``, a family twice) costs that block, not the scrape."""

from __future__ import annotations

import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.admin.metrics import Exposition


def test_round_trip_through_the_parser() -> None:
    e = Exposition()
    odd = 'a "quoted" \\ back\nslash 甲烷'
    e.family("safegw_x_total", "counter", "help with \\ and \n newline", [({"device": odd}, 3)])
    e.family("safegw_g", "gauge", "g", [({"a": "1"}, float("nan")), ({"a": "2"}, float("inf")),
                                        ({"a": "3"}, -2.5)])
    e.family("safegw_empty_total", "counter", "no samples yet", [])
    fams = {f.name: f for f in text_string_to_metric_families(e.text())}
    x = fams["safegw_x"]
    assert x.type == "counter" and x.documentation == "help with \\ and \n newline"
    assert [(s.name, s.labels, s.value) for s in x.samples] == [("safegw_x_total", {"device": odd}, 3.0)]
    g = {s.labels["a"]: s.value for s in fams["safegw_g"].samples}
    assert g["1"] != g["1"] and g["2"] == float("inf") and g["3"] == -2.5
    assert fams["safegw_empty"].type == "counter" and fams["safegw_empty"].samples == []


def test_a_blocks_mistake_costs_only_that_block(caplog: pytest.LogCaptureFixture) -> None:
    e = Exposition()
    e.family("safegw_ok", "gauge", "first", 1)
    with caplog.at_level(logging.ERROR, logger="safegw.metrics"):
        e.family("safegw_ok", "gauge", "again", 2)
        e.family("safegw_bad_counter_name", "counter", "no _total", 7)
    fams = {f.name: f for f in text_string_to_metric_families(e.text())}
    assert [s.value for s in fams["safegw_ok"].samples] == [1.0]
    bad = fams["safegw_bad_counter_name"]
    assert bad.type == "unknown" and bad.samples[0].name == "safegw_bad_counter_name"
    assert "exposed twice" in caplog.text and "must end in _total" in caplog.text
    with pytest.raises(ValueError, match="histogram"):
        e.family("safegw_h", "histogram", "h", 1)
