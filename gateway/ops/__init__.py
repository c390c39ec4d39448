"""Operations: ``safegw status`` (the daemon's local status socket), ``safegw doctor``
(checks of the machine) and the journald-friendly log format (docs/operations.md)."""
