"""Coalescing: the first occurrence of a key at once, its repeats as one
summary per window, every occurrence counted somewhere."""

import asyncio

from bkd.infra.bursts import Bursts


async def test_one_record_per_window_after_the_first_and_every_hit_counted():
    summaries = []
    bursts = Bursts(0.2, lambda key, burst: summaries.append((key, burst.count, burst.data)))
    firsts = [bursts.hit("a", n) for n in range(50)]
    assert firsts == [True] + [False] * 49  # the first is reported at once
    assert bursts.hit("b") is True  # keys are independent
    await asyncio.sleep(0.3)
    assert summaries == [("a", 49, 49)]  # the repeats: one summary, the last one's data
    assert bursts.hit("a", "x") is False  # a new window was opened by the summary
    await asyncio.sleep(0.3)
    assert summaries[-1] == ("a", 1, "x")
    await asyncio.sleep(0.3)  # a quiet window ends the burst
    assert bursts.hit("a") is True and len(summaries) == 2


async def test_flush_reports_what_is_pending():
    summaries = []
    bursts = Bursts(60, lambda key, burst: summaries.append((key, burst.count)))
    for _ in range(3):
        bursts.hit("k")
    bursts.hit("quiet")
    bursts.flush()
    assert summaries == [("k", 2)]
    assert bursts.hit("k") is True
