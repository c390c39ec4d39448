"""Permits to work in the register store: what a permit's workflow step checks beyond
the generic ``requires`` (validity limits, levels against their quantities, signatures,
the gas analysis on live readings), the analyses it records, the flag an alarm raises,
and the timing reminders (GB 30871-2022; limits and clauses in
gateway/admin/permits/criteria.py).

The analysis itself is computed by the caller (the API, from the live values, on the
event loop) and handed in: the store stays free of the daemon. A refused step is
recorded (the failing readings, the action ``refused:<step>``) and then raised as
``Refused`` so the API answers 409 with the readings.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from gateway.admin.permits import criteria
from gateway.admin.registers.schema import TransitionSpec, TypeSpec

Errors = list[tuple[tuple[str | int, ...], str]]

#: analysis rows kept in a permit (the rest in its history): a row is about 0.5 KB of JSON, and
#: the whole record must stay well inside one journal event (schema.MAX_EVENT_BYTES, 256 KB)
MAX_ANALYSIS_ROWS = 200
#: a permit state in which the work is going on (an alarm on its channels flags it)
IN_PROGRESS = "in_progress"
SUSPENDED = "suspended"


def _t(s: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(s)
    return t if t.tzinfo is not None else t.astimezone()


def _h(seconds: float) -> str:
    return f"{seconds / 3600:g} h"


#: fields only the gateway writes (its analyses, the flag, the times of the steps): a client
#: that could write them could fake an analysis
GATEWAY_FIELDS = frozenset(
    {
        "gas_analyses",
        "last_analysis_at",
        "flagged",
        "flag_reason",
        "flag_at",
        "started_at",
        "suspended_at",
        "closed_at",
    }
)
#: what the approval was given for: fixed once the permit is approved (a change needs a new permit)
APPROVED_FIELDS = frozenset(
    {
        "permit_no",
        "location",
        "content",
        "area",
        "channels",
        "level",
        "valid_from",
        "valid_to",
        "medium",
        "lel_percent",
        "oxygen_enriched",
        "height_m",
        "mass_t",
    }
)
#: states in which the permit is still being prepared
OPEN_STATES = ("applied", "analysed")


def check_client_fields(spec: TypeSpec, state: str | None, fields: dict[str, Any]) -> Errors:
    """A client's changes to a permit: never the gateway's own fields, and not what was
    approved once it is."""
    if spec.permit is None:
        return []
    errs: Errors = [
        (("body", k), "written by the gateway, not by a client") for k in sorted(GATEWAY_FIELDS & set(fields))
    ]
    if state is not None and state not in OPEN_STATES:
        errs += [
            (("body", k), f"fixed since the approval (the permit is {state}); apply for a new permit")
            for k in sorted(APPROVED_FIELDS & set(fields))
        ]
    return errs


def check_data(rtype: str, spec: TypeSpec, data: dict[str, Any]) -> Errors:
    """A permit's fields against its kind's rules: validity within the standard's limit,
    the level consistent with the height or mass it is for."""
    if spec.permit is None:
        return []
    errs: Errors = []
    level_field = spec.permit.level_field
    level = data.get(level_field) if level_field else None
    if data.get("valid_from") and data.get("valid_to"):
        t0, t1 = _t(data["valid_from"]), _t(data["valid_to"])
        span = (t1 - t0).total_seconds()
        if span <= 0:
            errs.append((("body", "valid_to"), "must be after valid_from"))
        limit = criteria.validity_s(rtype, level if isinstance(level, str) else None)
        if limit is not None and span > limit:
            errs.append(
                (
                    ("body", "valid_to"),
                    f"a {spec.title_zh or rtype}{' at level ' + level if level else ''} is valid for at most "
                    f"{_h(limit)} ({criteria.VALIDITY_CLAUSE[rtype]}); this one spans {_h(span)}",
                )
            )
    if rtype == "height_work_permit" and isinstance(data.get("height_m"), int | float) and level:
        want = _height_level(float(data["height_m"]))
        if want != level:
            errs.append(
                (
                    ("body", "level"),
                    f"work at {data['height_m']:g} m is level {want} "
                    "(GB 30871-2022 §8 by GB/T 3608: Ⅰ 2-5 m, Ⅱ 5-15 m, Ⅲ 15-30 m, Ⅳ > 30 m)",
                )
            )
    if rtype == "blinding_permit" and len(data.get("blinds") or []) > 1:
        errs.append(
            (
                ("body", "blinds"),
                "one permit covers one action on one blind: insert and remove, or two "
                "blinds, need a permit each (GB 30871-2022 §7; clause not confirmed "
                "against the primary text)",
            )
        )
    if rtype == "lifting_permit" and isinstance(data.get("mass_t"), int | float) and level:
        want = _lifting_level(float(data["mass_t"]))
        if want != level:
            errs.append(
                (
                    ("body", "level"),
                    f"a lift of {data['mass_t']:g} t is level {want} "
                    "(GB 30871-2022 §9: first > 100 t, second 40-100 t, third < 40 t)",
                )
            )
    return errs


def _height_level(h: float) -> str:
    # GB/T 3608-2008 §4 bands (not confirmed against the primary text): 2 ≤ h ≤ 5, 5 < h ≤ 15, ...
    return "I" if h <= 5 else "II" if h <= 15 else "III" if h <= 30 else "IV"


def _lifting_level(m: float) -> str:
    return "first" if m > 100 else "second" if m >= 40 else "third"


def check_signatures(t: TransitionSpec, name: str, data: dict[str, Any]) -> Errors:
    have = {r.get("role") for r in data.get("signatures") or [] if isinstance(r, dict)}
    return [
        (("body", "signatures"), f"a {role} signature is required to {name}")
        for role in t.signatures
        if role not in have
    ]


def needs_gas(spec: TypeSpec, t: TransitionSpec, data: dict[str, Any]) -> bool:
    """Whether this step runs a gas analysis: ``check: gas`` on a kind that requires one,
    or one where it is optional and the permit names an area or channels."""
    if t.check != "gas" or spec.permit is None or spec.permit.gas == "none":
        return False
    return spec.permit.gas == "required" or bool(data.get("area") or data.get("channels"))


def analysis_rows(analysis: dict[str, Any], actor: str) -> list[dict[str, Any]]:
    """An analysis as rows of the permit's ``gas_analyses`` table (one per reading, or one
    with the message when there was no reading)."""
    base = {"at": _iso(analysis["at"]), "step": analysis["step"], "ok": bool(analysis["ok"]), "by": actor}
    if not analysis["readings"]:
        return [{**base, "reason": analysis["message"]}]
    rows = []
    for r in analysis["readings"]:
        row = {
            **base,
            **{
                k: r.get(k)
                for k in (
                    "channel",
                    "value",
                    "unit",
                    "quality",
                    "age_s",
                    "criterion",
                    "clause",
                    "verdict",
                    "reason",
                )
            },
        }
        rows.append({k: v for k, v in row.items() if v is not None})
    return rows


def with_analysis(data: dict[str, Any], analysis: dict[str, Any], actor: str) -> dict[str, Any]:
    """The changes that record ``analysis`` in a permit: its rows appended (the newest
    ``MAX_ANALYSIS_ROWS`` kept in the record; every earlier one stays in its history), and
    the time of the last passing analysis."""
    rows = [*(data.get("gas_analyses") or []), *analysis_rows(analysis, actor)][-MAX_ANALYSIS_ROWS:]
    out: dict[str, Any] = {"gas_analyses": rows}
    if analysis["ok"]:
        out["last_analysis_at"] = _iso(analysis["at"])
    return out


def _iso(z: str) -> str:
    """``2026-12-07T15:04:05.123Z`` → the store's datetime text (seconds, offset)."""
    return dt.datetime.fromisoformat(z.replace("Z", "+00:00")).isoformat(timespec="seconds")


def check_start(rtype: str, spec: TypeSpec, data: dict[str, Any], now: dt.datetime) -> Errors:
    """Work may start only within the permit's validity."""
    errs: Errors = []
    if data.get("valid_from") and now < _t(data["valid_from"]):
        errs.append(
            (("body", "valid_from"), f"the permit is valid from {data['valid_from']}; it is {now:%H:%M} now")
        )
    if data.get("valid_to") and now > _t(data["valid_to"]):
        errs.append((("body", "valid_to"), f"the permit expired at {data['valid_to']}; apply for a new one"))
    return errs


def accident_grade(data: dict[str, Any]) -> str | None:
    """The grade 《生产安全事故报告和调查处理条例》 (国务院令第493号) 第三条 gives an accident
    by its casualties and direct loss (the worst of the three decides): 特别重大 ≥ 30
    deaths, ≥ 100 serious injuries or ≥ 1 亿元; 重大 10-29, 50-99, 5000 万-1 亿元; 较大 3-9,
    10-49, 1000 万-5000 万元; 一般 below. None when the casualties are not recorded yet."""
    deaths, serious = data.get("deaths"), data.get("serious_injuries")
    if deaths is None or serious is None:
        return None
    loss = float(data.get("direct_loss_cny") or 0.0)
    bands = ((30, 100, 1e8, "特别重大"), (10, 50, 5e7, "重大"), (3, 10, 1e7, "较大"))
    for d, s, money, grade in bands:
        if deaths >= d or serious >= s or loss >= money:
            return grade
    return "一般"


def step_fields(spec: TypeSpec, state: str, to: str, now: dt.datetime) -> dict[str, Any]:
    """What a permit's step writes itself: when work started, was suspended, closed; a
    resume clears the alarm flag (its re-analysis passed)."""
    if spec.permit is None:
        return {}
    at = now.isoformat(timespec="seconds")
    if to == IN_PROGRESS and state == "approved":
        return {"started_at": at}
    if to == IN_PROGRESS and state == SUSPENDED:
        return {"flagged": False}
    if to == SUSPENDED:
        return {"suspended_at": at}
    if to == "closed":
        return {"closed_at": at}
    return {}


# --------------------------------------------------------------------------- timing


def timing_due(
    rtype: str, spec: TypeSpec, state: str | None, data: dict[str, Any], now: dt.datetime
) -> list[tuple[str, str, str]]:
    """The timing rules a permit has reached now: (rule, reference time, message). The
    reference time keys the reminder, so each fires once per analysis, suspension or
    validity end."""
    out: list[tuple[str, str, str]] = []
    level_field = spec.permit.level_field if spec.permit else None
    level = data.get(level_field) if level_field else None
    last = data.get("last_analysis_at")
    gas = spec.permit is not None and spec.permit.gas != "none"
    if (
        gas
        and state == "approved"
        and last
        and (now - _t(last)).total_seconds() > criteria.ANALYSIS_BEFORE_WORK_S
    ):
        out.append(
            (
                "analysis_stale",
                last,
                f"the last analysis ({last}) is more than 30 min old: work may not start on it "
                f"({criteria.ANALYSIS_CLAUSE}); starting runs a new one",
            )
        )
    if gas and state == SUSPENDED and data.get("suspended_at"):
        limit = criteria.interruption_s(rtype, level if isinstance(level, str) else None)
        if limit is not None and (now - _t(data["suspended_at"])).total_seconds() > limit:
            out.append(
                (
                    "reanalysis_required",
                    data["suspended_at"],
                    f"interrupted since {data['suspended_at']} (> {limit / 60:g} min): a new analysis is "
                    f"required before work resumes ({criteria.INTERRUPTION_CLAUSE})",
                )
            )
    period = criteria.periodic_s(rtype)
    if period is not None and state == IN_PROGRESS and last and (now - _t(last)).total_seconds() > period:
        out.append(
            (
                "periodic_analysis_due",
                last,
                f"no analysis since {last} (> {_h(period)}): analyse again ({criteria.PERIODIC_CLAUSE})",
            )
        )
    if state in ("approved", IN_PROGRESS, SUSPENDED) and data.get("valid_to") and now > _t(data["valid_to"]):
        clause = criteria.VALIDITY_CLAUSE.get(rtype, spec.permit.standard if spec.permit else "")
        out.append(
            (
                "validity_expired",
                data["valid_to"],
                f"the permit expired at {data['valid_to']}: stop the work and close it or apply anew "
                f"({clause})",
            )
        )
    return out
