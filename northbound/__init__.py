"""Northbound adapters: journal consumers that report to the authorities' platforms
(docs/regulators.md). ``base`` holds what every adapter shares; one package per
protocol (``hj212``). The daemon reaches them only through ``northbound.service``, named
in ``gateway.app.SERVICES``."""
