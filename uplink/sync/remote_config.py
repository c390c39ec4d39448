"""The gateway's side of configuration from central: take a signed config, judge it, apply
it by live reload, watch the devices for the grace time, keep it or roll back, report.

A document arrives over the sync link (central/configs.py says how, per mode): posted by
central to ``POST /sync/v1/config`` on the pull listener, or fetched by the push client
when central's push answer names a version this gateway has not handled. Then, in order:

1. the signature against the trusted central keys (``uplink.central_keys``), the gateway
   id, and the text against the SHA-256 the signature binds (``uplink.configdoc``);
2. replay: a version at or below the last one handled is refused (kept in
   ``<state_dir>/remote-config.json``, 0600);
3. ``uplink.remote_config: refuse`` (the default) refuses every authentic document;
4. the full check (``gateway.config``: the same as ``safegw check``), the same gateway id,
   an ``uplink`` section kept (a config without it would cut the gateway off from central);
5. ``reload_config(text, source="central:vN")`` applies it live (not written to disk yet);
6. the grace time (``uplink.remote_config_grace``): every device that was polled good
   before and is still in the config must be polled good again; if not, the previous
   text is reloaded (``source="rollback:vN"``) and the reason reported;
7. kept: the config file is replaced atomically (the previous one kept as ``FILE.prev``,
   both 0600), so a restart keeps it.

Each outcome is journaled as a ``remote_config`` event (result applied | refused |
rolled_back | failed, version, sha256, reason), which reaches central like every event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from gateway.core.config import UplinkSection
from gateway.services import DaemonContext
from uplink import configdoc
from uplink.keys import PublicKeys
from uplink.sync.client import NET_ERRORS

log = logging.getLogger(__name__)

STATE_FILE = "remote-config.json"
#: how often the grace watch looks at the devices' last good poll
WATCH_S = 0.25
#: the most of a check's error lines a report carries
MAX_ERROR_LINES = 5
#: the version being applied, per state dir. It outlives the uplink service that took the
#: config: a reload whose uplink section changed stops that service and starts a new one,
#: while the apply (the caller of that reload) goes on
_APPLYING: dict[str, int] = {}
_RUNNING: set[asyncio.Task[None]] = set()


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``: a 0600 temporary file in the same folder,
    flushed to disk, renamed over it, the folder synced (plant data: private whatever the umask)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class RemoteConfig:
    """Judges and applies signed configs for one gateway (one at a time)."""

    def __init__(self, ctx: DaemonContext, section: UplinkSection, trusted: list[PublicKeys]):
        self.ctx = ctx
        self.mode = section.remote_config
        self.grace_s = float(section.remote_config_grace)
        self.trusted = trusted
        self.gateway = ctx.cfg.gateway.id
        self.path = Path(ctx.state_dir) / STATE_FILE
        # handled: the last authentic version judged (replay bound); applied: the one in force;
        # seen: the newest version offered by a push answer that was fetched and answered
        self.state: dict[str, Any] = {"handled": 0, "handled_sha256": None, "applied": 0, "seen": 0,
                                      "last": None}
        self._load()
        self._tasks: set[asyncio.Task[None]] = set()  # fetches (push mode)
        self._judging = asyncio.Lock()
        self._fetching = False

    @property
    def busy(self) -> int:
        """The version being applied, 0 when idle."""
        return _APPLYING.get(str(self.path), 0)

    @busy.setter
    def busy(self, version: int) -> None:
        if version:
            _APPLYING[str(self.path)] = version
        else:
            _APPLYING.pop(str(self.path), None)

    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            # refusing replays needs this file: say so loudly, and refuse everything below a
            # version no one could have issued rather than accept an old one again
            log.error("%s unreadable (%s): remote configs refused until it is repaired", self.path, e)
            self.state["handled"] = configdoc.MAX_VERSION
            return
        if isinstance(doc, dict):
            self.state.update({k: doc[k] for k in self.state if k in doc})

    def _save(self) -> None:
        write_private(self.path, json.dumps(self.state).encode())

    # ------------------------------------------------------------------ reports
    async def report(self, result: str, reason: str | None, *, version: int = 0, sha256: str | None = None,
                     authentic: bool = True) -> dict[str, Any]:
        ev: dict[str, Any] = {"type": "remote_config", "ts": self.ctx.clock(), "result": result,
                              "version": version, "sha256": sha256, "reason": reason,
                              "source": f"central:v{version}", "authentic": authentic}
        if result == "applied":
            log.info("remote config v%d applied (sha256 %s)", version, (sha256 or "")[:12])
        else:
            log.warning("remote config v%d %s: %s", version, result, reason)
        self.state["last"] = {k: ev[k] for k in ("ts", "result", "version", "sha256", "reason")}
        await asyncio.to_thread(self._save)  # fsync: off the loop
        await self.ctx.journal.append_event(ev)
        return ev

    # ------------------------------------------------------------------ offers
    async def offer(self, data: bytes) -> dict[str, Any]:
        """Judge a signed document; start applying it when it passes. The answer (for
        central) says what became of it: accepted (applying), duplicate, busy, or refused."""
        async with self._judging:  # one at a time: the replay bound moves between the awaits
            return await self._offer(data)

    async def _offer(self, data: bytes) -> dict[str, Any]:
        # an apply begun by the service before a reload restarted it may have moved the state
        await asyncio.to_thread(self._load)
        try:
            # an SM2 verification takes tens of ms: off the loop
            sc = await asyncio.to_thread(configdoc.verify, data, self.trusted, gateway=self.gateway)
        except configdoc.ConfigDocError as e:
            claimed = _claimed_version(data)
            await self.report("refused", f"{e.reason}: {e}", version=claimed, authentic=False)
            return {"status": "refused", "reason": f"{e.reason}: {e}", "version": claimed}
        if sc.version == self.state["handled"] and sc.sha256 == self.state["handled_sha256"]:
            return {"status": "duplicate", "version": sc.version, "last": self.state["last"]}
        if self.busy:
            return {"status": "busy", "reason": f"applying v{self.busy}", "version": sc.version}
        if sc.version <= self.state["handled"]:
            reason = (f"replay: version {sc.version} is not newer than the last one handled "
                      f"(v{self.state['handled']})")
            await self.report("refused", reason, version=sc.version, sha256=sc.sha256)
            return {"status": "refused", "reason": reason, "version": sc.version}
        self.state["handled"], self.state["handled_sha256"] = sc.version, sc.sha256
        if self.mode != "apply":
            reason = "this gateway refuses configuration from central (uplink.remote_config: refuse)"
            await self.report("refused", reason, version=sc.version, sha256=sc.sha256)
            return {"status": "refused", "reason": reason, "version": sc.version}
        await asyncio.to_thread(self._save)
        self.busy = sc.version
        # not one of this service's tasks: the reload it makes may stop this service
        t = asyncio.get_running_loop().create_task(self._apply(sc), name=f"remote-config[v{sc.version}]")
        _RUNNING.add(t)
        t.add_done_callback(_RUNNING.discard)
        return {"status": "accepted", "version": sc.version}

    def offered(self, answer: dict[str, Any], fetch: Any) -> None:
        """A push answer named central's newest version for us: fetch it (``fetch(have)``
        returns the document bytes, or None) when it is one we have not handled."""
        v = answer.get("config")
        if type(v) is not int or v <= max(self.state["handled"], self.state["seen"]) or self._fetching:
            return
        if self.busy:
            return
        self._fetching = True

        async def go() -> None:
            try:
                data = await fetch(self.state["handled"])
                if data is not None:
                    await self.offer(data)
                    self.state["seen"] = max(self.state["seen"], v)
                    await asyncio.to_thread(self._save)
            except (*NET_ERRORS, ValueError) as e:  # the next push answer offers it again
                log.info("remote config v%d not fetched yet: %s", v, e)
            finally:
                self._fetching = False

        t = asyncio.get_running_loop().create_task(go(), name=f"remote-config-fetch[v{v}]")
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ applying
    async def _apply(self, sc: configdoc.SignedConfig) -> None:
        try:
            await self._apply_checked(sc)
        except (OSError, ValueError, RuntimeError) as e:
            await self.report("failed", f"{type(e).__name__}: {e}", version=sc.version, sha256=sc.sha256)
        finally:
            self.busy = 0

    async def _apply_checked(self, sc: configdoc.SignedConfig) -> None:
        ctx = self.ctx
        v, sha = sc.version, sc.sha256
        file = ctx.config_path
        if file is None:
            await self.report("refused", "this daemon was not started from a config file: nothing to keep a "
                              "config from central in", version=v, sha256=sha)
            return
        reload = ctx.reload_config
        # what to roll back to: the text in force (the daemon's, else the file it came from)
        old_text = ctx.config_text or await asyncio.to_thread(file.read_text, encoding="utf-8")
        errors = await asyncio.to_thread(_check, sc.text, file, self.gateway)
        if errors:
            await self.report("refused", "check failed: " + "; ".join(errors), version=v, sha256=sha)
            return
        good_before = {n for n, st in ctx.devices.items() if st.state == "ok" and st.last_ok_ns > 0}
        t0 = ctx.clock()
        res = await reload(sc.text, source=f"central:v{v}")
        if not res.ok:
            await self.report("refused", f"reload refused it: {res.error}", version=v, sha256=sha)
            return
        kept = good_before & {d.name for d in ctx.cfg.devices if d.enabled}
        bad = await self._watch(kept, t0)
        if bad:
            detail = ", ".join(f"{n} ({_last_error(ctx, n)})" for n in bad)
            reason = (f"not polled good within the grace time of {self.grace_s:g} s: {detail}; "
                      f"rolled back to the previous config")
            back = await reload(old_text, source=f"rollback:v{v}")
            if not back.ok:
                reason += f" (the rollback itself was refused: {back.error}; the new config stays live)"
            await self.report("rolled_back", reason, version=v, sha256=sha)
            return
        await asyncio.to_thread(_keep, file, old_text, sc.text)
        self.state["applied"] = v
        await self.report("applied", None, version=v, sha256=sha)

    async def _watch(self, names: set[str], t0: int) -> list[str]:
        """The devices of ``names`` not polled good since ``t0`` when the grace time ends
        (an empty list as soon as all are)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.grace_s
        while True:
            bad = sorted(n for n in names if (st := self.ctx.devices.get(n)) is None or st.last_ok_ns <= t0)
            if not bad or loop.time() >= end:
                return bad
            await asyncio.sleep(min(WATCH_S, max(0.0, end - loop.time())))

    def stats(self) -> dict[str, Any]:
        return {"mode": self.mode, "handled": self.state["handled"], "applied": self.state["applied"],
                "applying": self.busy or None, "last": self.state["last"]}

    async def close(self) -> None:
        """Stop fetching; an apply under way goes on (it may be what stopped this service)."""
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _last_error(ctx: DaemonContext, name: str) -> str:
    st = ctx.devices.get(name)
    return (st.last_error if st is not None else None) or "no good poll"


def _claimed_version(data: bytes) -> int:
    """The version an unverified document claims (for the report only; never trusted)."""
    with contextlib.suppress(configdoc.ConfigDocError, ValueError, TypeError, KeyError):
        import base64

        body = base64.b64decode(configdoc.peek(data)["body"], validate=True)
        v = json.loads(body.partition(b"\n")[0]).get("version")
        if type(v) is int and 0 < v <= configdoc.MAX_VERSION:
            return v
    return 0


def _check(text: str, file: Path, gateway: str) -> list[str]:
    """``safegw check`` on the text, as if it were ``file``, plus what remote config needs."""
    from gateway.config import ConfigError, validate
    from gateway.core.yamlsrc import YamlError, load_text

    try:
        cfg = validate(load_text(text, str(file)))
    except YamlError as e:
        return [str(e)]
    except ConfigError as e:
        return list(e.lines[:MAX_ERROR_LINES]) + ([f"... {len(e.lines) - MAX_ERROR_LINES} more"]
                                                  if len(e.lines) > MAX_ERROR_LINES else [])
    if cfg.gateway.id != gateway:
        return [f"{file}: gateway.id is {cfg.gateway.id!r}, this gateway is {gateway!r}"]
    if cfg.uplink is None:
        return [f"{file}: no uplink section: the gateway would lose its link to central"]
    return []


def _keep(file: Path, old_text: str, new_text: str) -> None:
    """The applied config becomes the file; the one before it ``FILE.prev`` (both 0600)."""
    write_private(file.with_name(file.name + ".prev"), old_text.encode())
    write_private(file, new_text.encode())
