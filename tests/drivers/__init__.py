"""Tests of drivers/: the Modbus, OPC UA and serial drivers, their codecs and request
plans."""
