"""Tests of uplink/: the record codec, envelope crypto, key files, MQTT, the sync link and
outages."""
