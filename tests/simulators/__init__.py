"""Tests of simulators/: the plant simulators, their scenarios and wire formats."""
