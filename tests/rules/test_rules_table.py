"""Table-driven unit tests of every rule, with hand-computed expectations."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.core.batch import Batch
from gateway.core.config import ChannelBase
from rules.engine import RulesEngine
from rules.reference import ReferenceEngine
from rules.settings import NS, ChannelRules, resolve

T0 = 1_750_000_000 * NS
GOOD, CAL, TIMEOUT, OOR = 0x00, 0x41, 0x81, 0x83

Step = tuple[Any, ...]  # ("s", t_s, value[, quality]) a sample; ("t", t_s) a tick


def run(cr: ChannelRules, steps: list[Step], *, ref: bool = False) -> list[tuple[float, str, str, str]]:
    """Feed one channel; return (t_s, rule, level, transition) of every event."""
    eng: Any = ReferenceEngine([cr]) if ref else RulesEngine(None, rules=[cr])
    out = []
    for st in steps:
        if st[0] == "s":
            q = st[3] if len(st) > 3 else GOOD
            ts = T0 + round(st[1] * NS)
            if ref:
                evs = eng.process([0], [ts], [float(st[2])], [q])
            else:
                evs = eng.process(Batch.build([0], [ts], [st[2]], [q]))
        else:
            evs = eng.tick(T0 + round(st[1] * NS))
        out += [((e["ts"] - T0) / NS, e["rule"], e["level"], e["transition"]) for e in evs]
    return out


def both(cr: ChannelRules, steps: list[Step]) -> list[tuple[float, str, str, str]]:
    got = run(cr, steps)
    assert run(cr, steps, ref=True) == got, "reference and vectorized core disagree"
    return got


def samples(pairs: Sequence[tuple[float, float]]) -> list[Step]:
    return [("s", t, v) for t, v in pairs]


LIMIT_CASES = [
    pytest.param(dict(h=10.0, deadband=1.0),
                 samples([(0, 9), (1, 10), (2, 9.5), (3, 9.0), (4, 8.99)]),
                 [(1, "limit", "h", "raise"), (4, "limit", "h", "clear")], id="deadband-boundary"),
    pytest.param(dict(h=10.0),
                 samples([(0, 9.999), (1, 10.0), (2, 9.999)]),
                 [(1, "limit", "h", "raise"), (2, "limit", "h", "clear")], id="no-deadband-at-limit"),
    pytest.param(dict(h=10.0, hh=20.0, deadband=0.5),
                 samples([(0, 15), (1, 25), (2, 19.6), (3, 19.4), (4, 9.6), (5, 9.4)]),
                 [(0, "limit", "h", "raise"), (1, "limit", "hh", "escalate"), (3, "limit", "h", "deescalate"),
                  (5, "limit", "h", "clear")], id="escalate-deescalate"),
    pytest.param(dict(l=5.0, ll=2.0, deadband=0.5),
                 samples([(0, 6), (1, 5), (2, 1), (3, 2.4), (4, 2.6), (5, 5.4), (6, 5.6)]),
                 [(1, "limit", "l", "raise"), (2, "limit", "ll", "escalate"), (4, "limit", "l", "deescalate"),
                  (6, "limit", "l", "clear")], id="low-limits"),
    pytest.param(dict(h=10.0, on_ns=5 * NS),
                 samples([(0, 11), (1, 11), (4, 11), (4.5, 9), (5, 11), (9, 11), (10, 11)]),
                 [(10, "limit", "h", "raise")], id="on-delay-restarts"),
    pytest.param(dict(h=10.0, on_ns=5 * NS),
                 [("s", 0, 11), ("t", 3), ("t", 5)],
                 [(5, "limit", "h", "raise")], id="on-delay-by-tick"),
    pytest.param(dict(h=10.0, off_ns=3 * NS),
                 samples([(0, 11), (1, 5), (2, 11), (3, 5), (5, 5), (6, 5)]),
                 [(0, "limit", "h", "raise"), (6, "limit", "h", "clear")], id="off-delay"),
    pytest.param(dict(h=10.0, range_lo=0.0, range_hi=100.0),
                 [("s", 0, 11), ("s", 1, math.nan), ("s", 2, 5, TIMEOUT), ("s", 3, 150), ("s", 4, 5)],
                 [(0, "limit", "h", "raise"), (1, "range", "range", "raise"), (4, "range", "range", "clear"),
                  (4, "limit", "h", "clear")], id="nan-bad-out-of-range-hold"),
    pytest.param(dict(h=10.0),
                 [("s", 0, 5, OOR), ("s", 1, 5)],
                 [(0, "range", "range", "raise"), (1, "range", "range", "clear")], id="driver-out-of-range"),
]


@pytest.mark.parametrize("kw,steps,want", LIMIT_CASES)
def test_limits(kw: dict[str, Any], steps: list[Step], want: list[tuple[float, str, str, str]]) -> None:
    assert both(ChannelRules("c", **kw), steps) == want


def test_calibrating_never_raises_process_alarms() -> None:
    cr = ChannelRules("c", h=10.0, stale_ns=3 * NS)
    got = both(cr, [("s", 0, 50.0), ("s", 1, 80.0, CAL), ("s", 2, 90.0, CAL), ("t", 30), ("s", 31, 95.0)])
    assert got == [
        (0, "limit", "h", "raise"),
        (1, "maintenance", "maintenance", "suppress"),
        (1, "limit", "h", "suppress"),
        (31, "maintenance", "maintenance", "unsuppress"),
        (31, "limit", "h", "raise"),
    ]


def test_stale_and_bad_for() -> None:
    cr = ChannelRules("c", stale_ns=3 * NS, bad_ns=2 * NS)
    got = both(cr, [("s", 0, 1.0), ("t", 2), ("t", 3), ("t", 3.5), ("s", 4, 1.0, TIMEOUT), ("t", 5),
                    ("t", 6), ("s", 7, 1.0)])
    assert got == [(3.5, "stale", "stale", "raise"), (4, "stale", "stale", "clear"),
                   (6, "bad", "bad", "raise"), (7, "bad", "bad", "clear")]


def test_rate_of_change() -> None:
    cr = ChannelRules("c", roc=10.0)  # per second
    got = both(cr, samples([(0, 0), (1, 5), (2, 20), (4, 30), (5, 40.5), (6, 41)]))
    assert got == [(2, "roc", "roc", "raise"), (4, "roc", "roc", "clear"), (5, "roc", "roc", "raise"),
                   (6, "roc", "roc", "clear")]


def test_frozen() -> None:
    cr = ChannelRules("c", frozen_ns=600 * NS)
    steps = samples([(t, 7.0) for t in range(0, 660, 60)] + [(660, 7.01)])
    assert both(cr, steps) == [(600, "frozen", "frozen", "raise"), (660, "frozen", "frozen", "clear")]


def test_trend_slope_and_prediction() -> None:
    # 2-minute window in 15 s buckets; the level rises 6 units/min from t=0
    cr = ChannelRules("c", h=100.0, trend_ns=120 * NS, trend_slope=5.0, predict_ns=300 * NS,
                      predict_limit=100.0)
    steps = samples([(t, 10.0 + 0.1 * t) for t in range(0, 400)])
    got = both(cr, steps)
    trend = [g for g in got if g[1] == "trend"]
    pred = [g for g in got if g[1] == "predict"]
    # the slope is known once three 15 s buckets are complete (the first one may be partial)
    assert trend and trend[0][3] == "raise" and 30 <= trend[0][0] <= 61
    # value(t) = 10 + 0.1 t reaches 100 at t = 900; under 300 s to go from t ≈ 600,
    # but the bucketed fit lags by half a bucket at most
    assert pred == [] or pred[0][0] >= 590
    steps = samples([(t, 10.0 + 0.1 * t) for t in range(0, 700)])
    pred = [g for g in both(cr, steps) if g[1] == "predict"]
    assert pred and pred[0][3] == "raise" and 590 <= pred[0][0] <= 620
    # a falling level with a rising-slope limit never alarms
    down = samples([(t, 100.0 - 0.1 * t) for t in range(0, 300)])
    assert [g for g in both(cr, down) if g[1] in ("trend", "predict")] == []


def test_twa_over_synthetic_8h() -> None:
    cr = ChannelRules("c", exposure="concentration", twa=20.0, stel=math.nan, hold_ns=120 * NS)
    # 25 mg/m³ sampled each minute: the 8-h integral passes 20 × 28800 after 385 minutes
    got = both(cr, samples([(60 * k, 25.0) for k in range(480)]))
    assert got == [(385 * 60, "twa", "twa", "raise")]
    # 15 mg/m³ all shift long stays under PC-TWA 20
    assert both(cr, samples([(60 * k, 15.0) for k in range(500)])) == []


def test_stel_15_minutes() -> None:
    cr = ChannelRules("c", exposure="concentration", twa=math.nan, stel=30.0, hold_ns=120 * NS)
    # 35 for 30 min then 0: 35 × 60 per minute passes 30 × 900 after 13 intervals (780 s)
    series = [(60 * k, 35.0) for k in range(30)] + [(60 * k, 0.0) for k in range(30, 60)]
    got = both(cr, samples(series))
    assert got[0] == (780, "stel", "stel", "raise")
    assert got[1][1:] == ("stel", "stel", "clear") and 30 * 60 < got[1][0] <= 30 * 60 + 17 * 60


def test_noise_leq_8h_3db() -> None:
    cr = ChannelRules("c", kind="noise", unit="dB(A)", exposure="noise", twa=85.0, hold_ns=120 * NS)
    # 88 dB(A) is twice the energy of 85: Leq,8h passes 85 after half a shift (241 minutes)
    eng = RulesEngine(None, rules=[cr])
    got = []
    for k in range(300):
        got += eng.process(Batch.build([0], [T0 + 60 * k * NS], [88.0], [0]))
    assert [(round((e["ts"] - T0) / NS), e["rule"], e["transition"]) for e in got] == [
        (241 * 60, "twa", "raise")]
    assert got[0]["value"] == pytest.approx(85.0, abs=0.05) and got[0]["limit"] == 85.0
    assert both(cr, samples([(60 * k, 84.0) for k in range(500)])) == []


def _spec(**kw: Any) -> ChannelBase:
    return ChannelBase.model_validate({"name": "x", "kind": "gas", **kw})


@pytest.mark.parametrize("spec,want", [
    (dict(preset="gbt50493", gas="combustible", unit="%LEL"), dict(h=25.0, hh=50.0)),
    (dict(preset="gbt50493", gas="h2s", unit="mg/m3"), dict(h=10.0, hh=20.0)),
    (dict(preset="gbt50493", gas="co", unit="mg/m³"), dict(h=20.0, hh=40.0)),
    (dict(preset="gbt50493", gas="nh3", unit="mg/m3"), dict(h=20.0, hh=40.0)),
    (dict(preset="gbt50493", gas="cl2", unit="mg/m3"), dict(h=1.0, hh=2.0)),
    # GBZ 2.1-2019 Amendment No. 1 (2022): benzene PC-TWA 3 mg/m³ (was 6)
    (dict(preset="gbt50493", gas="benzene", unit="mg/m3"), dict(h=3.0, hh=6.0)),
    # 10 mg/m³ × 24.061/34.08 (20 °C, 101.3 kPa: GBZ 159-2004 §3.4)
    (dict(preset="gbt50493", gas="h2s", unit="ppm"), dict(h=7.0602, hh=14.1203)),
    (dict(preset="o2", unit="%VOL"), dict(l=19.5, h=23.5)),
    (dict(preset="coal-ch4", unit="%"), dict(h=1.0, hh=1.5, restore=1.0, deadband=0.0)),
    (dict(preset="gbt50493", gas="combustible", unit="%LEL", alarms={"h": 20, "delay": "5s"}),
     dict(h=20.0, hh=50.0, on_ns=5 * NS)),
])
def test_presets(spec: dict[str, Any], want: dict[str, float]) -> None:
    r = resolve(_spec(**spec))
    for k, v in want.items():
        assert getattr(r, k) == pytest.approx(v), k
    assert r.source is not None or "alarms" in spec


def test_exposure_presets() -> None:
    r = resolve(_spec(exposure="noise85", unit="dB(A)"))
    assert (r.exposure, r.twa, r.exchange_db) == ("noise", 85.0, 3.0)
    r = resolve(_spec(exposure="gbz2.1", gas="co", unit="mg/m3"))
    assert (r.exposure, r.twa, r.stel) == ("concentration", 20.0, 30.0)
    with pytest.raises(ValueError, match="needs the channel's gas"):
        resolve(_spec(preset="gbt50493", unit="ppm"))


def test_several_samples_of_one_channel_in_one_batch() -> None:
    eng = RulesEngine(None, rules=[ChannelRules("a", h=10.0), ChannelRules("b", h=10.0)])
    b = Batch.build([1, 0, 1, 0], [T0, T0, T0 + NS, T0 + NS], [11, 5, 5, 11], [0, 0, 0, 0])
    evs = eng.process(b)
    assert [(e["channel"], e["transition"], e["ts"]) for e in evs] == [
        ("b", "raise", T0), ("a", "raise", T0 + NS), ("b", "clear", T0 + NS)]
    # older samples than the channel's last are ignored
    assert eng.process(Batch.build([0], [T0], [50], [0])) == []
    assert eng.stats["ignored_old"] == 1
    np.testing.assert_array_equal(eng.act[4], [1, 0])


def test_preset_override_must_keep_limit_order() -> None:
    with pytest.raises(ValueError, match="no longer rise"):
        resolve(_spec(preset="gbt50493", gas="combustible", unit="%LEL", alarms={"h": 60}))


def test_check_reports_preset_problems_at_their_keys(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``safegw check`` catches what the rules would refuse at start, at the key to fix."""
    from gateway.cli import main

    f = tmp_path / "gw.yaml"
    f.write_text(textwrap.dedent("""\
        gateway: {id: gw-1, site: "x"}
        devices:
          - name: plc
            protocol: modbus-tcp
            host: 127.0.0.1
            channels:
              - {name: LEL1, kind: gas, gas: combustible, unit: "%LEL", address: holding:1, preset: gbt50493}
              - name: LEL2
                kind: gas
                gas: combustible
                unit: "%LEL"
                address: holding:2
                preset: gbt50493
                alarms: {h: 60}
              - {name: X1, kind: gas, unit: ppm, address: holding:3, preset: nonesuch}
              - {name: X2, kind: gas, unit: ppm, address: holding:4, alarms: {h: 50, hh: 40}}
              - {name: X3, kind: gas, unit: ppm, address: holding:5, exposure: nonesuch}
    """), encoding="utf-8")
    code = main(["check", "-c", str(f)])
    out = capsys.readouterr().out.splitlines()
    assert code == 2
    assert out[0] == (f"{f}:14:21: devices[0].channels[1].alarms.h: with preset 'gbt50493' the limits "
                      "no longer rise ll < l < h < hh (h=60, hh=50); override both")
    assert out[1].startswith(f"{f}:15:70: devices[0].channels[2].preset: unknown preset 'nonesuch'; known: ")
    # (limits out of order without a preset were caught before: reported once)
    assert out[2] == (f"{f}:16:82: devices[0].channels[3].alarms.hh: limits must rise ll < l < h < hh: "
                      "h=50 is not below hh=40")
    assert out[3].startswith(f"{f}:17:72: devices[0].channels[4].exposure: "
                             "unknown exposure preset 'nonesuch'")
    assert len(out) == 4
    # the same file without the broken channels passes, as it starts
    lines = f.read_text().splitlines()
    f.write_text("\n".join(lines[:7]) + "\n", encoding="utf-8")
    assert main(["check", "-c", str(f)]) == 0


def test_clock_step_back_keeps_evaluating() -> None:
    """NTP steps the gateway's clock back 30 s (it ran fast). Samples stamped after the step
    are older than the last one before it; from the next tick they are evaluated at once,
    not dropped until the clock has caught up (which would hide this gas alarm for 30 s)."""
    cr = ChannelRules("c", h=50.0, stale_ns=3 * NS, on_ns=2 * NS)
    steps: list[Step] = []
    for t in range(0, 100):  # a sample and a tick each second: steady at 10
        steps += [("s", t, 10.0), ("t", t + 0.5)]
    for t in range(70, 90):  # the clock now reads 30 s less; the value rises at t = 75
        steps += [("s", t + 0.2, 60.0 if t >= 75 else 10.0), ("t", t + 0.5)]
    got = both(cr, steps)
    assert got == [(77.2, "limit", "h", "raise")]  # on-delay 2 s from the crossing at 75.2
    # only what came between the step and the next tick was dropped as old (the sample at 70.2)
    eng = RulesEngine(None, rules=[cr])
    for st in steps:
        if st[0] == "s":
            eng.process(Batch.build([0], [T0 + round(st[1] * NS)], [st[2]], [GOOD]))
        else:
            eng.tick(T0 + round(st[1] * NS))
    assert eng.stats["ignored_old"] == 1
