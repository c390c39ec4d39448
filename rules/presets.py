"""Alarm and exposure presets a channel can name instead of numbers.

Each preset is a small dict of alarm settings (and exposure limits) taken from the
Chinese standards the plant is inspected against. A channel names one with
``preset:`` (alarm limits) or ``exposure:`` (TWA / STEL / MAC / noise dose); anything it
also writes under ``alarms:`` overrides the preset's value for that key. A preset checks
the channel's unit: %LEL for combustible-gas levels, %vol for oxygen and for methane in
mines, ppm or mg/m³ for toxic gases (converted). docs/rules.md has the table of every
value with its standard and clause, and marks what could not be checked against the
standard's own text.

Sources (check against the edition in force at your site):

- **GB/T 50493-2019** 《石油化工可燃气体和有毒气体检测报警设计标准》 §5.5.2:
  combustible gas level-1 alarm ≤ 25 %LEL, level-2 ≤ 50 %LEL; toxic gas level-1
  ≤ 100 % OEL, level-2 ≤ 200 % OEL; oxygen deficiency 19.5 %VOL, enrichment 23.5 %VOL.
  **Which figure is the OEL**: the standard's table of common toxic gases (Appendix B,
  Table B.0.2, with the MAC / PC-TWA / PC-STEL of GBZ 2.1 beside the alarm values AL/AH)
  sets AL = the MAC where the gas has one, else the PC-TWA (CO: AL 20 mg/m³ = its PC-TWA,
  not its PC-STEL 30). ``occupational_limit`` follows that table, and says which basis
  each gas uses. A clause ranking "MAC, then PC-STEL, then PC-TWA" was not found; the
  table's choice is also the stricter one. (Table read from a reproduction, not from the
  standard's printed text: marked so in docs/rules.md.)
- **GBZ 2.1-2019** 《工作场所有害因素职业接触限值 第1部分：化学有害因素》 Table 1
  (chemicals) and Table 2 (dusts); its Amendment No. 1 (2022) for benzene.
- **GBZ 159-2004** 《工作场所空气中有害物质监测的采样规范》 §3.4 (standard sampling volume):
  air volumes are brought to 20 °C and 101.3 kPa, the reference conditions of the limits;
  so ppm ↔ mg/m³ uses the molar volume at 20 °C, 101.3 kPa (24.06 L/mol), configurable
  (``hygiene:`` in the config, gateway/core/config_hygiene.py).
- **GBZ 2.2-2007** 《…第2部分：物理因素》 §11: noise Leq,8h 85 dB(A) (3 dB exchange rate).
- **《煤矿安全规程》(2022)** §135 (gas limits in the air of mine workings) and §498 /
  **AQ 1029-2019** 《煤矿安全监控系统及检测仪器使用管理规范》 §6 (methane sensor alarm,
  power-off and restore values by location). The earlier preset cited AQ 6201 for these:
  AQ 6201 is the system's product standard; the settings are in AQ 1029.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

#: molar volume at the reference conditions of GBZ 159-2004 §3.4 (20 °C, 101.3 kPa), L/mol
R_GAS = 8.314462618  # J/(mol·K), CODATA 2018


def molar_volume_l(temperature_c: float = 20.0, pressure_kpa: float = 101.3) -> float:
    """Ideal-gas molar volume in L/mol: R·T/p."""
    return round(R_GAS * (temperature_c + 273.15) / pressure_kpa, 3)


MOLAR_VOLUME_L = molar_volume_l()  # 24.061 L/mol (20 °C, 101.3 kPa: GBZ 159-2004 §3.4)

Basis = Literal["MAC", "PC-STEL", "PC-TWA"]


@dataclass(frozen=True, slots=True)
class OccupationalLimit:
    """A toxic gas's occupational exposure limits (GBZ 2.1) and the one GB/T 50493 alarms on."""

    gas: str  # canonical key: "h2s", "co", ...
    name: str  # Chinese name as in GBZ 2.1
    oel_mg_m3: float  # the OEL alarms are based on (GB/T 50493-2019 Table B.0.2)
    basis: Basis
    molar_mass: float  # g/mol
    source: str
    mac: float | None = None  # mg/m³
    twa: float | None = None
    stel: float | None = None
    confirmed: bool = False  # checked against the standard's text (else: secondary source)

    def mg_m3_to_ppm(self, mg_m3: float, molar_volume: float = MOLAR_VOLUME_L) -> float:
        return mg_m3 * molar_volume / self.molar_mass

    def oel_ppm(self, molar_volume: float = MOLAR_VOLUME_L) -> float:
        return self.mg_m3_to_ppm(self.oel_mg_m3, molar_volume)


def _oel(gas: str, name: str, mm: float, *, mac: float | None = None, twa: float | None = None,
         stel: float | None = None, note: str = "", confirmed: bool = False) -> OccupationalLimit:
    oel, basis = (mac, "MAC") if mac is not None else (twa, "PC-TWA")
    assert oel is not None
    figures = ", ".join(f"{k} {v:g}" for k, v in (("MAC", mac), ("PC-TWA", twa), ("PC-STEL", stel))
                        if v is not None)
    src = f"GBZ 2.1-2019 Table 1: {name} {figures} mg/m³{note}; OEL for alarms: {basis} " \
          f"(GB/T 50493-2019 Table B.0.2)"
    return OccupationalLimit(gas, name, float(oel), basis, mm, src, mac, twa, stel, confirmed)  # type: ignore[arg-type]


#: toxic gases: GBZ 2.1-2019 Table 1 (mg/m³), molar masses from the formulas (IUPAC 2021 weights)
TOXIC: dict[str, OccupationalLimit] = {o.gas: o for o in (
    _oel("h2s", "硫化氢", 34.08, mac=10),
    _oel("co", "一氧化碳", 28.01, twa=20, stel=30, note=" (non-high-altitude)"),
    _oel("nh3", "氨", 17.03, twa=20, stel=30),
    _oel("cl2", "氯气", 70.90, mac=1),
    # Amendment No. 1 (2022) to GBZ 2.1-2019 lowers benzene from PC-TWA 6 / PC-STEL 10
    _oel("benzene", "苯", 78.11, twa=3, stel=6,
         note=" (Amendment No. 1, 2022; before: PC-TWA 6, PC-STEL 10)"),
    _oel("so2", "二氧化硫", 64.07, twa=5, stel=10),
    _oel("no2", "二氧化氮", 46.01, twa=5, stel=10),
    _oel("hcn", "氰化氢", 27.03, mac=1, note=" (as CN)"),
    _oel("toluene", "甲苯", 92.14, twa=50, stel=100),
    _oel("xylene", "二甲苯(全部异构体)", 106.17, twa=50, stel=100),
    _oel("methanol", "甲醇", 32.04, twa=25, stel=50),
    _oel("formaldehyde", "甲醛", 30.03, mac=0.5),
    _oel("phosgene", "光气", 98.92, mac=0.5),
    _oel("clo2", "二氧化氯", 67.45, twa=0.3, stel=0.8),
    _oel("hcl", "氯化氢及盐酸", 36.46, mac=7.5),
    _oel("acrylonitrile", "丙烯腈", 53.06, twa=1, stel=2),
    _oel("vinyl_chloride", "氯乙烯", 62.50, twa=10, stel=25),
)}

#: combustible gases a %LEL channel may name (they take the combustible-gas levels)
COMBUSTIBLE = ("combustible", "methane", "hydrogen", "propane", "butane", "ethylene", "propylene",
               "ethane", "lpg", "natural_gas", "acetylene", "gasoline", "hexane", "ethanol")

GAS_ALIASES = {
    "hydrogen_sulfide": "h2s", "hydrogen-sulfide": "h2s", "硫化氢": "h2s",
    "carbon_monoxide": "co", "carbon-monoxide": "co", "一氧化碳": "co",
    "ammonia": "nh3", "氨": "nh3", "氨气": "nh3", "chlorine": "cl2", "氯气": "cl2", "氯": "cl2",
    "c6h6": "benzene", "苯": "benzene",
    "sulfur_dioxide": "so2", "sulphur_dioxide": "so2", "二氧化硫": "so2",
    "nitrogen_dioxide": "no2", "二氧化氮": "no2",
    "hydrogen_cyanide": "hcn", "氰化氢": "hcn",
    "c7h8": "toluene", "甲苯": "toluene", "c8h10": "xylene", "二甲苯": "xylene",
    "ch3oh": "methanol", "ch4o": "methanol", "甲醇": "methanol",
    "hcho": "formaldehyde", "ch2o": "formaldehyde", "甲醛": "formaldehyde",
    "cocl2": "phosgene", "光气": "phosgene", "chlorine_dioxide": "clo2", "二氧化氯": "clo2",
    "hydrogen_chloride": "hcl", "氯化氢": "hcl",
    "c3h3n": "acrylonitrile", "丙烯腈": "acrylonitrile",
    "vinyl-chloride": "vinyl_chloride", "c2h3cl": "vinyl_chloride", "氯乙烯": "vinyl_chloride",
    "lel": "combustible", "flammable": "combustible", "可燃气体": "combustible",
    "o2": "o2", "oxygen": "o2", "氧气": "o2", "氧": "o2",
    "ch4": "methane", "甲烷": "methane", "瓦斯": "methane",
    "h2": "hydrogen", "氢气": "hydrogen", "c3h8": "propane", "丙烷": "propane",
    "c2h4": "ethylene", "乙烯": "ethylene", "c3h6": "propylene", "丙烯": "propylene",
    "c4h10": "butane", "丁烷": "butane", "c2h6": "ethane", "乙烷": "ethane",
    "液化石油气": "lpg", "天然气": "natural_gas", "c2h2": "acetylene", "乙炔": "acetylene",
    "co2": "co2", "carbon_dioxide": "co2", "二氧化碳": "co2",
}


def canonical_gas(gas: str | None) -> str | None:
    if gas is None:
        return None
    g = gas.strip().lower().replace(" ", "_")
    return GAS_ALIASES.get(g, g)


def occupational_limit(gas: str) -> OccupationalLimit:
    """The OEL of a toxic gas by any of its names (KeyError naming the known ones)."""
    g = canonical_gas(gas)
    if g is None or g not in TOXIC:
        raise KeyError(f"no occupational exposure limit for {gas!r}; known: {', '.join(TOXIC)}")
    return TOXIC[g]


# --------------------------------------------------------------------------- units

def unit_key(unit: str) -> str:
    """A unit as written, reduced to a key: '%lel', '%vol', 'ppm', 'mg/m3', ..."""
    u = unit.strip().lower().replace("³", "3").replace(" ", "").replace("％", "%")
    return {"%v/v": "%vol", "vol%": "%vol", "%ch4": "%vol", "%v": "%vol", "mg/nm3": "mg/m3",
            "%lel": "%lel", "lel%": "%lel"}.get(u, u)


def _toxic_in(mg_m3: float, o: OccupationalLimit, unit: str, molar_volume: float) -> float:
    u = unit_key(unit)
    if u == "mg/m3":
        return mg_m3
    if u == "ppm":
        return round(o.mg_m3_to_ppm(mg_m3, molar_volume), 4)
    raise ValueError(f"a toxic-gas preset needs the channel in ppm or mg/m³, not {unit!r}")


_SHOWN = {"%lel": "%LEL", "mg/m3": "mg/m³"}


def _require_unit(preset: str, unit: str, want: tuple[str, ...], what: str, hint: str = "") -> None:
    if unit_key(unit) not in want:
        shown = " or ".join(_SHOWN.get(w, w) for w in want)
        raise ValueError(f"preset {preset!r} is for {what} in {shown}; the channel's unit is "
                         f"{unit!r}: fix the unit or write the limits explicitly{hint}")


# --------------------------------------------------------------------------- alarm presets

#: GB/T 50493-2019 §5.5.2
COMBUSTIBLE_LEVELS = {"h": 25.0, "hh": 50.0,
                      "source": "GB/T 50493-2019 §5.5.2: level 1 ≤ 25 %LEL, level 2 ≤ 50 %LEL"}
O2_LEVELS = {"l": 19.5, "h": 23.5,
             "source": "GB/T 50493-2019 §5.5.2: O2 deficiency 19.5 %VOL, enrichment 23.5 %VOL"}


@dataclass(frozen=True, slots=True)
class MethaneProfile:
    """Methane sensor settings by location: alarm, power-off and restore, %CH4 by volume."""

    location: str
    alarm: float
    power_off: float
    restore: float  # power-off clears only below this
    source: str


_AQ = "煤矿安全规程 (2022) §498 table / AQ 1029-2019 §6"
#: methane sensors by location (《煤矿安全规程》2022 §498 table; AQ 1029-2019 §6.2–6.4, Table 1)
COAL_CH4: dict[str, MethaneProfile] = {p.location: p for p in (
    MethaneProfile("working-face", 1.0, 1.5, 1.0,
                   f"{_AQ}: 采煤工作面 T1 ≥1.0 / ≥1.5 / <1.0 %CH4"),
    MethaneProfile("working-face-return", 1.0, 1.0, 1.0,
                   f"{_AQ}: 采煤工作面回风巷 T2 ≥1.0 / ≥1.0 / <1.0 %CH4"),
    MethaneProfile("working-face-intake", 0.5, 0.5, 0.5,
                   f"{_AQ}: 高瓦斯、突出矿井采煤工作面进风巷 T3 ≥0.5 / ≥0.5 / <0.5 %CH4"),
    MethaneProfile("heading-face", 1.0, 1.5, 1.0,
                   f"{_AQ}: 掘进工作面 T1 ≥1.0 / ≥1.5 / <1.0 %CH4"),
    MethaneProfile("heading-return", 1.0, 1.0, 1.0,
                   f"{_AQ}: 掘进工作面回风流 T2 ≥1.0 / ≥1.0 / <1.0 %CH4"),
    MethaneProfile("shearer", 1.0, 1.5, 1.0,
                   f"{_AQ}: 采煤机 ≥1.0 / ≥1.5 / <1.0 %CH4"),
    MethaneProfile("roadheader", 1.0, 1.5, 1.0,
                   f"{_AQ}: 掘进机 ≥1.0 / ≥1.5 / <1.0 %CH4"),
    MethaneProfile("drainage-roadway", 2.5, 2.5, 2.5,
                   f"{_AQ}: 专用排瓦斯巷 T7 ≥2.5 / ≥2.5 / <2.5 %CH4"),
)}


def _methane_profile(p: MethaneProfile) -> dict[str, Any]:
    """A profile as limit settings. Where alarm and power-off coincide there is one level
    (hh: power-off, which is also the alarm). The power-off level clears only below the
    restore value (``restore``), not at the limit minus a deadband."""
    out: dict[str, Any] = {"hh": p.power_off, "restore": p.restore,
                           "source": f"{p.source} (alarm / power-off / restore)"}
    if p.alarm < p.power_off:
        out["h"] = p.alarm
    return out


@dataclass(frozen=True, slots=True)
class MineGas:
    """A gas limit in the air of mine workings, 《煤矿安全规程》(2022) §135, by volume."""

    gas: str
    level: Literal["h", "l"]
    percent: float  # %vol
    source: str


_R135 = "煤矿安全规程 (2022) §135"
COAL_GASES: dict[str, MineGas] = {m.gas: m for m in (
    MineGas("co", "h", 0.0024, f"{_R135}: CO ≤ 0.0024 % (24 ppm)"),
    MineGas("o2", "l", 20.0, f"{_R135}: O2 ≥ 20 % in the intake air of workings"),
    MineGas("co2", "h", 0.5, f"{_R135}: CO2 ≤ 0.5 %"),
    MineGas("no2", "h", 0.00025, f"{_R135}: nitrogen oxides (as NO2) ≤ 0.00025 % (2.5 ppm)"),
    MineGas("so2", "h", 0.0005, f"{_R135}: SO2 ≤ 0.0005 % (5 ppm)"),
    MineGas("h2s", "h", 0.00066, f"{_R135}: H2S ≤ 0.00066 % (6.6 ppm)"),
    MineGas("nh3", "h", 0.004, f"{_R135}: NH3 ≤ 0.004 % (40 ppm)"),
)}


def _mine_gas(m: MineGas, unit: str) -> dict[str, Any]:
    u = unit_key(unit)
    if u == "%vol":
        v = m.percent
    elif u == "ppm":
        v = round(m.percent * 10_000, 6)
    else:
        raise ValueError(f"mine gas limits are by volume: the channel must be in %vol or ppm, not {unit!r}")
    return {m.level: v, "source": m.source}


PRESET_ALIASES = {"gbt50493-combustible": "combustible", "oxygen": "o2", "ch4-coal": "coal-ch4",
                  "coal-mine-ch4": "coal-ch4"}


def preset_names() -> list[str]:
    return (["gbt50493", "combustible", "o2", *TOXIC, "coal-ch4 (= coal-ch4-working-face)"]
            + [f"coal-ch4-{k}" for k in COAL_CH4] + [f"coal-{g}" for g in COAL_GASES])


def alarm_preset(name: str, *, gas: str | None, unit: str,
                 molar_volume: float = MOLAR_VOLUME_L) -> dict[str, Any]:
    """Resolve a preset name for a channel into alarm settings (h/hh/l/ll ...), checking
    the channel's unit (ValueError saying what is wrong)."""
    key = name.strip().lower()
    key = PRESET_ALIASES.get(key, key)
    g = canonical_gas(gas)
    if key in ("gbt50493", "gb/t50493", "gbt50493-2019"):
        if g in COMBUSTIBLE or (g is None and unit_key(unit) == "%lel"):
            key = "combustible"
        elif g == "o2":
            key = "o2"
        elif g in TOXIC:
            key = g
        else:
            raise ValueError(
                f"preset gbt50493 needs the channel's gas: combustible (or a named combustible gas such as "
                f"methane, hydrogen, propane), o2 or one of {', '.join(TOXIC)} (got {gas!r})")
    if key == "combustible":
        mine = " (methane in a mine, by volume: preset coal-ch4-<location>)"
        _require_unit(name, unit, ("%lel",), "combustible-gas levels",
                      mine if unit_key(unit) == "%vol" else "")
        return dict(COMBUSTIBLE_LEVELS)
    if key == "o2":
        _require_unit(name, unit, ("%vol",), "oxygen")
        return dict(O2_LEVELS)
    if key in TOXIC:
        o = TOXIC[key]
        return {"h": _toxic_in(o.oel_mg_m3, o, unit, molar_volume),
                "hh": _toxic_in(2 * o.oel_mg_m3, o, unit, molar_volume),
                "source": f"GB/T 50493-2019 §5.5.2: level 1 ≤ 100 %, level 2 ≤ 200 % of the OEL, "
                          f"{o.basis} {o.oel_mg_m3:g} mg/m³ ({o.source})"}
    if key == "coal-ch4":
        key = "coal-ch4-working-face"
    if key.startswith("coal-ch4-") and key[9:] in COAL_CH4:
        # (a mine's methane sensors read "%" or "%CH4": percent by volume)
        _require_unit(name, unit, ("%vol", "%"), "methane in mines")
        return _methane_profile(COAL_CH4[key[9:]])
    if key.startswith("coal-") and key[5:] in COAL_GASES:
        return _mine_gas(COAL_GASES[key[5:]], unit)
    raise ValueError(f"unknown preset {name!r}; known: {', '.join(preset_names())}")


# --------------------------------------------------------------------------- exposure presets

@dataclass(frozen=True, slots=True)
class DustLimit:
    """A dust's PC-TWA (GBZ 2.1-2019 Table 2), mg/m³: total dust and respirable dust.
    Dusts have no PC-STEL (deleted in GBZ 2.1-2007); peak exposure applies instead."""

    key: str
    name: str
    total: float | None
    respirable: float | None
    source: str


_T2 = "GBZ 2.1-2019 Table 2"
DUSTS: dict[str, DustLimit] = {d.key: d for d in (
    DustLimit("coal", "煤尘(游离SiO2含量<10%)", 4.0, 2.5,
              f"{_T2}: 煤尘 PC-TWA total 4, respirable 2.5"),
    DustLimit("silica-10-50", "矽尘(10%≤游离SiO2≤50%)", 1.0, 0.7,
              f"{_T2}: 矽尘 10–50 % PC-TWA total 1, respirable 0.7"),
    DustLimit("silica-50-80", "矽尘(50%<游离SiO2≤80%)", 0.7, 0.3,
              f"{_T2}: 矽尘 50–80 % PC-TWA total 0.7, respirable 0.3"),
    DustLimit("silica-80", "矽尘(游离SiO2>80%)", 0.5, 0.2,
              f"{_T2}: 矽尘 >80 % PC-TWA total 0.5, respirable 0.2"),
    DustLimit("cement", "水泥粉尘(游离SiO2<10%)", 4.0, 1.5,
              f"{_T2}: 水泥粉尘 PC-TWA total 4, respirable 1.5"),
    DustLimit("welding-fume", "电焊烟尘", 4.0, None,
              f"{_T2}: 电焊烟尘 PC-TWA total 4"),
    DustLimit("other", "其他粉尘", 8.0, None,
              f"{_T2}: 其他粉尘 PC-TWA total 8 (no free-silica, no other limit)"),
)}

EXPOSURE_PRESETS: dict[str, dict[str, Any]] = {
    "noise85": {"kind": "noise", "criterion_db": 85.0, "exchange_rate_db": 3.0,
                "source": "GBZ 2.2-2007 §11: Leq,8h 85 dB(A), 3 dB exchange rate"},
}


def _dust_preset(key: str, unit: str) -> dict[str, Any]:
    # dust-<kind>-total | dust-<kind>-respirable
    base, _, frac = key[5:].rpartition("-")
    d = DUSTS.get(base)
    if d is None or frac not in ("total", "respirable"):
        raise ValueError(f"unknown dust preset {key!r}; known: "
                         + ", ".join(f"dust-{k}-{f}" for k, v in DUSTS.items()
                                     for f, x in (("total", v.total), ("respirable", v.respirable)) if x))
    twa = d.total if frac == "total" else d.respirable
    if twa is None:
        raise ValueError(f"GBZ 2.1-2019 sets no {frac}-dust limit for {d.name}")
    _require_unit(key, unit, ("mg/m3",), "dust concentration")
    return {"kind": "concentration", "twa": twa, "source": f"{d.source} ({frac} dust, mg/m³)"}


def exposure_preset(name: str, *, gas: str | None, unit: str,
                    molar_volume: float = MOLAR_VOLUME_L) -> dict[str, Any]:
    """Resolve an exposure preset: ``noise85``, ``dust-<kind>-total|respirable``, ``gbz2.1``
    (by the channel's gas) or a gas name. A MAC substance gets the ``mac`` ceiling (any
    reading above it), never a 15-minute average."""
    key = name.strip().lower()
    if key in EXPOSURE_PRESETS:
        p = dict(EXPOSURE_PRESETS[key])
        if p["kind"] == "noise" and not unit_key(unit).startswith("db"):
            raise ValueError(f"preset {name!r} is for a sound level in dB(A), not {unit!r}")
        return p
    if key.startswith("dust-"):
        return _dust_preset(key, unit)
    g = canonical_gas(gas) if key in ("gbz2.1", "gbz2.1-2019", "gbz21") else canonical_gas(key)
    if g in TOXIC:
        o = TOXIC[g]
        out: dict[str, Any] = {"kind": "concentration", "source": o.source}
        for k in ("twa", "stel", "mac"):
            v = getattr(o, k)
            if v is not None:
                out[k] = _toxic_in(v, o, unit, molar_volume)
        return out
    raise ValueError(f"unknown exposure preset {name!r}; known: noise85, gbz2.1 (with gas:), "
                     f"{', '.join(TOXIC)}, dust-<{'|'.join(DUSTS)}>-total|respirable")


def gbt50493_ceiling(gas: str | None, unit: str,
                     molar_volume: float = MOLAR_VOLUME_L) -> tuple[float, float] | None:
    """The highest level-1 / level-2 settings GB/T 50493-2019 §5.5.2 allows for a channel's
    gas in its unit (None: no OEL known, or the unit does not fit)."""
    g = canonical_gas(gas)
    try:
        if g in TOXIC:
            o = TOXIC[g]
            return (_toxic_in(o.oel_mg_m3, o, unit, molar_volume),
                    _toxic_in(2 * o.oel_mg_m3, o, unit, molar_volume))
        if (g in COMBUSTIBLE) and unit_key(unit) == "%lel":
            return (25.0, 50.0)
    except ValueError:
        return None
    return None


__all__ = ["COAL_CH4", "COAL_GASES", "DUSTS", "MOLAR_VOLUME_L", "TOXIC", "OccupationalLimit", "alarm_preset",
           "canonical_gas", "exposure_preset", "gbt50493_ceiling", "molar_volume_l",
           "occupational_limit"]
