"""``safegw points import|export``: point tables in and out.

The address forms follow the Modbus data model: MODBUS Application Protocol Specification
V1.1b3, §4.3-4.4 (data elements numbered 1..n, addressed in the PDU as 0..n-1) and the
Modicon convention the contractors' tables use (0xxxx coils, 1xxxx discrete inputs, 3xxxx
input registers, 4xxxx holding registers; 40001 is holding register 0). The xlsx files
here are written by openpyxl, not by this project's writer, for the import cases.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import openpyxl
import pytest

from gateway.cli import main
from gateway.config import load
from gateway.core.channels import ChannelTable
from gateway.core.config import ModbusChannel, parse_modbus_address
from gateway.points.cli import import_table
from gateway.points.convert import RowError, parse_address
from gateway.points.tables import Limits, TableError, read_table
from tests.fixtures import xlsx

ROOT = Path(__file__).resolve().parents[2]

PLANT = """\
gateway: {id: gw-rt, site: "91370100MA3C000000"}
devices:
  - name: tank-farm-plc
    protocol: modbus-tcp
    host: 10.0.0.5
    port: 1502
    unit: 7
    poll: 500ms
    timeout: 250ms
    channels:
      - name: T101.level
        kind: level
        unit: m
        address: holding:100
        type: float32
        byte_order: CDAB
        range: [0, 12]
        alarms: {hh: 11.0, h: 10.5, l: 1.0, deadband: 0.05, delay: 5s, roc: 0.5}
        hazard_source: HS-01
        area: "罐区, 东"
        description: "储罐 T101 液位, radar"
      - {name: T101.temp, kind: temperature, unit: "°C", address: "input:0x10", type: int16, scale: 0.1,
         offset: -40, range: [-40, 125]}
      - {name: T101.flow, kind: flow, unit: "m3/h", address: holding:200, type: float64, byte_order: DCBA}
      - {name: P1.run, kind: status, address: coil:3, type: bool}
      - {name: P1.fault, kind: status, address: holding:20.3, type: bool, alarms: {}}
      - {name: T101.raw, kind: other, address: holding:300, type: uint32, byte_order: BADC, scale: 1.0}
  - name: gas-bus-1
    protocol: modbus-rtu
    port: /dev/ttyUSB0
    baudrate: 19200
    parity: E
    poll: 2s
    units:
      - unit: 3
        channels:
          - {name: GT-301, kind: gas, gas: combustible, unit: "%LEL", address: input:0, type: int16,
             scale: 0.1, preset: gbt50493}
          - {name: GT-302, kind: gas, gas: H2S, unit: ppm, address: input:1, alarms: {h: 10, hh: 20},
             exposure: {twa: 10, stel: 15}}
      - unit: 4
        channels:
          - {name: OX-401, kind: oxygen, unit: "%VOL", address: discrete:2, type: bool, maintenance: true}
"""


def _channels(cfg_path: Path) -> list[tuple]:
    """The channel table, each row with its full spec: what the daemon would poll. The
    address is compared as (function, register, bit): ``input:0x10`` comes back ``input:16``."""
    table = ChannelTable.from_config(load(cfg_path))
    return [
        (
            c.index,
            c.name,
            c.kind,
            c.unit,
            c.device,
            c.unit_id,
            c.spec.model_dump() | {"address": parse_modbus_address(c.spec.address)},  # type: ignore[attr-defined]
        )
        for c in table.channels
    ]


def _devices(cfg_path: Path) -> list[dict]:
    out = []
    for d in load(cfg_path).devices:
        data = d.model_dump()
        data.pop("channels", None)
        data.pop("units", None)
        out.append(data)
    return out


@pytest.mark.parametrize("fmt", ["xlsx", "csv"])
def test_round_trip_gives_the_same_channels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    src = tmp_path / "plant.yaml"
    src.write_text(PLANT, encoding="utf-8")
    table, back = tmp_path / f"points.{fmt}", tmp_path / "devices.yaml"
    assert main(["points", "export", "-c", str(src), "-o", str(table)]) == 0
    assert os.stat(table).st_mode & 0o777 == 0o600
    assert (
        main(
            [
                "points",
                "import",
                str(table),
                "-o",
                str(back),
                "--gateway-id",
                "gw-rt",
                "--site",
                "91370100MA3C000000",
            ]
        )
        == 0
    )
    assert os.stat(back).st_mode & 0o777 == 0o600
    assert main(["check", "-c", str(back)]) == 0
    assert "ok: 2 devices, 9 channels" in capsys.readouterr().out
    assert _channels(back) == _channels(src)
    assert _devices(back) == _devices(src)


def test_round_trip_through_the_installed_command(tmp_path: Path) -> None:
    """The same, as a user runs it: `safegw` in a subprocess, then `safegw check`."""
    src = tmp_path / "plant.yaml"
    src.write_text(PLANT, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def safegw(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    assert safegw("points", "export", "-c", str(src), "-o", str(tmp_path / "t.xlsx")).returncode == 0
    r = safegw("points", "import", str(tmp_path / "t.xlsx"), "-o", str(tmp_path / "d.yaml"))
    assert r.returncode == 0, r.stderr
    r = safegw("check", "-c", str(tmp_path / "d.yaml"))
    assert r.returncode == 0 and "9 channels" in r.stdout, r.stdout + r.stderr


def _xlsx(path: Path, rows: Sequence[Sequence[object]], title: str = "点位表") -> Path:
    xlsx.workbook(rows, title).save(path)
    return path


CN_HEADER: list[object] = [
    "位号",
    "设备",
    "IP地址",
    "从站地址",
    "寄存器地址",
    "功能码",
    "数据类型",
    "字节序",
    "系数",
    "量程",
    "单位",
    "监测类型",
    "一级报警值(高)",
    "二级报警值(高)",
    "区域",
    "重大危险源编码",
]


def _good_cn_row(name: str = "GT-101", reg: object = 40001, fc: object = None) -> list[object]:
    return [
        name,
        "gas-ctl-1",
        "10.0.0.8",
        1,
        reg,
        fc,
        "INT16",
        "ABCD",
        0.1,
        "0~100",
        "%LEL",
        "可燃气体",
        20,
        40,
        "罐区",
        "HS-01",
    ]


def test_chinese_table_with_a_title_row(tmp_path: Path) -> None:
    t = _xlsx(
        tmp_path / "t.xlsx",
        [
            ["某化工厂 可燃气体点位表"],
            CN_HEADER,
            _good_cn_row(),
            _good_cn_row("GT-102", 2, "04"),
            _good_cn_row("GT-103", "0x0A", 3),
        ],
    )
    res = import_table(str(t))
    assert res.errors == []
    dev = res.config["devices"][0]
    assert dev["host"] == "10.0.0.8" and dev["unit"] == 1
    assert [c["address"] for c in dev["channels"]] == ["holding:0", "input:2", "holding:10"]
    ch = dev["channels"][0]
    assert ch["kind"] == "gas" and ch["gas"] == "combustible" and ch["range"] == [0, 100]
    assert ch["alarms"] == {"hh": 40, "h": 20} and ch["hazard_source"] == "HS-01" and ch["area"] == "罐区"


@pytest.mark.parametrize(
    ("register", "function", "bit", "expected"),
    [
        ("40001", "", "", "holding:0"),  # Modicon: 4xxxx holding, 1-based
        ("40101", "", "", "holding:100"),
        ("400101", "", "", "holding:100"),  # 6-digit form
        ("30001", "", "", "input:0"),
        ("10008", "", "", "discrete:7"),
        ("00004", "", "", "coil:3"),
        ("100", "3", "", "holding:100"),  # 0-based with a function code
        ("100", "04", "", "input:100"),
        ("0", "1", "", "coil:0"),
        ("0x64", "3", "", "holding:100"),  # hexadecimal
        ("64H", "4", "", "input:100"),
        ("0x0014", "3", "3", "holding:20.3"),  # a bit of a register
        ("40021.3", "", "", "holding:20.3"),
        ("holding:7", "", "", "holding:7"),  # the config's own form
    ],
)
def test_address_forms(register: str, function: str, bit: str, expected: str) -> None:
    assert parse_address(register, function, bit) == expected


@pytest.mark.parametrize(
    ("register", "function", "bit", "col", "message"),
    [
        ("100", "", "", "register", "'100' has no function: give a function code, or write it 40001-style"),
        ("0x64", "", "", "register", "'0x64' is hexadecimal: give its function code too"),
        ("40000", "", "", "register", "'40000': 40001-style numbers start at 1 (40001 is holding:0)"),
        ("70000", "3", "", "register", "'70000': register 70000 is beyond 65535"),
        ("100", "6", "", "function", "'6' is not a function code"),
        ("5", "1", "2", "bit", "bit 2: a bit .0-.15 applies to holding/input registers only"),
        ("R100", "3", "", "register", "'R100' is not a register address"),
    ],
)
def test_bad_addresses(register: str, function: str, bit: str, col: str, message: str) -> None:
    with pytest.raises(RowError) as e:
        parse_address(register, function, bit)
    assert e.value.col == col and str(e.value).startswith(message)


# Broken point tables: (rows after the header, the exact errors). Header: CN_HEADER.
# Columns: A 位号, B 设备, C IP地址, D 从站地址, E 寄存器地址, F 功能码, G 数据类型, H 字节序, I 系数,
# J 量程, K 单位, L 监测类型, M 一级报警值(高), N 二级报警值(高), O 区域, P 重大危险源编码.
def _with(**cells: object) -> list[object]:
    row = _good_cn_row()
    for letter, v in cells.items():
        row[ord(letter) - ord("A")] = v
    return row


BROKEN = [
    (
        "type typo",
        [_with(G="flaot")],
        ["T.xlsx:点位表!G3: column 'data type': 'flaot' is not a type; did you mean 'float32'?"],
    ),
    (
        "byte order typo",
        [_with(H="CDBA")],
        ["T.xlsx:点位表!H3: column 'byte order': 'CDBA' is not a byte order; did you mean 'CDAB'?"],
    ),
    ("no name", [_with(A=None)], ["T.xlsx:点位表!A3: column 'name': empty; every point needs a name (位号)"]),
    (
        "kind unknown",
        [_with(L="gass")],
        ["T.xlsx:点位表!L3: column 'kind': 'gass' is not a kind; did you mean 'gas'?"],
    ),
    ("scale not a number", [_with(I="0.1x")], ["T.xlsx:点位表!I3: column 'scale': '0.1x' is not a number"]),
    (
        "range reversed",
        [_with(J="100~0")],
        ["T.xlsx:点位表!J3: column 'range': range must be [low, high] with low < high, got [100.0, 0.0]"],
    ),
    (
        "range garbage",
        [_with(J="full scale")],
        ["T.xlsx:点位表!J3: column 'range': 'full scale' is not a range; write low~high, e.g. 0~100"],
    ),
    (
        "bad register on row 4 only",
        [_with(), _with(A="GT-102", E="4x0001")],
        [
            "T.xlsx:点位表!E4: column 'register': '4x0001' is not a register address (40001, 100 with a "
            "function code, 0x64 or holding:100)"
        ],
    ),
    (
        "duplicate name",
        [_with(), _with(E=40002)],
        ["T.xlsx:点位表!A4: column 'name': 'GT-101' is already the name of row 3"],
    ),
    (
        "device's IP differs",
        [_with(), _with(A="GT-102", E=40002, C="10.0.0.9")],
        ["T.xlsx:点位表!C4: column 'host': '10.0.0.9' differs from row 3 ('10.0.0.8') of device gas-ctl-1"],
    ),
    (
        "Chinese device name",
        [_with(B="一号控制器")],
        [
            "T.xlsx:点位表!B3: column 'device': '一号控制器' is not a device name: letters, digits and . _ -, at "  # noqa: E501
            "most 64 (put a Chinese name in the description)"
        ],
    ),
    (
        "unit id",
        [_with(D="abc")],
        ["T.xlsx:点位表!D3: column 'unit id': 'abc' is not a unit id (0-255; RTU 1-247)"],
    ),
    ("alarm not a number", [_with(N="高")], ["T.xlsx:点位表!N3: column 'hh': '高' is not a number"]),
    (
        "two bad rows, both reported",
        [_with(G="flaot"), _with(A="GT-102", E=40002, F=9)],
        [
            "T.xlsx:点位表!G3: column 'data type': 'flaot' is not a type; did you mean 'float32'?",
            "T.xlsx:点位表!F4: column 'function code': '9' is not a function code; give 1 (coil), 2 (discrete), "  # noqa: E501
            "3 (holding) or 4 (input)",
        ],
    ),
]


@pytest.mark.parametrize(("rows", "expected"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_tables(
    tmp_path: Path,
    rows: list[list[object]],
    expected: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    _xlsx(tmp_path / "T.xlsx", [["title"], CN_HEADER, *rows])
    assert main(["points", "import", "T.xlsx", "-o", "out.yaml"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert [e for e in err if e.startswith("T.xlsx")] == expected
    assert "nothing written" in err[-1]
    assert not (tmp_path / "out.yaml").exists()


def test_check_errors_across_rows_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rows each fine, the devices not: a float32 over a register another channel reads."""
    t = _xlsx(tmp_path / "T.xlsx", [CN_HEADER, _with(G="float32"), _with(A="GT-102", E=40002)])
    assert main(["points", "import", str(t), "-o", str(tmp_path / "o.yaml")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        f"{t}:点位表!E3: column 'register': register holding:1 is already taken by 'GT-101', a "
        "float32 at holding:0 that spans 2 registers (0-1); move this channel to holding:2 or "
        "later, or check the type of 'GT-101' (as config)"
    )
    assert not (tmp_path / "o.yaml").exists()


def test_partial_writes_the_good_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = _xlsx(
        tmp_path / "T.xlsx",
        [CN_HEADER, _with(), _with(A="GT-102", E=40002, G="flaot"), _with(A="GT-103", E=40003)],
    )
    out = tmp_path / "o.yaml"
    assert main(["points", "import", str(t), "--partial", "-o", str(out)]) == 0
    cap = capsys.readouterr()
    assert "G3: column 'data type'" in cap.err
    assert "1 devices, 2 channels; 1 rows left out: 3" in cap.out
    assert main(["check", "-c", str(out)]) == 0
    assert [c.name for c in ChannelTable.from_config(load(out)).channels] == ["GT-101", "GT-103"]


def test_mapping_file_for_a_contractors_headers(tmp_path: Path) -> None:
    t = tmp_path / "c.csv"
    with open(t, "w", encoding="gb18030", newline="") as f:  # Excel's CSV in China: GBK, not UTF-8
        w = csv.writer(f)
        w.writerow(["测点编号", "控制器IP", "Modbus寄存器", "格式", "测点种类", "仪表单位"])
        w.writerow(["TT-1", "10.1.1.1", "30005", "float", "温度", "°C"])
    m = tmp_path / "map.yaml"
    m.write_text(
        'columns: {"测点编号": name, "控制器IP": host, "Modbus寄存器": register, "格式": data type,\n'
        '          "测点种类": kind, "仪表单位": engineering unit}\n',
        encoding="utf-8",
    )
    out = tmp_path / "o.yaml"
    assert main(["points", "import", str(t), "--map", str(m), "-o", str(out)]) == 0
    ch = load(out).devices[0].channels[0]  # type: ignore[union-attr]
    assert isinstance(ch, ModbusChannel)
    assert (ch.name, ch.address, ch.type, ch.kind, ch.unit) == (
        "TT-1",
        "input:4",
        "float32",
        "temperature",
        "°C",
    )


def test_bad_mapping_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = tmp_path / "map.yaml"
    m.write_text('columns: {"测点编号": nmae}\n', encoding="utf-8")
    t = _xlsx(tmp_path / "T.xlsx", [CN_HEADER, _with()])
    assert main(["points", "import", str(t), "--map", str(m), "-o", str(tmp_path / "o")]) == 2
    assert "columns.测点编号: 'nmae' is not a column" in capsys.readouterr().err


def test_no_header_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = _xlsx(tmp_path / "T.xlsx", [["a", "b"], [1, 2]])
    assert main(["points", "import", str(t), "-o", str(tmp_path / "o")]) == 2
    assert "no header row in the first ten rows" in capsys.readouterr().err


def test_header_without_register(tmp_path: Path) -> None:
    t = _xlsx(tmp_path / "T.xlsx", [["位号", "数据类型"], ["A", "int16"]])
    assert import_table(str(t)).errors == [
        f"{t}:点位表!A1: the header row has no 'register' column (known as: register, register address, "
        "address, 寄存器地址, 寄存器, 地址, 点位地址; or map yours with --map)"
    ]


def test_sheet_choice(tmp_path: Path) -> None:
    t = tmp_path / "T.xlsx"
    wb = openpyxl.Workbook()
    assert wb.active is not None
    wb.active.title = "封面"
    ws = wb.create_sheet("气体")
    ws.append(CN_HEADER)
    ws.append(_with())
    wb.save(t)
    assert len(import_table(str(t), "气体").config["devices"]) == 1
    with pytest.raises(TableError, match="no sheet 'gas'; sheets: 封面, 气体"):
        import_table(str(t), "gas")


# ---------------------------------------------------------------- bounds, before work


def test_bounds(tmp_path: Path) -> None:
    t = _xlsx(tmp_path / "T.xlsx", [CN_HEADER] + [_with(A=f"G{i}", E=40001 + i) for i in range(50)])
    size = os.stat(t).st_size
    with pytest.raises(TableError, match=f"{size} bytes; a point table may have at most 1000"):
        read_table(t, limits=Limits(max_file=1000))
    with pytest.raises(TableError, match=r"unpacks to \d+ bytes; at most 2000"):
        read_table(t, limits=Limits(max_unpacked=2000))
    with pytest.raises(TableError, match="more than 10 rows; split the table"):
        read_table(t, limits=Limits(max_rows=10))
    c = tmp_path / "long.csv"
    c.write_text("位号,寄存器地址\n" + "x" * 2000 + ",40001\n", encoding="utf-8")
    with pytest.raises(TableError, match="a cell is limited to 1000 characters"):
        read_table(c)
    _xlsx(tmp_path / "L.xlsx", [CN_HEADER, _with(A="y" * 1500)])
    with pytest.raises(TableError, match=r"L.xlsx:点位表!A2: cell of 1500 characters; at most 1000"):
        read_table(tmp_path / "L.xlsx")


def test_not_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.xlsx").write_bytes(b"PK\x03\x04 not really")
    (tmp_path / "x.xls").write_bytes(b"\xd0\xcf\x11\xe0")
    assert main(["points", "import", str(tmp_path / "x.xlsx"), "-o", str(tmp_path / "o")]) == 2
    assert main(["points", "import", str(tmp_path / "x.xls"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not an xlsx file (not a zip archive)" in err and "save .xls as .xlsx" in err
    assert not (tmp_path / "o").exists()


def test_export_keeps_settings_without_a_column(tmp_path: Path) -> None:
    src = tmp_path / "plant.yaml"
    src.write_text(PLANT, encoding="utf-8")
    assert main(["points", "export", "-c", str(src), "-o", str(tmp_path / "t.csv")]) == 0
    with open(tmp_path / "t.csv", encoding="utf-8-sig", newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert json.loads(rows["T101.level"]["extra"]) == {"alarms": {"roc": 0.5}}
    assert rows["T101.temp"]["function code"] == "4" and rows["T101.temp"]["register"] == "16"


def test_partial_leaves_out_rows_the_whole_check_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A float32 at 40001 and a point at 40002 overlap: --partial keeps the first, leaves out
    the second (the row the check names) and writes what then passes."""
    t = _xlsx(
        tmp_path / "T.xlsx",
        [CN_HEADER, _with(G="float32"), _with(A="GT-102", E=40002), _with(A="GT-103", E=40003)],
    )
    out = tmp_path / "o.yaml"
    assert main(["points", "import", str(t), "--partial", "-o", str(out)]) == 0
    cap = capsys.readouterr()
    assert "E3: column 'register': register holding:1 is already taken by 'GT-101'" in cap.err
    assert "2 channels; 1 rows left out: 3" in cap.out
    assert main(["check", "-c", str(out)]) == 0
    assert ChannelTable.from_config(load(out)).names() == ["GT-101", "GT-103"]


def test_a_kepware_style_csv(tmp_path: Path) -> None:
    """Kepware's CSV tag columns (kepware.com, "CSV import/export": Tag Name, Address, Data Type,
    Respect Data Type, Client Access, Scan Rate, ..., Eng. Units, Description), with the
    device, kind and IP columns the gateway needs added by the engineer."""
    t = tmp_path / "k.csv"
    t.write_text(
        '"Tag Name","Address","Data Type","Respect Data Type","Client Access","Scan Rate","Eng. Units",'
        '"Description","Device","Kind","IP"\n'
        '"PT-1","400011","Float","1","RO","100","MPa","reactor pressure","plc-1","pressure","10.0.0.2"\n',
        encoding="utf-8",
    )
    res = import_table(str(t))
    assert res.errors == []
    assert res.ignored_columns == ["Respect Data Type", "Client Access", "Scan Rate"]
    ch = res.config["devices"][0]["channels"][0]
    assert ch == {
        "name": "PT-1",
        "address": "holding:10",
        "kind": "pressure",
        "type": "float32",
        "unit": "MPa",
        "description": "reactor pressure",
    }
