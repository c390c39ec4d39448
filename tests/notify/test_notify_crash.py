"""The daemon SIGKILLed in the middle of an escalation picks it up where it was: the
steps already sent are not sent again, the next ones come at their time (counted from
the alarm, not from the restart)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from simulators.robots import RobotReceiver
from tests.fixtures.helpers import wait_until
from tests.fixtures.notify import gateway_yaml

pytestmark = [pytest.mark.timeout(90)]
ROOT = Path(__file__).resolve().parents[2]


def start(cfg: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(
        [sys.executable, "-m", "tests.fixtures.notify_worker", str(cfg), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    assert line == "ready", f"worker said {line!r}"
    return p


def test_sigkill_mid_escalation_resumes_after_restart(tmp_path: Path) -> None:
    hook = RobotReceiver("webhook").start()
    state = tmp_path / "state"
    notify = f"""
notify:
  channels:
    - {{type: webhook, name: hook, url: "{hook.url}", ca_file: "{hook.ca}", timeout: 2s}}
  recipients:
    - {{name: 张三}}
    - {{name: 李四}}
    - {{name: 王五}}
  routes:
    - {{name: gas, match: {{kinds: [gas]}}, escalation: chain}}
  escalations:
    - name: chain
      steps:
        - {{to: [张三]}}
        - {{after: 6s, to: [李四]}}
        - {{after: 8s, to: [王五]}}
"""
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(gateway_yaml(state, notify))
    procs: list[subprocess.Popen[str]] = []
    try:
        p = start(cfg, "--raise", "GT-1=30")
        procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "raised"
        wait_until(lambda: len(hook.messages) >= 1, 20, what="step 1")
        sf = state / "notify-state.json"

        def step1_saved() -> bool:
            try:
                doc = json.loads(sf.read_text())
            except (OSError, ValueError):
                return False
            return any("/张三/" in k for k in doc["sent"])

        wait_until(step1_saved, 10, what="step 1 recorded as delivered")
        assert len(hook.messages) == 1, "killed before step 2 is due"
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        assert oct(sf.stat().st_mode & 0o777) == "0o600"
        procs.append(start(cfg))
        wait_until(lambda: len(hook.messages) >= 3, 30, what="steps 2 and 3 after the restart")
        who = [m["doc"]["recipient"] for m in hook.messages]
        assert who == ["张三", "李四", "王五"], who
        # each at its time after the alarm (its journaled time; the receiver notes the wall clock too)
        raised = hook.messages[0]["doc"]["fields"]["alarm"]["ts"] / 1e9
        assert hook.messages[1]["wall"] - raised >= 6.0 and hook.messages[2]["wall"] - raised >= 8.0
        assert [m["doc"]["kind"] for m in hook.messages] == ["alarm", "escalation", "escalation"]
    finally:
        for q in procs:
            if q.poll() is None:
                q.send_signal(signal.SIGTERM)
                try:
                    q.wait(15)
                except subprocess.TimeoutExpired:
                    q.kill()
        hook.stop()
