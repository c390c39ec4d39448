"""The mem-iot adapter (northbound/memiot) against its receiving simulator
(simulators/memiot_platform.py) over real HTTPS, from a real journal.

The simulator decrypts with GmSSL's SM4 (``gmssl_pyx``), not the OpenSSL SM4 safegw
encrypts with; both are first checked against the published SM4 example of
GB/T 32907-2016 (appendix A.1: key = plaintext = 0123456789abcdeffedcba9876543210,
ciphertext 681edf34d206965e86b3e94f536e4246).

- every reading arrives exactly once, in journal order, batched, with its HJ 212 flag;
- a wrong key: the platform cannot decrypt, nothing is skipped, the cursor stays; the
  right key (after a restart) delivers everything once;
- 4xx and 5xx answers and a platform code that refuses: retried, delivered once;
- a platform that does not answer: the POST times out and is retried, delivered once;
- a platform outage while the plant goes on: the backlog goes out in order afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.core.batch import Batch, Quality
from gateway.core.channels import ChannelInfo, ChannelTable
from gateway.core.config_regulators import MemIotAdapter
from gateway.core.gmcrypto import sm4_cbc_encrypt
from gateway.store.journal import Journal
from northbound.base import PointMap
from northbound.memiot.adapter import MemIotPlatform, hex_bytes
from simulators.memiot_platform import MemIotReceiver, sm4_cbc_decrypt
from tests.fixtures.helpers import async_wait_until
from tests.fixtures.regcheck import check_regulators

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
IV = bytes.fromhex("0f0e0d0c0b0a09080706050403020100")
T0 = 1_767_225_600 * 10**9  # 2026-01-01 00:00:00 UTC = 08:00 Beijing time
NS = 10**9
QUALITIES = [Quality.GOOD, Quality.MAINTENANCE, Quality.SENSOR_FAULT, Quality.CALIBRATING,
             Quality.OUT_OF_RANGE, Quality.COMMS, Quality.SUBSTITUTED]
FLAG = {Quality.GOOD: "N", Quality.MAINTENANCE: "M", Quality.SENSOR_FAULT: "D", Quality.CALIBRATING: "C",
        Quality.OUT_OF_RANGE: "T", Quality.COMMS: "B", Quality.SUBSTITUTED: "S"}  # HJ 212-2017 table 6


def test_sm4_against_gbt_32907_example() -> None:
    key = bytes.fromhex("0123456789abcdeffedcba9876543210")
    c = sm4_cbc_encrypt(key, bytes(16), key)  # one block under a zero IV is the plain cipher
    assert c[:16].hex() == "681edf34d206965e86b3e94f536e4246"
    assert sm4_cbc_decrypt(key, bytes(16), c) == key
    with pytest.raises(ValueError):
        sm4_cbc_decrypt(bytes(16), bytes(16), c)  # another key: the padding does not check out


def table() -> ChannelTable:
    return ChannelTable([ChannelInfo(i, n, "dust", "mg/m3", "plc", None)  # type: ignore[arg-type]
                         for i, n in enumerate(["DUST-1", "DUST-2", "SPARK-1"])])


def config(url: str, **kw: Any) -> MemIotAdapter:
    doc = {"type": "mem-iot", "name": "dust", "url": url, "appid": "APP-1", "secret_file": "s",
           "key_file": "k", "iv_file": "i", "enterprise_code": "91340100MA2XXXXX0X", "start": "oldest",
           "batch_points": 50, "timeout": "1s", "backoff_max": "500ms",
           "points": [{"channel": "DUST-1", "code": "FC001", "decimals": 2},
                      {"channel": "DUST-2", "code": "FC002", "scale": 1000, "decimals": 1}]}
    doc.update(kw)
    return MemIotAdapter.model_validate(doc)


def rows(start: int, n: int) -> Batch:
    """``n`` instants from ``start`` (1 s apart): DUST-1, DUST-2 and the unmapped SPARK-1."""
    ch, ts, val, q = [], [], [], []
    for i in range(start, start + n):
        qq = QUALITIES[i % len(QUALITIES)]
        for c in (0, 1, 2):
            ch.append(c)
            ts.append(T0 + i * NS)
            val.append(float("nan") if qq == Quality.COMMS and c == 0 else i / 100 + c)
            q.append(qq if c == 0 else Quality.GOOD)
    return Batch.build(ch, ts, val, q)


def expected(start: int, n: int) -> list[tuple[str, Any, str, str]]:
    out = []
    for i in range(start, start + n):
        qq = QUALITIES[i % len(QUALITIES)]
        h, s = divmod(i, 3600)
        t = f"2026-01-01 {8 + h:02d}:{s // 60:02d}:{s % 60:02d}"
        out.append(("FC001", None if qq == Quality.COMMS else round(i / 100, 2), t, FLAG[qq]))
        out.append(("FC002", round((i / 100 + 1) * 1000, 1), t, "N"))
    return out


def got(r: MemIotReceiver | list[dict[str, Any]]) -> list[tuple[str, Any, str, str]]:
    readings = r.readings if isinstance(r, MemIotReceiver) else r
    return [(x["code"], x["value"], x["time"], x["quality"]) for x in readings]


@dataclass
class Rig:
    journal: Journal
    platform: MemIotReceiver
    verify: ssl.SSLContext

    def adapter(self, key: bytes = KEY, **kw: Any) -> MemIotPlatform:
        cfg = config(self.platform.url, **kw)
        return MemIotPlatform(cfg, self.journal, PointMap(cfg.points, table()), secret="S3CRET", key=key,
                              iv=IV, verify=self.verify)


def receiver(port: int = 0, cert_dir: Path | None = None) -> MemIotReceiver:
    return MemIotReceiver(appid="APP-1", secret="S3CRET", key=KEY, iv=IV, enterprise="91340100MA2XXXXX0X",
                          port=port, cert_dir=cert_dir).start()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    j = Journal(tmp_path / "journal.db", sync="normal")
    p = receiver(cert_dir=tmp_path / "certs")
    assert p.ca is not None
    rig = Rig(j, p, ssl.create_default_context(cafile=str(p.ca)))
    try:
        yield rig
    finally:
        rig.platform.stop()
        j.close()


@contextlib.asynccontextmanager
async def running(a: MemIotPlatform) -> AsyncIterator[MemIotPlatform]:
    await a.start()
    task = asyncio.create_task(a.run())
    try:
        yield a
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await a.stop()


async def test_delivers_once_in_order_batched_with_flags(rig: Rig) -> None:
    for k in range(0, 140, 20):
        await rig.journal.append_batch(rows(k, 20))
    last = rig.journal.last_seq
    async with running(rig.adapter()) as a:
        await async_wait_until(lambda: a.c.cursor >= last, 20)
        assert got(rig.platform) == expected(0, 140)
        assert rig.platform.posts == 280 // 50 + 1  # at most batch_points (50) readings a POST
        assert rig.platform.refused == []
        s = a.stats()
        assert (s["points_sent"], s["messages_sent"], s["state"], s["lag"]) == (280, 6, "ok", 0)
        # new samples while running go out too, after the rest
        await rig.journal.append_batch(rows(140, 5))
        await async_wait_until(lambda: len(rig.platform.readings) == 290, 20)
        assert got(rig.platform) == expected(0, 145)


async def test_wrong_key_holds_everything_then_delivers_once(rig: Rig) -> None:
    await rig.journal.append_batch(rows(0, 30))
    last = rig.journal.last_seq
    async with running(rig.adapter(key=bytes(16))) as a:
        await async_wait_until(lambda: len(rig.platform.refused) >= 2, 20)
        assert all(r.startswith("decrypt failed") for r in rig.platform.refused)
        assert rig.platform.readings == []
        assert a.c.cursor < last
        s = a.stats()
        assert s["state"] == "failing" and "4002" in s["last_error"] and "decrypt failed" in s["last_error"]
    async with running(rig.adapter()) as a:  # the right key, after a restart: the same cursor
        await async_wait_until(lambda: a.c.cursor >= last, 20)
    assert got(rig.platform) == expected(0, 30)


async def test_http_errors_and_platform_codes_are_retried(rig: Rig) -> None:
    rig.platform.fail(503, 2)
    rig.platform.fail(400, 1)
    rig.platform.refuse(500, 1)
    await rig.journal.append_batch(rows(0, 60))
    last = rig.journal.last_seq
    async with running(rig.adapter()) as a:
        await async_wait_until(lambda: a.c.cursor >= last, 30)
        assert got(rig.platform) == expected(0, 60)
        s = a.stats()
        assert s["resends"] == 4 and s["state"] == "ok" and s["failures"] == 4


async def test_no_answer_times_out_and_is_retried(rig: Rig) -> None:
    rig.platform.hang(30)
    await rig.journal.append_batch(rows(0, 10))
    last = rig.journal.last_seq
    async with running(rig.adapter()) as a:
        await async_wait_until(lambda: a.stats()["failures"] >= 2, 20)
        assert a.c.cursor < last and rig.platform.readings == []
        assert "ReadTimeout" in a.stats()["last_error"] or "timed out" in a.stats()["last_error"]
        rig.platform.hang(0)
        await async_wait_until(lambda: a.c.cursor >= last, 20)
    assert got(rig.platform) == expected(0, 10)


async def test_outage_then_backfill_in_order(rig: Rig, tmp_path: Path) -> None:
    await rig.journal.append_batch(rows(0, 20))
    first = rig.journal.last_seq
    async with running(rig.adapter()) as a:
        await async_wait_until(lambda: a.c.cursor >= first, 20)
        before = list(rig.platform.readings)
        port = rig.platform.port
        rig.platform.stop()  # the platform goes away; the plant goes on
        for k in range(20, 200, 20):
            await rig.journal.append_batch(rows(k, 20))
        last = rig.journal.last_seq
        await async_wait_until(lambda: a.stats()["failures"] >= 2, 20)
        assert a.stats()["state"] == "failing" and a.c.cursor < last
        rig.platform = receiver(port=port, cert_dir=tmp_path / "certs")  # back, same address and CA
        await async_wait_until(lambda: a.c.cursor >= last, 30)
        assert a.stats()["state"] == "ok"
    assert got(before + rig.platform.readings) == expected(0, 200)


def test_key_files_must_be_sm4_keys() -> None:
    assert hex_bytes(" 00112233445566778899AABBCCDDEEFF\n", "k") == KEY
    with pytest.raises(ValueError, match="16"):
        hex_bytes("0011", "key_file k")
    with pytest.raises(ValueError, match="hex"):
        hex_bytes("zz" * 16, "key_file k")


def test_safegw_check_points_at_the_bad_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f, code, out = check_regulators(tmp_path, capsys, """\
  - type: mem-iot
    name: dust
    url: https://iot.example.gov.cn/api/upload
    appid: APP-1
    secret_file: s
    key_file: k
    iv_file: i
    enterprise_code: "91340100MA2XXXXX0X"
    fields: {code: "point code"}
    points:
      - {channel: DUST-1, code: FC001}
""", channels=['{name: DUST-1, kind: dust, unit: "mg/m3", address: input:0, type: int16}'])
    assert code != 0, out
    assert f"{f}:19:" in out and "code" in out, out
