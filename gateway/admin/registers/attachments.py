"""Attachments of register records: PDF, PNG or JPEG files (type checked by content) kept
in the state directory next to the registers' database, archived, never deleted."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from gateway.admin.registers.schema import (
    Conflict,
    Invalid,
    NotFound,
)
from gateway.admin.registers.store import StoreCore

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


class Attachments(StoreCore):
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
        self._writable(rtype, rid)  # before the file is written: a refusal leaves nothing behind
        digest = hashlib.sha256(content).hexdigest()
        self.attachments_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self.attachments_dir / digest
        written = not target.exists()
        if written:
            tmp = target.with_suffix(".tmp")
            # 0600 whatever the umask: attachments hold personal data (certificates, IDs)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(fd, "wb") as fh:
                fh.write(content)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        try:
            return self._attach_row(rtype, rid, name, mime, content, digest, actor)
        except BaseException:
            if written and not self._db.execute("SELECT 1 FROM attachments WHERE sha256=? LIMIT 1",
                                                (digest,)).fetchone():
                target.unlink(missing_ok=True)
            raise

    def _writable(self, rtype: str, rid: int) -> None:
        if self._doc(self._row(rtype, rid))["archived"]:
            raise Conflict(f"{rtype} record {rid} is archived")

    def _attach_row(self, rtype: str, rid: int, name: str, mime: str, content: bytes, digest: str,
                    actor: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        with self._tx():
            self._writable(rtype, rid)
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
