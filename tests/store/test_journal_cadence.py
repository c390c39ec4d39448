"""The journal's commit cadence (``journal.commit_every``): sample batches wait for one
commit per cadence, anything else commits at once, and a commit still means on disk.

The cadence here is the longest allowed (10 s), so "not committed yet" cannot be an
accident of timing, and every "at once" is checked against a bound well inside it.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from gateway.core.batch import Batch
from gateway.store.journal import COMMIT_EVERY_MAX_S, Journal

T0 = 1_780_000_000 * 10**9
CADENCE = COMMIT_EVERY_MAX_S
#: what "at once" must beat: well inside the cadence, generous for a loaded machine
AT_ONCE_S = CADENCE * 0.6


def batch(i: int, n: int = 25) -> Batch:
    return Batch.build(np.arange(n), np.full(n, T0 + i * 10**9), np.arange(n) + i * 0.5,
                       np.zeros(n, np.uint8))


def rows_on_disk(path: Path) -> int:
    """Records committed, as a second connection (another process would) sees them."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM records").fetchone()[0])
    finally:
        db.close()


def test_batches_wait_for_the_cadence_and_an_event_commits_them_at_once(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path, commit_every_s=CADENCE) as j:
        t0 = time.monotonic()
        # after a quiet spell (here: the start) a batch commits at once ...
        assert j.submit_batch(batch(0)).result(timeout=AT_ONCE_S) == 1
        assert j.commits == 1
        # ... and the next ones wait until the cadence since that commit is up
        futs = [j.submit_batch(batch(i)) for i in range(1, 6)]
        assert not any(f.done() for f in futs)
        assert rows_on_disk(path) == 1
        assert j.commits == 1
        # an alarm transition (any event) cannot wait: it takes the waiting batches along
        ev = j.submit_many([batch(6), {"type": "alarm", "ts": T0, "channel": "GT-101", "level": "hh"}])
        seqs = ev.result(timeout=AT_ONCE_S)
        assert time.monotonic() - t0 < AT_ONCE_S
        assert [f.result(timeout=1) for f in futs] == [2, 3, 4, 5, 6]
        assert seqs == [7, 8]
        assert j.commits == 2, "the five batches and the event went in one transaction"
        assert rows_on_disk(path) == 8
        assert j.stats()["commit_every_s"] == CADENCE


def test_waiting_batches_are_not_taken_before_the_cadence(tmp_path: Path) -> None:
    """Batches waiting for the cadence stay in the journal's inbox, untouched by its
    threads (no wake-up a batch): one cancelled there was never taken and is not
    journaled; the others go in one transaction, in order, when the cadence ends."""
    path = tmp_path / "j.db"
    with Journal(path, commit_every_s=CADENCE) as j:
        assert j.submit_batch(batch(0)).result(timeout=AT_ONCE_S) == 1
        futs = [j.submit_batch(batch(i)) for i in range(1, 5)]
        assert not any(f.running() or f.done() for f in futs)
        assert futs[1].cancel(), "a waiting batch is not taken yet"
        j.commit_now()
        assert [futs[i].result(timeout=AT_ONCE_S) for i in (0, 2, 3)] == [2, 3, 4]
        assert j.commits == 2
        recs = j.read_sync(0, 10)
    assert [r.seq for r in recs] == [1, 2, 3, 4]
    assert [r.batch().value[0] for r in recs] == [0.0, 0.5, 1.5, 2.0]


def test_acks_and_commit_now_end_the_wait(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path, commit_every_s=CADENCE) as j:
        j.register("uplink")  # (an ack: it does not start the cadence, samples do)
        assert j.submit_batch(batch(0)).result(timeout=AT_ONCE_S) == 1
        waiting = j.submit_batch(batch(1))
        assert not waiting.done()
        j.commit_now()
        assert waiting.result(timeout=AT_ONCE_S) == 2
        more = [j.submit_batch(batch(i)) for i in range(2, 5)]
        assert not any(f.done() for f in more)
        j.ack_sync("uplink", 1)  # a consumer's ack is an operation that commits at once
        assert [f.result(timeout=AT_ONCE_S) for f in more] == [3, 4, 5]
        assert j.cursor("uplink") == 1
        assert rows_on_disk(path) == 5


def test_the_cadence_commits_by_itself(tmp_path: Path) -> None:
    """Nothing else comes: a waiting batch is taken when the cadence is up."""
    with Journal(tmp_path / "j.db", commit_every_s=0.3) as j:
        assert j.submit_batch(batch(0)).result(timeout=30) == 1  # at once: a quiet spell before
        second = j.submit_batch(batch(1))  # waits for the cadence, then goes by itself
        assert second.result(timeout=30) == 2
        assert j.commits == 2


def test_close_commits_what_waits_without_waiting_out_the_cadence(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    j = Journal(path, commit_every_s=CADENCE)
    assert j.submit_batch(batch(0)).result(timeout=AT_ONCE_S) == 1  # what follows waits
    futs = [j.submit_batch(batch(i)) for i in range(1, 4)]
    assert not any(f.done() for f in futs)
    t0 = time.monotonic()
    j.close()
    assert time.monotonic() - t0 < AT_ONCE_S
    assert [f.result(timeout=1) for f in futs] == [2, 3, 4]
    with Journal(path) as again:
        recs = again.read_sync(0, 10)
    assert [r.seq for r in recs] == [1, 2, 3, 4]
    assert np.array_equal(recs[3].batch().value, batch(3).value)


def test_without_a_cadence_each_batch_commits_as_it_comes(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.db") as j:
        assert j.submit_batch(batch(0)).result(timeout=AT_ONCE_S) == 1
        assert j.submit_batch(batch(1)).result(timeout=AT_ONCE_S) == 2
        assert j.commits == 2


@pytest.mark.parametrize("bad", [-1.0, CADENCE + 0.5])
def test_a_cadence_out_of_bounds_is_refused(tmp_path: Path, bad: float) -> None:
    with pytest.raises(ValueError, match="commit_every_s must be within 0-10 s"):
        Journal(tmp_path / "j.db", commit_every_s=bad)


CONFIG = """gateway:
  id: gw-1
  site: "S1"
  state_dir: {state}
journal:
  commit_every: {every}
devices: []
"""


def test_the_config_key_is_checked_with_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    good = tmp_path / "good.yaml"
    good.write_text(CONFIG.format(state=tmp_path / "st", every="1s"))
    assert main(["check", "-c", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.format(state=tmp_path / "st", every="20s"))
    capsys.readouterr()
    assert main(["check", "-c", str(bad)]) == 2
    out = capsys.readouterr().out
    assert f"{bad}:6:17:" in out and "commit_every" in out, out


def page_size_of(path: Path) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(db.execute("PRAGMA page_size").fetchone()[0])
    finally:
        db.close()


def test_a_new_journal_takes_the_page_size_and_an_existing_one_keeps_its_own(tmp_path: Path) -> None:
    small, default = tmp_path / "small.db", tmp_path / "default.db"
    with Journal(small, page_size=4096) as j:
        j.submit_batch(batch(0)).result(timeout=AT_ONCE_S)
    with Journal(default) as j:
        j.submit_batch(batch(0)).result(timeout=AT_ONCE_S)
    assert (page_size_of(small), page_size_of(default)) == (4096, 16384)
    with Journal(default, page_size=4096) as j:  # the file's own size wins: no rewrite
        assert j.submit_batch(batch(1)).result(timeout=AT_ONCE_S) == 2
    assert page_size_of(default) == 16384
    with pytest.raises(ValueError, match="page_size must be one of 4096, 8192"):
        Journal(tmp_path / "odd.db", page_size=3000)


def test_the_page_size_key_is_checked_with_its_line(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    path = tmp_path / "c.yaml"
    text = CONFIG.format(state=tmp_path / "st", every="1s")
    path.write_text(text.replace("devices:", "  page_size: 3000\ndevices:"))
    capsys.readouterr()
    assert main(["check", "-c", str(path)]) == 2
    out = capsys.readouterr().out
    assert f"{path}:7:14:" in out and "page_size" in out and "4096" in out, out
