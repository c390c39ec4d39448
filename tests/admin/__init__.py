"""Tests of gateway/admin: the API (in the real daemon, every role, fuzzed, in Chromium),
registers and users."""
