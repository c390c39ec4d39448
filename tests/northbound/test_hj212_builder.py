"""The journal → HJ 212 messages builder, by hand: windows close on the data's own
clock, late samples are counted (not sent twice under one DataTime), periods close in
order, a restart skips what was acknowledged, stopped windows are not sent."""

from __future__ import annotations

from gateway.core.batch import Batch, Quality
from gateway.core.channels import ChannelInfo, ChannelTable
from gateway.core.config_regulators import PointMap as PointConfig
from gateway.core.record import SAMPLES, Record
from northbound.base import PointMap
from northbound.hj212.builder import CN_HOUR, CN_MINUTE, CN_RTD, Builder
from northbound.hj212.uploads import LocalTime

NS = 10**9
T0 = 1_800_000_000 * NS // (3600 * NS) * (3600 * NS)  # a whole UTC hour (also a Beijing hour)


def table() -> ChannelTable:
    return ChannelTable([ChannelInfo(i, n, "gas", "ppm", "d", None)  # type: ignore[arg-type]
                         for i, n in enumerate(["A", "B", "C"])])


def points() -> PointMap:
    return PointMap([PointConfig(channel="A", code="a1"), PointConfig(channel="B", code="b1", scale=2)],
                    table())


def rec(seq: int, rows: list[tuple[int, float, float]]) -> Record:
    """rows: (channel, seconds after T0, value)."""
    b = Batch.build([r[0] for r in rows], [T0 + int(r[1] * NS) for r in rows], [r[2] for r in rows],
                    [Quality.GOOD] * len(rows))
    return Record(seq, SAMPLES, int(b.ts.min()), int(b.ts.max()), len(b), b.to_bytes())


def builder(**kw: object) -> Builder:
    args: dict[str, object] = {"rtd_interval": 10.0, "late": 2.0, "periods": {}, "sent_until": {}}
    args.update(kw)
    return Builder(points(), LocalTime("+08:00"), **args)  # type: ignore[arg-type]


def test_windows_close_on_the_data_clock_and_unmapped_channels_are_left_out() -> None:
    b = builder()
    ups, _, hold = b.feed(rec(1, [(0, 1, 1.0), (1, 1, 5.0), (2, 1, 9.0), (0, 5, 2.0)]))
    assert ups == [] and hold.pending == 2  # itself, and the open window it fed
    ups, _, _ = b.feed(rec(2, [(0, 11.9, 3.0)]))
    assert ups == []  # 11.9 < 10 + late
    ups, _, _ = b.feed(rec(3, [(0, 12.0, 4.0)]))
    assert [(u.cn, u.start_ns - T0, u.items) for u in ups] == [
        (CN_RTD, 0, ["a1-Rtd=2.000,a1-Flag=N", "b1-Rtd=10.000,b1-Flag=N"])]  # newest A; B ×2; C unmapped
    assert [h.seq for h in ups[0].holds] == [1]


def test_a_late_sample_is_counted_not_sent_again() -> None:
    b = builder()
    b.feed(rec(1, [(0, 1, 1.0)]))
    ups, _, _ = b.feed(rec(2, [(0, 30, 1.0)]))
    assert [u.start_ns - T0 for u in ups] == [0]
    ups, _, hold = b.feed(rec(3, [(1, 3, 7.0)]))  # B for the window at 0, long closed
    assert ups == [] and b.late_samples == 1 and hold.pending == 1


def test_periods_close_in_order_and_a_restart_skips_what_was_acknowledged() -> None:
    b = builder(periods={CN_MINUTE: 60.0, CN_HOUR: 3600.0})
    b.feed(rec(1, [(0, 1, 1.0)]))
    _, closings, hold = b.feed(rec(2, [(0, 3605, 1.0)]))
    assert [(c.cn, [s - T0 for s in c.starts]) for c in closings] == [
        (CN_MINUTE, [m * 60 * NS for m in range(60)]), (CN_HOUR, [0])]
    assert hold.pending == 4  # itself, the window it opened, and two closings
    # restarted with the state file saying minute data up to 30 min and the first windows went
    r = builder(periods={CN_MINUTE: 60.0}, sent_until={CN_MINUTE: T0 + 1800 * NS, CN_RTD: T0 + 10 * NS})
    ups, _, _ = r.feed(rec(1, [(0, 1, 1.0), (0, 15, 2.0)]))
    ups, closings, _ = r.feed(rec(2, [(0, 3605, 1.0)]))
    assert [u.start_ns - T0 for u in ups] == [10 * NS]  # the window at 0 was acknowledged before
    assert [s - T0 for s in closings[0].starts] == [m * 60 * NS for m in range(30, 60)]


def test_windows_in_a_stop_are_not_sent_even_when_reached_later() -> None:
    b = builder()
    b.stop_realtime(T0 + 10 * NS)
    b.start_realtime(T0 + 30 * NS)
    assert b.realtime
    sent = []
    for i, t in enumerate([1, 11, 21, 31, 45]):
        ups, _, _ = b.feed(rec(i + 1, [(0, t, 1.0)]))
        sent += [u.start_ns - T0 for u in ups]
    assert sent == [0, 30 * NS]  # 10 and 20 were in the stop
