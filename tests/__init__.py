"""The test suite: one sub-package per area of the code, shared harnesses in fixtures/
(see tests/README.md)."""
