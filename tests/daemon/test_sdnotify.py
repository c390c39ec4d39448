"""systemd's notify protocol over a real unix datagram socket that the test binds."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sdnotify import Notifier


class Listener:
    """The service manager's end: a bound AF_UNIX datagram socket."""

    def __init__(self, address: str):
        self.address = address  # as NOTIFY_SOCKET spells it ('@' = abstract namespace)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)

    def recv(self, timeout: float = 5.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    lst = Listener(str(tmp_path / "notify.sock"))
    yield lst
    lst.close()


def test_messages_reach_the_socket(listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier()
    assert n.enabled and n.watchdog_s == 3.0
    n.ready("2 devices, 10 channels")
    assert listener.recv() == "READY=1\nSTATUS=2 devices, 10 channels"
    n.watchdog()
    assert listener.recv() == "WATCHDOG=1"
    n.status("draining")
    assert listener.recv() == "STATUS=draining"
    n.stopping()
    assert listener.recv() == "STOPPING=1"


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    lst = Listener(f"@safegw-test-{uuid.uuid4().hex}")
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", lst.address)
        Notifier().ready()
        assert lst.recv() == "READY=1"
    finally:
        lst.close()


def test_watchdog_for_another_pid_is_not_ours(monkeypatch: pytest.MonkeyPatch, listener: Listener) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert Notifier().watchdog_s is None


def test_without_systemd_it_is_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    n = Notifier()
    assert not n.enabled and n.watchdog_s is None
    n.ready()
    n.watchdog()
    n.stopping()


def test_vanished_socket_warns_and_carries_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    lst = Listener(str(tmp_path / "gone.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", lst.address)
    n = Notifier()
    lst.close()
    os.unlink(lst.address)
    with caplog.at_level(logging.WARNING, logger="gateway.sdnotify"):
        n.ready()
        n.watchdog()
        n.watchdog()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "READY" in warnings[0].getMessage()
    assert len(warnings) <= 2  # not one per watchdog ping


def test_a_manager_that_stops_reading_never_blocks_the_daemon(
        listener: Listener, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # the queue of a unix datagram socket holds net.unix.max_dgram_qlen messages (10 by
    # default); a blocking send past it waited for the reader, and the event loop with it
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier()
    qlen = int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
    with caplog.at_level(logging.WARNING, logger="gateway.sdnotify"):
        for _ in range(qlen + 20):  # returns at once; without SOCK_NONBLOCK this hangs here
            n.watchdog()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "WATCHDOG" in warnings[0].getMessage()
    got = 0
    while True:  # what fitted was delivered; the rest was dropped
        try:
            assert listener.recv(timeout=0.2) == "WATCHDOG=1"
            got += 1
        except TimeoutError:
            break
    assert 0 < got < qlen + 20
    n.watchdog()  # room again: it works and says so
    assert listener.recv() == "WATCHDOG=1"


def test_no_keep_alive_unless_the_manager_asked_for_one(listener: Listener,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    n = Notifier()
    n.watchdog()  # the daemon's timer calls it every second: nothing to send, no work
    n.ready()
    assert listener.recv() == "READY=1"  # the first (and only) message
