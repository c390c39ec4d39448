"""The safety management registers (台账): typed records in their own SQLite database.

Register types are data, declared in ``register_types.yaml`` (the built-in types the
2016 guideline names) plus an optional plant file (``registers.types_file``) in the same
format. A type has fields (text, int, number, bool, date, datetime, enum, list, ref to
another register, channel(s), table), optional due-date fields that raise reminders,
and an optional workflow (hidden danger: reported → assigned → rectified → closed).

Every change is kept: the ``changes`` table holds who, when, the action and the record
before and after. Records are never deleted, only archived. Each change also returns
a journal event ``{"type": "register", ...}`` so the uplink carries it upstream (报送);
reminders are journal events ``{"type": "reminder", ...}``, raised once per due item and
threshold. The API audit trail lives in the same database.

All SQLite work happens on one dedicated thread (``RegisterStore.call``); the sync
methods are also usable directly (tests, CLI), never from the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import csv
import datetime as dt
import hashlib
import io
import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

log = logging.getLogger(__name__)

BUILTIN_TYPES = Path(__file__).with_name("register_types.yaml")

FieldType = Literal[
    "text", "int", "number", "bool", "date", "datetime", "enum", "list", "ref", "channel", "channels", "table"
]

T = TypeVar("T")


# --------------------------------------------------------------------------- schemas


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class FieldSpec(_Strict):
    type: FieldType
    title: str | None = None
    required: bool = False
    values: list[str] | None = None
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


class OverdueSpec(_Strict):
    field: str


class WorkflowSpec(_Strict):
    states: list[str] = Field(min_length=1)
    initial: str
    final: list[str] = Field(default_factory=list)
    transitions: dict[str, TransitionSpec]
    overdue: OverdueSpec | None = None


class TypeSpec(_Strict):
    title: str
    title_zh: str | None = None
    label: str | None = None
    fields: dict[str, FieldSpec] = Field(min_length=1)
    workflow: WorkflowSpec | None = None

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


PersonalMode = Literal["full", "masked", "omitted"]


def mask(value: Any) -> str:
    """A personal value masked but for its last four characters (fewer for short ones):
    ``110101199003071234`` → ``**************1234``, enough to tell two records apart."""
    text = str(value)
    keep = min(4, len(text) // 3)
    return "*" * (len(text) - keep) + text[len(text) - keep:]


def redact(data: dict[str, Any], paths: Iterable[str], mode: PersonalMode) -> dict[str, Any]:
    """A copy of a record's data with its personal fields (``personal_fields`` paths) masked
    or left out; ``full`` returns the data as it is."""
    if mode == "full":
        return data
    out = dict(data)
    for path in paths:
        top, _, col = path.partition(".")
        if top not in out:
            continue
        if not col:
            if mode == "omitted":
                del out[top]
            else:
                out[top] = mask(out[top])
            continue
        rows = out[top]
        if isinstance(rows, list):
            out[top] = [redact(r, [col], mode) if isinstance(r, dict) else r for r in rows]
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
    return types


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
        if wf.overdue is not None and (
            wf.overdue.field not in spec.fields or spec.fields[wf.overdue.field].type != "date"
        ):
            errs.append(f"{name}.workflow.overdue.field: must name a date field")
    return errs


# --------------------------------------------------------------------------- validation


class Invalid(Exception):
    """Record data that does not fit its type: ``errors`` = [(location, reason), ...]."""

    def __init__(self, errors: list[tuple[tuple[str | int, ...], str]]):
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in errors))
        self.errors = errors


class NotFound(LookupError):
    pass


class Conflict(Exception):
    pass


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
        self.channels = set(channels) if channels is not None else None

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
            if not isinstance(v, list) or len(v) > 1000:
                raise ValueError(f"expected a list of text, got {_short(v)}")
            out = []
            for i, item in enumerate(v):
                if not isinstance(item, str) or len(item) > f.max_length:
                    errs.append(((*loc, i), f"expected text, got {_short(item)}"))
                elif t == "channels" and self.channels is not None and item not in self.channels:
                    errs.append(((*loc, i), f"no channel named {_short(item)}"))
                else:
                    out.append(item)
            return out
        if t == "table":
            if not isinstance(v, list) or len(v) > 1000:
                raise ValueError(f"expected a list of rows (objects), got {_short(v)}")
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
                errs.append(((*loc, k), f"unknown field; known: {', '.join(spec)}"))
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


# --------------------------------------------------------------------------- attachments

ATTACHMENT_TYPES = {
    "application/pdf": (b"%PDF-",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
}


def sniff(head: bytes) -> str | None:
    """The attachment's real type from its first bytes (never trust the name or header)."""
    for mime, magics in ATTACHMENT_TYPES.items():
        if any(head.startswith(m) for m in magics):
            return mime
    return None


# --------------------------------------------------------------------------- the store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    type        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    state       TEXT,
    archived    INTEGER NOT NULL DEFAULT 0,
    created_ns  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    updated_ns  INTEGER NOT NULL,
    updated_by  TEXT NOT NULL,
    data        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_type ON records(type, archived, id);
CREATE TABLE IF NOT EXISTS changes (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    record   INTEGER NOT NULL,
    type     TEXT NOT NULL,
    version  INTEGER NOT NULL,
    ts       INTEGER NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    before   TEXT,
    after    TEXT,
    comment  TEXT
);
CREATE INDEX IF NOT EXISTS changes_by_record ON changes(record, seq);
CREATE TABLE IF NOT EXISTS attachments (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    record    INTEGER NOT NULL,
    type      TEXT NOT NULL,
    filename  TEXT NOT NULL,
    mime      TEXT NOT NULL,
    size      INTEGER NOT NULL,
    sha256    TEXT NOT NULL,
    ts        INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    archived  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS reminders (
    type       TEXT NOT NULL,
    record     INTEGER NOT NULL,
    field      TEXT NOT NULL,
    due        TEXT NOT NULL,
    threshold  INTEGER NOT NULL,
    ts         INTEGER NOT NULL,
    PRIMARY KEY (type, record, field, due, threshold)
);
CREATE TABLE IF NOT EXISTS audit (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    role    TEXT,
    method  TEXT NOT NULL,
    path    TEXT NOT NULL,
    status  INTEGER NOT NULL,
    remote  TEXT,
    detail  TEXT
);
"""

OVERDUE = -1  # the reminder threshold recorded for "past due"


def _iso_ns(ns: int) -> str:
    return (
        dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def open_db(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # personal data (names, ID numbers, phones): owner-only; SQLite gives -wal/-shm the same mode
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=5000")
    db.executescript(_SCHEMA)
    return db


def audit_offline(state_dir: Path, actor: str, method: str, path: str, detail: dict[str, Any]) -> None:
    """Record an action taken outside the daemon (the ``safegw users`` CLI)."""
    db = open_db(Path(state_dir) / "registers.db")
    try:
        db.execute(
            "INSERT INTO audit(ts, actor, role, method, path, status, remote, detail) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (time.time_ns(), actor, "cli", method, path, 0, "local", json.dumps(detail, ensure_ascii=False)),
        )
    finally:
        db.close()


class RegisterStore:
    """Typed register records with history, workflow, reminders, attachments and audit."""

    def __init__(
        self,
        path: str | Path,
        *,
        schemas: dict[str, TypeSpec] | None = None,
        channels: Iterable[str] | None = None,
        clock: Callable[[], int] = time.time_ns,
        remind_days: int | list[int] = (30, 7, 1),  # type: ignore[assignment]
        max_attachment: int = 20 * 10**6,
        attachments_dir: Path | None = None,
        personal_upstream: PersonalMode = "full",
    ):
        self.path = Path(path)
        self.types = schemas if schemas is not None else load_schemas()
        self.validator = Validator(channels)
        self.clock = clock
        days = [remind_days] if isinstance(remind_days, int) else list(remind_days)
        self.thresholds = sorted(set(days), reverse=True)
        self.max_attachment = max_attachment
        self.attachments_dir = attachments_dir or self.path.with_name("attachments")
        self.personal_upstream = personal_upstream
        self._db = open_db(self.path)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="registers")

    # ------------------------------------------------------------------ plumbing
    async def call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run a sync method on the store's own thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kw))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._db.close()

    def spec(self, rtype: str) -> TypeSpec:
        try:
            return self.types[rtype]
        except KeyError:
            raise NotFound(
                f"unknown register type {rtype!r}; known: {', '.join(sorted(self.types))}"
            ) from None

    def today(self) -> dt.date:
        """The plant's local date, from the injectable clock."""
        return dt.datetime.fromtimestamp(self.clock() / 1e9).date()

    # ------------------------------------------------------------------ reading
    def _row(self, rtype: str, rid: int) -> sqlite3.Row | tuple[Any, ...]:
        row = self._db.execute(
            "SELECT id, type, version, state, archived, created_ns, created_by, updated_ns, "
            "updated_by, data FROM records WHERE id=? AND type=?",
            (rid, rtype),
        ).fetchone()
        if row is None:
            raise NotFound(f"{rtype} record {rid} does not exist")
        return row  # type: ignore[no-any-return]

    def _doc(self, row: Any, today: dt.date | None = None) -> dict[str, Any]:
        rid, rtype, version, state, archived, cns, cby, uns, uby, data = row
        spec = self.types.get(rtype)
        d = json.loads(data)
        today = today or self.today()
        due = []
        overdue = False
        final = spec is not None and spec.workflow is not None and state in spec.workflow.final
        if spec is not None:
            for f in spec.due_fields():
                if d.get(f):
                    days_left = (dt.date.fromisoformat(d[f]) - today).days
                    due.append({"field": f, "date": d[f], "days_left": days_left})
            wf = spec.workflow
            if wf is not None and wf.overdue is not None and not final and d.get(wf.overdue.field):
                overdue = dt.date.fromisoformat(d[wf.overdue.field]) < today
            elif wf is None:
                overdue = any(x["days_left"] < 0 for x in due)
        doc: dict[str, Any] = {
            "id": rid,
            "type": rtype,
            "version": version,
            "archived": bool(archived),
            "created": _iso_ns(cns),
            "created_by": cby,
            "updated": _iso_ns(uns),
            "updated_by": uby,
            "data": d,
            "due": due if not (archived or final) else [],
            "overdue": bool(overdue and not archived),
        }
        if state is not None:
            doc["state"] = state
        if spec is not None and spec.label and spec.label in d:
            doc["label"] = str(d[spec.label])
        if rtype == "major_hazard_source" and d.get("chemicals"):
            # GB 18218: a unit is a major hazard source when Σ q/Q >= 1
            doc["q_over_q"] = round(
                sum(c["quantity_t"] / c["critical_t"] for c in d["chemicals"] if c.get("critical_t")), 4
            )
        return doc

    def get(self, rtype: str, rid: int) -> dict[str, Any]:
        self.spec(rtype)
        doc = self._doc(self._row(rtype, rid))
        doc["attachments"] = self.attachments(rtype, rid)
        return doc

    def query(
        self,
        rtype: str,
        *,
        filters: dict[str, str] | None = None,
        q: str | None = None,
        state: str | None = None,
        archived: str = "false",
        overdue: bool | None = None,
        due_within: int | None = None,
        sort: str = "id",
        desc: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> dict[str, Any]:
        spec = self.spec(rtype)
        sql = ["FROM records WHERE type=?"]
        args: list[Any] = [rtype]
        if archived in ("false", "true"):
            sql.append("AND archived=?")
            args.append(1 if archived == "true" else 0)
        elif archived != "all":
            raise Invalid([(("query", "archived"), "expected false, true or all")])
        if state is not None:
            if spec.workflow is None:
                raise Invalid([(("query", "state"), f"{rtype} has no workflow")])
            if state not in spec.workflow.states:
                raise Invalid([(("query", "state"), f"{state!r} is not one of {spec.workflow.states}")])
            sql.append("AND state=?")
            args.append(state)
        for k, v in (filters or {}).items():
            f = spec.fields.get(k)
            if f is None:
                raise Invalid(
                    [(("query", k), f"unknown filter; fields of {rtype}: {', '.join(spec.fields)}")]
                )
            if f.type in ("list", "channels", "table"):
                sql.append("AND EXISTS (SELECT 1 FROM json_each(records.data, ?) WHERE value = ?)")
                args += [f"$.{k}", v]
                continue
            errs: list[tuple[tuple[str | int, ...], str]] = []
            val = self.validator.value(
                f.model_copy(update={"min": None, "max": None}), v, ("query", k), errs, text=True
            )
            if errs:
                raise Invalid(errs)
            sql.append("AND json_extract(data, ?) = ?")
            args += [f"$.{k}", val]
        if q:
            sql.append("AND instr(lower(data), lower(?)) > 0")
            args.append(json.dumps(q, ensure_ascii=False)[1:-1])
        if sort != "id" and sort not in spec.fields and sort not in ("updated", "created"):
            raise Invalid([(("query", "sort"), f"sort by id, created, updated or a field of {rtype}")])
        where = " ".join(sql)
        rows = self._db.execute(
            "SELECT id, type, version, state, archived, created_ns, created_by, updated_ns, "
            f"updated_by, data {where}",
            args,
        ).fetchall()
        today = self.today()
        docs = [self._doc(r, today) for r in rows]
        if overdue is not None:
            docs = [d for d in docs if d["overdue"] == overdue]
        if due_within is not None:
            docs = [d for d in docs if any(x["days_left"] <= due_within for x in d["due"])]

        def key(d: dict[str, Any]) -> Any:
            if sort == "id":
                return (0, d["id"])
            if sort in ("updated", "created"):
                return (0, d[sort])
            v = d["data"].get(sort)
            return (1, "") if v is None else (0, str(v)) if not isinstance(v, int | float) else (0, v)

        try:
            docs.sort(key=key, reverse=desc)
        except TypeError:
            docs.sort(key=lambda d: str(key(d)), reverse=desc)
        return {
            "type": rtype,
            "total": len(docs),
            "offset": offset,
            "limit": limit,
            "items": docs[offset : offset + limit],
        }

    def summary(self) -> list[dict[str, Any]]:
        counts = dict(
            self._db.execute("SELECT type, count(*) FROM records WHERE archived=0 GROUP BY type").fetchall()
        )
        return [
            {
                "type": name,
                "title": s.title,
                "title_zh": s.title_zh,
                "records": counts.get(name, 0),
                "due_fields": s.due_fields(),
                "workflow": s.workflow.model_dump(by_alias=True) if s.workflow else None,
            }
            for name, s in self.types.items()
        ]

    def due(self, within_days: int = 30) -> list[dict[str, Any]]:
        """Every open due date across registers within N days (or past), soonest first."""
        today = self.today()
        out = []
        for row in self._db.execute(
            "SELECT id, type, version, state, archived, created_ns, created_by, "
            "updated_ns, updated_by, data FROM records WHERE archived=0"
        ):
            if row[1] not in self.types:
                continue
            d = self._doc(row, today)
            for x in d["due"]:
                if x["days_left"] <= within_days:
                    out.append(
                        {
                            "type": d["type"],
                            "id": d["id"],
                            "label": d.get("label", str(d["id"])),
                            "state": d.get("state"),
                            "title": self.types[d["type"]].title,
                            **x,
                        }
                    )
        out.sort(key=lambda x: (x["days_left"], x["type"], x["id"]))
        return out

    def history(self, rtype: str, rid: int) -> list[dict[str, Any]]:
        self.spec(rtype)
        self._row(rtype, rid)
        return [
            {
                "seq": s,
                "version": v,
                "ts": _iso_ns(ts),
                "actor": a,
                "action": act,
                "before": json.loads(b) if b else None,
                "after": json.loads(af) if af else None,
                "comment": c,
            }
            for s, v, ts, a, act, b, af, c in self._db.execute(
                "SELECT seq, version, ts, actor, action, before, after, comment FROM changes "
                "WHERE record=? ORDER BY seq",
                (rid,),
            )
        ]

    # ------------------------------------------------------------------ writing
    def _check_refs(
        self,
        spec: TypeSpec,
        data: dict[str, Any],
        loc: tuple[str | int, ...],
        errs: list[tuple[tuple[str | int, ...], str]],
    ) -> None:
        for k, v in data.items():
            f = spec.fields.get(k)
            if f is not None and f.type == "ref" and v is not None:
                row = self._db.execute(
                    "SELECT archived FROM records WHERE id=? AND type=?", (v, f.to)
                ).fetchone()
                if row is None:
                    errs.append(((*loc, k), f"no {f.to} record with id {v}"))
                elif row[0]:
                    errs.append(((*loc, k), f"{f.to} record {v} is archived"))

    def _validate(
        self,
        spec: TypeSpec,
        data: Any,
        *,
        partial: bool,
        text: bool = False,
        loc: tuple[str | int, ...] = ("body",),
    ) -> dict[str, Any]:
        errs: list[tuple[tuple[str | int, ...], str]] = []
        if not isinstance(data, dict):
            raise Invalid([(loc, "expected a JSON object of fields")])
        out = self.validator.fields(spec.fields, data, loc, errs, partial=partial, text=text)
        self._check_refs(spec, out, loc, errs)
        if errs:
            raise Invalid(errs)
        return out

    def _event(
        self, doc: dict[str, Any], action: str, actor: str, changed: list[str] | None = None, **extra: Any
    ) -> dict[str, Any]:
        personal = self.spec(doc["type"]).personal_fields()
        ev = {
            "type": "register",
            "ts": self.clock(),
            "register": doc["type"],
            "id": doc["id"],
            "version": doc["version"],
            "action": action,
            "actor": actor,
            "state": doc.get("state"),
            "archived": doc["archived"],
            "data": redact(doc["data"], personal, self.personal_upstream),
        }
        if changed is not None:
            ev["changed"] = changed
        if personal:
            # which data keys are personal, for the consumers (the historian leaves them out)
            ev["personal"] = personal
        ev.update(extra)
        return ev

    def _log_change(
        self,
        doc_before: dict[str, Any] | None,
        doc_after: dict[str, Any],
        action: str,
        actor: str,
        comment: str | None,
    ) -> None:
        def snap(d: dict[str, Any] | None) -> str | None:
            if d is None:
                return None
            return json.dumps(
                {"state": d.get("state"), "archived": d["archived"], "data": d["data"]}, ensure_ascii=False
            )

        self._db.execute(
            "INSERT INTO changes(record, type, version, ts, actor, action, before, after, comment) "
            "VALUES (?,?,?,?,?,?,?,?,?)",
            (
                doc_after["id"],
                doc_after["type"],
                doc_after["version"],
                self.clock(),
                actor,
                action,
                snap(doc_before),
                snap(doc_after),
                comment,
            ),
        )

    def _create(
        self, rtype: str, data: dict[str, Any], actor: str, comment: str | None = None, action: str = "create"
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        spec = self.spec(rtype)
        now = self.clock()
        state = spec.workflow.initial if spec.workflow else None
        clean = {k: v for k, v in data.items() if v is not None}
        cur = self._db.execute(
            "INSERT INTO records(type, version, state, archived, created_ns, created_by, "
            "updated_ns, updated_by, data) VALUES (?,1,?,0,?,?,?,?,?)",
            (rtype, state, now, actor, now, actor, json.dumps(clean, ensure_ascii=False)),
        )
        doc = self._doc(self._row(rtype, int(cur.lastrowid or 0)))
        self._log_change(None, doc, action, actor, comment)
        return doc, self._event(doc, action, actor, sorted(clean))

    def create(
        self, rtype: str, data: Any, actor: str, comment: str | None = None
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        spec = self.spec(rtype)
        clean = self._validate(spec, data, partial=False)
        with self._tx():
            doc, ev = self._create(rtype, clean, actor, comment)
        return doc, [ev]

    def _update(
        self,
        rtype: str,
        rid: int,
        changes: dict[str, Any],
        actor: str,
        *,
        action: str = "update",
        state: str | None = None,
        archived: bool | None = None,
        comment: str | None = None,
        version: int | None = None,
        check_required: bool = True,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        spec = self.spec(rtype)
        before = self._doc(self._row(rtype, rid))
        if version is not None and version != before["version"]:
            raise Conflict(
                f"{rtype} record {rid} is at version {before['version']}, not {version}: "
                "someone changed it meanwhile; reload and retry"
            )
        data = dict(before["data"])
        for k, v in changes.items():
            if v is None:
                data.pop(k, None)
            else:
                data[k] = v
        if check_required:
            missing = [k for k, f in spec.fields.items() if f.required and data.get(k) is None]
            if missing:
                raise Invalid([(("body", k), "required") for k in missing])
        changed = sorted(k for k in set(data) | set(before["data"]) if data.get(k) != before["data"].get(k))
        new_state = state if state is not None else before.get("state")
        new_archived = before["archived"] if archived is None else archived
        self._db.execute(
            "UPDATE records SET version=version+1, state=?, archived=?, updated_ns=?, updated_by=?, "
            "data=? WHERE id=?",
            (new_state, int(new_archived), self.clock(), actor, json.dumps(data, ensure_ascii=False), rid),
        )
        after = self._doc(self._row(rtype, rid))
        self._log_change(before, after, action, actor, comment)
        return after, self._event(after, action, actor, changed)

    def update(
        self,
        rtype: str,
        rid: int,
        data: Any,
        actor: str,
        *,
        version: int | None = None,
        comment: str | None = None,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        spec = self.spec(rtype)
        clean = self._validate(spec, data, partial=True)
        with self._tx():
            cur = self._doc(self._row(rtype, rid))
            if cur["archived"]:
                raise Conflict(f"{rtype} record {rid} is archived; restore it first")
            doc, ev = self._update(rtype, rid, clean, actor, version=version, comment=comment)
        return doc, [ev]

    def archive(
        self, rtype: str, rid: int, actor: str, *, archived: bool = True, comment: str | None = None
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        self.spec(rtype)
        with self._tx():
            cur = self._doc(self._row(rtype, rid))
            if cur["archived"] == archived:
                raise Conflict(f"{rtype} record {rid} is {'already' if archived else 'not'} archived")
            doc, ev = self._update(
                rtype,
                rid,
                {},
                actor,
                action="archive" if archived else "restore",
                archived=archived,
                comment=comment,
                check_required=False,
            )
        return doc, [ev]

    def transition(
        self, rtype: str, rid: int, name: str, data: Any, actor: str, *, comment: str | None = None
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        spec = self.spec(rtype)
        wf = spec.workflow
        if wf is None:
            raise NotFound(f"{rtype} has no workflow")
        t = wf.transitions.get(name)
        if t is None:
            raise NotFound(f"{rtype} has no transition {name!r}; it has: {', '.join(wf.transitions)}")
        clean = self._validate(spec, data if data is not None else {}, partial=True)
        with self._tx():
            cur = self._doc(self._row(rtype, rid))
            if cur["archived"]:
                raise Conflict(f"{rtype} record {rid} is archived")
            if cur["state"] not in t.from_:
                raise Conflict(
                    f"cannot {name} a {rtype} in state {cur['state']!r}; {name} applies in {t.from_}"
                )
            merged = {**cur["data"], **{k: v for k, v in clean.items()}}
            missing = [r for r in t.requires if merged.get(r) is None]
            if missing:
                raise Invalid([(("body", r), f"required to {name}") for r in missing])
            doc, ev = self._update(
                rtype, rid, clean, actor, action=f"transition:{name}", state=t.to, comment=comment
            )
            ev["from_state"] = cur["state"]
        return doc, [ev]

    def _tx(self) -> Any:
        db = self._db

        class _T:
            def __enter__(self) -> None:
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, et: Any, e: Any, tb: Any) -> None:
                db.execute("COMMIT" if et is None else "ROLLBACK")

        return _T()

    # ------------------------------------------------------------------ import / export
    def export(self, rtype: str, fmt: str = "json", archived: str = "false") -> str:
        spec = self.spec(rtype)
        docs = self.query(rtype, archived=archived, limit=10**9)["items"]
        if fmt == "json":
            return json.dumps(
                {
                    "type": rtype,
                    "exported": _iso_ns(self.clock()),
                    "records": [
                        {
                            "id": d["id"],
                            "state": d.get("state"),
                            "archived": d["archived"],
                            "version": d["version"],
                            **d["data"],
                        }
                        for d in docs
                    ],
                },
                ensure_ascii=False,
                indent=1,
            )
        if fmt != "csv":
            raise Invalid([(("query", "format"), "expected csv or json")])
        buf = io.StringIO()
        cols = ["id", "state", "archived", "version", *spec.fields]
        w = csv.writer(buf)
        w.writerow(cols)
        for d in docs:
            row: list[Any] = [
                d["id"],
                d.get("state") or "",
                "true" if d["archived"] else "false",
                d["version"],
            ]
            for k, f in spec.fields.items():
                v = d["data"].get(k)
                if v is None:
                    row.append("")
                elif f.type in ("list", "channels", "table"):
                    row.append(json.dumps(v, ensure_ascii=False))
                elif isinstance(v, bool):
                    row.append("true" if v else "false")
                else:
                    row.append(v)
            w.writerow(row)
        return buf.getvalue()

    def import_(
        self, rtype: str, text: str, fmt: str, actor: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """All or nothing: rows with an ``id`` update that record, the others are created."""
        spec = self.spec(rtype)
        rows: list[tuple[int | None, dict[str, Any], bool]] = []
        errs: list[tuple[tuple[str | int, ...], str]] = []
        if fmt == "json":
            try:
                doc = json.loads(text)
            except ValueError as e:
                raise Invalid([(("body",), f"not JSON: {e}")]) from None
            recs = doc.get("records") if isinstance(doc, dict) else doc
            if not isinstance(recs, list):
                raise Invalid([(("body",), 'expected a list of records, or {"records": [...]}')])
            for i, r in enumerate(recs):
                if not isinstance(r, dict):
                    errs.append((("records", i), "expected an object"))
                    continue
                r = dict(r)
                rid = r.pop("id", None)
                for k in ("state", "archived", "version"):
                    r.pop(k, None)
                if rid is not None and (isinstance(rid, bool) or not isinstance(rid, int)):
                    errs.append((("records", i, "id"), "expected an integer id"))
                    continue
                rows.append((rid, r, False))
        elif fmt == "csv":
            try:
                reader = csv.DictReader(io.StringIO(text))
                for i, r in enumerate(reader):
                    if None in r:
                        errs.append((("row", i + 2), "more cells than columns"))
                        continue
                    sid = (r.pop("id", "") or "").strip()
                    for k in ("state", "archived", "version"):
                        r.pop(k, None)
                    if sid and not sid.isdigit():
                        errs.append((("row", i + 2, "id"), f"expected an integer id, got {sid!r}"))
                        continue
                    rows.append((int(sid) if sid else None, dict(r), True))
            except csv.Error as e:
                raise Invalid([(("body",), f"not CSV: {e}")]) from None
        else:
            raise Invalid([(("query", "format"), "expected csv or json")])
        cleaned: list[tuple[int | None, dict[str, Any]]] = []
        for i, (rid, data, text_) in enumerate(rows):
            loc: tuple[str | int, ...] = ("row", i + 2) if fmt == "csv" else ("records", i)
            try:
                cleaned.append(
                    (rid, self._validate(spec, data, partial=rid is not None, text=text_, loc=loc))
                )
            except Invalid as e:
                errs.extend(e.errors)
        if errs:
            raise Invalid(errs[:100])
        events = []
        created = updated = 0
        with self._tx():
            for i, (rid, data) in enumerate(cleaned):
                if rid is None:
                    _doc, ev = self._create(rtype, data, actor, action="import")
                    created += 1
                else:
                    try:
                        cur = self._doc(self._row(rtype, rid))
                    except NotFound:
                        raise Invalid(
                            [(("records", i, "id"), f"no {rtype} record {rid} to update")]
                        ) from None
                    if {k: v for k, v in data.items() if v is not None} == cur["data"] and not any(
                        v is None and k in cur["data"] for k, v in data.items()
                    ):
                        continue
                    _doc, ev = self._update(rtype, rid, data, actor, action="import")
                    updated += 1
                events.append(ev)
        return {"created": created, "updated": updated, "unchanged": len(cleaned) - created - updated}, events

    # ------------------------------------------------------------------ attachments
    def attachments(self, rtype: str, rid: int) -> list[dict[str, Any]]:
        return [
            {"id": a, "filename": fn, "mime": m, "size": s, "sha256": h, "uploaded": _iso_ns(ts), "by": by}
            for a, fn, m, s, h, ts, by in self._db.execute(
                "SELECT id, filename, mime, size, sha256, ts, actor FROM attachments "
                "WHERE record=? AND type=? AND archived=0 ORDER BY id",
                (rid, rtype),
            )
        ]

    def attach(
        self, rtype: str, rid: int, filename: str, content: bytes, actor: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        self.spec(rtype)
        if len(content) > self.max_attachment:
            raise Invalid(
                [(("body",), f"attachment is {len(content)} bytes; the limit is {self.max_attachment}")]
            )
        if not content:
            raise Invalid([(("body",), "empty attachment")])
        mime = sniff(content[:16])
        if mime is None:
            raise Invalid([(("body",), "not a PDF, PNG or JPEG file (checked by content, not by name)")])
        name = os.path.basename(filename.replace("\\", "/")).strip()[:200]
        if not name:
            raise Invalid([(("query", "filename"), "give the file name")])
        digest = hashlib.sha256(content).hexdigest()
        self.attachments_dir.mkdir(parents=True, exist_ok=True)
        target = self.attachments_dir / digest
        if not target.exists():
            tmp = target.with_suffix(".tmp")
            with open(tmp, "wb") as fh:
                fh.write(content)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        with self._tx():
            cur = self._doc(self._row(rtype, rid))
            if cur["archived"]:
                raise Conflict(f"{rtype} record {rid} is archived")
            c = self._db.execute(
                "INSERT INTO attachments(record, type, filename, mime, size, sha256, ts, actor) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (rid, rtype, name, mime, len(content), digest, self.clock(), actor),
            )
            att = {
                "id": int(c.lastrowid or 0),
                "filename": name,
                "mime": mime,
                "size": len(content),
                "sha256": digest,
            }
            _doc, ev = self._update(
                rtype,
                rid,
                {},
                actor,
                action="attach",
                check_required=False,
                comment=f"attached {name} ({mime}, {len(content)} bytes)",
            )
            ev["attachment"] = att
        return att, [ev]

    def attachment(self, rtype: str, rid: int, aid: int) -> tuple[dict[str, Any], Path]:
        row = self._db.execute(
            "SELECT filename, mime, size, sha256 FROM attachments WHERE id=? AND record=? "
            "AND type=? AND archived=0",
            (aid, rid, rtype),
        ).fetchone()
        if row is None:
            raise NotFound(f"{rtype} record {rid} has no attachment {aid}")
        fn, mime, size, digest = row
        return {"filename": fn, "mime": mime, "size": size, "sha256": digest}, self.attachments_dir / digest

    def detach(
        self, rtype: str, rid: int, aid: int, actor: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        meta, _ = self.attachment(rtype, rid, aid)
        with self._tx():
            self._db.execute("UPDATE attachments SET archived=1 WHERE id=?", (aid,))
            doc, ev = self._update(
                rtype,
                rid,
                {},
                actor,
                action="detach",
                check_required=False,
                comment=f"archived attachment {meta['filename']}",
            )
            ev["attachment"] = {"id": aid, **meta}
        return doc, [ev]

    # ------------------------------------------------------------------ reminders
    def check_reminders(self) -> list[dict[str, Any]]:
        """Reminder events for due dates crossing a threshold today; each fires once.

        For each (record, due field, due date) the bands are the configured days ahead
        (e.g. 30, 7, 1) and "overdue". Only the tightest band reached fires; looser bands
        are marked as done with it, so a gateway that was off for a month does not send
        a burst of stale "30 days left" reminders. Changing the date re-arms them.
        """
        today = self.today()
        now = self.clock()
        events: list[dict[str, Any]] = []
        sent = {
            tuple(r) for r in self._db.execute("SELECT type, record, field, due, threshold FROM reminders")
        }
        new_rows = []
        for row in self._db.execute(
            "SELECT id, type, version, state, archived, created_ns, created_by, "
            "updated_ns, updated_by, data FROM records WHERE archived=0"
        ).fetchall():
            spec = self.types.get(row[1])
            if spec is None:
                continue
            doc = self._doc(row, today)
            for x in doc["due"]:
                days_left = x["days_left"]
                if days_left < 0:
                    band = OVERDUE
                else:
                    reached = [t for t in self.thresholds if days_left <= t]
                    if not reached:
                        continue
                    band = min(reached)
                key = (doc["type"], doc["id"], x["field"], x["date"], band)
                if key in sent:
                    continue
                looser = [t for t in self.thresholds if band == OVERDUE or t > band]
                for t in {band, *looser}:
                    k2 = (doc["type"], doc["id"], x["field"], x["date"], t)
                    if k2 not in sent:
                        sent.add(k2)
                        new_rows.append((*k2, now))
                f = spec.fields[x["field"]]
                events.append(
                    {
                        "type": "reminder",
                        "ts": now,
                        "register": doc["type"],
                        "id": doc["id"],
                        "label": doc.get("label", str(doc["id"])),
                        "field": x["field"],
                        "field_title": f.title or x["field"],
                        "title": spec.title,
                        "title_zh": spec.title_zh,
                        "due": x["date"],
                        "days_left": days_left,
                        "threshold": None if band == OVERDUE else band,
                        "overdue": band == OVERDUE,
                        "state": doc.get("state"),
                    }
                )
        if new_rows:
            with self._tx():
                self._db.executemany("INSERT OR IGNORE INTO reminders VALUES (?,?,?,?,?,?)", new_rows)
        for ev in events:
            log.info(
                "reminder: %s %s %s due %s (%d days)",
                ev["register"],
                ev["label"],
                ev["field"],
                ev["due"],
                ev["days_left"],
            )
        return events

    # ------------------------------------------------------------------ audit
    def audit(
        self,
        actor: str,
        role: str | None,
        method: str,
        path: str,
        status: int,
        remote: str | None,
        detail: dict[str, Any] | None,
    ) -> None:
        self._db.execute(
            "INSERT INTO audit(ts, actor, role, method, path, status, remote, detail) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (
                self.clock(),
                actor,
                role,
                method,
                path,
                status,
                remote,
                json.dumps(detail, ensure_ascii=False) if detail else None,
            ),
        )

    def audit_list(
        self,
        *,
        actor: str | None = None,
        method: str | None = None,
        path_prefix: str | None = None,
        since_seq: int = 0,
        limit: int = 100,
        offset: int = 0,
    ) -> dict[str, Any]:
        sql = " FROM audit WHERE seq > ?"
        args: list[Any] = [since_seq]
        if actor:
            sql += " AND actor=?"
            args.append(actor)
        if method:
            sql += " AND method=?"
            args.append(method.upper())
        if path_prefix:
            sql += " AND substr(path, 1, ?) = ?"
            args += [len(path_prefix), path_prefix]
        total = self._db.execute("SELECT count(*)" + sql, args).fetchone()[0]
        rows = self._db.execute(
            "SELECT seq, ts, actor, role, method, path, status, remote, detail"
            + sql
            + " ORDER BY seq DESC LIMIT ? OFFSET ?",
            [*args, limit, offset],
        ).fetchall()
        return {
            "total": total,
            "items": [
                {
                    "seq": s,
                    "ts": _iso_ns(ts),
                    "actor": a,
                    "role": r,
                    "method": m,
                    "path": p,
                    "status": st,
                    "remote": rem,
                    "detail": json.loads(d) if d else None,
                }
                for s, ts, a, r, m, p, st, rem, d in rows
            ],
        }
