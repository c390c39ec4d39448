"""GB 30871-2022 《危险化学品企业特殊作业安全规范》: the acceptance criteria of a gas
analysis and the timing rules of the permits, in one place, each with its clause.

Confirmation status (say it plainly; a reviewer checks each):

- CONFIRMED from a secondary source quoting the standard (the primary text was not
  available while writing): §6.4 (confined-space gas content: O₂ 19.5 %–21 % by volume,
  at most 23.5 % in an oxygen-enriched environment; toxic substances within GBZ 2.1;
  combustibles as §5.3.2); the validity limits (hot work special/first level ≤ 8 h,
  second level ≤ 72 h; confined space ≤ 24 h; work at height ≤ 7 d; temporary
  electricity normally ≤ 15 d, at most 30 d).
- NOT CONFIRMED against the primary text (recalled from the 2022 edition; the clause
  numbers in particular): §5.3.2 (combustibles: ≤ 0.5 %vol when the LEL ≥ 4 %vol, ≤ 0.2
  %vol when it is < 4 %vol); §5.3.1 (sampling no more than 30 min before work starts;
  re-analysis after an interruption of more than 30 min for special/first-level and
  60 min for second-level hot work); §6.5 (confined space: re-analysis after an
  interruption of more than 60 min (one secondary source says 30 min: unresolved; the
  number only decides when a reminder fires, for ``resume`` always re-analyses); periodic
  analysis at most every 2 h, as GB 30871-2014 §6.5 had it: the 2022 edition asks for
  continuous monitoring).
- LEL values: from the usual Chinese references (GB/T 50493-2019 appendix B, GB 50160),
  recalled, NOT CONFIRMED. A permit may give its medium's LEL (``lel_percent``), which
  then wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from rules import presets

STANDARD = "GB 30871-2022"

# --------------------------------------------------------------------------- gases

#: combustible gases and vapours: lower explosive limit, % by volume in air (NOT CONFIRMED:
#: see the module docstring)
LEL_PERCENT: dict[str, float] = {
    "ch4": 5.0,
    "hydrogen": 4.0,
    "h2": 4.0,
    "ethane": 3.0,
    "propane": 2.1,
    "butane": 1.9,
    "ethylene": 2.7,
    "propylene": 2.0,
    "acetylene": 2.5,
    "co": 12.5,
    "nh3": 15.0,
    "h2s": 4.0,
    "benzene": 1.2,
    "toluene": 1.2,
    "xylene": 1.0,
    "methanol": 6.0,
    "ethanol": 3.3,
    "lpg": 1.5,
    "natural_gas": 5.0,
    "gasoline": 1.1,
}
_NAMES = {
    "methane": "ch4",
    "甲烷": "ch4",
    "氢气": "hydrogen",
    "氢": "hydrogen",
    "乙烷": "ethane",
    "丙烷": "propane",
    "丁烷": "butane",
    "乙烯": "ethylene",
    "丙烯": "propylene",
    "乙炔": "acetylene",
    "液化石油气": "lpg",
    "天然气": "natural_gas",
    "汽油": "gasoline",
    "甲苯": "toluene",
    "二甲苯": "xylene",
    "甲醇": "methanol",
    "乙醇": "ethanol",
}

#: §5.3.2 (NOT CONFIRMED): the largest combustible concentration, % by volume, by LEL class
COMBUSTIBLE_MAX_VOL_HIGH_LEL = 0.5  # the gas's LEL >= 4 %vol
COMBUSTIBLE_MAX_VOL_LOW_LEL = 0.2  # the gas's LEL < 4 %vol
LEL_CLASS_BOUND = 4.0
COMBUSTIBLE_CLAUSE = f"{STANDARD} §5.3.2 (not confirmed against the primary text)"

#: §6.4 a): oxygen, % by volume
O2_MIN = 19.5
O2_MAX = 21.0
O2_MAX_ENRICHED = 23.5
O2_CLAUSE = f"{STANDARD} §6.4 a)"
TOXIC_CLAUSE = f"{STANDARD} §6.4 b), limits of GBZ 2.1-2019"


def gas_name(gas: str | None) -> str | None:
    """The canonical name of a gas (rules.presets' aliases, plus the combustibles here)."""
    if gas is None:
        return None
    g = presets.canonical_gas(gas)
    assert g is not None
    return _NAMES.get(g, g)


def lel_percent(gas: str | None) -> float | None:
    g = gas_name(gas)
    return None if g is None else LEL_PERCENT.get(g)


def occupational_limit(gas: str) -> tuple[float, str, str] | None:
    """A toxic gas's OEL as (mg/m³, basis, source), or None when it has none: the one
    GB/T 50493-2019 bases toxic-gas alarms on (rules.presets.occupational_limit)."""
    try:
        ol = presets.occupational_limit(gas)
    except KeyError:
        return None
    return ol.oel_mg_m3, ol.basis, ol.source


def mg_m3_to_ppm(mg_m3: float, gas: str) -> float:
    return presets.occupational_limit(gas).mg_m3_to_ppm(mg_m3, presets.MOLAR_VOLUME_L)


# --------------------------------------------------------------------------- criteria


@dataclass(frozen=True)
class Criterion:
    """What one channel's reading must satisfy: ``lo <= value <= hi`` in ``unit``."""

    what: str  # combustible | oxygen | toxic
    lo: float | None
    hi: float | None
    unit: str
    text: str  # for people: the limit and why
    clause: str


class NoCriterion(ValueError):
    """The reading cannot be judged (unknown gas or unit): refused, with the reason."""


def _unit(u: str) -> str:
    return u.strip().lower().replace(" ", "").replace("³", "3")


def combustible(unit: str, *, gas: str | None, lel: float | None) -> Criterion:
    """§5.3.2 for a combustible-gas channel in %LEL, %vol or ppm. ``lel``: the medium's
    LEL in %vol (the permit's, else the channel gas's); unknown: in %vol the stricter
    0.2 % applies, in %LEL the reading cannot be judged."""
    lel = lel if lel is not None else lel_percent(gas)
    u = _unit(unit)
    if lel is None:
        max_vol = COMBUSTIBLE_MAX_VOL_LOW_LEL
        why = "the medium's LEL is unknown, so the stricter limit for LEL < 4 %vol"
    elif lel >= LEL_CLASS_BOUND:
        max_vol, why = COMBUSTIBLE_MAX_VOL_HIGH_LEL, f"LEL {lel:g} %vol ≥ 4 %vol"
    else:
        max_vol, why = COMBUSTIBLE_MAX_VOL_LOW_LEL, f"LEL {lel:g} %vol < 4 %vol"
    if u in ("%lel", "lel%", "%lfl"):
        if lel is None:
            raise NoCriterion(
                f"a %LEL reading needs the medium's LEL to apply {COMBUSTIBLE_CLAUSE}: give the permit's "
                "'medium' (e.g. methane) or 'lel_percent', or the channel's 'gas'"
            )
        hi = round(max_vol / lel * 100.0, 4)
        return Criterion(
            "combustible", None, hi, "%LEL", f"≤ {hi:g} %LEL (≤ {max_vol:g} %vol, {why})", COMBUSTIBLE_CLAUSE
        )
    if u in ("%vol", "vol%", "%v/v", "%"):
        return Criterion(
            "combustible", None, max_vol, "%vol", f"≤ {max_vol:g} %vol ({why})", COMBUSTIBLE_CLAUSE
        )
    if u == "ppm":
        hi = max_vol * 10_000
        return Criterion(
            "combustible", None, hi, "ppm", f"≤ {hi:g} ppm (= {max_vol:g} %vol, {why})", COMBUSTIBLE_CLAUSE
        )
    raise NoCriterion(f"combustible gas in {unit!r}: give the channel in %LEL, %vol or ppm")


def oxygen(unit: str, *, enriched: bool = False) -> Criterion:
    if _unit(unit) not in ("%vol", "vol%", "%v/v", "%"):
        raise NoCriterion(f"oxygen in {unit!r}: give the channel in %vol")
    hi = O2_MAX_ENRICHED if enriched else O2_MAX
    extra = " (oxygen-enriched environment)" if enriched else ""
    return Criterion("oxygen", O2_MIN, hi, "%vol", f"{O2_MIN:g}–{hi:g} %vol{extra}", O2_CLAUSE)


def toxic(unit: str, *, gas: str) -> Criterion:
    oel = occupational_limit(gas)
    if oel is None:
        raise NoCriterion(f"no occupational exposure limit is known here for {gas!r} ({TOXIC_CLAUSE})")
    mg, basis, source = oel
    u = _unit(unit)
    if u in ("mg/m3", "mg/nm3"):
        return Criterion("toxic", None, mg, "mg/m³", f"≤ {mg:g} mg/m³ ({basis}, {source})", TOXIC_CLAUSE)
    if u == "ppm":
        hi = round(mg_m3_to_ppm(mg, gas), 3)
        return Criterion(
            "toxic",
            None,
            hi,
            "ppm",
            f"≤ {hi:g} ppm (= {basis} {mg:g} mg/m³ at {presets.MOLAR_VOLUME_L:g} L/mol, {source})",
            TOXIC_CLAUSE,
        )
    raise NoCriterion(f"toxic gas {gas!r} in {unit!r}: give the channel in ppm or mg/m³")


def criterion(
    unit: str, gas: str | None, *, medium: str | None = None, lel: float | None = None, enriched: bool = False
) -> Criterion:
    """The criterion for one gas channel: its ``gas`` and ``unit`` pick the kind; the
    permit's ``medium``/``lel`` (its LEL in %vol) apply to a generic combustible channel."""
    g = gas_name(gas)
    if g == "o2":
        return oxygen(unit, enriched=enriched)
    u = _unit(unit)
    if g in presets.TOXIC and u in ("ppm", "mg/m3", "mg/nm3"):
        return toxic(unit, gas=g)
    if g in (None, "combustible") or g in LEL_PERCENT:
        if g in (None, "combustible"):
            if g is None and u not in ("%lel", "lel%", "%lfl"):
                raise NoCriterion(f"a gas channel in {unit!r} without 'gas:': cannot tell what it measures")
            return combustible(unit, gas=medium, lel=lel if lel is not None else lel_percent(medium))
        return combustible(unit, gas=g, lel=lel)
    raise NoCriterion(f"no acceptance criterion for gas {gas!r} in {unit!r}")


# --------------------------------------------------------------------------- timing

MIN = 60.0
HOUR = 3600.0

#: §5.3.1 / §6.5 (NOT CONFIRMED): the analysis must be no older than this when work starts
ANALYSIS_BEFORE_WORK_S = 30 * MIN
ANALYSIS_CLAUSE = (
    f"{STANDARD} §5.3.1 d) (hot work), §6.5 (confined space): sampling ≤ 30 min before work "
    "(not confirmed against the primary text)"
)
#: an interruption longer than this needs a new analysis before work resumes, by kind and level
INTERRUPTION_S: dict[str, dict[str, float]] = {
    "hot_work_permit": {"special": 30 * MIN, "first": 30 * MIN, "second": 60 * MIN},
    "confined_space_permit": {"*": 60 * MIN},
}
INTERRUPTION_CLAUSE = (
    f"{STANDARD} §5.3.1 e) (hot work: 30 min special/first, 60 min second level), "
    "§6.5 (confined space: 60 min) (not confirmed against the primary text)"
)
#: confined space in progress: a new analysis at least this often
PERIODIC_ANALYSIS_S: dict[str, float] = {"confined_space_permit": 2 * HOUR}
PERIODIC_CLAUSE = (
    "GB 30871-2014 §6.5 (every 2 h); GB 30871-2022 asks for continuous monitoring "
    "(not confirmed against the primary text)"
)

#: validity of a permit, by kind and level (seconds); "*" any level
VALIDITY_S: dict[str, dict[str, float]] = {
    "hot_work_permit": {"special": 8 * HOUR, "first": 8 * HOUR, "second": 72 * HOUR},
    "confined_space_permit": {"*": 24 * HOUR},
    "height_work_permit": {"*": 7 * 24 * HOUR},
    "temp_electricity_permit": {"*": 30 * 24 * HOUR},
}
VALIDITY_CLAUSE: dict[str, str] = {
    "hot_work_permit": f"{STANDARD} §5 (special/first level ≤ 8 h, second level ≤ 72 h)",
    "confined_space_permit": f"{STANDARD} §6 (≤ 24 h)",
    "height_work_permit": f"{STANDARD} §8 (≤ 7 d)",
    "temp_electricity_permit": f"{STANDARD} §10 (normally ≤ 15 d, at most 30 d; for hot work or a confined "
    "space, as long as that work)",
}


def _by_level(table: dict[str, float], level: str | None) -> float | None:
    if "*" in table:
        return table["*"]
    return table.get(level or "")


def validity_s(kind: str, level: str | None) -> float | None:
    """The longest a permit of ``kind`` at ``level`` may be valid, or None (no limit in the standard)."""
    return _by_level(VALIDITY_S.get(kind, {}), level)


def interruption_s(kind: str, level: str | None) -> float | None:
    return _by_level(INTERRUPTION_S.get(kind, {}), level)


def periodic_s(kind: str) -> float | None:
    return PERIODIC_ANALYSIS_S.get(kind)
