"""Workers starting at once on an empty PostgreSQL database all open their state."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from central.state import PgState

pytestmark = pytest.mark.timeout(120)


async def test_workers_starting_at_once_on_an_empty_database(pg_dsn: str) -> None:
    for _round in range(5):
        states = [PgState(pg_dsn) for _ in range(4)]
        try:
            await asyncio.gather(*(s.open() for s in states))
        finally:
            await asyncio.gather(*(s.close() for s in states))
        with psycopg.connect(pg_dsn, autocommit=True) as db:  # empty again for the next round
            db.execute("DROP SCHEMA public CASCADE")
            db.execute("CREATE SCHEMA public")
