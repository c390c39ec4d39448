"""Tests of gateway/store: the journal, and SIGKILL crash tests of it."""
