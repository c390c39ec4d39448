"""Tests of the daemon as a whole (gateway/app.py and its CLI): lifecycle, systemd, demo,
commissioning, /status."""
