"""Register reminders still reach the journal when the admin API is not configured."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from gateway.admin.reminders import RegisterService
from gateway.app import Gateway
from gateway.config import loads
from tests.fixtures.helpers import async_wait_until


def _ns(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, 9, tzinfo=dt.UTC).timestamp() * 1e9)


async def test_reminder_without_api(tmp_path: Path) -> None:
    cfg = loads(f"""
gateway: {{id: gw-r, site: "S1", state_dir: {tmp_path}}}
registers: {{check_every: 50ms}}
""")
    now = [_ns(dt.date(2026, 3, 1))]
    gw = Gateway(cfg, clock=lambda: now[0])
    gw.build_services()
    svc = next(s for s in gw.services if isinstance(s, RegisterService))
    store = svc.store
    store.create("special_equipment", {"name": "boiler", "category": "boiler", "location": "B1",
                                       "registration_no": "R-1", "next_inspection": "2026-03-05"}, "op")
    gw.services.clear()  # run() builds them again
    task = asyncio.create_task(gw.run(drain_s=1.0))

    async def reminder_events() -> list[dict]:
        recs = await gw.journal.read(0, 1000, kinds=(2,))
        return [r.event() for r in recs if r.event().get("type") == "reminder"]

    got = await async_wait_until(reminder_events, 10, what="a reminder in the journal")
    assert isinstance(got, list)
    seen = [(e["register"], e["due"], e["threshold"]) for e in got]
    assert seen == [("special_equipment", "2026-03-05", 7)]
    gw.stop()
    await asyncio.wait_for(task, 10)
