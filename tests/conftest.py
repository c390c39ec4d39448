"""Shared fixtures. Real servers (mosquitto, influxd, PostgreSQL, simulators, the gateway
daemon) are started by the fixture modules in tests/fixtures on ephemeral ports (see
tests/README.md)."""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.sims",
    "tests.fixtures.mosquitto",
    "tests.fixtures.influxd",
    "tests.fixtures.postgres",
    "tests.fixtures.victoria",
    "tests.fixtures.daemon",
]
