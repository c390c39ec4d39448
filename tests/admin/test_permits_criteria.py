"""The permits' acceptance criteria and the judging of live readings (gateway/admin/permits/),
against values computed here by hand from the standards' text.

GB 30871-2022 as quoted (the primary text was not at hand; see criteria.py for what is and is
not confirmed): §5.3.2 combustibles ≤ 0.5 %vol when the LEL ≥ 4 %vol, ≤ 0.2 %vol when < 4 %vol;
§6.4 a) O₂ 19.5-21 %vol (≤ 23.5 %vol oxygen-enriched); §6.4 b) toxic substances within GBZ 2.1.
"""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.admin.permits import criteria
from gateway.admin.permits.analysis import MAX_CHANNELS, Snapshot, analyse, select
from gateway.admin.registers import load_schemas
from gateway.admin.registers import permits as rp
from gateway.core.batch import Quality

NOW = 1_800_000_000 * 10**9
S = 10**9


def snap(
    name: str = "GT-1",
    value: float = 3.0,
    *,
    unit: str = "%LEL",
    gas: str | None = "methane",
    quality: int = Quality.GOOD,
    age_s: float = 1.0,
    area: str | None = "R-101",
    kind: str = "gas",
    alarm: str | None = None,
) -> Snapshot:
    ts = 0 if age_s < 0 else NOW - int(age_s * S)
    return Snapshot(name, kind, unit, gas, area, value, quality, ts, alarm)


def test_combustible_limit_by_lel_class_in_percent_lel() -> None:
    """GB 30871-2022 §5.3.2: methane (LEL 5 %vol ≥ 4 %) may read at most 0.5 %vol, which is
    0.5 / 5 × 100 = 10 %LEL; propane (LEL 2.1 %vol < 4 %) at most 0.2 %vol = 9.5238 %LEL."""
    assert criteria.criterion("%LEL", "methane").hi == pytest.approx(10.0)
    assert criteria.criterion("%LEL", "propane").hi == pytest.approx(0.2 / 2.1 * 100, abs=1e-4)
    # a generic combustible channel takes the permit's medium, or its LEL given outright
    assert criteria.criterion("%LEL", "combustible", medium="hydrogen").hi == pytest.approx(12.5)
    assert criteria.criterion("%LEL", None, lel=1.2).hi == pytest.approx(0.2 / 1.2 * 100, abs=1e-4)
    # the permit's LEL wins over the table
    assert criteria.criterion("%LEL", "methane", lel=4.4).hi == pytest.approx(0.5 / 4.4 * 100, abs=1e-4)


def test_combustible_in_volume_and_ppm_and_unknown_lel() -> None:
    """GB 30871-2022 §5.3.2 in %vol directly; an unknown LEL in %vol takes the stricter 0.2 %vol;
    in %LEL an unknown LEL cannot be judged and says what to give."""
    assert criteria.criterion("%vol", "ch4").hi == 0.5
    assert criteria.criterion("ppm", "ethylene").hi == 2000.0
    assert criteria.criterion("%vol", "combustible").hi == 0.2
    with pytest.raises(criteria.NoCriterion, match="lel_percent"):
        criteria.criterion("%LEL", "combustible")
    with pytest.raises(criteria.NoCriterion, match="cannot tell"):
        criteria.criterion("mA", None)


def test_oxygen_range() -> None:
    """GB 30871-2022 §6.4 a): 19.5-21 %vol; up to 23.5 %vol in an oxygen-enriched environment."""
    c = criteria.criterion("%vol", "o2")
    assert (c.lo, c.hi) == (19.5, 21.0)
    assert criteria.criterion("%VOL", "oxygen", enriched=True).hi == 23.5
    with pytest.raises(criteria.NoCriterion):
        criteria.criterion("ppm", "o2")


def test_toxic_limit_is_the_oel_converted_to_the_channel_unit() -> None:
    """GB 30871-2022 §6.4 b) with GBZ 2.1-2019: H₂S MAC 10 mg/m³; in ppm at the molar volume
    rules.presets uses (24.061 L/mol, GBZ 159): 10 × 24.061 / 34.08 = 7.06 ppm."""
    c = criteria.criterion("mg/m³", "h2s")
    assert c.hi == 10.0 and "MAC" in c.text
    mv = criteria.presets.MOLAR_VOLUME_L
    assert criteria.criterion("ppm", "硫化氢").hi == pytest.approx(10 * mv / 34.08, abs=1e-3)
    with pytest.raises(criteria.NoCriterion):
        criteria.criterion("ppm", "nitrogen")  # a gas with no OEL in GBZ 2.1


def test_analysis_verdicts_each_with_a_reason() -> None:
    """Every way a reading can fail an analysis: over the criterion, an active alarm, bad or
    uncertain quality, stale, never read, not judgeable; only good fresh readings in range pass."""
    cases = {
        "pass": snap(value=3.0),
        "fail": snap(value=12.0),
        "alarm": snap(value=3.0, alarm="h"),
        "bad": snap(quality=Quality.TIMEOUT),
        "bad-uncertain": snap(quality=Quality.CALIBRATING),
        "stale": snap(age_s=31.0),
        "no_data": snap(age_s=-1, quality=Quality.NO_DATA, value=float("nan")),
        "unjudged": snap(gas=None, unit="mA"),
    }
    for want, s in cases.items():
        r = analyse([s], NOW, stale_after_s=30.0, step="approve")
        assert r["readings"][0]["verdict"] == want.split("-")[0], want
        assert r["ok"] is (want == "pass"), want
        if want != "pass":
            assert r["message"].startswith("refused: GT-1"), r["message"]
    fail = analyse([snap(value=12.0)], NOW, stale_after_s=30.0, step="approve")
    assert "reads 12 %LEL" in fail["message"] and "§5.3.2" in fail["message"] and "10 %LEL" in fail["message"]
    # one failing reading among good ones refuses the whole analysis
    both = analyse([snap(value=3.0), snap("GT-2", value=11.0)], NOW, stale_after_s=30.0, step="analyse")
    assert not both["ok"] and [r["verdict"] for r in both["readings"]] == ["pass", "fail"]


def test_analysis_without_detectors_or_with_too_many_is_refused() -> None:
    r = analyse([], NOW, stale_after_s=30.0, step="analyse")
    assert not r["ok"] and "no gas detector" in r["message"]
    many = [snap(f"GT-{i}") for i in range(MAX_CHANNELS + 1)]
    assert not analyse(many, NOW, stale_after_s=30.0, step="analyse")["ok"]


def test_select_takes_named_channels_and_the_gas_channels_of_the_area() -> None:
    chans = [
        snap("GT-1"),
        snap("TT-1", kind="temperature", unit="°C", gas=None),
        snap("GT-9", area="B"),
        snap("OX-1", unit="%vol", gas="o2"),
    ]
    assert [c.name for c in select(chans, names=["GT-9"], area="R-101")] == ["GT-9", "GT-1", "OX-1"]
    assert select(chans, names=[], area=None) == []


def test_validity_limits_and_levels() -> None:
    """GB 30871-2022: hot work special/first ≤ 8 h, second ≤ 72 h; confined space ≤ 24 h;
    height levels by GB/T 3608 bands; lifting levels by mass (§9: > 100 t, 40-100 t, < 40 t)."""
    types = load_schemas()
    hw = types["hot_work_permit"]
    base = {"valid_from": "2026-12-07T08:00:00+08:00"}
    ok = rp.check_data(
        "hot_work_permit", hw, {**base, "level": "first", "valid_to": "2026-12-07T16:00:00+08:00"}
    )
    assert ok == []
    long = rp.check_data(
        "hot_work_permit", hw, {**base, "level": "first", "valid_to": "2026-12-07T16:00:01+08:00"}
    )
    assert long and "at most 8 h" in long[0][1]
    assert (
        rp.check_data(
            "hot_work_permit", hw, {**base, "level": "second", "valid_to": "2026-12-10T08:00:00+08:00"}
        )
        == []
    )
    cs = rp.check_data(
        "confined_space_permit",
        types["confined_space_permit"],
        {**base, "valid_to": "2026-12-08T08:30:00+08:00"},
    )
    assert cs and "24 h" in cs[0][1]
    backwards = rp.check_data(
        "hot_work_permit", hw, {**base, "level": "second", "valid_to": "2026-12-07T07:00:00+08:00"}
    )
    assert backwards[0][1] == "must be after valid_from"
    h = types["height_work_permit"]
    assert rp.check_data("height_work_permit", h, {"height_m": 5, "level": "I"}) == []
    assert "level II" in rp.check_data("height_work_permit", h, {"height_m": 5.5, "level": "I"})[0][1]
    lift = types["lifting_permit"]
    assert rp.check_data("lifting_permit", lift, {"mass_t": 100, "level": "second"}) == []
    assert "level first" in rp.check_data("lifting_permit", lift, {"mass_t": 100.5, "level": "second"})[0][1]
    assert rp.check_data("lifting_permit", lift, {"mass_t": 39.9, "level": "third"}) == []


def test_timing_rules() -> None:
    """GB 30871-2022: an approved permit's analysis older than 30 min (§5.3.1); hot work
    interrupted > 30 min (first level) / > 60 min (second level); confined space: periodic
    analysis after 2 h; past the validity's end."""
    types = load_schemas()
    now = dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.UTC)

    def rules(rtype: str, state: str, **data: str) -> list[str]:
        return [r for r, _ref, _m in rp.timing_due(rtype, types[rtype], state, data, now)]

    t = lambda minutes: (now - dt.timedelta(minutes=minutes)).isoformat()  # noqa: E731
    assert rules("hot_work_permit", "approved", last_analysis_at=t(29)) == []
    assert rules("hot_work_permit", "approved", last_analysis_at=t(31)) == ["analysis_stale"]
    assert rules("hot_work_permit", "suspended", level="first", suspended_at=t(31)) == ["reanalysis_required"]
    assert rules("hot_work_permit", "suspended", level="second", suspended_at=t(31)) == []
    assert rules("hot_work_permit", "suspended", level="second", suspended_at=t(61)) == [
        "reanalysis_required"
    ]
    assert rules("confined_space_permit", "in_progress", last_analysis_at=t(119)) == []
    assert rules("confined_space_permit", "in_progress", last_analysis_at=t(121)) == ["periodic_analysis_due"]
    assert rules("lifting_permit", "in_progress", valid_to=t(1)) == ["validity_expired"]
    assert rules("lifting_permit", "closed", valid_to=t(1)) == []


def test_permits_section_errors_name_file_line_and_column() -> None:
    """``safegw check`` on the ``permits:`` section: FILE:LINE:COL, the key path and what is valid."""
    from gateway.config import loads
    from gateway.core.configcheck import ConfigError

    text = (
        'gateway: {id: gw1, site: "91370100MA3C000000", state_dir: /tmp/x}\n'
        "permits:\n"
        "  stale_after: 0s\n"
        "  check_evry: 1m\n"
    )
    with pytest.raises(ConfigError) as ei:
        loads(text, file="F")
    assert ei.value.lines == [
        "F:3:16: permits.stale_after: must be greater than or equal to 1 (got 0.0)",
        "F:4:3: permits.check_evry: unknown key 'check_evry'; did you mean 'check_every'? "
        "valid here: stale_after, check_every",
    ]
    cfg = loads(
        'gateway: {id: gw1, site: "91370100MA3C000000", state_dir: /tmp/x}\npermits: {stale_after: 10s}\n'
    )
    assert cfg.permits.stale_after == 10.0 and cfg.permits.check_every == 60.0
