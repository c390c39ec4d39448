"""The live and alarm views behind /channels, /status and /alarms.

``ChannelView`` keeps pre-encoded JSON of the channel table so that /channels with
10,000 channels costs a few numpy reductions and one join; ``AlarmsView`` reads the
rules engine through its public API (``active``, ``version``) and applies operator
commands with the same checks as over MQTT (rules/commands.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

import numpy as np
from fastapi import HTTPException

from gateway.admin.registers import Invalid
from gateway.core.batch import quality_label
from gateway.core.channels import ChannelTable, LiveTable
from gateway.core.display import DisplayTable
from gateway.core.units import iso_ns
from rules.commands import CommandError, CommandPolicy, apply_command, parse_command
from rules.engine import RulesEngine

#: quality code → its label, for every code
QLABEL = [quality_label(i) for i in range(256)]


class ChannelView:
    """Pre-encoded JSON fragments of the channel table, so /channels with 10,000
    channels is a few numpy reductions and one string join, not 10,000 dicts."""

    def __init__(self, table: ChannelTable):
        self.table = table
        self.display = DisplayTable.of(table)
        n = len(table)
        self.names = [c.name for c in table.channels]
        self.lower = np.array([c.name.lower() for c in table.channels], dtype=object)
        self.kind = np.array([c.kind for c in table.channels], dtype=object)
        self.device = np.array([c.device for c in table.channels], dtype=object)
        self.hazard = np.array([c.spec.hazard_source or "" for c in table.channels], dtype=object)
        self.area = np.array([c.spec.area or "" for c in table.channels], dtype=object)
        self.prefix = [
            json.dumps(
                {"index": c.index, "name": c.name, "kind": c.kind, "unit": c.unit, "device": c.device},
                ensure_ascii=False,
            )[:-1]
            + ","
            for c in table.channels
        ]
        self.n = n
        # incremental caches: the value part of each channel's JSON is rebuilt only when
        # its sample changed, the state/alarm part only when its colour or alarm changed;
        # ages are formatted once per distinct timestamp (one per poll, not per channel)
        self.heads = [b""] * n  # bytes: the body is joined as bytes, never re-encoded
        self._ts = np.full(n, -1, dtype=np.int64)
        self._q = np.zeros(n, dtype=np.uint8)
        self._v = np.zeros(n, dtype=np.int64)
        self.tails = [b',"state":"normal","alarm":null},'] * n  # with the separator
        self._tstate = np.zeros(n, dtype=np.int8)
        self._tkey = np.full(n, -1, dtype=np.int64)

    def _refresh_heads(self, live: LiveTable) -> None:
        vbits = live.value.view(np.int64)
        changed = np.flatnonzero((live.ts != self._ts) | (live.quality != self._q) | (vbits != self._v))
        if not len(changed):
            return
        heads, prefix = self.heads, self.prefix
        # as a person reads them: float32 registers at their shortest form, scaled integers
        # at their resolution (gateway/core/display.py); the journal keeps the exact values
        vals = self.display.values(changed, live.value[changed])
        # the C JSON encoder formats floats (shortest repr) ~2x faster than repr() one by one
        texts = json.dumps(vals.tolist())[1:-1].split(", ")
        bad = ~np.isfinite(vals)
        if bad.any():
            for k in np.flatnonzero(bad).tolist():
                texts[k] = "null"
        for i, v, q in zip(changed.tolist(), texts, live.quality[changed].tolist(), strict=True):
            heads[i] = f'{prefix[i]}"value":{v},"quality":"{QLABEL[q]}","q":{q},"age_s":'.encode()
        self._ts[changed] = live.ts[changed]
        self._q[changed] = live.quality[changed]
        self._v[changed] = vbits[changed]

    def _refresh_tails(self, state: np.ndarray, key: np.ndarray, describe: Callable[[int], str]) -> None:
        """``key`` identifies each channel's alarm (-1: none): a tail is rebuilt only when
        its colour or its key changed."""
        redo = np.flatnonzero((state != self._tstate) | (key != self._tkey))
        names = ("normal", "fault", "alarm")
        tails = self.tails
        for i, st, k in zip(redo.tolist(), state[redo].tolist(), key[redo].tolist(), strict=True):
            tails[i] = f',"state":"{names[st]}","alarm":{describe(i) if k >= 0 else "null"}}},'.encode()
        self._tstate = state
        self._tkey = key

    def render(
        self,
        live: LiveTable,
        now: int,
        idx: np.ndarray,
        state: np.ndarray,
        key: np.ndarray,
        describe: Callable[[int], str],
    ) -> tuple[bytes, int]:
        """The JSON array items (comma-separated) of channels ``idx`` and their count;
        ``state`` 0 normal, 1 fault, 2 alarm per channel; ``describe(i)`` the JSON of
        channel i's most urgent alarm (key >= 0)."""
        self._refresh_heads(live)
        self._refresh_tails(state, key, describe)
        m = len(idx)
        if not m:
            return b"", 0
        ts = live.ts[idx]
        uniq, inv = np.unique(ts, return_inverse=True)
        ages = np.array(
            [b"null" if t <= 0 else repr(round((now - t) / 1e9, 3)).encode() for t in uniq.tolist()],
            dtype=object,
        )
        # interleave head, age, tail by slice assignment and join once: no per-channel
        # string concatenation in Python
        flat: list[bytes] = [b""] * (3 * m)
        if m == self.n:
            flat[0::3] = self.heads
            flat[2::3] = self.tails
        else:
            pick = idx.tolist()
            flat[0::3] = [self.heads[i] for i in pick]
            flat[2::3] = [self.tails[i] for i in pick]
        flat[1::3] = ages[inv].tolist()
        return b"".join(flat)[:-1], m

    def select(
        self,
        *,
        q: str | None,
        kind: str | None,
        device: str | None,
        hazard_source: str | None,
        area: str | None,
    ) -> np.ndarray:
        mask = np.ones(self.n, dtype=bool)
        if kind:
            mask &= self.kind == kind
        if device:
            mask &= self.device == device
        if hazard_source:
            mask &= self.hazard == hazard_source
        if area:
            mask &= self.area == area
        if q:
            ql = q.lower()
            if any(ch in ql for ch in "*?["):
                mask &= np.fromiter((fnmatchcase(s, ql) for s in self.lower), dtype=bool, count=self.n)
            else:
                mask &= np.fromiter((ql in s for s in self.lower), dtype=bool, count=self.n)
        return mask
class AlarmsView:
    """The rules engine's alarms as the API shows them (times as ISO text too), and the
    operator commands."""

    def __init__(self, rules: RulesEngine, *, max_shelve_s: float):
        self.rules = rules
        self.policy = CommandPolicy(max_shelve_s=max_shelve_s)
        #: the numbers of alarms as a person reads them (the journal keeps them exact)
        self.display = DisplayTable.of(rules.table) if rules.table is not None else DisplayTable([])
        self._version = -1
        self._cache: list[dict[str, Any]] = []

    def active(self) -> list[dict[str, Any]]:
        """Alarms an operator must see (rules engine ``active()``), times as ISO text too."""
        out = []
        for a in self.rules.active():
            a = self.display.event(a)
            if isinstance(a.get("since"), int) and a["since"] > 0:
                a["since_ns"] = a["since"]
                a["since"] = iso_ns(a["since"])
            sh = a.get("shelved")
            if isinstance(sh, dict):
                a["shelved"] = {
                    k: (iso_ns(v) if k in ("until", "since") and isinstance(v, int) else v)
                    for k, v in sh.items()
                }
            out.append(a)
        return out

    def active_cached(self) -> list[dict[str, Any]]:
        """``active()`` reused until the engine makes its next event (any raise, clear, ack,
        shelve or level change changes ``version``)."""
        version = self.rules.version
        if version != self._version:
            self._cache = self.active()
            self._version = version
        return self._cache

    def command(self, verb: str, doc: dict[str, Any], now_ns: int) -> list[dict[str, Any]]:
        """An operator command (rules/commands.py: the same checks as over MQTT)."""
        try:
            cmd = parse_command(verb, doc, self.policy)
        except CommandError as e:
            loc = ("path", "channel") if e.field == "channel" else ("body", e.field or "")
            raise Invalid([(loc, e.message)]) from None
        try:
            events = apply_command(self.rules, cmd, now_ns)
        except KeyError as e:
            raise HTTPException(404, f"no such alarm: {e.args[0] if e.args else e}") from None
        except ValueError as e:
            raise HTTPException(409, str(e)) from None
        return list(events or [])
