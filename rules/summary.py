"""Per-channel alarm summary for pages: from the engine's state arrays, with no per-alarm
Python objects, so a flood of stale alarms after a network cut costs the same as a
quiet plant."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from rules.events import level_name, state_name
from rules.settings import HEALTH_RULES, PRIORITY, PROCESS_RULES, RULES

#: key of a channel in maintenance with no other visible alarm
MAINTENANCE_KEY = 999_999


class ChannelSummary(NamedTuple):
    red: npt.NDArray[np.bool_]  # a process alarm annunciated (active, not shelved)
    yellow: npt.NDArray[np.bool_]  # a sensor-health alarm annunciated, or in maintenance
    key: npt.NDArray[np.int64]  # orders channels by their most urgent visible alarm; -1: none
    describe: Callable[[int], str]  # that alarm of a channel, as compact JSON


def channel_summary(act: npt.NDArray[np.int8], unacked: npt.NDArray[np.bool_], last: npt.NDArray[np.int8],
                    shelved_keys: Any, supp: npt.NDArray[np.bool_]) -> ChannelSummary:
    """From (rule × channel) alarm codes, unacknowledged flags and last codes, the
    shelved (channel, rule) pairs and the suppressed channels."""
    n = act.shape[1]
    active = act != 0
    shelved = np.zeros(act.shape, dtype=bool)
    for c, ri in shelved_keys:
        shelved[ri, c] = True
    ann = active & ~shelved
    process = np.zeros(act.shape[0], dtype=bool)
    process[list(PROCESS_RULES)] = True
    red = ann[process].any(axis=0)
    supp = np.asarray(supp, dtype=bool)
    yellow = ann[list(HEALTH_RULES)].any(axis=0) | supp
    visible = active | unacked
    score = visible.astype(np.int32) * 1000 + ann * 100 + process[:, None] * 10 + np.abs(act).astype(np.int32)
    best = score.argmax(axis=0)
    cols = np.arange(n)
    code = np.where(active[best, cols], act[best, cols], last[best, cols]).astype(np.int64)
    key = best.astype(np.int64) * 1024 + (code + 128) * 4 + unacked[best, cols] * 2 + shelved[best, cols]
    key[~visible.any(axis=0)] = -1
    key[supp & (key < 0)] = MAINTENANCE_KEY

    def describe(c: int) -> str:
        if key[c] == MAINTENANCE_KEY:
            return '{"rule":"maintenance","level":"maintenance","state":"suppressed","priority":null}'
        ri = int(best[c])
        lvl = level_name(ri, int(code[c]))
        doc: dict[str, Any] = {
            "rule": RULES[ri],
            "level": lvl,
            "state": state_name(int(act[ri, c]), bool(unacked[ri, c])),
            "priority": PRIORITY.get(lvl, "low"),
        }
        if shelved[ri, c]:
            doc["shelved"] = True
        return json.dumps(doc)

    return ChannelSummary(red, yellow, key, describe)
