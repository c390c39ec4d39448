"""``safegw demo``: the bundled plant simulators plus the gateway, with a live table.

The simulators run as a child process (``python -m simulators``), as real devices
would: the gateway reaches them over real sockets and ptys. Once the simulator says
``READY``, the gateway runs ``config/demo.yaml`` on its embedded defaults (journal in
a state directory, no broker, no InfluxDB) and the terminal shows every channel,
refreshed each second, until Ctrl-C or ``--seconds``. The table fits the terminal
(80×24 included): alarming channels first, columns dropped or cut by display width.

The admin API and the plant's web page run beside it on a free local port (loopback
only), with a demo admin token made for this run; the address and the token are printed
under the table, so a newcomer's first minute includes the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.core.batch import quality_label
from gateway.core.cliutil import display_width, fit
from gateway.core.display import DisplayTable, Rendering, text

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 90.0  # asyncua builds its whole address space first: slow on a busy PC


def find_config(name: str) -> Path:
    """A bundled config: ./config/NAME when run from a checkout, else next to the package."""
    for base in (Path.cwd() / "config", Path(__file__).resolve().parent.parent / "config"):
        if (base / name).exists():
            return base / name
    raise FileNotFoundError(f"cannot find config/{name} (run from the safegw checkout)")


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1


def start_simulators(sim_config: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start the simulator process and wait for its READY line (with a deadline)."""
    # in a session of its own, so that Ctrl-C in the terminal reaches only the demo: it
    # stops the gateway while the plant is still there, then the simulators. Should the
    # demo die without stopping them (SIGKILL), the kernel sends them SIGTERM.
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators", "-c", str(sim_config)],
        stdout=subprocess.PIPE, stderr=None, text=True, bufsize=1,
        start_new_session=True, preexec_fn=_die_with_parent,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while time.monotonic() < deadline:
        if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
            break
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("READY"):
            sel.close()
            info = json.loads(line[5:].strip() or "{}")
            return proc, info
    sel.close()
    proc.terminate()
    raise RuntimeError(f"simulators did not become ready within {READY_TIMEOUT_S:.0f}s "
                       f"(exit code {proc.poll()})")


def _fmt_value(v: float, rendering: Rendering) -> str:
    """As a person reads it: a float32 at its shortest form, a scaled integer at its
    resolution (gateway/core/display.py)."""
    shown = rendering.value(v)
    return "—" if shown is None else text(shown)


#: columns dropped, in this order, when the table is wider than the terminal
DROP_ORDER = (1, 5)  # kind, age
#: lines around the rows: heading, rule, blank, devices, journal, the page's address and
#: token, "(Ctrl-C to stop)" and the line its newline moves the cursor to (filling that one
#: scrolls the heading away)
CHROME_LINES = 9


def _alarm_text(a: dict[str, Any]) -> str:
    # a quality rule's level is its name ("bad", "frozen"): say it once
    head = a["rule"] if a["level"] == a["rule"] else f"{a['level']} {a['rule']}"
    return f"{head} ({a['state']})"


def _clip(text: str, cols: int) -> str:
    return text if display_width(text) <= cols else fit(text, cols)


def render(gw: Any, now_ns: int, color: bool, size: tuple[int, int] | None = None) -> str:
    """The live table: name, kind, value, unit, quality, age (and alarm when known).

    Alarming channels come first. Given a ``size`` (the terminal's columns and lines) it
    fits it: columns are dropped (kind, then age) and the alarm text cut to the width,
    and rows that do not fit the height are counted on one line.
    """
    cols, lines_max = size or (sys.maxsize, sys.maxsize)
    alarms: dict[int, str] = {}
    for a in gw.rules.active():  # the operator's view: active, unacknowledged, shelved
        text = _alarm_text(a)
        alarms[a["index"]] = f"{alarms[a['index']]}; {text}" if a["index"] in alarms else text
    rows = []
    rendering = DisplayTable.of(gw.table)
    for ch in gw.table.channels:
        i = ch.index
        ts = int(gw.live.ts[i])
        age = "—" if ts == 0 else f"{max(0.0, (now_ns - ts) / 1e9):.1f}s"
        q = int(gw.live.quality[i])
        value = _fmt_value(float(gw.live.value[i]), rendering[i])
        rows.append(((ch.name, ch.kind, value, ch.unit, quality_label(q), age, alarms.get(i, "")), q))
    rows.sort(key=lambda r: not r[0][6])  # stable: alarming first, then in configuration order
    head = ("channel", "kind", "value", "unit", "quality", "age", "alarm")
    keep = list(range(len(head)))
    widths = [max(display_width(h), *(display_width(r[0][k]) for r in rows)) for k, h in enumerate(head)]

    def total() -> int:
        return sum(widths[k] for k in keep) + 2 * (len(keep) - 1)

    for k in DROP_ORDER:
        if total() <= cols:
            break
        keep.remove(k)
    widths[6] = max(display_width(head[6]), widths[6] - max(0, total() - cols))

    def line(cells: tuple[str, ...]) -> str:
        return _clip("  ".join(fit(cells[k], widths[k]) for k in keep).rstrip(), cols)

    out = [line(head), line(tuple("-" * w for w in widths))]
    room = max(1, lines_max - CHROME_LINES)
    shown = rows if len(rows) <= room else rows[:room - 1]
    for cells, q in shown:
        text = line(cells)
        if color:
            code = "31" if cells[6] else ("32" if q < 0x40 else "33")
            text = f"\x1b[{code}m{text}\x1b[0m"
        out.append(text)
    if len(shown) < len(rows):
        out.append(f"… {len(rows) - len(shown)} more channels (a taller terminal shows them)")
    devs = ", ".join(f"{d.name}:{d.state}" for d in gw.devices.values())
    st = gw.journal.stats()
    out.append("")
    out.append(_clip(f"devices: {devs}", cols))
    out.append(_clip(f"journal: seq {st['last_seq']}, {st['payload_bytes'] / 1e6:.1f} MB in {gw.state_dir}",
                     cols))
    return "\n".join(out)


def run_demo(*, seconds: float | None, state_dir: str | None, config: str | None,
             sim_config: str | None, log_level: str = "WARNING") -> int:
    from gateway.config import load_or_exit
    from gateway.core.cliutil import setup_logging

    setup_logging(log_level)
    cfg_path = Path(config) if config else find_config("demo.yaml")
    sim_path = Path(sim_config) if sim_config else find_config("sim-demo.yaml")
    cfg = load_or_exit(str(cfg_path))
    tmp = None
    if state_dir is None:
        tmp = tempfile.mkdtemp(prefix="safegw-demo-")
        state_dir = tmp
    cfg.gateway.state_dir = Path(state_dir)
    token = _demo_api(cfg)
    try:
        proc, info = start_simulators(sim_path)
    except (RuntimeError, OSError) as e:
        print(f"safegw demo: {e}", file=sys.stderr)
        return 1
    print(f"simulators ready: {json.dumps(info)}", flush=True)
    try:
        return asyncio.run(_run(cfg, seconds, token))
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if tmp is not None and os.environ.get("SAFEGW_KEEP_DEMO_STATE") is None:
            shutil.rmtree(tmp, ignore_errors=True)


def _demo_api(cfg: Any) -> str:
    """The API on a free loopback port, and a demo admin token for it (returned, shown once
    per screen under the table: it is this run's, in this run's state directory)."""
    from gateway.core.config import ApiSection
    from gateway.core.tokens import UserStore

    if cfg.api is None:
        cfg.api = ApiSection(listen="127.0.0.1:0")
    else:
        cfg.api.listen = "127.0.0.1:0"
    users_file = Path(cfg.api.users_file or cfg.gateway.state_dir / "users.json")
    if not users_file.is_absolute():
        users_file = cfg.base_dir / users_file
    users_file.parent.mkdir(parents=True, exist_ok=True)
    return UserStore(users_file).add("demo-admin", "admin", by="demo", rotate=True)


def page_lines(gw: Any, token: str) -> list[str]:
    """The lines under the table that say where the page is and how to sign in."""
    api = next((s for s in gw.services if s.name == "api"), None)
    if api is None or not api.url:
        return []
    return [f"web page: {api.url}/   (sign in with the demo admin token below)", f"token: {token}"]


async def _run(cfg: Any, seconds: float | None, token: str = "") -> int:
    from gateway.app import Gateway, install_signal_handlers

    gw = Gateway(cfg)
    install_signal_handlers(gw)
    tty = sys.stdout.isatty()
    loop = asyncio.get_running_loop()
    t_end = None if seconds is None else loop.time() + seconds

    async def screen() -> None:
        while True:
            await asyncio.sleep(1.0)
            text = render(gw, time.time_ns(), color=tty, size=shutil.get_terminal_size() if tty else None)
            text = "\n".join([text, *page_lines(gw, token)])
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J" + text + "\n(Ctrl-C to stop)\n")
            else:
                sys.stdout.write(text + "\n\n")
            sys.stdout.flush()
            if t_end is not None and loop.time() >= t_end:
                gw.stop()
                return

    task = asyncio.create_task(screen(), name="demo-screen")
    try:
        await gw.run(drain_s=2.0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    samples = int(gw.live.samples)
    good = int((gw.live.quality < 0x40).sum())
    print(f"demo stopped: {samples} samples journaled, {good}/{len(gw.table)} channels good at the end")
    return 0
