"""`safegw check` on a corpus of hostile and broken config files (tests/core/config_corpus/,
plus a few generated here because they are large): every file gives exit 0, or exit 2
with FILE:LINE:COL and the key at fault, within 10 s and 500 MB, never a traceback.

The named cases are the findings of a probe of the config loader: alias bombs, a
recursive alias, 100,000 alias references, a 50 MB one-line list, deep nesting, a
5,000-digit integer, infinite or absurd numbers, ports out of range, a missing
central key file, a busy-loop check interval, hosts with spaces or newlines, invisible
characters in names, MQTT wildcards in the site or the topic prefix.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "core" / "config_corpus"
TIME_S = 10.0
MEMORY_MB = 500

#: file → a piece of the message (the key path and why) the first error line must hold
EXPECTED = {
    "laughs.yaml": "aliases expand to more than",
    "recursive-alias.yaml": "devices[0]: an alias that contains itself",
    "huge-integer.yaml": "journal.quota: a number of 5000 characters",
    "scale-inf.yaml": "channels[0].scale: expected a finite number",
    "poll-years.yaml": "devices[0].poll: '99999999999999999999d' is longer than",
    "api-port-99999.yaml": "api.listen: listen '127.0.0.1:99999': port 99999",
    "uplink-port-123456.yaml": "uplink.listen: listen '0.0.0.0:123456'",
    "central-keys-missing.yaml": "uplink.central_keys[0]: no file",
    "check-every-0s.yaml": "registers.check_every: must be greater than or equal to 0.01",
    "max-attachment-negative.yaml": "registers.max_attachment: a size must be between 0",
    "host-with-space.yaml": "devices[0].host: '10.0.0.5 ; reboot' is not a host",
    "host-with-newline.yaml": "mqtt.host:",
    "name-zero-width.yaml": "channels[0].name: 'GT\\u200b1' holds an invisible",
    "name-right-to-left.yaml": "(U+202E)",
    "site-wildcard.yaml": "gateway.site: 'x/#' would break MQTT topics",
    "topic-prefix-wildcard.yaml": "mqtt.topic_prefix: 'plant/+/alarms' is not a topic prefix",
    "tab-indent.yaml": "not tabs",
    "binary.yaml": "control characters are not allowed",
    "empty.yaml": "gateway: required key is missing",
    "list-at-top.yaml": "the file must be a mapping",
    "merge-key.yaml": "merge keys (<<) are not supported",
    "alias-references.yaml": "aliases expand to more than",
    "one-line-50MB.yaml": "too large for a config file",
    "deep-nesting.yaml": "nested too deeply",
    "deep-dashes.yaml": "nested too deeply",
}
OK = {"ok-minimal.yaml"}


def _generate(tmp: Path) -> list[Path]:
    """The large cases, made here rather than committed."""
    gw = "gateway: {id: a, site: b}\n"
    files = {
        "alias-references.yaml": gw + "v: &v [1,2,3,4,5,6,7,8,9,10]\nx: [" + ",".join(["*v"] * 100_000)
                                 + "]\n",
        "one-line-50MB.yaml": gw + "x: [" + ",".join(["1"] * 25_000_000) + "]\n",
        "deep-nesting.yaml": gw + "x: " + "[" * 200_000 + "]" * 200_000 + "\n",
        # block sequences nest two characters a level: libyaml's composer would overflow
        # the C stack (a crash) rather than raise
        "deep-dashes.yaml": gw + "x:\n  " + "- " * 100_000 + "1\n",
    }
    out = []
    for name, text in files.items():
        p = tmp / name
        p.write_text(text)
        out.append(p)
    return out


#: `safegw check` with its own peak RSS (VmHWM) written last, to a file descriptor of its
#: own: the rusage of a child forked from pytest would count pytest's pages copied at fork
_RUN = """
import atexit, os, sys
def _peak():
    with open("/proc/self/status") as f:
        kb = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    os.write(int(sys.argv[1]), kb.encode())
atexit.register(_peak)
from gateway.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _check(path: Path, out_file: Path) -> tuple[int, str, float, float]:
    """Run `safegw check`; (exit code, its output, seconds, its peak RSS in MB)."""
    t0 = time.monotonic()
    r, w = os.pipe()
    try:
        with out_file.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-c", _RUN, str(w), "check", "-c", str(path)], cwd=ROOT,
                                    stdout=out, stderr=subprocess.STDOUT, pass_fds=(w,))
        os.close(w)
        w = -1
        try:
            code = proc.wait(timeout=TIME_S * 2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"{path.name}: still running after {TIME_S * 2:g}s")
        peak_kb = os.read(r, 64)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    return code, out_file.read_text("utf-8", "replace"), time.monotonic() - t0, int(peak_kb or 0) / 1024


def _cases(tmp: Path) -> list[Path]:
    return sorted(CORPUS.glob("*.yaml")) + _generate(tmp)


def test_every_corpus_file_is_answered_with_a_position_in_bounded_time_and_memory(tmp_path: Path) -> None:
    files = _cases(tmp_path)
    assert {f.name for f in files} == set(EXPECTED) | OK, "every corpus file has its expectation"
    for path in files:
        code, out, elapsed, peak_mb = _check(path, tmp_path / "out.txt")
        first = out.splitlines()[0] if out else ""
        assert "Traceback" not in out, f"{path.name}: {out[-2000:]}"
        assert elapsed < TIME_S, f"{path.name}: {elapsed:.1f}s"
        assert 0 < peak_mb < MEMORY_MB, f"{path.name}: {peak_mb:.0f} MB"
        if path.name in OK:
            assert code == 0 and first.startswith("ok:"), f"{path.name}: {out}"
            continue
        assert code == 2, f"{path.name}: exit {code}: {out[:500]}"
        assert re.match(rf"^{re.escape(str(path))}:\d+:\d+: ", first), f"{path.name}: {first[:300]}"
        assert EXPECTED[path.name] in first, f"{path.name}: {first[:300]}"
