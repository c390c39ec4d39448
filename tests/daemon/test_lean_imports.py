"""What a running daemon has imported (issue 19, memory): the libraries only an export, a
report or a device kind needs (openpyxl and the PIL it brings, fpdf2, asyncua) stay out of
a daemon that serves its API and polls Modbus, until something asks for them. openpyxl
alone, imported at start by the register exports, cost ~8 MB (bench/footprint.py, 10,000
channels: 101 MB against 92.5 MB)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.fixtures.helpers import journal_last_seq, wait_until
from tests.fixtures.sims import ROOT, SimProcess, gateway_yaml

#: runs the daemon's own main; on SIGUSR2 (which the daemon leaves alone) it writes the
#: modules imported so far (the daemon leaves by os._exit: no atexit)
WRAPPER = """
import json, os, signal, sys
out = sys.argv[1]
def dump(signum, frame):
    with open(out + ".tmp", "w") as f:
        f.write(json.dumps(sorted(sys.modules)))
    os.replace(out + ".tmp", out)
signal.signal(signal.SIGUSR2, dump)
from gateway.cli import main
sys.exit(main(sys.argv[2:]))
"""

OPTIONAL = ("openpyxl", "PIL", "fpdf", "asyncua")


def test_a_polling_daemon_with_its_api_imports_no_optional_library(modbus_plant: SimProcess,
                                                                   tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(gateway_yaml(modbus_plant, state) + 'api: {listen: "127.0.0.1:0"}\n')
    mods = tmp_path / "modules.json"
    p = subprocess.Popen([sys.executable, "-c", WRAPPER, str(mods), "run", "-c", str(cfg)], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log: list[str] = []

    def pump() -> None:
        assert p.stderr is not None
        log.extend(p.stderr)

    threading.Thread(target=pump, daemon=True).start()
    try:
        wait_until(lambda: any("admin API on" in ln for ln in log) or p.poll() is not None, 30,
                   what="the admin API")
        wait_until(lambda: journal_last_seq(state / "journal.db") > 0 or p.poll() is not None, 30,
                   what="the first journaled batch")
        assert p.poll() is None, "".join(log[-40:])
        p.send_signal(signal.SIGUSR2)
        wait_until(mods.exists, 10, what="the daemon's list of modules")
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(30)
    assert p.returncode == 0, "".join(log[-40:])
    loaded = set(json.loads(mods.read_text()))
    assert {"fastapi", "gateway.admin.registers.io", "drivers.modbus"} <= loaded  # the wrapper saw the daemon
    assert [m for m in OPTIONAL if m in loaded] == []
