"""The corrections of issue 17 against the standards: each test names the standard and clause
its figures come from (docs/rules.md has the table, and marks what is from a secondary source)."""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gateway.core.batch import Batch
from gateway.core.config import ChannelBase
from rules.engine import RulesEngine
from rules.presets import (
    COAL_CH4,
    TOXIC,
    alarm_preset,
    canonical_gas,
    exposure_preset,
    molar_volume_l,
    occupational_limit,
)
from rules.reference import ReferenceEngine
from rules.settings import NS, ChannelRules, resolve

T0 = 1_700_000_000 * NS
MIN = 60 * NS
REPO = Path(__file__).resolve().parents[2]


def _spec(**kw: Any) -> ChannelBase:
    kw.setdefault("kind", "gas")
    return ChannelBase.model_validate({"name": "c", **kw})


def run(rules: list[ChannelRules], samples: list[tuple[int, float]]) -> list[tuple[int, str, str, str]]:
    """One channel's samples (ns, value) through the core and the reference: the same events
    from both, as (seconds from T0, rule, level, transition)."""
    eng, ref = RulesEngine(None, rules=rules), ReferenceEngine(rules)
    got, want = [], []
    for t, v in samples:
        b = Batch.build([0], [T0 + t], [v], [0])
        got += eng.process(b)
        want += ref.process([0], [T0 + t], [v], [0])
    key = [((e["ts"] - T0) // NS, e["rule"], e["level"], e["transition"]) for e in got]
    assert key == [((e["ts"] - T0) // NS, e["rule"], e["level"], e["transition"]) for e in want]
    return key


# ---------------------------------------------------------------------------- OELs

def test_oel_basis_follows_gbt50493_table() -> None:
    """GB/T 50493-2019 Table B.0.2: the alarm OEL is the MAC where there is one, else the
    PC-TWA (CO: 20 mg/m³, not its PC-STEL 30); GBZ 2.1-2019 Table 1 for the figures."""
    h2s = occupational_limit("硫化氢")
    assert (h2s.basis, h2s.oel_mg_m3, h2s.molar_mass) == ("MAC", 10.0, 34.08)
    co = occupational_limit("CO")
    assert (co.basis, co.oel_mg_m3, co.twa, co.stel) == ("PC-TWA", 20.0, 20.0, 30.0)
    assert "PC-TWA" in co.source and "GB/T 50493-2019 Table B.0.2" in co.source
    nh3 = occupational_limit("ammonia")
    assert (nh3.basis, nh3.oel_mg_m3) == ("PC-TWA", 20.0)
    with pytest.raises(KeyError, match="known"):
        occupational_limit("unobtainium")


def test_benzene_amendment_1() -> None:
    """GBZ 2.1-2019 Amendment No. 1 (2022): benzene PC-TWA 3, PC-STEL 6 mg/m³ (was 6 / 10)."""
    b = occupational_limit("苯")
    assert (b.twa, b.stel, b.oel_mg_m3) == (3.0, 6.0, 3.0)
    assert "before: PC-TWA 6, PC-STEL 10" in b.source
    assert alarm_preset("gbt50493", gas="benzene", unit="mg/m³") | {"source": ""} == {"h": 3.0, "hh": 6.0,
                                                                                      "source": ""}


@pytest.mark.parametrize("gas,mac,twa,stel,mm", [
    # GBZ 2.1-2019 Table 1
    ("so2", None, 5, 10, 64.07), ("no2", None, 5, 10, 46.01), ("hcn", 1, None, None, 27.03),
    ("toluene", None, 50, 100, 92.14), ("xylene", None, 50, 100, 106.17), ("methanol", None, 25, 50, 32.04),
    ("formaldehyde", 0.5, None, None, 30.03), ("phosgene", 0.5, None, None, 98.92),
    ("clo2", None, 0.3, 0.8, 67.45), ("hcl", 7.5, None, None, 36.46), ("acrylonitrile", None, 1, 2, 53.06),
    ("vinyl_chloride", None, 10, 25, 62.50),
])
def test_more_gases(gas: str, mac: float | None, twa: float | None, stel: float | None, mm: float) -> None:
    """GBZ 2.1-2019 Table 1 figures for the gases the guideline's industries meet most."""
    o = TOXIC[gas]
    assert (o.mac, o.twa, o.stel, o.molar_mass) == (mac, twa, stel, mm)
    assert o.oel_mg_m3 == (mac if mac is not None else twa)


def test_molar_volume_20c() -> None:
    """GBZ 159-2004 §3.4: volumes at 20 °C and 101.3 kPa; R·T/p = 24.061 L/mol (not 24.45 at 25 °C)."""
    assert molar_volume_l() == pytest.approx(24.061, abs=1e-3)
    assert molar_volume_l(25.0, 101.325) == pytest.approx(24.465, abs=1e-3)
    # H2S MAC 10 mg/m³ in ppm
    h = alarm_preset("gbt50493", gas="h2s", unit="ppm")["h"]
    assert h == pytest.approx(10 * 24.061 / 34.08, abs=1e-4)
    r = resolve(_spec(gas="h2s", unit="ppm", preset="gbt50493"), molar_volume=molar_volume_l(25.0, 101.325))
    assert r.h == pytest.approx(10 * 24.465 / 34.08, abs=1e-3)


def test_molar_volume_is_configurable(tmp_path: Path) -> None:
    """The reference conditions come from the config's hygiene section (GBZ 159-2004 §3.4 by default)."""
    from gateway.config import loads
    from gateway.core.channels import ChannelTable

    text = textwrap.dedent("""\
        gateway: {id: gw-1, site: "x"}
        hygiene: {reference_temperature_c: 25, reference_pressure_kpa: 101.325}
        devices:
          - name: plc
            protocol: modbus-tcp
            host: 127.0.0.1
            channels:
              - {name: AT-1, kind: gas, gas: H2S, unit: ppm, address: input:0, preset: gbt50493}
        """)
    cfg = loads(text)
    eng = RulesEngine.for_gateway(cfg, ChannelTable.from_config(cfg))
    assert eng.rules[0].h == pytest.approx(10 * 24.465 / 34.08, abs=1e-3)


# ---------------------------------------------------------------------------- units

def test_presets_check_units() -> None:
    """GB/T 50493-2019 §5.5.2: combustible levels are in %LEL, oxygen in %VOL; toxic in ppm or mg/m³."""
    with pytest.raises(ValueError, match=r"%LEL.*'%vol'.*coal-ch4"):
        alarm_preset("gbt50493", gas="combustible", unit="%vol")
    with pytest.raises(ValueError, match="oxygen"):
        alarm_preset("gbt50493", gas="o2", unit="ppm")
    with pytest.raises(ValueError, match="ppm or mg/m³"):
        alarm_preset("gbt50493", gas="h2s", unit="%LEL")
    for g in ("methane", "hydrogen", "propane", "ethylene", "甲烷", "H2"):
        assert alarm_preset("gbt50493", gas=g, unit="%LEL")["hh"] == 50.0, g
    with pytest.raises(ValueError, match="methane in mines"):
        alarm_preset("coal-ch4-working-face", gas="ch4", unit="%LEL")
    with pytest.raises(ValueError, match="dB"):
        exposure_preset("noise85", gas=None, unit="ppm")
    # the config check reports it at the key
    from rules.settings import check_channel
    assert check_channel(_spec(gas="combustible", unit="%vol", preset="gbt50493"))[0][0] == ("preset",)


# ---------------------------------------------------------------------------- MAC

def test_mac_is_a_ceiling() -> None:
    """GBZ 2.1-2019 (term MAC): no reading may pass it at any time. One second at 11 mg/m³
    H2S (MAC 10) is an exceedance, although its 15-minute mean is far below 10."""
    r = resolve(_spec(gas="h2s", unit="mg/m3", exposure="gbz2.1"))
    assert (r.mac, math.isnan(r.stel), r.peak) == (10.0, True, False)
    ev = run([r], [(0, 1.0), (NS, 1.0), (2 * NS, 11.0), (3 * NS, 1.0), (4 * NS, 10.0)])
    assert ev == [(2, "mac", "mac", "raise"), (3, "mac", "mac", "clear")]


# ---------------------------------------------------------------------------- peak exposure

def _peak_rules(twa: float = 8.0) -> list[ChannelRules]:
    r = resolve(_spec(kind="dust", unit="mg/m³", exposure="dust-other-total"))
    assert (r.twa, r.peak, math.isnan(r.stel)) == (twa, True, True)
    return [r]


def test_peak_exposure_excursions() -> None:
    """GBZ 2.1-2019 peak exposure (峰接触浓度) for other dust, PC-TWA 8 mg/m³ (Table 2):
    above 24 (3×) for at most 15 min at a time, at least 1 h apart, never above 40 (5×)."""
    s: list[tuple[int, float]] = [(0, 2.0)]
    s += [(k * MIN, 25.0) for k in range(1, 16)]  # 15 minutes above 3× (1 … 15 min): allowed
    s += [(16 * MIN + 1, 25.0)]  # over 15 minutes: exceeds
    s += [(17 * MIN, 2.0)]  # back below: the excursion ends (17 min)
    s += [(30 * MIN, 41.0), (30 * MIN + NS, 2.0)]  # above 5×: exceeds at once
    s += [(200 * MIN, 30.0), (201 * MIN, 2.0)]  # > 1 h after the last: allowed
    ev = run(_peak_rules(), s)
    assert ev == [(16 * 60, "peak", "peak", "raise"), (17 * 60, "peak", "peak", "clear"),
                  (30 * 60, "peak", "peak", "raise"), (30 * 60 + 1, "peak", "peak", "clear")]


def test_peak_exposure_counts() -> None:
    """GBZ 2.1-2019 peak exposure: at most 4 excursions a day (here: within 24 h), each at
    least 1 h after the previous one ended."""
    s: list[tuple[int, float]] = [(0, 2.0)]
    for k in range(5):  # five short excursions, 2 h apart
        t = (1 + 120 * k) * MIN
        s += [(t, 30.0), (t + MIN, 2.0)]
    s += [(700 * MIN, 30.0), (700 * MIN + 30 * NS, 2.0), (720 * MIN, 30.0), (721 * MIN, 2.0)]
    ev = run(_peak_rules(), s)
    # the fifth (481 min), then the sixth (700 min), then one only 19 min after the sixth
    assert ev == [(481 * 60, "peak", "peak", "raise"), (482 * 60, "peak", "peak", "clear"),
                  (700 * 60, "peak", "peak", "raise"), (700 * 60 + 30, "peak", "peak", "clear"),
                  (720 * 60, "peak", "peak", "raise"), (721 * 60, "peak", "peak", "clear")]


def test_no_dust_stel() -> None:
    """GBZ 2.1-2007 deleted the dust STELs: the dust monitor's example config has none, and
    its total-dust channel gets the PC-TWA of GBZ 2.1-2019 Table 2 with peak exposure."""
    from gateway.config import load
    from gateway.core.config import device_channels

    cfg = load(REPO / "config/instruments/dust-monitor.yaml")
    tsp = next(c for _, c in device_channels(cfg.devices[0]) if c.name == "D-01.TSP")
    r = resolve(tsp)
    assert (r.twa, math.isnan(r.stel), r.peak) == (8.0, True, True)
    assert exposure_preset("dust-coal-respirable", gas=None, unit="mg/m3")["twa"] == 2.5
    assert exposure_preset("dust-silica-10-50-total", gas=None, unit="mg/m3")["twa"] == 1.0
    with pytest.raises(ValueError, match="no respirable"):
        exposure_preset("dust-welding-fume-respirable", gas=None, unit="mg/m3")


# ---------------------------------------------------------------------------- coal mines

def test_coal_mine_methane_power_off_restores_below_the_restore_value() -> None:
    """《煤矿安全规程》(2022) §498 / AQ 1029-2019 §6: working-face methane alarm ≥ 1.0 %,
    power-off ≥ 1.5 %, power restored only below 1.0 % (not at the limit minus a deadband)."""
    wf = COAL_CH4["working-face"]
    assert (wf.alarm, wf.power_off, wf.restore) == (1.0, 1.5, 1.0)
    r = resolve(_spec(gas="ch4", unit="%CH4", preset="coal-ch4-working-face"))
    assert "AQ 1029-2019" in (r.source or "")
    assert (r.h, r.hh, r.restore, r.deadband) == (1.0, 1.5, 1.0, 0.0)
    ev = run([r], [(0, 0.5), (NS, 1.6), (2 * NS, 1.2), (3 * NS, 1.0), (4 * NS, 0.99), (5 * NS, 1.2),
                   (6 * NS, 0.3)])
    # power-off (hh) holds at 1.2 and 1.0, is restored below 1.0: the alarm (h) with it, as
    # the alarm is at ≥ 1.0; at 1.2 again only the alarm, not the power-off
    assert ev == [(1, "limit", "hh", "raise"), (4, "limit", "hh", "clear"), (5, "limit", "h", "raise"),
                  (6, "limit", "h", "clear")]
    # return airway: alarm and power-off both at 1.0 %: one level, restored below 1.0 %
    r = resolve(_spec(gas="ch4", unit="%vol", preset="coal-ch4-working-face-return"))
    assert (r.hh, math.isnan(r.h), r.restore) == (1.0, True, 1.0)
    with pytest.raises(ValueError, match="restore"):
        resolve(_spec(unit="%vol", alarms={"h": 1.0, "restore": 0.5}))


def test_coal_mine_gas_limits() -> None:
    """《煤矿安全规程》(2022) §135: CO ≤ 0.0024 % (24 ppm), H2S ≤ 0.00066 %, O2 ≥ 20 %."""
    assert alarm_preset("coal-co", gas="co", unit="ppm")["h"] == 24.0
    assert alarm_preset("coal-co", gas="co", unit="%vol")["h"] == 0.0024
    assert alarm_preset("coal-h2s", gas="h2s", unit="ppm")["h"] == 6.6
    assert alarm_preset("coal-o2", gas="o2", unit="%vol")["l"] == 20.0
    with pytest.raises(ValueError, match="by volume"):
        alarm_preset("coal-co", gas="co", unit="mg/m3")
    assert canonical_gas("瓦斯") == "methane"


# ---------------------------------------------------------------------------- safegw check

def _check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    from gateway.cli import main

    rc = main(["check", "-c", str(path)])
    return rc, capsys.readouterr().out.splitlines()


def test_check_warns_on_limits_above_gbt50493(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """GB/T 50493-2019 §5.5.2: level 1 ≤ 100 % OEL, level 2 ≤ 200 % OEL. H2S at 10/20 ppm
    is 142 %/283 % of its MAC (10 mg/m³ = 7.06 ppm): a warning at each key, exit 0."""
    f = tmp_path / "gw.yaml"
    f.write_text(textwrap.dedent("""\
        gateway: {id: gw-1, site: "x"}
        devices:
          - name: plc
            protocol: modbus-tcp
            host: 127.0.0.1
            channels:
              - {name: AT-1, kind: gas, gas: H2S, unit: ppm, address: input:0,
                 alarms: {h: 10, hh: 20}}
              - {name: AT-2, kind: gas, gas: CO, unit: ppm, address: input:1, alarms: {h: 15, hh: 30}}
              - {name: GT-1, kind: gas, gas: propane, unit: "%LEL", address: input:2, alarms: {h: 30, hh: 50}}
        """))
    rc, out = _check(f, capsys)
    assert rc == 0
    warn = [ln for ln in out if ": warning: " in ln]
    # FILE:LINE:COL at the value to fix (h: 10 is at column 22 of line 8)
    assert warn[0].startswith(f"{f}:8:22: devices[0].channels[0].alarms.h: warning: "
                              "level 1 at 10 ppm (142 % of")
    assert "GB/T 50493-2019 §5.5.2" in warn[0] and "MAC 10 mg/m³" in warn[0]
    assert warn[1].startswith(f"{f}:8:30: devices[0].channels[0].alarms.hh: warning: "
                              "level 2 at 20 ppm (283 %")
    assert re.match(rf"{re.escape(str(f))}:10:\d+: devices\[0\]\.channels\[2\]\.alarms\.h: warning: "
                    r"level 1 at 30 %LEL is above the 25 %LEL", warn[2]), warn[2]
    assert len(warn) == 3  # CO 15/30 ppm is within 17.2/34.4 ppm
    assert out[-1] == "ok: 1 devices, 3 channels, 3 warnings"


def test_demo_config_within_gbt50493(capsys: pytest.CaptureFixture[str]) -> None:
    """The demo config says its gas limits follow GB/T 50493-2019 §5.5.2: ``safegw check``
    finds nothing above what the standard allows."""
    rc, out = _check(REPO / "config/demo.yaml", capsys)
    assert rc == 0 and not [ln for ln in out if ": warning: " in ln], out


# ---------------------------------------------------------------------------- impulse noise

def test_impulse_noise_limit_by_count() -> None:
    """GBZ 2.2-2007 §11 (impulse noise): peak level ≤ 140 dB for ≤ 100 impulses a working day,
    ≤ 130 dB for ≤ 1,000, ≤ 120 dB for ≤ 10,000. Impulses are rises above the configured
    threshold (here 110 dB), counted over 8 h."""
    r = resolve(_spec(kind="noise", unit="dB(C)", exposure={"kind": "impulse", "threshold_db": 110}))
    assert r.impulse_db == 110.0 and r.exposure is None
    s: list[tuple[int, float]] = []
    t = 0
    for _ in range(100):  # 100 impulses of 135 dB, 2 s apart: within the 140 dB row
        s += [(t, 135.0), (t + NS, 80.0)]
        t += 2 * NS
    s += [(t, 135.0)]  # the 101st: the 130 dB row, which 135 exceeds
    s += [(t + NS, 80.0)]
    ev = run([r], s)
    assert ev == [(t // NS, "impulse", "impulse", "raise"), (t // NS + 1, "impulse", "impulse", "clear")]
    # 8 h later the count has gone: 135 dB is within the limit again
    later = t + 8 * 3600 * NS + 20 * MIN
    assert run([r], [*s, (later, 135.0)])[-1] == ev[-1]
    with pytest.raises(ValueError, match="threshold_db"):
        resolve(_spec(kind="noise", unit="dB(C)", exposure={"kind": "impulse"}))
    from rules.settings import check_channel
    bad = _spec(kind="noise", unit="dB(C)", exposure={"kind": "impulse"})
    assert check_channel(bad)[0][0] == ("exposure",)


# ---------------------------------------------------------------------------- restart

def test_restart_rebuilds_the_new_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a restart (restore + warm from the journaled samples) the MAC, peak-exposure,
    impulse-noise and restore-value rules go on as in a run that never stopped: their state
    (open excursions and their count, impulses per bucket) is rebuilt by the replay.
    (Impulse table scaled down so the test's readings reach it, as in the equivalence test.)"""
    import rules.exposure
    import rules.settings
    from tests.rules.test_rules_warm import STEP, key, make_batches
    from tests.rules.test_rules_warm import T0 as W0
    from tests.rules.test_rules_warm import make_rules as warm_rules
    from tests.rules.test_rules_warm import run as warm_run

    table = ((3, 60.0), (10, 50.0), (30, 45.0))
    monkeypatch.setattr(rules.settings, "IMPULSE_LIMITS", table)
    monkeypatch.setattr(rules.exposure, "IMPULSE_LIMITS", table)
    n, steps, cut = 24, 1500, 1100
    rs = warm_rules(n)
    for i, r in enumerate(rs):
        if i % 4 == 0:
            r.mac = 50.0
        elif i % 4 == 1:
            r.twa, r.stel, r.peak = 15.0, math.nan, True
        elif i % 4 == 2:
            r.impulse_db = 40.0
        r.hh, r.restore = 55.0, 45.0
    batches = make_batches(n, steps)
    whole = warm_run(RulesEngine(None, rules=rs), batches, 0)
    first = RulesEngine(None, rules=rs)
    before = warm_run(first, batches[:cut], 0)
    after_ref = whole[len(before):]
    assert {"mac", "peak", "impulse"} <= {e["rule"] for e in after_ref}
    assert any(e["rule"] == "limit" and e["level"] == "hh" for e in after_ref)
    second = RulesEngine(None, rules=rs)
    second.restore(before)
    second.warm(iter(batches[:cut]), W0 + cut * STEP)
    assert [key(e) for e in warm_run(second, batches[cut:], cut)] == [key(e) for e in after_ref]


def test_check_refuses_incomplete_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What the daemon would refuse at start, ``safegw check`` reports at the key (exit 2):
    an impulse count without its threshold (GBZ 2.2-2007 §11 sets none), a restore value
    (AQ 1029-2019 §6) without the power-off level it belongs to."""
    f = tmp_path / "gw.yaml"
    f.write_text(textwrap.dedent("""\
        gateway: {id: gw-1, site: "x"}
        devices:
          - name: plc
            protocol: modbus-tcp
            host: 127.0.0.1
            channels:
              - {name: N-1, kind: noise, unit: dB(C), address: input:0, exposure: {kind: impulse}}
              - {name: M-1, kind: gas, gas: ch4, unit: "%vol", address: input:1,
                 alarms: {h: 1.0, restore: 0.5}}
        """))
    rc, out = _check(f, capsys)
    assert rc == 2
    assert out[0].startswith(f"{f}:7:") and "channels[0].exposure: " in out[0] and "threshold_db" in out[0]
    assert out[1].startswith(f"{f}:9:") and "channels[1].alarms.restore: " in out[1] and "hh limit" in out[1]
