"""The journald line format: chosen only when stderr is the very stream JOURNAL_STREAM
names (systemd.exec(5): "device and inode numbers ... separated by a colon"), and its
lines: a ``<N>`` syslog priority prefix (sd-daemon(3)), fields as key=value."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from gateway.core.journalfmt import JournalFormatter, under_journald


def test_only_the_named_stream_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        st = os.fstat(a.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert under_journald(a) is True
        assert under_journald(b) is False  # inherited by a child whose stderr went elsewhere
        for junk in ("", "12", "x:y", f"{st.st_dev}:"):
            monkeypatch.setenv("JOURNAL_STREAM", junk)
            assert under_journald(a) is False
        monkeypatch.delenv("JOURNAL_STREAM")
        assert under_journald(a) is False


def _record(level: int, msg: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("gateway.app", level, __file__, 1, msg, None, None)
    rec.__dict__.update(extra)
    return rec


def test_lines() -> None:
    f = JournalFormatter()
    assert f.format(_record(logging.WARNING, "overran", device="plc")) == "<4>gateway.app: overran device=plc"
    assert f.format(_record(logging.DEBUG, "x", channel="GT 1", consumer="up=link")) == \
        '<7>gateway.app: x channel="GT 1" consumer="up=link"'
    assert f.format(_record(logging.CRITICAL, "c")) == "<2>gateway.app: c"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys
        rec = _record(logging.ERROR, "failed", device="plc")
        rec.exc_info = sys.exc_info()
    out = f.format(rec).split("\n")
    assert out[0] == "<3>gateway.app: failed device=plc"
    assert all(ln.startswith("<3>") for ln in out) and out[-1] == "<3>ValueError: boom"
