"""Modbus TCP and RTU: codec (registers ↔ values), request plan, lean TCP client, drivers."""
