"""Tests of gateway/historian: line protocol, interval statistics, InfluxDB 1.x for real
and 2.x by contract, `safegw history`."""
