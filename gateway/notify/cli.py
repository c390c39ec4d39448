"""``safegw notify test -c FILE RECIPIENT``: one test message through every channel of a
recipient (a configured person, ``@on_duty`` or ``@shift_leader``), each result printed.

It runs beside the daemon (the journal belongs to the daemon): the attempts are recorded
in the registers' audit trail (``notify test``), and the exit code is 0 only when every
channel delivered."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from gateway.core.cliutil import EXIT_CONFIG, EXIT_OK

EXIT_FAILED = 1


def cmd_test(args: argparse.Namespace) -> int:
    from gateway.config import load_or_exit
    from gateway.core.channels import ChannelTable
    from gateway.core.secrets import SecretFileError

    cfg = load_or_exit(args.config)
    if cfg.notify is None:
        print(f"{args.config}: no notify: section")
        return EXIT_CONFIG
    n = cfg.notify
    if args.recipient not in {r.name for r in n.recipients} | {"@on_duty", "@shift_leader"}:
        print(
            f"no recipient {args.recipient!r}; known: {', '.join(r.name for r in n.recipients)}, "
            "@on_duty, @shift_leader"
        )
        return EXIT_CONFIG
    events: list[dict[str, Any]] = []
    ctx = SimpleNamespace(
        cfg=cfg,
        journal=None,
        table=ChannelTable.from_config(cfg),
        state_dir=Path(args.state_dir or cfg.gateway.state_dir),
        clock=time.time_ns,
        emit_events=events.extend,
    )

    async def main() -> int:
        from gateway.admin.reminders import open_store
        from gateway.notify.service import NotifyService

        try:
            svc = NotifyService(ctx, n)  # type: ignore[arg-type]
        except SecretFileError as e:
            print(f"notify: {e}")
            return EXIT_CONFIG
        try:
            svc._store = open_store(ctx, cfg.registers)  # type: ignore[arg-type]
        except (RuntimeError, OSError) as e:
            print(f"registers not readable ({e}): @on_duty finds nobody")
        for ch in svc.channels.values():
            await ch.start()
        # a modem needs a moment to open its port, check the SIM and register; a send before
        # that would fail for no fault of the modem's. Not ready in time: the send says why
        # (no port, no SIM, PIN refused, ...). Channels on one port share one modem.
        modems = {id(m): (ch.name, m) for ch in svc.channels.values() if (m := getattr(ch, "modem", None))}
        ready = await asyncio.gather(*(m.wait_ready(args.modem_wait) for _, m in modems.values()))
        for (name, m), ok in zip(modems.values(), ready, strict=True):
            if not ok:
                print(f"{name}: modem not ready after {args.modem_wait:g} s ({m.state}: {m.last_error})")
        try:
            results = await send_test(svc, args.recipient)
        finally:
            for ch in svc.channels.values():
                await ch.stop()
        ok = bool(results) and all(r.ok for _, r in results)
        for what, r in results:
            print(f"{'ok  ' if r.ok else 'FAIL'} {what}: {r.detail} ({r.latency_s * 1000:.0f} ms)")
        if not results:
            print(f"{args.recipient}: nobody found (is the duty roster filled in for now?)")
        if svc._store is not None:
            svc._store.audit(
                "cli",
                "cli",
                "POST",
                "notify test",
                200 if ok else 502,
                "local",
                {
                    "recipient": args.recipient,
                    "results": [{"to": w, "ok": r.ok, "detail": r.detail[:200]} for w, r in results],
                },
            )
            svc._store.close()
        return EXIT_OK if ok else EXIT_FAILED

    return asyncio.run(main())


async def send_test(svc: Any, name: str) -> list[tuple[str, Any]]:
    """One test message through every channel of ``name`` (a recipient, @on_duty, ...):
    ``(who: channel, SendResult)`` for each."""
    from gateway.notify.base import SendResult
    from gateway.notify.render import CHANNEL_KIND

    out: list[tuple[str, SendResult]] = []
    for p in await svc.resolve([name], {}):
        chans = svc._channels_for(p, None)
        if not chans:
            out.append((f"{p.name}: -", SendResult(False, "no channel reaches this recipient")))
        f = {**svc.render.fields({"ts": svc.ctx.clock()}), "recipient": p.name}
        for c in chans:
            ch = svc.channels[c]
            key = f"test/{p.name}/{c}/{svc.ctx.clock()}"
            msg = svc.render.message(key, "test", CHANNEL_KIND.get(ch.type, "robot"), f)
            out.append((f"{p.name}: {c}", await ch.send(msg, p)))
    return out


def add_command(sub: Any) -> None:
    p = sub.add_parser("notify", help="notifications: send a test message")
    ns = p.add_subparsers(dest="notify_command", metavar="SUBCOMMAND")
    ns.required = True
    t = ns.add_parser("test", help="a test message through every channel of a recipient")
    t.add_argument("-c", "--config", required=True)
    t.add_argument("--state-dir", help="override gateway.state_dir (where the registers are)")
    t.add_argument("--modem-wait", type=float, default=30.0, metavar="SECONDS",
                   help="how long a modem may take to open its port, unlock the SIM and register")
    t.add_argument("recipient", help="a recipient's name, @on_duty or @shift_leader")
    t.set_defaults(func=cmd_test)
