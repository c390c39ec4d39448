"""The MQTT password file: read relative to the config file's folder (not the working
directory), and refused, with its path and mode, when others may read it."""

from __future__ import annotations

import asyncio
import json
import logging
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.config import load
from gateway.core.secrets import SecretFileError
from tests.fixtures.helpers import async_wait_until
from tests.fixtures.mosquitto import Broker


def write_config(d: Path, mqtt: dict[str, Any]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    path = d / "gateway.yaml"
    path.write_text(textwrap.dedent(f"""\
        gateway: {{id: gw-test, site: "S1", state_dir: {d / 'state'}}}
        devices:
          - name: plc
            protocol: modbus-tcp
            host: 127.0.0.1
            port: 1502
            enabled: false
            channels:
              - {{name: GT-0, kind: gas, gas: combustible, unit: '%LEL', address: 'holding:0'}}
        """) + "mqtt: " + json.dumps(mqtt) + "\n")
    return path


def config_with_password_file(broker: Broker, conf_dir: Path, mode: int) -> tuple[Path, Path]:
    """A config in ``conf_dir`` naming the broker's password file as ``mqtt.pw``, relative
    to that folder; returns (config, password file)."""
    section = broker.section()
    conf_dir.mkdir(parents=True, exist_ok=True)
    pw = conf_dir / "mqtt.pw"
    pw.write_text(Path(section["password_file"]).read_text())
    pw.chmod(mode)
    section["password_file"] = "mqtt.pw"
    return write_config(conf_dir, section), pw


async def test_password_file_is_read_beside_the_config(mosquitto_factory: Any, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    broker: Broker = mosquitto_factory(password=True)
    conf, _pw = config_with_password_file(broker, tmp_path / "etc", 0o600)
    monkeypatch.chdir(tmp_path)  # not where the file is
    gw = Gateway(load(conf))
    task = asyncio.create_task(gw.run(drain_s=1.0))
    try:
        await async_wait_until(lambda: any(getattr(s, "connected", False) for s in gw.services), 15,
                               what="the gateway's mqtt connection with the password")
    finally:
        gw.stop()
        await task


async def test_password_file_readable_by_others_is_refused(mosquitto_factory: Any, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    broker: Broker = mosquitto_factory(password=True)
    conf, pw = config_with_password_file(broker, tmp_path / "etc", 0o644)
    gw = Gateway(load(conf))
    caplog.set_level(logging.ERROR, "gateway.app")
    with pytest.raises(SecretFileError) as err:
        await gw.run(drain_s=1.0)
    assert str(pw) in str(err.value) and "0644" in str(err.value)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(m.startswith("mqtt: ") and str(pw) in m and "mode 0644" in m and "chmod 600" in m
               for m in logged), logged
    assert gw.journal.closed  # the daemon stopped cleanly, nothing half-started
