"""Register types and their validation: the field, workflow and type models, the
built-in types (``register_types.yaml``) plus a plant's own file (``load_schemas``), the
checks a record's fields go through (``Validator``). Personal-data redaction is in the
core (``gateway/core/personal.py``), shared with the historian and central.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

BUILTIN_TYPES = Path(__file__).with_name("register_types.yaml")

FieldType = Literal[
    "text", "int", "number", "bool", "date", "datetime", "enum", "list", "ref", "channel", "channels", "table"
]


# --------------------------------------------------------------------------- schemas


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class FieldSpec(_Strict):
    type: FieldType
    title: str | None = None
    #: the label in Chinese (the page shows it when its language is zh-CN)
    title_zh: str | None = None
    required: bool = False
    values: list[str] | None = None
    #: where the page finds an enum's words: ``enum.<words>.<value>`` in its strings
    #: (static/i18n/registers.json), before the words shared by all fields (``enum.<value>``).
    #: Filled in by ``load_schemas`` as ``<type>.<field>`` (``<type>.<field>.<column>`` for
    #: a table's column); a plant's type may name a built-in field's to borrow its words.
    words: str | None = Field(default=None, max_length=128, pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")
    min: float | None = None
    max: float | None = None
    max_length: int = Field(default=4000, ge=1)
    to: str | None = None
    columns: dict[str, FieldSpec] | None = None
    due: bool = False
    #: personal data (an ID number, a phone number): never written to InfluxDB, and
    #: masked or left out of the journal events (so the uplink) when the config says so
    personal: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> FieldSpec:
        if self.type == "enum" and not self.values:
            raise ValueError("an enum needs 'values'")
        if self.type != "enum" and self.values is not None:
            raise ValueError("'values' applies to enum fields only")
        if self.type != "enum" and self.words is not None:
            raise ValueError("'words' applies to enum fields only")
        if self.type == "ref" and not self.to:
            raise ValueError("a ref needs 'to': the register it points to")
        if self.type == "table" and not self.columns:
            raise ValueError("a table needs 'columns'")
        if self.due and self.type != "date":
            raise ValueError("only a date field can be 'due'")
        return self


class TransitionSpec(_Strict):
    from_: list[str] = Field(alias="from", min_length=1)
    to: str
    requires: list[str] = Field(default_factory=list)
    title: str | None = None
    title_zh: str | None = None
    #: the least API role that may take this step (a permit's approval: admin)
    role: Literal["operator", "admin"] = "operator"
    #: signatures (rows of the record's ``signatures`` table, by their ``role``) the step needs
    signatures: list[str] = Field(default_factory=list)
    #: ``gas``: the step runs a gas analysis on live readings and is refused when it fails
    #: (permits to work, gateway/admin/registers/permits.py)
    check: Literal["gas"] | None = None


class OverdueSpec(_Strict):
    field: str


class WorkflowSpec(_Strict):
    states: list[str] = Field(min_length=1)
    initial: str
    final: list[str] = Field(default_factory=list)
    transitions: dict[str, TransitionSpec]
    overdue: OverdueSpec | None = None


class PermitSpec(_Strict):
    """A register type that is a permit to work (GB 30871-2022): its kind's limits are in
    gateway/admin/permits/criteria.py, keyed by the type's name."""

    standard: str
    #: the field that holds the permit's level (hot work: special/first/second), if any
    level_field: str | None = None
    #: required: gas analysis before approval; optional: when the permit names channels or an area
    gas: Literal["required", "optional", "none"] = "none"


class TypeSpec(_Strict):
    title: str
    title_zh: str | None = None
    label: str | None = None
    fields: dict[str, FieldSpec] = Field(min_length=1)
    workflow: WorkflowSpec | None = None
    permit: PermitSpec | None = None

    def due_fields(self) -> list[str]:
        return [n for n, f in self.fields.items() if f.due]

    def personal_fields(self) -> list[str]:
        """Personal fields as paths: ``phone``, or ``table.column`` for a table's column."""
        out = []
        for n, f in self.fields.items():
            if f.personal:
                out.append(n)
            elif f.columns:
                out.extend(f"{n}.{c}" for c, cf in f.columns.items() if cf.personal)
        return out


class SchemaError(Exception):
    """A register type file is wrong; each line names file, type, field and reason."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


_NAME_OK = set("abcdefghijklmnopqrstuvwxyz0123456789_")
_RESERVED = {"id", "state", "archived", "version"}  # export columns


def _read_types(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
    except (OSError, yaml.YAMLError) as e:
        raise SchemaError([f"{path}: {e}"]) from None
    if not isinstance(doc, dict):
        raise SchemaError([f"{path}: expected a mapping of register type name -> definition"])
    return doc


def load_schemas(extra: Path | None = None) -> dict[str, TypeSpec]:
    """The built-in types, plus (or extended by) a plant's own file."""
    sources: list[tuple[Path, dict[str, Any]]] = [(BUILTIN_TYPES, _read_types(BUILTIN_TYPES))]
    if extra is not None:
        sources.append((extra, _read_types(extra)))
    types: dict[str, TypeSpec] = {}
    origin: dict[str, Path] = {}
    errors: list[str] = []
    for path, doc in sources:
        for name, body in doc.items():
            if not isinstance(name, str) or not name or set(name) - _NAME_OK:
                errors.append(f"{path}: {name!r}: type names are lower-case letters, digits and _")
                continue
            if name in types and isinstance(body, dict) and set(body) <= {"fields"}:
                # a plant adds fields to a built-in type
                base = types[name].model_dump(by_alias=True, exclude_none=True)
                for fname in body.get("fields") or {}:
                    if fname in base["fields"]:
                        errors.append(
                            f"{path}: {name}.fields.{fname}: already defined; "
                            "a plant file may add fields, not redefine them"
                        )
                base["fields"].update(body.get("fields") or {})
                body = base
            elif name in types:
                errors.append(f"{path}: {name}: type already defined; to extend it give only 'fields:'")
                continue
            try:
                types[name] = TypeSpec.model_validate(body)
                origin[name] = path
            except ValidationError as e:
                for err in e.errors():
                    loc = ".".join(str(x) for x in err["loc"])
                    errors.append(f"{path}: {name}.{loc}: {err['msg']}")
    for name, spec in types.items():
        errors.extend(f"{origin[name]}: {e}" for e in _check_type(name, spec, types))
    if errors:
        raise SchemaError(errors)
    for name, spec in types.items():
        _name_words(name, spec)
    return types


def _name_words(name: str, spec: TypeSpec) -> None:
    """Each enum field's ``words`` (its own unless it names some), so that one value can
    have different words in two fields: ``special`` is 特级 as a hot-work level, 特种 as a
    kind of protective equipment."""
    for fname, f in spec.fields.items():
        if f.type == "enum" and f.words is None:
            f.words = f"{name}.{fname}"
        for cname, c in (f.columns or {}).items():
            if c.type == "enum" and c.words is None:
                c.words = f"{name}.{fname}.{cname}"


def _check_type(name: str, spec: TypeSpec, types: dict[str, TypeSpec]) -> list[str]:
    errs = []
    for fname, f in spec.fields.items():
        if set(fname) - _NAME_OK or fname in _RESERVED:
            errs.append(
                f"{name}.fields.{fname}: field names are lower-case letters, digits and _, "
                f"and not one of {sorted(_RESERVED)}"
            )
        if f.type == "ref" and f.to not in types:
            errs.append(
                f"{name}.fields.{fname}.to: unknown register {f.to!r}; known: {', '.join(sorted(types))}"
            )
        for cname, c in (f.columns or {}).items():
            if c.type in ("table", "ref", "channels"):
                errs.append(f"{name}.fields.{fname}.columns.{cname}: a table column cannot be a {c.type}")
    if spec.label is not None and spec.label not in spec.fields:
        errs.append(f"{name}.label: {spec.label!r} is not a field")
    wf = spec.workflow
    if wf is not None:
        states = set(wf.states)
        if wf.initial not in states:
            errs.append(f"{name}.workflow.initial: {wf.initial!r} is not one of the states")
        for s in wf.final:
            if s not in states:
                errs.append(f"{name}.workflow.final: {s!r} is not one of the states")
        for tname, t in wf.transitions.items():
            for s in [*t.from_, t.to]:
                if s not in states:
                    errs.append(f"{name}.workflow.transitions.{tname}: {s!r} is not one of the states")
            for r in t.requires:
                if r not in spec.fields:
                    errs.append(f"{name}.workflow.transitions.{tname}.requires: {r!r} is not a field")
        for tname, t in wf.transitions.items():
            if t.signatures and "signatures" not in spec.fields:
                errs.append(
                    f"{name}.workflow.transitions.{tname}.signatures: the type has no 'signatures' table"
                )
            if t.check == "gas" and spec.permit is None:
                errs.append(f"{name}.workflow.transitions.{tname}.check: a gas check needs 'permit:'")
        if wf.overdue is not None and (
            wf.overdue.field not in spec.fields or spec.fields[wf.overdue.field].type != "date"
        ):
            errs.append(f"{name}.workflow.overdue.field: must name a date field")
    if spec.permit is not None:
        missing = [f for f in PERMIT_FIELDS if f not in spec.fields]
        if missing:
            errs.append(f"{name}.permit: a permit type needs the fields {', '.join(missing)}")
        if spec.permit.level_field is not None and spec.permit.level_field not in spec.fields:
            errs.append(f"{name}.permit.level_field: {spec.permit.level_field!r} is not a field")
        if wf is None:
            errs.append(f"{name}.permit: a permit type needs a workflow")
    return errs


#: fields every permit type has (the workflow code reads and writes them)
PERMIT_FIELDS = ("valid_from", "valid_to", "area", "channels", "signatures", "gas_analyses",
                 "last_analysis_at",
                 "flagged", "flag_reason")


# --------------------------------------------------------------------------- validation

#: rows of a table field; a list field's items
MAX_TABLE_ROWS = 500
MAX_LIST_ITEMS = 1000
#: a record's data as one journal event, encoded JSON: the uplink carries each event in
#: one envelope, and a larger one would block it for good
MAX_EVENT_BYTES = 256 * 1024


def unicode_ok(s: str) -> bool:
    """False for text that cannot be stored or sent as UTF-8 (a lone surrogate such as
    ``"\\ud800"``, which JSON can write and SQLite cannot take)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_size(obj: Any, loc: tuple[str | int, ...]) -> None:
    """Refuses data whose JSON is over ``MAX_EVENT_BYTES`` (as UTF-8)."""
    n = len(json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    if n > MAX_EVENT_BYTES:
        raise Invalid([(loc, f"the record is {n} bytes as JSON; the limit is {MAX_EVENT_BYTES // 1024} KB "
                             "(shorten its text or split its tables)")])


class Invalid(Exception):
    """Record data that does not fit its type: ``errors`` = [(location, reason), ...]."""

    def __init__(self, errors: list[tuple[tuple[str | int, ...], str]]):
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in errors))
        self.errors = errors


class NotFound(LookupError):
    pass


class Conflict(Exception):
    pass


class Refused(Conflict):
    """A workflow step refused by a check on live data (a permit's gas analysis): the
    refusal is recorded (``events`` to journal) and ``analysis`` says what failed."""

    def __init__(self, message: str, analysis: dict[str, Any] | None, events: list[dict[str, Any]]):
        super().__init__(message)
        self.analysis = analysis
        self.events = events


def parse_date(v: Any) -> str:
    if isinstance(v, str) and len(v) == 10:
        try:
            return dt.date.fromisoformat(v).isoformat()
        except ValueError:
            pass
    raise ValueError(f"expected a date YYYY-MM-DD, got {_short(v)}")


def parse_datetime(v: Any) -> str:
    if isinstance(v, str) and 10 <= len(v) <= 40:
        try:
            t = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if t.tzinfo is None:
                t = t.astimezone()  # naive means plant-local time
            return t.isoformat(timespec="seconds")
    raise ValueError(f"expected a date and time, ISO 8601 (2026-05-01T08:30:00+08:00), got {_short(v)}")


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


class Validator:
    """Checks record data against its TypeSpec; knows channel names and looks up refs."""

    def __init__(self, channels: Iterable[str] | None = None):
        # a set view (a table's names) is used as it is: no copy of every name
        self.channels: AbstractSet[str] | None = (
            None if channels is None else channels if isinstance(channels, AbstractSet) else set(channels))

    def value(
        self,
        f: FieldSpec,
        v: Any,
        loc: tuple[str | int, ...],
        errs: list[tuple[tuple[str | int, ...], str]],
        text: bool = False,
    ) -> Any:
        """One field's value, normalised; appends to errs on failure. ``text``: from CSV."""
        try:
            return self._value(f, v, loc, errs, text)
        except ValueError as e:
            errs.append((loc, str(e)))
            return None

    def _value(
        self,
        f: FieldSpec,
        v: Any,
        loc: tuple[str | int, ...],
        errs: list[tuple[tuple[str | int, ...], str]],
        text: bool,
    ) -> Any:
        t = f.type
        if isinstance(v, str) and not unicode_ok(v):
            raise ValueError("not valid Unicode text (holds a lone surrogate)")
        if text and isinstance(v, str) and t in ("int", "number", "bool", "ref", "list", "channels", "table"):
            v = _from_text(t, v)
        if t in ("text", "enum", "channel"):
            if not isinstance(v, str):
                raise ValueError(f"expected text, got {_short(v)}")
            if t == "text" and len(v) > f.max_length:
                raise ValueError(f"longer than {f.max_length} characters")
            if t == "enum" and v not in (f.values or []):
                raise ValueError(f"{_short(v)} is not one of {f.values}")
            if t == "channel" and self.channels is not None and v not in self.channels:
                raise ValueError(f"no channel named {_short(v)}")
            return v
        if t in ("int", "ref"):
            if (
                isinstance(v, bool)
                or not isinstance(v, int | float)
                or (isinstance(v, float) and not v.is_integer())
            ):
                raise ValueError(
                    f"expected an integer{' (a record id)' if t == 'ref' else ''}, got {_short(v)}"
                )
            v = int(v)
            if abs(v) > 2**53:
                raise ValueError("integer out of range")
            self._range(f, v)
            return v
        if t == "number":
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"expected a finite number, got {_short(v)}")
            self._range(f, v)
            return v
        if t == "bool":
            if not isinstance(v, bool):
                raise ValueError(f"expected true or false, got {_short(v)}")
            return v
        if t == "date":
            return parse_date(v)
        if t == "datetime":
            return parse_datetime(v)
        if t in ("list", "channels"):
            if not isinstance(v, list):
                raise ValueError(f"expected a list of text, got {_short(v)}")
            if len(v) > MAX_LIST_ITEMS:
                raise ValueError(f"{len(v)} items; at most {MAX_LIST_ITEMS}")
            out = []
            for i, item in enumerate(v):
                if not isinstance(item, str) or len(item) > f.max_length or not unicode_ok(item):
                    errs.append(((*loc, i), f"expected text, got {_short(item)}"))
                elif t == "channels" and self.channels is not None and item not in self.channels:
                    errs.append(((*loc, i), f"no channel named {_short(item)}"))
                else:
                    out.append(item)
            return out
        if t == "table":
            if not isinstance(v, list):
                raise ValueError(f"expected a list of rows (objects), got {_short(v)}")
            if len(v) > MAX_TABLE_ROWS:
                raise ValueError(f"{len(v)} rows; at most {MAX_TABLE_ROWS}")
            rows = []
            for i, row in enumerate(v):
                if not isinstance(row, dict):
                    errs.append(((*loc, i), f"expected an object, got {_short(row)}"))
                    continue
                rows.append(self.fields(f.columns or {}, row, (*loc, i), errs, partial=False))
            return rows
        raise ValueError(f"unsupported field type {t}")  # pragma: no cover - schema forbids it

    @staticmethod
    def _range(f: FieldSpec, v: float) -> None:
        if f.min is not None and v < f.min:
            raise ValueError(f"must be >= {f.min:g}")
        if f.max is not None and v > f.max:
            raise ValueError(f"must be <= {f.max:g}")

    def fields(
        self,
        spec: dict[str, FieldSpec],
        data: dict[str, Any],
        loc: tuple[str | int, ...],
        errs: list[tuple[tuple[str | int, ...], str]],
        *,
        partial: bool,
        text: bool = False,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        bad: set[str] = set()
        for k, v in data.items():
            f = spec.get(k)
            if f is None:
                shown = k if unicode_ok(k) else k.encode("utf-8", "backslashreplace").decode()
                errs.append(((*loc, shown), f"unknown field; known: {', '.join(spec)}"))
                continue
            if v is None or (text and v == ""):
                out[k] = None  # clears the field
                continue
            n = len(errs)
            val = self.value(f, v, (*loc, k), errs, text)
            if len(errs) == n:
                out[k] = val
            else:
                bad.add(k)
        if not partial:
            for k, f in spec.items():
                if f.required and out.get(k) is None and k not in bad:
                    errs.append(((*loc, k), "required"))
        return out


def _from_text(t: str, s: str) -> Any:
    s = s.strip()
    try:
        if t in ("int", "ref"):
            return int(s)
        if t == "number":
            return float(s)
        if t == "bool":
            low = s.lower()
            if low in ("true", "1", "yes", "是"):
                return True
            if low in ("false", "0", "no", "否"):
                return False
            return s
        if t in ("list", "channels", "table"):
            return json.loads(s)
    except ValueError:
        return s
    return s
