"""`safegw demo` as a user runs it: the bundled simulators and the gateway in one command.

Ctrl-C in a terminal sends SIGINT to the whole foreground process group. The demo must
stop the gateway while the plant is still there (the channels good before Ctrl-C are
still good at the end, no tracebacks), then the simulators; and a demo killed outright
must not leave the simulators running."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(180)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def _configs(tmp_path: Path) -> list[str]:
    """The bundled demo configs, on free ports and with the ptys under tmp_path (the
    bundled ones use fixed ports and /tmp/safegw-demo, for a person to find)."""
    subst = {"15020": str(free_port()), "15021": str(free_port()), "14840": str(free_port()),
             "/tmp/safegw-demo": str(tmp_path / "demo")}
    args = []
    for name, flag in (("demo.yaml", "--config"), ("sim-demo.yaml", "--sim-config")):
        text = (ROOT / "config" / name).read_text()
        for k, v in subst.items():
            text = text.replace(k, v)
        (tmp_path / name).write_text(text)
        args += [flag, str(tmp_path / name)]
    return args


def _start(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    out = tmp_path / "demo.out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "gateway.cli", "demo", "--state-dir", str(tmp_path / "st"),
           *_configs(tmp_path)]
    with out.open("wb") as f:
        # a process group of its own, as a shell gives a foreground job
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                cwd=tmp_path)
    return proc, out


def _screen(out: Path) -> list[str]:
    """The newest complete screen of the live table (the one before the last header)."""
    screens = out.read_text().split("\nchannel  ")
    return screens[-2].splitlines() if len(screens) > 2 else []


def _good(screen: list[str]) -> int:
    return sum(1 for ln in screen if "  good  " in ln)


def _wait_running(proc: subprocess.Popen[bytes], out: Path) -> int:
    """Wait until every device is ok on the screen; the number of good channels then."""
    def ready() -> bool:
        assert proc.poll() is None, out.read_text()[-3000:]
        dev = [ln for ln in _screen(out) if ln.startswith("devices: ")]
        return bool(dev) and dev[0].count(":ok") == 6

    wait_until(ready, 120, 0.2, "the demo to show every device ok")
    return _good(_screen(out))


def test_ctrl_c_stops_the_gateway_before_the_plant(tmp_path: Path) -> None:
    proc, out = _start(tmp_path)
    try:
        good = _wait_running(proc, out)
        assert good >= 20, _screen(out)
        sims = _children(proc.pid)
        assert sims, "the simulators run as a child of the demo"
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does
        assert proc.wait(60) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = out.read_text()
    # the plant was still there when the gateway stopped: the count holds (a scripted
    # sensor fault may start in the last second); with the simulators killed by the same
    # Ctrl-C it fell to 17 of 25, with connection errors and tracebacks
    end = re.findall(r"demo stopped: .*, (\d+)/25 channels good at the end", text)
    assert end and int(end[-1]) >= good - 1, text[-2000:]
    assert "Traceback" not in text and "ERROR" not in text, text[-3000:]
    wait_until(lambda: not any(_alive(p) for p in sims), 20, 0.1, "the simulators to exit")


def test_a_killed_demo_leaves_no_simulators_behind(tmp_path: Path) -> None:
    proc, out = _start(tmp_path)
    sims: list[int] = []
    try:
        _wait_running(proc, out)
        sims = _children(proc.pid)
        assert sims
        proc.kill()
        proc.wait(10)
        wait_until(lambda: not any(_alive(p) for p in sims), 20, 0.1, "the simulators to exit")
    finally:
        for p in [*sims, *_children(proc.pid)]:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
