"""VictoriaMetrics' JSON line import (``/api/v1/import``), formatted in bulk from a Batch.

One line per series and batch, its labels written once, then all its samples::

    {"metric":{"__name__":"safegw_value","area":"a1",...},"values":[19429e-3,...],"timestamps":[1796688959300,...]}

Line protocol repeats every tag on every sample: ~160 bytes a sample (value and
quality), which VictoriaMetrics must parse and look up again for each line. Here an
envelope of 10 polls writes a channel's labels once for 10 samples: about half the
bytes, and VictoriaMetrics spends less CPU a sample (docs/central.md, Sizing).

What is stored is what line protocol stores (central/store_vm.py relies on it):

- the same series: ``<metric>_value`` (usable samples only: not bad, finite) and
  ``<metric>_quality`` (every sample), with the labels VictoriaMetrics derives from
  ``lineproto.series_key``: the same keys, empty values left out, control characters
  cleaned the same way;
- the same numbers: the values are written by the line-protocol formatter
  (``lineproto.format_floats``), which VictoriaMetrics parses with the same routine
  in both formats, so a replay in either format deduplicates against the other;
- times cut to the millisecond (what VictoriaMetrics' line protocol parser does with
  nanoseconds).

The numbers are digit matrices (one row a sample, NUL-padded). After a stable sort by
channel (time order kept; for polls of the same rising channels, the usual batch, a
transpose) each series' samples are contiguous: they are laid into one
matrix, one row a line (head, values, times), and the NULs squeezed out once, as the
line-protocol formatter does. When a few channels have far more samples than the rest
(the matrix would be mostly padding), lines are joined one by one instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.core.batch import Batch
from gateway.historian import lineproto

# what line protocol's tag escaping does before VictoriaMetrics unescapes it again
_CTRL = str.maketrans({"\n": " ", "\r": " ", "\t": " ", "\0": ""})


def labels(tags: Mapping[str, Any]) -> dict[str, str]:
    """The labels VictoriaMetrics keeps for ``tags`` (as from ``lineproto.series_key``)."""
    out = {}
    for k in sorted(tags):
        v = tags[k]
        if v is None:
            continue
        sv = str(v).translate(_CTRL)
        if sv:
            out[str(k).translate(_CTRL)] = sv
    return out


class _Heads:
    """Line heads of one metric, as bytes and as a NUL-padded matrix (one row a channel)."""

    def __init__(self, heads: list[bytes]):
        self.bytes = heads
        self.width = max((len(h) for h in heads), default=1)
        self.matrix = np.zeros((max(len(heads), 1), self.width), np.uint8)
        for i, h in enumerate(heads):
            self.matrix[i, : len(h)] = np.frombuffer(h, np.uint8)


class ImportSeries:
    """Per-channel line heads: ``{"metric":{...},"values":[`` of the value and quality series."""

    def __init__(self, metric: str, tag_sets: Iterable[Mapping[str, Any]]):
        value: list[bytes] = []
        quality: list[bytes] = []
        for tags in tag_sets:
            lab = json.dumps(labels(tags), ensure_ascii=False, separators=(",", ":"))[1:-1]
            for name, heads in ((f"{metric}_value", value), (f"{metric}_quality", quality)):
                inner = json.dumps({"__name__": name}, separators=(",", ":"))[1:-1]
                heads.append(f'{{"metric":{{{inner}{"," if lab else ""}{lab}}},"values":['.encode())
        self.value = _Heads(value)
        self.quality = _Heads(quality)

    def __len__(self) -> int:
        return len(self.value.bytes)


_MID = b'],"timestamps":['
_END = b"]}\n"
_Q_TXT = np.zeros((256, 4), np.uint8)  # ',' then the code right-aligned in 3 columns
for _q in range(256):
    _s = str(_q).encode()
    _Q_TXT[_q, 4 - len(_s):] = np.frombuffer(_s, np.uint8)
_Q_TXT[:, 0] = ord(",")


def _squeeze(m: npt.NDArray[np.uint8]) -> bytes:
    flat = m.reshape(-1)
    return flat[flat != 0].tobytes()


def _with_sep(m: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Rows prefixed with the ',' that separates them in a JSON array."""
    out = np.empty((len(m), m.shape[1] + 1), np.uint8)
    out[:, 0] = ord(",")
    out[:, 1:] = m
    return out


def _lines(heads: _Heads, ch: npt.NDArray[np.int32], vals: npt.NDArray[np.uint8],
           times: npt.NDArray[np.uint8]) -> bytes:
    """One line per run of equal channels in ``ch`` (sorted): head, values, times.

    ``vals`` and ``times``: one NUL-padded row a sample, starting with a ','
    (dropped here for each line's first sample; the matrices are written to)."""
    n = len(ch)
    if n == 0:
        return b""
    first = np.empty(n, bool)
    first[0] = True
    np.not_equal(ch[1:], ch[:-1], out=first[1:])
    vals[first, 0] = 0
    times[first, 0] = 0
    starts = np.flatnonzero(first)
    lens = np.diff(np.append(starts, n))
    g, longest = len(starts), int(lens.max())
    if g * longest <= 2 * n + 64:
        # the usual case (every channel polled alike): one matrix, one row a line, each
        # line's samples in a block of `longest` rows, NUL-padded; squeezed once
        vw, tw = vals.shape[1], times.shape[1]
        if g * longest == n:  # as many samples for every channel: the rows are the blocks
            v, t = vals.reshape(g, longest, vw), times.reshape(g, longest, tw)
        else:
            rank = np.arange(n) - np.repeat(starts, lens)
            line = np.repeat(np.arange(g), lens)
            v = np.zeros((g, longest, vw), np.uint8)
            v[line, rank] = vals
            t = np.zeros((g, longest, tw), np.uint8)
            t[line, rank] = times
        hw, vl, tl = heads.width, longest * vw, longest * tw
        out = np.empty((g, hw + vl + len(_MID) + tl + len(_END)), np.uint8)
        out[:, :hw] = heads.matrix[ch[starts]]
        out[:, hw:hw + vl] = v.reshape(g, vl)
        c = hw + vl
        out[:, c:c + len(_MID)] = np.frombuffer(_MID, np.uint8)
        c += len(_MID)
        out[:, c:c + tl] = t.reshape(g, tl)
        out[:, c + tl:] = np.frombuffer(_END, np.uint8)
        return _squeeze(out)
    # a few channels with many more samples than the rest: line by line
    lv = np.count_nonzero(vals, axis=1)
    vo = np.concatenate(([0], np.cumsum(lv))).tolist()
    lt = np.count_nonzero(times, axis=1)
    to = np.concatenate(([0], np.cumsum(lt))).tolist()
    vb, tb = _squeeze(vals), _squeeze(times)
    bounds = [*starts.tolist(), n]
    parts: list[bytes] = []
    for i, c in enumerate(ch[starts].tolist()):
        a, b = bounds[i], bounds[i + 1]
        parts += (heads.bytes[c], vb[vo[a]:vo[b]], _MID, tb[to[a]:to[b]], _END)
    return b"".join(parts)


def _by_channel(ch: npt.NDArray[np.int32]) -> npt.NDArray[np.int64]:
    """The stable sort of ``ch``: by channel, each channel's samples in the batch's order.

    Polls of the same channels in rising order (what a gateway's poll gives) need no
    sort: the order is a transpose."""
    n = len(ch)
    falls = np.flatnonzero(np.diff(ch) <= 0)
    g = int(falls[0]) + 1 if len(falls) else n  # the first poll: the rising run at the start
    if n % g == 0 and (ch.reshape(-1, g) == ch[:g]).all():
        return np.arange(n).reshape(-1, g).T.reshape(-1)
    return np.argsort(ch, kind="stable")


def format_import(batch: Batch, series: ImportSeries) -> bytes:
    """JSON lines of a batch: per channel one value line (usable samples) and one
    quality line (every sample). ``series`` must cover every channel index."""
    n = len(batch)
    if n == 0:
        return b""
    if int(batch.channel.max()) >= len(series) or int(batch.channel.min()) < 0:
        raise IndexError(f"channel index out of the series table (size {len(series)})")
    if (batch.ts < 0).any():
        raise ValueError("timestamps before 1970 cannot be written")
    ms = batch.ts // 1_000_000
    # digits before sorting: a poll's samples share one time, formatted once (lineproto._digits)
    times = _with_sep(lineproto._digits(ms, len(str(int(ms.max())))))
    order = _by_channel(batch.channel)
    ch = batch.channel[order]
    times = times[order]
    ok = lineproto.usable(batch)[order]
    values = batch.value[order]
    body = b""
    if ok.all():  # (_lines writes into the matrices it is given: the quality lines need times intact)
        body = _lines(series.value, ch, _with_sep(lineproto.format_floats(values)), times.copy())
    elif ok.any():
        body = _lines(series.value, ch[ok], _with_sep(lineproto.format_floats(values[ok])), times[ok])
    return body + _lines(series.quality, ch, _Q_TXT[batch.quality[order]], times)
