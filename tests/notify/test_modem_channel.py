"""The modem channel (gateway/notify/modem) against the modem simulator over a real pty pair.

What the simulator received is read back with tests/fixtures/tpdu.py, written from
3GPP TS 23.040 for these tests, and with smspdudecoder (PyPI), never with safegw's codec.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from smspdudecoder.easy import read_outgoing_sms

from gateway.core.config_modem import ModemChannelSettings
from gateway.notify.base import InboundChannel, Message, Recipient
from gateway.notify.modem import ModemChannel, build_channel
from simulators.modem import ModemServer, ModemSim
from simulators.modem_pdu import deliver_pdus
from tests.fixtures.helpers import async_wait_until
from tests.fixtures.tpdu import read_submit, reassemble

ALICE = Recipient("值班员 张三", phone="+8613800138000", can_ack=True)
ALARM_ZH = ("【二级报警】储罐区 可燃气体 GT-101 45.2 %LEL ≥ 40 %LEL，03:12:05。"
            "请立即到现场处置，回复 A7K3 确认。链接 https://gw.example/a/A7K3 ") * 2


def msg(short: str, key: str = "alarm-1") -> Message:
    return Message(key=key, kind="alarm", subject="报警", text=short, short=short, code="A7K3")


class Ctx:
    class cfg:  # stands in for the DaemonContext's config
        base_dir = Path(".")


Start = Callable[..., Awaitable[tuple[ModemServer, ModemChannel]]]


@pytest.fixture
async def modem(tmp_path: Path) -> AsyncIterator[Start]:
    """start(sim_kw, chan_kw) -> (simulator, started channel); everything stopped after."""
    made: list[tuple[ModemServer, ModemChannel]] = []

    async def start(sim: dict[str, Any] | None = None, chan: dict[str, Any] | None = None,
                    *, plug: bool = True) -> tuple[ModemServer, ModemChannel]:
        link = tmp_path / f"ttyModem{len(made)}"
        srv = ModemServer(ModemSim(name="modem", protocol="modem", link=link, **(sim or {})))
        if plug:
            await srv.start()
        settings = ModemChannelSettings.model_validate(
            {"type": "modem", "port": str(link), "timeout": "3s", **(chan or {})})
        ch = build_channel(settings, Ctx())
        made.append((srv, ch))
        await ch.start()
        return srv, ch

    yield start
    for srv, ch in made:
        await ch.stop()
        await srv.stop()


async def test_init_reads_sim_registration_signal_into_stats(modem: Start) -> None:
    srv, ch = await modem()
    assert await ch.modem.wait_ready(10)
    st = ch.stats()
    assert (st["state"], st["sim"], st["registration"], st["signal_dbm"], st["csq"]) == \
        ("ready", "ready", "home", -73, 20)  # TS 27.007 8.5: -113 + 2 x 20
    assert isinstance(ch, InboundChannel)
    for cmd in ("ATE0", "AT+CMEE=1", "AT+CPIN?", "AT+CMGF=0", "AT+CNMI=2,1,0,1,0", "AT+CSQ", "AT+CREG?"):
        assert cmd in srv.commands, cmd


async def test_chinese_long_sms_reaches_the_modem_as_valid_concatenated_ucs2(modem: Start) -> None:
    srv, ch = await modem()
    settled: list[tuple[str, bool]] = []
    ch.set_delivery_handler(lambda key, ok, detail: settled.append((key, ok)))
    assert await ch.modem.wait_ready(10)
    res = await ch.send(msg(ALARM_ZH), ALICE)
    assert res.ok, res
    assert len(srv.received) == -(-len(ALARM_ZH) // 67) > 1
    parts = [read_submit(r["pdu"]) for r in srv.received]
    assert {(p.da, p.dcs, p.status_report) for p in parts} == {("+8613800138000", 0x08, True)}
    assert reassemble(parts) == ALARM_ZH
    assert "".join(read_outgoing_sms(r["pdu"])["content"] for r in srv.received) == ALARM_ZH
    # one delivery report per part (TS 23.040 9.2.2.3), matched by TP-MR
    await async_wait_until(lambda: ch.delivery("alarm-1") == "delivered", 10, what="delivery reports")
    assert ch.stats()["delivered"] == len(parts)
    assert settled == [("alarm-1", True)]  # told once, when the last part's report came


async def test_plain_text_goes_as_one_gsm7_part(modem: Start) -> None:
    srv, ch = await modem(chan={"delivery_reports": False})
    assert await ch.modem.wait_ready(10)
    res = await ch.send(msg("GT-101 45.2 %LEL HH [A7K3] {tank farm} €"), Recipient("ops", phone="10086"))
    assert res.ok and res.detail.startswith("1 part")
    p = read_submit(srv.received[0]["pdu"])
    assert (p.dcs, p.da, p.da_type, p.status_report, p.text) == \
        (0x00, "10086", 0x81, False, "GT-101 45.2 %LEL HH [A7K3] {tank farm} €")
    assert "AT+CNMI=2,1,0,0,0" in srv.commands
    assert ch.delivery("alarm-1") == "unknown"


async def test_failed_delivery_report_is_reported(modem: Start) -> None:
    _, ch = await modem(sim={"report_status": 0x41})  # TS 23.040 9.2.3.15: incompatible destination
    assert await ch.modem.wait_ready(10)
    assert (await ch.send(msg("test"), ALICE)).ok
    await async_wait_until(lambda: ch.delivery("alarm-1") == "failed", 10, what="failed report")
    assert ch.stats()["delivery_failed"] == 1


async def test_text_beyond_max_parts_is_cut_and_says_so(modem: Start) -> None:
    srv, ch = await modem(chan={"max_parts": 2})
    assert await ch.modem.wait_ready(10)
    res = await ch.send(msg("报警" * 200), ALICE)
    assert res.ok and "cut to 2 parts" in res.detail
    text = reassemble([read_submit(r["pdu"]) for r in srv.received])
    assert text.endswith("…") and text.startswith("报警报警") and len(srv.received) == 2


async def test_replies_reach_the_handler_then_are_deleted(modem: Start) -> None:
    got: list[tuple[str, str]] = []

    async def handler(sender: str, text: str) -> None:
        got.append((sender, text))

    srv, ch = await modem(plug=True)
    ch.set_inbound(handler)
    assert await ch.modem.wait_ready(10)
    srv.inject("+8613900139000", "确认 A7K3")
    long = "收到，已到现场，正在处理 GT-101 泄漏，" * 8  # 3 parts, 16-bit reference (IEI 08)
    srv.inject("13700137000", long)
    await async_wait_until(lambda: len(got) == 2, 10, what="two replies")
    assert got == [("+8613900139000", "确认 A7K3"), ("13700137000", long)]
    await async_wait_until(lambda: not srv.store, 5, what="messages deleted from the SIM")
    assert ch.stats()["inbound"] == 2


async def test_messages_stored_while_down_are_read_at_start(tmp_path: Path, modem: Start) -> None:
    got: list[tuple[str, str]] = []

    async def handler(sender: str, text: str) -> None:
        got.append((sender, text))

    link = tmp_path / "ttyStored"
    srv = ModemServer(ModemSim(name="modem", protocol="modem", link=link))
    await srv.start()
    try:
        srv.inject("+8613900139000", "A7K3 ok")  # nobody listens yet: +CMTI goes nowhere
        ch = build_channel(ModemChannelSettings(type="modem", port=str(link)), Ctx())
        ch.set_inbound(handler)
        await ch.start()
        try:
            await async_wait_until(lambda: got, 10, what="the stored reply")
            assert got == [("+8613900139000", "A7K3 ok")]
        finally:
            await ch.stop()
    finally:
        await srv.stop()


async def test_unreadable_incoming_is_counted_deleted_and_does_not_block(modem: Start) -> None:
    got: list[tuple[str, str]] = []

    async def handler(sender: str, text: str) -> None:
        got.append((sender, text))

    srv, ch = await modem()
    ch.set_inbound(handler)
    assert await ch.modem.wait_ready(10)
    good = deliver_pdus("+8613800100500", "10086", "after", 1, 0.0)[0].hex().upper()
    srv.store[5] = (0, good[:-6])  # cut short: TP-UDL disagrees with the octets
    srv._urc('+CMTI: "SM",5')
    srv.inject("10086", "after")
    await async_wait_until(lambda: got, 10, what="the good message after the bad one")
    assert got == [("10086", "after")]
    assert ch.stats()["inbound_bad"] == 1
    await async_wait_until(lambda: not srv.store, 5, what="both deleted")


async def test_handler_failure_does_not_stop_intake(modem: Start) -> None:
    got: list[str] = []

    async def handler(sender: str, text: str) -> None:
        if text == "boom":
            raise RuntimeError("the service's bug")
        got.append(text)

    srv, ch = await modem()
    ch.set_inbound(handler)
    assert await ch.modem.wait_ready(10)
    srv.inject("10086", "boom")
    srv.inject("10086", "next")
    await async_wait_until(lambda: got == ["next"], 10, what="the next message")


@pytest.mark.parametrize(("answer", "ok", "detail"), [
    ("ring", True, "not answered"), ("answer", True, "answered"), ("busy", False, "BUSY"),
    ("unreachable", False, "NO CARRIER")])
async def test_voice_call(modem: Start, answer: str, ok: bool, detail: str) -> None:
    srv, ch = await modem(sim={"answer": answer}, chan={"mode": "voice", "ring": "1500ms"})
    assert await ch.modem.wait_ready(10)
    res = await ch.send(msg("call"), ALICE)
    assert (res.ok, detail in res.detail) == (ok, True), res
    assert res.retry == (not ok)
    assert srv.calls and srv.calls[0]["number"] == "+8613800138000"
    assert any(c.startswith("ATD+8613800138000;") for c in srv.commands)
    if answer != "unreachable":
        assert "ATH" in srv.commands  # hung up, whatever happened
    assert ch.stats()["calls"] == 1


async def test_sms_and_voice_channels_share_one_port(modem: Start, tmp_path: Path) -> None:
    _, sms = await modem()
    voice = build_channel(ModemChannelSettings(type="modem", name="call", port=sms.settings.port,
                                               mode="voice", ring="1s"), Ctx())
    await voice.start()
    try:
        assert voice.modem is sms.modem
        assert await sms.modem.wait_ready(10)
        assert (await sms.send(msg("a"), ALICE)).ok
        assert (await voice.send(msg("b"), ALICE)).ok
        assert sms.stats()["port_opens"] == 1
    finally:
        await voice.stop()
    assert sms.modem._tasks  # the SMS channel still runs


# --------------------------------------------------------------------------- faults

async def test_unplugged_modem_fails_sends_with_retry_and_comes_back(modem: Start) -> None:
    srv, ch = await modem()
    assert await ch.modem.wait_ready(10)
    await srv.set_fault("disconnect")
    await async_wait_until(lambda: ch.stats()["state"] == "no_port", 10, what="port lost")
    res = await ch.send(msg("lost?"), ALICE)
    assert not res.ok and res.retry and "unavailable" in res.detail
    assert ch.stats()["port_lost"] >= 1 and ch.stats()["sms_failed"] == 1
    await srv.set_fault(None)  # plugged back in
    assert await ch.modem.wait_ready(15)
    assert (await ch.send(msg("back"), ALICE)).ok
    assert read_submit(srv.received[-1]["pdu"]).text == "back"


async def test_port_missing_at_start_is_a_state_not_a_crash(modem: Start) -> None:
    _, ch = await modem(plug=False)
    await async_wait_until(lambda: ch.stats()["state"] == "no_port", 10, what="no_port state")
    res = await ch.send(msg("x"), ALICE)
    assert not res.ok and res.retry and "No such file" in ch.stats()["last_error"]


async def test_modem_answering_error(modem: Start) -> None:
    srv, ch = await modem()
    assert await ch.modem.wait_ready(10)
    await srv.set_fault("error")
    res = await ch.send(msg("x"), ALICE)
    assert not res.ok and res.retry and "ERROR" in res.detail and not res.ambiguous
    await srv.set_fault(None)
    assert (await ch.send(msg("y"), ALICE)).ok


async def test_missing_sim_is_reported_and_refused(modem: Start, tmp_path: Path) -> None:
    link = tmp_path / "ttyNoSim"
    srv = ModemServer(ModemSim(name="modem", protocol="modem", link=link))
    await srv.start()
    await srv.set_fault("nosim")
    ch = build_channel(ModemChannelSettings(type="modem", port=str(link)), Ctx())
    await ch.start()
    try:
        await async_wait_until(lambda: ch.stats()["state"] == "no_sim", 10, what="no_sim state")
        assert ch.stats()["sim"] == "no_sim"  # +CME ERROR: 10 (TS 27.007 9.2.1)
        res = await ch.send(msg("x"), ALICE)
        assert not res.ok and "no_sim" in res.detail and res.retry
        assert not srv.received
    finally:
        await ch.stop()
        await srv.stop()


def _pin_file(tmp_path: Path, pin: str) -> Path:
    p = tmp_path / "sim.pin"
    p.write_text(pin + "\n")
    os.chmod(p, 0o600)
    return p


async def test_pin_from_secret_file_unlocks_the_sim(modem: Start, tmp_path: Path) -> None:
    srv, ch = await modem(sim={"pin": "2468"}, chan={"pin_file": str(_pin_file(tmp_path, "2468"))})
    assert await ch.modem.wait_ready(10)
    assert 'AT+CPIN="2468"' in srv.commands
    assert "2468" not in str(ch.stats())


async def test_wrong_pin_is_tried_once_only(modem: Start, tmp_path: Path) -> None:
    srv, ch = await modem(sim={"pin": "2468"}, chan={"pin_file": str(_pin_file(tmp_path, "1111")),
                                                     "check_interval": "5s"})
    await async_wait_until(lambda: ch.stats()["sim"] == "pin_rejected", 10, what="pin_rejected")
    await ch.modem.refresh()  # a later check must not try the PIN again
    assert srv.tries == 2 and sum(c.startswith("AT+CPIN=") for c in srv.commands) == 1
    res = await ch.send(msg("x"), ALICE)
    assert not res.ok and not res.retry and "pin_rejected" in res.detail
    assert "1111" not in str(ch.stats())


async def test_pin_file_readable_by_others_is_refused(modem: Start, tmp_path: Path) -> None:
    p = _pin_file(tmp_path, "2468")
    os.chmod(p, 0o644)
    srv, ch = await modem(sim={"pin": "2468"}, chan={"pin_file": str(p)})
    await async_wait_until(lambda: ch.stats()["state"] == "pin_required", 10, what="pin_required")
    assert "readable by others" in ch.stats()["last_error"]
    assert not any(c.startswith("AT+CPIN=") for c in srv.commands)


async def test_no_network_is_a_cms_error_worth_retrying(modem: Start) -> None:
    _, ch = await modem(sim={"registration": 2})  # searching
    await async_wait_until(lambda: ch.stats()["state"] == "not_registered", 10, what="not_registered")
    res = await ch.send(msg("x"), ALICE)
    assert not res.ok and res.retry and "+CMS ERROR: 331" in res.detail and "no network service" in res.detail


async def test_silent_modem_times_out_and_says_whether_the_sms_may_have_gone(modem: Start) -> None:
    srv, ch = await modem(chan={"timeout": "1s"})
    assert await ch.modem.wait_ready(10)
    await srv.set_fault("silent")  # no prompt: the PDU never went out
    res = await ch.send(msg("x"), ALICE)
    assert not res.ok and res.retry and not res.ambiguous and "prompt" in res.detail
    assert not srv.received


async def test_answer_lost_after_the_pdu_went_out_is_ambiguous(modem: Start) -> None:
    srv, ch = await modem(chan={"timeout": "1s"})
    assert await ch.modem.wait_ready(10)
    await srv.set_fault("stall")  # takes the PDU, never answers +CMGS
    res = await ch.send(msg("maybe"), ALICE)
    assert not res.ok and res.retry and res.ambiguous, res
    assert [read_submit(r["pdu"]).text for r in srv.received] == ["maybe"]  # it did go out
    await srv.set_fault(None)
    assert (await ch.send(msg("sure"), ALICE)).ok


async def test_recipient_without_phone_is_declined(modem: Start) -> None:
    _, ch = await modem()
    nobody = Recipient("经理", email="m@example.com")
    assert not ch.accepts(nobody) and ch.accepts(ALICE)
    res = await ch.send(msg("x"), nobody)
    assert not res.ok and not res.retry


async def test_hung_modem_is_seen_by_the_status_check_and_reopened(modem: Start) -> None:
    srv, ch = await modem(chan={"timeout": "1s", "check_interval": "5s"})
    assert await ch.modem.wait_ready(10)
    await srv.set_fault("silent")
    await async_wait_until(lambda: ch.stats()["state"] == "not_answering", 15, what="hung state")
    assert "no answer" in ch.stats()["last_error"]
    await srv.set_fault(None)
    assert await ch.modem.wait_ready(15)
    assert ch.stats()["port_opens"] >= 2
    assert (await ch.send(msg("alive"), ALICE)).ok


def test_settings_are_strict() -> None:
    from pydantic import ValidationError

    ok = ModemChannelSettings.model_validate({"type": "modem", "port": "/dev/ttyUSB2", "ring": "45s"})
    assert (ok.ring, ok.timeout, ok.mode, ok.max_parts) == (45.0, 30.0, "sms", 6)
    for bad, word in ((
        {"port": "/dev/ttyUSB2", "ring": "10m"}, "ring"), ({"port": "/dev/ttyUSB2", "mode": "fax"}, "mode"),
            ({"port": "/dev/ttyUSB2", "pin": "1234"}, "pin"), ({}, "port"),
            ({"port": "/dev/ttyUSB2", "max_parts": 0}, "max_parts"), ({"port": ""}, "port"),
            ({"port": "/dev/ttyUSB2", "name": "短信/sms"}, "name")):
        with pytest.raises(ValidationError) as e:
            ModemChannelSettings.model_validate({"type": "modem", **bad})
        assert word in str(e.value)


async def test_the_pin_never_appears_in_errors(tmp_path: Path) -> None:
    from gateway.notify.modem.at import AtPort, CommandTimeout

    srv = ModemServer(ModemSim(name="modem", protocol="modem", link=tmp_path / "tty", pin="2468"))
    await srv.start()
    port = AtPort(str(tmp_path / "tty"), 115200, lambda line, pdu: None, lambda why: None)
    await port.open()
    try:
        await srv.set_fault("silent")
        with pytest.raises(CommandTimeout) as e:
            await port.command('AT+CPIN="2468"', 0.3)
        assert "2468" not in str(e.value) and 'AT+CPIN="****"' in str(e.value)
    finally:
        await port.close()
        await srv.stop()


async def test_modem_without_status_reports_still_sends(modem: Start) -> None:
    srv, ch = await modem(sim={"cnmi_reports": False})
    assert await ch.modem.wait_ready(10)
    assert ch.stats()["delivery_reports"] == "unsupported"
    assert "AT+CNMI=2,1,0,0,0" in srv.commands
    assert (await ch.send(msg("no report"), ALICE)).ok
    assert not read_submit(srv.received[0]["pdu"]).status_report  # not asked for in vain
    assert ch.delivery("alarm-1") == "unknown"


async def test_a_lost_new_message_indication_is_made_up_by_the_listing(modem: Start) -> None:
    got: list[tuple[str, str]] = []

    async def handler(sender: str, text: str) -> None:
        got.append((sender, text))

    srv, ch = await modem()
    ch.set_inbound(handler)
    assert await ch.modem.wait_ready(10)
    srv.store[7] = (0, deliver_pdus("+8613800100500", "10086", "A7K3", 9, 0.0)[0].hex().upper())
    await ch.modem.refresh()  # the status check lists the store: no +CMTI was ever sent
    await async_wait_until(lambda: got, 10, what="the unannounced reply")
    assert got == [("10086", "A7K3")]


async def test_modem_unplugged_after_taking_the_pdu_is_ambiguous(modem: Start) -> None:
    import asyncio

    srv, ch = await modem(chan={"timeout": "10s"})
    assert await ch.modem.wait_ready(10)
    await srv.set_fault("stall")
    sending = asyncio.create_task(ch.send(msg("gone?"), ALICE))
    await async_wait_until(lambda: srv.received, 5, what="the PDU at the modem")
    await srv.set_fault("disconnect")  # pulled before it answered +CMGS
    res = await sending
    assert not res.ok and res.retry and res.ambiguous and "lost" in res.detail, res


async def test_registered_factory_builds_a_channel(tmp_path: Path) -> None:
    import importlib

    from gateway.notify.base import CHANNEL_TYPES, Channel

    module, _, factory = CHANNEL_TYPES["modem"].partition(":")
    build = getattr(importlib.import_module(module), factory)
    ch = build(ModemChannelSettings(type="modem", port=str(tmp_path / "none")), Ctx())
    assert isinstance(ch, Channel) and isinstance(ch, InboundChannel) and isinstance(ch, ModemChannel)
    assert (ch.type, ch.name) == ("modem", "modem")


async def test_a_step_asking_for_voice_gets_the_sms_then_the_call(modem: Start) -> None:
    """The notify service marks such a message with fields["voice"] (gateway/notify/service.py)."""
    srv, ch = await modem(sim={"answer": "answer"}, chan={"ring": "2s"})
    assert await ch.modem.wait_ready(10)
    m = Message(key="esc-3", kind="escalation", subject="升级", text="GT-101 报警未确认",
                short="GT-101 报警未确认", fields={"voice": True})
    res = await ch.send(m, ALICE)
    assert res.ok and "call: answered" in res.detail, res
    assert [read_submit(r["pdu"]).text for r in srv.received] == ["GT-101 报警未确认"]
    sms_at = next(i for i, c in enumerate(srv.commands) if c.startswith("AT+CMGS"))
    dial_at = next(i for i, c in enumerate(srv.commands) if c.startswith("ATD"))
    assert sms_at < dial_at  # the SMS first: the phone shows why it rings


async def test_a_call_cut_by_the_callers_deadline_still_hangs_up(modem: Start) -> None:
    from gateway.core.aio import within

    srv, ch = await modem(chan={"mode": "voice", "ring": "20s"})
    assert await ch.modem.wait_ready(10)
    with pytest.raises(TimeoutError):
        await within(ch.send(msg("call"), ALICE), 1.0)
    assert srv.calls and srv.calls[0]["hung_up"]  # ATH went out before the cancel finished
