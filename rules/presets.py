"""Alarm and exposure presets a channel can name instead of numbers.

Each preset is a small dict of alarm settings (and exposure limits) taken from the
Chinese standards the plant is inspected against. A channel names one with
``preset:`` (alarm limits) or ``exposure:`` (TWA / STEL / noise dose); anything it
also writes under ``alarms:`` overrides the preset's value for that key.

Sources (check against the edition in force at your site):

- **GB/T 50493-2019** 《石油化工可燃气体和有毒气体检测报警设计标准》 §5.5.2:
  combustible gas level-1 alarm ≤ 25 %LEL, level-2 ≤ 50 %LEL; toxic gas level-1
  ≤ 100 % OEL, level-2 ≤ 200 % OEL; oxygen deficiency 19.5 %VOL and enrichment
  23.5 %VOL. The standard picks the OEL in the order MAC, PC-STEL, PC-TWA; the toxic
  presets below use the figures the project settled on (PC-TWA where there is one,
  e.g. CO 20/40 mg/m³), which are the stricter (lower) choice.
- **GBZ 2.1-2019** 《工作场所有害因素职业接触限值 第1部分：化学有害因素》:
  H₂S MAC 10 mg/m³; CO PC-TWA 20, PC-STEL 30 mg/m³ (non-high-altitude); NH₃ PC-TWA
  20, PC-STEL 30; Cl₂ MAC 1; benzene PC-TWA 6, PC-STEL 10.
- **GBZ 2.2-2007** 《…第2部分：物理因素》 §11 and GBZ/T 229.4: noise, 8-hour equivalent
  level 85 dB(A), equal-energy (3 dB exchange rate).
- **煤矿安全规程** (Coal Mine Safety Regulations) and **AQ 6201** (coal-mine safety
  monitoring systems): methane sensors at working faces alarm at ≥ 1.0 % CH₄ and cut
  power at ≥ 1.5 % CH₄.

Limits are in mg/m³ for toxic gases. When a channel's unit is ppm they are converted
with the gas's molar mass at 25 °C and 101.325 kPa (24.45 L/mol); a detector calibrated
at other reference conditions should write its limits explicitly.
"""

from __future__ import annotations

from typing import Any

MOLAR_VOLUME_L = 24.45  # L/mol at 25 °C, 101.325 kPa

#: toxic gases: molar mass g/mol, alarm OEL (mg/m³) for GB/T 50493, and GBZ 2.1 limits
TOXIC: dict[str, dict[str, float | None]] = {
    "h2s": {"mm": 34.08, "oel": 10.0, "twa": None, "stel": None, "mac": 10.0},
    "co": {"mm": 28.01, "oel": 20.0, "twa": 20.0, "stel": 30.0, "mac": None},
    "nh3": {"mm": 17.03, "oel": 20.0, "twa": 20.0, "stel": 30.0, "mac": None},
    "cl2": {"mm": 70.90, "oel": 1.0, "twa": None, "stel": None, "mac": 1.0},
    "benzene": {"mm": 78.11, "oel": 6.0, "twa": 6.0, "stel": 10.0, "mac": None},
}
GAS_ALIASES = {
    "hydrogen_sulfide": "h2s", "hydrogen-sulfide": "h2s", "硫化氢": "h2s",
    "carbon_monoxide": "co", "carbon-monoxide": "co", "一氧化碳": "co",
    "ammonia": "nh3", "氨": "nh3", "chlorine": "cl2", "氯气": "cl2", "氯": "cl2",
    "c6h6": "benzene", "苯": "benzene",
    "combustible": "combustible", "lel": "combustible", "flammable": "combustible",
    "可燃气体": "combustible",
    "o2": "o2", "oxygen": "o2", "氧气": "o2",
    "ch4": "ch4", "methane": "ch4", "甲烷": "ch4",
}

#: named alarm presets (limits in the unit noted)
PRESETS: dict[str, dict[str, Any]] = {
    # GB/T 50493-2019 §5.5.2, combustible gas in %LEL
    "combustible": {"h": 25.0, "hh": 50.0, "unit": "%LEL",
                    "source": "GB/T 50493-2019 §5.5.2: level 1 ≤ 25 %LEL, level 2 ≤ 50 %LEL"},
    # GB/T 50493-2019 §5.5.2, oxygen in %VOL
    "o2": {"l": 19.5, "h": 23.5, "unit": "%VOL",
           "source": "GB/T 50493-2019 §5.5.2: O2 deficiency 19.5 %VOL, enrichment 23.5 %VOL"},
    # Coal Mine Safety Regulations / AQ 6201: alarm 1.0 %, power-off 1.5 % CH4
    "coal-ch4": {"h": 1.0, "hh": 1.5, "unit": "%CH4",
                 "source": "煤矿安全规程 / AQ 6201: CH4 alarm ≥ 1.0 %, power-off ≥ 1.5 %"},
}
PRESET_ALIASES = {"gbt50493-combustible": "combustible", "oxygen": "o2", "ch4-coal": "coal-ch4",
                  "coal-mine-ch4": "coal-ch4"}

#: exposure presets: kind, limits
EXPOSURE_PRESETS: dict[str, dict[str, Any]] = {
    "noise85": {"kind": "noise", "criterion_db": 85.0, "exchange_rate_db": 3.0,
                "source": "GBZ 2.2-2007 §11: Leq,8h 85 dB(A), 3 dB exchange rate"},
}


def canonical_gas(gas: str | None) -> str | None:
    if gas is None:
        return None
    g = gas.strip().lower()
    return GAS_ALIASES.get(g, g)


def _to_unit(mg_m3: float, gas: str, unit: str) -> float:
    u = unit.strip().lower().replace("³", "3")
    if u in ("mg/m3", "mg/nm3", ""):
        return mg_m3
    if u == "ppm":
        mm = TOXIC[gas]["mm"]
        assert mm is not None
        return round(mg_m3 * MOLAR_VOLUME_L / mm, 4)
    raise ValueError(f"toxic-gas presets are in mg/m³ or ppm, not {unit!r}; write the limits explicitly")


def alarm_preset(name: str, *, gas: str | None, unit: str) -> dict[str, Any]:
    """Resolve a preset name for a channel into alarm settings (h/hh/l/ll ...)."""
    key = name.strip().lower()
    key = PRESET_ALIASES.get(key, key)
    if key in ("gbt50493", "gb/t50493", "gbt50493-2019"):
        g = canonical_gas(gas)
        if g == "combustible" or (g is None and unit.upper() == "%LEL"):
            key = "combustible"
        elif g == "o2":
            key = "o2"
        elif g in TOXIC:
            oel = TOXIC[g]["oel"]
            assert oel is not None
            return {"h": _to_unit(oel, g, unit), "hh": _to_unit(2 * oel, g, unit),
                    "source": f"GB/T 50493-2019 §5.5.2: {g} 100 %/200 % of OEL {oel:g} mg/m³ (GBZ 2.1-2019)"}
        else:
            raise ValueError(
                f"preset gbt50493 needs the channel's gas: combustible, o2 or one of {', '.join(TOXIC)}"
                f" (got {gas!r})")
    if key in TOXIC:
        return alarm_preset("gbt50493", gas=key, unit=unit)
    if key not in PRESETS:
        raise ValueError(
            f"unknown preset {name!r}; known: gbt50493, {', '.join(PRESETS)}, {', '.join(TOXIC)}")
    return {k: v for k, v in PRESETS[key].items() if k != "unit"}


def exposure_preset(name: str, *, gas: str | None, unit: str) -> dict[str, Any]:
    """Resolve an exposure preset: ``noise85``, ``gbz2.1`` (by the channel's gas) or a gas name."""
    key = name.strip().lower()
    if key in EXPOSURE_PRESETS:
        return dict(EXPOSURE_PRESETS[key])
    g = canonical_gas(gas) if key in ("gbz2.1", "gbz2.1-2019", "gbz21") else canonical_gas(key)
    if g in TOXIC:
        lim = TOXIC[g]
        twa, stel, mac = lim["twa"], lim["stel"], lim["mac"]
        out: dict[str, Any] = {"kind": "concentration",
                               "source": f"GBZ 2.1-2019: {g} PC-TWA {twa} PC-STEL {stel} MAC {mac} mg/m³"}
        if twa is not None:
            out["twa"] = _to_unit(twa, g, unit)
        if stel is not None:
            out["stel"] = _to_unit(stel, g, unit)
        if mac is not None and stel is None:
            # a MAC substance has no averaged limit; a 15-minute average above the
            # ceiling is certainly an overexposure, so use it as the STEL check
            out["stel"] = _to_unit(mac, g, unit)
        return out
    raise ValueError(f"unknown exposure preset {name!r}; known: noise85, gbz2.1 (with gas:), "
                     f"{', '.join(TOXIC)}")
