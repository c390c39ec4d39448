"""Benchmarks: each file runs on its own (`.venv/bin/python bench/NAME.py`; docs/performance.md).
This file only makes the folder a package for mypy, so that bench/rules.py and
bench/uplink.py are not taken for the rules and uplink packages."""
