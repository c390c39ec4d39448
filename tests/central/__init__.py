"""Tests of central/: the central node fed by real gateways over the uplink."""
