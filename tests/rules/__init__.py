"""Tests of rules/: the alarm engine against its per-channel reference, alarm tables, warm
restart, the alarm lifecycle and alarm commands."""
