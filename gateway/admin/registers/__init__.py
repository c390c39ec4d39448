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

The package: ``schema`` (types, validation, redaction), ``db`` (the SQLite file),
``store`` (records, history, workflows), ``due`` (due dates and reminders),
``permits``/``permit_store`` (permits to work: step checks, analyses, flags, timing), ``io``
(CSV/JSON import and export), ``attachments``, ``audit``; ``RegisterStore`` joins them.
"""

from __future__ import annotations

from gateway.admin.registers.attachments import Attachments, sniff
from gateway.admin.registers.audit import AuditTrail
from gateway.admin.registers.db import audit_offline
from gateway.admin.registers.due import DueDates
from gateway.admin.registers.io import ImportExport
from gateway.admin.registers.permit_store import PermitRecords
from gateway.admin.registers.schema import (
    BUILTIN_TYPES,
    Conflict,
    Invalid,
    NotFound,
    Refused,
    SchemaError,
    TypeSpec,
    load_schemas,
)
from gateway.core.personal import mask, redact

__all__ = [
    "BUILTIN_TYPES", "Conflict", "Invalid", "NotFound", "Refused", "RegisterStore", "SchemaError", "TypeSpec",
    "audit_offline", "load_schemas", "mask", "redact", "sniff",
]


class RegisterStore(DueDates, PermitRecords, ImportExport, Attachments, AuditTrail):
    """Typed register records with history, workflow, reminders, attachments and audit."""
