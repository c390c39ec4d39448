"""Modbus edge cases a commissioning engineer met: the sign of a zero, scaling that
overflows float64, and the byte order of a register bit."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from drivers.modbus.codec import ChannelSlot, Layout, encode, encode_raw, words_to_bytes
from drivers.modbus.plan import Point, plan
from gateway.config import loads
from gateway.core.batch import Quality
from gateway.core.configcheck import ConfigError


def _buf(*words: int) -> np.ndarray:
    return np.frombuffer(words_to_bytes(list(words)), dtype=np.uint8)


def test_negative_zero_keeps_its_sign_next_to_a_scaled_channel() -> None:
    # one scaled channel makes the whole layout scale: -0.0 + 0.0 used to give +0.0
    layout = Layout([ChannelSlot(0, "float32"), ChannelSlot(4, "int16", scale=0.1),
                     ChannelSlot(6, "float32", scale=2.0)])
    out = layout.decode(_buf(*encode(-0.0, "float32"), 5, *encode(-0.0, "float32")))
    assert math.copysign(1.0, out[0]) == -1.0 and math.copysign(1.0, out[2]) == -1.0
    assert out[1] == pytest.approx(0.5)
    with_offset = Layout([ChannelSlot(0, "float32", offset=1.0)]).decode(_buf(*encode_raw(-0.0, "float32")))
    assert with_offset[0] == 1.0


def test_scaling_overflow_is_flagged_not_warned() -> None:
    layout = Layout([ChannelSlot(0, "float32", scale=1e300), ChannelSlot(4, "float32", scale=1e300)])
    buf = _buf(*encode_raw(3.0e38, "float32"), *encode_raw(1.0, "float32"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning would raise here
        values = layout.decode(buf)
    assert layout.overflowed.tolist() == [True, False]
    q = layout.quality(values, np.zeros(2, dtype=np.uint8))
    assert q.tolist() == [Quality.SENSOR_FAULT, Quality.GOOD]


def _bit_values(byte_order: str, word: int) -> list[float]:
    points = [Point.from_address(1, f"holding:20.{b}", "bool", byte_order) for b in range(16)]
    p = plan(points)
    return p.layout.decode(_buf(word)).tolist()


def test_register_bit_badc_is_the_value_bit_of_a_low_byte_first_device() -> None:
    # bit 3 and bit 12 set in the register's value: an ABCD device sends 0x1008, a BADC
    # one the same value with its bytes swapped; both read bits 3 and 12
    value = (1 << 3) | (1 << 12)
    swapped = encode_raw(value, "uint16", "BADC")[0]
    assert swapped == 0x0810
    expect = [1.0 if b in (3, 12) else 0.0 for b in range(16)]
    assert _bit_values("ABCD", value) == expect
    assert _bit_values("BADC", swapped) == expect


@pytest.mark.parametrize("order", ["CDAB", "DCBA"])
def test_check_refuses_a_word_order_on_a_register_bit(tmp_path: Path, order: str) -> None:
    text = f"""gateway: {{id: g, site: S, state_dir: "{tmp_path}"}}
devices:
  - name: plc
    protocol: modbus-tcp
    host: 127.0.0.1
    channels:
      - {{name: LSHH-1, kind: level, address: holding:20.3, type: bool, byte_order: {order}}}
      - {{name: LSHH-2, kind: level, address: holding:20.4, type: bool, byte_order: BADC}}
"""
    with pytest.raises(ConfigError) as e:
        loads(text, "plant.yaml")
    lines = [ln for ln in e.value.lines if "byte_order" in ln or "word order" in ln]
    assert len(lines) == 1, e.value.lines
    assert lines[0].startswith("plant.yaml:7:"), lines
    assert "a bool is one bit: word orders CDAB/DCBA" in lines[0]


def test_driver_names_the_overflowing_channel_and_its_scale_without_keeping_points() -> None:
    # the driver plans from its channels' specs and keeps only the plan's arrays
    from drivers.modbus.driver import ModbusTcpDriver
    from gateway.core.channels import ChannelTable

    cfg = loads("gateway: {id: gw, site: S}\ndevices:\n"
                "  - {name: d, protocol: modbus-tcp, host: 127.0.0.1, port: 1, channels: [\n"
                "      {name: big, kind: other, address: 'holding:0', type: float32, scale: 1.0e300},\n"
                "      {name: small, kind: other, address: 'holding:2', type: float32, scale: 2}]}\n",
                "plant.yaml")
    table = ChannelTable.from_config(cfg)
    drv = ModbusTcpDriver(cfg.devices[0], table.channels)
    assert not hasattr(drv, "points") and not hasattr(drv.plan, "points")
    assert not hasattr(drv.plan.layout, "slots")
    buf = _buf(*encode_raw(3.0e38, "float32"), *encode_raw(1.5, "float32"))
    values = drv.plan.layout.decode(buf)
    assert values[1] == 3.0
    drv._note_overflows(drv.plan.layout.overflowed)
    assert drv.info["channel_errors"] == {"big": "raw × scale 1e+300 overflows float64"}
    assert drv.info["scale_overflows"] == 1
    drv._split.add(1)  # as after an "illegal data address": planned again from the specs
    assert len(drv._make_plan().requests) == 2
