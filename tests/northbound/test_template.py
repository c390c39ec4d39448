"""The template publisher (northbound/template) over MQTT with TLS to a real mosquitto,
from a real journal, read back by a receiving platform written here from the profile's
text: it decrypts with GmSSL (``gmssl_pyx``, not the OpenSSL safegw encrypts with) and
checks the signature with the standard library's hmac.

Primitives against published vectors: HMAC-SHA256, RFC 4231 test case 2; SM3, GB/T
32905-2016 appendix A example 1 ("abc"); AES-128, FIPS 197 appendix C.1; SM4, GB/T
32907-2016 appendix A example 1.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.core.config_regulators import TemplateAdapter, TemplateCrypto
from gateway.store.journal import Journal
from northbound.base import PointMap
from northbound.template.adapter import TemplatePublisher
from northbound.template.render import Sealer, compile_template
from simulators.province_platform import HttpsReceiver, Province
from tests.fixtures.helpers import async_wait_until
from tests.fixtures.mosquitto import Broker, Subscriber
from tests.fixtures.province import (
    ENTERPRISE,
    HAZARD,
    IV,
    KEY,
    PROFILES,
    SIGN,
    expected,
    profile_doc,
    rows,
    running,
    table,
)
from tests.fixtures.regcheck import check_regulators


def test_primitives_against_published_vectors() -> None:
    s = Sealer(TemplateCrypto(signature="hmac-sha256", sign_key_file=Path("k")), None, None, b"Jefe")
    assert s.sign("what do ya want for nothing?") == \
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    s3 = Sealer(TemplateCrypto(signature="sm3", sign_key_file=Path("k")), None, None, b"c")
    assert s3.sign("ab") == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"  # SM3("abc")
    aes = Sealer(TemplateCrypto(cipher="aes-ecb", key_file=Path("k")), bytes(range(16)), None, None)
    assert aes.encrypt(bytes.fromhex("00112233445566778899aabbccddeeff"))[:16].hex() == \
        "69c4e0d86a7b0430d8cdb78070b4c55a"
    k = bytes.fromhex("0123456789abcdeffedcba9876543210")
    sm4 = Sealer(TemplateCrypto(cipher="sm4-ecb", key_file=Path("k")), k, None, None)
    assert sm4.encrypt(k)[:16].hex() == "681edf34d206965e86b3e94f536e4246"


def test_templates_keep_types_and_fill_strings() -> None:
    r = compile_template({"a": "${value}", "b": "v=${value};t=${time}", "c": ["${items}"], "d": 7})
    assert r({"value": 1.5, "time": "T", "items": [1]}) == {"a": 1.5, "b": "v=1.5;t=T", "c": [[1]], "d": 7}


def mqtt_profiles() -> list[Path]:
    return [p for p in PROFILES if profile_doc(p).get("transport", "mqtt") == "mqtt"]


def load_profile(path: Path, broker: Broker) -> dict[str, Any]:
    """A shipped profile with this test's broker, channels and codes in its <...> places."""
    assert broker.certs is not None
    doc = profile_doc(path)
    doc.update(enterprise_code=ENTERPRISE, hazard_code=HAZARD, start="oldest", batch_points=40)
    doc["mqtt"] = {"host": broker.host, "port": broker.port, "tls": True, "ca_file": str(broker.certs.ca),
                   "client_id": "gw-prov", "topic": "prov/data", "qos": 1}
    doc["points"] = [{"channel": "GT-1", "code": "A0001", "decimals": 2},
                     {"channel": "PT-1", "code": "P0001", "scale": 1000, "decimals": 1}]
    for name, sec in [("alarm", doc.get("alarms")), ("heartbeat", doc.get("heartbeat")),
                      *((f"base-{k}", v) for k, v in (doc.get("base") or {}).items())]:
        if sec is not None:
            sec["topic"] = f"prov/{name}"
    return doc


class Platform:
    """The provincial platform's side (tests/northbound/province.py), reading the readings."""

    def __init__(self, broker: Broker | None, profile: dict[str, Any], source: Any = None):
        self.p = profile
        self.sub = source or Subscriber(broker, ["prov/#"], client_id="province",  # type: ignore[arg-type]
                                        clean_session=False)
        self.province = Province(profile, KEY, IV, SIGN)
        self.refused: list[str] = []

    def readings(self) -> list[tuple[str, Any, str, str]]:
        out = []
        got = self.province.sort(self.sub.messages)
        self.refused = self.province.refused
        for kind, msg in got:
            if kind != "data":
                continue
            items = self.province.items(kind, msg)
            assert 0 < len(items) <= 40
            for d in items:
                assert d["hazard"] == HAZARD
                out.append((d["code"], d["value"], d["time"], d["flag"]))
        return out


def publisher(profile: dict[str, Any], journal: Journal) -> TemplatePublisher:
    cfg = TemplateAdapter.model_validate(profile)
    return TemplatePublisher(cfg, journal, PointMap(cfg.points, table()), ["GT-1", "PT-1", "SW-1"],
                             sealer=Sealer(cfg.crypto, KEY, IV, SIGN))


def test_three_profiles_ship() -> None:
    assert [p.name for p in PROFILES] == ["anhui-db34t4020.yaml", "beijing-db11.yaml",
                                          "jiangsu-db32-1321.yaml"]
    assert [p.name for p in mqtt_profiles()] == ["anhui-db34t4020.yaml", "jiangsu-db32-1321.yaml"]


@pytest.mark.parametrize("path", mqtt_profiles(), ids=[p.stem for p in mqtt_profiles()])
async def test_profile_over_mqtt_tls_with_broker_outage(path: Path, mosquitto_factory: Callable[..., Broker],
                                                        tmp_path: Path) -> None:
    broker = mosquitto_factory(tls=True, persistence=True)
    profile = load_profile(path, broker)
    platform = Platform(broker, profile)
    j = Journal(tmp_path / "journal.db", sync="normal")
    try:
        for k in range(0, 100, 25):
            await j.append_batch(rows(k, 25))
        last = j.last_seq
        async with running(publisher(profile, j)) as pub:
            await async_wait_until(lambda: pub.c.cursor >= last, 20)
            await async_wait_until(lambda: len(platform.sub.messages) >= 5, 20)
            assert platform.readings() == expected(0, 100) and platform.refused == []
            s = pub.stats()
            assert s["points_sent"] == 200 and s["connected"]
            assert s["messages_sent"] == 5 + s["base_sent"]  # the base data went first
            broker.stop()  # the platform's broker goes away; the plant goes on
            await async_wait_until(lambda: not pub.stats()["connected"], 20)
            for k in range(100, 200, 25):
                await j.append_batch(rows(k, 25))
            last = j.last_seq
            assert pub.c.cursor < last
            broker.start()
            await async_wait_until(lambda: pub.c.cursor >= last, 30)
            await async_wait_until(lambda: len(platform.readings()) >= 400, 30)
            assert platform.readings() == expected(0, 200), "exactly once, in order, with flags"
            assert platform.refused == []
    finally:
        platform.sub.c.loop_stop()
        j.close()


def test_unknown_template_field_is_an_error_at_its_line(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    f, code, out = check_regulators(tmp_path, capsys, """\
  - type: template
    name: prov
    enterprise_code: "91320500MA1XXXXX0Y"
    mqtt: {host: 127.0.0.1, client_id: gw, topic: prov/data}
    item:
      quotaId: "${code}"
      value: "${valu}"
    message: {datas: "${items}"}
    points:
      - {channel: GT-1, code: A0001}
""")
    assert code != 0, out
    assert f"{f}:17:" in out and "${valu}" in out, out


async def test_profile_over_https_with_errors(tmp_path: Path) -> None:
    recv = HttpsReceiver(tmp_path / "certs")
    doc = profile_doc(PROFILES[0])
    for k in ("alarms", "heartbeat", "base"):  # readings only here: the rest is test_template_more.py
        doc.pop(k)
    doc.update(enterprise_code=ENTERPRISE, hazard_code=HAZARD, start="oldest", batch_points=40,
               transport="http",
               http={"url": recv.url, "ca_file": str(recv.ca), "timeout": "2s", "backoff_max": "300ms"})
    doc.pop("mqtt")
    doc["points"] = [{"channel": "GT-1", "code": "A0001", "decimals": 2},
                     {"channel": "PT-1", "code": "P0001", "scale": 1000, "decimals": 1}]
    platform = Platform(None, doc, source=recv)
    recv.faults = [503, 500, 400]
    j = Journal(tmp_path / "journal.db", sync="normal")
    try:
        for first in range(0, 100, 25):
            await j.append_batch(rows(first, 25))
        last = j.last_seq
        async with running(publisher(doc, j)) as pub:
            await async_wait_until(lambda: pub.c.cursor >= last, 20)
            assert platform.readings() == expected(0, 100) and platform.refused == []
            s = pub.stats()
            assert s["resends"] == 3 and s["messages_sent"] == 5 and s["state"] == "ok"
    finally:
        recv.stop()
        j.close()


def test_alarm_heartbeat_and_base_templates_checked_at_their_lines(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f, code, out = check_regulators(tmp_path, capsys, """\
  - type: template
    name: prov
    enterprise_code: "91320500MA1XXXXX0Y"
    mqtt: {host: 127.0.0.1, client_id: gw, topic: prov/data}
    item: {quotaId: "${code}"}
    message: {datas: "${items}"}
    alarms:
      message: {quotaId: "${code}", kind: "${alarm_kind}"}
    heartbeat:
      url: "https://platform.example/hb"
      message: {t: "${now}"}
    base:
      points:
        item: {quotaId: "${code}", up: "${h}", name: "${enterprise_name}"}
        message: {quotas: "${points}"}
    points:
      - {channel: GT-1, code: A0001}
""")
    assert code != 0, out
    assert f"{f}:18:" in out and "${alarm_kind}" in out, out  # not an alarm's field
    assert f"{f}:20:" in out and "give a topic, not a url" in out, out  # mqtt: a topic
    assert f"{f}:24:" in out and "${enterprise_name}" in out, out
    assert f"{f}:25:" in out and "must place ${items}" in out, out
