"""The API's audit trail: every write, who made it and how it ended, in the registers'
database."""

from __future__ import annotations

import json
from typing import Any

from gateway.admin.registers.store import StoreCore
from gateway.core.units import iso_ns


class AuditTrail(StoreCore):
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
                    "ts": iso_ns(ts),
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
