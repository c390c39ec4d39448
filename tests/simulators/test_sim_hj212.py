"""The HJ 212 platform simulator against frames published outside this project (see
tests/northbound/test_hj212_codec.py for the sources): it takes them, answers 9014 when
asked, refuses a bad CRC and garbage, and records why. Real TCP, in process."""

from __future__ import annotations

import asyncio

from gateway.core.aio import within
from simulators.hj212_platform import Hj212PlatformSim, PlatformServer, crc, packet

#: HJ 212-2017 appendix A's example (via dromara/hutool CRC16Test.ansiTest), Flag=5: wants 9014
APPENDIX = (b"##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;"
            b"CP=&&RtdInterval=30&&1C80\r\n")
#: liruoyu2008/HJ212Interpreter README.md
INTERPRETER = (b"##0162QN=20231008123340461;ST=22;CN=2011;PW=123456;MN=010000A8900016F000169DC0;Flag=5;"
               b"CP=&&DataTime=20231008123340;w01008-SampleTime=20231008123340,w01008-Rtd=123.456&&F441\r\n")


def test_published_crcs_and_packets() -> None:
    for frame in (APPENDIX, INTERPRETER):
        seg = frame[6:-6]
        assert crc(seg) == int(frame[-6:-2], 16)
        assert packet(seg.decode()) == frame


def test_the_simulator_takes_checks_and_answers_over_tcp() -> None:
    async def main() -> None:
        srv = PlatformServer(Hj212PlatformSim(name="p", protocol="hj212-platform"))
        ep = await srv.start()
        try:
            r, w = await asyncio.open_connection(ep["host"], ep["port"])
            bad_crc = INTERPRETER[:-6] + b"0000\r\n"
            w.write(b"noise" + APPENDIX + bad_crc)
            await w.drain()
            ack = await within(r.readuntil(b"\r\n"), 10)
            assert (b"QN=20160801085857223;ST=91;CN=9014;PW=100000;MN=010000A8900016F000169DC0;Flag=4;CP=&&&&"
                    in ack)
            w.write(INTERPRETER)
            await w.drain()
            ack2 = await within(r.readuntil(b"\r\n"), 10)
            assert b"QN=20231008123340461" in ack2
            assert [m["cn"] for m in srv.received] == ["1062", "2011"]
            assert srv.received[1]["cp"].endswith("w01008-Rtd=123.456")
            errs = " | ".join(srv.errors)
            assert "garbage" in errs and "CRC b'0000' wrong (want F441)" in errs, errs
            w.close()
        finally:
            await srv.stop()

    asyncio.run(main())
