"""The gateway -> central link over a real WireGuard tunnel (issue 18, item 6;
docs/security.md, "VPN deployment").

Two network namespaces made here, joined by a veth pair (the "WAN"); WireGuard between
them by wireguard-go, Debian's userspace implementation over /dev/net/tun (the kernel
module does not load on the test machine; the configuration is the same). The Modbus
simulator and the real gateway daemon (`safegw run`, uplink in push mode) run in one
namespace, the real central daemon (`safegw central`) in the other, listening on its
tunnel address only: the gateway reaches it through the tunnel or not at all.

The tunnel is cut twice while the gateway keeps journaling: the gateway's WireGuard
interface is set down and up again, then the central side's wireguard-go is killed and
started again with the same key. Central must end up with the gateway's journal exactly:
every sequence once, in order, the same bytes. Takes about 30-60 s.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.core.record import SAMPLES
from tests.fixtures.central import make_keys
from tests.fixtures.helpers import wait_until
from tests.fixtures.sims import SimProcess
from uplink.auth import ensure_tls_cert

REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(not shutil.which("wireguard-go") or not shutil.which("wg") or not shutil.which("ip"),
                       reason="needs wireguard-go, wg (wireguard-tools) and ip (iproute2)"),
]
# addresses inside the two private namespaces: nothing else sees them, nothing clashes
WAN_GW, WAN_CE = "192.168.77.1", "192.168.77.2"
VPN_GW, VPN_CE = "10.77.0.1", "10.77.0.2"
MTU = 1420  # WireGuard's default: 1500 minus 80 bytes of outer IPv6 + UDP + WireGuard headers

SIM = """
seed: 3
tick: 100ms
signals:
  GT-1: {base: 12.5}
  TT-1: {base: 21.75}
devices:
  - name: plc
    protocol: modbus-tcp
    host: 127.0.0.1
    port: 0
    units:
      - unit: 1
        points:
          - {signal: GT-1, address: input:0, type: int16, scale: 0.1}
          - {signal: TT-1, address: holding:10, type: float32}
"""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode:
        raise AssertionError(f"ip {' '.join(args)} -> {r.returncode}: {r.stderr.strip()}")
    return r


class Side:
    """One namespace with its end of the veth and of the WireGuard tunnel."""

    def __init__(self, ns: str, wan_if: str, wg_if: str, wan: str, vpn: str, key: Path):
        self.ns, self.wan_if, self.wg_if, self.wan, self.vpn, self.key = ns, wan_if, wg_if, wan, vpn, key
        self.wg_proc: subprocess.Popen[str] | None = None

    def exec(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *cmd]

    def wg(self, *args: str) -> str:
        r = subprocess.run(self.exec("wg", *args), capture_output=True, text=True, timeout=30)
        if r.returncode:
            raise AssertionError(f"wg {' '.join(args)} in {self.ns}: {r.stderr.strip()}")
        return r.stdout.strip()

    def start_wireguard(self, listen_port: int | None = None) -> None:
        """wireguard-go in the foreground (a child we can kill), its interface up."""
        self.wg_proc = subprocess.Popen(self.exec("wireguard-go", "-f", self.wg_if), text=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_until(lambda: ip("-n", self.ns, "link", "show", self.wg_if, check=False).returncode == 0
                   or self.wg_proc is None or self.wg_proc.poll() is not None, timeout=30,
                   what=f"wireguard-go's {self.wg_if} in {self.ns}")
        assert self.wg_proc.poll() is None, self.wg_proc.stderr.read() if self.wg_proc.stderr else ""
        self.wg("set", self.wg_if, "private-key", str(self.key),
                *(("listen-port", str(listen_port)) if listen_port else ()))
        ip("-n", self.ns, "address", "add", f"{self.vpn}/24", "dev", self.wg_if)
        ip("-n", self.ns, "link", "set", self.wg_if, "mtu", str(MTU), "up")

    def kill_wireguard(self) -> None:
        if self.wg_proc is not None and self.wg_proc.poll() is None:
            self.wg_proc.send_signal(signal.SIGTERM)
            self.wg_proc.communicate(timeout=30)
        self.wg_proc = None


def pubkey(key: Path) -> str:
    return subprocess.run(["wg", "pubkey"], input=key.read_text(), capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
def tunnel(tmp_path: Path) -> Iterator[tuple[Side, Side]]:
    """(gateway side, central side), joined by a veth and a WireGuard tunnel."""
    tag = secrets.token_hex(3)  # unique names: wireguard-go's control socket is per name, host-wide
    gw = Side(f"sgw-gw-{tag}", f"sv{tag}g", f"sw{tag}g", WAN_GW, VPN_GW, tmp_path / "gw.wgkey")
    ce = Side(f"sgw-ce-{tag}", f"sv{tag}c", f"sw{tag}c", WAN_CE, VPN_CE, tmp_path / "ce.wgkey")
    made: list[str] = []
    try:
        for s in (gw, ce):
            r = ip("netns", "add", s.ns, check=False)
            if r.returncode:
                pytest.skip(f"blocked: ip netns add: {r.stderr.strip()}")
            made.append(s.ns)
            ip("-n", s.ns, "link", "set", "lo", "up")
        ip("link", "add", gw.wan_if, "netns", gw.ns, "type", "veth",
           "peer", "name", ce.wan_if, "netns", ce.ns)
        for s in (gw, ce):
            ip("-n", s.ns, "address", "add", f"{s.wan}/30", "dev", s.wan_if)
            ip("-n", s.ns, "link", "set", s.wan_if, "up")
            fd = os.open(s.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # a secret: 0600
            with os.fdopen(fd, "w") as f:
                f.write(subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout)
            s.start_wireguard()
        port = ce.wg("show", ce.wg_if, "listen-port")
        # the gateway dials out (NAT-friendly) and keeps the path open; central only answers
        gw.wg("set", gw.wg_if, "peer", pubkey(ce.key), "allowed-ips", f"{VPN_CE}/32",
              "endpoint", f"{WAN_CE}:{port}", "persistent-keepalive", "1")
        ce.wg("set", ce.wg_if, "peer", pubkey(gw.key), "allowed-ips", f"{VPN_GW}/32")
        yield gw, ce
    finally:
        for s in (gw, ce):
            s.kill_wireguard()
        for ns in made:
            ip("netns", "delete", ns, check=False)


def free_port_in(side: Side, host: str) -> int:
    """A port free on ``host`` inside the namespace (a private one: nothing else binds there)."""
    code = f"import socket; s = socket.socket(); s.bind(({host!r}, 0)); print(s.getsockname()[1])"
    return int(subprocess.run(side.exec(sys.executable, "-c", code), capture_output=True, text=True,
                              check=True, timeout=60).stdout)


def records(db: Path) -> list[tuple[int, int, bytes]]:
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT seq, kind, data FROM records ORDER BY seq").fetchall()
    except sqlite3.OperationalError:  # tables not made yet
        return []
    finally:
        con.close()


def last(db: Path) -> int:
    r = records(db)
    return r[-1][0] if r else 0


def test_push_over_wireguard_survives_cuts_exactly_once(tunnel: tuple[Side, Side], tmp_path: Path) -> None:
    gw, ce = tunnel
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs: list[subprocess.Popen[str]] = []

    def start(side: Side, *args: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(side.exec(sys.executable, "-m", "gateway.cli", *args), cwd=REPO, env=env,
                             text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(p)
        return p

    pubs = tmp_path / "pub"
    pubs.mkdir()
    gw_state, ce_state = tmp_path / "gw-state", tmp_path / "county"
    gpub, cpub = make_keys(gw_state, "gw-vpn", pubs), make_keys(ce_state, "county", pubs)
    cert, _ = ensure_tls_cert(ce_state, "county")  # what central would make; pinned by the gateway
    sim_cfg = tmp_path / "sim.yaml"
    sim_cfg.write_text(SIM)
    sim = SimProcess(sim_cfg, prefix=gw.exec())  # the plant network is the gateway's side
    try:
        port = free_port_in(ce, VPN_CE)
        ce_cfg = tmp_path / "central.yaml"
        ce_cfg.write_text(f"node: {{id: county, state_dir: '{ce_state}'}}\n"
                          f"listen: {{address: '{VPN_CE}:{port}'}}\n"  # the tunnel address only
                          f"sources: [{{id: gw-vpn, keys: '{gpub}', mode: push}}]\n")
        central = start(ce, "central", "-c", str(ce_cfg))
        host, mport = sim.tcp("plc")
        gw_cfg = tmp_path / "gw.yaml"
        gw_cfg.write_text(f"""
gateway: {{id: gw-vpn, site: "TEST", state_dir: "{gw_state}"}}
devices:
  - name: plc
    protocol: modbus-tcp
    host: {host}
    port: {mport}
    poll: 200ms
    timeout: 200ms
    retries: 0
    channels:
      - {{name: GT-1, kind: gas, unit: "%LEL", address: input:0, type: int16, scale: 0.1}}
      - {{name: TT-1, kind: temperature, unit: "°C", address: holding:10, type: float32}}
uplink: {{mode: push, central_url: 'https://{VPN_CE}:{port}', ca: '{cert}', central_keys: ['{cpub}'],
          retry_max: 500ms, timeout: 5s}}
""")
        gateway = start(gw, "run", "-c", str(gw_cfg))
        gj, cj = gw_state / "journal.db", ce_state / "journals" / "gw-vpn.db"

        def alive() -> None:
            for p in (central, gateway):
                assert p.poll() is None, (p.args, p.stderr.read() if p.stderr else "")

        def caught_up(seq: int) -> bool:
            alive()
            return last(cj) >= seq

        wait_until(lambda: caught_up(3), timeout=90, what="central's first records through the tunnel")
        assert int(gw.wg("show", gw.wg_if, "latest-handshakes").split()[-1]) > 0  # through WireGuard

        # cut 1: the gateway's tunnel interface down while it keeps journaling
        ip("-n", gw.ns, "link", "set", gw.wg_if, "down")
        at_cut = last(gj)
        wait_until(lambda: last(gj) >= at_cut + 10, timeout=60, what="records journaled during the cut")
        ip("-n", gw.ns, "link", "set", gw.wg_if, "up")
        wait_until(lambda: caught_up(at_cut + 10), timeout=90, what="central catching up after cut 1")

        # cut 2: central's VPN process killed, then started again with the same key and port
        port_wg = int(ce.wg("show", ce.wg_if, "listen-port"))
        ce.kill_wireguard()
        at_cut = last(gj)
        wait_until(lambda: last(gj) >= at_cut + 10, timeout=60, what="records journaled during cut 2")
        ce.start_wireguard(listen_port=port_wg)
        ce.wg("set", ce.wg_if, "peer", pubkey(gw.key), "allowed-ips", f"{VPN_GW}/32")
        wait_until(lambda: caught_up(at_cut + 10), timeout=90, what="central catching up after cut 2")

        # stop the plant's side, then let central take the last records
        gateway.send_signal(signal.SIGTERM)
        _, err = gateway.communicate(timeout=60)
        assert gateway.returncode == 0, err[-3000:]
        mine = records(gj)
        got = records(cj)
        # every record once, the same bytes, the readings in order. Central numbers its copy
        # itself and may file the start's channel table and config event in either order
        # (they share the start instant), so records are matched by their bytes; the
        # shutdown's last records may not have been pushed before the gateway stopped, but
        # everything journaled up to the second cut has been.
        assert [r[0] for r in got] == list(range(1, len(got) + 1)), "a gap in central's copy"
        got_c = Counter((k, d) for _, k, d in got)
        mine_c = Counter((k, d) for _, k, d in mine)
        assert max(got_c.values()) == 1, "a record stored twice"
        assert not got_c - mine_c, "a record central has and the gateway never journaled"
        needed = Counter((k, d) for s, k, d in mine if s <= at_cut + 10)
        assert not needed - got_c, "a record journaled before the second cut's end is missing"
        samples = [d for _, k, d in got if k == SAMPLES]
        assert samples == [d for _, k, d in mine if k == SAMPLES][:len(samples)], "readings out of order"
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.communicate()
        sim.stop()
