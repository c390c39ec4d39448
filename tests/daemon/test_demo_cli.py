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
import time
from pathlib import Path

import pytest

from simulators.config import DEVICE_KINDS
from simulators.config import load as load_sim
from simulators.scenario import window
from tests.fixtures.helpers import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(420)

#: scripted faults that make a channel not good: the device kinds and a bad OPC-UA status
DISTURBING = (*DEVICE_KINDS, "bad_status")
#: the longest the demo may take from Ctrl-C to exit (a 2-s drain on a busy machine)
STOP_S = 30.0


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
    """The demo on the bundled configs (see _configs); its output (stdout and logs) in a file."""
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


def _wait_running(proc: subprocess.Popen[bytes], out: Path) -> None:
    """Wait until every device is ok on the screen."""
    def ready() -> bool:
        assert proc.poll() is None, out.read_text()[-3000:]
        dev = [ln for ln in _screen(out) if ln.startswith("devices: ")]
        return bool(dev) and dev[0].count(":ok") == 6

    wait_until(ready, 120, 0.2, "the demo to show every device ok")


class PlantClock:
    """Bounds on the simulators' scenario time, seen from the test.

    The plant's clock starts inside the simulator process, after this test starts the
    demo and before the demo prints ``simulators ready``: so at any moment its time lies
    between (now - when the ready line was first seen) and (now - when the demo started).
    """

    def __init__(self, sim_config: Path) -> None:
        self.started = time.monotonic()
        self.ready: float | None = None
        self.scenarios = [sc for sc in load_sim(sim_config).scenarios if sc.kind in DISTURBING]

    def saw(self, text: str) -> None:
        if self.ready is None and "simulators ready: " in text:
            self.ready = time.monotonic()

    def span(self, since: float, until: float) -> tuple[float, float]:
        """Plant times that (monotonic) moments ``since`` .. ``until`` can have been."""
        assert self.ready is not None
        return since - self.ready, until - self.started

    def quiet(self, lo: float, hi: float) -> bool:
        """No scripted fault is on at any plant time in [lo, hi] (windows last 3 s or more)."""
        ts = [lo + 0.25 * k for k in range(int((hi - lo) / 0.25) + 1)] + [hi]
        return not any(window(sc, t) is not None for sc in self.scenarios for t in ts if t >= 0)


def test_ctrl_c_stops_the_gateway_before_the_plant(tmp_path: Path) -> None:
    """Ctrl-C stops the gateway while the plant still answers: every channel good before
    it is good at the end, and nothing after it logs an error.

    The demo's scenario scripts device faults (a silent unit, exception answers, a bad
    status, an OPC-UA restart, line garbage) every few minutes; a channel that one of them
    turns bad between the last screen and the exit says nothing about the stop order.
    So Ctrl-C waits for a moment when the plant is fully up (every device ok, every
    channel good) and, by the plant's clock, no scripted fault can start before the demo
    has exited.
    """
    proc, out = _start(tmp_path)
    clock = PlantClock(tmp_path / "sim-demo.yaml")
    try:
        def calm() -> bool:
            assert proc.poll() is None, out.read_text()[-3000:]
            text = out.read_text()
            clock.saw(text)
            screen = _screen(out)
            dev = [ln for ln in screen if ln.startswith("devices: ")]
            if not dev or dev[0].count(":ok") != 6 or _good(screen) != 25:
                return False
            # the screen was written up to a second before we read it
            now = time.monotonic()
            return clock.quiet(*clock.span(now - 2.0, now + STOP_S))

        wait_until(calm, 300, 0.2, "every channel good, with no scripted fault due before the demo stops")
        calm_at = time.monotonic()
        sims = _children(proc.pid)
        assert sims, "the simulators run as a child of the demo"
        before = out.stat().st_size
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does
        assert proc.wait(STOP_S) == 0, out.read_text()
        plant = clock.span(calm_at - 2.0, time.monotonic())
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert clock.quiet(*plant), f"a scripted fault was due at plant time {plant} (slow stop?)"
    text = out.read_text()
    after = text.encode()[before:].decode(errors="replace")
    # every channel was good before Ctrl-C and the scenario was quiet: all 25 are good
    # at the end unless the plant went first (with the simulators killed by the same
    # Ctrl-C it fell to 17 of 25, with connection errors and tracebacks)
    end = re.findall(r"demo stopped: .*, (\d+)/25 channels good at the end", after)
    assert end == ["25"], after[-2000:]
    assert "ERROR" not in after, after[-3000:]
    assert "Traceback" not in text, text[-3000:]
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
