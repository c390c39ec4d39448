"""SIGTERM is bounded by the drain setting in every state. A probe once saw `safegw run`
take over 35 s to stop with the historian still writing to an InfluxDB that did not
answer, so a second signal was needed. Here the daemon's historian writes to a server
that accepts connections and never answers (a black hole, real TCP), and SIGTERM must
end the process within the drain time and a small margin, with the journal closed
cleanly (nothing journaled is lost: the consumer resumes from its cursor)."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
DRAIN_S = 2.0
#: beyond the drain: the last commits' floor (1 s), the services' stop grace (1 s),
#: closing the journal, process exit
MARGIN_S = 3.0


class BlackHole:
    """Accepts TCP connections, reads what comes, never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            self.accepted += 1
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_sigterm_with_the_historian_stuck_is_bounded_by_the_drain(tmp_path: Path, api: str) -> None:
    hole = BlackHole()
    state = tmp_path / "state"
    cfg = tmp_path / "gw.yaml"
    v2 = ", token: t, bucket: b, org: o" if api == "v2" else ""
    cfg.write_text(f"""
gateway: {{id: gw-stop, site: "S1", state_dir: "{state}"}}
influxdb: {{url: "http://127.0.0.1:{hole.port}", api: {api}, database: safegw, timeout: 30s,
           create_database: false, flush_every: 100ms{v2}}}
""")
    log = tmp_path / "gw.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(cfg),
                                 "--drain", str(DRAIN_S)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        # the historian is writing (the channel table event, at start) into the black hole
        wait_until(lambda: hole.accepted > 0 or proc.poll() is not None, 30, what="a write to the black hole")
        assert proc.poll() is None, log.read_text()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=DRAIN_S + MARGIN_S + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        hole.close()
    text = log.read_text()
    assert code == 0, text
    assert took <= DRAIN_S + MARGIN_S, f"stopped after {took:.1f}s (drain {DRAIN_S}s)\n{text}"
    assert "stopped" in text, text
    # the journal was closed cleanly and still holds what the historian had not sent
    db = sqlite3.connect(state / "journal.db")
    try:
        (n,) = db.execute("SELECT COUNT(*) FROM records").fetchone()
        cursors = dict(db.execute("SELECT name, seq FROM cursors").fetchall())
    finally:
        db.close()
    assert n >= 1
    assert cursors.get("influxdb", 0) < n, cursors
